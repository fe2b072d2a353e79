//! Domain rules: the addresses in the answers to a process's DNS questions for an allowed
//! domain become reachable, learned in the kernel before the process reads the answer, and
//! stop being reachable when the record's TTL (plus the grace period) runs out.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use egress_monitor_tests::{
    dns::{DnsServer, Record},
    netns::{INTERNET_V4, INTERNET_V6, LAB_V4, PRIVATE_V4, PRIVATE_V6, UDP_PORT},
};

use egress_monitor::events::{self, KernelRecord};
use egress_monitor_common::verdict::hook;
use egress_monitor_policy::Mode;

use crate::{
    Daemon, Fixture, Hook, Node, client, event_lines, free_port, sample, scrape, status_json,
};

const POLICY: &str = "mode = \"enforce\"\n\n\
    [[rule]]\nname = \"allowed-test\"\ndomain = \"*.allowed.test\"\naction = \"allow\"\n\n\
    [[rule]]\nname = \"blocked-host\"\ndomain = \"bad.allowed.test\"\naction = \"deny\"\n";

fn documentation_v4(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, host))
}

/// A daemon in enforce mode with the domain rules above, no grace period, and a DNS server
/// on the private peer (the resolver: private, so allowed).
fn start(node: &Node, zone: Vec<Record>) -> (Daemon, DnsServer) {
    start_with(node, zone, &[])
}

fn start_with(node: &Node, zone: Vec<Record>, extra: &[&str]) -> (Daemon, DnsServer) {
    let policy = node.scratch.0.join("policy.toml");
    std::fs::write(
        &policy,
        format!("{POLICY}\n{}", trust_the_test_resolver(node)),
    )
    .unwrap();
    let server = DnsServer::start(&node.topology.net, PRIVATE_V4.into(), zone).unwrap();
    let mut args = vec!["--policy", policy.to_str().unwrap(), "--dns-grace", "0"];
    args.extend_from_slice(extra);
    let daemon = node.daemon(&args);
    (daemon, server)
}

/// `[dns]` naming the test's resolver (the private peer) and the node namespace its clients
/// use: the daemon runs in the host's namespace, whose own resolvers these are not.
pub fn trust_the_test_resolver(node: &Node) -> String {
    format!(
        "[dns]\nresolvers = [\"{PRIVATE_V4}\", \"{PRIVATE_V6}\"]\nnetwork_namespaces = [\"{}\"]\n",
        node.topology.node.name
    )
}

/// Whether a datagram to `dst` leaves (the cgroup hook refuses a denied one with EPERM).
fn reachable(node: &Node, dst: IpAddr) -> bool {
    let outcome = client(&node.topology, Some(&node.cgroup))
        .udp(dst, UDP_PORT, 1, 10, false)
        .unwrap();
    assert_eq!(outcome.ok + outcome.eperm, 1, "{outcome:?}");
    outcome.ok == 1
}

