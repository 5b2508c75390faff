//! Two hosts on one machine: a page-server network namespace and a compute network
//! namespace joined by a veth pair, with the path MTU and a random loss of the UDP packets that
//! reach the compute set per run. Used by `bench net` and the network tests.
//!
//! Loopback hides what a real path does to an 8 KiB datagram: an MTU below it means IP
//! fragments, and loss of one fragment loses the datagram. Here the link has a real MTU and the
//! loss is the kernel's (an nftables rule on the compute's ingress, `numgen random`), applied to
//! every UDP packet, fragments included, and never to TCP: the GetPage path stays reliable, as
//! on a real network where TCP retransmits.
//!
//! Safety rules of the harness: the namespaces, the veth pair and the addresses exist only for
//! the lifetime of a [`TwoHosts`] (removed on drop, also when a run fails; namespaces left by a
//! process that died are removed by the next [`TwoHosts::create`]); the addresses come from the
//! benchmarking range 198.18.0.0/15 and are configured only inside the two namespaces, which
//! have no other interface than their loopback, so no packet can leave them.
//!
//! A thread joins a namespace with `setns`; threads and processes it starts inherit it. So
//! [`TwoHosts::in_server`] and [`TwoHosts::in_compute`] run a closure on a thread of their own
//! inside the namespace: an in-process page server started there listens there (its threads
//! descend from that call), and a worker daemon or scan process spawned there runs there.
//!
//! Owns: the namespaces, the veth pair, their addresses and the loss rule, for the life of a
//! `TwoHosts`; it drives no library API (only `ip`, `nft` and `setns`) and may not be imported by
//! the library's other modules.

use anyhow::Context;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The page server's address, inside the server namespace.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The compute's address (worker daemon and backends), inside the compute namespace.
pub const COMPUTE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PREFIX_LEN: u8 = 30;
/// Every namespace of the harness is named `<NS_PREFIX><pid>-<n>-{s,c}`.
const NS_PREFIX: &str = "udpf-";
/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// MTUs a veth accepts (68 is IPv4's minimum; 65535 the largest jumbo the harness allows).
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65_535;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two network namespaces joined by a veth pair; see the module docs.
#[derive(Debug)]
pub struct TwoHosts {
    server_ns: String,
    compute_ns: String,
    compute_if: String,
    mtu: u32,
    loss_percent: u8,
}

impl TwoHosts {
    /// Makes the two namespaces, the link between them at `mtu`, and the loss rule dropping
    /// `loss_percent` % of the UDP packets reaching the compute. Needs root, `ip` (iproute2)
    /// and, for a loss above 0, `nft` (nftables).
    pub fn create(mtu: u32, loss_percent: u8) -> anyhow::Result<TwoHosts> {
        anyhow::ensure!(
            MTU_RANGE.contains(&mtu),
            "MTU {mtu} is outside {}..={}",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        );
        anyhow::ensure!(
            loss_percent <= 100,
            "loss of {loss_percent} % is above 100 %"
        );
        remove_orphans();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes: "uf" + pid (≤ 7 digits) + n + side.
        let mut hosts = TwoHosts {
            server_ns: format!("{NS_PREFIX}{pid}-{n}-s"),
            compute_ns: format!("{NS_PREFIX}{pid}-{n}-c"),
            compute_if: format!("uf{pid}{}c", n % 1000),
            mtu,
            loss_percent: 0,
        };
        let server_if = format!("uf{pid}{}s", n % 1000);
        // From here on, drop removes whatever was made.
        ip(&["netns", "add", &hosts.server_ns])?;
        ip(&["netns", "add", &hosts.compute_ns])?;
        ip(&[
            "link",
            "add",
            &server_if,
            "netns",
            &hosts.server_ns,
            "mtu",
            &mtu.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &hosts.compute_if,
            "netns",
            &hosts.compute_ns,
            "mtu",
            &mtu.to_string(),
        ])?;
        for (ns, dev, addr) in [
            (&hosts.server_ns, &server_if, SERVER_ADDR),
            (&hosts.compute_ns, &hosts.compute_if, COMPUTE_ADDR),
        ] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/{PREFIX_LEN}"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            // Each side's own tools (metrics endpoints, the bench's scrapes) use loopback.
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        hosts.set_loss(loss_percent)?;
        Ok(hosts)
    }

