//! Rules that expire: their `RULE_EXPIRY` entries — when, on the kernel's boot clock, each
//! stops applying, and the rule its prefix falls back to then (the longest rule of the policy
//! strictly containing it, or none). The kernel compares the time on every lookup, so a rule
//! ends on time with or without a daemon, without a reload.
//!
//! The wall-clock time of the policy is converted to the boot clock when the entries are
//! written: at every apply, and again when the daemon sees the wall clock stepped
//! ([`Datapath::refresh_expiry`]).

use std::{collections::HashMap, net::IpAddr};

use aya::maps::{Array, MapData};
use egress_monitor_common::{
    maps as names,
    policy::{RuleExpiry, rule_flags},
    verdict::{RULE_ID_DEFAULT, action},
};
use egress_monitor_policy::Action;
use ipnetwork::IpNetwork;

use super::{Datapath, DatapathError, maps::open_map, state::StateRule};

/// The boot clock and the wall clock read together: converts a wall-clock time to the boot
/// clock the kernel compares with.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    boot_ns: u64,
    unix_ns: u64,
}

impl BootClock {
    pub fn now() -> BootClock {
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        BootClock {
            boot_ns: crate::system::clock::boot_time_ns(),
            unix_ns,
        }
    }

    /// The boot-clock time of a wall-clock time (ms since the epoch); 0 (long past) for one
    /// before boot, `u64::MAX` (never) for one beyond what the clock counts to.
    pub fn boot_ns_of(&self, unix_ms: u64) -> u64 {
        let unix_ns = u128::from(unix_ms) * 1_000_000;
        let boot_ns = (u128::from(self.boot_ns) + unix_ns).saturating_sub(u128::from(self.unix_ns));
        u64::try_from(boot_ns).unwrap_or(u64::MAX)
    }

    /// The wall-clock time at boot-clock zero, in ns: what moves when the wall clock is stepped.
    pub fn epoch_ns(&self) -> u64 {
        self.unix_ns.saturating_sub(self.boot_ns)
    }
}

/// The `RULE_EXPIRY` entries of the expiring prefix rules among `rules` (a state file's), by
/// rule id.
pub fn entries(rules: &[StateRule], clock: BootClock) -> Vec<(u32, RuleExpiry)> {
    // Prefix rules only: a domain rule's pattern never has a `/` (though `203.0.113.7` may be
    // a domain).
    let prefixes: HashMap<IpNetwork, &StateRule> = rules
        .iter()
        .filter(|rule| rule.cidr.contains('/'))
        .filter_map(|rule| Some((rule.cidr.parse::<IpNetwork>().ok()?, rule)))
        .collect();
    let mut entries = Vec::new();
    for (network, rule) in &prefixes {
        let Some(expires) = rule.expires.as_deref() else {
            continue;
        };
        // Unreadable (the file is ours, so only if damaged): the stricter reading — an allow
        // has ended, a deny never ends.
        let expires_ms =
            egress_monitor_api::time::parse_rfc3339_ms(expires).unwrap_or(match rule.action {
                Action::Allow => 0,
                Action::Deny => u64::MAX,
            });
        let fallback = containing(&prefixes, *network);
        let (fallback_rule, fallback_action, fallback_flags) = match fallback {
            Some(parent) => (
                parent.id,
                match parent.action {
                    Action::Allow => action::ALLOW,
                    Action::Deny => action::DENY,
                },
                if parent.expires.is_some() {
                    rule_flags::EXPIRES
                } else {
                    0
                },
            ),
            None => (RULE_ID_DEFAULT, action::DENY, 0),
        };
        entries.push((
            rule.id,
            RuleExpiry {
                expires_boot_ns: if expires_ms == u64::MAX {
                    u64::MAX
                } else {
                    clock.boot_ns_of(expires_ms)
                },
                fallback_rule,
                fallback_action,
                fallback_flags,
                set: 1,
                _pad: 0,
            },
        ));
    }
    entries.sort_by_key(|(id, _)| *id);
    entries
}

/// The longest prefix of `prefixes` strictly containing `network`.
fn containing<'a>(
    prefixes: &HashMap<IpNetwork, &'a StateRule>,
    network: IpNetwork,
) -> Option<&'a StateRule> {
    (0..network.prefix()).rev().find_map(|len| {
        let shorter = match network.ip() {
            IpAddr::V4(ip) => ipnetwork::Ipv4Network::new(ip, len)
                .ok()
                .and_then(|n| ipnetwork::Ipv4Network::new(n.network(), len).ok())
                .map(IpNetwork::V4),
            IpAddr::V6(ip) => ipnetwork::Ipv6Network::new(ip, len)
                .ok()
                .and_then(|n| ipnetwork::Ipv6Network::new(n.network(), len).ok())
                .map(IpNetwork::V6),
        }?;
        prefixes.get(&shorter).copied()
    })
}

