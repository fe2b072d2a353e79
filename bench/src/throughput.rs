//! Throughput between two network namespaces over veth, each filter in turn, several rounds in
//! alternation so that all share the machine's noise; reported as ratios to the no-filter run
//! of the same round.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egress_monitor::datapath::Datapath;
use egress_monitor_policy::{Action, Mode, Policy};
use egress_monitor_tests::{
    bpffs::BpfFs,
    cgroup::Cgroup,
    netns::{NODE_IF, PRIVATE_V4, Topology},
};
use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::rules::policy_with;

/// Generated deny rules per family in every filter's rule set (plus the default allow groups).
pub const RULES_PER_FAMILY: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Filter {
    None,
    EgressMonitorEnforce,
    EgressMonitorCgroupOnly,
    EgressMonitorObserve,
    Nftables,
    IptablesIpset,
}

impl Filter {
    pub const ALL: [Filter; 6] = [
        Filter::None,
        Filter::EgressMonitorEnforce,
        Filter::EgressMonitorCgroupOnly,
        Filter::EgressMonitorObserve,
        Filter::Nftables,
        Filter::IptablesIpset,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Filter::None => "no filter (the limit)",
            Filter::EgressMonitorEnforce => "egress-monitor enforce (both hooks)",
            Filter::EgressMonitorCgroupOnly => "egress-monitor enforce (cgroup hook only)",
            Filter::EgressMonitorObserve => "egress-monitor observe (both hooks)",
            Filter::Nftables => "nftables, interval sets",
            Filter::IptablesIpset => "iptables + ipset (hash:net)",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    pub filter: Filter,
    pub tcp_gbit_s: f64,
    pub udp_kpps: f64,
    /// Time to load the rules and attach (egress-monitor: open, apply, attach both hooks).
    pub setup_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub filter: Filter,
    pub tcp_gbit_s: f64,
    pub udp_kpps: f64,
    /// Median, min, max of the per-round ratios to the no-filter run.
    pub tcp_ratio: (f64, f64, f64),
    pub udp_ratio: (f64, f64, f64),
    pub setup_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub rounds: usize,
    pub seconds_per_test: u64,
    pub rules_per_family: usize,
    pub samples: Vec<Sample>,
    pub summary: Vec<Summary>,
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
            let tcp = iperf(&topology, &cgroup, false, seconds)?;
            let udp = iperf(&topology, &cgroup, true, seconds)?;
            active.tear_down(&topology)?;
            eprintln!(
                "   round {round} {:<38} TCP {:>6.2} Gbit/s  UDP {:>7.1} kpps",
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
    let _ = std::fs::remove_dir_all(&scratch);
    let summary = Filter::ALL
        .iter()
        .map(|&filter| summarize(&samples, filter, rounds))
        .collect();
    Ok(Throughput {
        rounds,
        seconds_per_test: seconds,
        rules_per_family: RULES_PER_FAMILY,
        samples,
        summary,
    })
}

fn summarize(samples: &[Sample], filter: Filter, rounds: usize) -> Summary {
    let of = |f: Filter| samples.iter().filter(move |s| s.filter == f);
    let ratios = |value: fn(&Sample) -> f64| {
        let mut ratios: Vec<f64> = (0..rounds)
            .filter_map(|round| {
                let base = of(Filter::None).find(|s| s.round == round)?;
                let this = of(filter).find(|s| s.round == round)?;
                Some(value(this) / value(base))
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        (median(&ratios), ratios[0], ratios[ratios.len() - 1])
    };
    let mut tcp: Vec<f64> = of(filter).map(|s| s.tcp_gbit_s).collect();
    let mut udp: Vec<f64> = of(filter).map(|s| s.udp_kpps).collect();
    let mut setup: Vec<f64> = of(filter).map(|s| s.setup_ms).collect();
    for values in [&mut tcp, &mut udp, &mut setup] {
        values.sort_by(f64::total_cmp);
    }
    Summary {
        filter,
        tcp_gbit_s: median(&tcp),
        udp_kpps: median(&udp),
        tcp_ratio: ratios(|s| s.tcp_gbit_s),
        udp_ratio: ratios(|s| s.udp_kpps),
        setup_ms: median(&setup),
    }
}

pub fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
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
fn iperf(topology: &Topology, cgroup: &Cgroup, udp: bool, seconds: u64) -> anyhow::Result<f64> {
    let mut args = vec![
        "-c".to_owned(),
        PRIVATE_V4.to_string(),
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
        _pins: BpfFs,
    },
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
            Filter::EgressMonitorEnforce
            | Filter::EgressMonitorCgroupOnly
            | Filter::EgressMonitorObserve => {
                let mut policy = policy.clone();
                policy.mode = if filter == Filter::EgressMonitorObserve {
                    Mode::Observe
                } else {
                    Mode::Enforce
                };
                let bpffs = BpfFs::new()?;
                let mut datapath = Datapath::open(&bpffs.layout(), policy.rules.len())?;
                datapath.apply(&policy)?;
                datapath.attach_cgroup(&cgroup.path)?;
                if filter != Filter::EgressMonitorCgroupOnly {
                    topology.node.run(|| datapath.attach_tc(NODE_IF))??;
                }
                Active::EgressMonitor {
                    _datapath: datapath,
                    _pins: bpffs,
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

    fn tear_down(self, topology: &Topology) -> anyhow::Result<()> {
        let node = &topology.node.name;
        match self {
            // Dropping the datapath and unmounting its bpf filesystem detaches it.
            Active::None | Active::EgressMonitor { .. } => {}
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
