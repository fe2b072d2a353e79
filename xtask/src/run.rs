//! `cargo xtask run`: build in release mode, start the daemon, and clean up after it.
//!
//! The product keeps enforcing after its daemon stops (pinned state; only `detach` removes
//! it). This developer task is for trying it out, so it pins under a path of its own — never
//! adopting, and never removing, a real deployment's state — and detaches when the daemon
//! exits.

use std::process::Command;

use anyhow::bail;

use crate::util::{is_root, step, target_dir};

const PIN_PATH: &str = "/sys/fs/bpf/egress-monitor-xtask-run";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    step(
        "build egress-monitor (release)",
        Command::new("cargo").args(["build", "--release", "-p", "egress-monitor"]),
    )?;
    if !is_root() {
        bail!("the daemon loads eBPF programs and needs root: run `sudo -E cargo xtask run`");
    }
    let binary = target_dir().join("release/egress-monitor");
    let pin_path_given = args
        .iter()
        .any(|a| a == "--pin-path" || a.starts_with("--pin-path="));
    let mut command = Command::new(&binary);
    command.arg("run").args(args);
    if !pin_path_given {
        command.args(["--pin-path", PIN_PATH]);
    }
    eprintln!("==> {command:?}");
    // Ctrl-C reaches the whole foreground process group: the daemon stops on it, and this task
    // must outlive it to clean up. (The daemon installs its own handler; an inherited "ignore"
    // does not stop it.)
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = command.status()?;
    if !pin_path_given {
        eprintln!(
            "==> detaching (cargo xtask run cleans up; the egress-monitor binary itself keeps enforcing until `egress-monitor detach`)"
        );
        // Its report goes to standard error: standard output carries the events.
        let detached = Command::new(&binary)
            .args(["detach", "--pin-path", PIN_PATH])
            .stdout(std::io::stderr())
            .status()?;
        if !detached.success() {
            bail!(
                "detach failed ({detached}): check `egress-monitor status --pin-path {PIN_PATH}`"
            );
        }
    }
    if !status.success() {
        bail!("egress-monitor exited with {status}");
    }
    Ok(())
}
