//! `cargo xtask package`: the Debian package (cargo-deb), and the check that it installs into a
//! scratch root and holds what an operator expects.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::util::{output_of, root, step, target_dir};

pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Installs cargo-deb when missing (idempotent).
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    let wanted = CARGO_DEB_VERSION;
    if output_of("cargo", &["deb", "--version"]).is_some_and(|v| v.contains(wanted)) {
        eprintln!("==> cargo-deb {wanted}: present");
        return Ok(());
    }
    step(
        &format!("install cargo-deb {wanted}"),
        Command::new("cargo").args(["install", "cargo-deb", "--version", wanted, "--locked"]),
    )
}

/// Builds the .deb and returns its path.
pub fn package() -> anyhow::Result<PathBuf> {
    step(
        "cargo deb",
        Command::new("cargo").args(["deb", "-p", "egress-monitor"]),
    )?;
    let dir = target_dir().join("debian");
    std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok())
        .with_context(|| format!("no .deb in {}", dir.display()))
}

/// Unpacks the package into a scratch root (`dpkg-deb -x`) and checks it: the files, a binary
/// that runs, the shipped policy valid and in observe mode, the policy a conffile, and a unit
/// that takes its mode from the policy.
pub fn verify(deb: &Path) -> anyhow::Result<()> {
    eprintln!("==> verify {}", deb.display());
    let scratch = std::env::temp_dir().join(format!("em-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = verify_in(deb, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn verify_in(deb: &Path, scratch: &Path) -> anyhow::Result<()> {
    let rootfs = scratch.join("root");
    let control = scratch.join("DEBIAN");
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    run(
        "dpkg-deb",
        &["-x".as_ref(), deb.as_os_str(), rootfs.as_os_str()],
    )?;
    run(
        "dpkg-deb",
        &["-e".as_ref(), deb.as_os_str(), control.as_os_str()],
    )?;
    for file in [
        "usr/bin/egress-monitor",
        "lib/systemd/system/egress-monitor.service",
        "lib/systemd/system/egress-monitor-controller.service",
        "etc/egress-monitor/policy.toml",
        "usr/share/doc/egress-monitor/README.md",
        // The pages the shipped policy, units and maintainer scripts point to.
        "usr/share/doc/egress-monitor/docs/policy.md",
        "usr/share/doc/egress-monitor/docs/operations.md",
        "usr/share/doc/egress-monitor/docs/fleet.md",
        "usr/share/doc/egress-monitor/docs/security.md",
    ] {
        ensure!(rootfs.join(file).is_file(), "the package lacks /{file}");
    }
    let binary = rootfs.join("usr/bin/egress-monitor");
    let version = run(binary.to_str().context("path")?, &["--version".as_ref()])?;
    ensure!(
        version.starts_with("egress-monitor "),
        "unexpected --version: {version}"
    );
    let policy = rootfs.join("etc/egress-monitor/policy.toml");
    let check = run(
        binary.to_str().context("path")?,
        &["policy".as_ref(), "check".as_ref(), policy.as_os_str()],
    )?;
    ensure!(
        check.contains("observe mode"),
        "the shipped policy must observe, not enforce: {check}"
    );
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    ensure!(
        conffiles
            .lines()
            .any(|l| l == "/etc/egress-monitor/policy.toml"),
        "the policy must be a conffile (kept on upgrade): {conffiles:?}"
    );
    let unit = std::fs::read_to_string(rootfs.join("lib/systemd/system/egress-monitor.service"))?;
    ensure!(
        unit.contains("ExecStart=/usr/bin/egress-monitor run"),
        "the unit must run the packaged binary"
    );
    ensure!(
        !unit.contains("--mode"),
        "the unit must take its mode from the policy file"
    );
    let controller = std::fs::read_to_string(
        rootfs.join("lib/systemd/system/egress-monitor-controller.service"),
    )?;
    for needle in [
        "ExecStart=/usr/bin/egress-monitor controller",
        // Tokens never cross the network in the clear.
        "--tls-cert",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=\n",
    ] {
        ensure!(
            controller.contains(needle),
            "the controller's unit lacks `{}`",
            needle.trim()
        );
    }
    // Its command line parses (the files it names need not exist for --help to answer).
    let exec: Vec<String> = controller
        .split("ExecStart=/usr/bin/egress-monitor ")
        .nth(1)
        .context("ExecStart")?
        .lines()
        .map(|line| line.trim().trim_end_matches('\\').trim().to_owned())
        .take_while(|line| !line.is_empty() && !line.starts_with("ExecReload"))
        .flat_map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut args: Vec<&std::ffi::OsStr> = exec.iter().map(|a| a.as_ref()).collect();
    args.push("--help".as_ref());
    run(binary.to_str().context("path")?, &args)
        .context("the controller's unit has a command line egress-monitor refuses")?;
    let postinst = std::fs::read_to_string(control.join("postinst"))?;
    ensure!(
        !postinst.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("systemctl enable")
                || l.starts_with("systemctl start")
                || l.starts_with("deb-systemd-invoke")
        }),
        "postinst must not start anything"
    );
    let prerm = std::fs::read_to_string(control.join("prerm"))?;
    ensure!(
        prerm.contains("egress-monitor detach"),
        "removing the package must detach"
    );
    eprintln!("    the package installs into a scratch root and holds what it should");
    Ok(())
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
