//! The daemon as a process: resident memory at idle, and a helper to run it for the flood.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use egress_monitor_tests::{bpffs::BpfFs, cgroup::Cgroup, daemon_binary};
use serde::Serialize;

/// A running `egress-monitor run`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct DaemonProcess {
    child: Child,
}

impl DaemonProcess {
    /// Starts it on `cgroup`, pinned on `bpffs`, and waits (at most 30 s) until it is attached.
    pub fn start(
        cgroup: &Cgroup,
        bpffs: &BpfFs,
        events: &Path,
        mode: &str,
    ) -> anyhow::Result<DaemonProcess> {
        let mut child = Command::new(daemon_binary())
            .args(["run", "--mode", mode, "--cgroup"])
            .arg(&cgroup.path)
            .arg("--pin-path")
            .arg(bpffs.pin_path())
            .arg("--events")
            .arg(events)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting egress-monitor")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let daemon = DaemonProcess { child };
        loop {
            match receiver.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("rules loaded") => return Ok(daemon),
                Ok(_) => {}
                Err(_) => bail!("egress-monitor did not start within 30 s"),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Daemon {
    pub rss_idle_kib: u64,
}

/// Resident memory of an idle daemon (default policy, observe mode), one second after start.
pub fn measure() -> anyhow::Result<Daemon> {
    let cgroup = Cgroup::new()?;
    let bpffs = BpfFs::new()?;
    let daemon = DaemonProcess::start(&cgroup, &bpffs, Path::new("/dev/null"), "observe")?;
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))?;
    let rss_idle_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    eprintln!("   idle daemon: {rss_idle_kib} KiB resident");
    Ok(Daemon { rss_idle_kib })
}
