//! `udp-prefetch sim`: runs the deterministic simulator, which lives in the `sim` crate's
//! `udp-prefetch-sim` binary (the simulator depends on this crate, so this crate cannot link
//! it; the subcommand hands over to the sibling binary with the same arguments).
//!
//! Finding the sibling: `cargo run` builds only this package, so after the README's set-up
//! command (`cargo run --release -- demo`) there is no simulator beside this binary yet. When
//! cargo started this process (`cargo run` sets `CARGO` and `CARGO_MANIFEST_DIR`), the subcommand
//! therefore builds the simulator itself, with this binary's profile and target directory: a
//! no-op when it is up to date, and never a stale simulator beside a freshly built page server.
//! Otherwise it runs the sibling, or fails naming the exact command that builds it.
//!
//! Owns: finding (or, under `cargo run`, building) the sibling binary and the hand-over by `exec`.
//! Links no simulator code and uses no other module of this crate but `cmd`'s exit types: the
//! arguments pass through unparsed.

use super::{BadInput, Outcome};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct SimArgs {
    /// Arguments for the simulator: --seeds N [--first-seed S] [--faults PROFILE] [--json]
    /// (run `udp-prefetch sim --help` for all).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

pub const SIM_BINARY: &str = "udp-prefetch-sim";

pub fn run(args: SimArgs) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe()?;
    let sim = exe.with_file_name(SIM_BINARY);
    if let Some(workspace) = started_by_cargo() {
        build_with_cargo(&workspace, &exe)?;
    }
    if !sim.exists() {
        return Err(BadInput(missing_message(&exe)).into());
    }
    // exec replaces this process: the simulator's exit status is the command's.
    let err = std::process::Command::new(&sim).args(&args.args).exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", sim.display()))
}

/// The cargo executable and this workspace's manifest directory, when `cargo run` started this
/// process in a checkout that has the simulator's package.
struct CargoWorkspace {
    cargo: PathBuf,
    manifest_dir: PathBuf,
}

fn started_by_cargo() -> Option<CargoWorkspace> {
    let cargo = PathBuf::from(std::env::var_os("CARGO")?);
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    // CARGO is also set for anything a build script or another package's `cargo run` starts:
    // build only in this workspace.
    manifest_dir
        .join("sim/Cargo.toml")
        .is_file()
        .then_some(CargoWorkspace {
            cargo,
            manifest_dir,
        })
}

/// Builds the simulator into the directory `exe` lives in. Under `cargo run` the build lock is
/// free again (cargo exec'd this binary); under `cargo test` it is not, so tests that run this
/// subcommand remove `CARGO` from its environment.
fn build_with_cargo(ws: &CargoWorkspace, exe: &Path) -> anyhow::Result<()> {
    let (profile, target_dir) = profile_and_target_dir(exe).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not in a cargo target directory: cannot build {SIM_BINARY} beside it",
            exe.display()
        )
    })?;
    let status = std::process::Command::new(&ws.cargo)
        .arg("build")
        .args(profile.cargo_args())
        .args(["-p", "sim", "--bin", SIM_BINARY, "--manifest-path"])
        .arg(ws.manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", ws.cargo.display()))?;
    anyhow::ensure!(
        status.success(),
        "building the simulator ({SIM_BINARY}) failed: {status}"
    );
    Ok(())
}

/// The cargo profile a binary was built with, from the directory cargo put it in.
#[derive(Debug, PartialEq, Eq)]
enum Profile {
    Dev,
    Release,
    Named(String),
}

impl Profile {
    fn cargo_args(&self) -> Vec<String> {
        match self {
            Profile::Dev => vec![],
            Profile::Release => vec!["--release".into()],
            Profile::Named(name) => vec!["--profile".into(), name.clone()],
        }
    }
}

