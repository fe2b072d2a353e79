//! The datapath through the library: every hook × mode × family × protocol, with exact counts.

use std::net::IpAddr;

use egress_monitor::{datapath::Totals, events::Proto};
use egress_monitor_policy::{CommandLineRules, Mode, Policy};
use egress_monitor_tests::netns::{
    INTERNET_V4, INTERNET_V6, LAB_V4, NODE_V4, NODE_V6, PRIVATE_V4, PRIVATE_V6, TCP_PORT, UDP_PORT,
};

use egress_monitor_tests::netns::NODE_IF;

use crate::{Fixture, Hook, rule_id, to};

const N: u32 = 5;
const PAYLOAD: usize = 100;
const NOBODY: u32 = 65534;
const INTERNET: [IpAddr; 2] = [IpAddr::V4(INTERNET_V4), IpAddr::V6(INTERNET_V6)];
const PRIVATE: [IpAddr; 2] = [IpAddr::V4(PRIVATE_V4), IpAddr::V6(PRIVATE_V6)];

/// IP packet length of one test datagram.
fn udp_len(dst: IpAddr, payload: usize) -> u64 {
    let ip_header = if dst.is_ipv4() { 20 } else { 40 };
    (ip_header + 8 + payload) as u64
}

fn delta(after: Totals, before: Totals) -> Totals {
    Totals {
        packets: after.packets - before.packets,
        bytes: after.bytes - before.bytes,
    }
}

/// UDP: N datagrams to each internet and private peer, v4 and v6. Counters move by exactly
/// what was sent; every denied datagram has an event with every field right.
fn udp_phase(fx: &mut Fixture, hook: Hook, mode: Mode) {
    let before = fx.counters(hook);
    let client = fx.client(Some(NOBODY));
    let mut src_ports = Vec::new();
    for dst in INTERNET {
        let outcome = client.udp(dst, UDP_PORT, N, PAYLOAD, false).unwrap();
        match (hook, mode) {
            // cgroup_skb drops make the sender's sendmsg fail with EPERM.
            (Hook::Cgroup, Mode::Enforce) => assert_eq!(outcome.eperm, u64::from(N), "{dst}"),
            // TC drops are silent; observe passes everything.
            _ => assert_eq!(outcome.ok, u64::from(N), "{dst}: {outcome:?}"),
        }
        src_ports.push((dst, outcome.src_port, outcome.pid));
    }
    for dst in PRIVATE {
        let outcome = client.udp(dst, UDP_PORT, N, PAYLOAD, false).unwrap();
        assert_eq!(
            outcome.ok,
            u64::from(N),
            "private {dst} must pass: {outcome:?}"
        );
    }

    for dst in PRIVATE {
        assert_eq!(
            fx.topology.peers.udp_received(dst),
            N as usize,
            "private {dst}"
        );
    }
    let expected_internet = if mode == Mode::Enforce { 0 } else { N as usize };
    for dst in INTERNET {
        assert_eq!(
            fx.topology.peers.udp_received(dst),
            expected_internet,
            "internet {dst}"
        );
    }

    let after = fx.counters(hook);
    let denied_bytes: u64 = INTERNET
        .iter()
        .map(|d| udp_len(*d, PAYLOAD) * u64::from(N))
        .sum();
    let denied = Totals {
        packets: 2 * u64::from(N),
        bytes: denied_bytes,
    };
    let (hit, untouched) = match mode {
        Mode::Enforce => (
            delta(after.denied_dropped, before.denied_dropped),
            delta(after.denied_observed, before.denied_observed),
        ),
        Mode::Observe => (
            delta(after.denied_observed, before.denied_observed),
            delta(after.denied_dropped, before.denied_dropped),
        ),
    };
    assert_eq!(hit, denied, "denied counter for {hook:?} {mode:?}");
    assert_eq!(untouched, Totals::default());
    let allowed = delta(after.allowed, before.allowed);
    let allowed_bytes: u64 = PRIVATE
        .iter()
        .map(|d| udp_len(*d, PAYLOAD) * u64::from(N))
        .sum();
    if hook == Hook::Cgroup {
        // The cgroup hook sees only the client's sockets: exactly what it sent.
        assert_eq!(
            allowed,
            Totals {
                packets: 2 * u64::from(N),
                bytes: allowed_bytes
            }
        );
    } else {
        // TC also sees the kernel's own neighbour discovery, which is allowed.
        assert!(
            allowed.packets >= 2 * u64::from(N) && allowed.bytes >= allowed_bytes,
            "{allowed:?}"
        );
    }

    let records = fx.events(2 * N as usize);
    assert_eq!(
        records.len(),
        2 * N as usize,
        "one event per denied datagram: {records:#?}"
    );
    let ifindex = fx.topology.node_ifindex().unwrap();
    for (dst, src_port, pid) in src_ports {
        let events = to(&records, dst);
        assert_eq!(events.len(), N as usize, "{dst}");
        for event in events {
            let src: IpAddr = if dst.is_ipv4() {
                NODE_V4.into()
            } else {
                NODE_V6.into()
            };
            assert_eq!(event.src, Some(src));
            assert_eq!(
                (event.kind.as_str(), event.packets),
                ("packet", 1),
                "aggregation is off until a daemon turns it on"
            );
            assert_eq!(event.proto, Proto::Name("udp"));
            assert_eq!(event.src_port, Some(src_port));
            assert_eq!(event.dst_port, Some(UDP_PORT));
            assert_eq!(event.len.map(u64::from), Some(udp_len(dst, PAYLOAD)));
            assert_eq!(event.rule, "default");
            assert_eq!(
                event.action.as_str(),
                if mode == Mode::Enforce {
                    "dropped"
                } else {
                    "observed"
                }
            );
            assert!(!event.fragment && !event.malformed);
            match hook {
                Hook::Cgroup => {
                    assert_eq!(event.hook.as_str(), "cgroup");
                    // The socket's creator, recorded by the sock_create program.
                    assert_eq!(event.pid, Some(pid), "{event:?}");
                    assert_eq!(event.comm.as_deref(), Some("em-testclient"));
                    assert_eq!(event.uid, Some(NOBODY));
                    assert_eq!(event.cgroup_id, Some(fx.cgroup.id()));
                    assert_eq!(event.ifindex, None);
                }
                _ => {
                    assert_eq!(event.hook.as_str(), "tc");
                    // TC alone records no socket owners: honestly unknown.
                    assert_eq!((event.pid, event.comm.as_deref()), (None, None));
                    assert_eq!(event.ifindex, Some(ifindex));
                    assert_eq!((event.uid, event.cgroup_id), (None, None));
                }
            }
        }
    }
}

