//! `cargo xtask setup`: everything a fresh machine lacks, installed idempotently.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::util::{is_root, output_of, step};

/// The workspace toolchain; keep in step with rust-toolchain.toml.
pub const STABLE: &str = "1.99.0";
/// The kernel crate's toolchain; keep in step with egress-monitor/build.rs.
pub const NIGHTLY: &str = "nightly-2026-10-01";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// What the tests, the benchmark and the daemon's users rely on (a shell test that succeeds
/// when it is there), and the Debian packages that have it. iperf3, nft, iptables and ipset are
/// the benchmark's peers and rivals; PostgreSQL is the controller's shared store; chromium
/// renders the controller's page in the tests; openssl makes their TLS certificates; busybox
/// (its udhcpd and udhcpc), ethtool and tcpdump are the real DHCP server, client and capture
/// that the kernel tests run under the raw-socket guards.
const DEBIAN_TOOLS: [(&str, &str); 12] = [
    ("command -v ip", "iproute2"),
    ("command -v bpftool", "bpftool"),
    ("command -v iperf3", "iperf3"),
    ("command -v nft", "nftables"),
    ("command -v iptables", "iptables"),
    ("command -v ipset", "ipset"),
    ("ls /usr/lib/postgresql/*/bin/postgres", "postgresql"),
    ("command -v chromium", "chromium"),
    ("command -v openssl", "openssl"),
    ("busybox udhcpd --help", "busybox"),
    ("command -v tcpdump", "tcpdump"),
    ("command -v ethtool", "ethtool"),
];

pub fn setup() -> anyhow::Result<()> {
    toolchains()?;
    bpf_linker()?;
    debian_tools()?;
    crate::package::ensure_cargo_deb()
}

fn toolchains() -> anyhow::Result<()> {
    // `rustup toolchain install` is a no-op for a toolchain already present.
    step(
        &format!("toolchain {NIGHTLY} + rust-src, clippy"),
        Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "-c",
            "rust-src,clippy",
        ]),
    )?;
    step(
        &format!("toolchain {STABLE} + clippy, rustfmt"),
        Command::new("rustup").args([
            "toolchain",
            "install",
            STABLE,
            "--profile",
            "minimal",
            "-c",
            "clippy,rustfmt",
        ]),
    )
}

/// bpf-linker must use the LLVM of the rustc that emits the bitcode: the pinned nightly ships
/// its libLLVM, and bpf-linker is built against it through a prefix of two symlinks.
fn bpf_linker() -> anyhow::Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    if output_of("bpf-linker", &["--version"]).as_deref() == Some(wanted.as_str()) {
        eprintln!("==> {wanted}: present");
        return Ok(());
    }
    let sysroot = output_of("rustup", &["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .context("finding the nightly's sysroot")?;
    let lib = PathBuf::from(sysroot).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // The installed binary's rpath points here, so this directory must stay.
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/share/egress-monitor/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so", llvm.as_str()] {
        let path = prefix_lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(lib.join(&llvm), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    step(
        &format!("install {wanted} against {llvm}"),
        Command::new("rustup")
            .args([
                "run",
                STABLE,
                "cargo",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    match output_of("bpf-linker", &["--version"]) {
        Some(version) if version == wanted => Ok(()),
        other => bail!(
            "bpf-linker installed but `bpf-linker --version` says {other:?}; is ~/.cargo/bin on PATH?"
        ),
    }
}

fn debian_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(present, _)| output_of("sh", &["-c", present]).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: install them as root (apt-get install {})",
            missing.join(" ")
        );
    }
    step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    step(
        &format!("apt-get install {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
