//! Kernel tests: real programs, real verifier, real packets, in network namespaces and child
//! cgroups the tests create (see the harness crate's docs). They need root and BPF; without
//! them they fail loudly rather than skip.
//!
//! - `datapath`: the library, both hooks, both modes, IPv4/IPv6, TCP/UDP/ICMP, exact counters.
//! - `daemon`: the binary end to end: events file, signals, exit.
//! - `cli`: exit codes and messages for bad input.

mod cli;
mod daemon;
mod datapath;

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use egress_monitor::{
    datapath::{Datapath, HookCounters},
    events::{self, Clock, EventRecord},
    policy::{CommandLineRules, Mode, Policy},
};
use egress_monitor_tests::{
    cgroup::Cgroup,
    client::Client,
    netns::{NODE_IF, Topology},
    require_root, sweep_stale,
};

pub const CLIENT: &str = env!("CARGO_BIN_EXE_em-testclient");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Cgroup,
    Tc,
    Both,
}

/// A loaded, attached datapath with its topology and cgroup. Fields drop in order: the
/// programs are detached before the namespaces and the cgroup go.
pub struct Fixture {
    pub datapath: Datapath,
    pub ring: RingBuf<MapData>,
    pub policy: Policy,
    pub topology: Topology,
    pub cgroup: Cgroup,
}

impl Fixture {
    pub fn new(hook: Hook, mode: Mode, deny: &[&str]) -> Fixture {
        require_root();
        sweep_stale();
        let topology = Topology::new().expect("topology");
        let cgroup = Cgroup::new().expect("child cgroup");
        let rules = CommandLineRules {
            allow: vec![],
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        let policy = Policy::build(None, &rules, Some(mode)).expect("policy");
        let mut datapath = Datapath::load(&policy).expect("load the datapath");
        let ring = datapath.take_events().expect("event ring");
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
            policy,
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

    /// Every event now in the ring buffer, waiting (bounded) until at least `expected` arrived.
    pub fn events(&mut self, expected: usize) -> Vec<EventRecord> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut records = Vec::new();
        loop {
            let clock = Clock::now();
            while let Some(item) = self.ring.next() {
                let event = events::decode(&item).expect("decodable event");
                records.push(EventRecord::new(&event, &self.policy, &clock).expect("valid event"));
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
