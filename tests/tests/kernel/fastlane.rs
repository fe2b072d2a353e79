//! The fast lane (direct packet access and the flat tables) against the full path (the tries),
//! in the kernel: every program, with the lane on and off, through BPF_PROG_TEST_RUN, on
//! addresses at every rule's edges and at random, across random policies applied one after
//! the other as live changes. The lane must never decide differently, nor count differently.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egress_monitor::datapath::{Datapath, Judge, TestRunner, frame_to};
use egress_monitor_policy::{Action, CommandLineRules, Mode, Policy};
use egress_monitor_tests::{bpffs::BpfFs, require_root, sweep_stale};
use fastrand::Rng;

/// A random address of either family.
fn address(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(rng.u128(..)))
    } else {
        IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
    }
}

/// `address` cut to its first `len` bits, as a CIDR.
fn cidr(address: IpAddr, len: u32) -> String {
    match address {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - len).unwrap_or(0);
            format!("{}/{len}", Ipv4Addr::from(bits))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - len).unwrap_or(0);
            format!("{}/{len}", Ipv6Addr::from(bits))
        }
    }
}

/// A random policy in enforce mode: nested chains of allow and deny prefixes of both families
/// around a few centres, on top of the default groups, written as a policy file (its wide
/// allow rules say `wide = true`). Prefixes a default group holds are skipped (a policy names
/// each prefix once).
fn random_policy(rng: &mut Rng) -> Policy {
    let defaults = Policy::build(None, &CommandLineRules::default(), Some(Mode::Enforce))
        .expect("the default policy");
    let taken = |text: &String| {
        defaults
            .rules
            .iter()
            .any(|rule| rule.network.to_string() == *text)
    };
    let mut file = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for v6 in [false, true] {
        let bits = if v6 { 128 } else { 32 };
        for _ in 0..2 + rng.u64(0..5) {
            let centre = address(rng, v6);
            let mut len = 1 + rng.u64(0..bits / 2) as u32;
            while len <= bits as u32 {
                let text = cidr(centre, len);
                if !taken(&text) && seen.insert(text.clone()) {
                    let action = if rng.u64(0..100) < 55 {
                        "allow"
                    } else {
                        "deny"
                    };
                    file.push_str(&format!(
                        "[[rule]]\nname = \"r{}\"\ncidr = \"{text}\"\naction = \"{action}\"\nwide = true\n",
                        seen.len()
                    ));
                }
                len += 1 + rng.u64(0..9) as u32;
            }
        }
    }
    let file = egress_monitor_policy::PolicyFile::parse(std::path::Path::new("random.toml"), &file)
        .expect("a random policy file");
    Policy::build(
        Some(&file),
        &CommandLineRules::default(),
        Some(Mode::Enforce),
    )
    .expect("a random policy")
}

/// What the tries say: the longest rule holding `address` allows it.
fn allowed(policy: &Policy, address: IpAddr) -> bool {
    policy
        .rules
        .iter()
        .filter(|rule| rule.network.contains(address))
        .max_by_key(|rule| rule.network.prefix())
        .is_some_and(|rule| rule.action == Action::Allow)
}

/// Every rule's first and last address, their neighbours outside it and random ones inside,
/// then random ones anywhere.
fn addresses(rng: &mut Rng, policy: &Policy, count: usize) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        let (first, last) = (rule.network.network(), rule.network.broadcast());
        out.extend([first, last]);
        match (first, last) {
            (IpAddr::V4(f), IpAddr::V4(l)) => out.extend([
                IpAddr::V4(Ipv4Addr::from(u32::from(f).wrapping_sub(1))),
                IpAddr::V4(Ipv4Addr::from(u32::from(l).wrapping_add(1))),
            ]),
            (IpAddr::V6(f), IpAddr::V6(l)) => out.extend([
                IpAddr::V6(Ipv6Addr::from(u128::from(f).wrapping_sub(1))),
                IpAddr::V6(Ipv6Addr::from(u128::from(l).wrapping_add(1))),
            ]),
            _ => {}
        }
        for _ in 0..8 {
            out.push(match first {
                IpAddr::V4(f) => {
                    let host = rng.u32(..)
                        & !u32::MAX
                            .checked_shl(32 - u32::from(rule.network.prefix()))
                            .unwrap_or(0);
                    IpAddr::V4(Ipv4Addr::from(u32::from(f) | host))
                }
                IpAddr::V6(f) => {
                    let host = rng.u128(..)
                        & !u128::MAX
                            .checked_shl(128 - u32::from(rule.network.prefix()))
                            .unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(f) | host))
                }
            });
        }
    }
    while out.len() < count {
        let v6 = rng.u64(0..2) == 1;
        out.push(address(rng, v6));
    }
    out
}

