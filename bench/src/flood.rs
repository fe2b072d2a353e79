//! The denied path under a flood, two ways, with the daemon running in enforce mode (default
//! flow interval): one sender spraying datagrams at as many distinct destinations (every one a
//! new flow, so every one an event: what the event pipeline sustains), and one sender sending
//! the same number to one destination (one flow: what aggregation saves). For each: packets
//! dropped per second, events written and their rate, and whether every dropped packet is
//! accounted for in the events' `packets`.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use egress_monitor::{datapath::Datapath, datapath::pins::PinLayout};
use egress_monitor_tests::{
    bpffs::BpfFs,
    cgroup::Cgroup,
    client::{Client, Outcome},
    netns::{INTERNET_V4, Topology, UDP_PORT},
};
use serde::Serialize;

use crate::daemon;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Every datagram to another (address, port) of 203.0.113.0/24.
    ManyFlows,
    /// Every datagram to 203.0.113.1, from one socket.
    OneFlow,
}

impl Scenario {
    pub fn label(self) -> &'static str {
        match self {
            Scenario::ManyFlows => "distinct destinations (a flow each)",
            Scenario::OneFlow => "one destination (one flow)",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Flood {
    pub scenario: Scenario,
    pub sent: u64,
    pub send_seconds: f64,
    pub dropped: u64,
    pub dropped_per_s: f64,
    /// Lines in the events file once the daemon stopped.
    pub events_written: u64,
    /// Ring-buffer records the kernel could not queue.
    pub events_lost: u64,
    /// Events written, divided by the time from the flood's start to the last write before
    /// the stop.
    pub events_per_s: f64,
    /// CPU time (user + system) the daemon spent during the flood, and the events it wrote per
    /// second of it: what one core of the consumer sustains, whatever the sender's rate.
    pub daemon_cpu_s: f64,
    pub events_per_cpu_s: f64,
    /// The sum of the events' `packets`: equal to `dropped` when nothing was lost.
    pub packets_in_events: u64,
    /// Dropped packets counted in their flow rather than sent as events.
    pub aggregated: u64,
}

pub fn measure(count: u32) -> anyhow::Result<Vec<Flood>> {
    [Scenario::ManyFlows, Scenario::OneFlow]
        .into_iter()
        .map(|scenario| flood(scenario, count))
        .collect()
}

fn flood(scenario: Scenario, count: u32) -> anyhow::Result<Flood> {
    let topology = Topology::new()?;
    let cgroup = Cgroup::new()?;
    let bpffs = BpfFs::new()?;
    let events = std::env::temp_dir().join(format!("em-bench-flood-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&events);
    let daemon = daemon::start(&cgroup, &bpffs, &events, "enforce");
    let client = Client {
        binary: PathBuf::from(
            std::env::var_os("EM_TESTCLIENT")
                .context("EM_TESTCLIENT (set by cargo xtask bench)")?,
        ),
        netns: topology.node.name.clone(),
        cgroup: Some(cgroup.path.clone()),
        uid: None,
        interval: None,
        net_raw_only: false,
        mark: None,
    };
    let cpu_before = cpu_seconds(daemon.pid())?;
    let started = Instant::now();
    let outcome: Outcome = match scenario {
        Scenario::ManyFlows => client.udp_spray(INTERNET_V4, count, 0)?,
        Scenario::OneFlow => client.udp(INTERNET_V4.into(), UDP_PORT, count, 0, false)?,
    };
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
    let before_stop = std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .count() as u64;
    let daemon_cpu_s = cpu_seconds(daemon.pid())? - cpu_before;
    let counters = Datapath::existing(&PinLayout::new(bpffs.pin_path()))?.counters()?;
    // A graceful stop (SIGTERM) writes the flows' last updates.
    let (code, log) = daemon.stop();
    anyhow::ensure!(
        code == 0,
        "egress-monitor exited with {code} after the flood: {log:#?}"
    );
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    let _ = std::fs::remove_file(&events);
    let mut packets_in_events = 0;
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).context("an event line")?;
        packets_in_events += event["packets"].as_u64().context("packets")?;
    }
    let dropped = counters.cgroup.denied_dropped.packets;
    let flood = Flood {
        scenario,
        sent: outcome.ok + outcome.eperm,
        send_seconds,
        dropped,
        dropped_per_s: dropped as f64 / send_seconds,
        events_written: text.lines().count() as u64,
        events_lost: counters.events_lost,
        events_per_s: before_stop as f64 / writing.max(1e-3),
        daemon_cpu_s,
        events_per_cpu_s: before_stop as f64 / daemon_cpu_s.max(0.01),
        packets_in_events,
        aggregated: counters.aggregated,
    };
    eprintln!(
        "   {}: {} dropped in {:.2} s ({:.0}/s); {} events written ({:.0}/s; {:.0} per daemon CPU second), {} lost; {} packets in events, {} aggregated",
        scenario.label(),
        flood.dropped,
        flood.send_seconds,
        flood.dropped_per_s,
        flood.events_written,
        flood.events_per_s,
        flood.events_per_cpu_s,
        flood.events_lost,
        flood.packets_in_events,
        flood.aggregated
    );
    Ok(flood)
}

/// CPU time of a process so far, all its threads, in nanoseconds precision (the first field
/// of each `/proc/PID/task/TID/schedstat`; `/proc/PID/stat` counts in 10 ms ticks).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut nanoseconds = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        nanoseconds += schedstat
            .split_whitespace()
            .next()
            .context("schedstat")?
            .parse::<u64>()?;
    }
    Ok(nanoseconds as f64 / 1e9)
}
