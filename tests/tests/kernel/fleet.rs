//! Two nodes and a controller: real daemons, each on its own namespaces, cgroup and bpf
//! filesystem, report to a real controller on loopback. A violation on one node shows in the
//! API and on the page; a fleet policy reaches both; the lockdown turns both to enforce; a
//! controller killed while traffic goes on loses nothing and stores nothing twice.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use egress_monitor_tests::{
    azure::{AttestingImds, TestAzure},
    controller::{ADMIN_TOKEN, Api, Controller, ControllerFiles, FLEET_TOKEN, browse, report},
    netns::INTERNET_V4,
};
use serde_json::{Value, json};

use crate::{Daemon, Node, Scratch, client, free_port, sample, scrape, status_json};

/// A daemon on `node` reporting every second as `id`, its spool in the node's scratch directory.
fn reporting_daemon(
    node: &Node,
    id: &str,
    controller: &str,
    files: &ControllerFiles,
    extra: &[&str],
) -> Daemon {
    let spool = node.scratch.0.join("spool");
    let token = files.dir.join("fleet.token");
    let mut args = vec![
        "--controller",
        controller,
        "--token-file",
        token.to_str().unwrap(),
        "--node-id",
        id,
        "--report-interval",
        "1",
        "--flow-interval",
        "1",
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    node.daemon(&args)
}

fn node<'a>(nodes: &'a Value, id: &str) -> &'a Value {
    nodes
        .as_array()
        .and_then(|all| all.iter().find(|n| n["node_id"] == id))
        .unwrap_or(&Value::Null)
}

