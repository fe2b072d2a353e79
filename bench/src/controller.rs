//! The controller under a large fleet's load: 10,000 simulated nodes on loopback, each
//! reporting every 10 s (1,000 reports/s) with a realistic mix — nine reports in ten empty
//! (heartbeats), most others a few events, one in a hundred a burst of 200 — for five minutes;
//! on PostgreSQL through two controller replicas sharing the database, on SQLite through one
//! controller. Retention runs during the load: the database starts with 1.5 million violations
//! older than the retention, which the controllers prune in batches while the nodes report.
//!
//! Reported per store: the rate sustained, request latency (p50, p99, max), the longest request
//! while pruning ran and how many took over 500 ms, whether every report and event was stored,
//! CPU, the database's size; then, with at least a million events stored, the summary, the page
//! and a filtered query (cold, from the rollups); and a projection for 100,000 nodes.
//!
//! The load generator runs on the same machine: it shares the two vCPUs with the controllers
//! (and PostgreSQL), so the figures are a floor.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
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

pub const NODES: usize = 10_000;
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Old violations in the database at the start, for retention to remove under load.
pub const OLD_VIOLATIONS: u64 = 1_500_000;
/// Events stored before the summary and the page are measured.
pub const SUMMARY_EVENTS: u64 = 1_000_000;
const WORKERS: usize = 96;
/// A request slower than this while pruning runs counts as a pause.
const PAUSE_MS: f64 = 500.0;