#[test]
fn an_allowed_domains_addresses_are_reachable_until_their_ttl_runs_out() {
    let node = Node::new("dns");
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let (daemon, server) = start_with(
        &node,
        vec![
            Record::new("api.allowed.test", INTERNET_V4, 2),
            Record::new("api.allowed.test", INTERNET_V6, 2),
            Record::new("bad.allowed.test", documentation_v4(7), 60),
            Record::new("x.other.test", documentation_v4(8), 60),
        ],
        &["--metrics", &metrics],
    );
    let resolver = client(&node.topology, Some(&node.cgroup));
    let resolve = |name: &str, kind: &str| {
        let outcome = resolver
            .resolve(PRIVATE_V4.into(), name, kind, false)
            .unwrap();
        assert_eq!(outcome.ok, 1, "{name}: the resolver answers: {outcome:?}");
        outcome.replies
    };
    assert!(!reachable(&node, INTERNET_V4.into()), "denied before");

    // Names no allow rule covers cannot even be asked (the query is dropped before it
    // leaves); a deny rule beats the wider allow.
    for name in ["x.other.test", "bad.allowed.test"] {
        let outcome = resolver
            .resolve(PRIVATE_V4.into(), name, "a", false)
            .unwrap();
        assert_eq!(outcome.eperm, 1, "{name}: {outcome:?}");
    }
    assert!(!reachable(&node, documentation_v4(8)));
    assert!(!reachable(&node, documentation_v4(7)));

    // The allowed name's addresses, v4 and v6, from the first packet on.
    assert_eq!(resolve("API.Allowed.Test", "a"), 1, "case does not matter");
    assert_eq!(resolve("api.allowed.test", "aaaa"), 1);
    assert!(reachable(&node, INTERNET_V4.into()));
    assert!(reachable(&node, INTERNET_V6.into()));
    assert_eq!(node.topology.peers.udp_received(INTERNET_V4.into()), 1);
    let status = status_json(&node.bpffs.pin_path());
    let learned = status["dns_allowed"].as_array().unwrap();
    assert_eq!(learned.len(), 2, "{status:#}");
    assert!(
        learned
            .iter()
            .all(|l| l["rule"] == "allowed-test" && l["domain"] == "*.allowed.test"),
        "{status:#}"
    );
    assert!(
        status["rule_hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "allowed-test" && r["hits"] == 2),
        "the domain rule counts its packets: {status:#}"
    );
    let scraped = scrape(port);
    for (series, value) in [
        ("egress_monitor_dns_queries_total{verdict=\"allowed\"}", 2.0),
        ("egress_monitor_dns_queries_total{verdict=\"denied\"}", 2.0),
        ("egress_monitor_dns_answers_learned_total", 2.0),
        ("egress_monitor_dns_allowed_addresses", 2.0),
    ] {
        assert_eq!(sample(&scraped, series), value, "{series}");
    }

    // Two seconds of TTL, no grace: then denied again, with an event.
    std::thread::sleep(Duration::from_millis(2300));
    assert!(!reachable(&node, INTERNET_V4.into()), "expired");
    assert!(!reachable(&node, INTERNET_V6.into()), "expired");
    assert_eq!(
        server.questions(),
        ["api.allowed.test", "api.allowed.test"],
        "the refused names never reached the resolver"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let lines = event_lines(&node.events(), 7);
    let dns = |name: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["kind"] == "dns" && l["name"] == name)
            .collect()
    };
    let refused = dns("x.other.test");
    assert_eq!(refused.len(), 1, "{lines:#?}");
    assert_eq!(refused[0]["action"], "dropped");
    assert_eq!(refused[0]["rule"], "default");
    assert_eq!(refused[0]["qtype"], "A");
    assert_eq!(refused[0]["server"], PRIVATE_V4.to_string());
    assert_eq!(refused[0]["comm"], "em-testclient");
    assert_eq!(dns("bad.allowed.test")[0]["rule"], "blocked-host");
    let asked = dns("API.Allowed.Test");
    assert_eq!(asked.len(), 1, "{lines:#?}");
    assert_eq!(
        (&asked[0]["action"], &asked[0]["rule"]),
        (&"allowed".into(), &"allowed-test".into())
    );
    assert_eq!(asked[0]["tunnel"]["suspicious"], false);
    let answer = lines
        .iter()
        .find(|l| l["kind"] == "dns_answer" && l["name"] == "api.allowed.test")
        .expect("the allowed answer is reported");
    assert_eq!(answer["learned"], true, "{answer}");
    let to_internet: Vec<_> = lines
        .iter()
        .filter(|l| l["dst"] == INTERNET_V4.to_string())
        .collect();
    assert_eq!(
        to_internet
            .iter()
            .map(|l| l["packets"].as_u64().unwrap())
            .sum::<u64>(),
        2,
        "before learning and after expiry; not while allowed: {lines:#?}"
    );
}