/// (destination, kind, packets) → how many events, from a list of events.
fn tally<'a>(events: impl Iterator<Item = &'a Value>) -> BTreeMap<(String, String, u64), u32> {
    let mut out = BTreeMap::new();
    for event in events {
        let key = (
            event["dst"].as_str().unwrap_or("").to_owned(),
            event["kind"].as_str().unwrap().to_owned(),
            event["packets"].as_u64().unwrap(),
        );
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

#[test]
fn two_nodes_and_a_controller() {
    let a = Node::new("fleet-a");
    let b = Node::new("fleet-b");
    let scratch = Scratch::new("fleet-controller");
    let files = ControllerFiles::new(&scratch.0);
    let db = files.sqlite();
    let controller = Controller::start(&files, &db, 0, &[]);
    let port = controller.port;
    let url = controller.url.clone();
    let api = Api::new(&url);
    let daemon_a = reporting_daemon(&a, "node-a", &url, &files, &["--node-group", "web"]);
    let daemon_b = reporting_daemon(&b, "node-b", &url, &files, &[]);
    let wait = Duration::from_secs(20);

    // Both register and observe; node A in its group.
    api.wait("/api/v1/nodes", wait, |nodes| {
        ["node-a", "node-b"]
            .iter()
            .all(|id| node(nodes, id)["state"] == "observing")
    });
    let (_, web) = api.get("/api/v1/nodes?group=web", ADMIN_TOKEN);
    let ids: Vec<&str> = web
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(ids, ["node-a"], "{web:#}");

    // A violation on node A: in the API, with the process that sent it (the executable is
    // named only while the process lives; this one is gone by then), and not on node B.
    assert_eq!(
        a.send(IpAddr::V4(INTERNET_V4), 3),
        0,
        "observe mode drops nothing"
    );
    let found = api.wait("/api/v1/violations?node=node-a", wait, |v| {
        v.as_array()
            .is_some_and(|v| v.iter().any(|e| e["kind"] == "first"))
    });
    let first = found
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "first")
        .unwrap();
    assert_eq!(first["comm"], "em-testclient");
    assert_eq!(first["dst"], INTERNET_V4.to_string());
    assert_eq!(first["action"], "observed");
    assert!(first["pid"].as_u64().is_some(), "{first:#}");
    let (_, on_b) = api.get("/api/v1/violations?node=node-b", ADMIN_TOKEN);
    assert_eq!(on_b, json!([]));
    // And on the page, as a browser shows it.
    let dom = browse(&format!("{url}/"), ADMIN_TOKEN, &scratch.0);
    for needle in [
        "data-node=\"node-a\"",
        "data-node=\"node-b\"",
        &format!("{INTERNET_V4}:7001"),
        "em-testclient",
    ] {
        assert!(dom.contains(needle), "the page lacks `{needle}`:\n{dom}");
    }

    // A fleet policy reaches both nodes, and is live in their kernels.
    let policy = "[[rule]]\nname = \"mirror\"\ncidr = \"203.0.113.0/24\"\naction = \"allow\"\n";
    let (status, fleet) = api.put_policy(policy);
    assert_eq!(status, 200, "{fleet}");
    let version = fleet["version"].clone();
    api.wait("/api/v1/nodes", wait, |nodes| {
        ["node-a", "node-b"].iter().all(|id| {
            let n = node(nodes, id);
            n["fleet_version"] == version && n["converged"] == true && n["state"] == "observing"
        })
    });
    assert_eq!(b.send(IpAddr::V4(INTERNET_V4), 4), 0);
    let status = status_json(&b.bpffs.pin_path());
    let mirror = status["rule_hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "mirror")
        .unwrap_or_else(|| panic!("node B does not run the fleet policy: {status:#}"));
    assert!(mirror["hits"].as_u64().unwrap() >= 4, "{mirror}");

    // The lockdown: one call, both nodes enforce.
    let (status, fleet) = api.put_json("/api/v1/mode", ADMIN_TOKEN, &json!({"mode": "enforce"}));
    assert_eq!(status, 200, "{fleet}");
    api.wait("/api/v1/nodes", wait, |nodes| {
        ["node-a", "node-b"]
            .iter()
            .all(|id| node(nodes, id)["state"] == "enforced")
    });
    for n in [&a, &b] {
        assert_eq!(
            n.send(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)), 2),
            2,
            "dropped"
        );
        assert_eq!(status_json(&n.bpffs.pin_path())["mode"], "enforce");
    }

    // The controller dies while node A keeps sending; it comes back on the same database.
    let sender = {
        let client = client(&a.topology, Some(&a.cgroup));
        std::thread::spawn(move || {
            let mut refused = 0;
            for i in 0..40u8 {
                refused += client
                    .udp(
                        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20 + i)),
                        7001,
                        1,
                        10,
                        false,
                    )
                    .unwrap()
                    .eperm;
                std::thread::sleep(Duration::from_millis(100));
            }
            refused
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    controller.kill();
    std::thread::sleep(Duration::from_secs(3));
    let controller = Controller::start(&files, &db, port, &[]);
    assert_eq!(sender.join().unwrap(), 40);
    std::thread::sleep(Duration::from_millis(1500));
    // The daemons stop: the last flows are swept and their reports delivered.
    let (code_a, log_a) = daemon_a.stop();
    let (code_b, _) = daemon_b.stop();
    assert_eq!((code_a, code_b), (0, 0), "{log_a:#?}");
    assert!(
        log_a
            .iter()
            .any(|l| l.contains("reports wait in the spool")),
        "node A never noticed the controller was gone: {log_a:#?}"
    );

    // Every event node A wrote, the controller has exactly once.
    let written: Vec<Value> = std::fs::read_to_string(a.events())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| matches!(e["kind"].as_str(), Some("first" | "update" | "packet")))
        .collect();
    let (_, stored) = api.get("/api/v1/violations?node=node-a&limit=1000", ADMIN_TOKEN);
    let stored = stored.as_array().unwrap();
    let during_outage = stored
        .iter()
        .filter(|v| v["dst"].as_str().unwrap().starts_with("198.51.100."))
        .count();
    assert!(
        during_outage >= 40,
        "{during_outage} violations from the outage"
    );
    assert_eq!(
        tally(stored.iter()),
        tally(written.iter()),
        "node A's events and the controller's differ"
    );
    let nodes = api.get("/api/v1/nodes", ADMIN_TOKEN).1;
    let a_row = node(&nodes, "node-a");
    assert_eq!(a_row["events"].as_u64().unwrap() as usize, written.len());
    assert_eq!(a_row["health"]["spool_dropped_reports"], 0);
    drop(controller);
}

