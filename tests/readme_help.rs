//! The README's operator guide and the binary's `--help` agree (issue 16). The real binary's
//! `--help` is read for every subcommand, nested ones included (found through each help's
//! `Commands:` list, so a new subcommand is checked without touching this file):
//! - every long flag it prints appears in the README section that documents the subcommand (a
//!   `### ` heading naming `` `udp-prefetch <command> ``; every flag of `bench <name>` in its row
//!   of the benchmarks table, the flags all benches share anywhere in that section), or, for a
//!   command with no section of its own and for flags every command takes, in the operator
//!   guide;
//! - every flag has help text, states its default once, and `Usage:` names the command as typed;
//! - every flag of the README's synopses and flag tables is one the command accepts;
//! - `bench all` runs every bench by default.

mod common;

use common::BIN;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// One option of a `--help` listing.
#[derive(Debug)]
struct Opt {
    long: String,
    /// Its help text as printed, defaults and environment included.
    text: String,
}

#[derive(Debug, Default)]
struct Help {
    usage: String,
    commands: Vec<String>,
    options: Vec<Opt>,
}

/// `udp-prefetch <path> --help`, as a person runs it. `CARGO` is removed so that `sim` does not
/// try to build the simulator inside `cargo test` (which holds the build lock); the environment
/// variables flags read are removed so help shows no values from this machine.
fn help_output(path: &[String]) -> std::process::Output {
    Command::new(BIN)
        .args(path)
        .arg("--help")
        .env_remove("CARGO")
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("UDPF_LOG_FORMAT")
        .env_remove("UDPF_TOKEN")
        .env_remove("UDPF_BENCH_LFC_DIR")
        .output()
        .expect("run udp-prefetch --help")
}

fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(usage) = line.strip_prefix("Usage: ") {
            help.usage = usage.to_string();
            continue;
        }
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match section {
            "Commands:" if indent > 0 && !trimmed.is_empty() => {
                let name = trimmed.split_whitespace().next().unwrap();
                if name != "help" {
                    help.commands.push(name.to_string());
                }
            }
            "Options:" => {
                // Option lines are indented 2 (`-h, --help`) or 6 (`--json`); descriptions in the
                // long layout by 10, and `Possible values:` items (`- name: ...`) deeper still.
                if indent <= 6 && trimmed.starts_with('-') {
                    let long = trimmed
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("--"))
                        .map(|w| w.trim_end_matches(',').to_string())
                        .unwrap_or_default();
                    // The text starts after the flag and its `<VALUE>`.
                    let spec_end = trimmed.find("  ").unwrap_or(trimmed.len());
                    help.options.push(Opt {
                        long,
                        text: trimmed[spec_end..].trim().to_string(),
                    });
                } else if let Some(last) = help.options.last_mut() {
                    last.text.push('\n');
                    last.text.push_str(trimmed);
                }
            }
            _ => {}
        }
    }
    help
}

/// The text a person reads as the flag's description: without clap's `[default: …]`,
/// `[env: …]` and `[possible values: …]` and without the `Possible values:` list.
fn description(text: &str) -> String {
    let mut out = String::new();
    let mut in_values = false;
    for line in text.lines() {
        let line = line.trim();
        if line == "Possible values:" {
            in_values = true;
            continue;
        }
        if in_values && line.starts_with("- ") {
            continue;
        }
        in_values = false;
        let mut rest = line.to_string();
        for tag in ["[default: ", "[env: ", "[possible values: "] {
            while let Some(at) = rest.find(tag) {
                let end = rest[at..].find(']').map_or(rest.len(), |e| at + e + 1);
                rest.replace_range(at..end, "");
            }
        }
        out.push_str(rest.trim());
        out.push(' ');
    }
    out.trim().to_string()
}

/// Every command path (`[]`, `["pageserver"]`, `["bench", "scan"]`, …) and its parsed help.
fn all_helps() -> BTreeMap<Vec<String>, Help> {
    let mut found = BTreeMap::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        let out = help_output(&path);
        let stdout = String::from_utf8(out.stdout).unwrap();
        if path == ["sim"] && !out.status.success() {
            // `cargo test -p udp-prefetch` builds no simulator; `cargo test --workspace`
            // (the README's command) does, and then its help is checked like every other.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("the simulator (udp-prefetch-sim) is not next to ")
                    && err.contains("`cargo build "),
                "{err}"
            );
            eprintln!("sim not built, its help not checked: {err}");
            continue;
        }
        assert!(
            out.status.success(),
            "udp-prefetch {} --help failed: {}",
            path.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let help = parse_help(&stdout);
        for c in &help.commands {
            let mut sub = path.clone();
            sub.push(c.clone());
            todo.push(sub);
        }
        found.insert(path, help);
    }
    found
}

