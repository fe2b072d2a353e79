//! The console at 10,000 nodes in Chromium: for each page, the wall time of a headless
//! Chromium loading it to a DOM dump (scripts run) and the memory its processes hold at most
//! (the sum of their proportional set sizes, sampled every 10 ms), beside the same for an
//! empty page — the browser's own cost, the physical limit of any page. Median of five loads.

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use egress_monitor_tests::controller::{
    ADMIN_TOKEN, Api, CHROMIUM_DUMP_DOM, Controller, ControllerFiles, FLEET_TOKEN, report,
};
use serde::Serialize;
use serde_json::json;

const NODES: usize = 10_000;
const LOADS: usize = 5;

#[derive(Debug, Serialize)]
pub struct PageLoad {
    pub page: String,
    /// Median wall time of a load to its DOM dump, ms.
    pub load_ms: f64,
    /// The same, less the empty page's: what the page itself costs, ms.
    pub render_ms: f64,
    /// Median of the loads' peak memory of all Chromium processes (PSS), MiB.
    pub peak_mib: f64,
    /// The same, less the empty page's, MiB.
    pub page_mib: f64,
    /// The HTML's size, KiB.
    pub html_kib: f64,
}

#[derive(Debug, Serialize)]
pub struct ConsoleBench {
    pub nodes: usize,
    pub pages: Vec<PageLoad>,
}

/// PSS of every process in process group `pgid`, KiB.
fn group_pss_kib(pgid: i32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: getpgid reads another process's group; it fails harmlessly when it is gone.
        if unsafe { libc::getpgid(pid) } != pgid {
            continue;
        }
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        total += rollup
            .lines()
            .find_map(|line| line.strip_prefix("Pss:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// One load of `url` by a fresh headless Chromium: (wall ms, peak MiB, DOM bytes).
fn load(url: &str, profile: &std::path::Path) -> anyhow::Result<(f64, f64, usize)> {
    let _ = std::fs::remove_dir_all(profile);
    let started = Instant::now();
    let mut child = Command::new("chromium")
        .args(CHROMIUM_DUMP_DOM)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pgid = child.id() as i32;
    let mut peak = 0;
    let deadline = started + Duration::from_secs(60);
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut dom = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut dom).map(|_| dom)
    });
    loop {
        peak = peak.max(group_pss_kib(pgid));
        if child.try_wait()?.is_some() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "chromium did not finish {url} in 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let dom = reader.join().expect("reader")?;
    Ok((elapsed, peak as f64 / 1024.0, dom.len()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Starts a controller, gives it 10,000 nodes (1% with violations), and loads its pages.
pub fn measure() -> anyhow::Result<ConsoleBench> {
    let scratch = std::env::temp_dir().join(format!(
        "em-bench-console-{}",
        egress_monitor_tests::unique_id()
    ));
    let result = (|| -> anyhow::Result<ConsoleBench> {
        let files = ControllerFiles::new(&scratch);
        let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let url = controller.url.clone();
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let api = Api::new(&url);
                    for i in (t..NODES).step_by(4) {
                        let events = if i % 100 == 0 {
                            vec![json!({
                                "ts_ms": egress_monitor_api::time::now_ms() - 60_000, "kind": "first",
                                "hook": "cgroup", "action": "observed", "proto": "tcp", "src": "10.0.0.4",
                                "dst": format!("203.0.113.{}", i % 250 + 1), "dst_port": 443, "dst_name": null,
                                "rule": "default", "pid": 7, "comm": "backup", "exe": "/usr/bin/backup",
                                "cgroup": "/system.slice/app.service", "packets": 3, "bytes": 180
                            })]
                        } else {
                            vec![]
                        };
                        let mut body = report(&format!("vm-{i:05}"), &format!("machine-{i}"), 1, 3600, events);
                        body["identity"]["group"] = json!(format!("vmss-{}", i % 10));
                        if i % 500 == 0 {
                            body["health"]["attachments"] = json!(0);
                        }
                        let (status, answer) = api.post_json("/api/v1/reports", FLEET_TOKEN, &body);
                        anyhow::ensure!(status == 200, "report refused: {answer}");
                    }
                    Ok(())
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a sender")?;
        }
        let (scheme, rest) = controller.url.split_once("://").expect("a URL");
        let page = |path: &str| format!("{scheme}://operator:{ADMIN_TOKEN}@{rest}{path}");
        let profile = scratch.join("chromium-profile");
        let mut measured = Vec::new();
        for (name, url) in [
            ("empty page (the browser alone)", "about:blank".to_owned()),
            ("/ (overview)", page("/")),
            ("/nodes?page=50", page("/nodes?page=50")),
            ("/nodes/vm-05000", page("/nodes/vm-05000")),
            ("/violations", page("/violations")),
        ] {
            let mut times = Vec::new();
            let mut peaks = Vec::new();
            let mut size = 0;
            for _ in 0..LOADS {
                let (ms, mib, bytes) = load(&url, &profile)?;
                times.push(ms);
                peaks.push(mib);
                size = bytes;
            }
            measured.push((name, median(times), median(peaks), size));
        }
        let (_, blank_ms, blank_mib, _) = measured[0];
        Ok(ConsoleBench {
            nodes: NODES,
            pages: measured
                .into_iter()
                .map(|(name, ms, mib, bytes)| PageLoad {
                    page: name.to_owned(),
                    load_ms: ms,
                    render_ms: ms - blank_ms,
                    peak_mib: mib,
                    page_mib: mib - blank_mib,
                    html_kib: bytes as f64 / 1024.0,
                })
                .collect(),
        })
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

pub fn render(bench: &ConsoleBench) -> String {
    let mut out = format!(
        "## The console at {} nodes in Chromium\n\nEach page loaded {LOADS} times by a fresh headless Chromium to its DOM dump (scripts run; the overview draws its chart); median wall time and median peak memory of all Chromium processes (sum of PSS). *Page*: less the empty page's (the browser's own cost).\n\n| page | load (ms) | page (ms) | peak (MiB) | page (MiB) | DOM (KiB) |\n|---|---|---|---|---|---|\n",
        bench.nodes
    );
    for p in &bench.pages {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} |\n",
            p.page, p.load_ms, p.render_ms, p.peak_mib, p.page_mib, p.html_kib
        ));
    }
    out
}
