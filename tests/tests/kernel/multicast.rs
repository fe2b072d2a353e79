//! Multicast by scope: the default policy lets multicast that stays near the node out and keeps
//! global-scope multicast in; the `multicast` group opts in to all of it.
//!
//! Every datagram leaves the node namespace only towards the test's own peer namespace (the
//! node's routes all lead over the veth pair), so nothing reaches a real network.

use std::{net::IpAddr, time::Duration};

use egress_monitor_tests::netns::UDP_PORT;

use crate::{Node, client};

const N: u32 = 3;

/// Link-local and organisation-local groups, allowed by the `private` group.
const NEAR: [&str; 4] = [
    "224.0.0.251",     // mDNS, the Local Network Control Block (RFC 5771)
    "239.255.255.250", // SSDP, IPv4 local scope (RFC 2365)
    "ff02::fb",        // mDNS, IPv6 link-local scope
    "ff05::1:3",       // DHCPv6 servers, IPv6 site-local scope
];

/// Global-scope groups: denied unless the policy opts in.
const GLOBAL: [&str; 2] = [
    "233.252.0.1", // MCAST-TEST-NET (RFC 6676)
    "ff0e::db8:1", // IPv6 global scope
];

/// Sends `N` datagrams to `dst` from the node's cgroup and returns (accepted, refused with
/// EPERM); a datagram that fails otherwise (no route, say) fails the test.
fn send(node: &Node, dst: &str) -> (u64, u64) {
    let dst: IpAddr = dst.parse().unwrap();
    let outcome = client(&node.topology, Some(&node.cgroup))
        .udp(dst, UDP_PORT, N, 16, false)
        .unwrap();
    assert_eq!(outcome.failed, 0, "{dst}: {outcome:?}");
    (outcome.ok, outcome.eperm)
}

/// In enforce mode with the cgroup hook, global-scope multicast is refused (EPERM) and
/// link-local / admin-scoped multicast passes; with `[groups] multicast = true` (applied live
/// by SIGHUP) the global groups pass too.
#[test]
fn global_multicast_is_denied_unless_the_policy_opts_in() {
    let node = Node::new("mcast");
    let policy = node.policy_file("policy.toml", "mode = \"enforce\"\n");
    let mut daemon = node.daemon(&["--policy", &policy]);

    for dst in NEAR {
        assert_eq!(send(&node, dst), (u64::from(N), 0), "{dst} is allowed");
    }
    for dst in GLOBAL {
        assert_eq!(send(&node, dst), (0, u64::from(N)), "{dst} is denied");
    }

    std::fs::write(&policy, "mode = \"enforce\"\n[groups]\nmulticast = true\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("2 inserted, 0 updated, 0 removed", Duration::from_secs(10));
    for dst in NEAR.iter().chain(&GLOBAL) {
        assert_eq!(
            send(&node, dst),
            (u64::from(N), 0),
            "{dst} is allowed with multicast = true"
        );
    }
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}