/// A `### ` subsection of the operator guide.
struct Section {
    heading: String,
    body: String,
}

/// The README's operator guide: its introduction (before the first `### `) and subsections.
fn operator_guide() -> (String, Vec<Section>) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("\n## Operator guide\n")
        .expect("README has an Operator guide section");
    let guide = &readme[start + 1..];
    let end = guide[3..].find("\n## ").map_or(guide.len(), |e| e + 3);
    let guide = &guide[..end];
    let mut parts = guide.split("\n### ");
    let intro = parts.next().unwrap().to_string();
    let sections = parts
        .map(|p| {
            let (heading, body) = p.split_once('\n').unwrap_or((p, ""));
            Section {
                heading: heading.to_string(),
                body: body.to_string(),
            }
        })
        .collect();
    (intro, sections)
}

/// Whether `text` names `--flag` itself (not a longer flag it prefixes, as `--lfc` does
/// `--lfc-dir`).
fn mentions(text: &str, flag: &str) -> bool {
    let needle = format!("--{flag}");
    text.match_indices(&needle).any(|(at, _)| {
        let after = text[at + needle.len()..].chars().next();
        let before = text[..at].chars().next_back();
        !matches!(after, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '-')
    })
}

/// The section documenting the top-level command `name`: its heading names
/// `` `udp-prefetch name `` followed by a space or the closing backtick.
fn section_of<'a>(sections: &'a [Section], name: &str) -> Option<&'a Section> {
    let needle = format!("`udp-prefetch {name}");
    sections.iter().find(|s| {
        s.heading.match_indices(&needle).any(|(at, _)| {
            matches!(
                s.heading[at + needle.len()..].chars().next(),
                Some(' ' | '`')
            )
        })
    })
}

/// The row of the benchmarks table for `bench <name>`.
fn bench_row<'a>(section: &'a Section, name: &str) -> Option<&'a str> {
    let start = format!("| `{name}` |");
    section.body.lines().find(|l| l.starts_with(&start))
}