impl Datapath {
    /// Writes the `RULE_EXPIRY` entries of the expiring rules among `rules`.
    pub(super) fn write_expiry(
        &self,
        state: &super::state::StateFile,
    ) -> Result<(), DatapathError> {
        let entries = entries(&state.rules, BootClock::now());
        if entries.is_empty() {
            return Ok(());
        }
        let mut array: Array<MapData, RuleExpiry> = open_map(&self.target, names::RULE_EXPIRY)?;
        for (id, entry) in entries {
            array
                .set(id, &entry, 0)
                .map_err(DatapathError::map(names::RULE_EXPIRY, "write"))?;
        }
        Ok(())
    }

    /// Converts the applied policy's expiry times to the boot clock again (after the wall
    /// clock was stepped). Nothing to do without expiring rules.
    pub fn refresh_expiry(&self) -> Result<(), DatapathError> {
        // Not beside an apply: it would write the old state's ids over the new ones.
        let _lock = super::apply::apply_lock(&self.layout)?;
        let Some(state) = super::state::StateFile::load(&self.layout.state_file())
            .map_err(DatapathError::State)?
        else {
            return Ok(());
        };
        self.write_expiry(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: u32, cidr: &str, action: Action, expires: Option<&str>) -> StateRule {
        StateRule {
            id,
            cidr: cidr.to_owned(),
            action,
            name: format!("r{id}"),
            origin: String::new(),
            expires: expires.map(str::to_owned),
        }
    }

    #[test]
    fn an_expiring_rule_falls_back_to_the_longest_rule_containing_it() {
        let clock = BootClock {
            boot_ns: 5_000_000_000,
            unix_ns: 1_800_000_000_000_000_000,
        };
        let rules = [
            rule(0, "10.0.0.0/8", Action::Allow, None),
            rule(
                1,
                "10.1.0.0/16",
                Action::Deny,
                Some("2027-01-15T08:00:00.000Z"),
            ),
            rule(
                2,
                "10.1.2.0/24",
                Action::Allow,
                Some("2027-01-01T00:00:00.000Z"),
            ),
            rule(
                3,
                "203.0.113.0/24",
                Action::Allow,
                Some("2020-01-01T00:00:00.000Z"),
            ),
            rule(
                4,
                "2001:db8::/48",
                Action::Allow,
                Some("2027-01-01T00:00:00.000Z"),
            ),
            rule(5, "2001:db8::/32", Action::Deny, None),
            // A domain that reads like an address is no prefix.
            rule(
                6,
                "10.1.2.0",
                Action::Allow,
                Some("2027-01-01T00:00:00.000Z"),
            ),
        ];
        let entries: HashMap<u32, RuleExpiry> = entries(&rules, clock).into_iter().collect();
        assert_eq!(entries.len(), 4);
        assert!(entries.values().all(|entry| entry.set == 1));
        // The /24 falls back to the /16 (itself expiring), the /16 to the /8.
        assert_eq!(
            (entries[&2].fallback_rule, entries[&2].fallback_action),
            (1, action::DENY)
        );
        assert_eq!(entries[&2].fallback_flags, rule_flags::EXPIRES);
        assert_eq!(
            (entries[&1].fallback_rule, entries[&1].fallback_flags),
            (0, 0)
        );
        // Nothing contains it: the default deny; a time before boot is long past.
        assert_eq!(entries[&3].fallback_rule, RULE_ID_DEFAULT);
        assert_eq!(entries[&3].expires_boot_ns, 0);
        assert_eq!(entries[&4].fallback_rule, 5);
        // 2027-01-01T00:00:00Z is 1,798,761,600 s after the epoch: past for `clock`, which
        // reads 1,800,000,000 s (boot was 5 s before); still ahead for `later`.
        assert_eq!(entries[&2].expires_boot_ns, 0);
        let later = BootClock {
            boot_ns: 5_000_000_000,
            unix_ns: 1_790_000_000_000_000_000,
        };
        // Far beyond the clock: never, not "long past".
        assert_eq!(later.boot_ns_of(u64::MAX / 2), u64::MAX);
        // The year 3000 is beyond what the boot clock counts (in u64 ns): never. 2500 is not.
        assert_eq!(later.boot_ns_of(32_503_680_000_000), u64::MAX);
        assert_eq!(
            later.boot_ns_of(16_725_225_600_000),
            5_000_000_000 + 16_725_225_600_000_000_000 - 1_790_000_000_000_000_000
        );
        let entries: HashMap<u32, RuleExpiry> = super::entries(&rules, later).into_iter().collect();
        assert_eq!(
            entries[&2].expires_boot_ns,
            5_000_000_000 + 1_798_761_600_000_000_000 - 1_790_000_000_000_000_000
        );
    }
}