/// TCP: a connection to each peer. Internet ones fail in enforce mode and succeed in observe
/// mode; every denied segment is reported with its ports.
fn tcp_phase(fx: &mut Fixture, mode: Mode) {
    let client = fx.client(None);
    for dst in PRIVATE {
        let outcome = client.tcp(dst, TCP_PORT, 2000).unwrap();
        assert_eq!(
            outcome.replies, 1,
            "private {dst} must connect: {outcome:?}"
        );
    }
    for dst in INTERNET {
        let outcome = client.tcp(dst, TCP_PORT, 1000).unwrap();
        let connected = outcome.replies == 1;
        assert_eq!(
            connected,
            mode == Mode::Observe,
            "internet {dst}: {outcome:?}"
        );
    }
    let records = fx.events(2);
    for dst in INTERNET {
        let events = to(&records, dst);
        assert!(!events.is_empty(), "no TCP event for {dst}");
        for event in events {
            assert_eq!(event.proto, Proto::Name("tcp"));
            assert_eq!(event.dst_port, Some(TCP_PORT));
            assert!(event.src_port.is_some_and(|p| p != 0));
        }
    }
    assert!(
        records
            .iter()
            .all(|r| r.dst.is_some_and(|dst| !PRIVATE.contains(&dst))),
        "allowed traffic has no events"
    );
}

/// ICMP echo: replies from private peers always, from internet peers only in observe mode.
fn ping_phase(fx: &mut Fixture, mode: Mode) {
    const PINGS: u32 = 3;
    let client = fx.client(None);
    for dst in PRIVATE {
        assert_eq!(
            client.ping(dst, PINGS).unwrap().replies,
            u64::from(PINGS),
            "private {dst}"
        );
    }
    let mut pids = Vec::new();
    for dst in INTERNET {
        let outcome = client.ping(dst, PINGS).unwrap();
        pids.push(outcome.pid);
        let expected = if mode == Mode::Observe {
            u64::from(PINGS)
        } else {
            0
        };
        assert_eq!(outcome.replies, expected, "internet {dst}: {outcome:?}");
    }
    let records = fx.events(2 * PINGS as usize);
    for event in records.iter().filter(|e| e.hook.as_str() == "cgroup") {
        // Raw sockets are attributed too.
        assert!(
            event.pid.is_some_and(|pid| pids.contains(&pid)),
            "{event:?}"
        );
    }
    for (dst, proto) in [(INTERNET[0], "icmp"), (INTERNET[1], "icmpv6")] {
        let events = to(&records, dst);
        assert_eq!(events.len(), PINGS as usize, "{dst}: {records:#?}");
        for event in events {
            assert_eq!(event.proto, Proto::Name(proto));
            assert_eq!((event.src_port, event.dst_port), (None, None));
        }
    }
}

