//! Per-packet verdict cost: each program, `BPF_PROG_TEST_RUN` with a large repeat count (the
//! kernel times the loop and reports the average), median of several runs.

use std::net::IpAddr;

use anyhow::Context as _;
use egress_monitor::datapath::{Datapath, Judge, frame_to};
use egress_monitor_policy::Mode;
use egress_monitor_tests::bpffs::BpfFs;
use serde::Serialize;

use crate::rules::policy_with;

pub const CASES: [(&str, &str); 4] = [
    ("allowed v4", "10.1.2.3"),
    ("denied v4", "203.0.113.1"),
    ("allowed v6", "fd00::1"),
    ("denied v6", "2001:db8::1"),
];
const RUNS: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct VerdictCost {
    pub rules_per_family: usize,
    pub program: &'static str,
    pub case: &'static str,
    /// Median of the runs' averages.
    pub ns_per_packet: u32,
    pub min_ns: u32,
    pub max_ns: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdicts {
    pub repeat: u32,
    pub costs: Vec<VerdictCost>,
    /// Time to apply each policy to fresh maps: (rules per family, total rules, ms).
    pub load_ms: Vec<(usize, usize, f64)>,
}

pub fn measure(rule_counts: &[usize], quick: bool) -> anyhow::Result<Verdicts> {
    let repeat = if quick { 100_000 } else { 1_000_000 };
    let mut costs = Vec::new();
    let mut load_ms = Vec::new();
    for &per_family in rule_counts {
        let bpffs = BpfFs::new()?;
        let policy = policy_with(per_family, Mode::Enforce);
        let mut datapath = Datapath::open(&bpffs.layout(), policy.rules.len())?;
        let report = datapath.apply(&policy)?;
        load_ms.push((
            per_family,
            policy.rules.len(),
            report.elapsed.as_secs_f64() * 1000.0,
        ));
        eprintln!(
            "   {} rules applied in {:.1} ms",
            policy.rules.len(),
            report.elapsed.as_secs_f64() * 1000.0
        );
        let layout = bpffs.layout();
        // Flow aggregation on, as the daemon runs it: a denied packet is counted in its flow.
        egress_monitor::events::flows::FlowReporter::open(&layout)?.sweep()?;
        let runner = datapath.test_runner()?;
        for judge in Judge::ALL {
            let program = judge.program();
            for (case, destination) in CASES {
                let frame = frame_to(destination.parse::<IpAddr>()?);
                let mut samples = (0..RUNS)
                    .map(|_| {
                        runner
                            .run(judge, &frame, repeat, None)
                            .map(|run| run.duration_ns)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .context("BPF_PROG_TEST_RUN")?;
                samples.sort_unstable();
                let cost = VerdictCost {
                    rules_per_family: per_family,
                    program,
                    case,
                    ns_per_packet: samples[RUNS / 2],
                    min_ns: samples[0],
                    max_ns: samples[RUNS - 1],
                };
                eprintln!(
                    "   {per_family:>6} rules  {program:<13} {case:<10} {} ns",
                    cost.ns_per_packet
                );
                costs.push(cost);
            }
        }
    }
    Ok(Verdicts {
        repeat,
        costs,
        load_ms,
    })
}