/// A controller that stays away longer than the spool holds: the oldest reports go, and the
/// node says how many events went with them. Stored and dropped add up to every event written.
#[test]
fn a_full_spool_drops_the_oldest_and_says_so() {
    let a = Node::new("spool-full");
    let scratch = Scratch::new("spool-controller");
    let files = ControllerFiles::new(&scratch.0);
    let port = egress_monitor_tests::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut daemon = reporting_daemon(
        &a,
        "node-s",
        &url,
        &files,
        &["--metrics", &metrics, "--spool-max-mb", "1"],
    );
    // 4,000 new flows (to 198.51.100.1, ports 1024 on), each an event of about 450 bytes in a
    // report: more than 1 MiB.
    let sent = client(&a.topology, Some(&a.cgroup))
        .udp_spray(Ipv4Addr::new(198, 51, 100, 77), 4_000, 10)
        .unwrap();
    assert_eq!(sent.ok, 4_000);
    daemon.wait_for("the spool is full", Duration::from_secs(20));
    // `status` says the link fails, and why: once the reporter has published what it logged
    // (it does after sealing every report, and a first delivery may still be under way).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let link = loop {
        let link = status_json(&a.bpffs.pin_path())["controller"].clone();
        if link["failing_since"].is_string() && link["dropped_reports"].as_u64() >= Some(1) {
            break link;
        }
        assert!(std::time::Instant::now() < deadline, "{link:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(link["node_id"], "node-s");
    assert!(
        link["last_error"]
            .as_str()
            .unwrap()
            .starts_with("the controller did not answer"),
        "{link:#}"
    );
    let controller = Controller::start(&files, &files.sqlite(), port, &[]);
    let api = Api::new(&controller.url);
    api.wait("/api/v1/nodes", Duration::from_secs(20), |nodes| {
        node(nodes, "node-s")["health"]["spool_pending"] == 0
    });
    // Once the controller is back, events arrive again: 50 more flows (a new socket).
    let more = client(&a.topology, Some(&a.cgroup))
        .udp_spray(Ipv4Addr::new(198, 51, 100, 77), 50, 10)
        .unwrap();
    assert_eq!(more.ok, 50);
    api.wait("/api/v1/nodes", Duration::from_secs(20), |nodes| {
        let row = node(nodes, "node-s");
        row["events"].as_u64().unwrap_or(0)
            + row["health"]["spool_dropped_events"].as_u64().unwrap_or(0)
            >= 4_050
    });
    // And that it delivers again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let link = status_json(&a.bpffs.pin_path())["controller"].clone();
        if link["failing_since"].is_null() && link["pending"] == 0 {
            assert!(link["last_delivery"].is_string(), "{link:#}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{link:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The node's metrics say the same.
    let scraped = scrape(metrics_port);
    let dropped_reports =
        node(&api.get("/api/v1/nodes", ADMIN_TOKEN).1, "node-s")["health"]["spool_dropped_reports"]
            .as_f64()
            .unwrap();
    assert_eq!(
        sample(&scraped, "egress_monitor_reports_dropped_total"),
        dropped_reports
    );
    assert!(sample(&scraped, "egress_monitor_reports_delivered_total") >= 2.0);
    assert_eq!(
        sample(&scraped, "egress_monitor_reports_rejected_total"),
        0.0
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let written = std::fs::read_to_string(a.events())
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"first\"") || l.contains("\"kind\":\"update\""))
        .count() as u64;
    assert!(written >= 4_050, "{written} events written");
    let nodes = api.get("/api/v1/nodes", ADMIN_TOKEN).1;
    let row = node(&nodes, "node-s");
    let stored = row["events"].as_u64().unwrap();
    let dropped = row["health"]["spool_dropped_events"].as_u64().unwrap();
    assert!(
        row["health"]["spool_dropped_reports"].as_u64().unwrap() >= 1,
        "{row:#}"
    );
    assert!(
        dropped > 0 && stored >= 50,
        "stored {stored}, dropped {dropped}"
    );
    assert_eq!(stored + dropped, written, "{row:#}");
    assert!(
        row["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("its full spool dropped")),
        "{row:#}"
    );
}

/// A fleet policy the node cannot apply safely (here: it would cut an enforcing node off its
/// metadata service) changes nothing on the node, which says why; the next good one converges.
#[test]
fn a_node_refuses_a_fleet_policy_it_cannot_enforce_safely() {
    let a = Node::new("fleet-refuse");
    let scratch = Scratch::new("refuse-controller");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    let enforcing = ["--mode", "enforce"];
    let daemon = reporting_daemon(&a, "node-r", &controller.url, &files, &enforcing);
    let wait = Duration::from_secs(20);
    api.wait("/api/v1/nodes", wait, |nodes| {
        node(nodes, "node-r")["state"] == "enforced"
    });
    let before = status_json(&a.bpffs.pin_path())["policy_version"].clone();

    // Valid in observe mode, so the controller takes it; this node enforces, and refuses it.
    let unsafe_policy =
        "[[rule]]\nname = \"no-imds\"\ncidr = \"169.254.169.254/32\"\naction = \"deny\"\n";
    assert_eq!(api.put_policy(unsafe_policy).0, 200);
    let nodes = api.wait("/api/v1/nodes", wait, |nodes| {
        node(nodes, "node-r")["policy_error"].is_string()
    });
    let row = node(&nodes, "node-r");
    assert_eq!(row["state"], "drifted", "{row:#}");
    let error = row["policy_error"].as_str().unwrap();
    assert!(error.contains("fleet policy v1 is invalid here"), "{error}");
    assert!(error.contains("169.254.169.254"), "{error}");
    let status = status_json(&a.bpffs.pin_path());
    assert_eq!(status["policy_version"], before, "the live policy changed");
    assert_eq!(status["mode"], "enforce");

    // The next good policy converges, and the refusal is gone.
    let good = "[[rule]]\nname = \"mirror\"\ncidr = \"203.0.113.0/24\"\naction = \"allow\"\n";
    assert_eq!(api.put_policy(good).0, 200);
    let nodes = api.wait("/api/v1/nodes", wait, |nodes| {
        node(nodes, "node-r")["fleet_version"] == 2
    });
    let row = node(&nodes, "node-r");
    assert_eq!(row["state"], "enforced", "{row:#}");
    assert!(row["policy_error"].is_null(), "{row:#}");
    assert_ne!(status_json(&a.bpffs.pin_path())["policy_version"], before);
    // A restarted daemon runs the fleet's policy from its first moment.
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
    let restarted = reporting_daemon(&a, "node-r", &controller.url, &files, &enforcing);
    assert!(
        restarted
            .log
            .iter()
            .any(|l| l.contains("running the fleet's policy v2")),
        "{:#?}",
        restarted.log
    );
}

/// A node over its quota (here 3 reports a minute, a node reporting every second) gets 429 and
/// `Retry-After`, and waits as asked: its reports stay spooled, `status` says it is throttled
/// and until when, and the controller sees only what the quota lets through.
#[test]
fn a_throttled_node_waits_as_the_controller_asks() {
    let scratch = Scratch::new("fleet-quota");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(
        &files,
        &files.sqlite(),
        0,
        &["--quota-reports-per-minute", "3"],
    );
    let a = Node::new("node-q");
    let _daemon = reporting_daemon(&a, "node-q", &controller.url, &files, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let link = loop {
        let link = status_json(&a.bpffs.pin_path())["controller"].clone();
        if link["throttled_until"].is_string() && link["pending"].as_u64() >= Some(2) {
            break link;
        }
        assert!(std::time::Instant::now() < deadline, "{link:#}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        link["last_error"]
            .as_str()
            .unwrap()
            .contains("sends more than 3 reports a minute"),
        "{link:#}"
    );
    // Obeyed: a few seconds on, the controller still has no more than the quota allows.
    std::thread::sleep(Duration::from_secs(4));
    let api = Api::new(&controller.url);
    let reports = node(&api.get("/api/v1/nodes", ADMIN_TOKEN).1, "node-q")["reports"]
        .as_u64()
        .unwrap();
    assert!((3..=5).contains(&reports), "{reports} reports stored");
}

/// A node on Azure proves who it is (`--attest`: the attested document from the metadata
/// service, for the controller's nonce) and reports with a credential of its own; a forger
/// with the fleet token is refused the id, and so is a second daemon claiming it, whose
/// reporter says in `status` that the controller refuses it instead of retrying at full pace.
/// A restarted daemon attests again and goes on.
#[test]
fn an_attested_node_is_the_only_one_to_report_as_itself() {
    const SUBSCRIPTION: &str = "6a1e4b3c-0000-4000-8000-00000000c0de";
    const VM: &str = "0f3c2b1a-aaaa-4bbb-8ccc-0000000000a1";
    let scratch = Scratch::new("fleet-attest");
    let files = ControllerFiles::new(&scratch.0);
    let azure = TestAzure::new(&scratch.0.join("azure"), "metadata.azure.com");
    let (roots, issuing) = (
        azure.root().display().to_string(),
        azure.issuing().display().to_string(),
    );
    let controller = Controller::start(
        &files,
        &files.sqlite(),
        0,
        &[
            "--attestation-roots",
            &roots,
            "--attestation-intermediates",
            &issuing,
            "--attestation-subscription",
            SUBSCRIPTION,
        ],
    );
    let imds = AttestingImds::start(azure, VM, SUBSCRIPTION);
    let api = Api::new(&controller.url);
    let a = Node::new("node-at");
    let attested = ["--attest", "--imds-url", imds.url.as_str()];
    let mut daemon = reporting_daemon(&a, "vmss-at", &controller.url, &files, &attested);
    daemon.wait_for("attested as Azure VM", Duration::from_secs(20));
    let reports = |api: &Api| {
        node(&api.get("/api/v1/nodes", ADMIN_TOKEN).1, "vmss-at")["reports"]
            .as_u64()
            .unwrap_or(0)
    };
    api.wait("/api/v1/nodes", Duration::from_secs(20), |nodes| {
        node(nodes, "vmss-at")["reports"].as_u64() >= Some(2)
    });

    // A forger with the fleet token cannot report as the node.
    let (status, body) = api.post_json(
        "/api/v1/reports",
        FLEET_TOKEN,
        &report("vmss-at", "forged", 1, 10, vec![]),
    );
    assert_eq!(status, 403, "{body}");

    // Nor can a second daemon with the fleet token: its status says why, and it asks rarely.
    let b = Node::new("node-bt");
    let _claimer = reporting_daemon(&b, "vmss-at", &controller.url, &files, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let link = loop {
        let link = status_json(&b.bpffs.pin_path())["controller"].clone();
        if link["last_error"].is_string() {
            break link;
        }
        assert!(std::time::Instant::now() < deadline, "{link:#}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let error = link["last_error"].as_str().unwrap();
    assert!(
        error.contains("the controller refuses this node")
            && error.contains("has a credential of its own"),
        "{link:#}"
    );
    // The real node goes on reporting meanwhile.
    let before = reports(&api);
    std::thread::sleep(Duration::from_secs(3));
    assert!(reports(&api) > before, "the attested node still reports");

    // Restarted, the node attests again (a new credential) and goes on.
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
    let mut daemon = reporting_daemon(&a, "vmss-at", &controller.url, &files, &attested);
    daemon.wait_for("attested as Azure VM", Duration::from_secs(20));
    let before = reports(&api);
    api.wait("/api/v1/nodes", Duration::from_secs(20), |nodes| {
        node(nodes, "vmss-at")["reports"].as_u64() > Some(before)
    });
    drop(imds);
}

/// DNS reaches the fleet: a question a domain policy refuses (observe mode: it would) and a
/// tunnelling-like name leave the node as `dns` violations, filterable at the controller
/// (`kind=dns`, by name), with the name's score, and on the page; an allowed ordinary
/// question stays local.
#[test]
fn refused_and_tunnelling_dns_questions_are_fleet_violations() {
    use egress_monitor_tests::{
        dns::{DnsServer, Record},
        netns::PRIVATE_V4,
    };
    let scratch = Scratch::new("fleet-dns");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let a = Node::new("node-dq");
    let policy = a.scratch.0.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "mode = \"observe\"\n\n[[rule]]\nname = \"allowed-test\"\ndomain = \"*.allowed.test\"\naction = \"allow\"\n\n{}",
            crate::dns::trust_the_test_resolver(&a)
        ),
    )
    .unwrap();
    let server = DnsServer::start(
        &a.topology.net,
        PRIVATE_V4.into(),
        vec![Record::new("x.other.test", INTERNET_V4, 60)],
    )
    .unwrap();
    let _daemon = reporting_daemon(
        &a,
        "node-dq",
        &controller.url,
        &files,
        &["--policy", policy.to_str().unwrap()],
    );
    let tunnel =
        "mzxw6ytboi4dqnjrgu3tmobqgezdgnbvgy3tqojqgezdgnbvgy3tq.k3j9x2q7v5w8z1c4b6n0m.allowed.test";
    let resolver = client(&a.topology, Some(&a.cgroup));
    for name in ["x.other.test", tunnel, "www.allowed.test"] {
        resolver
            .resolve(PRIVATE_V4.into(), name, "a", false)
            .unwrap();
    }
    assert!(server.questions().iter().any(|q| q == "x.other.test"));
    let api = Api::new(&controller.url);
    let dns = api.wait(
        "/api/v1/violations?kind=dns&node=node-dq",
        Duration::from_secs(20),
        |v| v.as_array().is_some_and(|all| all.len() >= 2),
    );
    let by_name = |name: &str| {
        dns.as_array()
            .unwrap()
            .iter()
            .find(|v| v["dst_name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {dns:#}"))
    };
    let refused = by_name("x.other.test");
    assert_eq!(refused["kind"], "dns");
    assert_eq!(refused["action"], "observed");
    assert_eq!(refused["rule"], "default");
    assert_eq!(refused["dst"], PRIVATE_V4.to_string());
    assert_eq!(refused["dst_port"], 53);
    let flagged = by_name(tunnel);
    assert_eq!(
        flagged["rule"], "allowed-test",
        "allowed, but its name is flagged"
    );
    assert!(
        flagged["tunnel_score"].as_u64().unwrap() >= 50,
        "{flagged:#}"
    );
    assert!(
        !dns.to_string().contains("www.allowed.test"),
        "an allowed ordinary question stays local: {dns:#}"
    );
    // Filterable by name, like any destination.
    let (_, by_destination) = api.get(
        &format!("/api/v1/violations?kind=dns&destination={tunnel}"),
        ADMIN_TOKEN,
    );
    assert_eq!(
        by_destination.as_array().unwrap().len(),
        1,
        "{by_destination:#}"
    );
    let (status, page) = api.get("/", ADMIN_TOKEN);
    let page = page.as_str().unwrap_or_default().to_owned();
    assert!(
        status == 200 && page.contains("Recent DNS violations") && page.contains("x.other.test"),
        "{status} {page}"
    );
}

/// A staged rollout on real daemons: the canary group's node enforces the candidate, the other
/// keeps observing; the canary's first drops pause the rollout; a rollback returns the canary
/// to observe mode, with nothing else to do.
#[test]
fn a_rollout_reaches_the_canaries_first_pauses_on_their_drops_and_rolls_back() {
    let canary = Node::new("roll-canary");
    let other = Node::new("roll-other");
    let scratch = Scratch::new("roll-controller");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    let wait = Duration::from_secs(20);
    let _a = reporting_daemon(
        &canary,
        "roll-canary",
        &controller.url,
        &files,
        &["--node-group", "canaries"],
    );
    let _b = reporting_daemon(
        &other,
        "roll-other",
        &controller.url,
        &files,
        &["--node-group", "web"],
    );
    api.wait("/api/v1/nodes", wait, |nodes| {
        ["roll-canary", "roll-other"]
            .iter()
            .all(|id| node(nodes, id)["state"] == "observing")
    });

    let (status, started) = api.post_json(
        "/api/v1/rollout",
        ADMIN_TOKEN,
        &json!({"mode": "enforce", "group": "canaries"}),
    );
    assert_eq!(status, 201, "{started}");
    api.wait("/api/v1/nodes", wait, |nodes| {
        node(nodes, "roll-canary")["state"] == "enforced"
            && node(nodes, "roll-other")["state"] == "observing"
            && node(nodes, "roll-other")["converged"] == true
    });
    let status = status_json(&canary.bpffs.pin_path());
    assert_eq!(status["mode"], "enforce");
    assert_eq!(
        status["mode_source"], "the fleet's mode (PUT /api/v1/mode)",
        "{status:#}"
    );
    assert_eq!(status_json(&other.bpffs.pin_path())["mode"], "observe");
    assert_eq!(
        other.send(IpAddr::V4(INTERNET_V4), 2),
        0,
        "the other node still observes"
    );

    // The canary's workload now meets drops: the rollout stops by itself.
    assert_eq!(
        canary.send(IpAddr::V4(INTERNET_V4), 3),
        3,
        "dropped on the canary"
    );
    let paused = api.wait("/api/v1/rollout", wait, |rollout| {
        rollout["rollout"]["stage"] == "paused"
    });
    assert!(
        paused["rollout"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("canary roll-canary reported"),
        "{paused:#}"
    );

    // One call back: the canary observes again.
    let (status, back) = api.post_json("/api/v1/rollout/rollback", ADMIN_TOKEN, &json!({}));
    assert_eq!(status, 200, "{back}");
    api.wait("/api/v1/nodes", wait, |nodes| {
        node(nodes, "roll-canary")["state"] == "observing"
    });
    assert_eq!(
        canary.send(IpAddr::V4(INTERNET_V4), 2),
        0,
        "observing again"
    );
}