fn matrix(hook: Hook, mode: Mode) {
    let mut fx = Fixture::new(hook, mode, &[]);
    udp_phase(&mut fx, hook, mode);
    tcp_phase(&mut fx, mode);
    ping_phase(&mut fx, mode);
}

#[test]
fn cgroup_enforce_blocks_the_internet_and_passes_private_peers() {
    matrix(Hook::Cgroup, Mode::Enforce);
}

#[test]
fn cgroup_observe_passes_everything_and_reports_each_denied_packet() {
    matrix(Hook::Cgroup, Mode::Observe);
}

#[test]
fn tc_enforce_blocks_the_internet_and_passes_private_peers() {
    matrix(Hook::Tc, Mode::Enforce);
}

#[test]
fn tc_observe_passes_everything_and_reports_each_denied_packet() {
    matrix(Hook::Tc, Mode::Observe);
}

/// `deny 10.78.0.0/24` inside the allowed 10.0.0.0/8: the longest prefix wins, on both hooks.
#[test]
fn a_deny_rule_inside_an_allowed_range_wins() {
    for hook in [Hook::Cgroup, Hook::Tc] {
        let mut fx = Fixture::new(hook, Mode::Enforce, &["10.78.0.0/24"]);
        let client = fx.client(None);
        client
            .udp(LAB_V4.into(), UDP_PORT, N, PAYLOAD, false)
            .unwrap();
        client
            .udp(PRIVATE_V4.into(), UDP_PORT, N, PAYLOAD, false)
            .unwrap();
        assert_eq!(fx.topology.peers.udp_received(LAB_V4.into()), 0, "{hook:?}");
        assert_eq!(
            fx.topology.peers.udp_received(PRIVATE_V4.into()),
            N as usize,
            "{hook:?}"
        );
        let deny_id = rule_id(&fx.names, "cli-deny");
        let hits = fx.datapath.rule_hits().unwrap();
        assert_eq!(hits[deny_id], u64::from(N), "{hook:?}: per-rule hits");
        let ten_slash_eight = fx
            .names
            .rules
            .iter()
            .find(|r| r.cidr == "10.0.0.0/8")
            .unwrap()
            .id as usize;
        assert!(
            hits[ten_slash_eight] >= u64::from(N),
            "{hook:?}: the /8 matched the private peer"
        );
        let records = fx.events(N as usize);
        let lab = to(&records, LAB_V4.into());
        assert_eq!(lab.len(), N as usize, "{hook:?}");
        assert!(
            lab.iter()
                .all(|e| e.rule == "cli-deny" && e.action.as_str() == "dropped")
        );
    }
}

