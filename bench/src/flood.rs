//! The denied path under a flood: a client sends datagrams to an internet peer as fast as it
//! can, in enforce mode with the daemon running; how many are dropped per second, and how many
//! events the daemon writes per second.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use egress_monitor::{datapath::Datapath, pins::PinLayout};
use egress_monitor_tests::{
    bpffs::BpfFs,
    cgroup::Cgroup,
    client::Client,
    netns::{INTERNET_V4, Topology, UDP_PORT},
};
use serde::Serialize;

use crate::daemon::DaemonProcess;

#[derive(Clone, Debug, Serialize)]
pub struct Flood {
    pub sent: u64,
    pub send_seconds: f64,
    pub dropped: u64,
    pub dropped_per_s: f64,
    pub events_written: u64,
    pub events_lost: u64,
    /// Events written, divided by the time from the flood's start to the last write.
    pub events_per_s: f64,
}

pub fn measure(count: u32) -> anyhow::Result<Flood> {
    let topology = Topology::new()?;
    let cgroup = Cgroup::new()?;
    let bpffs = BpfFs::new()?;
    let events = std::env::temp_dir().join(format!("em-bench-flood-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&events);
    let daemon = DaemonProcess::start(&cgroup, &bpffs, &events, "enforce")?;
    let client = Client {
        binary: PathBuf::from(
            std::env::var_os("EM_TESTCLIENT")
                .context("EM_TESTCLIENT (set by cargo xtask bench)")?,
        ),
        netns: topology.node.name.clone(),
        cgroup: Some(cgroup.path.clone()),
        uid: None,
        interval: None,
    };
    let started = Instant::now();
    let outcome = client.udp(INTERNET_V4.into(), UDP_PORT, count, 0, false)?;
    let send_seconds = started.elapsed().as_secs_f64();
    // Wait (at most 60 s) until the events file stops growing.
    let mut size = 0;
    let mut last_growth = Instant::now();
    while last_growth.elapsed() < Duration::from_millis(700)
        && started.elapsed() < Duration::from_secs(60)
    {
        let now = std::fs::metadata(&events).map(|m| m.len()).unwrap_or(0);
        if now != size {
            size = now;
            last_growth = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let writing = last_growth.duration_since(started).as_secs_f64();
    let counters = Datapath::existing(&PinLayout::new(bpffs.pin_path()))?.counters()?;
    drop(daemon);
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    let _ = std::fs::remove_file(&events);
    let events_written = text.lines().count() as u64;
    let dropped = counters.cgroup.denied_dropped.packets;
    let flood = Flood {
        sent: outcome.ok + outcome.eperm,
        send_seconds,
        dropped,
        dropped_per_s: dropped as f64 / send_seconds,
        events_written,
        events_lost: counters.events_lost,
        events_per_s: events_written as f64 / writing.max(1e-3),
    };
    eprintln!(
        "   {} dropped in {:.2} s ({:.0}/s); {} events written ({:.0}/s), {} lost",
        flood.dropped,
        flood.send_seconds,
        flood.dropped_per_s,
        flood.events_written,
        flood.events_per_s,
        flood.events_lost
    );
    Ok(flood)
}
