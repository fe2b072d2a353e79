//! No way around it: the ways past the hooks an unprivileged attacker tried, each witnessed at
//! the far end (a packet socket on the peer's end of the veth sees every frame that arrives).
//!
//! - Packet sockets with `PACKET_QDISC_BYPASS` (plain `sendto`, `sendmmsg`, a `PACKET_TX_RING`)
//!   and AF_XDP TX rings, from a process with CAP_NET_RAW alone.
//! - Source routes: an IPv4 loose source route and an IPv6 segment routing header, set by an
//!   process with CAP_NET_RAW alone (IPv4 options need it, the IPv6 header nothing), whose
//!   first hop is private and whose end is on the internet.
//! - The old check mark: a process that can set `SO_MARK` is still counted and reported.

use std::net::IpAddr;

use egress_monitor::events::{self, KernelRecord};
use egress_monitor_common::verdict::outcome;
use egress_monitor_policy::{CommandLineRules, Mode, Policy};
use egress_monitor_tests::netns::{
    INTERNET_V4, INTERNET_V6, NODE_IF, PRIVATE_V4, PRIVATE_V6, UDP_PORT,
};

use crate::{Fixture, Hook};

/// Whether `frame` is an Ethernet frame carrying an IP packet to `dst`.
fn to(frame: &[u8], dst: IpAddr) -> bool {
    match etherparse::SlicedPacket::from_ethernet(frame).map(|packet| packet.net) {
        Ok(Some(etherparse::NetSlice::Ipv4(ip))) => {
            IpAddr::V4(ip.header().destination_addr()) == dst
        }
        Ok(Some(etherparse::NetSlice::Ipv6(ip))) => {
            IpAddr::V6(ip.header().destination_addr()) == dst
        }
        _ => false,
    }
}

/// Whether `frame` carries an IPv4 packet with options or an IPv6 packet with a routing header
/// (next header 43) right after the fixed header.
fn source_routed(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.get(14).is_some_and(|byte| byte & 0x0f > 5),
        Some([0x86, 0xdd]) => frame.get(14 + 6) == Some(&43),
        _ => false,
    }
}

