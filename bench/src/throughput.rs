//! Throughput between two network namespaces over veth, each filter in turn, several rounds in
//! alternation so that all share the machine's noise; reported as ratios to the no-filter run
//! and to the empty programs on the same hooks (the design's limit) of the same round. Then,
//! with the kernel's run-time statistics on, what each program costs per packet on this path.

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::ProgramInfo;
use egress_monitor::datapath::{CGROUP_PROGRAM, Datapath, INGRESS_PROGRAM, TC_PROGRAM};
use egress_monitor_policy::{Action, Mode, Policy};
use egress_monitor_tests::{
    bpffs::BpfFs,
    cgroup::Cgroup,
    netns::{NODE_IF, PRIVATE_V4, PRIVATE_V6, Topology},
};
use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::{
    empty::{Empty, EmptyPrograms},
    rules::policy_with,
};

/// Generated deny rules per family in every filter's rule set (plus the default allow groups).
pub const RULES_PER_FAMILY: usize = 100_000;

/// Which hooks a BPF setup uses: the cgroup's (cgroup_skb egress, plus ingress and the
/// per-socket companions for egress-monitor), the TC egress hook of the node's veth, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Hooks {
    Both,
    Cgroup,
    Tc,
}

impl Hooks {
    fn cgroup(self) -> bool {
        self != Hooks::Tc
    }

    fn tc(self) -> bool {
        self != Hooks::Cgroup
    }

    fn label(self) -> &'static str {
        match self {
            Hooks::Both => "both hooks",
            Hooks::Cgroup => "cgroup hook only",
            Hooks::Tc => "TC hook only",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Filter {
    None,
    /// Empty programs on the same hooks: the limit of this design (see [`crate::empty`]).
    Empty(Hooks),
    EgressMonitorEnforce(Hooks),
    /// Enforce on both hooks with the fast lane off: every packet on the full path.
    EgressMonitorFullPath,
    EgressMonitorObserve,
    Nftables,
    IptablesIpset,
}

impl Filter {
    /// One round, in this order: each egress-monitor setup right after the empty programs on
    /// its hooks, so that the two runs a ratio pairs are neighbours in time.
    pub const ALL: [Filter; 11] = [
        Filter::None,
        Filter::Empty(Hooks::Both),
        Filter::EgressMonitorEnforce(Hooks::Both),
        Filter::EgressMonitorFullPath,
        Filter::EgressMonitorObserve,
        Filter::Empty(Hooks::Cgroup),
        Filter::EgressMonitorEnforce(Hooks::Cgroup),
        Filter::Empty(Hooks::Tc),
        Filter::EgressMonitorEnforce(Hooks::Tc),
        Filter::Nftables,
        Filter::IptablesIpset,
    ];

    pub fn label(self) -> String {
        match self {
            Filter::None => "no filter".into(),
            Filter::Empty(hooks) => {
                format!("empty programs ({}): the design's limit", hooks.label())
            }
            Filter::EgressMonitorEnforce(hooks) => {
                format!("egress-monitor enforce ({})", hooks.label())
            }
            Filter::EgressMonitorFullPath => {
                "egress-monitor enforce, fast lane off (both hooks)".into()
            }
            Filter::EgressMonitorObserve => "egress-monitor observe (both hooks)".into(),
            Filter::Nftables => "nftables, interval sets".into(),
            Filter::IptablesIpset => "iptables + ipset (hash:net)".into(),
        }
    }

    /// The empty programs on the same hooks, for BPF setups.
    pub fn limit(self) -> Option<Filter> {
        match self {
            Filter::Empty(hooks) | Filter::EgressMonitorEnforce(hooks) => {
                Some(Filter::Empty(hooks))
            }
            Filter::EgressMonitorObserve | Filter::EgressMonitorFullPath => {
                Some(Filter::Empty(Hooks::Both))
            }
            Filter::None | Filter::Nftables | Filter::IptablesIpset => None,
        }
    }
}

/// Per-round ratios of one setup to another: median, min, max.
pub type Ratio = (f64, f64, f64);

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    pub filter: Filter,
    pub tcp_gbit_s: f64,
    pub udp_kpps: f64,
    /// Time to load the rules and attach (egress-monitor: open, apply, attach its hooks).
    pub setup_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub filter: Filter,
    pub tcp_gbit_s: f64,
    pub udp_kpps: f64,
    /// Per-round ratios to the no-filter run.
    pub tcp_ratio: Ratio,
    pub udp_ratio: Ratio,
    /// Per-round ratios to the empty programs on the same hooks ([`Filter::limit`]).
    pub tcp_to_limit: Option<Ratio>,
    pub udp_to_limit: Option<Ratio>,
    pub setup_ms: f64,
}

/// One setup against another, round by round.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub filter: Filter,
    pub against: Filter,
    pub tcp: Ratio,
    pub udp: Ratio,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub rounds: usize,
    pub seconds_per_test: u64,
    pub rules_per_family: usize,
    pub samples: Vec<Sample>,
    pub summary: Vec<Summary>,
    pub comparisons: Vec<Comparison>,
    /// Per-program cost on this path, from the kernel's run-time statistics.
    pub program_costs: Vec<ProgramCost>,
}

