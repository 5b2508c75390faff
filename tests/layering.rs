//! The dependency rules of `src/lib.rs` and `workers/src/lib.rs`, held by scanning the sources:
//! a `use` that crosses a layer fails here before it ships. A source scan, not a compiler check,
//! so it also catches a path written inline (`workers::daemon::x()`) and test modules.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no sources under {}", dir.display());
    files
}

/// `file:line: text` of every line under `dir` (of the workspace) that mentions one of
/// `forbidden`. Comments count too: a doc that points a reader across the rule is as wrong as
/// the code it describes.
fn mentions(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for file in rust_files(&root.join(dir)) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                let rel = file.strip_prefix(root).unwrap_or(&file);
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

/// The compute's part of the `workers` crate (`workers/src/lib.rs`).
const WORKERS_COMPUTE: [&str; 6] = [
    "workers::daemon",
    "workers::pump",
    "workers::ingest",
    "workers::junk",
    "workers::metrics",
    "workers::pidfile",
];

#[test]
fn the_page_server_does_not_link_the_compute_daemon_code() {
    let found = mentions("src/pageserver", &WORKERS_COMPUTE);
    assert!(
        found.is_empty(),
        "src/pageserver uses the compute's workers modules:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_page_server_and_the_compute_never_import_each_other() {
    let found = mentions(
        "src/pageserver",
        &["crate::compute", "udp_prefetch::compute"],
    );
    assert!(
        found.is_empty(),
        "src/pageserver imports compute:\n{}",
        found.join("\n")
    );
    let found = mentions(
        "src/compute",
        &["crate::pageserver", "udp_prefetch::pageserver"],
    );
    assert!(
        found.is_empty(),
        "src/compute imports pageserver:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_protocol_imports_neither_side_nor_the_cli() {
    let found = mentions(
        "src/protocol",
        &[
            "crate::pageserver",
            "crate::compute",
            "crate::cmd",
            "crate::bench",
        ],
    );
    assert!(
        found.is_empty(),
        "src/protocol imports a layer above it:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_shared_layer_of_workers_does_not_use_the_daemon() {
    let compute: Vec<String> = ["daemon", "pump", "ingest", "junk", "metrics", "pidfile"]
        .iter()
        .map(|m| format!("crate::{m}"))
        .collect();
    let compute: Vec<&str> = compute.iter().map(String::as_str).collect();
    let mut found = Vec::new();
    for shared in [
        "workers/src/datagram.rs",
        "workers/src/http.rs",
        "workers/src/sched.rs",
    ] {
        found.extend(mentions_file(shared, &compute));
    }
    found.extend(mentions("workers/src/udp", &compute));
    assert!(
        found.is_empty(),
        "the shared layer of workers uses the daemon's modules:\n{}",
        found.join("\n")
    );
}

fn mentions_file(file: &str, forbidden: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, line)| forbidden.iter().any(|f| line.contains(f)))
        .map(|(n, line)| format!("{file}:{}: {}", n + 1, line.trim()))
        .collect()
}

#[test]
fn nothing_below_the_cli_uses_it() {
    for dir in ["src/pageserver", "src/compute", "src/protocol"] {
        let found = mentions(dir, &["crate::cmd", "crate::bench"]);
        assert!(
            found.is_empty(),
            "{dir} uses the CLI's internals:\n{}",
            found.join("\n")
        );
    }
}
