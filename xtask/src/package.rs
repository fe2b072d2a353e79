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

/// The two products' packages: the node's and the controller's.
pub struct Packages {
    pub node: PathBuf,
    pub controller: PathBuf,
}

/// Builds both .deb files and returns their paths.
pub fn packages() -> anyhow::Result<Packages> {
    Ok(Packages {
        node: package("egress-monitor")?,
        controller: package("egress-monitor-controller")?,
    })
}

/// Builds the .deb of `crate_name` and returns its path (the newest of that name).
fn package(crate_name: &str) -> anyhow::Result<PathBuf> {
    step(
        &format!("cargo deb -p {crate_name}"),
        Command::new("cargo").args(["deb", "-p", crate_name]),
    )?;
    let dir = target_dir().join("debian");
    let prefix = format!("{crate_name}_");
    std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix))
        })
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok())
        .with_context(|| format!("no {prefix}*.deb in {}", dir.display()))
}

/// Checks both packages (see [`verify`]).
pub fn verify_all(packages: &Packages) -> anyhow::Result<()> {
    verify(&packages.node, verify_node)?;
    verify(&packages.controller, verify_controller)
}

/// Unpacks a package into a scratch root (`dpkg-deb -x`, `dpkg-deb -e`) and checks it with
/// `check(root, control directory)`.
fn verify(deb: &Path, check: fn(&Path, &Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    eprintln!("==> verify {}", deb.display());
    let scratch = std::env::temp_dir().join(format!("em-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = unpack(deb, &scratch).and_then(|()| {
        check(&scratch.join("root"), &scratch.join("DEBIAN"))?;
        eprintln!("    the package installs into a scratch root and holds what it should");
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn unpack(deb: &Path, scratch: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    for (flag, into) in [("-x", "root"), ("-e", "DEBIAN")] {
        run(
            "dpkg-deb",
            &[
                flag.as_ref(),
                deb.as_os_str(),
                scratch.join(into).as_os_str(),
            ],
        )?;
    }
    Ok(())
}

/// The node's package: the files, a binary that runs, the shipped policy valid and in observe
/// mode, the policy a conffile, a unit that takes its mode from the policy, maintainer scripts
/// that start nothing and detach on removal, and no controller in it.
fn verify_node(rootfs: &Path, control: &Path) -> anyhow::Result<()> {
    for file in [
        "usr/bin/egress-monitor",
        "lib/systemd/system/egress-monitor.service",
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
    // The events file the unit writes is rotated, and the rotation is the operator's to edit.
    let rotation = std::fs::read_to_string(rootfs.join("etc/logrotate.d/egress-monitor"))
        .context("the package lacks /etc/logrotate.d/egress-monitor")?;
    let events = unit
        .split("--events ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("the unit names no --events file")?;
    ensure!(
        rotation.lines().any(|l| l.trim_start().starts_with(events)),
        "the logrotate configuration must rotate {events}"
    );
    ensure!(
        conffiles
            .lines()
            .any(|l| l == "/etc/logrotate.d/egress-monitor"),
        "the logrotate configuration must be a conffile: {conffiles:?}"
    );
    for file in [
        "usr/bin/egress-monitor-controller",
        "lib/systemd/system/egress-monitor-controller.service",
    ] {
        ensure!(
            !rootfs.join(file).exists(),
            "the node's package must not carry the controller (/{file})"
        );
    }
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
    Ok(())
}

/// The controller's package: its binary runs, and its unit runs it with a command line it
/// accepts, over TLS, reloadable, with no capability.
fn verify_controller(rootfs: &Path, control: &Path) -> anyhow::Result<()> {
    for file in [
        "usr/bin/egress-monitor-controller",
        "lib/systemd/system/egress-monitor-controller.service",
        "usr/share/doc/egress-monitor-controller/docs/fleet.md",
    ] {
        ensure!(rootfs.join(file).is_file(), "the package lacks /{file}");
    }
    ensure!(
        !rootfs.join("usr/bin/egress-monitor").exists(),
        "the controller's package must not carry the node's daemon"
    );
    // It takes over the unit the node's package shipped before 0.2, and stops on removal.
    let fields = std::fs::read_to_string(control.join("control"))?;
    for needle in [
        "Replaces: egress-monitor (<< 0.2.0)",
        "Breaks: egress-monitor (<< 0.2.0)",
    ] {
        ensure!(
            fields.contains(needle),
            "the controller's control file lacks `{needle}`"
        );
    }
    let prerm = std::fs::read_to_string(control.join("prerm"))?;
    ensure!(
        prerm.contains("systemctl stop egress-monitor-controller"),
        "removing the controller's package must stop it"
    );
    let binary = rootfs.join("usr/bin/egress-monitor-controller");
    let version = run(binary.to_str().context("path")?, &["--version".as_ref()])?;
    ensure!(
        version.starts_with("egress-monitor-controller "),
        "unexpected --version: {version}"
    );
    let controller = std::fs::read_to_string(
        rootfs.join("lib/systemd/system/egress-monitor-controller.service"),
    )?;
    for needle in [
        "ExecStart=/usr/bin/egress-monitor-controller ",
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
        .split("ExecStart=/usr/bin/egress-monitor-controller ")
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
        .context("the controller's unit has a command line it refuses")?;
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
