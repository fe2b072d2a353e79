//! The controller under a fleet's load, for each store: 1,000 simulated nodes on loopback,
//! each reporting every 10 s with 100 flow events, then the same reports as fast as 64
//! connections can send them (the capacity). Reported: ingest rate, request latency (p50,
//! p99), the controller's CPU (and the PostgreSQL server's), the database's size and what a
//! day of such load would take.
//!
//! The load generator runs on the same machine: it shares the two vCPUs with the controller
//! (and PostgreSQL), so the capacity figures are a floor.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egress_monitor_api::time::now_ms;
use egress_monitor_tests::controller::{
    ADMIN_TOKEN, Api, Controller, ControllerFiles, FLEET_TOKEN, PgDatabase,
};
use serde::Serialize;
use serde_json::{Value, json};

pub const NODES: usize = 1_000;
pub const INTERVAL: Duration = Duration::from_secs(10);
pub const EVENTS_PER_REPORT: usize = 100;
const WORKERS: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct StoreRun {
    pub store: &'static str,
    /// The fleet's pace: every node every 10 s.
    pub paced: Phase,
    /// As fast as 64 connections go.
    pub capacity: Phase,
    /// Reports per second at capacity × the interval: how many such nodes one controller takes.
    pub nodes_served: u64,
    pub db_bytes: u64,
    /// The database's growth per day at the paced load (1,000 nodes).
    pub db_bytes_per_day: u64,
    /// What the API says it stored, against what was sent.
    pub events_stored: u64,
    pub events_sent: u64,
    /// With all of that stored: the slowest of 3 calls of the summary (24 h tops), of the
    /// page, and of 100 violations of one process.
    pub summary_ms: f64,
    pub page_ms: f64,
    pub violations_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    pub seconds: f64,
    pub reports: u64,
    pub errors: u64,
    pub reports_per_s: f64,
    pub events_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub controller_cpu: f64,
    pub postgres_cpu: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ControllerBench {
    pub nodes: usize,
    pub interval_s: u64,
    pub events_per_report: usize,
    pub runs: Vec<StoreRun>,
}

fn body(node: usize, seq: u64) -> Vec<u8> {
    let ts = now_ms() - 500;
    let events: Vec<Value> = (0..EVENTS_PER_REPORT)
        .map(|i| {
            json!({
                "ts_ms": ts, "kind": if seq == 1 { "first" } else { "update" }, "hook": "cgroup",
                "action": "dropped", "proto": "tcp", "src": format!("10.{}.{}.4", node / 250, node % 250),
                "dst": format!("203.0.113.{}", (node + i) % 250 + 1), "dst_port": 443,
                "dst_name": null, "rule": "default", "pid": 1000 + i, "comm": "curl",
                "exe": format!("/usr/bin/app-{}", i % 20), "cgroup": "/system.slice/app.service",
                "packets": 3, "bytes": 180
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "node_id": format!("sim-{node:04}"), "stream": format!("{:016x}", node as u64 + 1),
        "seq": seq, "created_ms": now_ms(), "interval_s": INTERVAL.as_secs(),
        "identity": {"hostname": format!("sim-{node:04}"), "machine_id": format!("{node:032x}"), "vm_id": null},
        "mode": "enforce",
        "policy": {"version": "00000000deadbeef", "fleet_version": null, "error": null},
        "counters": {"allowed_packets": 1000, "denied_observed_packets": 0, "denied_dropped_packets": 3 * seq,
                     "denied_bytes": 180 * seq, "malformed": 0},
        "health": {"attachments": 1, "events_lost": 0, "uptime_s": 10 * seq, "spool_dropped_reports": 0,
                   "spool_dropped_events": 0, "spool_pending": 0},
        "events": events
    }))
    .expect("JSON")
}

/// CPU seconds (user + system) a process used so far, from `/proc/PID/stat`: in 10 ms ticks,
/// but counting threads that have exited too (tokio's blocking pool, which runs the SQLite
/// work, lets idle threads go; `flood::cpu_seconds` sums only the living ones).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU seconds of every PostgreSQL server process.
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .map(cpu_seconds)
        .sum()
}

/// Sends `schedule` (due time, node, seq) from [`WORKERS`] connections; `paced`: each at its
/// due time, else at once.
fn drive(url: &str, schedule: &[(Duration, usize, u64)], paced: bool, pid: u32) -> Phase {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(schedule.len()));
    let errors = AtomicUsize::new(0);
    let controller_before = cpu_seconds(pid);
    let postgres_before = postgres_cpu_seconds();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(due, node, seq)) = schedule.get(i) else {
                        break;
                    };
                    if paced && let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let payload = body(node, seq);
                    let sent = Instant::now();
                    let ok = agent
                        .post(format!("{url}/api/v1/reports"))
                        .header("Authorization", format!("Bearer {FLEET_TOKEN}"))
                        .header("Content-Type", "application/json")
                        .send(&payload[..])
                        .is_ok_and(|mut r| {
                            r.status().as_u16() == 200 && r.body_mut().read_to_string().is_ok()
                        });
                    mine.push(sent.elapsed().as_secs_f64() * 1000.0);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = latencies.into_inner().unwrap();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let reports = latencies.len() as u64;
    Phase {
        seconds,
        reports,
        errors: errors.into_inner() as u64,
        reports_per_s: reports as f64 / seconds,
        events_per_s: (reports as usize * EVENTS_PER_REPORT) as f64 / seconds,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        controller_cpu: (cpu_seconds(pid) - controller_before) / seconds,
        postgres_cpu: (postgres_cpu_seconds() - postgres_before) / seconds,
    }
}

