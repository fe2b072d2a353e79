//! The `egress-monitor` binary end to end: attach, events to a file as they happen, clean stop.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use egress_monitor_tests::{
    bpffs::BpfFs,
    cgroup::Cgroup,
    netns::{INTERNET_V4, INTERNET_V6, LAB_V4, NODE_V4, PRIVATE_V4, Topology, UDP_PORT},
    require_root, sweep_stale,
};

use crate::{
    Daemon, Scratch, client, egress_monitor, event_lines, free_port, sample, scrape, status_json,
    stderr, stdout,
};

/// Observe mode on the cgroup hook: traffic passes; the flow's first denied datagram is a JSON
/// line in the events file while the daemon runs, the other two are counted in the kernel and
/// reported by the update written when SIGTERM stops the daemon (exit 0, a summary).
#[test]
fn observe_mode_reports_the_first_denied_packet_at_once_and_the_rest_as_an_update() {
    require_root();
    sweep_stale();
    let topology = Topology::new().unwrap();
    let cgroup = Cgroup::new().unwrap();
    let scratch = Scratch::new("observe");
    let events = scratch.0.join("events.jsonl");
    let bpffs = BpfFs::new().unwrap();
    let pin_path = bpffs.pin_path();
    let cgroup_arg = cgroup.path.to_str().unwrap();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        None,
        &[
            "--cgroup",
            cgroup_arg,
            "--events",
            events.to_str().unwrap(),
            "--pin-path",
            pin_path.to_str().unwrap(),
            "--metrics",
            &metrics,
        ],
    );

    let started = SystemTime::now();
    let sent = client(&topology, Some(&cgroup))
        .udp(INTERNET_V4.into(), UDP_PORT, 3, 10, false)
        .unwrap();
    assert_eq!(sent.ok, 3, "observe mode drops nothing");
    client(&topology, Some(&cgroup))
        .udp(PRIVATE_V4.into(), UDP_PORT, 3, 10, false)
        .unwrap();
    assert_eq!(topology.peers.udp_received(INTERNET_V4.into()), 3);

    // Written while the daemon runs, not at exit.
    let lines = event_lines(&events, 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let first = &lines[0];
    assert_eq!(first["kind"], "first");
    assert_eq!(
        (first["packets"].as_u64(), first["bytes"].as_u64()),
        (Some(1), Some(38))
    );
    assert_eq!(first["len"], 38);
    for line in &lines {
        let ts = humantime::parse_rfc3339(line["ts"].as_str().unwrap()).expect("RFC 3339 ts");
        let age = ts
            .duration_since(started - Duration::from_secs(5))
            .expect("recent ts");
        assert!(age < Duration::from_secs(60), "ts {ts:?}");
        assert_eq!(line["hook"], "cgroup");
        assert_eq!(line["action"], "observed");
        assert_eq!(line["proto"], "udp");
        assert_eq!(line["src"], NODE_V4.to_string());
        assert_eq!(line["dst"], INTERNET_V4.to_string());
        assert_eq!(line["src_port"], u64::from(sent.src_port));
        assert_eq!(line["dst_port"], u64::from(UDP_PORT));
        assert_eq!(line["rule"], "default");
        assert_eq!(line["uid"], 0);
        assert_eq!(line["cgroup_id"], cgroup.id());
        assert_eq!(
            line["cgroup"],
            cgroup.path.to_str().unwrap(),
            "resolved from the id"
        );
        assert_eq!(line["pid"], sent.pid);
        assert_eq!(line["comm"], "em-testclient");
        assert!(line.get("ifindex").is_none());
    }

    // /metrics says what the kernel counted, as status does.
    let scraped = scrape(port);
    let status = status_json(&pin_path);
    let cgroup_counters = &status["counters"]["cgroup"];
    for (labels, outcome) in [
        ("verdict=\"denied\",action=\"observed\"", "denied_observed"),
        ("verdict=\"allowed\",action=\"pass\"", "allowed"),
    ] {
        for (metric, field) in [("packets", "packets"), ("bytes", "bytes")] {
            let series = format!("egress_monitor_{metric}_total{{hook=\"cgroup\",{labels}}}");
            assert_eq!(
                sample(&scraped, &series),
                cgroup_counters[outcome][field].as_f64().unwrap(),
                "{series}"
            );
        }
    }
    assert_eq!(
        sample(
            &scraped,
            "egress_monitor_packets_total{hook=\"cgroup\",verdict=\"denied\",action=\"observed\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &scraped,
            "egress_monitor_rule_hits_total{rule=\"private\",cidr=\"10.0.0.0/8\"}"
        ),
        3.0
    );
    assert_eq!(sample(&scraped, "egress_monitor_events_written_total"), 1.0);
    assert_eq!(
        sample(&scraped, "egress_monitor_packets_aggregated_total"),
        2.0
    );
    assert_eq!(sample(&scraped, "egress_monitor_flow_updates_total"), 0.0);
    assert_eq!(sample(&scraped, "egress_monitor_events_lost_total"), 0.0);
    assert_eq!(sample(&scraped, "egress_monitor_enforcing"), 0.0);
    assert_eq!(sample(&scraped, "egress_monitor_up"), 1.0);
    let version = status["policy_version"].as_str().unwrap();
    assert_eq!(
        sample(
            &scraped,
            &format!("egress_monitor_policy_info{{version=\"{version}\"}}")
        ),
        1.0
    );

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let summary = log
        .iter()
        .find(|l| l.contains("stopping:"))
        .expect("a summary line");
    assert!(
        summary.contains("cgroup: 3 allowed, 3 denied-observed, 0 denied-dropped"),
        "{summary}"
    );
    // At stop, the flow's other two datagrams, as one update of the same flow.
    let lines = event_lines(&events, 2);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (first, update) = (&lines[0], &lines[1]);
    assert_eq!(update["kind"], "update");
    assert_eq!(
        (update["packets"].as_u64(), update["bytes"].as_u64()),
        (Some(2), Some(76))
    );
    assert!(update.get("len").is_none());
    assert_eq!(update["first_ts"], first["ts"]);
    for field in [
        "hook", "action", "src", "dst", "src_port", "dst_port", "pid", "comm", "cgroup",
    ] {
        assert_eq!(update[field], first[field], "{field}");
    }
}

