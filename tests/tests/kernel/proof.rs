//! Continuous proof: a node checks itself on a schedule and reports the result; the controller
//! calls it verified only while that holds. A link removed while the daemon runs raises an
//! alarm at once, in the events file and at the controller; one removed while no daemon runs
//! is found and reported when the daemon returns.

use std::time::{Duration, Instant};

use egress_monitor_tests::controller::{ADMIN_TOKEN, Api, Controller, ControllerFiles};
use serde_json::Value;

use crate::{Node, Scratch};

/// The alarm lines of the events file once there are at least `count` (bounded wait).
fn alarms(events: &std::path::Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found: Vec<Value> = std::fs::read_to_string(events)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["kind"] == "alarm")
            .collect();
        if found.len() >= count || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's link pin whose name starts with `prefix` (`cgroup-`: the egress program's,
/// `incgroup-`: the DNS answers').
fn link_pin(node: &Node, prefix: &str) -> std::path::PathBuf {
    let links = node.bpffs.layout().links();
    std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(prefix)
        })
        .unwrap_or_else(|| panic!("no link named {prefix}* in {}", links.display()))
}

fn node_row(api: &Api, id: &str) -> Value {
    let (status, nodes) = api.get("/api/v1/nodes", ADMIN_TOKEN);
    assert_eq!(status, 200, "{nodes}");
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_removed_link_raises_an_alarm_at_once_and_after_a_restart() {
    let node = Node::new("proof");
    let scratch = Scratch::new("proof-controller");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    let spool = node.scratch.0.join("spool");
    let token = files.dir.join("fleet.token");
    let args = [
        "--controller",
        controller.url.as_str(),
        "--token-file",
        token.to_str().unwrap(),
        "--node-id",
        "vm-proof",
        "--report-interval",
        "1",
        "--check-interval",
        "10",
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    let daemon = node.daemon(&args);
    // Proven: the first check ran at start and passed.
    let verified = api.wait("/api/v1/nodes", Duration::from_secs(15), |nodes| {
        nodes.as_array().is_some_and(|all| {
            all.iter()
                .any(|n| n["node_id"] == "vm-proof" && n["verified"] == true)
        })
    });
    let row = node_row(&api, "vm-proof");
    assert_eq!(row["proof"]["passed"], true, "{verified:#}");
    assert_eq!(row["proof"]["interval_s"], 10);
    assert_eq!(
        row["proof"]["mode_source"], "the default (observe)",
        "{row:#}"
    );
    assert!(alarms(&node.events(), 0).is_empty());

    // Tampering while it runs: the egress link's pin removed, which detaches it.
    std::fs::remove_file(link_pin(&node, "cgroup-")).unwrap();
    let raised = alarms(&node.events(), 2);
    let kinds: Vec<&str> = raised
        .iter()
        .map(|a| a["alarm"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["link_removed", "check_failed"], "{raised:#?}");
    assert!(
        raised[0]["message"]
            .as_str()
            .unwrap()
            .contains("was removed")
    );
    assert_eq!(raised[0]["node"], "vm-proof");
    api.wait("/api/v1/nodes", Duration::from_secs(10), |_| {
        let row = node_row(&api, "vm-proof");
        row["verified"] == false
            && row["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_str().unwrap().starts_with("alarm: the link"))
    });
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);

    // Tampering while no daemon runs: the next daemon finds it before attaching again.
    std::fs::remove_file(link_pin(&node, "incgroup-")).unwrap();
    let daemon = node.daemon(&args);
    let raised = alarms(&node.events(), 3);
    let found = raised
        .iter()
        .find(|a| {
            a["alarm"] == "link_removed"
                && a["message"]
                    .as_str()
                    .unwrap()
                    .ends_with("(while no daemon ran)")
        })
        .unwrap_or_else(|| panic!("{raised:#?}"));
    assert!(
        found["link"].as_str().unwrap().starts_with("incgroup-"),
        "{found}"
    );
    // The daemon attached what was missing again; the alarm reached the controller.
    api.wait("/api/v1/nodes", Duration::from_secs(15), |_| {
        node_row(&api, "vm-proof")["proof"]["alarms"]
            .as_array()
            .is_some_and(|all| {
                all.iter().any(|a| {
                    a["message"]
                        .as_str()
                        .unwrap_or("")
                        .ends_with("(while no daemon ran)")
                })
            })
    });
    let row = node_row(&api, "vm-proof");
    assert_eq!(row["proof"]["passed"], true, "re-attached: {row:#}");
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
}
