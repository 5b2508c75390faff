//! An LFC belongs to one timeline: the first `bind` records it, every other timeline (or
//! cluster) is refused, re-attaching keeps the binding, racing binders agree, and only a
//! re-created file is unbound again. Old-format files (no binding) are refused.

use lfc::{AttachError, BindError, BindOutcome, Binding, Lfc};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::Barrier;

fn binding(tenant: u8, timeline: u8, system_id: Option<u64>) -> Binding {
    Binding {
        tenant_id: [tenant; 16],
        timeline_id: [timeline; 16],
        system_id,
    }
}

#[test]
fn another_timeline_is_refused_and_the_first_is_accepted_after_re_attach() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.lfc");
    let first = binding(0x11, 0x22, Some(7_318_234_567_890_123_456));
    {
        let lfc = Lfc::create(&path, 64).unwrap();
        assert_eq!(lfc.binding(), None, "a new cache is unbound");
        assert_eq!(lfc.bind(&first), Ok(BindOutcome::Bound));
        assert_eq!(lfc.bind(&first), Ok(BindOutcome::AlreadyBound));
        assert_eq!(lfc.binding(), Some(first));
    }
    // Every process attaching later sees the same binding.
    let lfc = Lfc::open(&path).unwrap();
    assert_eq!(lfc.binding(), Some(first));
    assert_eq!(lfc.bind(&first), Ok(BindOutcome::AlreadyBound));

    let other_timeline = binding(0x11, 0x33, first.system_id);
    let err = lfc.bind(&other_timeline).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "LFC {} belongs to tenant 11111111111111111111111111111111 timeline \
             22222222222222222222222222222222 (system 7318234567890123456), not tenant \
             11111111111111111111111111111111 timeline 33333333333333333333333333333333 (system \
             7318234567890123456); restart its worker daemon with --recreate to start a new cache",
            path.display()
        )
    );
    assert_eq!(
        err,
        BindError::OtherTimeline {
            path: path.clone(),
            bound: first,
            asked: other_timeline,
        }
    );
    // Another tenant, another cluster, or a server that announces no system identifier: each
    // is a different binding.
    for other in [
        binding(0x44, 0x22, first.system_id),
        binding(0x11, 0x22, Some(1)),
        binding(0x11, 0x22, None),
    ] {
        assert!(
            matches!(lfc.bind(&other), Err(BindError::OtherTimeline { .. })),
            "{other} accepted"
        );
    }
    // A refusal changes nothing.
    assert_eq!(lfc.binding(), Some(first));
    assert_eq!(lfc.bind(&first), Ok(BindOutcome::AlreadyBound));
}

#[test]
fn re_creating_the_cache_unbinds_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let first = binding(1, 2, None);
    Lfc::create(&path, 16).unwrap().bind(&first).unwrap();
    let lfc = Lfc::create(&path, 16).unwrap();
    assert_eq!(lfc.binding(), None);
    let second = binding(3, 4, Some(9));
    assert_eq!(lfc.bind(&second), Ok(BindOutcome::Bound));
    // `open_or_create` of a valid cache of that size keeps it, binding included.
    drop(lfc);
    assert_eq!(
        Lfc::open_or_create(&path, 16).unwrap().binding(),
        Some(second)
    );
}

#[test]
fn racing_binders_in_threads_with_their_own_mappings_agree_on_one_winner() {
    const BINDERS: u8 = 8;
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lfc");
        drop(Lfc::create(&path, 16).unwrap());
        // One mapping per binder, as separate processes have.
        let maps: Vec<Lfc> = (0..BINDERS).map(|_| Lfc::open(&path).unwrap()).collect();
        let barrier = Barrier::new(BINDERS as usize);
        let results: Vec<(Binding, Result<BindOutcome, BindError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = maps
                .iter()
                .enumerate()
                .map(|(i, lfc)| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mine = binding(i as u8, round, Some(u64::from(i as u8) + 1));
                        barrier.wait();
                        (mine, lfc.bind(&mine))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&Binding> = results
            .iter()
            .filter(|(_, r)| *r == Ok(BindOutcome::Bound))
            .map(|(b, _)| b)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = *winners[0];
        for (mine, r) in &results {
            if *mine != winner {
                assert!(
                    matches!(r, Err(BindError::OtherTimeline { bound, asked, .. })
                        if *bound == winner && asked == mine),
                    "round {round}: {r:?}"
                );
            }
        }
        for lfc in &maps {
            assert_eq!(lfc.binding(), Some(winner));
        }
    }
}

const ROLE: &str = "LFC_BIND_RACE_ROLE";

/// A child process of the race below: attaches, says READY, waits for a line on stdin, binds
/// with its own binding, prints the outcome.
fn race_child(path: &str, index: u8) -> ! {
    let lfc = Lfc::open(path).unwrap();
    // The harness prints `test <name> ... ` before a test's own output, on the same line: our
    // lines are marked so that the parent finds them anyway.
    println!("@@READY");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let outcome = match lfc.bind(&binding(index, 0, Some(u64::from(index) + 1))) {
        Ok(BindOutcome::Bound) => "BOUND".to_string(),
        Ok(BindOutcome::AlreadyBound) => "ALREADY".to_string(),
        Err(BindError::OtherTimeline { bound, .. }) => format!("REFUSED {}", bound.tenant_id[0]),
        Err(e) => format!("ERROR {e}"),
    };
    println!("@@{outcome}");
    std::process::exit(0)
}

#[test]
fn racing_binders_in_separate_processes_agree_on_one_winner() {
    if let Ok(index) = std::env::var(ROLE) {
        race_child(
            &std::env::var("LFC_BIND_RACE_PATH").unwrap(),
            index.parse().unwrap(),
        );
    }
    const CHILDREN: u8 = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    drop(Lfc::create(&path, 16).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "racing_binders_in_separate_processes_agree_on_one_winner",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ROLE, i.to_string())
                .env("LFC_BIND_RACE_PATH", &path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()).lines())
        .collect();
    // The harness prints lines of its own.
    let next_line = |r: &mut std::io::Lines<BufReader<std::process::ChildStdout>>| loop {
        let line = r.next().expect("child output").unwrap();
        if let Some((_, ours)) = line.split_once("@@") {
            return ours.to_string();
        }
    };
    for r in &mut readers {
        assert_eq!(next_line(r), "READY");
    }
    // Release them all at once (as near as writes to four pipes get).
    for c in &mut children {
        c.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let outcomes: Vec<String> = readers.iter_mut().map(next_line).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let winners: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i] == "BOUND")
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = winners[0];
    for (i, o) in outcomes.iter().enumerate() {
        if i != winner {
            assert_eq!(*o, format!("REFUSED {winner}"), "{outcomes:?}");
        }
    }
    let lfc = Lfc::open(&path).unwrap();
    assert_eq!(
        lfc.binding(),
        Some(binding(winner as u8, 0, Some(winner as u64 + 1)))
    );
}

#[test]
fn a_version_2_file_from_before_the_binding_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.lfc");
    drop(Lfc::create(&path, 16).unwrap());
    // The version field follows the 8-byte magic.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&2u32.to_le_bytes(), 8).unwrap();
    let err = Lfc::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            AttachError::UnsupportedVersion {
                found: 2,
                supported: lfc::FORMAT_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: LFC format version 2 is not supported (this build reads version {})",
            path.display(),
            lfc::FORMAT_VERSION
        )
    );
}
