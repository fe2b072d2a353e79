//! `cargo xtask bench`: build the benchmark and what it drives in release mode, then run it.

use std::process::Command;

use anyhow::bail;

use crate::util::{is_root, root, step, target_dir};

pub fn bench(args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF programs and creates namespaces: run as root");
    }
    step(
        "build (release): egress-monitor, egress-monitor-controller, em-testclient, em-bench",
        Command::new("cargo").args([
            "build",
            "--release",
            "-p",
            "egress-monitor",
            "-p",
            "egress-monitor-controller",
            "-p",
            "egress-monitor-tests",
            "-p",
            "egress-monitor-bench",
            "--bins",
        ]),
    )?;
    let release = target_dir().join("release");
    step(
        "em-bench",
        Command::new(release.join("em-bench"))
            .arg("--out")
            .arg(root().join("bench/results"))
            .args(args)
            .env("EGRESS_MONITOR_BIN", release.join("egress-monitor"))
            .env(
                "EGRESS_MONITOR_CONTROLLER_BIN",
                release.join("egress-monitor-controller"),
            )
            .env(
                crate::postgres::URL_VARIABLE,
                crate::postgres::ensure_server()?.url,
            )
            .env("EM_TESTCLIENT", release.join("em-testclient")),
    )
}