/// With both hooks in enforce mode, a process with only CAP_NET_RAW sends to internet addresses
/// through packet sockets every way it can: the bypass option is refused with EPERM (an event
/// names the process), the frames go through the TC hook instead, and none arrives. Frames to
/// the private peer still arrive the same ways, and AF_XDP gets no TX ring.
#[test]
fn packet_sockets_cannot_skip_the_tc_hook() {
    let mut fx = Fixture::new(Hook::Both, Mode::Enforce, &[]);
    let tap = fx.topology.tap().unwrap();
    let mac = fx.topology.peer_mac().unwrap();
    let mut attacker = fx.client(None);
    attacker.net_raw_only = true;
    let modes = ["plain", "bypass", "mmsg", "txring"];
    for dst in [IpAddr::V4(INTERNET_V4), IpAddr::V6(INTERNET_V6)] {
        for mode in modes {
            let outcome = attacker.l2(NODE_IF, &mac, dst, UDP_PORT, mode, 4).unwrap();
            // The bypass is refused; the frames then meet TC, which drops them (the sender
            // sees ENOBUFS, counted as `failed`).
            let refused = u64::from(mode != "plain");
            assert_eq!(outcome.eperm, refused, "{dst} {mode}: {outcome:?}");
            assert_eq!(outcome.ok, 0, "{dst} {mode}: {outcome:?}");
            assert!(outcome.failed > 0, "{dst} {mode}: {outcome:?}");
        }
        assert_eq!(
            tap.frames_matching(|frame| to(frame, dst)),
            0,
            "no frame to {dst} arrived"
        );
    }
    // The same ways to the private peer: allowed at TC, so they arrive.
    for mode in modes {
        let outcome = attacker
            .l2(NODE_IF, &mac, PRIVATE_V4.into(), UDP_PORT, mode, 2)
            .unwrap();
        assert!(outcome.ok > 0, "{mode}: {outcome:?}");
    }
    let arrived = tap.frames_matching(|frame| to(frame, PRIVATE_V4.into()));
    assert!(arrived >= 2 * modes.len(), "{arrived} frames to the peer");

    let xdp = attacker.xdp_tx_ring().unwrap();
    assert_eq!((xdp.ok, xdp.eperm), (0, 1), "AF_XDP TX ring: {xdp:?}");

    // Every refusal is an event naming the process: 3 bypass attempts for each family and for
    // the peer, 1 XDP ring.
    let guards: Vec<events::GuardRecord> = fx
        .records(10)
        .iter()
        .filter_map(|record| match record {
            KernelRecord::Guard(event) => {
                Some(events::GuardRecord::new(event, &events::Clock::now()).expect("valid record"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(guards.len(), 10, "{guards:#?}");
    assert_eq!(
        guards
            .iter()
            .filter(|g| g.option == "PACKET_QDISC_BYPASS")
            .count(),
        9
    );
    for guard in &guards {
        assert_eq!(guard.action.as_str(), "dropped");
        assert_eq!(guard.errno, Some("EPERM"));
        assert_eq!(guard.comm, "em-testclient");
        assert_eq!(guard.uid, 65534, "{guard:?}");
        assert_eq!(guard.cgroup_id, fx.cgroup.id());
    }
    assert_eq!(fx.datapath.counters().unwrap().raw_guard_hits, 10);
}

/// A cgroup the policy exempts (`[raw_sockets] allow_cgroups`) may set the bypass: its frames
/// then skip TC, which is why the exemption is explicit and scoped to one cgroup. In observe
/// mode nobody is refused, and the guard still reports.
#[test]
fn the_raw_socket_guards_are_scoped_and_observable() {
    let fx = Fixture::with_policy(Hook::Both, |_, cgroup| {
        let mut policy =
            Policy::build(None, &CommandLineRules::default(), Some(Mode::Enforce)).unwrap();
        policy.raw_sockets.allow_cgroups = vec![cgroup.path.clone()];
        policy
    });
    let tap = fx.topology.tap().unwrap();
    let mac = fx.topology.peer_mac().unwrap();
    let mut exempt = fx.client(None);
    exempt.net_raw_only = true;
    let outcome = exempt
        .l2(NODE_IF, &mac, INTERNET_V4.into(), UDP_PORT, "bypass", 3)
        .unwrap();
    assert_eq!((outcome.ok, outcome.eperm), (3, 0), "{outcome:?}");
    assert_eq!(
        tap.frames_matching(|frame| to(frame, INTERNET_V4.into())),
        3,
        "an exempt cgroup's bypassing frames skip TC"
    );
    assert_eq!(fx.datapath.counters().unwrap().raw_guard_hits, 0);

    let mut fx = Fixture::new(Hook::Both, Mode::Observe, &[]);
    let mut attacker = fx.client(None);
    attacker.net_raw_only = true;
    let outcome = attacker.xdp_tx_ring().unwrap();
    assert_eq!(
        (outcome.ok, outcome.eperm),
        (1, 0),
        "observe mode refuses nothing"
    );
    let reported: Vec<KernelRecord> = fx
        .records(1)
        .into_iter()
        .filter(|record| matches!(record, KernelRecord::Guard(_)))
        .collect();
    match reported.as_slice() {
        [KernelRecord::Guard(event)] => {
            assert_eq!(u32::from(event.outcome), outcome::DENIED_OBSERVED)
        }
        other => panic!("one observed guard event, got {other:?}"),
    }
}

/// A datagram whose IP destination is the private peer but whose source route (IPv4 LSRR) or
/// segment routing header (IPv6), set by a process with CAP_NET_RAW alone, ends on the
/// internet is denied on either hook: refused with
/// EPERM by the cgroup hook, dropped by TC, and none arrives. The same datagram without the
/// route arrives.
#[test]
fn a_source_route_is_judged_by_where_it_ends() {
    for hook in [Hook::Cgroup, Hook::Tc] {
        let fx = Fixture::new(hook, Mode::Enforce, &[]);
        let tap = fx.topology.tap().unwrap();
        let mut unprivileged = fx.client(None);
        unprivileged.net_raw_only = true;
        for (dst, hop) in [
            (IpAddr::V4(INTERNET_V4), IpAddr::V4(PRIVATE_V4)),
            (IpAddr::V6(INTERNET_V6), IpAddr::V6(PRIVATE_V6)),
        ] {
            let outcome = unprivileged.source_route(dst, hop, UDP_PORT).unwrap();
            let refused = u64::from(hook == Hook::Cgroup);
            assert_eq!(
                outcome.eperm, refused,
                "{hook:?} {dst} via {hop}: {outcome:?}"
            );
            assert_eq!(outcome.eperm + outcome.ok, 1, "{outcome:?}");
        }
        assert_eq!(
            tap.frames_matching(source_routed),
            0,
            "{hook:?}: no source-routed packet left"
        );
        let counters = fx.datapath.counters().unwrap();
        assert_eq!(counters.source_routed, 2, "{hook:?}: {counters:?}");
        let plain = unprivileged
            .udp(PRIVATE_V4.into(), UDP_PORT, 1, 8, false)
            .unwrap();
        assert_eq!(plain.ok, 1, "{hook:?}: {plain:?}");
        assert_eq!(fx.topology.peers.udp_received(PRIVATE_V4.into()), 1);
    }
}

/// The mark that used to tell `check`'s packets apart: a process that sets it (with
/// CAP_NET_ADMIN) is counted and reported like any other.
#[test]
fn a_mark_hides_nothing_from_the_audit() {
    const OLD_CHECK_MARK: u32 = 0x454d_434b;
    let mut fx = Fixture::new(Hook::Both, Mode::Observe, &[]);
    let mut marked = fx.client(None);
    marked.mark = Some(OLD_CHECK_MARK);
    let outcome = marked
        .udp(INTERNET_V4.into(), UDP_PORT, 3, 8, false)
        .unwrap();
    assert_eq!(outcome.ok, 3);
    // Both hooks judged them; one decision each, the cgroup hook's.
    let counters = fx.datapath.counters().unwrap();
    assert_eq!(counters.cgroup.denied_observed.packets, 3, "{counters:?}");
    assert_eq!(counters.judged_by_cgroup, 3, "{counters:?}");
    let reported = fx
        .events(1)
        .iter()
        .filter(|event| event.dst == Some(IpAddr::V4(INTERNET_V4)))
        .count();
    assert!(reported >= 1, "the marked packets are reported");

    // Frames the same process writes to a packet socket, to the same destination, meet TC
    // alone: TC counts and reports them as its own (the datagrams above do not hide them).
    let mac = fx.topology.peer_mac().unwrap();
    let mut raw = fx.client(None);
    raw.net_raw_only = true;
    let outcome = raw
        .l2(NODE_IF, &mac, INTERNET_V4.into(), UDP_PORT, "plain", 2)
        .unwrap();
    assert_eq!(outcome.ok, 2, "{outcome:?}");
    let counters = fx.datapath.counters().unwrap();
    assert_eq!(counters.tc.denied_observed.packets, 2, "{counters:?}");
    assert_eq!(counters.judged_by_cgroup, 3, "{counters:?}");
    let from_tc = fx
        .events(2)
        .iter()
        .filter(|event| event.hook.as_str() == "tc" && event.dst == Some(IpAddr::V4(INTERNET_V4)))
        .count();
    assert!(from_tc >= 1, "TC reports the packet socket's frames");
}
