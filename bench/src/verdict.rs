//! Per-packet verdict cost: each program, `BPF_PROG_TEST_RUN` with a large repeat count (the
//! kernel times the loop and reports the average), median of several runs; an empty program of
//! each type measured the same way beside them; and how many instructions the verifier walked
//! to load each program.

use std::{io, net::IpAddr, os::fd::AsFd as _};

use anyhow::Context as _;
use egress_monitor::datapath::{Datapath, Judge, frame_to, test_run};
use egress_monitor_policy::Mode;
use egress_monitor_tests::{
    bpffs::BpfFs,
    programs::{PROGRAMS, verified_instructions},
};
use serde::Serialize;

use crate::{empty::Empty, rules::policy_with};

pub const CASES: [(&str, &str); 4] = [
    ("allowed v4", "10.1.2.3"),
    ("denied v4", "203.0.113.1"),
    ("allowed v6", "fd00::1"),
    ("denied v6", "2001:db8::1"),
];
const RUNS: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct VerdictCost {
    /// 0 for the empty programs, which hold no rules.
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
    /// Instructions the verifier walked to load each program (program, count).
    pub verified: Vec<(&'static str, u32)>,
}

pub fn measure(rule_counts: &[usize], quick: bool) -> anyhow::Result<Verdicts> {
    let repeat = if quick { 100_000 } else { 1_000_000 };
    let mut costs = Vec::new();
    let mut load_ms = Vec::new();
    let mut verified = Vec::new();
    for (empty, judge) in [
        (Empty::CgroupEgress, Judge::Cgroup),
        (Empty::TcEgress, Judge::Tc),
    ] {
        let program = empty
            .load()
            .with_context(|| format!("loading {}", empty.name()))?;
        costs.extend(costs_of(empty.name(), 0, repeat, |frame| {
            let run = test_run(program.as_fd(), frame, repeat, None)?;
            if run.retval != judge.pass_code() {
                return Err(io::Error::other(format!(
                    "{} returned {}, not {}",
                    empty.name(),
                    run.retval,
                    judge.pass_code()
                )));
            }
            Ok(run.duration_ns)
        })?);
    }
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
        if verified.is_empty() {
            for program in PROGRAMS {
                let count = verified_instructions(&layout, program)?;
                eprintln!("   {program:<16} {count} instructions verified");
                verified.push((program, count));
            }
        }
        // Flow aggregation on, as the daemon runs it: a denied packet is counted in its flow.
        egress_monitor::events::flows::FlowReporter::open(&layout)?.sweep()?;
        let runner = datapath.test_runner()?;
        for judge in Judge::ALL {
            costs.extend(costs_of(judge.program(), per_family, repeat, |frame| {
                runner
                    .run(judge, frame, repeat, None)
                    .map(|run| run.duration_ns)
            })?);
        }
    }
    Ok(Verdicts {
        repeat,
        costs,
        load_ms,
        verified,
    })
}

/// Every case through one program: `RUNS` test runs each, `run` giving the ns per packet of one.
fn costs_of(
    program: &'static str,
    rules_per_family: usize,
    repeat: u32,
    run: impl Fn(&[u8]) -> io::Result<u32>,
) -> anyhow::Result<Vec<VerdictCost>> {
    let mut costs = Vec::new();
    for (case, destination) in CASES {
        let frame = frame_to(destination.parse::<IpAddr>()?);
        let mut samples = (0..RUNS)
            .map(|_| run(&frame))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}, {repeat} times"))?;
        samples.sort_unstable();
        let cost = VerdictCost {
            rules_per_family,
            program,
            case,
            ns_per_packet: samples[RUNS / 2],
            min_ns: samples[0],
            max_ns: samples[RUNS - 1],
        };
        eprintln!(
            "   {rules_per_family:>6} rules  {program:<16} {case:<10} {} ns",
            cost.ns_per_packet
        );
        costs.push(cost);
    }
    Ok(costs)
}
