//! The daemon as a process (the kernel tests' [`Daemon`]): resident memory at idle, and
//! started for the flood.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use egress_monitor_tests::{bpffs::BpfFs, cgroup::Cgroup, daemon::Daemon};
use serde::Serialize;

/// Starts `egress-monitor run --mode MODE` on `cgroup`, pinned on `bpffs`, events to
/// `events`, and waits (bounded) until it is attached: the kernel tests' daemon process.
pub fn start(cgroup: &Cgroup, bpffs: &BpfFs, events: &Path, mode: &str) -> Daemon {
    let (cgroup, pins, events) = (
        cgroup.path.display().to_string(),
        bpffs.pin_path().display().to_string(),
        events.display().to_string(),
    );
    Daemon::start(
        None,
        &[
            "--mode",
            mode,
            "--cgroup",
            &cgroup,
            "--pin-path",
            &pins,
            "--events",
            &events,
        ],
    )
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleDaemon {
    pub rss_idle_kib: u64,
}

/// Resident memory of an idle daemon (default policy, observe mode), one second after start.
pub fn measure() -> anyhow::Result<IdleDaemon> {
    let cgroup = Cgroup::new()?;
    let bpffs = BpfFs::new()?;
    let daemon = start(&cgroup, &bpffs, Path::new("/dev/null"), "observe");
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))?;
    let rss_idle_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    eprintln!("   idle daemon: {rss_idle_kib} KiB resident");
    Ok(IdleDaemon { rss_idle_kib })
}
