//! Benchmark policies: the default groups plus generated deny rules that stay clear of every
//! probed address, so that each filter decides the same thing for the same packet.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use egress_monitor_policy::{Action, CommandLineRules, Mode, Origin, Policy, Rule};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// The default policy plus `per_family` generated deny prefixes in each of IPv4 (inside
/// 100.0.0.0–126.255.255.255, /16 to /32) and IPv6 (inside 2001:db8:8000::/33, /48 to /128).
pub fn policy_with(per_family: usize, mode: Mode) -> Policy {
    let mut policy =
        Policy::build(None, &CommandLineRules::default(), Some(mode)).expect("the default policy");
    let mut seen = HashSet::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // xorshift64: deterministic, so every run measures the same tries.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut v4 = 0;
    while v4 < per_family {
        let bits = next();
        let first = 100 + (bits % 27) as u8;
        let address = Ipv4Addr::new(
            first,
            (bits >> 8) as u8,
            (bits >> 16) as u8,
            (bits >> 24) as u8,
        );
        let prefix = 16 + ((bits >> 32) % 17) as u8;
        let network = Ipv4Network::new(address, prefix).expect("valid prefix");
        let network = IpNetwork::V4(Ipv4Network::new(network.network(), prefix).expect("valid"));
        if seen.insert(network) {
            policy.rules.push(rule(v4, network));
            v4 += 1;
        }
    }
    let mut v6 = 0;
    while v6 < per_family {
        let high = next();
        let low = next();
        let mut octets = [0u8; 16];
        octets[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        octets[4] = 0x80 | (high as u8 & 0x7f);
        octets[5..12].copy_from_slice(&high.to_be_bytes()[1..]);
        octets[12..].copy_from_slice(&low.to_be_bytes()[..4]);
        let prefix = 48 + ((low >> 40) % 81) as u8;
        let network = Ipv6Network::new(Ipv6Addr::from(octets), prefix).expect("valid prefix");
        let network = IpNetwork::V6(Ipv6Network::new(network.network(), prefix).expect("valid"));
        if seen.insert(network) {
            policy.rules.push(rule(per_family + v6, network));
            v6 += 1;
        }
    }
    policy
}

fn rule(index: usize, network: IpNetwork) -> Rule {
    Rule {
        name: format!("bench-{index}"),
        network,
        action: Action::Deny,
        origin: Origin::CommandLine,
        expires: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rules_leave_the_probes_alone() {
        let policy = policy_with(5_000, Mode::Enforce);
        let defaults = Policy::build(None, &CommandLineRules::default(), Some(Mode::Enforce))
            .unwrap()
            .rules
            .len();
        assert_eq!(policy.rules.len(), defaults + 10_000);
        for (probe, allowed) in [
            ("10.1.2.3", true),
            ("fd00::1", true),
            ("203.0.113.1", false),
            ("2001:db8::1", false),
            ("10.77.0.1", true),
        ] {
            let verdict = policy.verdict(probe.parse().unwrap());
            assert_eq!(
                verdict.is_some_and(|r| r.action == Action::Allow),
                allowed,
                "{probe}"
            );
            assert!(
                verdict.is_none_or(|r| !r.name.starts_with("bench-")),
                "{probe}"
            );
        }
    }
}