/// `--kernel-log` makes the kernel report, as debug log records, the frames it could not judge;
/// a restart without it turns that off live on the adopted programs.
#[test]
fn kernel_log_is_off_unless_asked_and_switches_live() {
    require_root();
    sweep_stale();
    let topology = Topology::new().unwrap();
    let bpffs = BpfFs::new().unwrap();
    let pin = bpffs.pin_path().to_str().unwrap().to_owned();
    let args = [
        "--hook",
        "tc",
        "--iface",
        "veth-n",
        "--pin-path",
        &pin,
        "--events",
        "/dev/null",
    ];
    let frames = client(&topology, None);
    let mut with_log: Vec<&str> = args.to_vec();
    with_log.push("--kernel-log");
    let mut daemon = Daemon::start(Some(&topology.node.name), &with_log);
    frames.frame("veth-n", 0x88b5, 1, 0).unwrap();
    daemon.wait_for(
        "tc egress: no readable IP destination, denied",
        Duration::from_secs(10),
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");

    let daemon = Daemon::start(Some(&topology.node.name), &args);
    frames.frame("veth-n", 0x88b5, 3, 0).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    assert!(
        log.iter()
            .all(|l| !l.contains("no readable IP destination")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("adopted")),
        "the same programs, switched live: {log:#?}"
    );
}

/// A --rule-capacity below the minimum is raised, and the log says so; `status` says where
/// the mode came from.
#[test]
fn a_small_rule_capacity_is_raised_and_said() {
    let node = crate::Node::new("capacity");
    let daemon = node.daemon(&["--rule-capacity", "100", "--mode", "observe"]);
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    assert!(
        log.iter().any(|l| l
            .contains("--rule-capacity 100 is below the minimum: new maps get 4096 rule slots")),
        "{log:#?}"
    );
    let status = crate::status_json(&node.bpffs.pin_path());
    assert_eq!(status["mode_source"], "--mode", "{status:#}");
}

/// Enforce mode on the TC hook of the node's interface, with a policy file: internet and the
/// denied lab subnet are dropped and named in events; after SIGTERM the hook is gone.
#[test]
fn enforce_mode_on_tc_drops_and_names_the_rule() {
    require_root();
    sweep_stale();
    let topology = Topology::new().unwrap();
    let bpffs = BpfFs::new().unwrap();
    let pin_path = bpffs.pin_path();
    let scratch = Scratch::new("enforce");
    let events = scratch.0.join("events.jsonl");
    let policy = scratch.0.join("policy.toml");
    std::fs::write(
        &policy,
        "mode = \"enforce\"\n\n[[rule]]\nname = \"lab\"\ncidr = \"10.78.0.0/24\"\naction = \"deny\"\n",
    )
    .unwrap();
    let daemon = Daemon::start(
        Some(&topology.node.name),
        &[
            "--hook",
            "tc",
            "--iface",
            "veth-n",
            "--policy",
            policy.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--pin-path",
            pin_path.to_str().unwrap(),
        ],
    );
    let node = client(&topology, None);
    for dst in [
        IpAddr::V4(INTERNET_V4),
        IpAddr::V6(INTERNET_V6),
        IpAddr::V4(LAB_V4),
    ] {
        node.udp(dst, UDP_PORT, 2, 10, false).unwrap();
        assert_eq!(topology.peers.udp_received(dst), 0, "{dst} must be dropped");
    }
    node.udp(PRIVATE_V4.into(), UDP_PORT, 2, 10, false).unwrap();
    assert_eq!(topology.peers.udp_received(PRIVATE_V4.into()), 2);

    // One flow per destination (each client run is a socket): a first event each.
    let lines = event_lines(&events, 3);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines.iter().all(|l| l["kind"] == "first"), "{lines:#?}");
    let ifindex = topology.node_ifindex().unwrap();
    for line in &lines {
        assert_eq!(line["hook"], "tc");
        assert_eq!(line["action"], "dropped");
        assert_eq!(line["ifindex"], ifindex);
        assert!(line.get("uid").is_none() && line.get("cgroup_id").is_none());
        let expected_rule = if line["dst"] == LAB_V4.to_string() {
            "lab"
        } else {
            "default"
        };
        assert_eq!(line["rule"], expected_rule, "{line}");
    }

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    // Each flow's second datagram, reported at stop.
    let lines = event_lines(&events, 6);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert!(
        lines[3..]
            .iter()
            .all(|l| l["kind"] == "update" && l["packets"] == 1 && l["ifindex"] == ifindex),
        "{lines:#?}"
    );
    // The daemon is gone; enforcement is not.
    node.udp(INTERNET_V4.into(), UDP_PORT, 2, 10, false)
        .unwrap();
    assert_eq!(
        topology.peers.udp_received(INTERNET_V4.into()),
        0,
        "still dropped"
    );

    // `detach` is what removes it, and it says what it removed.
    let output = egress_monitor(&["detach", "--pin-path", pin_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("detached tc-"), "{text}");
    assert!(
        text.contains(
            "removed programs cgroup_egress, cgroup_ingress, raw_guard, sock_create, tc_egress"
        ),
        "{text}"
    );
    assert!(
        text.contains("POLICY_V4") && text.contains("EVENTS"),
        "{text}"
    );
    assert!(!pin_path.exists(), "every pin is gone");
    node.udp(INTERNET_V4.into(), UDP_PORT, 2, 10, false)
        .unwrap();
    assert_eq!(
        topology.peers.udp_received(INTERNET_V4.into()),
        2,
        "flows after detach"
    );
}
