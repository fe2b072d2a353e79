//! From audit to enforce on one node: a workload observed, a policy suggested from what it
//! did, the suggestion replayed against the record (its counts are the record's), then
//! enforced — the workload still runs, a new destination is blocked.

use std::{net::IpAddr, process::Command};

use egress_monitor_tests::{
    daemon_binary,
    netns::{INTERNET_V4, INTERNET_V6},
};
use serde_json::Value;

use crate::{Node, event_lines};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(daemon_binary()).args(args).output().unwrap()
}

#[test]
fn a_suggested_policy_lets_the_recorded_workload_run_and_blocks_a_new_destination() {
    let node = Node::new("learn");
    let events = node.events();
    let events_path = events.to_str().unwrap();

    // Observe: the workload talks to one internet address, 3 + 4 datagrams.
    let observing = node.daemon(&["--node-id", "vm-learn"]);
    assert_eq!(node.send(INTERNET_V4.into(), 3), 0, "observe mode");
    assert_eq!(node.send(INTERNET_V4.into(), 4), 0, "observe mode");
    let (code, _) = observing.stop();
    assert_eq!(code, 0);
    let recorded = event_lines(&events, 2);
    let packets: u64 = recorded
        .iter()
        .filter(|line| line["dst"] == INTERNET_V4.to_string())
        .map(|line| line["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(packets, 7, "{recorded:#?}");

    // Learn.
    let suggested = run(&[
        "policy",
        "suggest",
        "--events",
        events_path,
        "--mode",
        "enforce",
    ]);
    assert!(
        suggested.status.success(),
        "{}",
        String::from_utf8_lossy(&suggested.stderr)
    );
    let text = String::from_utf8(suggested.stdout).unwrap();
    assert!(text.contains("cidr = \"203.0.113.1/32\""), "{text}");
    assert!(text.contains("mode = \"enforce\""), "{text}");
    assert!(
        text.contains("em-testclient"),
        "the evidence names the process: {text}"
    );
    assert!(text.contains("nodes: 1 (vm-learn)"), "{text}");
    let policy = node.policy_file("suggested.toml", &text);
    let checked = run(&["policy", "check", &policy]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );

    // Dry runs: the suggestion blocks none of the record; the policy in force all of it.
    let replay = |file: &str| -> Value {
        let output = run(&["policy", "replay", file, "--events", events_path, "--json"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let with_suggestion = replay(&policy);
    assert_eq!(
        with_suggestion["blocked"]["packets"], 0,
        "{with_suggestion:#}"
    );
    assert_eq!(
        with_suggestion["allowed"]["packets"], 7,
        "{with_suggestion:#}"
    );
    assert_eq!(
        with_suggestion["allowed"]["flows"],
        recorded.len(),
        "{with_suggestion:#}"
    );
    let strict = node.policy_file("strict.toml", "mode = \"enforce\"\n");
    let as_now = replay(&strict);
    assert_eq!(as_now["blocked"]["packets"], 7, "{as_now:#}");
    assert_eq!(as_now["blocked"]["nodes"], serde_json::json!(["vm-learn"]));
    assert_eq!(
        as_now["blocked"]["destinations"][INTERNET_V4.to_string()],
        7,
        "{as_now:#}"
    );
    let gate = run(&[
        "policy",
        "replay",
        &strict,
        "--events",
        events_path,
        "--fail-if-blocking",
    ]);
    assert_eq!(gate.status.code(), Some(1));
    let text = String::from_utf8_lossy(&gate.stdout);
    let expected = format!(
        "would block {} flows (7 packets) on 1 node\n",
        recorded.len()
    );
    assert!(text.contains(&expected), "{text}");

    // Enforce the suggestion: the workload runs, a destination it never used does not.
    let enforcing = node.daemon(&["--policy", &policy]);
    assert_eq!(
        node.send(INTERNET_V4.into(), 3),
        0,
        "the recorded workload still runs"
    );
    assert_eq!(
        node.topology.peers.udp_received(IpAddr::V4(INTERNET_V4)),
        3 + 4 + 3
    );
    assert_eq!(
        node.send(INTERNET_V6.into(), 2),
        2,
        "a new destination is blocked"
    );
    assert_eq!(node.topology.peers.udp_received(IpAddr::V6(INTERNET_V6)), 0);
    let (code, _) = enforcing.stop();
    assert_eq!(code, 0);
}