/// `<target-dir>/<profile-dir>/udp-prefetch` → the profile and the target directory. `None`
/// for a binary outside a target directory (e.g. installed in a `bin` directory).
fn profile_and_target_dir(exe: &Path) -> Option<(Profile, &Path)> {
    let profile_dir = exe.parent()?;
    let target_dir = profile_dir.parent()?;
    let profile = match profile_dir.file_name()?.to_str()? {
        "debug" => Profile::Dev,
        "release" => Profile::Release,
        // A custom profile's directory is named after it; a `bin` directory is no profile.
        "bin" => return None,
        name => Profile::Named(name.to_string()),
    };
    // Cargo marks every target directory with this file (since 1.77, with CACHEDIR.TAG).
    (target_dir.join("CACHEDIR.TAG").is_file() || target_dir.file_name()? == "target")
        .then_some((profile, target_dir))
}

/// What to run so that the simulator is found next to `exe`.
fn missing_message(exe: &Path) -> String {
    let how = match profile_and_target_dir(exe) {
        Some((profile, target_dir)) => {
            let mut run = vec!["cargo".to_string(), "run".to_string()];
            run.extend(profile.cargo_args());
            let mut cmd = vec!["cargo".to_string(), "build".to_string()];
            cmd.extend(profile.cargo_args());
            cmd.extend(["-p".into(), "sim".into()]);
            // The default target directory needs no flag; any other must be named, or cargo
            // would build into ./target instead.
            if target_dir.file_name().is_none_or(|n| n != "target") {
                cmd.extend(["--target-dir".into(), target_dir.display().to_string()]);
            }
            format!(
                "build it with `{}` in the source tree (`{} -- sim …` builds it too)",
                cmd.join(" "),
                run.join(" ")
            )
        }
        None => match exe.parent() {
            Some(bin) if bin.file_name().is_some_and(|n| n == "bin") => format!(
                "install it beside this one with `cargo install --locked --path sim --root {}` in the source tree",
                bin.parent().unwrap_or(bin).display()
            ),
            _ => format!("put the `sim` package's {SIM_BINARY} binary in the same directory"),
        },
    };
    format!(
        "the simulator ({SIM_BINARY}) is not next to {}: {how}",
        exe.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_simulator_names_the_command_that_builds_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(target.join("release")).unwrap();
        let exe = target.join("release/udp-prefetch");
        assert_eq!(
            missing_message(&exe),
            format!(
                "the simulator (udp-prefetch-sim) is not next to {}: build it with `cargo build \
                 --release -p sim` in the source tree (`cargo run --release -- sim …` builds it \
                 too)",
                exe.display()
            )
        );

        // A target directory elsewhere (CARGO_TARGET_DIR) is named; a dev build has no flag.
        let other = dir.path().join("build-out");
        std::fs::create_dir_all(other.join("debug")).unwrap();
        std::fs::write(
            other.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        let exe = other.join("debug/udp-prefetch");
        assert!(
            missing_message(&exe).contains(&format!(
                "`cargo build -p sim --target-dir {}`",
                other.display()
            )),
            "{}",
            missing_message(&exe)
        );

        // Installed by `cargo install`: install the simulator into the same root.
        let exe = dir.path().join("root/bin/udp-prefetch");
        assert!(missing_message(&exe).contains(&format!(
            "`cargo install --locked --path sim --root {}`",
            dir.path().join("root").display()
        )));
    }

    #[test]
    fn the_profile_comes_from_the_binary_directory() {
        let t = Path::new("/x/target");
        assert_eq!(
            profile_and_target_dir(&t.join("release/udp-prefetch")),
            Some((Profile::Release, t))
        );
        assert_eq!(
            profile_and_target_dir(&t.join("debug/udp-prefetch")),
            Some((Profile::Dev, t))
        );
        assert_eq!(
            profile_and_target_dir(&t.join("bench/udp-prefetch")),
            Some((Profile::Named("bench".into()), t))
        );
        assert_eq!(
            profile_and_target_dir(Path::new("/usr/local/bin/udp-prefetch")),
            None
        );
    }
}