/// Fragments and IPv6 extension headers still get a verdict from their destination: the cgroup
/// hook sees each datagram whole, TC every fragment, and only first fragments have ports. With
/// both hooks a datagram is one decision: the cgroup hook reports it, TC leaves its fragments
/// to it (counted as judged by the cgroup hook, not again as denied).
#[test]
fn fragments_and_extension_headers_get_verdicts() {
    const BIG: usize = 3000;
    const DATAGRAMS: u32 = 2;
    // TC alone sees every fragment.
    let mut fx = Fixture::new(Hook::Tc, Mode::Observe, &[]);
    let client = fx.client(None);
    for dst in INTERNET {
        client.udp(dst, UDP_PORT, DATAGRAMS, BIG, false).unwrap();
        assert_eq!(fx.topology.peers.udp_received(dst), DATAGRAMS as usize);
    }
    // 3000 bytes of payload over a 1500-byte MTU: 3 fragments per datagram in either family.
    let records = fx.events(2 * DATAGRAMS as usize * 3);
    for dst in INTERNET {
        let fragments: Vec<_> = to(&records, dst);
        assert_eq!(
            fragments.len(),
            3 * DATAGRAMS as usize,
            "{dst}: TC sees every fragment"
        );
        assert!(
            fragments
                .iter()
                .all(|e| e.hook.as_str() == "tc" && e.fragment && e.proto == Proto::Name("udp"))
        );
        let with_ports = fragments
            .iter()
            .filter(|e| e.dst_port == Some(UDP_PORT))
            .count();
        assert_eq!(
            with_ports, DATAGRAMS as usize,
            "{dst}: only first fragments carry ports"
        );
        let on_the_wire: u64 = fragments.iter().map(|e| e.bytes).sum();
        assert!(
            on_the_wire > udp_len(dst, BIG) * u64::from(DATAGRAMS),
            "{dst}: {on_the_wire}"
        );
    }

    // Both hooks at once, observe: every datagram reaches the peer and is reported once, whole.
    let mut fx = Fixture::new(Hook::Both, Mode::Observe, &[]);
    let client = fx.client(None);
    for dst in INTERNET {
        client.udp(dst, UDP_PORT, DATAGRAMS, BIG, false).unwrap();
        assert_eq!(
            fx.topology.peers.udp_received(dst),
            DATAGRAMS as usize,
            "{dst}"
        );
    }
    let records = fx.events(2 * DATAGRAMS as usize);
    assert_eq!(records.len(), 2 * DATAGRAMS as usize, "{records:#?}");
    for dst in INTERNET {
        let whole = to(&records, dst);
        assert_eq!(whole.len(), DATAGRAMS as usize, "{dst}: {whole:#?}");
        assert!(whole.iter().all(|e| e.hook.as_str() == "cgroup"
            && e.len.map(u64::from) == Some(udp_len(dst, BIG))
            && !e.fragment));
    }
    let counters = fx.datapath.counters().unwrap();
    assert_eq!(
        counters.cgroup.denied_observed.packets,
        2 * u64::from(DATAGRAMS),
        "{counters:?}"
    );
    assert_eq!(counters.tc.denied_observed.packets, 0, "{counters:?}");
    assert_eq!(
        counters.judged_by_cgroup,
        2 * 3 * u64::from(DATAGRAMS),
        "every fragment left to the cgroup hook: {counters:?}"
    );

    // An IPv6 Destination Options header before UDP: the parser walks past it to the ports.
    let v6 = IpAddr::V6(INTERNET_V6);
    client.udp(v6, UDP_PORT, N, PAYLOAD, true).unwrap();
    assert_eq!(fx.topology.peers.udp_received(v6), N as usize);
    let records = fx.events(N as usize);
    assert_eq!(records.len(), N as usize, "{records:#?}");
    for event in &records {
        assert_eq!(event.hook.as_str(), "cgroup");
        assert_eq!(event.dst, Some(v6));
        assert_eq!(event.proto, Proto::Name("udp"));
        assert_eq!(event.dst_port, Some(UDP_PORT));
        assert_eq!(
            event.len.map(u64::from),
            Some(udp_len(v6, PAYLOAD) + 8),
            "the 8-byte header counts"
        );
    }

    // The mode flips to enforce in the live maps, without reloading: now they are dropped.
    fx.datapath.set_mode(Mode::Enforce).unwrap();
    let outcome = client.udp(v6, UDP_PORT, N, PAYLOAD, true).unwrap();
    assert_eq!(outcome.eperm, u64::from(N));
    assert_eq!(fx.topology.peers.udp_received(v6), 0);
    let records = fx.events(N as usize);
    assert_eq!(records.len(), N as usize);
    assert!(
        records
            .iter()
            .all(|e| e.action.as_str() == "dropped" && e.hook.as_str() == "cgroup")
    );
}

/// A dual-stack IPv6 socket sending to `::ffff:203.0.113.1` puts an IPv4 packet on the wire:
/// both hooks judge it by its IPv4 destination, so the mapped form is no way around the policy.
#[test]
fn an_ipv4_mapped_destination_is_judged_as_ipv4() {
    let mapped: IpAddr = "::ffff:203.0.113.1".parse().unwrap();
    for hook in [Hook::Cgroup, Hook::Tc] {
        let mut fx = Fixture::new(hook, Mode::Enforce, &[]);
        let outcome = fx
            .client(None)
            .udp(mapped, UDP_PORT, N, PAYLOAD, false)
            .unwrap();
        if hook == Hook::Cgroup {
            assert_eq!(outcome.eperm, u64::from(N), "{outcome:?}");
        }
        assert_eq!(
            fx.topology.peers.udp_received(INTERNET_V4.into()),
            0,
            "{hook:?}"
        );
        let records = fx.events(N as usize);
        assert_eq!(records.len(), N as usize, "{hook:?}: {records:#?}");
        for event in &records {
            assert_eq!(event.dst, Some(IpAddr::V4(INTERNET_V4)), "{hook:?}");
            assert_eq!(event.src, Some(IpAddr::V4(NODE_V4)), "{hook:?}");
            assert_eq!(
                event.len.map(u64::from),
                Some(udp_len(IpAddr::V4(INTERNET_V4), PAYLOAD))
            );
        }
    }
}

