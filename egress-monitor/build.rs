//! Builds the kernel programs (egress-monitor-ebpf) for bpfel-unknown-none with the pinned
//! nightly and bpf-linker, and leaves the object at `$OUT_DIR/egress-monitor`, where
//! the datapath module embeds it (`include_bytes_aligned!`).
//!
//! `AYA_BUILD_SKIP=1` writes an empty object instead, so `cargo check`, clippy and docs work on a
//! machine without the eBPF toolchain; the daemon then refuses to load with a clear error.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The nightly the kernel crate is built with (needs `rust-src` for `-Z build-std=core`), and
/// whose libLLVM bpf-linker is built against: `cargo xtask setup` installs both. Keep in step
/// with `xtask/src/setup.rs`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-01";
const EBPF_PACKAGE: &str = "egress-monitor-ebpf";
const EBPF_BINARY: &str = "egress-monitor";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        fs::write(out_dir.join(EBPF_BINARY), [])
            .context("writing the empty stand-in eBPF object")?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} is not in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if the toolchain is missing)")
}