pub fn measure(rounds: usize, seconds: u64) -> anyhow::Result<Throughput> {
    let topology = Topology::new()?;
    let cgroup = Cgroup::new()?;
    let _server = Server::start(&topology.net.name)?;
    let scratch = std::env::temp_dir().join(format!("em-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let policy = policy_with(RULES_PER_FAMILY, Mode::Enforce);
    let mut samples = Vec::new();
    for round in 0..rounds {
        for filter in Filter::ALL {
            let started = Instant::now();
            let active = Active::set_up(filter, &policy, &topology, &cgroup, &scratch)?;
            let setup_ms = started.elapsed().as_secs_f64() * 1000.0;
            let tcp = iperf(&topology, &cgroup, PRIVATE_V4.into(), false, seconds)?;
            let udp = iperf(&topology, &cgroup, PRIVATE_V4.into(), true, seconds)?;
            active.tear_down(&topology)?;
            eprintln!(
                "   round {round} {:<58} TCP {:>6.2} Gbit/s  UDP {:>7.1} kpps",
                filter.label(),
                tcp / 1e9,
                udp / 1e3
            );
            samples.push(Sample {
                round,
                filter,
                tcp_gbit_s: tcp / 1e9,
                udp_kpps: udp / 1e3,
                setup_ms,
            });
        }
    }
    eprintln!("   per-program cost with the kernel's run-time statistics on");
    let mut program_costs = Vec::new();
    for filter in [
        Filter::Empty(Hooks::Both),
        Filter::EgressMonitorEnforce(Hooks::Both),
        Filter::EgressMonitorFullPath,
    ] {
        let active = Active::set_up(filter, &policy, &topology, &cgroup, &scratch)?;
        let costs = program_costs_of(&active, filter, &topology, &cgroup, seconds);
        active.tear_down(&topology)?;
        program_costs.extend(costs?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let summary = Filter::ALL
        .iter()
        .map(|&filter| summarize(&samples, filter, rounds))
        .collect();
    let mut comparisons = Vec::new();
    for (filter, against) in [
        (Filter::EgressMonitorEnforce(Hooks::Both), Filter::None),
        (
            Filter::EgressMonitorEnforce(Hooks::Both),
            Filter::Empty(Hooks::Both),
        ),
        (
            Filter::EgressMonitorEnforce(Hooks::Both),
            Filter::EgressMonitorFullPath,
        ),
        (Filter::EgressMonitorEnforce(Hooks::Both), Filter::Nftables),
        (
            Filter::EgressMonitorEnforce(Hooks::Both),
            Filter::IptablesIpset,
        ),
        (
            Filter::EgressMonitorEnforce(Hooks::Cgroup),
            Filter::Empty(Hooks::Cgroup),
        ),
        (
            Filter::EgressMonitorEnforce(Hooks::Tc),
            Filter::Empty(Hooks::Tc),
        ),
        (Filter::Empty(Hooks::Both), Filter::Nftables),
    ] {
        comparisons.push(Comparison {
            filter,
            against,
            tcp: ratios(&samples, filter, against, rounds, |s| s.tcp_gbit_s),
            udp: ratios(&samples, filter, against, rounds, |s| s.udp_kpps),
        });
    }
    Ok(Throughput {
        rounds,
        seconds_per_test: seconds,
        rules_per_family: RULES_PER_FAMILY,
        samples,
        summary,
        comparisons,
        program_costs,
    })
}

/// The ratio of `filter`'s run to `against`'s in each round: median, min, max.
fn ratios(
    samples: &[Sample],
    filter: Filter,
    against: Filter,
    rounds: usize,
    value: fn(&Sample) -> f64,
) -> Ratio {
    let run = |f: Filter, round: usize| samples.iter().find(|s| s.filter == f && s.round == round);
    let mut ratios: Vec<f64> = (0..rounds)
        .filter_map(|round| Some(value(run(filter, round)?) / value(run(against, round)?)))
        .collect();
    ratios.sort_by(f64::total_cmp);
    (median(&ratios), ratios[0], ratios[ratios.len() - 1])
}

fn summarize(samples: &[Sample], filter: Filter, rounds: usize) -> Summary {
    let of = |f: Filter| samples.iter().filter(move |s| s.filter == f);
    let mut tcp: Vec<f64> = of(filter).map(|s| s.tcp_gbit_s).collect();
    let mut udp: Vec<f64> = of(filter).map(|s| s.udp_kpps).collect();
    let mut setup: Vec<f64> = of(filter).map(|s| s.setup_ms).collect();
    for values in [&mut tcp, &mut udp, &mut setup] {
        values.sort_by(f64::total_cmp);
    }
    let to = |against: Filter, value: fn(&Sample) -> f64| {
        ratios(samples, filter, against, rounds, value)
    };
    Summary {
        filter,
        tcp_gbit_s: median(&tcp),
        udp_kpps: median(&udp),
        tcp_ratio: to(Filter::None, |s| s.tcp_gbit_s),
        udp_ratio: to(Filter::None, |s| s.udp_kpps),
        tcp_to_limit: filter.limit().map(|limit| to(limit, |s| s.tcp_gbit_s)),
        udp_to_limit: filter.limit().map(|limit| to(limit, |s| s.udp_kpps)),
        setup_ms: median(&setup),
    }
}

pub fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// A hook a program judges packets on, for the per-program costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProgramHook {
    CgroupEgress,
    TcEgress,
    CgroupIngress,
}

impl ProgramHook {
    pub const ALL: [ProgramHook; 3] = [
        ProgramHook::CgroupEgress,
        ProgramHook::TcEgress,
        ProgramHook::CgroupIngress,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProgramHook::CgroupEgress => "cgroup egress",
            ProgramHook::TcEgress => "TC egress",
            ProgramHook::CgroupIngress => "cgroup ingress",
        }
    }

    /// egress-monitor's program on this hook.
    pub fn program(self) -> &'static str {
        match self {
            ProgramHook::CgroupEgress => CGROUP_PROGRAM,
            ProgramHook::TcEgress => TC_PROGRAM,
            ProgramHook::CgroupIngress => INGRESS_PROGRAM,
        }
    }

    fn empty(self) -> Empty {
        match self {
            ProgramHook::CgroupEgress => Empty::CgroupEgress,
            ProgramHook::TcEgress => Empty::TcEgress,
            ProgramHook::CgroupIngress => Empty::CgroupIngress,
        }
    }

    fn on(self, hooks: Hooks) -> bool {
        match self {
            ProgramHook::CgroupEgress | ProgramHook::CgroupIngress => hooks.cgroup(),
            ProgramHook::TcEgress => hooks.tc(),
        }
    }
}

/// One program's cost on the real path: the kernel's run-time statistics over one iperf3 run.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramCost {
    pub filter: Filter,
    pub hook: ProgramHook,
    /// The program's name in the kernel.
    pub program: &'static str,
    /// One of [`TRAFFIC`]'s names.
    pub traffic: &'static str,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// The traffic each program's cost is read under: name, destination, UDP (else TCP).
pub const TRAFFIC: [(&str, IpAddr, bool); 3] = [
    ("UDP 64 B", IpAddr::V4(PRIVATE_V4), true),
    ("UDP 64 B IPv6", IpAddr::V6(PRIVATE_V6), true),
    ("TCP", IpAddr::V4(PRIVATE_V4), false),
];

/// Runs each of [`TRAFFIC`] with the kernel's run-time statistics on (`BPF_ENABLE_STATS`: the
/// switch `kernel.bpf_stats_enabled` turns, held by a descriptor, so the kernel turns it off
/// again when the descriptor closes, also when this process dies; the sysctl's own value is
/// never touched), and reads each attached judging program's run time and count around each.
fn program_costs_of(
    active: &Active,
    filter: Filter,
    topology: &Topology,
    cgroup: &Cgroup,
    seconds: u64,
) -> anyhow::Result<Vec<ProgramCost>> {
    let programs = active.programs();
    let read = || -> anyhow::Result<Vec<(u64, u64)>> {
        programs
            .iter()
            .map(|(_, name, pin)| {
                let info = ProgramInfo::from_pin(pin)
                    .with_context(|| format!("{name}: reading the program's info"))?;
                Ok((info.run_time().as_nanos() as u64, info.run_count()))
            })
            .collect()
    };
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling the kernel's run-time statistics (BPF_ENABLE_STATS)")?;
    let mut costs = Vec::new();
    for (traffic, to, udp) in TRAFFIC {
        let before = read()?;
        iperf(topology, cgroup, to, udp, seconds)?;
        let after = read()?;
        for (((hook, program, _), (time0, count0)), (time1, count1)) in
            programs.iter().zip(before).zip(after)
        {
            let runs = count1 - count0;
            let cost = ProgramCost {
                filter,
                hook: *hook,
                program,
                traffic,
                runs,
                ns_per_run: (time1 - time0) as f64 / runs.max(1) as f64,
            };
            eprintln!(
                "   {:<40} {program:<16} {traffic:<8} {:>6.1} ns × {runs}",
                filter.label(),
                cost.ns_per_run
            );
            costs.push(cost);
        }
    }
    Ok(costs)
}

/// `iperf3 -s` in the peer namespace, killed on drop.
struct Server(Child);

impl Server {
    fn start(netns: &str) -> anyhow::Result<Server> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (Debian package iperf3)")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 run from the node namespace and cgroup to the private peer: bits/s for TCP,
/// delivered packets/s for 64-byte UDP.
fn iperf(
    topology: &Topology,
    cgroup: &Cgroup,
    to: IpAddr,
    udp: bool,
    seconds: u64,
) -> anyhow::Result<f64> {
    let mut args = vec![
        "-c".to_owned(),
        to.to_string(),
        "-t".into(),
        seconds.to_string(),
        "-J".into(),
    ];
    if udp {
        args.extend(["-u", "-l", "64", "-b", "0"].map(String::from));
    }
    let output = in_namespace(&topology.node.name, Some(&cgroup.path), "iperf3", &args)
        .output()
        .context("running iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&output.stderr)))?;
    if let Some(error) = report.get("error") {
        bail!("iperf3: {error}");
    }
    let end = &report["end"];
    if udp {
        let sum = &end["sum"];
        let packets = sum["packets"].as_f64().context("end.sum.packets")?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let seconds = sum["seconds"].as_f64().context("end.sum.seconds")?;
        Ok((packets - lost) / seconds)
    } else {
        end["sum_received"]["bits_per_second"]
            .as_f64()
            .context("end.sum_received.bits_per_second")
    }
}

/// `ip netns exec NETNS PROGRAM ARGS`, joining `cgroup` first when given.
fn in_namespace(netns: &str, cgroup: Option<&Path>, program: &str, args: &[String]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, program]).args(args);
    if let Some(cgroup) = cgroup {
        let procs = cgroup.join("cgroup.procs");
        // SAFETY: between fork and exec only a write(2) of "0" to a file happens.
        unsafe {
            command.pre_exec(move || std::fs::write(&procs, "0"));
        }
    }
    command
}

fn run(netns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let mut child = in_namespace(netns, None, program, &args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A filter in place in the node namespace.
enum Active {
    None,
    /// Held for their drop: dropping the datapath and unmounting its bpf filesystem detach it.
    EgressMonitor {
        _datapath: Datapath,
        pins: BpfFs,
        hooks: Hooks,
    },
    /// Boxed: aya's program handles are large beside the other variants.
    Empty(Box<EmptyPrograms>),
    Nftables,
    Iptables,
}

impl Active {
    fn set_up(
        filter: Filter,
        policy: &Policy,
        topology: &Topology,
        cgroup: &Cgroup,
        scratch: &Path,
    ) -> anyhow::Result<Active> {
        let node = &topology.node.name;
        Ok(match filter {
            Filter::None => Active::None,
            Filter::Empty(hooks) => Active::Empty(Box::new(EmptyPrograms::attach(
                hooks.cgroup().then_some(cgroup.path.as_path()),
                hooks.tc().then_some(topology),
            )?)),
            Filter::EgressMonitorEnforce(_)
            | Filter::EgressMonitorFullPath
            | Filter::EgressMonitorObserve => {
                let (hooks, mode) = match filter {
                    Filter::EgressMonitorEnforce(hooks) => (hooks, Mode::Enforce),
                    Filter::EgressMonitorFullPath => (Hooks::Both, Mode::Enforce),
                    _ => (Hooks::Both, Mode::Observe),
                };
                let mut policy = policy.clone();
                policy.mode = mode;
                let bpffs = BpfFs::new()?;
                let mut datapath = Datapath::open(&bpffs.layout(), policy.rules.len())?;
                datapath.apply(&policy)?;
                datapath.set_fast_lane(filter != Filter::EgressMonitorFullPath)?;
                if hooks.cgroup() {
                    datapath.attach_cgroup(&cgroup.path)?;
                }
                if hooks.tc() {
                    topology.node.run(|| datapath.attach_tc(NODE_IF))??;
                }
                Active::EgressMonitor {
                    _datapath: datapath,
                    pins: bpffs,
                    hooks,
                }
            }
            Filter::Nftables => {
                let path: PathBuf = scratch.join("ruleset.nft");
                std::fs::write(&path, nft_ruleset(policy))?;
                run(node, "nft", &["-f", path.to_str().context("path")?], None)?;
                Active::Nftables
            }
            Filter::IptablesIpset => {
                run(node, "ipset", &["restore"], Some(&ipset_restore(policy)))?;
                for (tool, family) in [("iptables", "4"), ("ip6tables", "6")] {
                    // Denied prefixes dropped, allowed ones accepted, the rest dropped.
                    for (set, target) in [("deny", "DROP"), ("allow", "ACCEPT")] {
                        let set = format!("em-{set}{family}");
                        let rule = [
                            "-A",
                            "OUTPUT",
                            "-m",
                            "set",
                            "--match-set",
                            &set,
                            "dst",
                            "-j",
                            target,
                        ];
                        run(node, tool, &rule, None)?;
                    }
                    run(node, tool, &["-A", "OUTPUT", "-j", "DROP"], None)?;
                }
                Active::Iptables
            }
        })
    }

    /// The programs that judge packets on this setup: their hook, name and pin.
    fn programs(&self) -> Vec<(ProgramHook, &'static str, PathBuf)> {
        match self {
            Active::EgressMonitor { pins, hooks, .. } => ProgramHook::ALL
                .into_iter()
                .filter(|hook| hook.on(*hooks))
                .map(|hook| (hook, hook.program(), pins.layout().program(hook.program())))
                .collect(),
            Active::Empty(set) => ProgramHook::ALL
                .into_iter()
                .filter(|hook| set.attached().contains(&hook.empty()))
                .map(|hook| (hook, hook.empty().name(), set.pinned(hook.empty())))
                .collect(),
            Active::None | Active::Nftables | Active::Iptables => Vec::new(),
        }
    }

    fn tear_down(self, topology: &Topology) -> anyhow::Result<()> {
        let node = &topology.node.name;
        match self {
            // Dropping the datapath and unmounting its bpf filesystem detaches it.
            Active::None | Active::EgressMonitor { .. } | Active::Empty(_) => {}
            Active::Nftables => run(node, "nft", &["delete", "table", "inet", "em_bench"], None)?,
            Active::Iptables => {
                run(node, "iptables", &["-F", "OUTPUT"], None)?;
                run(node, "ip6tables", &["-F", "OUTPUT"], None)?;
                run(node, "ipset", &["destroy"], None)?;
            }
        }
        Ok(())
    }
}

/// The policy split by family and action: (allow v4, deny v4, allow v6, deny v6).
fn split(policy: &Policy) -> [Vec<String>; 4] {
    let mut sets: [Vec<String>; 4] = Default::default();
    for rule in &policy.rules {
        let index = match (rule.network, rule.action) {
            (IpNetwork::V4(_), Action::Allow) => 0,
            (IpNetwork::V4(_), Action::Deny) => 1,
            (IpNetwork::V6(_), Action::Allow) => 2,
            (IpNetwork::V6(_), Action::Deny) => 3,
        };
        sets[index].push(rule.network.to_string());
    }
    sets
}

/// The same decisions in nftables: denied prefixes dropped, allowed ones accepted, the rest
/// dropped. (The generated deny prefixes lie outside the allowed ones, so first-match equals
/// longest-prefix here.)
fn nft_ruleset(policy: &Policy) -> String {
    let [allow4, deny4, allow6, deny6] = split(policy);
    let set = |name: &str, kind: &str, elements: &[String]| {
        format!(
            "  set {name} {{\n    type {kind}\n    flags interval\n    auto-merge\n    elements = {{ {} }}\n  }}\n",
            elements.join(", ")
        )
    };
    format!(
        "table inet em_bench {{\n{}{}{}{}  chain output {{\n    type filter hook output priority 0; policy drop;\n    ip daddr @deny4 drop\n    ip daddr @allow4 accept\n    ip6 daddr @deny6 drop\n    ip6 daddr @allow6 accept\n  }}\n}}\n",
        set("allow4", "ipv4_addr", &allow4),
        set("deny4", "ipv4_addr", &deny4),
        set("allow6", "ipv6_addr", &allow6),
        set("deny6", "ipv6_addr", &deny6),
    )
}

fn ipset_restore(policy: &Policy) -> String {
    let [allow4, deny4, allow6, deny6] = split(policy);
    let mut out = String::new();
    for (name, family, elements) in [
        ("em-allow4", "inet", allow4),
        ("em-deny4", "inet", deny4),
        ("em-allow6", "inet6", allow6),
        ("em-deny6", "inet6", deny6),
    ] {
        out.push_str(&format!(
            "create {name} hash:net family {family} maxelem 1048576\n"
        ));
        for element in elements {
            out.push_str(&format!("add {name} {element}\n"));
        }
    }
    out
}