/// In enforce mode with domain rules nothing leaves inside a query name no rule allows, over
/// TCP either; in observe mode such queries leave and are reported, and a tunnelling-like name
/// is flagged.
#[test]
fn queries_for_names_no_rule_allows_are_refused_or_reported() {
    let node = Node::new("dnsq");
    let (daemon, server) = start(&node, vec![Record::new("x.other.test", INTERNET_V4, 60)]);
    let resolver = client(&node.topology, Some(&node.cgroup));
    let outcome = resolver
        .resolve(PRIVATE_V4.into(), "x.other.test", "a", true)
        .unwrap();
    assert_eq!(
        (outcome.ok, outcome.replies),
        (0, 0),
        "over TCP the connection opens, the question never leaves: {outcome:?}"
    );
    assert!(server.questions().is_empty(), "{:?}", server.questions());
    // A disallowed question hidden behind an allowed one in the same TCP segment: the segment
    // is refused whole.
    let outcome = resolver
        .resolve_pipelined(PRIVATE_V4.into(), "x.allowed.test", "x.other.test")
        .unwrap();
    assert_eq!(outcome.ok, 0, "{outcome:?}");
    assert!(server.questions().is_empty(), "{:?}", server.questions());
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let lines = event_lines(&node.events(), 1);
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "dns" && l["proto"] == "tcp" && l["action"] == "dropped"),
        "{lines:#?}"
    );

    // Observe mode: the same policy reports instead of refusing.
    let daemon = node.daemon(&[
        "--policy",
        node.scratch.0.join("policy.toml").to_str().unwrap(),
        "--mode",
        "observe",
    ]);
    let tunnel =
        "mzxw6ytboi4dqnjrgu3tmobqgezdgnbvgy3tqojqgezdgnbvgy3tq.k3j9x2q7v5w8z1c4b6n0m.t.other.test";
    for (name, tcp) in [
        ("x.other.test", false),
        ("x.other.test", true),
        (tunnel, false),
    ] {
        let outcome = resolver.resolve(PRIVATE_V4.into(), name, "a", tcp).unwrap();
        assert_eq!(outcome.ok, 1, "{name} (tcp {tcp}) is answered: {outcome:?}");
    }
    // (The refused TCP question may arrive now too: the closed socket's retransmission.)
    let questions = server.questions();
    assert!(
        questions.len() >= 3 && questions.iter().any(|q| q == tunnel),
        "{questions:?}"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let lines = event_lines(&node.events(), 4);
    let observed: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "dns" && l["action"] == "observed")
        .collect();
    // Three asked; the refused TCP question's retransmission may be a fourth.
    assert!(
        observed.len() >= 3
            && observed
                .iter()
                .any(|l| l["name"] == "x.other.test" && l["proto"] == "udp"),
        "{lines:#?}"
    );
    let flagged: Vec<_> = observed
        .iter()
        .filter(|l| l["tunnel"]["suspicious"] == true)
        .collect();
    assert_eq!(flagged.len(), 1, "{observed:#?}");
    assert_eq!(flagged[0]["name"], tunnel);
    assert!(flagged[0]["tunnel"]["score"].as_u64().unwrap() >= 50);
}

#[test]
fn many_addresses_over_tcp_and_rotation_are_all_learned() {
    let node = Node::new("dnsmany");
    let many = |first: u8| -> Vec<Record> {
        (first..first + 8)
            .map(|host| Record::new("many.allowed.test", documentation_v4(host), 30))
            .collect()
    };
    let (daemon, server) = start(&node, many(10));
    let resolver = client(&node.topology, Some(&node.cgroup));
    let outcome = resolver
        .resolve(PRIVATE_V4.into(), "many.allowed.test", "a", true)
        .unwrap();
    assert_eq!(
        (outcome.ok, outcome.replies),
        (1, 8),
        "over TCP: {outcome:?}"
    );
    for host in 10..18 {
        assert!(reachable(&node, documentation_v4(host)), "203.0.113.{host}");
    }
    // The name rotates to other addresses: the new ones are learned, the old ones stay until
    // their own TTL.
    server.set_zone(many(20));
    let outcome = resolver
        .resolve(PRIVATE_V4.into(), "many.allowed.test", "a", false)
        .unwrap();
    assert_eq!(outcome.replies, 8);
    for host in (10..18).chain(20..28) {
        assert!(reachable(&node, documentation_v4(host)), "203.0.113.{host}");
    }
    assert!(!reachable(&node, documentation_v4(30)), "never answered");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}

