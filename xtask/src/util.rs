//! Running commands with progress, and where things are.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Runs a step, printing what it does and how long it took; fails with the command line.
/// The step's standard output goes to standard error, so that `cargo xtask run`'s standard
/// output carries the daemon's events and nothing else.
pub fn step(what: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let started = Instant::now();
    let status = command
        .current_dir(root())
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    eprintln!("    {what}: {:.1} s", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("{what} failed ({status}): {command:?}");
    }
    Ok(())
}

/// Output of a command that may be missing; `None` when it cannot run or fails.
pub fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
