//! The results as a markdown table and as JSON, both under the output directory.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use egress_monitor_tests::programs::VERIFIER_BUDGET;

use crate::{
    daemon::IdleDaemon,
    flood::{Flood, Scenario},
    throughput::{Filter, Hooks, ProgramHook, Ratio, Summary, TRAFFIC, Throughput},
    verdict::Verdicts,
};

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    /// RFC 3339, when the run started.
    pub date: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu: field(&cpuinfo, "model name"),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: field(&meminfo, "MemTotal")
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .unwrap_or(0.0)
                / 1024.0
                / 1024.0,
            date: date_now(),
        }
    }
}

fn date_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since the epoch (Howard Hinnant's algorithm), UTC.
    let days = (seconds / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let time = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub verdict: Verdicts,
    pub throughput: Throughput,
    pub flood: Vec<Flood>,
    pub daemon: IdleDaemon,
    pub elapsed_s: f64,
}

/// Writes `latest.md` and `latest.json` under `out` and returns the markdown.
pub fn write(results: &Results, out: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let markdown = markdown(results);
    std::fs::write(out.join("latest.md"), &markdown)?;
    std::fs::write(
        out.join("latest.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    Ok(markdown)
}

/// The controller's results: `controller.md` and `controller.json`.
pub fn write_controller(
    bench: &crate::controller::ControllerBench,
    machine: &Machine,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let header = format!(
        "# egress-monitor controller benchmark\n\n{} · Linux {} · {} × {} · {:.0} GiB. The simulated \
         nodes run on the same machine as the controller (and PostgreSQL).\n\n",
        machine.date, machine.kernel, machine.cpus, machine.cpu, machine.memory_gib
    );
    std::fs::write(
        out.join("controller.md"),
        header + &crate::controller::render(bench),
    )?;
    std::fs::write(
        out.join("controller.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"machine": machine, "controller": bench}),
        )? + "\n",
    )?;
    Ok(())
}

pub fn write_console(
    bench: &crate::console::ConsoleBench,
    machine: &Machine,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let header = format!(
        "# egress-monitor console benchmark\n\n{} · Linux {} · {} × {} · {:.0} GiB. The controller \
         (SQLite) and Chromium run on the same machine.\n\n",
        machine.date, machine.kernel, machine.cpus, machine.cpu, machine.memory_gib
    );
    std::fs::write(
        out.join("console.md"),
        header + &crate::console::render(bench),
    )?;
    std::fs::write(
        out.join("console.json"),
        serde_json::to_string_pretty(&serde_json::json!({"machine": machine, "console": bench}))?
            + "\n",
    )?;
    Ok(())
}

fn markdown(r: &Results) -> String {
    let m = &r.machine;
    let mut out = format!(
        "# egress-monitor benchmark\n\n{} · Linux {} · {} × {} · {:.0} GiB · run took {:.0} s\n\n",
        m.date, m.kernel, m.cpus, m.cpu, m.memory_gib, r.elapsed_s
    );

    out.push_str(&format!(
        "## Per-packet verdict cost\n\nBPF_PROG_TEST_RUN on {}, ns per packet (median of 5 runs of {} packets each). \
         The denied path is the daemon's default, flow aggregation on: the test repeats one packet, \
         one flow, so after the first run's event every denied packet is added to its flow's counts. \
         The `em_empty_*` rows are empty programs of the same types (`mov r0, pass; exit`), measured \
         the same way: the test-run loop's own cost.\n\n",
        m.cpu, r.verdict.repeat
    ));
    out.push_str("| rules per family | program | allowed v4 | denied v4 | allowed v6 | denied v6 |\n|---:|---|---:|---:|---:|---:|\n");
    let mut rows: Vec<(usize, &str)> = r
        .verdict
        .costs
        .iter()
        .map(|c| (c.rules_per_family, c.program))
        .collect();
    rows.dedup();
    for (rules, program) in rows {
        let cell = |case: &str| {
            r.verdict
                .costs
                .iter()
                .find(|c| c.rules_per_family == rules && c.program == program && c.case == case)
                .map_or("–".to_owned(), |c| {
                    format!("{} ({}–{})", c.ns_per_packet, c.min_ns, c.max_ns)
                })
        };
        let rules = if rules == 0 {
            "–".to_owned()
        } else {
            rules.to_string()
        };
        out.push_str(&format!(
            "| {rules} | {program} | {} | {} | {} | {} |\n",
            cell("allowed v4"),
            cell("denied v4"),
            cell("allowed v6"),
            cell("denied v6")
        ));
    }
    out.push_str(&format!(
        "\nInstructions the verifier walked to load each program (of its budget of {}):\n\n\
         | program | verified instructions | share of the budget |\n|---|---:|---:|\n",
        VERIFIER_BUDGET
    ));
    for (program, count) in &r.verdict.verified {
        out.push_str(&format!(
            "| {program} | {count} | {:.1}% |\n",
            f64::from(*count) * 100.0 / f64::from(VERIFIER_BUDGET)
        ));
    }
    out.push_str("\nPolicy load into fresh maps:\n\n| rules per family | rules in all | ms |\n|---:|---:|---:|\n");
    for (per_family, total, ms) in &r.verdict.load_ms {
        out.push_str(&format!("| {per_family} | {total} | {ms:.1} |\n"));
    }

    let t = &r.throughput;
    out.push_str(&format!(
        "\n## Throughput over veth between two namespaces\n\niperf3 from the node namespace (and cgroup) to a private peer; {} rounds, \
         every setup once per round in the order below, {} s per test; every filter holds the default allow groups plus {} deny prefixes per family. \
         *empty programs*: `mov r0, pass; exit` on the same hooks as egress-monitor (cgroup_skb egress and ingress on the cgroup, \
         TC egress by tcx on the veth), the limit of this design. Ratios are per round, to the same round's no-filter run \
         and to its empty programs on the same hooks: median [min–max].\n\n",
        t.rounds, t.seconds_per_test, t.rules_per_family
    ));
    out.push_str(
        "| setup | TCP Gbit/s | TCP to no filter | TCP to empty programs | UDP 64 B kpps | UDP to no filter | UDP to empty programs | load + attach ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in &t.summary {
        out.push_str(&format!(
            "| {} | {:.2} | {} | {} | {:.1} | {} | {} | {} |\n",
            s.filter.label(),
            s.tcp_gbit_s,
            ratio(s.tcp_ratio),
            s.tcp_to_limit.map_or("–".into(), ratio),
            s.udp_kpps,
            ratio(s.udp_ratio),
            s.udp_to_limit.map_or("–".into(), ratio),
            if s.filter == Filter::None {
                "–".to_owned()
            } else {
                format!("{:.1}", s.setup_ms)
            }
        ));
    }
    out.push_str(
        "\nRound by round, one setup against another (ratio of throughputs, median [min–max]):\n\n\
         | setup | against | TCP | UDP 64 B |\n|---|---|---:|---:|\n",
    );
    for c in &t.comparisons {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.filter.label(),
            c.against.label(),
            ratio(c.tcp),
            ratio(c.udp)
        ));
    }
    out.push_str(&format!(
        "\nPer program on this path, on {}: the kernel's run-time statistics (`run_time_ns / run_cnt`, \
         switched on for these runs only) over one {} s iperf3 run each, both hooks, enforce; ns per run \
         (runs). The statistics themselves add to every figure alike. The ingress hook runs for packets \
         the sender receives (UDP: almost none; TCP: the ACKs). *full path*: the same build with the fast \
         lane off.\n\n\
         | hook | traffic | empty program | egress-monitor | above empty | full path | above empty |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
        m.cpu, t.seconds_per_test
    ));
    for hook in ProgramHook::ALL {
        let cost = |filter: Filter, traffic: &str| {
            t.program_costs
                .iter()
                .find(|c| c.filter == filter && c.hook == hook && c.traffic == traffic)
        };
        for (traffic, _, _) in TRAFFIC {
            let mut row = format!("| {} ({}) | {traffic}", hook.label(), hook.program());
            let empty = cost(Filter::Empty(Hooks::Both), traffic);
            row.push_str(&empty.map_or(" | –".into(), |c| {
                format!(" | {:.0} ({})", c.ns_per_run, c.runs)
            }));
            for filter in [
                Filter::EgressMonitorEnforce(Hooks::Both),
                Filter::EgressMonitorFullPath,
            ] {
                let em = cost(filter, traffic);
                row.push_str(&em.map_or(" | –".into(), |c| {
                    format!(" | {:.0} ({})", c.ns_per_run, c.runs)
                }));
                row.push_str(&match (empty, em) {
                    (Some(empty), Some(em)) => {
                        format!(" | {:+.0}", em.ns_per_run - empty.ns_per_run)
                    }
                    _ => " | –".into(),
                });
            }
            out.push_str(&row);
            out.push_str(" |\n");
        }
    }

    out.push_str(
        "\n## Denied path under a flood\n\nOne UDP sender (empty datagrams), enforce mode, cgroup hook, daemon writing events to a file \
         (default flow interval, 10 s). *packets in events*: the sum of the events' `packets`, \
         which equals *dropped* when nothing was lost.\n\n\
         *per daemon CPU s*: events written per second of the daemon's CPU time, what one core \
         of the consumer sustains whatever the sender's rate.\n\n\
         | destinations | sent | dropped | dropped/s | events written | events/s written | per daemon CPU s | events lost | packets in events | aggregated |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in &r.flood {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} |\n",
            f.scenario.label(),
            f.sent,
            f.dropped,
            f.dropped_per_s,
            f.events_written,
            f.events_per_s,
            f.events_per_cpu_s,
            f.events_lost,
            f.packets_in_events,
            f.aggregated
        ));
    }

    out.push_str(&format!(
        "\n## Daemon\n\nResident memory at idle: {:.1} MiB.\n",
        r.daemon.rss_idle_kib as f64 / 1024.0
    ));

    out.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    for (target, measured, met) in targets(r) {
        out.push_str(&format!(
            "| {target} | {measured} | {} |\n",
            if met { "yes" } else { "**no**" }
        ));
    }
    out
}