/// Each address's verdict from both programs, as check packets (judged, not counted).
fn verdicts(runner: &TestRunner, secret: u64, addresses: &[IpAddr]) -> Vec<[bool; 2]> {
    addresses
        .iter()
        .map(|address| {
            let frame = frame_to(*address);
            Judge::ALL.map(|judge| {
                let run = runner
                    .run(judge, &frame, 1, Some(secret))
                    .expect("test run");
                run.retval == judge.pass_code()
            })
        })
        .collect()
}

#[test]
fn the_fast_lane_decides_and_counts_as_the_full_path() {
    require_root();
    sweep_stale();
    let bpffs = BpfFs::new().expect("a bpf filesystem for the test's pins");
    let mut datapath = Datapath::open(&bpffs.layout(), 4096).expect("pin the datapath");
    let secret = datapath.check_secret().expect("the check secret");
    let mut rng = Rng::with_seed(0xfa57_1a4e);
    let mut checked = 0;
    for change in 0..4 {
        let policy = random_policy(&mut rng);
        datapath.apply(&policy).expect("apply the policy");
        let runner = datapath.test_runner().expect("the programs");
        let addresses = addresses(&mut rng, &policy, 12_000);
        datapath.set_fast_lane(true).expect("lane on");
        let lane = datapath.fast_lane().expect("the tables");
        assert!(
            lane.on && lane.v4.allow_entries > 0 && lane.v6.allow_entries > 0,
            "change {change}: the tables answer nothing: {lane:?}"
        );
        let fast = verdicts(&runner, secret, &addresses);
        datapath.set_fast_lane(false).expect("lane off");
        let full = verdicts(&runner, secret, &addresses);
        datapath.set_fast_lane(true).expect("lane on");
        let mut allowed_seen = 0;
        for ((address, fast), full) in addresses.iter().zip(&fast).zip(&full) {
            let expected = allowed(&policy, *address);
            allowed_seen += usize::from(expected);
            assert_eq!(
                (fast, full),
                (&[expected; 2], &[expected; 2]),
                "change {change}: {address} ([cgroup, tc] with the lane, then without; the policy allows it: {expected})"
            );
        }
        assert!(
            allowed_seen > 1_000,
            "change {change}: {allowed_seen} allowed"
        );
        checked += addresses.len() * 4;
        // Counted as the full path counts: the same rule's hit, for packets that count.
        let sample: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|address| allowed(&policy, *address))
            .take(40)
            .collect();
        for address in &sample {
            let frame = frame_to(*address);
            let mut hits = Vec::new();
            for on in [true, false] {
                datapath.set_fast_lane(on).expect("lane");
                let before = datapath.rule_hits().expect("hits");
                for judge in Judge::ALL {
                    runner.run(judge, &frame, 1, None).expect("test run");
                }
                let after = datapath.rule_hits().expect("hits");
                let grew: Vec<(usize, u64)> = before
                    .iter()
                    .zip(&after)
                    .enumerate()
                    .filter(|(_, (b, a))| a != b)
                    .map(|(id, (b, a))| (id, a - b))
                    .collect();
                hits.push(grew);
            }
            assert_eq!(
                hits[0], hits[1],
                "{address}: rule hits with the lane, without"
            );
            assert_eq!(hits[0].len(), 1, "{address}: one rule hit twice: {hits:?}");
        }
        datapath.set_fast_lane(true).expect("lane on");
    }
    assert!(checked >= 150_000, "{checked} verdicts compared");
    egress_monitor::datapath::detach(&bpffs.layout()).expect("detach");
}