/// More denied packets than the ring buffer holds, with nobody reading: every one is either an
/// event or counted in `events_lost` — exactly, none silently gone — and all were judged.
#[test]
fn a_full_ring_buffer_counts_every_lost_event() {
    // 1 MiB of 88-byte records (80 bytes + the ring's 8-byte header) is about 11,900 events.
    const FLOOD: u32 = 20_000;
    let mut fx = Fixture::new(Hook::Cgroup, Mode::Observe, &[]);
    let outcome = fx
        .client(None)
        .udp(INTERNET_V4.into(), UDP_PORT, FLOOD, 0, false)
        .unwrap();
    assert_eq!(outcome.ok, u64::from(FLOOD));
    let counters = fx.datapath.counters().unwrap();
    assert_eq!(counters.cgroup.denied_observed.packets, u64::from(FLOOD));
    let read = fx.events(FLOOD as usize).len() as u64;
    assert!(
        counters.events_lost > 0,
        "the flood must overflow the ring buffer"
    );
    assert_eq!(
        read + counters.events_lost,
        u64::from(FLOOD),
        "read {read}, lost {}",
        counters.events_lost
    );
}

/// On the TC hook only ARP passes without a destination check. Any other ethertype — and an
/// IPv4 packet hidden under more VLAN tags than are unwrapped — has no destination that could
/// be allowed, so it is denied (dropped in enforce mode) and reported with its ethertype.
#[test]
fn non_ip_frames_are_denied_and_arp_passes() {
    const LOCAL_EXPERIMENTAL: u16 = 0x88b5;
    const VLAN: u16 = 0x8100;
    const FRAMES: u32 = 4;
    for mode in [Mode::Observe, Mode::Enforce] {
        let mut fx = Fixture::new(Hook::Tc, mode, &[]);
        let tap = fx.topology.tap().unwrap();
        let mut client = fx.client(None);
        client.cgroup = None;
        client
            .frame(NODE_IF, LOCAL_EXPERIMENTAL, FRAMES, 0)
            .unwrap();
        client.frame(NODE_IF, 0x0800, FRAMES, 3).unwrap();
        let expected = if mode == Mode::Enforce {
            0
        } else {
            FRAMES as usize
        };
        let seen_experimental = tap.frames_with_ethertype(LOCAL_EXPERIMENTAL);
        assert_eq!(
            seen_experimental, expected,
            "{mode:?}: 0x88b5 frames across"
        );
        let tap = fx.topology.tap().unwrap();
        client.frame(NODE_IF, 0x0800, FRAMES, 3).unwrap();
        assert_eq!(
            tap.frames_with_ethertype(VLAN),
            expected,
            "{mode:?}: triple-tagged IPv4 across"
        );

        let records = fx.events(3 * FRAMES as usize);
        assert_eq!(records.len(), 3 * FRAMES as usize, "{records:#?}");
        let by_type = |ethertype: &str| {
            records
                .iter()
                .filter(|r| r.ethertype.as_deref() == Some(ethertype))
                .count()
        };
        assert_eq!(by_type("0x88b5"), FRAMES as usize);
        assert_eq!(
            by_type("0x8100"),
            2 * FRAMES as usize,
            "the third tag is what is left unread"
        );
        assert!(
            records
                .iter()
                .all(|r| r.src.is_none() && r.dst.is_none() && r.rule == "default")
        );
        let counters = fx.datapath.counters().unwrap();
        assert_eq!(counters.not_ip, 3 * u64::from(FRAMES));

        // ARP still works: the private peer is reached, which needs the gateway's address.
        fx.client(None)
            .udp(PRIVATE_V4.into(), UDP_PORT, N, PAYLOAD, false)
            .unwrap();
        assert_eq!(
            fx.topology.peers.udp_received(PRIVATE_V4.into()),
            N as usize
        );
        assert!(
            fx.datapath.counters().unwrap().arp > 0,
            "ARP was seen and passed"
        );
    }
}

