//! Applying a policy to the live maps by a diff.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{
    HashMap as AyaHashMap, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key,
};
use egress_monitor_common::{
    dns::{DomainValue, NO_RULE, queries as dns_queries, suffix_hash},
    maps::{self as names, DEFAULT_RULE_CAPACITY},
    policy::{IPV4_ADDR_LEN, IPV6_ADDR_LEN, RuleValue, config},
    verdict::{RULE_ID_DEFAULT, action},
};
use ipnetwork::IpNetwork;
use serde::Serialize;

use super::{
    Datapath, DatapathError, Opened,
    grow::forget_revoked,
    maps::{capacity_of, open_map, open_trie, read_config, write_config},
    trust::TrustPlan,
};
use crate::{
    policy::{Action, DomainRule, Mode, Policy},
    state::{StateFile, StateRule},
};

/// What [`Datapath::apply`] changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub version: u64,
    pub previous_version: u64,
    pub inserted: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    pub mode: Mode,
    #[serde(skip)]
    pub elapsed: Duration,
    /// The rule slots before and after, when bigger maps were swapped in for the policy.
    pub grown: Option<(u32, u32)>,
}

impl std::fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy {:016x} applied ({} mode, was {:016x}): {} inserted, {} updated, {} removed, {} unchanged in {:.1} ms",
            self.version,
            self.mode,
            self.previous_version,
            self.inserted,
            self.updated,
            self.removed,
            self.unchanged,
            self.elapsed.as_secs_f64() * 1000.0
        )?;
        if let Some((from, to)) = self.grown {
            write!(
                f,
                "; the maps grew from {from} to {to} rule slots (swapped in without a gap)"
            )?;
        }
        Ok(())
    }
}

/// The live domain rules' ids, by (hash of the domain, whether it is the `*.` rule): each
/// value of the map holds the ids of both rules of its domain.
fn live_domain_ids(
    domains: &AyaHashMap<MapData, u64, DomainValue>,
) -> Result<HashMap<(u64, bool), u32>, DatapathError> {
    let mut ids = HashMap::new();
    for item in domains.iter() {
        let (hash, value) = item.map_err(DatapathError::map(names::DOMAINS, "read"))?;
        if value.exact_action != NO_RULE {
            ids.insert((hash, false), value.exact_rule);
        }
        if value.subdomain_action != NO_RULE {
            ids.insert((hash, true), value.subdomain_rule);
        }
    }
    Ok(ids)
}

/// An LPM trie key: prefix length and the address bytes in network order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LpmKey {
    V4(u32, [u8; IPV4_ADDR_LEN]),
    V6(u32, [u8; IPV6_ADDR_LEN]),
}

pub fn lpm_key(network: IpNetwork) -> LpmKey {
    match network {
        IpNetwork::V4(n) => LpmKey::V4(u32::from(n.prefix()), n.network().octets()),
        IpNetwork::V6(n) => LpmKey::V6(u32::from(n.prefix()), n.network().octets()),
    }
}

pub fn rule_value(id: u32, rule_action: Action) -> RuleValue {
    RuleValue::new(
        id,
        match rule_action {
            Action::Allow => action::ALLOW,
            Action::Deny => action::DENY,
        },
    )
}

impl Datapath {
    /// Brings the live policy to `policy` by a diff, sets its mode and version, and records
    /// its names in the state file. Rule ids stay with their prefixes across applies, so the
    /// per-rule counters keep meaning the same rule.
    ///
    /// A policy larger than the live maps is applied to bigger ones, swapped in without a gap
    /// (see [`Datapath::grow`]) when this process attached every live link; otherwise it is
    /// refused and nothing changes.
    pub fn apply(&mut self, policy: &Policy) -> Result<ApplyReport, DatapathError> {
        let capacity = capacity_of(&self.target)?;
        // New prefixes go in before stale ones come out, so a trie holds both for a moment.
        let needed =
            (policy.rules.len() + policy.domains.len()).max(self.transient_entries(policy)?);
        if needed <= capacity as usize {
            return self.apply_in_place(policy);
        }
        // Mid-replacement (the maps are staged and nothing is attached to them yet), the
        // staged maps are what must be big enough: no second swap on top of the first.
        if !matches!(self.opened, Opened::Adopted | Opened::Created) {
            return Err(DatapathError::TooManyRules { needed, capacity });
        }
        let attach_to = self
            .reattach_targets()
            .map_err(|link| DatapathError::CannotGrow {
                needed,
                capacity,
                link,
            })?;
        let grown = u32::try_from(needed.saturating_mul(2))
            .unwrap_or(u32::MAX)
            .max(DEFAULT_RULE_CAPACITY);
        self.grow(policy, grown, &attach_to)
    }

