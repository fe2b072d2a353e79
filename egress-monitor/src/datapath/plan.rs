//! The apply plan: what bringing the policy maps from what they hold to what a policy wants
//! takes, worked out without a syscall. [`super::apply`] reads the maps and carries the plan
//! out.
//!
//! - Ids: a prefix (or domain rule) that stays keeps its rule id, so the per-rule counters keep
//!   meaning the same rule. New ones take ids no live entry holds, so that while stale entries
//!   still exist no two rules share an id (events and counters stay right); only when those run
//!   out do they take a stale entry's. Ids new to their rule start counting from zero.
//! - Order: every write (insert or update) comes before any deletion, so each destination
//!   allowed before and after stays allowed, and each denied one stays denied, at every
//!   moment: a removed prefix falls back to the next shorter one, already in its final state.
//! - Size: since the tries hold old and new prefixes at once for a moment, a policy may need
//!   more slots than it has rules; when the maps are too small they must grow first.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use egress_monitor_common::{
    dns::{DomainValue, NO_RULE, suffix_hash},
    maps::DEFAULT_RULE_CAPACITY,
    policy::{IPV4_ADDR_LEN, IPV6_ADDR_LEN, RuleValue, rule_flags},
    verdict::{RULE_ID_DEFAULT, action},
};
use ipnetwork::IpNetwork;

use super::DatapathError;
use egress_monitor_policy::{Action, Policy};

/// An LPM trie key: prefix length and the address bytes in network order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum LpmKey {
    V4(u32, [u8; IPV4_ADDR_LEN]),
    V6(u32, [u8; IPV6_ADDR_LEN]),
}

pub(super) fn lpm_key(network: IpNetwork) -> LpmKey {
    match network {
        IpNetwork::V4(n) => LpmKey::V4(u32::from(n.prefix()), n.network().octets()),
        IpNetwork::V6(n) => LpmKey::V6(u32::from(n.prefix()), n.network().octets()),
    }
}

pub(super) fn rule_value(id: u32, rule_action: Action) -> RuleValue {
    RuleValue::new(
        id,
        match rule_action {
            Action::Allow => action::ALLOW,
            Action::Deny => action::DENY,
        },
    )
}

/// A domain rule as the `DOMAINS` map keys it: the hash of the domain, and whether it is the
/// `*.` rule (both rules of a domain share the map's entry).
pub(super) type DomainKey = (u64, bool);

/// What the policy maps hold.
#[derive(Clone, Debug, Default)]
pub(super) struct Live {
    pub prefixes: HashMap<LpmKey, RuleValue>,
    pub domains: HashMap<u64, DomainValue>,
}

impl Live {
    /// The live domain rules' ids: each value of the map holds the ids of both rules of its
    /// domain.
    fn domain_ids(&self) -> HashMap<DomainKey, u32> {
        let mut ids = HashMap::new();
        for (hash, value) in &self.domains {
            if value.exact_action != NO_RULE {
                ids.insert((*hash, false), value.exact_rule);
            }
            if value.subdomain_action != NO_RULE {
                ids.insert((*hash, true), value.subdomain_rule);
            }
        }
        ids
    }
}

/// What a policy asks the maps to hold, in the policy's order.
#[derive(Clone, Debug, Default)]
pub(super) struct Wanted {
    pub prefixes: Vec<(LpmKey, Action)>,
    pub domains: Vec<(DomainKey, Action)>,
    /// Indices (in `prefixes`) of the rules that expire: their values say so
    /// ([`rule_flags::EXPIRES`]).
    pub expiring: BTreeSet<usize>,
}

impl Wanted {
    pub(super) fn of(policy: &Policy) -> Wanted {
        Wanted {
            prefixes: policy
                .rules
                .iter()
                .map(|rule| (lpm_key(rule.network), rule.action))
                .collect(),
            domains: policy
                .domains
                .iter()
                .map(|rule| {
                    let hash = suffix_hash(&rule.domain.wire());
                    ((hash, rule.domain.subdomains), rule.action)
                })
                .collect(),
            expiring: policy
                .rules
                .iter()
                .enumerate()
                .filter(|(_, rule)| rule.expires.is_some())
                .map(|(index, _)| index)
                .collect(),
        }
    }

    fn prefix_keys(&self) -> BTreeSet<LpmKey> {
        self.prefixes.iter().map(|(key, _)| *key).collect()
    }
}

