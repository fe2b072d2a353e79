//! Enforcement that outlives the daemon: pinning, adoption, live policy, check, detach.

use std::{net::IpAddr, path::Path, time::Duration};

use aya::maps::{Array, Map, MapData};
use egress_monitor::datapath::pins::PinLayout;
use egress_monitor_common::{maps::CONFIG, policy::config};
use egress_monitor_tests::{
    dns::{DnsServer, Record},
    netns::{INTERNET_V4, INTERNET_V6, LAB_V4, PRIVATE_V4, UDP_PORT},
};

use crate::{Node, client, egress_monitor, event_lines, status_json, stderr, stdout};

fn dropped(status: &serde_json::Value) -> u64 {
    status["counters"]["cgroup"]["denied_dropped"]["packets"]
        .as_u64()
        .unwrap()
}

/// SIGKILL the daemon in enforce mode: blocked traffic stays blocked and is still counted;
/// a restarted daemon adopts the state, counters carry on, and what happened while no daemon
/// ran is delivered: first events from the ring buffer, aggregated counts from the flows. The
/// events' packets add up to every dropped packet.
#[test]
fn a_killed_daemon_leaves_the_node_enforced_and_a_restart_adopts_it() {
    let node = Node::new("kill");
    let internet = IpAddr::V4(INTERNET_V4);
    let daemon = node.daemon(&["--mode", "enforce"]);
    assert_eq!(node.send(internet, 3), 3);
    assert_eq!(
        event_lines(&node.events(), 1).len(),
        1,
        "one event for the flow's first packet; the other two are counted in the kernel"
    );
    daemon.kill();

    assert_eq!(node.send(internet, 3), 3, "still dropped with no daemon");
    assert_eq!(node.topology.peers.udp_received(internet), 0);
    let status = status_json(&node.bpffs.pin_path());
    assert_eq!(status["daemon_pid"], serde_json::Value::Null);
    assert_eq!(status["mode"], "enforce");
    assert_eq!(
        status["attached"][0]["target"],
        node.cgroup.path.to_str().unwrap(),
        "status says where: {status}"
    );
    assert_eq!(dropped(&status), 6, "counted while no daemon ran");

    let daemon = node.daemon(&["--mode", "enforce"]);
    assert!(
        daemon
            .log
            .iter()
            .any(|l| l.contains("adopted the pinned datapath")),
        "{:#?}",
        daemon.log
    );
    assert!(
        daemon
            .log
            .iter()
            .any(|l| l.contains("0 inserted, 0 updated, 0 removed")),
        "same policy: no change"
    );
    assert_eq!(node.send(internet, 3), 3);
    assert_eq!(
        dropped(&status_json(&node.bpffs.pin_path())),
        9,
        "counters carry on"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    // Three client runs, three sockets, three flows: each a first event and an update (the
    // killed daemon's flow and the one from while no daemon ran are reported by the restarted
    // daemon at start; its own at stop).
    let lines = event_lines(&node.events(), 6);
    let kinds = |kind: &str| lines.iter().filter(|l| l["kind"] == kind).count();
    assert_eq!((kinds("first"), kinds("update")), (3, 3), "{lines:#?}");
    let packets: u64 = lines.iter().map(|l| l["packets"].as_u64().unwrap()).sum();
    assert_eq!(
        packets, 9,
        "every dropped packet is in an event: {lines:#?}"
    );
}

/// SIGHUP re-reads the policy file and applies the difference; events name the new rule and
/// carry the new version.
#[test]
fn sighup_applies_the_changed_policy_file() {
    let node = Node::new("sighup");
    let policy = node.policy_file("policy.toml", "mode = \"enforce\"\n");
    let mut daemon = node.daemon(&["--policy", &policy]);
    let before = status_json(&node.bpffs.pin_path())["policy_version"].clone();
    assert_eq!(
        node.send(LAB_V4.into(), 2),
        0,
        "10.78.0.1 is private: allowed"
    );
    std::fs::write(
        &policy,
        "mode = \"enforce\"\n[[rule]]\nname = \"lab\"\ncidr = \"10.78.0.0/24\"\naction = \"deny\"\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("1 inserted, 0 updated, 0 removed", Duration::from_secs(10));
    assert_eq!(node.send(LAB_V4.into(), 2), 2, "denied now");
    let after = status_json(&node.bpffs.pin_path())["policy_version"].clone();
    assert_ne!(before, after);
    let lines = event_lines(&node.events(), 1);
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l["rule"] == "lab" && l["policy"] == after),
        "{lines:#?}"
    );

    // An invalid file on SIGHUP changes nothing.
    std::fs::write(&policy, "mode = \"enforce\"\nbogus = 1\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("the new policy is invalid", Duration::from_secs(10));
    assert_eq!(status_json(&node.bpffs.pin_path())["policy_version"], after);
    assert_eq!(node.send(LAB_V4.into(), 2), 2, "still denied");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}

/// 100 applies alternating two policies that rewrite the rules covering both peers, while a
/// private peer is pinged and an internet peer probed without pause: not one ping lost, not
/// one datagram through.
#[test]
fn a_hundred_live_policy_changes_open_no_gap() {
    const APPLIES: usize = 100;
    const WITNESS_PACKETS: u32 = 20_000;
    let node = Node::new("applies");
    // Filler rules make every apply a real diff of a few hundred entries.
    let filler = |first: u32| -> String {
        (first..first + 200)
            .map(|i| {
                format!(
                    "[[rule]]\nname = \"f{i}\"\ncidr = \"198.51.{}.{}/32\"\naction = \"deny\"\n",
                    i / 256,
                    i % 256
                )
            })
            .collect()
    };
    let a = node.policy_file(
        "a.toml",
        &format!(
            "mode = \"enforce\"\n[[rule]]\nname = \"node-net\"\ncidr = \"10.77.0.0/24\"\naction = \"allow\"\n\
             [[rule]]\nname = \"gateway\"\ncidr = \"10.77.0.1/32\"\naction = \"allow\"\n\
             [[rule]]\nname = \"doc-net\"\ncidr = \"203.0.113.0/24\"\naction = \"deny\"\n{}",
            filler(0)
        ),
    );
    let b = node.policy_file(
        "b.toml",
        &format!("mode = \"enforce\"\n[[rule]]\nname = \"lab\"\ncidr = \"10.78.0.0/16\"\naction = \"deny\"\n{}", filler(100)),
    );
    let daemon = node.daemon(&["--policy", &a]);

    // Both witnesses run for about 40 s (20,000 packets 2 ms apart), longer than the applies
    // take even on a loaded 2-core machine (seen: 100 applies outlasting 5 s while other builds
    // ran, and 16 s once each apply waited for running programs before changing the tries).
    let mut pinger = client(&node.topology, Some(&node.cgroup));
    pinger.interval = Some(Duration::from_millis(2));
    let prober = pinger.clone();
    let ping = std::thread::spawn(move || pinger.ping(PRIVATE_V4.into(), WITNESS_PACKETS));
    let probe = std::thread::spawn(move || {
        prober.udp(INTERNET_V4.into(), UDP_PORT, WITNESS_PACKETS, 10, false)
    });
    std::thread::sleep(Duration::from_millis(200));
    let pin = node.pin();
    let mut slowest = Duration::ZERO;
    for i in 0..APPLIES {
        let file = if i % 2 == 0 { &b } else { &a };
        let started = std::time::Instant::now();
        let output = egress_monitor(&["policy", "apply", file, "--pin-path", &pin]);
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            output.status.code(),
            Some(0),
            "apply {i}: {}",
            stderr(&output)
        );
        assert!(stdout(&output).contains("applied"), "{}", stdout(&output));
    }
    assert!(
        !ping.is_finished() && !probe.is_finished(),
        "the applies ran while traffic flowed"
    );
    let ping = ping.join().unwrap().unwrap();
    let probe = probe.join().unwrap().unwrap();
    eprintln!("slowest apply (process start to exit): {slowest:?}");
    assert_eq!(
        (ping.ok, ping.replies),
        (u64::from(WITNESS_PACKETS), u64::from(WITNESS_PACKETS)),
        "no ping lost: {ping:?}"
    );
    assert_eq!(
        probe.eperm,
        u64::from(WITNESS_PACKETS),
        "every probe refused: {probe:?}"
    );
    assert_eq!(
        node.topology.peers.udp_received(INTERNET_V4.into()),
        0,
        "nothing through"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}

/// An invalid policy applied to a live datapath is refused and changes nothing; a policy
/// denying an essential in enforce mode is refused unless the risk is named.
#[test]
fn invalid_and_unsafe_policies_change_nothing() {
    let node = Node::new("invalid");
    let daemon = node.daemon(&["--mode", "enforce"]);
    let pin = node.pin();
    let before = status_json(&node.bpffs.pin_path());

    let bad = node.policy_file(
        "bad.toml",
        "mode = \"enforce\"\n[[rule]]\nname = \"x\"\ncidr = \"10.0.0.0/33\"\naction = \"deny\"\n",
    );
    let output = egress_monitor(&["policy", "apply", &bad, "--pin-path", &pin]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("bad.toml:4:8: `10.0.0.0/33` is not a CIDR"),
        "{}",
        stderr(&output)
    );

    let unsafe_policy = node.policy_file("imds.toml", "mode = \"enforce\"\n[[rule]]\nname = \"no-imds\"\ncidr = \"169.254.169.254/32\"\naction = \"deny\"\n");
    let output = egress_monitor(&["policy", "apply", &unsafe_policy, "--pin-path", &pin]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("169.254.169.254 (the instance metadata service")
            && text.contains("--break-platform-access"),
        "{text}"
    );

    let after = status_json(&node.bpffs.pin_path());
    assert_eq!(after["policy_version"], before["policy_version"]);
    assert_eq!(after["rules"], before["rules"]);
    assert_eq!(node.send(INTERNET_V4.into(), 2), 2, "still enforcing");

    // Naming the risk applies it.
    let output = egress_monitor(&[
        "policy",
        "apply",
        &unsafe_policy,
        "--break-platform-access",
        "--pin-path",
        &pin,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_ne!(
        status_json(&node.bpffs.pin_path())["policy_version"],
        before["policy_version"]
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}

/// `check` passes on an enforcing node, fails when enforce is asked of an observing one, when
/// no program is attached, and when nothing is pinned.
#[test]
fn check_proves_isolation_and_fails_when_it_is_not_there() {
    let node = Node::new("check");
    let daemon = node.daemon(&["--mode", "enforce"]);
    let pin = node.pin();
    let before = status_json(&node.bpffs.pin_path());
    let output = egress_monitor(&[
        "check",
        "--mode",
        "enforce",
        "--accept-compat-syscalls",
        "--pin-path",
        &pin,
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(
        text.contains("OK: the node is isolated as configured"),
        "{text}"
    );
    assert!(text.contains("drop cgroup_egress 8.8.8.8"), "{text}");
    assert!(
        text.contains("pass tc_egress     169.254.169.254"),
        "{text}"
    );
    // The synthetic packets are judged, not counted.
    assert_eq!(
        status_json(&node.bpffs.pin_path())["counters"],
        before["counters"]
    );

    let observe = node.policy_file("observe.toml", "mode = \"observe\"\n");
    assert_eq!(
        egress_monitor(&["policy", "apply", &observe, "--pin-path", &pin])
            .status
            .code(),
        Some(0)
    );
    let output = egress_monitor(&["check", "--mode", "enforce", "--pin-path", &pin, "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["problems"][0], "the mode is observe, not enforce");
    assert!(
        report["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["actual"] == "pass")
    );

    // A program whose link is gone filters nothing.
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
    for link in std::fs::read_dir(PinLayout::new(&pin).links())
        .unwrap()
        .flatten()
    {
        std::fs::remove_file(link.path()).unwrap();
    }
    let output = egress_monitor(&["check", "--pin-path", &pin]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("PROBLEM: no program is attached"),
        "{}",
        stdout(&output)
    );

    assert_eq!(
        egress_monitor(&["detach", "--pin-path", &pin])
            .status
            .code(),
        Some(0)
    );
    let output = egress_monitor(&["check", "--pin-path", &pin]);
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("nothing is pinned at"),
        "{}",
        stderr(&output)
    );
}

/// `check` says what it proves: observe mode is not isolation (exit 1 unless asked
/// `--mode observe`); the policy's own deny rules and a sample of its allow rules are probed
/// with the verdicts the policy gives them; a cgroup whose raw-socket guards are gone is a
/// problem.
#[test]
fn check_says_what_it_proves() {
    let node = Node::new("checkproves");
    let policy = node.policy_file(
        "policy.toml",
        "mode = \"observe\"\n\
         [[rule]]\nname = \"mirror\"\ncidr = \"198.51.100.0/24\"\naction = \"allow\"\n\
         [[rule]]\nname = \"mirror-admin\"\ncidr = \"198.51.100.128/25\"\naction = \"deny\"\n\
         [[rule]]\nname = \"lab\"\ncidr = \"10.78.0.0/16\"\naction = \"deny\"\n",
    );
    let daemon = node.daemon(&["--policy", &policy]);
    let pin = node.pin();

    let output = egress_monitor(&["check", "--pin-path", &pin]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PROBLEM: observe mode counts and reports denied packets but drops none"),
        "{text}"
    );
    let output = egress_monitor(&[
        "check",
        "--mode",
        "observe",
        "--accept-compat-syscalls",
        "--pin-path",
        &pin,
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("it is not isolated"), "{text}");

    let applied = egress_monitor(&[
        "policy",
        "apply",
        &policy,
        "--pin-path",
        &pin,
        "--mode",
        "enforce",
    ]);
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    let output = egress_monitor(&[
        "check",
        "--accept-compat-syscalls",
        "--pin-path",
        &pin,
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let probe = |address: &str, program: &str| {
        report["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["destination"] == address && p["program"] == program)
            .unwrap_or_else(|| panic!("no probe of {address}: {report:#}"))
            .clone()
    };
    for program in ["cgroup_egress", "tc_egress"] {
        let admin = probe("198.51.100.129", program);
        assert_eq!(admin["stands_for"], "deny rule `mirror-admin`", "{admin}");
        assert_eq!(
            (admin["expected"].as_str(), admin["actual"].as_str()),
            (Some("drop"), Some("drop"))
        );
        assert_eq!(probe("10.78.0.1", program)["actual"], "drop");
        let mirror = probe("198.51.100.1", program);
        assert_eq!(mirror["stands_for"], "allow rule `mirror`", "{mirror}");
        assert_eq!(mirror["actual"], "pass");
    }
    let guards = report["raw_socket_guards"].as_array().unwrap();
    assert_eq!(guards.len(), 1, "{report:#}");
    assert_eq!(guards[0]["attached"], true);

    // 32-bit system calls skip the cgroup hooks: where this kernel has them, check says so
    // and fails unless the risk is accepted.
    let compat_on = egress_monitor::inspect::check::this_kernels_compat()
        != egress_monitor::inspect::check::Compat::Off;
    let output = egress_monitor(&["check", "--pin-path", &pin]);
    let text = stdout(&output);
    assert_eq!(
        (
            output.status.code(),
            text.contains("32-bit system calls are")
        ),
        (Some(if compat_on { 1 } else { 0 }), compat_on),
        "{text}"
    );

    // Without its guard link, the cgroup is a problem.
    let guard_link = std::fs::read_dir(PinLayout::new(&pin).links())
        .unwrap()
        .flatten()
        .find(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("optcgroup-")
        })
        .expect("the guard link is pinned");
    std::fs::remove_file(guard_link.path()).unwrap();
    let output = egress_monitor(&["check", "--pin-path", &pin]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the raw-socket guards are not attached"),
        "{text}"
    );
    assert!(text.contains(": MISSING"), "{text}");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}

/// Datagrams sent 1 ms apart across a replacement: several seconds' worth.
const PROBES: u32 = 6000;

/// State pinned by another build is replaced without a gap: the new programs attach first,
/// then the old ones go; afterwards the state is this build's.
#[test]
fn another_builds_state_is_replaced_without_a_gap() {
    let node = Node::new("replace");
    let (code, log) = node.daemon(&["--mode", "enforce"]).stop();
    assert_eq!(code, 0, "{log:#?}");
    // Pretend another build pinned it.
    let layout = PinLayout::new(node.bpffs.pin_path());
    let data = MapData::from_pin(layout.map(CONFIG)).unwrap();
    let mut array: Array<MapData, u64> = Array::try_from(Map::Array(data)).unwrap();
    array.set(config::BUILD_ID, &1, 0).unwrap();
    assert_eq!(status_json(&layout.root)["same_build"], false);

    // A probe runs across the whole replacement (loading the new programs takes seconds on
    // a busy 2-core machine): every datagram must be refused.
    let mut prober = client(&node.topology, Some(&node.cgroup));
    prober.interval = Some(Duration::from_millis(1));
    let probe =
        std::thread::spawn(move || prober.udp(INTERNET_V4.into(), UDP_PORT, PROBES, 10, false));
    std::thread::sleep(Duration::from_millis(100));
    let daemon = node.daemon(&["--mode", "enforce"]);
    assert!(
        !probe.is_finished(),
        "the replacement happened while the probe ran"
    );
    let probe = probe.join().unwrap().unwrap();
    assert_eq!(
        probe.eperm,
        u64::from(PROBES),
        "no probe got through during the replacement: {probe:?}"
    );
    assert_eq!(node.topology.peers.udp_received(INTERNET_V4.into()), 0);
    assert!(
        daemon
            .log
            .iter()
            .any(|l| l.contains("pinned by another build")),
        "{:#?}",
        daemon.log
    );
    assert_eq!(
        node.send(INTERNET_V4.into(), 2),
        2,
        "enforced by the new programs"
    );
    let status = status_json(&layout.root);
    assert_eq!(status["same_build"], true);
    // One cgroup, four links: egress verdicts, socket owners, DNS answers, raw-socket guards.
    assert_eq!(
        status["attached"].as_array().unwrap().len(),
        4,
        "the old link is gone: {status}"
    );
    assert!(!Path::new(&layout.root.join("replacing")).exists());
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}

/// Datagrams sent 1 ms apart across a swap of bigger maps (the new programs' load and 5,000
/// rules take seconds on a busy 2-core machine).
const SWAP_PROBES: u32 = 15_000;

/// A policy larger than the live maps is taken without a gap: the daemon (maps of 4,096 rule
/// slots) gets 5,000 rules on SIGHUP and swaps in bigger maps while two probes run — every
/// datagram to the internet is refused throughout, every one to the private peer passes — and
/// an address learned from DNS before the swap stays allowed after it. A restart asking for a
/// bigger `--rule-capacity` swaps the same way; `policy apply` of a bigger policy while the
/// daemon runs has the daemon do it.
#[test]
fn bigger_policies_swap_in_bigger_maps_without_a_gap() {
    let node = Node::new("grow");
    let base = format!(
        "mode = \"enforce\"\n\
         [[rule]]\nname = \"allowed-test\"\ndomain = \"*.allowed.test\"\naction = \"allow\"\n\n\
         {}",
        crate::dns::trust_the_test_resolver(&node)
    );
    let policy = node.policy_file("policy.toml", &base);
    let _resolver = DnsServer::start(
        &node.topology.net,
        PRIVATE_V4.into(),
        vec![Record::new("api.allowed.test", INTERNET_V6, 600)],
    )
    .unwrap();
    let mut daemon = node.daemon(&["--policy", &policy]);
    let rules_before = status_json(&node.bpffs.pin_path())["rules"]
        .as_u64()
        .unwrap();
    let resolved = client(&node.topology, Some(&node.cgroup))
        .resolve(PRIVATE_V4.into(), "api.allowed.test", "aaaa", false)
        .unwrap();
    assert_eq!(resolved.replies, 1, "{resolved:?}");

    // 5,000 deny rules inside 100.64.0.0/10 (nothing is sent there): more than 4,096 slots.
    let mut big = base.clone();
    for i in 0..5000u32 {
        let [_, _, c, d] = (i + 256).to_be_bytes();
        big.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\ncidr = \"100.{}.{c}.{d}/32\"\naction = \"deny\"\n",
            64 + i / 65536
        ));
    }
    std::fs::write(&policy, &big).unwrap();
    let probes = |dst: IpAddr| {
        let mut prober = client(&node.topology, Some(&node.cgroup));
        prober.interval = Some(Duration::from_millis(1));
        std::thread::spawn(move || prober.udp(dst, UDP_PORT, SWAP_PROBES, 10, false))
    };
    let denied = probes(INTERNET_V4.into());
    let allowed = probes(PRIVATE_V4.into());
    std::thread::sleep(Duration::from_millis(200));
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_for("rule slots", Duration::from_secs(60));
    assert!(line.contains("the maps grew from 4096 to "), "{line}");
    assert!(
        !denied.is_finished(),
        "the swap happened while the probes ran"
    );
    let denied = denied.join().unwrap().unwrap();
    let allowed = allowed.join().unwrap().unwrap();
    assert_eq!(
        denied.eperm,
        u64::from(SWAP_PROBES),
        "nothing leaked: {denied:?}"
    );
    assert_eq!(
        allowed.ok,
        u64::from(SWAP_PROBES),
        "nothing allowed was lost: {allowed:?}"
    );
    assert_eq!(
        node.topology.peers.udp_received(INTERNET_V4.into()),
        0,
        "none arrived"
    );
    let status = status_json(&node.bpffs.pin_path());
    assert_eq!(
        status["rules"].as_u64().unwrap(),
        rules_before + 5000,
        "{status}"
    );
    assert_eq!(
        status["attached"].as_array().unwrap().len(),
        4,
        "old links gone: {status}"
    );
    assert!(
        node.send(INTERNET_V6.into(), 1) == 0,
        "the address learned before the swap is still allowed"
    );
    assert_eq!(node.topology.peers.udp_received(INTERNET_V6.into()), 1);
    assert_eq!(
        node.send("100.64.1.0".parse().unwrap(), 1),
        1,
        "a new rule holds"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");

    // A restart asking for more slots swaps too, and keeps what was learned.
    let mut daemon = node.daemon(&["--policy", &policy, "--rule-capacity", "30000"]);
    assert!(
        daemon
            .log
            .iter()
            .any(|l| l.contains("rule slots, 30000 are asked for")),
        "{:#?}",
        daemon.log
    );
    assert_eq!(node.send(INTERNET_V6.into(), 1), 0, "still learned");
    assert_eq!(node.send(INTERNET_V4.into(), 1), 1, "still denied");

    // `policy apply` of a policy bigger still: the running daemon does the swap.
    let mut bigger = big.clone();
    for i in 0..31000u32 {
        let [_, b, c, d] = (i + 8192).to_be_bytes();
        bigger.push_str(&format!(
            "[[rule]]\nname = \"s{i}\"\ncidr = \"100.{}.{c}.{d}/32\"\naction = \"deny\"\n",
            64 + u32::from(b)
        ));
    }
    let bigger_file = node.policy_file("bigger.toml", &bigger);
    let output = egress_monitor(&["policy", "apply", &bigger_file, "--pin-path", &node.pin()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("applied by the daemon"),
        "{}",
        stdout(&output)
    );
    daemon.wait_for("rule slots", Duration::from_secs(60));
    assert_eq!(
        node.send(INTERNET_V6.into(), 1),
        0,
        "still learned after the second swap"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}