/// Without domain rules nothing is refused for its name, but every question and answer is
/// reported, and a denied packet to an address the client resolved names it (`dst_name`).
#[test]
fn a_denied_packet_names_the_destination_the_client_resolved() {
    let node = Node::new("dnsname");
    let server = DnsServer::start(
        &node.topology.net,
        PRIVATE_V4.into(),
        vec![
            Record::new("x.other.test", INTERNET_V4, 60),
            Record::new("x.other.test", INTERNET_V6, 60),
        ],
    )
    .unwrap();
    let daemon = node.daemon(&["--mode", "enforce"]);
    let resolver = client(&node.topology, Some(&node.cgroup));
    for kind in ["a", "aaaa"] {
        let outcome = resolver
            .resolve(PRIVATE_V4.into(), "x.other.test", kind, false)
            .unwrap();
        assert_eq!((outcome.ok, outcome.replies), (1, 1), "{kind}: {outcome:?}");
    }
    assert_eq!(
        server.questions().len(),
        2,
        "no domain rules: nothing refused"
    );
    assert!(!reachable(&node, INTERNET_V4.into()));
    assert!(!reachable(&node, INTERNET_V6.into()));
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let lines = event_lines(&node.events(), 6);
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["kind"] == kind).collect()
    };
    let questions = of_kind("dns");
    assert_eq!(questions.len(), 2, "{lines:#?}");
    assert!(questions.iter().all(|q| q["action"] == "allowed"));
    let answers = of_kind("dns_answer");
    assert_eq!(answers.len(), 2, "{lines:#?}");
    for (answer, address) in answers.iter().zip([
        IpAddr::V4(INTERNET_V4).to_string(),
        IpAddr::V6(INTERNET_V6).to_string(),
    ]) {
        assert_eq!(answer["name"], "x.other.test");
        assert_eq!(answer["addresses"], serde_json::json!([address]));
        assert_eq!(answer["ttl"], 60);
        assert_eq!(answer["learned"], false, "no rule allows it");
        assert_eq!(answer["comm"], "em-testclient");
    }
    let denied = of_kind("first");
    assert_eq!(denied.len(), 2, "{lines:#?}");
    assert!(
        denied.iter().all(|d| d["dst_name"] == "x.other.test"),
        "{denied:#?}"
    );
}

/// Queries are rate-limited like flows: the same question from the same socket is one event
/// per interval, the next carrying how many it stood for.
#[test]
fn repeated_questions_from_one_socket_are_rate_limited() {
    let node = Node::new("dnsrate");
    let _server = DnsServer::start(
        &node.topology.net,
        PRIVATE_V4.into(),
        vec![Record::new("x.other.test", INTERNET_V4, 60)],
    )
    .unwrap();
    let daemon = node.daemon(&["--flow-interval", "1"]);
    let mut resolver = client(&node.topology, Some(&node.cgroup));
    // Eight questions over about 1.6 s: at most two or three reporting periods.
    resolver.interval = Some(Duration::from_millis(200));
    let outcome = resolver
        .resolve_repeat(PRIVATE_V4.into(), "x.other.test", 8)
        .unwrap();
    assert_eq!(outcome.ok, 8, "{outcome:?}");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let lines = event_lines(&node.events(), 2);
    let events: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "dns" && l["name"] == "x.other.test")
        .collect();
    assert!(
        (2..=3).contains(&events.len()),
        "eight questions, a few events: {events:#?}"
    );
    assert_eq!(events[0]["repeats"], 0, "the first is reported at once");
    let reported: u64 = events
        .iter()
        .map(|e| 1 + e["repeats"].as_u64().unwrap())
        .sum();
    assert!(
        reported > events.len() as u64 && reported <= 8,
        "later events stand for the questions in between: {events:#?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["src_port"] == u64::from(outcome.src_port))
    );
}