/// Whether the live maps can take a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fit {
    InPlace,
    /// `needed` slots are more than the maps have: bigger maps of `to` slots are needed.
    Grow {
        needed: usize,
        to: u32,
    },
}

/// Whether maps of `capacity` rule slots holding `live` can take `wanted` in place.
pub(super) fn fit(live: &Live, wanted: &Wanted, capacity: u32) -> Fit {
    let needed = slots_needed(live, wanted);
    if needed <= capacity as usize {
        return Fit::InPlace;
    }
    Fit::Grow {
        needed,
        to: u32::try_from(needed.saturating_mul(2))
            .unwrap_or(u32::MAX)
            .max(DEFAULT_RULE_CAPACITY),
    }
}

/// The rule slots applying `wanted` over `live` takes: an id per rule, and the most entries
/// either trie holds at once (its wanted prefixes of that family, and the live ones deleted
/// only after the inserts).
fn slots_needed(live: &Live, wanted: &Wanted) -> usize {
    let mut keys = wanted.prefix_keys();
    keys.extend(live.prefixes.keys().copied());
    let v4 = keys
        .iter()
        .filter(|key| matches!(key, LpmKey::V4(..)))
        .count();
    let transient = v4.max(keys.len() - v4);
    (wanted.prefixes.len() + wanted.domains.len()).max(transient)
}

/// One change to the policy maps, in the order [`Plan::steps`] lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Insert or update a prefix; `rule` is its index in the policy's rules.
    WritePrefix {
        key: LpmKey,
        value: RuleValue,
        rule: usize,
    },
    /// Remove a prefix no rule wants any more.
    DeletePrefix(LpmKey),
    /// Write a domain's entry (both of its rules).
    WriteDomain { hash: u64, value: DomainValue },
    /// Remove a domain no rule names any more.
    DeleteDomain(u64),
}

/// What applying a policy changes, and in which order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Each wanted prefix's rule id, in the policy's order.
    pub prefix_ids: Vec<u32>,
    /// Each wanted domain rule's id, in the policy's order (from the same space).
    pub domain_ids: Vec<u32>,
    /// Ids new to their rule: their hit counters start again from zero, before any step.
    pub fresh_ids: Vec<u32>,
    /// The changes: prefix writes, then prefix deletions, then domain writes, then domain
    /// deletions.
    pub steps: Vec<Step>,
    pub inserted: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
}

impl Plan {
    /// The plan that brings maps of `capacity` rule slots holding `live` to `wanted`. Fails
    /// (before anything is changed) when the ids run out.
    pub(super) fn new(live: &Live, wanted: &Wanted, capacity: u32) -> Result<Plan, DatapathError> {
        let ids = assign_ids(live, wanted, capacity)?;
        let mut plan = Plan {
            prefix_ids: ids.prefixes,
            domain_ids: ids.domains,
            fresh_ids: ids.fresh,
            steps: Vec::new(),
            inserted: 0,
            updated: 0,
            unchanged: 0,
            removed: 0,
        };
        plan.diff_prefixes(live, wanted);
        plan.diff_domains(live, wanted);
        Ok(plan)
    }

    /// What the tries hold once the plan's steps are taken on tries holding `live`.
    pub(super) fn prefixes_after(&self, live: &Live) -> HashMap<LpmKey, RuleValue> {
        let mut prefixes = live.prefixes.clone();
        for step in &self.steps {
            match step {
                Step::WritePrefix { key, value, .. } => {
                    prefixes.insert(*key, *value);
                }
                Step::DeletePrefix(key) => {
                    prefixes.remove(key);
                }
                Step::WriteDomain { .. } | Step::DeleteDomain(_) => {}
            }
        }
        prefixes
    }

