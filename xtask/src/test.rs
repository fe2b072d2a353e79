//! `cargo xtask test`: import cycles, formatting, lints, then every test, kernel tests included.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    setup::NIGHTLY,
    util::{is_root, root, step, target_dir},
};

pub fn test(args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the kernel tests load eBPF programs and create namespaces: run as root");
    }
    crate::cycles::check(crate::cycles::CHECKED)?;
    step(
        "cargo fmt --check",
        Command::new("cargo").args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "cargo clippy",
        Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]),
    )?;
    // The kernel crate only builds for the BPF target with the pinned nightly.
    step(
        "cargo clippy (kernel crate)",
        Command::new("rustup")
            .args([
                "run",
                NIGHTLY,
                "cargo",
                "clippy",
                "-p",
                "egress-monitor-ebpf",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(target_dir().join("ebpf-clippy"))
            .args(["--", "-D", "warnings"])
            .env("RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\""),
    )?;
    // The daemon and controller tests run the real binaries, which `cargo test` does not
    // build for another package's tests.
    step(
        "build egress-monitor and egress-monitor-controller",
        Command::new("cargo").args([
            "build",
            "-p",
            "egress-monitor",
            "-p",
            "egress-monitor-controller",
        ]),
    )?;
    // The Debian package builds and installs into a scratch root.
    crate::package::verify_all(&crate::package::packages()?)?;
    cargo_test(args)
}

/// Runs `cargo test`, passing its output through, and ends with one line that totals every
/// test binary's result (cargo's own last line is whichever binary ran last).
fn cargo_test(args: &[String]) -> anyhow::Result<()> {
    // The controller's PostgreSQL tests need a server; they fail (not skip) without one.
    let postgres = crate::postgres::ensure_server()?;
    eprintln!("==> cargo test");
    let started = Instant::now();
    let mut child = Command::new("cargo")
        .arg("test")
        .arg("--")
        .args(args)
        .env(
            "EGRESS_MONITOR_BIN",
            target_dir().join("debug/egress-monitor"),
        )
        .env(
            "EGRESS_MONITOR_CONTROLLER_BIN",
            target_dir().join("debug/egress-monitor-controller"),
        )
        .env(crate::postgres::URL_VARIABLE, &postgres.url)
        .env(crate::postgres::CA_VARIABLE, &postgres.ca)
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    eprintln!("    cargo test: {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() || totals.failed > 0 {
        bail!("cargo test failed ({status})");
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds a libtest summary: `test result: ok. 28 passed; 0 failed; 1 ignored; …`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summaries_are_totalled() {
        let mut totals = Totals::default();
        totals.add("test result: ok. 28 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        totals.add("running 13 tests");
        totals
            .add("test result: FAILED. 12 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        assert_eq!(
            totals,
            Totals {
                passed: 40,
                failed: 1,
                ignored: 1
            }
        );
    }
}