#[test]
fn every_flag_in_help_is_in_the_operator_guide() {
    let helps = all_helps();
    let (intro, sections) = operator_guide();
    let guide_text = format!(
        "{intro}\n{}",
        sections
            .iter()
            .map(|s| format!("{}\n{}", s.heading, s.body))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Flags the binary itself takes (help, version, log format) are in every command's help.
    let global: BTreeSet<&str> = helps[&Vec::<String>::new()]
        .options
        .iter()
        .map(|o| o.long.as_str())
        .collect();
    let mut missing = Vec::new();
    for (path, help) in &helps {
        let command = format!("udp-prefetch {}", path.join(" "));
        let command = command.trim_end();
        let section = path.first().and_then(|p| section_of(&sections, p));
        // Flags of `bench <name>` that `bench` itself does not have belong in its table row.
        let row = match path.as_slice() {
            [bench, name] if bench == "bench" => {
                let s = section.expect("the README documents `udp-prefetch bench`");
                Some(
                    bench_row(s, name)
                        .unwrap_or_else(|| panic!("the benchmarks table has no row for `{name}`")),
                )
            }
            _ => None,
        };
        let parent_flags: BTreeSet<&str> = helps
            .get(&path[..path.len().saturating_sub(1)])
            .map(|h| h.options.iter().map(|o| o.long.as_str()).collect())
            .unwrap_or_default();
        for opt in &help.options {
            let flag = opt.long.as_str();
            let (place, text) = if global.contains(flag) {
                ("the operator guide", guide_text.as_str())
            } else if let (Some(row), false) = (row, parent_flags.contains(flag)) {
                ("its row of the benchmarks table", row)
            } else if let Some(s) = section {
                ("its section", s.body.as_str())
            } else {
                ("the operator guide", guide_text.as_str())
            };
            if !mentions(text, flag) {
                missing.push(format!("{command} --{flag} (in {place})"));
            }
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "flags in --help that the README does not document:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_flag_has_help_text_and_one_default() {
    let helps = all_helps();
    let mut problems = Vec::new();
    for (path, help) in &helps {
        let command = format!("udp-prefetch {}", path.join(" "));
        let command = command.trim_end();
        if !help.usage.starts_with(&format!("{command} ")) && help.usage != command {
            problems.push(format!(
                "{command}: usage names another program: {}",
                help.usage
            ));
        }
        for opt in &help.options {
            let text = description(&opt.text);
            if text.is_empty() {
                problems.push(format!("{command} --{}: no help text", opt.long));
            }
            // A default given in words and again by clap (`[default: 1]`, this machine's value
            // of "one per two CPUs") says two different things.
            if opt.text.contains("[default: ") && text.to_lowercase().contains("default:") {
                problems.push(format!(
                    "{command} --{}: two defaults: {}",
                    opt.long, opt.text
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn readme_synopses_and_flag_tables_name_only_real_flags() {
    let helps = all_helps();
    let (_, sections) = operator_guide();
    let flags_of = |path: &[String]| -> BTreeSet<String> {
        // A command accepts its own flags and the global ones its help lists with them.
        helps
            .get(path)
            .map(|h| h.options.iter().map(|o| o.long.clone()).collect())
            .unwrap_or_default()
    };
    let mut problems = Vec::new();
    for s in &sections {
        // Synopses: lines of code blocks that run the binary.
        let mut in_code = false;
        for line in s.body.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
                continue;
            }
            let Some(rest) = line.trim_start().strip_prefix("udp-prefetch ") else {
                continue;
            };
            if !in_code {
                continue;
            }
            // The command is the longest run of leading words that names one.
            let words: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            let mut path: Vec<String> = Vec::new();
            for w in &words {
                let mut next = path.clone();
                next.push(w.clone());
                if helps.contains_key(&next) {
                    path = next;
                } else {
                    break;
                }
            }
            if path.is_empty() {
                problems.push(format!("no such command: {line}"));
                continue;
            }
            if path == ["sim"] && !helps.contains_key(&path) {
                continue; // not built here; see all_helps
            }
            let accepted = flags_of(&path);
            for flag in flag_tokens(line) {
                if !accepted.contains(&flag) {
                    problems.push(format!(
                        "udp-prefetch {} has no --{flag} (README: {line})",
                        path.join(" ")
                    ));
                }
            }
        }
        // Flag tables: `| `--flag VALUE` | default | meaning |` rows of a command's section.
        let commands: Vec<&Vec<String>> = helps
            .keys()
            .filter(|p| {
                !p.is_empty()
                    && section_of(&sections, &p[0]).map(|x| &x.heading) == Some(&s.heading)
            })
            .collect();
        for line in s.body.lines().filter(|l| l.starts_with("| `--")) {
            let cell = line.split('|').nth(1).unwrap_or_default();
            for flag in flag_tokens(cell) {
                if !commands.iter().any(|p| flags_of(p).contains(&flag)) {
                    problems.push(format!(
                        "no command of section {:?} has --{flag}",
                        s.heading
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `--flag` names in a line of text.
fn flag_tokens(text: &str) -> Vec<String> {
    text.match_indices("--")
        .filter(|(at, _)| {
            !matches!(text[..*at].chars().next_back(), Some(c) if c.is_ascii_alphanumeric() || c == '-')
        })
        .map(|(at, _)| {
            text[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn bench_all_runs_every_bench_by_default() {
    let helps = all_helps();
    let bench = &helps[&vec!["bench".to_string()]];
    let every: BTreeSet<&str> = bench
        .commands
        .iter()
        .map(String::as_str)
        .filter(|c| *c != "all")
        .collect();
    let only = helps[&vec!["bench".to_string(), "all".to_string()]]
        .options
        .iter()
        .find(|o| o.long == "only")
        .expect("bench all --only");
    let default = only
        .text
        .split("[default: ")
        .nth(1)
        .and_then(|d| d.split(']').next())
        .expect("--only has a default");
    let runs: BTreeSet<&str> = default.split(',').collect();
    assert_eq!(runs, every, "bench all --only default: {default}");
}

#[test]
fn the_help_parser_reads_both_clap_layouts() {
    let short =
        "Usage: udp-prefetch x [OPTIONS]\n\nCommands:\n  a     Does a\n  help  Print this\n\n\
                 Options:\n      --lfc <LFC>          \n      --out <OUT>   Where [default: x]\n  \
                 -h, --help        Print help\n";
    let h = parse_help(short);
    assert_eq!(h.usage, "udp-prefetch x [OPTIONS]");
    assert_eq!(h.commands, ["a"]);
    let names: Vec<&str> = h.options.iter().map(|o| o.long.as_str()).collect();
    assert_eq!(names, ["lfc", "out", "help"]);
    assert_eq!(description(&h.options[0].text), "");
    assert_eq!(description(&h.options[1].text), "Where");

    let long = "Options:\n      --mode <MODE>\n          Prefetch design\n\n          Possible values:\n          \
                - udp: UDP\n\n      --json\n          [default: false]\n\n  -h, --help\n          Print help\n";
    let h = parse_help(long);
    assert_eq!(description(&h.options[0].text), "Prefetch design");
    assert_eq!(description(&h.options[1].text), "");
    assert!(mentions("`--lfc PATH`", "lfc"));
    assert!(!mentions("`--lfc-dir DIR`", "lfc"));
    assert!(!mentions("x--lfc", "lfc"));
    assert_eq!(
        flag_tokens("a --lfc X [--max-pages N] x--y --"),
        ["lfc", "max-pages"]
    );
}