    /// The most entries either trie holds while `policy` is applied in place: its prefixes of
    /// that family and the live ones it removes (inserts come before deletions).
    fn transient_entries(&self, policy: &Policy) -> Result<usize, DatapathError> {
        let v4 = open_trie::<IPV4_ADDR_LEN>(&self.target, names::POLICY_V4)?;
        let v6 = open_trie::<IPV6_ADDR_LEN>(&self.target, names::POLICY_V6)?;
        let mut keys: BTreeSet<LpmKey> = policy
            .rules
            .iter()
            .map(|rule| lpm_key(rule.network))
            .collect();
        for item in v4.iter() {
            let (key, _) = item.map_err(DatapathError::map(names::POLICY_V4, "read"))?;
            keys.insert(LpmKey::V4(key.prefix_len(), key.data()));
        }
        for item in v6.iter() {
            let (key, _) = item.map_err(DatapathError::map(names::POLICY_V6, "read"))?;
            keys.insert(LpmKey::V6(key.prefix_len(), key.data()));
        }
        let v4_count = keys
            .iter()
            .filter(|key| matches!(key, LpmKey::V4(..)))
            .count();
        Ok(v4_count.max(keys.len() - v4_count))
    }

    pub(super) fn apply_in_place(&mut self, policy: &Policy) -> Result<ApplyReport, DatapathError> {
        let started = Instant::now();
        // Everything that can fail outside the maps (a namespace gone, say) fails before any
        // map changes.
        let trust = TrustPlan::of(policy)?;
        let previous_version = read_config(&self.target)?.policy_version;
        let capacity = capacity_of(&self.target)?;
        let mut v4 = open_trie::<IPV4_ADDR_LEN>(&self.target, names::POLICY_V4)?;
        let mut v6 = open_trie::<IPV6_ADDR_LEN>(&self.target, names::POLICY_V6)?;
        let mut live: HashMap<LpmKey, RuleValue> = HashMap::new();
        for item in v4.iter() {
            let (key, value) = item.map_err(DatapathError::map(names::POLICY_V4, "read"))?;
            live.insert(LpmKey::V4(key.prefix_len(), key.data()), value);
        }
        for item in v6.iter() {
            let (key, value) = item.map_err(DatapathError::map(names::POLICY_V6, "read"))?;
            live.insert(LpmKey::V6(key.prefix_len(), key.data()), value);
        }

        // Ids: a prefix that stays keeps its id. New prefixes take ids no live entry holds, so
        // that while the stale entries still exist no two prefixes share an id (events and
        // per-rule counters stay right); only when those run out do they take a stale entry's.
        let wanted: Vec<(LpmKey, &crate::policy::Rule)> = policy
            .rules
            .iter()
            .map(|rule| (lpm_key(rule.network), rule))
            .collect();
        let wanted_keys: BTreeSet<LpmKey> = wanted.iter().map(|(key, _)| *key).collect();
        // Domain rules take ids from the same space (they count hits and name events alike).
        let mut domains: AyaHashMap<MapData, u64, DomainValue> =
            open_map(&self.target, names::DOMAINS)?;
        let live_domains = live_domain_ids(&domains)?;
        let wanted_domains: Vec<((u64, bool), &DomainRule)> = policy
            .domains
            .iter()
            .map(|rule| {
                let hash = suffix_hash(&rule.domain.wire());
                ((hash, rule.domain.subdomains), rule)
            })
            .collect();
        let wanted_domain_keys: BTreeSet<(u64, bool)> =
            wanted_domains.iter().map(|(key, _)| *key).collect();
        let kept: BTreeSet<u32> = wanted
            .iter()
            .filter_map(|(key, _)| live.get(key).map(|value| value.rule_id))
            .chain(
                wanted_domains
                    .iter()
                    .filter_map(|(key, _)| live_domains.get(key).copied()),
            )
            .collect();
        let stale: BTreeSet<u32> = live
            .iter()
            .filter(|(key, _)| !wanted_keys.contains(key))
            .map(|(_, value)| value.rule_id)
            .chain(
                live_domains
                    .iter()
                    .filter(|(key, _)| !wanted_domain_keys.contains(key))
                    .map(|(_, id)| *id),
            )
            .collect();
        let mut free = (0..capacity)
            .filter(|id| !kept.contains(id) && !stale.contains(id))
            .chain(stale.iter().copied().filter(|id| !kept.contains(id)));
        let mut plan = Vec::with_capacity(wanted.len());
        let mut fresh_ids = Vec::new();
        for (key, rule) in &wanted {
            let id = match live.get(key) {
                Some(value) => value.rule_id,
                None => {
                    let Some(id) = free.next() else {
                        return Err(DatapathError::TooManyRules {
                            needed: policy.rules.len(),
                            capacity,
                        });
                    };
                    fresh_ids.push(id);
                    id
                }
            };
            plan.push((*key, rule_value(id, rule.action), *rule));
        }
        let mut domain_plan: Vec<(u32, &DomainRule)> = Vec::with_capacity(wanted_domains.len());
        for (key, rule) in &wanted_domains {
            let id = match live_domains.get(key) {
                Some(id) => *id,
                None => {
                    let Some(id) = free.next() else {
                        return Err(DatapathError::TooManyRules {
                            needed: policy.rules.len() + policy.domains.len(),
                            capacity,
                        });
                    };
                    fresh_ids.push(id);
                    id
                }
            };
            domain_plan.push((id, rule));
        }

        // A recycled id starts counting from zero.
        if !fresh_ids.is_empty() {
            let mut hits: PerCpuArray<MapData, u64> = open_map(&self.target, names::RULE_HITS)?;
            let cpus = aya::util::nr_cpus()
                .map_err(|(_, err)| {
                    DatapathError::pin("reading", Path::new("/sys/devices/system/cpu/possible"))(
                        err,
                    )
                })?
                .get() as usize;
            for id in &fresh_ids {
                let zeros =
                    PerCpuValues::try_from(vec![0u64; cpus]).map_err(|err| DatapathError::Map {
                        name: names::RULE_HITS,
                        what: "reset".into(),
                        source: MapError::from(err),
                    })?;
                hits.set(*id, zeros, 0)
                    .map_err(DatapathError::map(names::RULE_HITS, "reset"))?;
            }
        }

        // Inserts and updates first: every destination allowed before and after stays allowed,
        // every one denied before and after stays denied, at every moment.
        let (mut inserted, mut updated, mut unchanged) = (0, 0, 0);
        for (key, value, rule) in &plan {
            match live.get(key) {
                Some(current) if current == value => {
                    unchanged += 1;
                    continue;
                }
                Some(_) => updated += 1,
                None => inserted += 1,
            }
            match key {
                LpmKey::V4(prefix, addr) => v4
                    .insert(&Key::new(*prefix, *addr), value, 0)
                    .map_err(DatapathError::map(
                        names::POLICY_V4,
                        format!("insert {}", rule.network),
                    ))?,
                LpmKey::V6(prefix, addr) => v6
                    .insert(&Key::new(*prefix, *addr), value, 0)
                    .map_err(DatapathError::map(
                        names::POLICY_V6,
                        format!("insert {}", rule.network),
                    ))?,
            }
        }
        // Then deletions: a removed prefix falls back to the next shorter one, which is already
        // in its final state.
        let mut removed = 0;
        for key in live.keys().filter(|key| !wanted_keys.contains(key)) {
            match key {
                LpmKey::V4(prefix, addr) => v4
                    .remove(&Key::new(*prefix, *addr))
                    .map_err(DatapathError::map(names::POLICY_V4, "remove a stale rule"))?,
                LpmKey::V6(prefix, addr) => v6
                    .remove(&Key::new(*prefix, *addr))
                    .map_err(DatapathError::map(names::POLICY_V6, "remove a stale rule"))?,
            }
            removed += 1;
        }

        // Domain rules: each domain's value says what its exact and its `*.` rule do. New
        // values first, then stale keys go.
        let mut values: HashMap<u64, DomainValue> = HashMap::new();
        for (((hash, _), _), (id, rule)) in wanted_domains.iter().zip(&domain_plan) {
            let value = values.entry(*hash).or_insert(DomainValue {
                exact_rule: RULE_ID_DEFAULT,
                subdomain_rule: RULE_ID_DEFAULT,
                exact_action: NO_RULE,
                subdomain_action: NO_RULE,
                _pad: [0; 6],
            });
            let code = rule_value(*id, rule.action).action;
            if rule.domain.subdomains {
                (value.subdomain_rule, value.subdomain_action) = (*id, code);
            } else {
                (value.exact_rule, value.exact_action) = (*id, code);
            }
        }
        for (hash, value) in &values {
            domains
                .insert(hash, value, 0)
                .map_err(DatapathError::map(names::DOMAINS, "insert"))?;
        }
        let live_hashes: Vec<u64> = domains.keys().filter_map(Result::ok).collect();
        for hash in live_hashes.iter().filter(|hash| !values.contains_key(hash)) {
            domains
                .remove(hash)
                .map_err(DatapathError::map(names::DOMAINS, "remove a stale rule"))?;
        }
        write_config(
            &self.target,
            config::DOMAIN_RULES,
            policy.domains.len() as u64,
        )?;
        // What a domain rule no longer allows goes: its learned addresses and the sockets that
        // kept one.
        forget_revoked(&self.target)?;
        // Queries are always reported; with domain rules, names no rule allows are refused.
        write_config(
            &self.target,
            config::DNS_QUERIES,
            if policy.domains.is_empty() {
                dns_queries::REPORT
            } else {
                dns_queries::FILTER
            },
        )?;

        self.write_trust(&trust)?;

        let version = policy.version();
        // Names first, then the version: a reader that sees the new version finds its names.
        let mut state = StateFile {
            version: format!("{version:016x}"),
            mode: policy.mode,
            applied_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            groups: policy
                .groups
                .iter()
                .map(|(n, on)| ((*n).to_owned(), *on))
                .collect(),
            rules: plan
                .iter()
                .map(|(_, value, rule)| StateRule {
                    id: value.rule_id,
                    cidr: rule.network.to_string(),
                    action: rule.action,
                    name: rule.name.clone(),
                    origin: rule.origin.to_string(),
                })
                .chain(domain_plan.iter().map(|(id, rule)| StateRule {
                    id: *id,
                    cidr: rule.domain.to_string(),
                    action: rule.action,
                    name: rule.name.clone(),
                    origin: rule.origin.to_string(),
                }))
                .collect(),
        };
        state.rules.sort_by_key(|rule| rule.id);
        state.save(&self.layout.state_file())?;
        self.set_mode(policy.mode)?;
        write_config(&self.target, config::POLICY_VERSION, version)?;
        Ok(ApplyReport {
            version,
            previous_version,
            inserted,
            updated,
            removed,
            unchanged,
            mode: policy.mode,
            elapsed: started.elapsed(),
            grown: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_keys_are_prefix_and_network_order_bytes() {
        assert_eq!(
            lpm_key("10.1.2.0/24".parse().unwrap()),
            LpmKey::V4(24, [10, 1, 2, 0])
        );
        assert_eq!(lpm_key("0.0.0.0/0".parse().unwrap()), LpmKey::V4(0, [0; 4]));
        let LpmKey::V6(prefix, bytes) = lpm_key("2001:db8::/32".parse().unwrap()) else {
            panic!("an IPv6 network gives an IPv6 key");
        };
        assert_eq!(prefix, 32);
        assert_eq!(bytes[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert!(bytes[4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn rule_values_carry_id_and_action() {
        assert_eq!(rule_value(7, Action::Deny), RuleValue::new(7, action::DENY));
        assert_eq!(rule_value(0, Action::Allow).action, action::ALLOW);
        assert_eq!(rule_value(0, Action::Allow)._pad, [0; 3]);
    }
}