/// `median [min–max]`.
fn ratio((median, min, max): Ratio) -> String {
    format!("{median:.3} [{min:.3}–{max:.3}]")
}

/// Reads one ratio (median) of a filter's summary.
type RatioOf = fn(&Summary) -> f64;

fn targets(r: &Results) -> Vec<(String, String, bool)> {
    let mut rows = Vec::new();
    let summary = |filter: Filter| r.throughput.summary.iter().find(|s| s.filter == filter);
    if let Some(em) = summary(Filter::EgressMonitorEnforce(Hooks::Both)) {
        let single = summary(Filter::EgressMonitorEnforce(Hooks::Cgroup));
        let also = |value: Option<f64>| {
            value.map_or(String::new(), |v| {
                format!("; cgroup hook only {:.1}%", v * 100.0)
            })
        };
        let ratios: [(&str, f64, RatioOf); 2] = [
            ("allowed-path TCP ≥ 98% of no filter", 0.98, |s| {
                s.tcp_ratio.0
            }),
            ("allowed-path 64 B UDP ≥ 95% of no filter", 0.95, |s| {
                s.udp_ratio.0
            }),
        ];
        for (target, threshold, ratio) in ratios {
            rows.push((
                target.into(),
                format!(
                    "both hooks {:.1}%{}",
                    ratio(em) * 100.0,
                    also(single.map(ratio))
                ),
                ratio(em) >= threshold,
            ));
        }
        if let Some(nft) = summary(Filter::Nftables) {
            rows.push((
                "not worse than nftables on the same rules (64 B UDP)".into(),
                format!("{:.1} vs {:.1} kpps", em.udp_kpps, nft.udp_kpps),
                em.udp_ratio.0 >= nft.udp_ratio.0 * 0.99,
            ));
        }
    }
    // Issue 15: the empty programs on the same hooks are the limit.
    let against = |against: Filter| {
        r.throughput
            .comparisons
            .iter()
            .find(|c| c.filter == Filter::EgressMonitorEnforce(Hooks::Both) && c.against == against)
    };
    if let (Some(limit), Some(nft)) = (
        against(Filter::Empty(Hooks::Both)),
        against(Filter::Nftables),
    ) {
        rows.push((
            "both hooks, 64 B UDP: ≥ 0.98 of the empty programs, ≥ 1.05 × nftables".into(),
            format!(
                "{} of the empty programs; {} × nftables",
                ratio(limit.udp),
                ratio(nft.udp)
            ),
            limit.udp.0 >= 0.98 && nft.udp.0 >= 1.05,
        ));
        rows.push((
            "both hooks, TCP: ≥ 0.98 of the empty programs, not below nftables".into(),
            format!(
                "{} of the empty programs; {} × nftables",
                ratio(limit.tcp),
                ratio(nft.tcp)
            ),
            limit.tcp.0 >= 0.98 && nft.tcp.0 >= 1.0,
        ));
    }
    let above_empty = |hook: ProgramHook, traffic: &str| {
        let of = |filter: Filter| {
            r.throughput
                .program_costs
                .iter()
                .find(|c| c.filter == filter && c.hook == hook && c.traffic == traffic)
                .map(|c| c.ns_per_run)
        };
        Some(of(Filter::EgressMonitorEnforce(Hooks::Both))? - of(Filter::Empty(Hooks::Both))?)
    };
    for (traffic, family) in [("UDP 64 B", "IPv4"), ("UDP 64 B IPv6", "IPv6")] {
        if let (Some(cgroup), Some(tc)) = (
            above_empty(ProgramHook::CgroupEgress, traffic),
            above_empty(ProgramHook::TcEgress, traffic),
        ) {
            rows.push((
                format!(
                    "per program on the real path, allowed {family} (64 B UDP, {} rules per family): ≤ 25 ns above the empty program",
                    r.throughput.rules_per_family
                ),
                format!("cgroup_egress {cgroup:+.0} ns, tc_egress {tc:+.0} ns"),
                cgroup <= 25.0 && tc <= 25.0,
            ));
        }
    }
    if let Some(ingress) = above_empty(ProgramHook::CgroupIngress, "TCP") {
        rows.push((
            "received packets that are not DNS (TCP ACKs): ≤ 15 ns above the empty program".into(),
            format!("cgroup_ingress {ingress:+.0} ns"),
            ingress <= 15.0,
        ));
    }
    let largest = r
        .verdict
        .costs
        .iter()
        .map(|c| c.rules_per_family)
        .max()
        .unwrap_or(0);
    let worst_allowed = r
        .verdict
        .costs
        .iter()
        .filter(|c| c.rules_per_family == largest && c.case.starts_with("allowed"))
        .map(|c| c.ns_per_packet)
        .max()
        .unwrap_or(0);
    rows.push((
        format!(
            "per-packet cost ≤ 50 ns at {largest} rules (allowed path, worst program and family)"
        ),
        format!("{worst_allowed} ns"),
        worst_allowed <= 50,
    ));
    if let Some((per_family, total, ms)) = r.verdict.load_ms.iter().find(|(n, _, _)| *n == 100_000)
    {
        rows.push((
            format!("100,000 rules loaded in < 1 s ({per_family} per family, {total} in all)"),
            format!("{ms:.0} ms"),
            *ms < 1000.0,
        ));
    }
    if let Some(many) = r.flood.iter().find(|f| f.scenario == Scenario::ManyFlows) {
        rows.push((
            "≥ 500,000 events/s handled, none lost below that rate (flood of distinct destinations)"
                .into(),
            format!(
                "{:.0} events per daemon CPU second; offered {:.0}/s: {} lost, {} of {} dropped packets in events",
                many.events_per_cpu_s,
                many.dropped_per_s,
                many.events_lost,
                many.packets_in_events,
                many.dropped
            ),
            many.events_per_cpu_s >= 500_000.0
                && many.events_lost == 0
                && many.packets_in_events == many.dropped,
        ));
    }
    if let Some(one) = r.flood.iter().find(|f| f.scenario == Scenario::OneFlow) {
        rows.push((
            "one flow's flood is a handful of events adding up to every packet".into(),
            format!(
                "{} events for {} dropped packets; {} packets in events",
                one.events_written, one.dropped, one.packets_in_events
            ),
            one.events_written <= 10 && one.packets_in_events == one.dropped,
        ));
    }
    let rss = r.daemon.rss_idle_kib as f64 / 1024.0;
    rows.push((
        "daemon RSS < 50 MiB at idle".into(),
        format!("{rss:.1} MiB"),
        rss < 50.0,
    ));
    rows
}