    /// The names of the server's and the compute's namespaces (`ip netns exec NAME …`).
    pub fn namespaces(&self) -> [&str; 2] {
        [&self.server_ns, &self.compute_ns]
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn loss_percent(&self) -> u8 {
        self.loss_percent
    }

    /// Drops `percent` % of the UDP packets (IP fragments included) that reach the compute,
    /// replacing any earlier rule.
    pub fn set_loss(&mut self, percent: u8) -> anyhow::Result<()> {
        anyhow::ensure!(percent <= 100, "loss of {percent} % is above 100 %");
        if self.loss_percent > 0 {
            nft(&self.compute_ns, "delete table netdev udpf_loss\n")?;
        }
        self.loss_percent = 0;
        if percent > 0 {
            // On the device's ingress, before reassembly: each fragment is lost on its own,
            // as on a real path.
            nft(
                &self.compute_ns,
                &format!(
                    "table netdev udpf_loss {{\n  chain ingress {{\n    type filter hook ingress \
                     device \"{}\" priority 0;\n    ip protocol udp numgen random mod 100 < {percent} \
                     drop\n  }}\n}}\n",
                    self.compute_if
                ),
            )?;
        }
        self.loss_percent = percent;
        Ok(())
    }

    /// Runs `f` on a thread inside the page server's namespace.
    pub fn in_server<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_namespace(&self.server_ns, f)
    }

    /// Runs `f` on a thread inside the compute's namespace.
    pub fn in_compute<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_namespace(&self.compute_ns, f)
    }

    /// The compute's count of IP datagrams whose reassembly failed (`Ip: ReasmFails`): a
    /// fragment lost or too late, so the whole datagram is. The kernel counts one when the
    /// datagram's fragment queue times out (`net.ipv4.ipfrag_time`, 30 s by default) or is
    /// evicted, so the count trails the loss.
    pub fn compute_reassembly_failures(&self) -> anyhow::Result<u64> {
        self.in_compute(|| {
            let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
            ip_counter(&snmp, "ReasmFails")
        })?
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for ns in [&self.server_ns, &self.compute_ns] {
            if !std::path::Path::new(&format!("{NETNS_DIR}/{ns}")).exists() {
                continue; // never made: `create` failed before it
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!(namespace = %ns, error = %e, "could not remove a namespace");
            }
        }
    }
}

/// Runs `f` on a new thread that has joined the named namespace.
fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd;
    let path = format!("{NETNS_DIR}/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn_scoped(s, move || {
                // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(anyhow::anyhow!("setns into {ns}: {e}"));
                }
                Ok(f())
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in namespace {ns} panicked"))?
    })
}

/// Removes the namespaces of harness processes that no longer exist.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args), "ip", "iproute2")
}

fn nft(ns: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip netns exec … nft (install iproute2 and nftables)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft in {ns} failed ({}): {} (is nftables installed? Debian: apt-get install nftables)",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn run(cmd: &mut Command, what: &str, package: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (Debian package {package})"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} {:?} failed ({}): {}",
        cmd.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A counter of the `Ip:` lines of `/proc/net/snmp` (a header line of names, then values).
fn ip_counter(snmp: &str, name: &str) -> anyhow::Result<u64> {
    let mut ip_lines = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip_lines.next(), ip_lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no Ip: lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Ip: {name} in /proc/net/snmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_counters_are_read_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL ReasmReqds ReasmOKs ReasmFails\n\
                    Ip: 2 64 120 18 7\n\
                    Icmp: InMsgs\nIcmp: 0\n";
        assert_eq!(ip_counter(snmp, "ReasmFails").unwrap(), 7);
        assert_eq!(ip_counter(snmp, "ReasmOKs").unwrap(), 18);
        assert!(ip_counter(snmp, "Nope").is_err());
        assert!(ip_counter("Tcp: x\n", "ReasmFails").is_err());
    }

    #[test]
    fn bad_settings_are_refused_before_anything_is_made() {
        let e = TwoHosts::create(9_000, 101).unwrap_err().to_string();
        assert!(e.contains("above 100 %"), "{e}");
        let e = TwoHosts::create(10, 0).unwrap_err().to_string();
        assert!(e.contains("MTU 10 is outside 68..=65535"), "{e}");
    }
}