#[derive(Clone, Debug, Serialize)]
pub struct StoreRun {
    pub store: &'static str,
    pub replicas: usize,
    /// Every node every 10 s.
    pub load: Phase,
    /// Pruning under the load: how long it ran, what it removed, the slowest request meanwhile
    /// and how many took over 500 ms.
    pub prune_seconds: f64,
    pub pruned: u64,
    pub prune_max_ms: f64,
    pub prune_pauses: u64,
    /// What the API says it stored, against what was sent (reports and events).
    pub reports_stored: u64,
    pub reports_sent: u64,
    pub events_stored: u64,
    pub events_sent: u64,
    pub db_bytes: u64,
    /// Database bytes per stored event (after the run; pruned rows' space may be reused).
    pub bytes_per_event: f64,
    /// With at least [`SUMMARY_EVENTS`] stored: the first and the slowest of three calls of the
    /// summary, of the page, and of 100 violations of one process; and the day's tops computed
    /// from the rollups (what the controller does every 30 s, off the requests' path).
    pub events_at_summary: u64,
    pub tops_ms: f64,
    pub summary_cold_ms: f64,
    pub summary_ms: f64,
    pub page_ms: f64,
    pub violations_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    pub seconds: f64,
    pub reports: u64,
    pub errors: u64,
    pub events: u64,
    pub reports_per_s: f64,
    pub events_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU seconds per wall second (1.0 = one core busy), all replicas together.
    pub controller_cpu: f64,
    pub postgres_cpu: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Projection {
    pub nodes: u64,
    pub reports_per_s: f64,
    pub events_per_s: f64,
    /// Database growth per day if every event were kept (measured bytes per event, PostgreSQL).
    pub db_bytes_per_day: f64,
    /// OTLP: encoded bytes per event (measured) and per day.
    pub otlp_bytes_per_event: f64,
    pub otlp_bytes_per_day: f64,
    /// Reports per second the measured PostgreSQL setup sustained, and how many such setups
    /// 100,000 nodes would need.
    pub measured_reports_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ControllerBench {
    pub nodes: usize,
    pub interval_s: u64,
    pub rounds: u64,
    pub runs: Vec<StoreRun>,
    pub projection: Projection,
}

/// How many events a node's report carries: nine in ten none, most others 1-10, one in a
/// hundred a burst of 200 (deterministic per node and round).
pub fn events_in(node: usize, seq: u64) -> usize {
    let h = (node as u64)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(seq.wrapping_mul(40_503))
        % 1000;
    match h {
        0..900 => 0,
        900..990 => 1 + (h % 10) as usize,
        _ => 200,
    }
}

fn body(node: usize, seq: u64, events: usize) -> Vec<u8> {
    let ts = now_ms() - 500;
    let events: Vec<Value> = (0..events)
        .map(|i| {
            json!({
                "ts_ms": ts, "kind": if seq == 1 { "first" } else { "update" }, "hook": "cgroup",
                "action": "dropped", "proto": "tcp", "src": format!("10.{}.{}.4", node / 250 % 250, node % 250),
                "dst": format!("203.0.113.{}", (node + i) % 250 + 1), "dst_port": 443,
                "dst_name": null, "rule": "default", "pid": 1000 + i, "comm": "curl",
                "exe": format!("/usr/bin/app-{}", i % 20), "cgroup": "/system.slice/app.service",
                "packets": 3, "bytes": 180
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "node_id": format!("sim-{node:05}"), "stream": format!("{:016x}", node as u64 + 1),
        "seq": seq, "created_ms": now_ms(), "interval_s": INTERVAL.as_secs(),
        "identity": {"hostname": format!("sim-{node:05}"), "machine_id": format!("{node:032x}"), "vm_id": null},
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

/// CPU seconds (user + system) a process used so far, from `/proc/PID/stat`, counting threads
/// that have exited too.
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

/// One request: when it was sent (since the phase began) and how long it took.
type Sample = (f64, f64);

/// Sends `schedule` (due time, node, seq, events) from [`WORKERS`] connections to the
/// replicas (node `n` to replica `n % replicas`); `paced`: each at its due time, else at once.
fn drive(
    urls: &[String],
    schedule: &[(Duration, usize, u64, usize)],
    paced: bool,
    pids: &[u32],
) -> (Phase, Vec<Sample>) {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(schedule.len()));
    let errors = AtomicUsize::new(0);
    let cpu = || pids.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
    let controller_before = cpu();
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
                    let Some(&(due, node, seq, events)) = schedule.get(i) else {
                        break;
                    };
                    if paced && let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let payload = body(node, seq, events);
                    let url = &urls[node % urls.len()];
                    let sent = Instant::now();
                    let ok = agent
                        .post(format!("{url}/api/v1/reports"))
                        .header("Authorization", format!("Bearer {FLEET_TOKEN}"))
                        .header("Content-Type", "application/json")
                        .send(&payload[..])
                        .is_ok_and(|mut r| {
                            r.status().as_u16() == 200 && r.body_mut().read_to_string().is_ok()
                        });
                    mine.push((
                        (sent - started).as_secs_f64(),
                        sent.elapsed().as_secs_f64() * 1000.0,
                    ));
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                samples.lock().unwrap().extend(mine);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let samples = samples.into_inner().unwrap();
    let mut latencies: Vec<f64> = samples.iter().map(|s| s.1).collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let reports = latencies.len() as u64;
    let events: u64 = schedule.iter().map(|s| s.3 as u64).sum();
    let phase = Phase {
        seconds,
        reports,
        errors: errors.into_inner() as u64,
        events,
        reports_per_s: reports as f64 / seconds,
        events_per_s: events as f64 / seconds,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        controller_cpu: (cpu() - controller_before) / seconds,
        postgres_cpu: (postgres_cpu_seconds() - postgres_before) / seconds,
    };
    (phase, samples)
}

/// The store a run uses: how to reach it and seed it.
enum Db {
    Sqlite(String),
    Postgres(PgDatabase),
}

impl Db {
    fn url(&self) -> String {
        match self {
            Db::Sqlite(url) => url.clone(),
            Db::Postgres(database) => database.url(),
        }
    }

    /// Writes `count` violations received two days ago (older than a day's retention).
    fn seed_old(&self, count: u64) -> anyhow::Result<()> {
        let old = now_ms() - 2 * 86_400_000;
        let columns = "node_id, received_ms, ts_ms, kind, hook, action, proto, dst, rule, comm, \
                       exe, process, packets, bytes";
        let values = format!(
            "'old-' || (n % 1000), {old}, {old}, 'first', 'cgroup', 'dropped', 'tcp', \
             '198.51.100.' || (n % 250 + 1), 'default', 'curl', '/usr/bin/curl', 'curl', 1, 60"
        );
        match self {
            Db::Sqlite(url) => {
                let path = url.strip_prefix("sqlite:").context("an sqlite: URL")?;
                let connection = rusqlite::Connection::open(path)?;
                connection.execute_batch(&format!(
                    "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {count}) \
                     INSERT INTO events ({columns}) SELECT {values} FROM g;"
                ))?;
            }
            Db::Postgres(database) => {
                database.query_in(&format!(
                    "INSERT INTO events ({columns}) SELECT {values} FROM generate_series(1, {count}) AS n"
                ));
            }
        }
        Ok(())
    }

    /// Violations received before a day ago (what retention removes).
    fn old_count(&self) -> u64 {
        let cutoff = now_ms() - 86_400_000;
        let sql = format!("SELECT COUNT(*) FROM events WHERE received_ms < {cutoff}");
        match self {
            Db::Sqlite(url) => rusqlite::Connection::open(url.trim_start_matches("sqlite:"))
                .and_then(|c| c.query_row(&sql, [], |row| row.get::<_, i64>(0)))
                .map_or(0, |n| n as u64),
            Db::Postgres(database) => database.query_in(&sql).trim().parse().unwrap_or(0),
        }
    }

    fn size(&self) -> anyhow::Result<u64> {
        match self {
            Db::Sqlite(url) => {
                let path = url.trim_start_matches("sqlite:");
                Ok(["", "-wal"]
                    .iter()
                    .filter_map(|suffix| std::fs::metadata(format!("{path}{suffix}")).ok())
                    .map(|m| m.len())
                    .sum())
            }
            Db::Postgres(database) => database
                .query_in("SELECT pg_database_size(current_database())")
                .trim()
                .parse()
                .context("pg_database_size"),
        }
    }
}

fn run_store(
    store: &'static str,
    db: &Db,
    replicas: usize,
    files: &ControllerFiles,
    rounds: u64,
) -> anyhow::Result<StoreRun> {
    let url = db.url();
    let retention = ["--retention-days", "1"];
    // The schema first (one controller migrates), then the old violations.
    Controller::start(files, &url, 0, &retention).kill();
    eprintln!("   {store}: {OLD_VIOLATIONS} violations older than the retention");
    db.seed_old(OLD_VIOLATIONS)?;
    let controllers: Vec<Controller> = (0..replicas)
        .map(|_| Controller::start(files, &url, 0, &retention))
        .collect();
    let urls: Vec<String> = controllers.iter().map(|c| c.url.clone()).collect();
    let pids: Vec<u32> = controllers.iter().map(Controller::pid).collect();
    // Pruning starts as the controllers do; watch when it is done.
    let pruning_done = AtomicBool::new(false);
    let prune_started = Instant::now();
    let prune_seconds = Mutex::new(None);
    let step = INTERVAL / NODES as u32;
    let schedule: Vec<(Duration, usize, u64, usize)> = (0..rounds)
        .flat_map(|round| {
            (0..NODES).map(move |node| {
                let seq = round + 1;
                (
                    INTERVAL * round as u32 + step * node as u32,
                    node,
                    seq,
                    events_in(node, seq),
                )
            })
        })
        .collect();
    eprintln!(
        "   {store}: {} reports from {NODES} nodes over {} s, {} replica(s)",
        schedule.len(),
        rounds * INTERVAL.as_secs(),
        replicas
    );
    let (load, samples) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let limit = Duration::from_secs(rounds * INTERVAL.as_secs() + 600);
            while prune_started.elapsed() < limit {
                if db.old_count() == 0 {
                    *prune_seconds.lock().unwrap() = Some(prune_started.elapsed().as_secs_f64());
                    break;
                }
                if pruning_done.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let result = drive(&urls, &schedule, true, &pids);
        pruning_done.store(true, Ordering::Relaxed);
        result
    });
    let prune_seconds = prune_seconds.into_inner().unwrap();
    let window = prune_seconds.unwrap_or(load.seconds);
    let in_window: Vec<f64> = samples
        .iter()
        .filter(|(at, _)| *at <= window)
        .map(|(_, ms)| *ms)
        .collect();
    let prune_max_ms = in_window.iter().copied().fold(0.0, f64::max);
    let prune_pauses = in_window.iter().filter(|ms| **ms > PAUSE_MS).count() as u64;
    let pruned = OLD_VIOLATIONS - db.old_count();
    let api = Api::new(&urls[0]);
    let stored = |api: &Api| -> anyhow::Result<(u64, u64)> {
        let (status, nodes) = api.get("/api/v1/nodes?limit=10000", ADMIN_TOKEN);
        if status != 200 {
            bail!("GET /api/v1/nodes: {status} {nodes}");
        }
        let nodes = nodes.as_array().context("a node list")?;
        Ok((
            nodes.iter().filter_map(|n| n["reports"].as_u64()).sum(),
            nodes.iter().filter_map(|n| n["events"].as_u64()).sum(),
        ))
    };
    let (reports_stored, events_stored) = stored(&api)?;
    let db_bytes = db.size()?;
    // A million events: top up with reports of 100 events, as fast as they go.
    let missing = SUMMARY_EVENTS.saturating_sub(events_stored);
    if missing > 0 {
        let extra: Vec<(Duration, usize, u64, usize)> = (0..missing.div_ceil(100))
            .map(|i| {
                let node = i as usize % NODES;
                (Duration::ZERO, node, rounds + 1 + i / NODES as u64, 100)
            })
            .collect();
        eprintln!(
            "   {store}: {} more events for the summary",
            extra.len() * 100
        );
        drive(&urls, &extra, false, &pids);
    }
    let (_, events_at_summary) = stored(&api)?;
    let timed = |path: &str| -> anyhow::Result<(f64, f64)> {
        let mut first = 0.0;
        let mut worst: f64 = 0.0;
        for i in 0..3 {
            let started = Instant::now();
            let (status, body) = api.get(path, ADMIN_TOKEN);
            if status != 200 {
                bail!("GET {path}: {status} {body}");
            }
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if i == 0 {
                first = ms;
            }
            worst = worst.max(ms);
        }
        Ok((first, worst))
    };
    let (summary_cold_ms, summary_ms) = timed("/api/v1/summary")?;
    let (_, page_ms) = timed("/")?;
    let (_, violations_ms) = timed("/api/v1/violations?process=app-7&limit=100")?;
    let tops_ms = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let store = egress_monitor_controller::store::open(&url, None).await?;
            let started = Instant::now();
            store.top(now_ms() - 86_400_000, 10).await?;
            anyhow::Ok(started.elapsed().as_secs_f64() * 1000.0)
        })?;
    drop(controllers);
    Ok(StoreRun {
        store,
        replicas,
        prune_seconds: prune_seconds.unwrap_or(f64::NAN),
        pruned,
        prune_max_ms,
        prune_pauses,
        reports_stored,
        reports_sent: load.reports - load.errors,
        events_stored,
        events_sent: schedule.iter().map(|s| s.3 as u64).sum(),
        db_bytes,
        bytes_per_event: db_bytes as f64 / events_stored.max(1) as f64,
        events_at_summary,
        tops_ms,
        summary_cold_ms,
        summary_ms,
        page_ms,
        violations_ms,
        load,
    })
}

/// Encoded OTLP bytes per event, for a batch like the load's.
fn otlp_bytes_per_event() -> f64 {
    let payload: Value = serde_json::from_slice(&body(7, 2, 100)).expect("JSON");
    let violations: Vec<egress_monitor_controller::store::Violation> = payload["events"]
        .as_array()
        .expect("events")
        .iter()
        .enumerate()
        .map(|(i, event)| egress_monitor_controller::store::Violation {
            id: 1_000_000 + i as i64,
            node_id: "sim-00007".into(),
            received_ms: now_ms(),
            event: serde_json::from_value(event.clone()).expect("an event"),
        })
        .collect();
    use prost::Message as _;
    egress_monitor_controller::otlp::encode(&violations)
        .encode_to_vec()
        .len() as f64
        / violations.len() as f64
}

pub fn measure(quick: bool) -> anyhow::Result<ControllerBench> {
    let scratch = std::env::temp_dir().join(format!(
        "em-bench-controller-{}",
        egress_monitor_tests::unique_id()
    ));
    let files = ControllerFiles::new(&scratch);
    let rounds = if quick { 3 } else { 30 };
    let result = (|| -> anyhow::Result<Vec<StoreRun>> {
        let database = Db::Postgres(PgDatabase::create());
        let postgres = run_store("postgres", &database, 2, &files, rounds)?;
        drop(database);
        let sqlite = Db::Sqlite(files.sqlite());
        let sqlite = run_store("sqlite", &sqlite, 1, &files, rounds)?;
        Ok(vec![postgres, sqlite])
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let runs = result?;
    let postgres = &runs[0];
    let nodes = 100_000u64;
    let reports_per_s = nodes as f64 / INTERVAL.as_secs_f64();
    let events_per_report = postgres.load.events as f64 / postgres.load.reports.max(1) as f64;
    let events_per_s = reports_per_s * events_per_report;
    let otlp = otlp_bytes_per_event();
    Ok(ControllerBench {
        nodes: NODES,
        interval_s: INTERVAL.as_secs(),
        rounds,
        projection: Projection {
            nodes,
            reports_per_s,
            events_per_s,
            db_bytes_per_day: events_per_s * 86_400.0 * postgres.bytes_per_event,
            otlp_bytes_per_event: otlp,
            otlp_bytes_per_day: events_per_s * 86_400.0 * otlp,
            measured_reports_per_s: postgres.load.reports_per_s,
        },
        runs,
    })
}

/// The markdown section.
pub fn render(bench: &ControllerBench) -> String {
    let mut out = format!(
        "## Controller: {} simulated nodes, a report every {} s, {} s\n\n\
         Reports: nine in ten empty, most others 1-10 events, one in a hundred a burst of 200. \
         The database starts with {OLD_VIOLATIONS} violations older than the retention, pruned \
         under the load.\n\n\
         | store | replicas | reports/s | events/s | p50 ms | p99 ms | max ms | errors | controller CPU | PostgreSQL CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        bench.nodes,
        bench.interval_s,
        bench.rounds * bench.interval_s
    );
    for run in &bench.runs {
        let phase = &run.load;
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.0} % | {:.0} % |\n",
            run.store,
            run.replicas,
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
    out.push_str(
        "\n| store | pruned under load | pruning took s | slowest request meanwhile ms | requests > 500 ms | reports stored / sent | events stored / sent | database | bytes per event |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in &bench.runs {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.0} | {} | {} / {} | {} / {} | {:.1} MiB | {:.0} |\n",
            run.store,
            run.pruned,
            run.prune_seconds,
            run.prune_max_ms,
            run.prune_pauses,
            run.reports_stored,
            run.reports_sent,
            run.events_stored,
            run.events_sent,
            run.db_bytes as f64 / 1048576.0,
            run.bytes_per_event,
        ));
    }
    out.push_str(
        "\n| store | events stored | tops from the rollups ms (every 30 s, in the background) | summary ms (first / slowest of 3) | page ms | 100 violations of one process ms |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for run in &bench.runs {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} |\n",
            run.store,
            run.events_at_summary,
            run.tops_ms,
            run.summary_cold_ms,
            run.summary_ms,
            run.page_ms,
            run.violations_ms
        ));
    }
    let p = &bench.projection;
    out.push_str(&format!(
        "\n### Projection: {} nodes\n\n\
         {:.0} reports/s and {:.0} events/s at this mix. Kept whole in one database that is \
         {:.1} GiB a day ({:.0} bytes per event, PostgreSQL as measured); exported over OTLP, \
         {:.0} bytes per event, {:.1} GiB a day. The measured pair of replicas on one \
         PostgreSQL took {:.0} reports/s here (the load generator beside them on 2 vCPUs): \
         {:.0}× that is needed.\n",
        p.nodes,
        p.reports_per_s,
        p.events_per_s,
        p.db_bytes_per_day / 1073741824.0,
        p.db_bytes_per_day / (p.events_per_s * 86_400.0).max(1.0),
        p.otlp_bytes_per_event,
        p.otlp_bytes_per_day / 1073741824.0,
        p.measured_reports_per_s,
        p.reports_per_s / p.measured_reports_per_s.max(1.0),
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mix_is_mostly_empty_with_rare_bursts() {
        let counts: Vec<usize> = (0..10_000).map(|node| super::events_in(node, 3)).collect();
        let empty = counts.iter().filter(|c| **c == 0).count();
        let bursts = counts.iter().filter(|c| **c == 200).count();
        assert!((8_500..9_500).contains(&empty), "{empty}");
        assert!((50..200).contains(&bursts), "{bursts}");
    }
}