/// A policy change keeps ids with their prefixes and gives a new prefix an id no live entry
/// holds, its counter starting at zero: hits and event names never leak between rules.
#[test]
fn rule_ids_follow_prefixes_across_applies() {
    let mut fx = Fixture::new(Hook::Cgroup, Mode::Enforce, &["10.78.0.0/24"]);
    fx.client(None)
        .udp(LAB_V4.into(), UDP_PORT, N, PAYLOAD, false)
        .unwrap();
    let lab_id = rule_id(&fx.names, "cli-deny");
    let private_id = fx
        .names
        .rules
        .iter()
        .find(|r| r.cidr == "10.0.0.0/8")
        .unwrap()
        .id;
    assert_eq!(fx.datapath.rule_hits().unwrap()[lab_id], u64::from(N));

    let rules = egress_monitor_policy::CommandLineRules {
        allow: vec![],
        deny: vec!["10.79.0.0/24".into()],
    };
    let next = egress_monitor_policy::Policy::build(None, &rules, Some(Mode::Enforce)).unwrap();
    let report = fx.datapath.apply(&next).unwrap();
    assert_eq!((report.inserted, report.removed), (1, 1), "{report}");
    let names = egress_monitor::datapath::state::StateFile::load(&fx.bpffs.layout().state_file())
        .unwrap()
        .unwrap();
    let new_id = rule_id(&names, "cli-deny");
    assert_ne!(
        new_id, lab_id,
        "a new prefix does not take the id of the entry it replaces"
    );
    assert_eq!(
        names
            .rules
            .iter()
            .find(|r| r.cidr == "10.0.0.0/8")
            .unwrap()
            .id,
        private_id,
        "kept prefixes keep their ids"
    );
    assert_eq!(
        fx.datapath.rule_hits().unwrap()[new_id],
        0,
        "a new rule starts from zero"
    );
}

/// Every program leaves at least half of the verifier's budget (1,000,000 instructions) free,
/// as the kernel counts them when it loads the program here: a later feature, or an older
/// kernel's less clever verifier, does not silently stop it from loading.
#[test]
fn every_program_keeps_half_the_verifier_budget() {
    use egress_monitor_tests::programs::{PROGRAMS, VERIFIER_BUDGET, verified_instructions};
    let fx = Fixture::new(Hook::Both, Mode::Enforce, &[]);
    for program in PROGRAMS {
        let verified = verified_instructions(&fx.bpffs.layout(), program).unwrap();
        eprintln!("{program}: {verified} instructions verified");
        assert!(
            verified < VERIFIER_BUDGET / 2,
            "{program}: {verified} of {VERIFIER_BUDGET} verified instructions"
        );
    }
}

/// A live change that swaps most of a full policy for other prefixes needs, for a moment, room
/// for both (new entries go in before stale ones come out): instead of failing half-way, the
/// maps grow first, and the new policy is whole afterwards.
#[test]
fn a_change_that_needs_room_for_both_policies_grows_first() {
    let rules = |second: u8| CommandLineRules {
        allow: (0..3000u32)
            .map(|i| {
                let [_, _, c, d] = i.to_be_bytes();
                format!("100.{}.{c}.{d}/32", 64 + second)
            })
            .collect(),
        deny: vec![],
    };
    let policy = |second| Policy::build(None, &rules(second), Some(Mode::Enforce)).unwrap();
    let mut fx = Fixture::with_policy(Hook::Cgroup, |_, _| policy(0));
    let report = fx
        .datapath
        .apply(&policy(1))
        .expect("the swap of 3,000 prefixes");
    assert!(report.grown.is_some(), "{report}");
    assert_eq!(report.inserted, 3000, "{report}");
    assert_eq!(report.removed, 3000, "{report}");
    let names = egress_monitor::datapath::state::StateFile::load(&fx.bpffs.layout().state_file())
        .unwrap()
        .unwrap();
    assert!(names.rules.iter().any(|rule| rule.cidr == "100.65.0.7/32"));
    assert!(!names.rules.iter().any(|rule| rule.cidr == "100.64.0.7/32"));
    // Still enforcing through the swapped maps.
    let refused = fx
        .client(None)
        .udp(INTERNET_V4.into(), UDP_PORT, 2, 8, false)
        .unwrap();
    assert_eq!(refused.eperm, 2, "{refused:?}");
}