    /// The prefixes the plan writes or removes.
    pub(super) fn changed_prefixes(&self) -> impl Iterator<Item = LpmKey> + '_ {
        self.steps.iter().filter_map(|step| match step {
            Step::WritePrefix { key, .. } | Step::DeletePrefix(key) => Some(*key),
            Step::WriteDomain { .. } | Step::DeleteDomain(_) => None,
        })
    }

    /// Writes for new and changed prefixes, then deletions of stale ones.
    fn diff_prefixes(&mut self, live: &Live, wanted: &Wanted) {
        for (rule, ((key, rule_action), id)) in
            wanted.prefixes.iter().zip(&self.prefix_ids).enumerate()
        {
            let mut value = rule_value(*id, *rule_action);
            if wanted.expiring.contains(&rule) {
                value = value.with_flags(rule_flags::EXPIRES);
            }
            match live.prefixes.get(key) {
                Some(current) if *current == value => {
                    self.unchanged += 1;
                    continue;
                }
                Some(_) => self.updated += 1,
                None => self.inserted += 1,
            }
            self.steps.push(Step::WritePrefix {
                key: *key,
                value,
                rule,
            });
        }
        let wanted_keys = wanted.prefix_keys();
        let stale: BTreeSet<LpmKey> = live
            .prefixes
            .keys()
            .filter(|key| !wanted_keys.contains(key))
            .copied()
            .collect();
        self.removed = stale.len();
        self.steps.extend(stale.into_iter().map(Step::DeletePrefix));
    }

    /// Each wanted domain's entry (what its exact and its `*.` rule do), then deletions of
    /// the domains no rule names.
    fn diff_domains(&mut self, live: &Live, wanted: &Wanted) {
        let mut values: BTreeMap<u64, DomainValue> = BTreeMap::new();
        for (((hash, subdomains), rule_action), id) in wanted.domains.iter().zip(&self.domain_ids) {
            let value = values.entry(*hash).or_insert(DomainValue {
                exact_rule: RULE_ID_DEFAULT,
                subdomain_rule: RULE_ID_DEFAULT,
                exact_action: NO_RULE,
                subdomain_action: NO_RULE,
                _pad: [0; 6],
            });
            let code = rule_value(*id, *rule_action).action;
            if *subdomains {
                (value.subdomain_rule, value.subdomain_action) = (*id, code);
            } else {
                (value.exact_rule, value.exact_action) = (*id, code);
            }
        }
        let stale: BTreeSet<u64> = live
            .domains
            .keys()
            .filter(|hash| !values.contains_key(hash))
            .copied()
            .collect();
        self.steps.extend(
            values
                .into_iter()
                .map(|(hash, value)| Step::WriteDomain { hash, value }),
        );
        self.steps.extend(stale.into_iter().map(Step::DeleteDomain));
    }
}

/// The ids of the wanted prefixes and domain rules, in the policy's order.
struct Ids {
    prefixes: Vec<u32>,
    domains: Vec<u32>,
    /// Those new to their rule.
    fresh: Vec<u32>,
}

