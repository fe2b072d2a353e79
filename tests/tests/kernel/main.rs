//! Kernel tests: real programs, real verifier, real packets, in network namespaces and child
//! cgroups the tests create (see the harness crate's docs). They need root and BPF; without
//! them they fail loudly rather than skip.
//!
//! - `datapath`: the library, both hooks, both modes, IPv4/IPv6, TCP/UDP/ICMP, exact counters.
//! - `daemon`: the binary end to end: events file, signals, exit.
//! - `cli`: exit codes and messages for bad input.
//! - `durable`: enforcement that outlives the daemon; `flows`: flow events and their counts.
//! - `expiry`: rules with `expires` end in the kernel on time, without a reload.
//! - `learn`: a policy suggested from observed traffic, replayed, then enforced.
//! - `proof`: continuous proof: scheduled self-checks, alarms for removed links, verified nodes.
//! - `logs`: the events file as read: node, schema and id per line, `events --follow`, rotation.
//! - `fleet`: two nodes and a controller.
//! - `bypass`: raw packet sockets, AF_XDP, source routes and marks: no way around the hooks.
//! - `multicast`: multicast allowed by scope, global scope only by opting in.
//! - `applied`: a policy `policy apply` applied stays applied across SIGHUP and restarts.
//! - `rawneeds`: what nodes need from packet sockets (a DHCP client's lease and renewal,
//!   tcpdump) still works under the raw-socket guards.

mod applied;
mod azure;
mod bypass;
mod cli;
mod daemon;
mod datapath;
mod dns;
mod durable;
mod expiry;
mod fastlane;
mod fleet;
mod flows;
mod learn;
mod logs;
mod multicast;
mod proof;
mod rawneeds;

use std::{
    net::IpAddr,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use egress_monitor::{
    datapath::state::StateFile,
    datapath::{Datapath, HookCounters},
    events::{self, Clock, EventRecord},
};
use egress_monitor_policy::{CommandLineRules, Mode, Policy};
pub use egress_monitor_tests::daemon::Daemon;
pub use egress_monitor_tests::{Scratch, free_port};
use egress_monitor_tests::{
    bpffs::BpfFs,
    cgroup::Cgroup,
    client::Client,
    daemon_binary,
    netns::{NODE_IF, Topology, UDP_PORT},
    require_root, sweep_stale,
};
use serde_json::Value;

pub const CLIENT: &str = env!("CARGO_BIN_EXE_em-testclient");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Cgroup,
    Tc,
    Both,
}

/// A pinned, attached datapath with its topology and cgroup, on a bpf filesystem of its own.
/// Fields drop in order: unmounting that filesystem removes the pins (detaching the programs)
/// before the namespaces and the cgroup go.
pub struct Fixture {
    pub datapath: Datapath,
    pub ring: RingBuf<MapData>,
    /// The applied policy's rule names and ids.
    pub names: StateFile,
    pub bpffs: BpfFs,
    pub topology: Topology,
    pub cgroup: Cgroup,
}

