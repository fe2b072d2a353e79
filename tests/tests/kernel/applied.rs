//! An applied policy stays applied: `policy apply FILE` makes FILE the node's policy source, so
//! neither the daemon's SIGHUP nor its restart puts its own `--policy` and `--mode` back; an
//! unreadable or invalid recorded source never falls back to a weaker policy; a node that
//! follows a fleet policy refuses a local apply.

use std::{
    net::IpAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use egress_monitor::datapath::pins::PinLayout;
use egress_monitor_tests::{daemon_binary, logged::Logged, netns::INTERNET_V4};

use crate::{Daemon, Node, egress_monitor, status_json, stderr, stdout};

/// A policy in observe mode with nothing of its own: the daemon's `--policy`.
const OBSERVE: &str = "mode = \"observe\"\n";

/// An enforce policy that also names the documentation range it denies.
const ENFORCE: &str = "mode = \"enforce\"\n[[rule]]\nname = \"doc-net\"\ncidr = \"203.0.113.0/24\"\naction = \"deny\"\n";

fn mode(node: &Node) -> serde_json::Value {
    status_json(&node.bpffs.pin_path())["mode"].clone()
}

/// `policy apply FILE` on the node; asserts it succeeded and returns what it printed.
fn apply(node: &Node, file: &str) -> String {
    let output = egress_monitor(&["policy", "apply", file, "--pin-path", &node.pin()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    stdout(&output)
}

/// SIGHUP, then waits (bounded) for the reload's outcome line; returns it.
fn reload(daemon: &mut Daemon, outcome: &str) -> String {
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("SIGHUP: re-reading the policy", Duration::from_secs(10));
    daemon.wait_for(outcome, Duration::from_secs(10))
}

/// The path `policy apply` records: canonical.
fn canonical(file: &str) -> String {
    std::fs::canonicalize(file)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// A daemon started with `--policy A --mode observe`; `policy apply B` switches the node to
/// enforce; SIGHUP rebuilds from B, not from A and `--mode observe`: the node stays in enforce
/// mode, a datagram to a documentation address is refused, and the log says which source it
/// followed and which arguments it left unused.
#[test]
fn sighup_keeps_the_policy_that_policy_apply_applied() {
    let node = Node::new("applied-hup");
    let internet = IpAddr::V4(INTERNET_V4);
    let a = node.policy_file("a.toml", OBSERVE);
    let b = node.policy_file("b.toml", ENFORCE);
    let mut daemon = node.daemon(&["--policy", &a, "--mode", "observe"]);
    assert_eq!(mode(&node), "observe");
    assert_eq!(node.send(internet, 2), 0, "observe mode drops nothing");
    assert_eq!(
        node.topology.peers.udp_received(internet),
        2,
        "observe: they arrive"
    );

    let printed = apply(&node, &b);
    assert_eq!(mode(&node), "enforce");

    let outcome = reload(&mut daemon, " applied (");
    assert!(outcome.contains("(enforce mode"), "{outcome}");
    assert_eq!(mode(&node), "enforce", "the reload kept the applied policy");
    assert_eq!(node.send(internet, 2), 2, "denied and dropped: EPERM");
    assert_eq!(
        node.topology.peers.udp_received(internet),
        0,
        "nothing through"
    );
    let notice = format!(
        "policy source is {} (set by `policy apply` at ",
        canonical(&b)
    );
    let line = daemon
        .log
        .iter()
        .find(|l| l.contains(&notice))
        .unwrap_or_else(|| panic!("no `{notice}` in {:#?}", daemon.log))
        .clone();
    assert!(
        line.contains(&format!("not --policy {}", canonical(&a)))
            && line.contains(&format!(
                "unused: --policy {}, --mode observe",
                canonical(&a)
            )),
        "{line}"
    );
    assert!(
        printed.contains(&format!("policy source: {} (", canonical(&b))),
        "{printed}"
    );

    // The recorded file made invalid: the reload keeps the live policy, never A's observe.
    std::fs::write(&b, "mode = \"enforce\"\nbogus = 1\n").unwrap();
    reload(&mut daemon, "the new policy is invalid; the live one stays");
    assert_eq!(mode(&node), "enforce");
    // The recorded file gone: the same.
    std::fs::remove_file(&b).unwrap();
    reload(&mut daemon, "the new policy is invalid; the live one stays");
    assert_eq!(mode(&node), "enforce");
    assert_eq!(node.send(internet, 2), 2, "still enforcing");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}

/// Runs `egress-monitor run ARGS` until it exits (bounded: a daemon that starts instead is
/// killed); returns its exit code and log.
fn run_until_exit(args: &[&str], limit: Duration) -> (Option<i32>, Vec<String>) {
    let mut process = Logged::spawn(
        Command::new(daemon_binary()).arg("run").args(args),
        "egress-monitor run",
    );
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = process.child.try_wait().unwrap() {
            process.drain(Duration::from_millis(200));
            return (status.code(), std::mem::take(&mut process.log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    process.drain(Duration::from_millis(200));
    (None, std::mem::take(&mut process.log))
}

/// A daemon restarted with its old `--policy A --mode observe` after `policy apply B` keeps
/// B, and warns that it does; a recorded source that has become invalid stops the start with
/// the config-error exit code (2), naming the recorded file, and the pinned policy stays.
#[test]
fn a_restart_keeps_the_applied_source_and_an_invalid_one_refuses_to_start() {
    let node = Node::new("applied-restart");
    let internet = IpAddr::V4(INTERNET_V4);
    let a = node.policy_file("a.toml", OBSERVE);
    let b = node.policy_file("b.toml", ENFORCE);
    let daemon = node.daemon(&["--policy", &a, "--mode", "observe"]);
    apply(&node, &b);
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");

    let daemon = node.daemon(&["--policy", &a, "--mode", "observe"]);
    assert_eq!(
        mode(&node),
        "enforce",
        "the restart kept the applied policy"
    );
    assert_eq!(node.send(internet, 2), 2, "denied and dropped: EPERM");
    assert!(
        daemon.log.iter().any(|l| l.contains(" WARN ")
            && l.contains(&format!("policy source is {}", canonical(&b)))
            && l.contains(&format!("not --policy {}", canonical(&a)))),
        "{:#?}",
        daemon.log
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");

    std::fs::write(&b, "mode = \"enforce\"\nbogus = 1\n").unwrap();
    let pin = node.pin();
    let events = node.events();
    let (code, log) = run_until_exit(
        &[
            "--cgroup",
            node.cgroup.path.to_str().unwrap(),
            "--pin-path",
            &pin,
            "--events",
            events.to_str().unwrap(),
            "--policy",
            &a,
            "--mode",
            "observe",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "{log:#?}");
    let text = log.join("\n");
    assert!(
        text.contains("the policy source recorded by `policy apply` at")
            && text.contains(&canonical(&b))
            && text.contains("b.toml:2:1"),
        "{text}"
    );
    assert_eq!(mode(&node), "enforce", "the pinned policy stays");
    assert_eq!(node.send(internet, 2), 2, "still enforcing");
}

/// A node whose daemon follows a fleet policy refuses a local `policy apply`, naming the fleet
/// policy's version, and changes nothing.
#[test]
fn policy_apply_is_refused_on_a_node_that_follows_a_fleet_policy() {
    let node = Node::new("applied-fleet");
    let daemon = node.daemon(&["--mode", "enforce"]);
    let before = status_json(&node.bpffs.pin_path());
    // `status` shows the fast lane, on, its tables holding the default groups' allows.
    assert_eq!(before["fast_lane"]["on"], true, "{before:#}");
    assert!(
        before["fast_lane"]["v4"]["allow_entries"].as_u64() > Some(0)
            && before["fast_lane"]["v6"]["allow_entries"].as_u64() > Some(0),
        "{before:#}"
    );
    // What the reporter of a daemon run with --controller writes once the fleet's policy v7
    // is applied (the fleet tests drive a real controller; here only the refusal is at stake).
    let run_dir = PinLayout::new(node.pin()).run_dir();
    std::fs::write(
        run_dir.join("reporter.json"),
        serde_json::json!({
            "controller": "https://controller.test:8443",
            "node_id": "n1",
            "pending": 0,
            "delivered": 0,
            "dropped_reports": 0,
            "last_delivery": null,
            "failing_since": null,
            "last_error": null,
            "fleet_policy_version": 7,
            "fleet_mode": null,
            "fleet_error": null,
        })
        .to_string(),
    )
    .unwrap();
    let observe = node.policy_file("observe.toml", OBSERVE);
    let output = egress_monitor(&["policy", "apply", &observe, "--pin-path", &node.pin()]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(
        stderr(&output).contains(
            "this node follows fleet policy v7 from the controller https://controller.test:8443"
        ),
        "{}",
        stderr(&output)
    );
    let after = status_json(&node.bpffs.pin_path());
    assert_eq!(after["mode"], "enforce");
    assert_eq!(after["policy_version"], before["policy_version"]);
    assert!(!Path::new(&run_dir.join("policy-source.json")).exists());
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}
