//! Where a benchmark's processes run (issue "benchmarks that model a deployment"): `split`
//! places the page server on the machine's last CPUs and the compute (scan backends, worker
//! daemon, the bench's own threads) on the others, as two hosts would be; `colocated` lets the
//! scheduler put anything anywhere, as on one shared host.
//!
//! Affinity is inherited: a thread starts with its creator's CPU set, and a child process with
//! its parent's. So `enter` puts the bench's main thread on the compute's CPUs before anything
//! is started, and `on_server` moves the calling thread to the server's CPUs only while it
//! starts a page server, whose threads (acceptor, connections, responders, prefetch senders)
//! all descend from that call.
//!
//! Owns: the run's CPU split (`Placement`, set once) and the affinity of the threads it moves; it
//! drives no library API and may not be imported by the library's other modules.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Topology {
    /// Page server on the last half of the CPUs (at least one), compute on the rest.
    #[default]
    Split,
    /// Everything on every CPU.
    Colocated,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Split => "split",
            Topology::Colocated => "colocated",
        }
    }
}

/// The CPU sets of one bench run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub topology: Topology,
    pub server: Vec<usize>,
    pub compute: Vec<usize>,
}

static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// The CPUs this process may run on.
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size matches the set.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads within the set for indices below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Puts the calling thread (and what it starts from now on) on `cpus`.
fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as above; CPU_SET writes within the set for indices below CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is this thread; the size matches the set.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How `topology` splits `cpus`: the server takes the last half (at least one), the compute
/// the rest; colocated gives both all of them. Split needs two CPUs.
pub fn placement(topology: Topology, cpus: &[usize]) -> anyhow::Result<Placement> {
    anyhow::ensure!(!cpus.is_empty(), "no CPU to run on");
    match topology {
        Topology::Colocated => Ok(Placement {
            topology,
            server: cpus.to_vec(),
            compute: cpus.to_vec(),
        }),
        Topology::Split => {
            anyhow::ensure!(
                cpus.len() >= 2,
                "--topology split needs at least 2 CPUs (this process may use {}): pass \
                 --topology colocated",
                cpus.len()
            );
            let at = cpus.len() - (cpus.len() / 2).max(1);
            Ok(Placement {
                topology,
                server: cpus[at..].to_vec(),
                compute: cpus[..at].to_vec(),
            })
        }
    }
}

/// Places this bench run: the calling thread (the bench's main thread, before it starts
/// anything) goes to the compute's CPUs. Once per process; later calls must agree.
pub fn enter(topology: Topology) -> anyhow::Result<()> {
    if let Some(p) = PLACEMENT.get() {
        anyhow::ensure!(p.topology == topology, "one topology per bench process");
        return Ok(());
    }
    let p = placement(topology, &allowed_cpus()?)?;
    if topology == Topology::Split {
        pin_current_thread(&p.compute)?;
    }
    PLACEMENT.get_or_init(|| p);
    Ok(())
}

/// The run's placement (colocated when no bench entered one, e.g. in unit tests).
pub fn current() -> Topology {
    PLACEMENT.get().map_or(Topology::Colocated, |p| p.topology)
}

/// The machine's CPUs as this run placed them, for the header of a bench table.
pub fn describe() -> String {
    match PLACEMENT.get() {
        Some(p) if p.topology == Topology::Split => format!(
            "{} CPUs, topology split (page server on CPU {:?}, compute on CPU {:?})",
            p.server.len() + p.compute.len(),
            p.server,
            p.compute
        ),
        Some(p) => format!("{} CPUs, topology colocated", p.compute.len()),
        None => format!("{} CPUs", allowed_cpus().map_or(0, |c| c.len())),
    }
}

/// Runs `start` on the page server's CPUs, so that every thread it spawns stays there, then
/// returns the calling thread to the compute's CPUs.
pub fn on_server<T>(start: impl FnOnce() -> T) -> anyhow::Result<T> {
    let Some(p) = PLACEMENT.get().filter(|p| p.topology == Topology::Split) else {
        return Ok(start());
    };
    pin_current_thread(&p.server)?;
    let out = start();
    pin_current_thread(&p.compute)?;
    Ok(out)
}

/// Benches whose records depend on where the page server runs (they start one).
const PLACED_BENCHES: [&str; 7] = [
    "scan",
    "flood",
    "hol",
    "many-backends",
    "degrade",
    "prewarm",
    "getpage",
];

/// Adds `params.topology` to the records of benches that started a page server.
pub fn record(records: &mut [super::BenchRecord]) {
    let topology = current().as_str();
    for r in records.iter_mut() {
        if PLACED_BENCHES.contains(&r.bench.as_str()) {
            r.params.insert("topology".into(), topology.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_gives_the_server_the_last_half_and_needs_two_cpus() {
        let p = placement(Topology::Split, &[0, 1]).unwrap();
        assert_eq!((p.server, p.compute), (vec![1], vec![0]));
        let p = placement(Topology::Split, &[0, 1, 2, 3, 4]).unwrap();
        assert_eq!((p.server, p.compute), (vec![3, 4], vec![0, 1, 2]));
        let err = placement(Topology::Split, &[3]).unwrap_err().to_string();
        assert!(err.contains("--topology colocated"), "{err}");
        let p = placement(Topology::Colocated, &[0, 1]).unwrap();
        assert_eq!((p.server, p.compute), (vec![0, 1], vec![0, 1]));
    }

    #[test]
    fn threads_inherit_the_cpus_of_their_creator() {
        // What `on_server` relies on: a thread spawned while its creator is pinned stays
        // pinned after the creator moves back.
        let all = allowed_cpus().unwrap();
        let first = all[0];
        let seen = std::thread::spawn(move || {
            pin_current_thread(&[first]).unwrap();
            let (go, wait) = std::sync::mpsc::channel::<()>();
            let child = std::thread::spawn(move || {
                wait.recv().unwrap();
                allowed_cpus().unwrap()
            });
            pin_current_thread(&all).unwrap();
            assert_eq!(allowed_cpus().unwrap(), all, "the creator moved back");
            go.send(()).unwrap();
            child.join().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![first]);
    }
}
