//! The console in a real browser (headless Chromium) at 10,000 simulated nodes: what needs
//! attention first, the violations chart drawn by its library, a search, filters and paging, a
//! drill-down to a node and to a process's violations, a staged rollout paused by a canary's
//! new drops and rolled back; and, with no node yet, how to enrol one.
//!
//! With `EGRESS_MONITOR_SCREENSHOTS=DIR` the test also saves the pages it checks as PNG
//! (empty, busy, rollout in progress): how docs/console-*.png are made.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use egress_monitor_api::time::now_ms;
use egress_monitor_tests::{
    Scratch,
    controller::{ADMIN_TOKEN, Api, Controller, ControllerFiles, FLEET_TOKEN, browse, report},
};
use serde_json::{Value, json};

const NODES: usize = 10_000;
const GROUPS: usize = 10;

fn node_id(i: usize) -> String {
    format!("vm-{i:05}")
}

fn group(i: usize) -> String {
    format!("vmss-{}", (b'a' + (i % GROUPS) as u8) as char)
}

fn event(dst: &str, comm: &str, action: &str, packets: u64) -> Value {
    json!({
        "ts_ms": now_ms() - 60_000, "kind": "first", "hook": "cgroup", "action": action,
        "proto": "tcp", "src": "10.0.0.4", "dst": dst, "dst_port": 443, "dst_name": null,
        "rule": "default", "pid": 7, "comm": comm, "exe": format!("/usr/bin/{comm}"),
        "cgroup": "/system.slice/app.service", "packets": packets, "bytes": packets * 60
    })
}

fn proof(passed: bool) -> Value {
    json!({
        "checked_ms": now_ms() - 1_000, "passed": passed,
        "problems": if passed { json!([]) } else { json!(["the link cgroup-7 was removed: its program no longer runs"]) },
        "interval_s": 300, "same_build": true, "mode_source": "the policy file's mode",
        "alarms": if passed { json!([]) } else {
            json!([{"ts_ms": now_ms() - 2_000, "kind": "link_removed", "message": "the link cgroup-7 was removed: its program no longer runs"}])
        }
    })
}

/// Node `i`'s report: every 500th node unprotected, every 700th failing its self-check, every
/// 97th reporting violations (backup to 203.0.113.x, curl to 198.51.100.x).
fn node_report(i: usize, seq: u64) -> Value {
    let events = if i.is_multiple_of(97) {
        vec![
            event(
                &format!("203.0.113.{}", i % 250 + 1),
                "backup",
                "observed",
                3,
            ),
            event(
                &format!("198.51.100.{}", i % 250 + 1),
                "curl",
                "observed",
                1,
            ),
        ]
    } else {
        vec![]
    };
    // An hour's interval: the controller's 180 s bound on silence, not 30 s, decides when a
    // node of this test goes stale (the test is shorter than that).
    let mut body = report(&node_id(i), &format!("machine-{i}"), seq, 3600, events);
    body["identity"]["group"] = json!(group(i));
    body["proof"] = proof(!i.is_multiple_of(700));
    if i.is_multiple_of(500) {
        body["health"]["attachments"] = json!(0);
    }
    body
}