fn run_store(
    store: &'static str,
    db: &str,
    files: &ControllerFiles,
    paced_rounds: u64,
    capacity_rounds: u64,
) -> anyhow::Result<StoreRun> {
    let controller = Controller::start(files, db, 0, &[]);
    let pid = controller.pid();
    // Each node reports every interval, node i at i × interval / nodes into it.
    let step = INTERVAL / NODES as u32;
    let paced_schedule: Vec<(Duration, usize, u64)> = (0..paced_rounds)
        .flat_map(|round| {
            (0..NODES).map(move |node| {
                (
                    INTERVAL * round as u32 + step * node as u32,
                    node,
                    round + 1,
                )
            })
        })
        .collect();
    eprintln!(
        "   {store}: {} reports at the fleet's pace ({} s)",
        paced_schedule.len(),
        paced_rounds * INTERVAL.as_secs()
    );
    let paced = drive(&controller.url, &paced_schedule, true, pid);
    let capacity_schedule: Vec<(Duration, usize, u64)> = (0..capacity_rounds)
        .flat_map(|round| {
            (0..NODES).map(move |node| (Duration::ZERO, node, paced_rounds + round + 1))
        })
        .collect();
    eprintln!(
        "   {store}: {} reports as fast as they go",
        capacity_schedule.len()
    );
    let capacity = drive(&controller.url, &capacity_schedule, false, pid);
    let api = Api::new(&controller.url);
    let (status, nodes) = api.get("/api/v1/nodes", ADMIN_TOKEN);
    if status != 200 {
        bail!("GET /api/v1/nodes: {status} {nodes}");
    }
    let nodes = nodes.as_array().context("a node list")?;
    let events_stored: u64 = nodes.iter().filter_map(|n| n["events"].as_u64()).sum();
    let events_sent = (paced.reports - paced.errors + capacity.reports - capacity.errors)
        * EVENTS_PER_REPORT as u64;
    let slowest = |path: &str| -> anyhow::Result<f64> {
        let mut worst: f64 = 0.0;
        for _ in 0..3 {
            let started = Instant::now();
            let (status, body) = api.get(path, ADMIN_TOKEN);
            if status != 200 {
                bail!("GET {path}: {status} {body}");
            }
            worst = worst.max(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(worst)
    };
    let summary_ms = slowest("/api/v1/summary")?;
    let page_ms = slowest("/")?;
    let violations_ms = slowest("/api/v1/violations?process=app-7&limit=100")?;
    let db_bytes = db_size(db)?;
    let simulated_s = (paced_rounds + capacity_rounds) as f64 * INTERVAL.as_secs_f64();
    Ok(StoreRun {
        store,
        nodes_served: (capacity.reports_per_s * INTERVAL.as_secs_f64()) as u64,
        db_bytes,
        db_bytes_per_day: (db_bytes as f64 / simulated_s * 86_400.0) as u64,
        events_stored,
        events_sent,
        summary_ms,
        page_ms,
        violations_ms,
        paced,
        capacity,
    })
}

fn db_size(db: &str) -> anyhow::Result<u64> {
    if let Some(path) = db.strip_prefix("sqlite:") {
        return Ok(["", "-wal"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{path}{suffix}")).ok())
            .map(|m| m.len())
            .sum());
    }
    let output = std::process::Command::new("psql")
        .args([
            db,
            "-At",
            "-c",
            "SELECT pg_database_size(current_database())",
        ])
        .output()?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("pg_database_size")
}

pub fn measure(quick: bool) -> anyhow::Result<ControllerBench> {
    let scratch = std::env::temp_dir().join(format!(
        "em-bench-controller-{}",
        egress_monitor_tests::unique_id()
    ));
    let files = ControllerFiles::new(&scratch);
    let (paced, capacity) = if quick { (2, 2) } else { (6, 4) };
    let result = (|| -> anyhow::Result<Vec<StoreRun>> {
        let sqlite = run_store("sqlite", &files.sqlite(), &files, paced, capacity)?;
        let database = PgDatabase::create();
        let postgres = run_store("postgres", &database.url(), &files, paced, capacity)?;
        Ok(vec![sqlite, postgres])
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(ControllerBench {
        nodes: NODES,
        interval_s: INTERVAL.as_secs(),
        events_per_report: EVENTS_PER_REPORT,
        runs: result?,
    })
}

/// The markdown section.
pub fn render(bench: &ControllerBench) -> String {
    let mut out = format!(
        "## Controller: {} simulated nodes, a report every {} s with {} flow events each\n\n\
         | store | phase | reports/s | events/s | p50 ms | p99 ms | max ms | errors | controller CPU | PostgreSQL CPU |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        bench.nodes, bench.interval_s, bench.events_per_report
    );
    for run in &bench.runs {
        for (name, phase) in [("fleet pace", &run.paced), ("capacity", &run.capacity)] {
            out.push_str(&format!(
                "| {} | {name} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.0} % | {:.0} % |\n",
                run.store,
                phase.reports_per_s,
                phase.events_per_s,
                phase.p50_ms,
                phase.p99_ms,
                phase.max_ms,
                phase.errors,
                phase.controller_cpu * 100.0,
                phase.postgres_cpu * 100.0,
            ));
        }
    }
    out.push_str("\n| store | nodes one controller serves (capacity × 10 s) | database | per day at 1,000 nodes | events stored / sent | summary ms | page ms | violations of one process ms |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for run in &bench.runs {
        out.push_str(&format!(
            "| {} | {} | {:.1} MiB | {:.1} GiB | {} / {} | {:.0} | {:.0} | {:.0} |\n",
            run.store,
            run.nodes_served,
            run.db_bytes as f64 / 1048576.0,
            run.db_bytes_per_day as f64 / 1073741824.0,
            run.events_stored,
            run.events_sent,
            run.summary_ms,
            run.page_ms,
            run.violations_ms
        ));
    }
    out
}