impl Fixture {
    pub fn new(hook: Hook, mode: Mode, deny: &[&str]) -> Fixture {
        let rules = CommandLineRules {
            allow: vec![],
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        let policy = Policy::build(None, &rules, Some(mode)).expect("policy");
        Fixture::with_policy(hook, |_, _| policy)
    }

    /// A fixture whose policy `make` builds, knowing the topology and the cgroup (to name
    /// them in `[dns]` or `[raw_sockets]`).
    pub fn with_policy(hook: Hook, make: impl FnOnce(&Topology, &Cgroup) -> Policy) -> Fixture {
        require_root();
        sweep_stale();
        let topology = Topology::new().expect("topology");
        let cgroup = Cgroup::new().expect("child cgroup");
        let policy = make(&topology, &cgroup);
        let bpffs = BpfFs::new().expect("a bpf filesystem for the test's pins");
        let mut datapath = Datapath::open(&bpffs.layout(), 4096).expect("pin the datapath");
        datapath.apply(&policy).expect("apply the policy");
        let names = StateFile::load(&bpffs.layout().state_file())
            .expect("state file")
            .expect("written by apply");
        let ring = datapath.events().expect("event ring");
        if matches!(hook, Hook::Cgroup | Hook::Both) {
            datapath
                .attach_cgroup(&cgroup.path)
                .expect("attach to the child cgroup");
        }
        if matches!(hook, Hook::Tc | Hook::Both) {
            topology
                .node
                .run(|| datapath.attach_tc(NODE_IF))
                .expect("enter the node netns")
                .expect("attach TC to veth-n");
        }
        Fixture {
            datapath,
            ring,
            names,
            bpffs,
            topology,
            cgroup,
        }
    }

    /// A client in the node namespace and the child cgroup.
    pub fn client(&self, uid: Option<u32>) -> Client {
        Client {
            binary: Path::new(CLIENT).to_owned(),
            netns: self.topology.node.name.clone(),
            cgroup: Some(self.cgroup.path.clone()),
            uid,
            interval: None,
            net_raw_only: false,
            mark: None,
        }
    }

    pub fn counters(&self, hook: Hook) -> HookCounters {
        let counters = self.datapath.counters().expect("read counters");
        match hook {
            Hook::Cgroup => counters.cgroup,
            Hook::Tc => counters.tc,
            Hook::Both => panic!("counters are per hook"),
        }
    }

    /// Every record now in the ring buffer, of any kind, waiting (bounded) until at least
    /// `expected` arrived.
    pub fn records(&mut self, expected: usize) -> Vec<events::KernelRecord> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut records = Vec::new();
        loop {
            while let Some(item) = self.ring.next() {
                records.push(events::decode(&item).expect("decodable record"));
            }
            if records.len() >= expected || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every event now in the ring buffer, waiting (bounded) until at least `expected` arrived.
    pub fn events(&mut self, expected: usize) -> Vec<EventRecord> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut records = Vec::new();
        loop {
            let clock = Clock::now();
            while let Some(item) = self.ring.next() {
                let events::KernelRecord::Packet(event) =
                    events::decode(&item).expect("decodable record")
                else {
                    panic!("a packet event expected");
                };
                records.push(EventRecord::new(&event, &self.names, &clock).expect("valid event"));
            }
            if records.len() >= expected || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Events for one destination.
pub fn to(records: &[EventRecord], dst: IpAddr) -> Vec<&EventRecord> {
    records.iter().filter(|r| r.dst == Some(dst)).collect()
}

/// The id the live maps gave the rule named `name`.
pub fn rule_id(names: &StateFile, name: &str) -> usize {
    names
        .rules
        .iter()
        .find(|rule| rule.name == name)
        .unwrap_or_else(|| panic!("no rule {name}"))
        .id as usize
}

/// A node for daemon tests: its namespaces, child cgroup, bpf filesystem and scratch directory.
pub struct Node {
    pub topology: Topology,
    pub cgroup: Cgroup,
    pub bpffs: BpfFs,
    pub scratch: Scratch,
}

impl Node {
    pub fn new(name: &str) -> Node {
        require_root();
        sweep_stale();
        Node {
            topology: Topology::new().unwrap(),
            cgroup: Cgroup::new().unwrap(),
            bpffs: BpfFs::new().unwrap(),
            scratch: Scratch::new(name),
        }
    }

    pub fn pin(&self) -> String {
        self.bpffs.pin_path().to_str().unwrap().to_owned()
    }

    pub fn events(&self) -> std::path::PathBuf {
        self.scratch.0.join("events.jsonl")
    }

    /// A daemon on the node's cgroup with this pin path and events file.
    pub fn daemon(&self, extra: &[&str]) -> Daemon {
        let pin = self.pin();
        let events = self.events();
        let mut args = vec![
            "--cgroup",
            self.cgroup.path.to_str().unwrap(),
            "--pin-path",
            &pin,
            "--events",
            events.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Daemon::start(None, &args)
    }

    /// Sends `count` datagrams to `dst` from the node's cgroup; returns how many the kernel
    /// refused (EPERM: dropped by the cgroup hook).
    pub fn send(&self, dst: IpAddr, count: u32) -> u64 {
        client(&self.topology, Some(&self.cgroup))
            .udp(dst, UDP_PORT, count, 10, false)
            .unwrap()
            .eperm
    }

    pub fn policy_file(&self, name: &str, text: &str) -> String {
        let path = self.scratch.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// Lines of the events file once it holds at least `count` (bounded wait).
pub fn event_lines(path: &Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn client(topology: &Topology, cgroup: Option<&Cgroup>) -> Client {
    Client {
        binary: CLIENT.into(),
        netns: topology.node.name.clone(),
        cgroup: cgroup.map(|c| c.path.clone()),
        uid: None,
        interval: None,
        net_raw_only: false,
        mark: None,
    }
}

/// Runs `egress-monitor ARGS` to completion.
pub fn egress_monitor(args: &[&str]) -> Output {
    Command::new(daemon_binary())
        .args(args)
        .output()
        .expect("run egress-monitor")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `GET /metrics` over plain HTTP/1.1.
pub fn scrape(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of one sample line (`name{labels} value`) in a scrape.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample `{series}` in:\n{metrics}"))
}

/// `egress-monitor status --json` for a pin path.
pub fn status_json(pin_path: &Path) -> Value {
    let output = egress_monitor(&["status", "--json", "--pin-path", pin_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "status: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("status --json is JSON")
}