/// Sends every node's report, from a few threads.
fn enrol_fleet(url: &str) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let url = url.to_owned();
            std::thread::spawn(move || {
                let api = Api::new(&url);
                for i in (t..NODES).step_by(4) {
                    let (status, answer) =
                        api.post_json("/api/v1/reports", FLEET_TOKEN, &node_report(i, 1));
                    assert_eq!(status, 200, "{answer}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a sender thread");
    }
}

/// The page at `url` as Chromium renders it (scripts run), and a screenshot of it when asked.
fn page(url: &str, scratch: &Path, shot: Option<&str>) -> String {
    if let (Some(name), Some(dir)) = (shot, std::env::var_os("EGRESS_MONITOR_SCREENSHOTS")) {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (scheme, rest) = url.split_once("://").unwrap();
        let status = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg("--window-size=1400,1600")
            .arg(format!(
                "--user-data-dir={}",
                scratch.join("shot-profile").display()
            ))
            .arg(format!(
                "--screenshot={}",
                dir.join(format!("{name}.png")).display()
            ))
            .arg(format!("{scheme}://operator:{ADMIN_TOKEN}@{rest}"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("chromium");
        assert!(status.success());
    }
    browse(url, ADMIN_TOKEN, scratch)
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

/// The number a tile of the overview shows.
fn tile(dom: &str, label: &str) -> String {
    let at = dom
        .find(&format!("data-count=\"{label}\""))
        .unwrap_or_else(|| panic!("no tile {label}"));
    let rest = &dom[at..];
    let start = rest.find("<b>").expect("a count") + 3;
    let end = rest[start..].find("</b>").expect("a count");
    rest[start..start + end].to_owned()
}

#[test]
fn the_console_at_ten_thousand_nodes_in_a_browser() {
    let scratch = Scratch::new("console");
    let files = ControllerFiles::new(&scratch.0);

    // No node yet: the page says how to enrol one, with this controller's address.
    let empty = Controller::start(&files, &files.sqlite(), 0, &[]);
    let dom = page(
        &format!("{}/", empty.url),
        &scratch.0,
        Some("console-empty"),
    );
    assert!(dom.contains("id=\"enrol\""), "{dom}");
    assert!(
        dom.contains(&format!(
            "egress-monitor run --hook both --controller {}",
            empty.url
        )),
        "{dom}"
    );
    drop(empty);

    let db = format!("sqlite:{}", scratch.0.join("fleet.db").display());
    let controller = Controller::start(&files, &db, 0, &[]);
    let api = Api::new(&controller.url);
    enrol_fleet(&controller.url);
    let url = &controller.url;

    // What needs attention leads: the unprotected and the unverified nodes, in colour.
    let needing = (0..NODES)
        .filter(|i| i.is_multiple_of(500) || i.is_multiple_of(700))
        .count();
    let dom = page(&format!("{url}/"), &scratch.0, Some("console-busy"));
    assert_eq!(
        tile(&dom, "nodes"),
        "10000",
        "{}",
        &dom[..dom.len().min(4000)]
    );
    assert_eq!(tile(&dom, "unprotected"), "20");
    assert_eq!(tile(&dom, "unverified"), "15");
    let attention = dom.find("id=\"attention\"").expect("an attention list");
    let chart = dom.find("id=\"chart\"").expect("a chart");
    assert!(attention < chart, "attention comes first");
    assert_eq!(
        count(&dom, "data-attention="),
        needing,
        "every node that needs someone, no other"
    );
    assert!(
        dom.contains("data-attention=\"vm-00500\"") && dom.contains("data-attention=\"vm-00700\"")
    );
    assert!(
        dom.contains("class=\"state unprotected\"") && dom.contains("class=\"state unverified\"")
    );
    assert!(dom.contains("alarm: the link cgroup-7 was removed"));
    // The chart library drew the day's violations.
    assert!(
        dom.contains("class=\"uplot"),
        "uPlot did not draw the chart"
    );
    // The fleet by group, and a page of nodes, not ten thousand.
    assert_eq!(count(&dom, "data-group=\"vmss-"), GROUPS);
    assert_eq!(count(&dom, "data-node="), 50);
    // Every node, destination and process links to its view.
    assert!(dom.contains("href=\"/nodes/vm-00500\""));
    assert!(dom.contains("href=\"/violations?process=%2Fusr%2Fbin%2Fbackup\""));

    // Learning and dry runs are a click away.
    assert!(dom.contains("id=\"suggest\" href=\"/api/v1/policy/suggestion\""));
    assert!(dom.contains("href=\"/replay\""));

    // A search: one node.
    let dom = page(&format!("{url}/nodes?q=vm-04242"), &scratch.0, None);
    assert_eq!(count(&dom, "data-node="), 1, "{dom}");
    assert!(dom.contains("data-node=\"vm-04242\""));
    // A group, paged: 1,000 nodes, ten pages of 100.
    let dom = page(
        &format!("{url}/nodes?group=vmss-c&page=2"),
        &scratch.0,
        None,
    );
    assert!(
        dom.contains("1000 nodes match, page 2 of 10"),
        "{}",
        &dom[..dom.len().min(3000)]
    );
    assert_eq!(count(&dom, "data-node=\"vm-"), 100);
    assert!(dom.contains("id=\"next\"") && dom.contains("id=\"previous\""));
    let dom = page(&format!("{url}/nodes?attention=true"), &scratch.0, None);
    assert!(dom.contains(&format!("{needing} nodes match")), "{dom}");

    // Drill-down: a node (one with alarms and violations), then its violations by process.
    let dom = page(&format!("{url}/nodes/vm-00000"), &scratch.0, None);
    assert!(dom.contains("id=\"node\" data-node=\"vm-00000\""), "{dom}");
    assert!(
        dom.contains("id=\"alarms\"") && dom.contains("link_removed"),
        "{dom}"
    );
    assert!(dom.contains("href=\"/violations?process=%2Fusr%2Fbin%2Fbackup\""));
    let dom = page(
        &format!("{url}/violations?process=%2Fusr%2Fbin%2Fbackup"),
        &scratch.0,
        None,
    );
    let shown = count(&dom, "<tr><td>");
    assert_eq!(shown, 100, "a page of the 104 backup violations");
    assert!(!dom.contains("/usr/bin/curl"), "only backup's");
    assert!(dom.contains("id=\"older\""));
    let dom = page(
        &format!("{url}/violations?node=vm-00097&process=curl"),
        &scratch.0,
        None,
    );
    assert_eq!(count(&dom, "<tr><td>"), 1, "{dom}");

    // A staged rollout to one group: a canary's new drops pause it; it is rolled back.
    let base = "[[rule]]\nname = \"mirror\"\ncidr = \"198.51.100.0/24\"\naction = \"allow\"\n";
    assert_eq!(api.put_policy(base).0, 200);
    let (status, started) = api.post_json(
        "/api/v1/rollout",
        ADMIN_TOKEN,
        &json!({"mode": "enforce", "group": "vmss-b"}),
    );
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["rollout"]["canaries"], 1000);
    // The canary runs the candidate (the fleet's v1 in enforce mode) and drops packets.
    let mut canary = node_report(1, 2);
    canary["mode"] = json!("enforce");
    canary["policy"]["fleet_version"] = json!(1);
    canary["events"] = json!([event("192.0.2.33", "backup", "dropped", 5)]);
    assert_eq!(
        api.post_json("/api/v1/reports", FLEET_TOKEN, &canary).0,
        200
    );
    let dom = page(&format!("{url}/"), &scratch.0, Some("console-rollout"));
    assert!(
        dom.contains("class=\"rollout paused\""),
        "{}",
        &dom[..dom.len().min(3000)]
    );
    assert!(dom.contains("canary vm-00001 reported 5 new dropped packets"));
    let (status, _) = api.post_json("/api/v1/rollout/rollback", ADMIN_TOKEN, &json!({}));
    assert_eq!(status, 200);
    let dom = page(&format!("{url}/"), &scratch.0, None);
    assert!(!dom.contains("id=\"rollout-stage\""));
    for stage in ["rollout-start", "rollout-pause", "rollout-rollback"] {
        assert!(dom.contains(&format!("data-change=\"{stage}\"")), "{stage}");
    }
}
