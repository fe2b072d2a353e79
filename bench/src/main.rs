//! `em-bench` (run by `cargo xtask bench`, as root): measures egress-monitor on this machine
//! and writes `bench/results/latest.{md,json}`.
//!
//! 1. [`verdict`]: per-packet cost of each program by `BPF_PROG_TEST_RUN`, allowed and denied,
//!    IPv4 and IPv6, with 10, 1,000 and 100,000 rules per address family, beside an empty
//!    program's; the instructions the verifier walked to load each program.
//! 2. [`throughput`]: TCP throughput and 64-byte UDP packet rate between two network namespaces
//!    (iperf3), in alternation: no filter, [`empty`] programs on the same hooks (the design's
//!    limit), egress-monitor enforce (both hooks, each alone) and observe, nftables with the
//!    same rules in interval sets, iptables with the same rules in ipsets; then each program's
//!    cost per packet on that path from the kernel's run-time statistics.
//! 3. [`flood`]: the denied path under a flood: packets dropped per second, events written.
//! 4. [`daemon`]: resident memory at idle.
//! 5. [`controller`]: 10,000 simulated nodes reporting to two controller replicas on
//!    PostgreSQL and to one on SQLite for five minutes, retention pruning under the load, then
//!    the summary and the page at a million events, and a projection for 100,000 nodes
//!    (`--only controller` runs this part alone); written to `controller.{md,json}`.
//! 6. [`console`]: the controller's console at 10,000 nodes in headless Chromium: each page's
//!    load time and peak memory beside an empty page's (`--only console` runs this part
//!    alone); written to `console.{md,json}`.
//!
//! Everything runs in the benchmark's own namespaces, cgroups and bpf filesystems; every loop
//! is bounded in count and time.

mod console;
mod controller;
mod daemon;
mod empty;
mod flood;
mod report;
mod rules;
mod throughput;
mod verdict;

use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out = PathBuf::from("bench/results");
    let mut quick = false;
    let mut only_controller = false;
    let mut only_console = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out DIR")?.into(),
            "--quick" => quick = true,
            "--only" => match args.next().as_deref() {
                Some("controller") => only_controller = true,
                Some("console") => only_console = true,
                other => anyhow::bail!("--only takes `controller` or `console`, not {other:?}"),
            },
            other => {
                anyhow::bail!(
                    "unknown argument {other}; usage: em-bench [--out DIR] [--quick] [--only controller|console]"
                )
            }
        }
    }
    egress_monitor_tests::require_root();
    egress_monitor_tests::sweep_stale();
    let started = std::time::Instant::now();
    let machine = report::Machine::read();
    eprintln!("== console: 10,000 nodes in headless Chromium");
    let console = console::measure()?;
    report::write_console(&console, &machine, &out)?;
    println!("{}", console::render(&console));
    if only_console {
        return Ok(());
    }
    eprintln!("== controller: 10,000 simulated nodes");
    let fleet = controller::measure(quick)?;
    report::write_controller(&fleet, &machine, &out)?;
    println!("{}", controller::render(&fleet));
    if only_controller {
        return Ok(());
    }
    eprintln!("== per-packet verdict cost (BPF_PROG_TEST_RUN)");
    let verdict = verdict::measure(
        if quick {
            &[10, 1_000]
        } else {
            &[10, 1_000, 100_000]
        },
        quick,
    )?;
    eprintln!("== throughput over veth (iperf3), filters in alternation");
    let throughput = throughput::measure(if quick { 1 } else { 5 }, if quick { 1 } else { 3 })?;
    eprintln!("== denied flood");
    let flood = flood::measure(if quick { 50_000 } else { 300_000 })?;
    eprintln!("== daemon");
    let daemon = daemon::measure()?;
    let results = report::Results {
        machine,
        verdict,
        throughput,
        flood,
        daemon,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let markdown = report::write(&results, &out)?;
    println!("{markdown}");
    Ok(())
}
