//! `cargo xtask run`: build in release mode and start the daemon.

use std::process::Command;

use anyhow::bail;

use crate::util::{is_root, step, target_dir};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    step(
        "build egress-monitor (release)",
        Command::new("cargo").args(["build", "--release", "-p", "egress-monitor"]),
    )?;
    if !is_root() {
        bail!("the daemon loads eBPF programs and needs root: run `sudo -E cargo xtask run`");
    }
    let binary = target_dir().join("release/egress-monitor");
    eprintln!("==> {} run {}", binary.display(), args.join(" "));
    let status = Command::new(&binary).arg("run").args(args).status()?;
    if !status.success() {
        bail!("egress-monitor exited with {status}");
    }
    Ok(())
}