/// The ids of the wanted prefixes and domain rules (see the module doc).
fn assign_ids(live: &Live, wanted: &Wanted, capacity: u32) -> Result<Ids, DatapathError> {
    let live_domains = live.domain_ids();
    let prefix_live_ids: Vec<Option<u32>> = wanted
        .prefixes
        .iter()
        .map(|(key, _)| live.prefixes.get(key).map(|value| value.rule_id))
        .collect();
    let domain_live_ids: Vec<Option<u32>> = wanted
        .domains
        .iter()
        .map(|(key, _)| live_domains.get(key).copied())
        .collect();
    let kept: BTreeSet<u32> = prefix_live_ids
        .iter()
        .chain(&domain_live_ids)
        .flatten()
        .copied()
        .collect();
    let wanted_keys = wanted.prefix_keys();
    let wanted_domains: BTreeSet<DomainKey> = wanted.domains.iter().map(|(key, _)| *key).collect();
    let stale: BTreeSet<u32> = live
        .prefixes
        .iter()
        .filter(|(key, _)| !wanted_keys.contains(key))
        .map(|(_, value)| value.rule_id)
        .chain(
            live_domains
                .iter()
                .filter(|(key, _)| !wanted_domains.contains(key))
                .map(|(_, id)| *id),
        )
        .collect();
    // A stale rule that expires keeps its id until the last: the new rule's `RULE_EXPIRY`
    // entry is written before the stale rule is deleted, and would be the stale rule's until
    // then.
    let expiring_stale: BTreeSet<u32> = live
        .prefixes
        .iter()
        .filter(|(key, value)| !wanted_keys.contains(key) && value.flags & rule_flags::EXPIRES != 0)
        .map(|(_, value)| value.rule_id)
        .collect();
    let mut free = (0..capacity)
        .filter(|id| !kept.contains(id) && !stale.contains(id))
        .chain(
            stale
                .iter()
                .copied()
                .filter(|id| !kept.contains(id) && !expiring_stale.contains(id)),
        )
        .chain(
            expiring_stale
                .iter()
                .copied()
                .filter(|id| !kept.contains(id)),
        );
    let mut fresh = Vec::new();
    let mut take = |live_ids: &[Option<u32>], needed: usize| {
        live_ids
            .iter()
            .map(|live_id| match live_id {
                Some(id) => Ok(*id),
                None => {
                    let id = free
                        .next()
                        .ok_or(DatapathError::TooManyRules { needed, capacity })?;
                    fresh.push(id);
                    Ok(id)
                }
            })
            .collect::<Result<Vec<u32>, DatapathError>>()
    };
    let prefixes = take(&prefix_live_ids, wanted.prefixes.len())?;
    let domains = take(
        &domain_live_ids,
        wanted.prefixes.len() + wanted.domains.len(),
    )?;
    Ok(Ids {
        prefixes,
        domains,
        fresh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(network: &str) -> LpmKey {
        lpm_key(network.parse().unwrap())
    }

    fn wanted(prefixes: &[(&str, Action)]) -> Wanted {
        Wanted {
            prefixes: prefixes
                .iter()
                .map(|(network, rule_action)| (key(network), *rule_action))
                .collect(),
            domains: Vec::new(),
            expiring: Default::default(),
        }
    }

    /// The maps after one step, as the kernel would hold them.
    fn take_step(live: &mut Live, step: &Step) {
        match *step {
            Step::WritePrefix { key, value, .. } => {
                live.prefixes.insert(key, value);
            }
            Step::DeletePrefix(key) => {
                live.prefixes.remove(&key);
            }
            Step::WriteDomain { hash, value } => {
                live.domains.insert(hash, value);
            }
            Step::DeleteDomain(hash) => {
                live.domains.remove(&hash);
            }
        }
    }

    /// Plans `wanted` over `live` and carries the plan out on a copy.
    fn apply(live: &Live, wanted: &Wanted, capacity: u32) -> (Plan, Live) {
        let plan = Plan::new(live, wanted, capacity).unwrap();
        let mut after = live.clone();
        for step in &plan.steps {
            take_step(&mut after, step);
        }
        (plan, after)
    }

    fn id_of(live: &Live, network: &str) -> u32 {
        live.prefixes[&key(network)].rule_id
    }

    /// The action of the longest IPv4 prefix holding `address`, as the kernel's trie decides.
    fn verdict(live: &Live, address: [u8; 4]) -> Option<u8> {
        let address = u32::from_be_bytes(address);
        live.prefixes
            .iter()
            .filter_map(|(key, value)| match key {
                LpmKey::V4(length, network) => {
                    let mask = u32::MAX.checked_shl(32 - length).unwrap_or(0);
                    (address & mask == u32::from_be_bytes(*network)).then_some((*length, value))
                }
                LpmKey::V6(..) => None,
            })
            .max_by_key(|(length, _)| *length)
            .map(|(_, value)| value.action)
    }

    #[test]
    fn lpm_keys_are_prefix_and_network_order_bytes() {
        assert_eq!(key("10.1.2.0/24"), LpmKey::V4(24, [10, 1, 2, 0]));
        assert_eq!(key("0.0.0.0/0"), LpmKey::V4(0, [0; 4]));
        let LpmKey::V6(prefix, bytes) = key("2001:db8::/32") else {
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
        assert_eq!(rule_value(0, Action::Allow)._pad, [0; 2]);
        assert_eq!(rule_value(0, Action::Allow).flags, 0);
    }

    #[test]
    fn fresh_maps_give_ids_in_the_policys_order() {
        let policy = wanted(&[
            ("10.0.0.0/8", Action::Allow),
            ("2001:db8::/32", Action::Deny),
        ]);
        let (plan, after) = apply(&Live::default(), &policy, 16);
        assert_eq!(plan.prefix_ids, [0, 1]);
        assert_eq!(plan.fresh_ids, [0, 1]);
        assert_eq!((plan.inserted, plan.updated, plan.removed), (2, 0, 0));
        assert_eq!(
            after.prefixes[&key("2001:db8::/32")],
            rule_value(1, Action::Deny)
        );
    }

    #[test]
    fn ids_are_stable_across_a_reapply_which_changes_nothing() {
        let policy = wanted(&[("10.0.0.0/8", Action::Allow), ("10.1.0.0/16", Action::Deny)]);
        let (_, live) = apply(&Live::default(), &policy, 16);
        // The same prefixes in another order keep their ids.
        let reordered = wanted(&[("10.1.0.0/16", Action::Deny), ("10.0.0.0/8", Action::Allow)]);
        let (plan, after) = apply(&live, &reordered, 16);
        assert_eq!(plan.prefix_ids, [1, 0]);
        assert!(plan.steps.is_empty(), "{:?}", plan.steps);
        assert!(plan.fresh_ids.is_empty());
        assert_eq!(plan.unchanged, 2);
        assert_eq!(after.prefixes, live.prefixes);
    }

    #[test]
    fn a_changed_action_is_an_update_that_keeps_the_id_and_its_count() {
        let (_, live) = apply(
            &Live::default(),
            &wanted(&[("10.0.0.0/8", Action::Allow), ("10.1.0.0/16", Action::Deny)]),
            16,
        );
        let (plan, after) = apply(
            &live,
            &wanted(&[
                ("10.0.0.0/8", Action::Allow),
                ("10.1.0.0/16", Action::Allow),
            ]),
            16,
        );
        assert_eq!((plan.inserted, plan.updated, plan.unchanged), (0, 1, 1));
        assert!(plan.fresh_ids.is_empty(), "an update keeps its hit count");
        assert_eq!(
            after.prefixes[&key("10.1.0.0/16")],
            rule_value(1, Action::Allow)
        );
    }

    #[test]
    fn new_rules_take_ids_no_live_entry_holds() {
        let (_, live) = apply(
            &Live::default(),
            &wanted(&[
                ("10.0.0.0/8", Action::Allow),
                ("192.0.2.0/24", Action::Deny),
            ]),
            16,
        );
        let (plan, after) = apply(
            &live,
            &wanted(&[
                ("10.0.0.0/8", Action::Allow),
                ("198.51.100.0/24", Action::Deny),
            ]),
            16,
        );
        // Id 1 is still 192.0.2.0/24's until it is deleted: the new rule takes 2.
        assert_eq!(id_of(&after, "198.51.100.0/24"), 2);
        assert_eq!(plan.fresh_ids, [2]);
        assert_eq!(plan.removed, 1);
        assert!(!after.prefixes.contains_key(&key("192.0.2.0/24")));
    }

    #[test]
    fn freed_ids_are_recycled_once_no_other_is_free() {
        let (_, live) = apply(
            &Live::default(),
            &wanted(&[
                ("10.0.0.0/8", Action::Allow),
                ("192.0.2.0/24", Action::Deny),
            ]),
            2,
        );
        let (plan, after) = apply(
            &live,
            &wanted(&[
                ("10.0.0.0/8", Action::Allow),
                ("198.51.100.0/24", Action::Deny),
            ]),
            2,
        );
        assert_eq!(id_of(&after, "198.51.100.0/24"), 1, "the stale rule's id");
        assert_eq!(plan.fresh_ids, [1], "and its hit count starts from zero");
        assert_eq!(id_of(&after, "10.0.0.0/8"), 0);
    }

    #[test]
    fn running_out_of_ids_is_refused_before_any_change() {
        let policy = wanted(&[
            ("10.0.0.0/8", Action::Allow),
            ("192.0.2.0/24", Action::Deny),
            ("198.51.100.0/24", Action::Deny),
        ]);
        assert!(matches!(
            Plan::new(&Live::default(), &policy, 2),
            Err(DatapathError::TooManyRules {
                needed: 3,
                capacity: 2
            })
        ));
    }

    #[test]
    fn deletions_come_after_every_write_so_no_verdict_flickers() {
        let before = wanted(&[
            ("0.0.0.0/0", Action::Deny),
            ("10.0.0.0/8", Action::Allow),
            ("10.1.0.0/16", Action::Deny),
            ("10.1.2.0/24", Action::Allow),
            ("192.0.2.0/24", Action::Allow),
        ]);
        let after = wanted(&[
            ("0.0.0.0/0", Action::Deny),
            ("10.0.0.0/8", Action::Allow),
            ("10.1.0.0/16", Action::Allow),
            ("10.2.0.0/16", Action::Deny),
            ("198.51.100.0/24", Action::Allow),
        ]);
        let (_, mut live) = apply(&Live::default(), &before, 16);
        let plan = Plan::new(&live, &after, 16).unwrap();
        let first_deletion = plan
            .steps
            .iter()
            .position(|step| matches!(step, Step::DeletePrefix(_)))
            .expect("prefixes are removed");
        assert!(
            plan.steps[first_deletion..]
                .iter()
                .all(|step| !matches!(step, Step::WritePrefix { .. })),
            "{:?}",
            plan.steps
        );
        let (_, target) = apply(&live, &after, 16);
        let probes = [
            [10, 1, 2, 1],
            [10, 1, 3, 1],
            [10, 2, 0, 1],
            [10, 3, 0, 1],
            [192, 0, 2, 1],
            [198, 51, 100, 1],
            [203, 0, 113, 1],
        ];
        let start: Vec<_> = probes.iter().map(|p| verdict(&live, *p)).collect();
        let end: Vec<_> = probes.iter().map(|p| verdict(&target, *p)).collect();
        for step in &plan.steps {
            take_step(&mut live, step);
            for (i, probe) in probes.iter().enumerate() {
                if start[i] == end[i] {
                    assert_eq!(verdict(&live, *probe), start[i], "{probe:?} after {step:?}");
                }
            }
        }
        assert_eq!(live.prefixes, target.prefixes);
    }

    #[test]
    fn maps_too_small_for_old_and_new_at_once_must_grow_first() {
        let full = wanted(&[
            ("192.0.2.0/24", Action::Allow),
            ("198.51.100.0/24", Action::Allow),
        ]);
        let (_, live) = apply(&Live::default(), &full, 2);
        assert_eq!(fit(&live, &full, 2), Fit::InPlace);
        // Other prefixes of the same count: the trie holds four for a moment.
        let swapped = wanted(&[
            ("203.0.113.0/24", Action::Allow),
            ("10.0.0.0/8", Action::Allow),
        ]);
        assert_eq!(
            fit(&live, &swapped, 2),
            Fit::Grow {
                needed: 4,
                to: DEFAULT_RULE_CAPACITY
            }
        );
        assert_eq!(fit(&live, &swapped, 4), Fit::InPlace);
        // The families have tries of their own.
        let other_family = wanted(&[
            ("2001:db8::/32", Action::Allow),
            ("fd00::/8", Action::Allow),
        ]);
        assert_eq!(fit(&live, &other_family, 2), Fit::InPlace);
        // Grown maps have room to spare: twice what is needed.
        let many = Wanted {
            prefixes: (0..5000u32)
                .map(|i| (LpmKey::V4(32, i.to_be_bytes()), Action::Allow))
                .collect(),
            domains: Vec::new(),
            expiring: Default::default(),
        };
        assert_eq!(
            fit(&Live::default(), &many, DEFAULT_RULE_CAPACITY),
            Fit::Grow {
                needed: 5000,
                to: 10_000
            }
        );
    }

    #[test]
    fn domain_rules_share_the_id_space_and_one_entry_per_domain() {
        let mut policy = wanted(&[("10.0.0.0/8", Action::Allow)]);
        policy.domains = vec![
            ((7, false), Action::Allow),
            ((7, true), Action::Deny),
            ((9, true), Action::Allow),
        ];
        let (plan, live) = apply(&Live::default(), &policy, 16);
        assert_eq!(plan.prefix_ids, [0]);
        assert_eq!(plan.domain_ids, [1, 2, 3]);
        assert_eq!(
            live.domains[&7],
            DomainValue {
                exact_rule: 1,
                subdomain_rule: 2,
                exact_action: action::ALLOW,
                subdomain_action: action::DENY,
                _pad: [0; 6],
            }
        );
        assert_eq!(live.domains[&9].exact_action, NO_RULE);
        assert_eq!(live.domains[&9].exact_rule, RULE_ID_DEFAULT);

        // Dropping `*.` of domain 7 and all of domain 9 keeps the exact rule's id.
        policy.domains = vec![((7, false), Action::Allow), ((11, false), Action::Deny)];
        let (plan, after) = apply(&live, &policy, 16);
        assert_eq!(plan.domain_ids[0], 1);
        assert_eq!(plan.domain_ids[1], 4, "an id no live rule holds");
        assert_eq!(after.domains[&7].subdomain_action, NO_RULE);
        assert!(!after.domains.contains_key(&9));
        let last_write = plan
            .steps
            .iter()
            .rposition(|step| matches!(step, Step::WriteDomain { .. }))
            .unwrap();
        assert_eq!(plan.steps[last_write + 1..], [Step::DeleteDomain(9)]);
    }
}