/// Over IPv6 to the resolver too; and the refusal and the learning are the kernel's own: with
/// the daemon killed, a disallowed name stays refused and an allowed name's addresses are
/// still learned.
#[test]
fn ipv6_resolvers_and_a_dead_daemon_change_nothing() {
    let node = Node::new("dnsv6");
    let zone = vec![
        Record::new("api.allowed.test", documentation_v4(40), 60),
        Record::new("v6.allowed.test", documentation_v4(41), 60),
        Record::new("x.other.test", INTERNET_V4, 60),
    ];
    let (daemon, _server) = start(&node, zone.clone());
    let _server_v6 = DnsServer::start(&node.topology.net, PRIVATE_V6.into(), zone).unwrap();
    let resolver = client(&node.topology, Some(&node.cgroup));
    let outcome = resolver
        .resolve(PRIVATE_V6.into(), "v6.allowed.test", "a", false)
        .unwrap();
    assert_eq!((outcome.ok, outcome.replies), (1, 1), "{outcome:?}");
    assert!(reachable(&node, documentation_v4(41)), "learned over IPv6");
    let outcome = resolver
        .resolve(PRIVATE_V6.into(), "x.other.test", "a", true)
        .unwrap();
    assert_eq!(outcome.ok, 0, "refused over IPv6 and TCP: {outcome:?}");

    daemon.kill();
    let outcome = resolver
        .resolve(PRIVATE_V4.into(), "x.other.test", "a", false)
        .unwrap();
    assert_eq!(
        outcome.eperm, 1,
        "still refused with no daemon: {outcome:?}"
    );
    assert!(!reachable(&node, documentation_v4(40)));
    let outcome = resolver
        .resolve(PRIVATE_V4.into(), "api.allowed.test", "a", false)
        .unwrap();
    assert_eq!(outcome.replies, 1);
    assert!(
        reachable(&node, documentation_v4(40)),
        "learned with no daemon"
    );
    // The restarted daemon reports what happened meanwhile from the ring buffer.
    let daemon = node.daemon(&[
        "--policy",
        node.scratch.0.join("policy.toml").to_str().unwrap(),
    ]);
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let lines = event_lines(&node.events(), 1);
    let v6: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "dns" && l["server"] == PRIVATE_V6.to_string())
        .collect();
    assert_eq!(v6.len(), 2, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l["kind"] == "dns"
            && l["name"] == "x.other.test"
            && l["server"] == PRIVATE_V4.to_string()
            && l["action"] == "dropped"),
        "the refusal while no daemon ran is reported: {lines:#?}"
    );
}

