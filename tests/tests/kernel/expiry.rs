//! Time-bounded exceptions: a rule with `expires` stops applying at that time in the kernel,
//! with no reload and no daemon, and its prefix is then judged by the next shorter rule.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use egress_monitor::inspect::status;
use egress_monitor_api::time::{now_ms, rfc3339};
use egress_monitor_policy::{CommandLineRules, Policy, PolicyFile};
use egress_monitor_tests::netns::{INTERNET_V4, LAB_V4, UDP_PORT};

use crate::{Fixture, Hook};

/// The lab peer, 10.78.0.1: inside the private group's 10.0.0.0/8 and the expiring deny
/// carved out of it.
const CARVED: Ipv4Addr = LAB_V4;

#[test]
fn an_exception_expires_in_the_kernel_on_time() {
    let ends = now_ms() + 8_000;
    let text = format!(
        r#"mode = "enforce"

[[rule]]
name = "temporary-vendor"
cidr = "203.0.113.0/24"
action = "allow"
expires = "{ends}"

[[rule]]
name = "until-audited"
cidr = "10.78.0.0/16"
action = "deny"
expires = "{ends}"

[[rule]]
name = "long-gone"
cidr = "192.0.2.0/24"
action = "allow"
expires = "2020-01-01T00:00:00Z"
"#,
        ends = rfc3339(ends)
    );
    let file = PolicyFile::parse(Path::new("policy.toml"), &text).expect("valid policy");
    let policy = Policy::build(Some(&file), &CommandLineRules::default(), None).unwrap();
    let mut fx = Fixture::with_policy(Hook::Both, |_, _| policy);
    let client = fx.client(None);
    let send = |dst: Ipv4Addr| {
        let outcome = client.udp(dst.into(), UDP_PORT, 2, 8, false).unwrap();
        assert_eq!(outcome.ok + outcome.eperm, 2, "{dst}: {outcome:?}");
        outcome.ok
    };
    // Before: the exception allows, the carve-out denies, the long-expired rule is gone.
    assert_eq!(send(INTERNET_V4), 2, "allowed until it expires");
    assert_eq!(send(CARVED), 0, "denied by the carve-out until it expires");
    assert_eq!(
        send(Ipv4Addr::new(192, 0, 2, 1)),
        0,
        "expired before it was applied"
    );
    let before = fx.events(2);
    let rules: Vec<&str> = before.iter().map(|e| e.rule.as_str()).collect();
    assert!(
        rules.contains(&"until-audited") && rules.contains(&"default"),
        "{rules:?}"
    );
    assert_eq!(fx.topology.peers.udp_received(INTERNET_V4.into()), 2);

    let layout = fx.bpffs.layout();
    let shown = status::status(&layout).unwrap();
    let names: Vec<&str> = shown.expiring.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names[0], "long-gone", "soonest first: {names:?}");
    assert!(shown.expiring[0].expires_in_s < 0.0);
    assert!(shown.expiring[1].expires_in_s > 0.0);

    // After: nothing is applied again, no daemon runs; the kernel's clock ends both.
    let wait = Duration::from_millis(ends.saturating_sub(now_ms()) + 300);
    assert!(wait < Duration::from_secs(10), "{wait:?}");
    std::thread::sleep(wait);
    let started = Instant::now();
    assert_eq!(send(INTERNET_V4), 0, "the exception ended");
    assert_eq!(send(CARVED), 2, "the carve-out ended: 10.0.0.0/8 allows");
    assert!(started.elapsed() < Duration::from_secs(5));
    let after = fx.events(1);
    assert!(
        after
            .iter()
            .any(|e| e.dst == Some(IpAddr::V4(INTERNET_V4)) && e.rule == "default"),
        "{after:#?}"
    );
    assert_eq!(fx.topology.peers.udp_received(INTERNET_V4.into()), 0);
    assert_eq!(fx.topology.peers.udp_received(CARVED.into()), 2);
    let hits = fx.datapath.rule_hits().unwrap();
    let carve_out = crate::rule_id(&fx.names, "until-audited");
    assert_eq!(hits[carve_out], 2, "no hits after it ended");
}