/// With both hooks, a question from a socket in the cgroup is one event (the cgroup hook's, with
/// the process), not one per hook.
#[test]
fn with_both_hooks_a_question_is_reported_once() {
    let mut fx = Fixture::new(Hook::Both, Mode::Observe, &[]);
    let _server = DnsServer::start(
        &fx.topology.net,
        PRIVATE_V4.into(),
        vec![Record::new("x.other.test", INTERNET_V4, 60)],
    )
    .unwrap();
    let outcome = fx
        .client(None)
        .resolve(PRIVATE_V4.into(), "x.other.test", "a", false)
        .unwrap();
    assert_eq!(outcome.ok, 1, "{outcome:?}");
    let mut questions = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        while let Some(item) = fx.ring.next() {
            if let Ok(KernelRecord::DnsQuery(event)) = events::decode(&item) {
                questions.push(event.hook);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(questions, [hook::CGROUP], "one event, from the cgroup hook");
}

/// An answer teaches only when it answers a question this socket sent to that server: one
/// forged by a local process from a socket bound to port 53, with the right id and name, opens
/// nothing, while the real answer does.
#[test]
fn a_forged_answer_opens_nothing() {
    let node = Node::new("dnsforge");
    let (daemon, _server) = start(
        &node,
        vec![Record::new("api.allowed.test", documentation_v4(50), 60)],
    );
    let outcome = client(&node.topology, Some(&node.cgroup))
        .forge_answer(
            PRIVATE_V4.into(),
            "api.allowed.test",
            Ipv4Addr::new(203, 0, 113, 66),
        )
        .unwrap();
    assert_eq!(
        outcome.ok, 2,
        "the real answer and the forged one arrive: {outcome:?}"
    );
    assert!(
        reachable(&node, documentation_v4(50)),
        "the real answer teaches"
    );
    assert!(
        !reachable(&node, documentation_v4(66)),
        "the forged answer teaches nothing"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    // Answers are reported once per name and interval: whichever came first, its `learned`
    // says what the kernel did with it.
    let lines = event_lines(&node.events(), 2);
    let answer = lines
        .iter()
        .find(|l| l["kind"] == "dns_answer")
        .expect("an answer event");
    let forged = answer["server"] == "127.0.0.1";
    assert_eq!(answer["learned"], !forged, "{answer}");
}

/// Only the node's resolvers teach, and only sockets of the network namespaces the daemon
/// trusts. Each answer below names an allowed name and answers a question its socket asked,
/// yet teaches nothing, and is reported with why: one from a private host that is not a
/// resolver; one from a resolver an unprivileged process runs on 127.0.0.53 (a trusted
/// resolver address) in a user and network namespace of its own; and, once the policy no
/// longer names the node's namespace, the real resolver's answer to a socket there (the
/// default trusts the daemon's namespace only). The real resolver's answer teaches.
#[test]
fn only_the_nodes_resolvers_teach() {
    let node = Node::new("dnstrust");
    let zone = |host: u8| {
        ["a", "b", "c", "d"]
            .map(|label| Record::new(&format!("{label}.allowed.test"), documentation_v4(host), 60))
            .to_vec()
    };
    let _resolver = DnsServer::start(&node.topology.net, PRIVATE_V4.into(), zone(70)).unwrap();
    let _other = DnsServer::start(&node.topology.net, LAB_V4.into(), zone(71)).unwrap();
    let trusting = |namespaces: &str| {
        format!(
            "{POLICY}\n[dns]\nresolvers = [\"{PRIVATE_V4}\", \"127.0.0.53\"]\n\
             network_namespaces = [{namespaces}]\n"
        )
    };
    let policy = node.policy_file(
        "policy.toml",
        &trusting(&format!("\"{}\"", node.topology.node.name)),
    );
    let mut daemon = node.daemon(&["--policy", &policy, "--dns-grace", "0"]);
    let asker = client(&node.topology, Some(&node.cgroup));
    let answered = |server: Ipv4Addr, name: &str| {
        let outcome = asker.resolve(server.into(), name, "a", false).unwrap();
        assert_eq!((outcome.ok, outcome.replies), (1, 1), "{name}: {outcome:?}");
    };

    answered(LAB_V4, "a.allowed.test");
    assert!(!reachable(&node, documentation_v4(71)), "not a resolver");

    let mut attacker = client(&node.topology, Some(&node.cgroup));
    attacker.uid = Some(65534);
    let outcome = attacker
        .own_resolver(
            Ipv4Addr::new(127, 0, 0, 53),
            "b.allowed.test",
            Ipv4Addr::new(203, 0, 113, 72),
        )
        .unwrap();
    assert_eq!(outcome.ok, 1, "its own resolver answered: {outcome:?}");
    assert!(!reachable(&node, documentation_v4(72)), "another namespace");

    answered(PRIVATE_V4, "c.allowed.test");
    assert!(
        reachable(&node, documentation_v4(70)),
        "the resolver teaches"
    );

    // Without the node's namespace named, only the daemon's own is trusted.
    std::fs::write(&policy, trusting("")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("inserted", Duration::from_secs(10));
    answered(PRIVATE_V4, "d.allowed.test");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");

    let lines = event_lines(&node.events(), 4);
    let answer = |name: &str| {
        lines
            .iter()
            .find(|l| l["kind"] == "dns_answer" && l["name"] == name)
            .unwrap_or_else(|| panic!("no answer event for {name}: {lines:#?}"))
            .clone()
    };
    for (name, learned, why) in [
        ("a.allowed.test", false, Some("not_a_resolver")),
        ("b.allowed.test", false, Some("other_network_namespace")),
        ("c.allowed.test", true, None),
        ("d.allowed.test", false, Some("other_network_namespace")),
    ] {
        let event = answer(name);
        assert_eq!(event["learned"], learned, "{event}");
        assert_eq!(event["why"].as_str(), why, "{event}");
    }
    let b = answer("b.allowed.test");
    assert_eq!(b["server"], "127.0.0.53", "{b}");
    let status = status_json(&node.bpffs.pin_path());
    assert_eq!(status["counters"]["dns_answers_untrusted"], 3, "{status:#}");
}

/// A connected socket that opened to a learned address keeps it after the record expires, on
/// both hooks (TC does not cut what the cgroup hook let open); a new socket to it afterwards is
/// denied.
#[test]
fn a_connection_outlives_its_record() {
    let (fx, _server, mut node) = learned_with_both_hooks(1);
    // 20 datagrams 150 ms apart: the record (1 s, no grace) expires half-way.
    node.interval = Some(Duration::from_millis(150));
    let held = node
        .udp_connected(INTERNET_V4.into(), UDP_PORT, 20)
        .unwrap();
    assert_eq!((held.ok, held.eperm), (20, 0), "{held:?}");
    assert_eq!(
        fx.topology.peers.udp_received(INTERNET_V4.into()),
        20,
        "every datagram arrived, after the expiry too"
    );
    node.interval = None;
    let fresh = node.udp_connected(INTERNET_V4.into(), UDP_PORT, 1).unwrap();
    assert_eq!(fresh.eperm, 1, "a new socket after the expiry: {fresh:?}");
    assert_eq!(fx.topology.peers.udp_received(INTERNET_V4.into()), 0);
    let counters = fx.datapath.counters().unwrap();
    assert!(
        counters.learned_socket_passes >= 2 * 10,
        "both hooks passed the held socket's late datagrams: {counters:?}"
    );
}

/// An answer forged in a resolver's name by a process with CAP_NET_RAW alone teaches nothing,
/// though it answers an open question of the forger's own socket: through a raw IP socket it
/// never leaves the sender (EPERM: resolvers answer from UDP and TCP sockets, not raw ones); as
/// a frame on the loopback device (no hook sees that send) it arrives, but a resolver that is not
/// on this node never answers over loopback, so it is refused as `looped_back`.
#[test]
fn an_answer_forged_in_a_resolvers_name_teaches_nothing() {
    let node = Node::new("dnsforge2");
    let (daemon, _server) = start(
        &node,
        vec![Record::new("api.allowed.test", documentation_v4(80), 60)],
    );
    let mut forger = client(&node.topology, Some(&node.cgroup));
    forger.net_raw_only = true;
    let raw = forger
        .forge_as_resolver(
            "raw",
            PRIVATE_V4,
            "x1.allowed.test",
            Ipv4Addr::new(203, 0, 113, 81),
        )
        .unwrap();
    assert_eq!((raw.ok, raw.eperm), (0, 1), "{raw:?}");
    assert!(!reachable(&node, documentation_v4(81)));
    let frame = forger
        .forge_as_resolver(
            "packet",
            PRIVATE_V4,
            "x2.allowed.test",
            Ipv4Addr::new(203, 0, 113, 82),
        )
        .unwrap();
    assert_eq!(frame.ok, 1, "{frame:?}");
    assert!(
        !reachable(&node, documentation_v4(82)),
        "the forgery taught nothing"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let lines = event_lines(&node.events(), 1);
    let forged = lines
        .iter()
        .find(|l| l["kind"] == "dns_answer" && l["name"] == "x2.allowed.test")
        .unwrap_or_else(|| panic!("the forged answer is reported ({frame:?}): {lines:#?}"));
    assert_eq!(forged["learned"], false, "{forged}");
    assert_eq!(forged["why"], "looped_back", "{forged}");
    assert_eq!(forged["server"], PRIVATE_V4.to_string(), "{forged}");
}

/// The domain rules above, trusting the test's resolver and the node's namespace.
fn trusting_the_node(topology: &egress_monitor_tests::netns::Topology) -> String {
    format!(
        "{POLICY}\n[dns]\nresolvers = [\"{PRIVATE_V4}\"]\nnetwork_namespaces = [\"{}\"]\n",
        topology.node.name
    )
}

/// Both hooks enforcing the domain rules above, and a node client that has just learned
/// `api.allowed.test` → 203.0.113.1 with a TTL of `ttl` seconds from the test's resolver.
fn learned_with_both_hooks(ttl: u32) -> (Fixture, DnsServer, egress_monitor_tests::client::Client) {
    let fx = Fixture::with_policy(Hook::Both, |topology, _| {
        policy_from(&trusting_the_node(topology))
    });
    let server = DnsServer::start(
        &fx.topology.net,
        PRIVATE_V4.into(),
        vec![Record::new("api.allowed.test", INTERNET_V4, ttl)],
    )
    .unwrap();
    let node = fx.client(None);
    let outcome = node
        .resolve(PRIVATE_V4.into(), "api.allowed.test", "a", false)
        .unwrap();
    assert_eq!(outcome.replies, 1, "{outcome:?}");
    (fx, server, node)
}

/// A policy built from `text` as a node builds it from a file.
fn policy_from(text: &str) -> egress_monitor_policy::Policy {
    let file = egress_monitor_policy::PolicyFile::parse(std::path::Path::new("policy.toml"), text)
        .unwrap();
    egress_monitor_policy::Policy::build(
        Some(&file),
        &egress_monitor_policy::CommandLineRules::default(),
        None,
    )
    .unwrap()
}

/// Revoking a domain rule revokes what it opened: the addresses it learned and the sockets that
/// kept one stop passing at once, though the record's TTL and the socket live on.
#[test]
fn revoking_a_domain_rule_closes_its_sockets_too() {
    let (mut fx, _server, mut node) = learned_with_both_hooks(600);
    node.interval = Some(Duration::from_millis(100));
    let holder = node.clone();
    let held = std::thread::spawn(move || holder.udp_connected(INTERNET_V4.into(), UDP_PORT, 30));
    std::thread::sleep(Duration::from_millis(1000));
    fx.datapath
        .apply(&policy_from("mode = \"enforce\"\n"))
        .expect("apply the policy without the domain rule");
    let held = held.join().unwrap().unwrap();
    assert!(
        held.ok >= 3 && held.eperm >= 10 && held.ok + held.eperm == 30,
        "passed before the revocation, refused after: {held:?}"
    );
    let received = fx.topology.peers.udp_received(INTERNET_V4.into());
    assert_eq!(received as u64, held.ok, "nothing refused arrived");
    let status_learned = fx.datapath.learned().unwrap();
    assert!(status_learned.is_empty(), "{status_learned:?}");
}
