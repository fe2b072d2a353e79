//! Applying a policy to the live maps: reading what they hold, and carrying out the
//! [plan](super::plan) in its order.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{
    HashMap as AyaHashMap, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key,
};
use egress_monitor_common::{
    dns::{DomainValue, queries as dns_queries},
    maps as names,
    policy::{IPV4_ADDR_LEN, IPV6_ADDR_LEN, config},
};
use serde::Serialize;

use super::{
    Datapath, DatapathError, Opened,
    flat::Tables,
    grow::forget_revoked,
    maps::{capacity_of, open_map, open_trie, read_config, write_config},
    plan::{Fit, Live, LpmKey, Plan, Step, Wanted, fit},
    trust::TrustPlan,
};
use egress_monitor_policy::{Mode, Policy};

use crate::{
    datapath::pins::PinLayout,
    datapath::state::{StateFile, StateRule},
};

/// Holds the pin path's apply lock (an exclusive lock on `apply.lock` in its run directory)
/// until dropped; waits for another apply to finish.
pub(super) fn apply_lock(layout: &PinLayout) -> Result<std::fs::File, DatapathError> {
    let dir = layout.run_dir();
    std::fs::create_dir_all(&dir).map_err(DatapathError::pin("creating", &dir))?;
    let path = dir.join("apply.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(DatapathError::pin("opening", &path))?;
    file.lock().map_err(DatapathError::pin("locking", &path))?;
    Ok(file)
}

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

impl Datapath {
    /// Brings the live policy to `policy` by a diff, sets its mode and version, and records
    /// its names in the state file. Rule ids stay with their prefixes across applies, so the
    /// per-rule counters keep meaning the same rule (see [`super::plan`]).
    ///
    /// A policy larger than the live maps is applied to bigger ones, swapped in without a gap
    /// (see [`Datapath::grow`]) when this process attached every live link; otherwise it is
    /// refused and nothing changes.
    pub fn apply(&mut self, policy: &Policy) -> Result<ApplyReport, DatapathError> {
        // One apply at a time on a pin path (the daemon's reload and `policy apply` may race):
        // two interleaved would leave the tables of one beside the tries of the other.
        let _lock = apply_lock(&self.layout)?;
        let capacity = capacity_of(&self.target)?;
        let live = read_live(&self.target)?;
        let (needed, grown) = match fit(&live, &Wanted::of(policy), capacity) {
            Fit::InPlace => return self.apply_in_place(policy),
            Fit::Grow { needed, to } => (needed, to),
        };
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
        self.grow(policy, grown, &attach_to)
    }

    /// [`Datapath::apply`] to maps big enough for `policy`.
    pub(super) fn apply_in_place(&mut self, policy: &Policy) -> Result<ApplyReport, DatapathError> {
        let started = Instant::now();
        // Everything that can fail outside the maps (a namespace gone, say) fails before any
        // map changes; so does a plan that does not fit.
        let trust = TrustPlan::of(policy)?;
        let previous_version = read_config(&self.target)?.policy_version;
        let capacity = capacity_of(&self.target)?;
        let live = read_live(&self.target)?;
        let plan = Plan::new(&live, &Wanted::of(policy), capacity)?;
        let tables = Tables::open(&self.target, &plan.prefixes_after(&live))?;
        self.reset_hits(&plan.fresh_ids)?;
        // The flat tables never answer differently from the tries: what the change touches
        // asks the tries until they hold the new policy (see `flat::update`).
        if tables.zero(plan.changed_prefixes()) > 0 {
            super::flat::barrier::wait_for_running_programs().map_err(DatapathError::Barrier)?;
        }
        let version = policy.version();
        let state = recorded_state(policy, &plan, version);
        // An expiring rule's entry is in place before the rule: the kernel never sees the
        // rule without knowing when it ends.
        self.write_expiry(&state)?;
        self.take_steps(&plan, policy)?;
        tables.fill();
        let refused = tables.refused();
        if refused > 0 {
            log::warn!(
                "the fast lane's tables are full: {refused} regions with allowed addresses inside \
                 are judged by the tries (the same verdicts, a little slower)"
            );
        }
        self.write_dns_settings(policy)?;
        self.write_trust(&trust)?;
        // Names first, then the version: a reader that sees the new version finds its names.
        state.save(&self.layout.state_file())?;
        self.set_mode(policy.mode)?;
        write_config(&self.target, config::POLICY_VERSION, version)?;
        Ok(ApplyReport {
            version,
            previous_version,
            inserted: plan.inserted,
            updated: plan.updated,
            removed: plan.removed,
            unchanged: plan.unchanged,
            mode: policy.mode,
            elapsed: started.elapsed(),
            grown: None,
        })
    }

    /// Zeroes the hit counters of ids new to their rule.
    fn reset_hits(&self, ids: &[u32]) -> Result<(), DatapathError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut hits: PerCpuArray<MapData, u64> = open_map(&self.target, names::RULE_HITS)?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, err)| {
                DatapathError::pin("reading", Path::new("/sys/devices/system/cpu/possible"))(err)
            })?
            .get() as usize;
        for id in ids {
            let zeros =
                PerCpuValues::try_from(vec![0u64; cpus]).map_err(|err| DatapathError::Map {
                    name: names::RULE_HITS,
                    what: "reset".into(),
                    source: MapError::from(err),
                })?;
            hits.set(*id, zeros, 0)
                .map_err(DatapathError::map(names::RULE_HITS, "reset"))?;
        }
        Ok(())
    }

    /// The plan's writes and deletions, in its order.
    fn take_steps(&self, plan: &Plan, policy: &Policy) -> Result<(), DatapathError> {
        let mut v4 = open_trie::<IPV4_ADDR_LEN>(&self.target, names::POLICY_V4)?;
        let mut v6 = open_trie::<IPV6_ADDR_LEN>(&self.target, names::POLICY_V6)?;
        let mut domains: AyaHashMap<MapData, u64, DomainValue> =
            open_map(&self.target, names::DOMAINS)?;
        for step in &plan.steps {
            match step {
                Step::WritePrefix { key, value, rule } => {
                    let what = || format!("insert {}", policy.rules[*rule].network);
                    match key {
                        LpmKey::V4(prefix, addr) => v4
                            .insert(&Key::new(*prefix, *addr), value, 0)
                            .map_err(DatapathError::map(names::POLICY_V4, what()))?,
                        LpmKey::V6(prefix, addr) => v6
                            .insert(&Key::new(*prefix, *addr), value, 0)
                            .map_err(DatapathError::map(names::POLICY_V6, what()))?,
                    }
                }
                Step::DeletePrefix(LpmKey::V4(prefix, addr)) => v4
                    .remove(&Key::new(*prefix, *addr))
                    .map_err(DatapathError::map(names::POLICY_V4, "remove a stale rule"))?,
                Step::DeletePrefix(LpmKey::V6(prefix, addr)) => v6
                    .remove(&Key::new(*prefix, *addr))
                    .map_err(DatapathError::map(names::POLICY_V6, "remove a stale rule"))?,
                Step::WriteDomain { hash, value } => domains
                    .insert(hash, value, 0)
                    .map_err(DatapathError::map(names::DOMAINS, "insert"))?,
                Step::DeleteDomain(hash) => domains
                    .remove(hash)
                    .map_err(DatapathError::map(names::DOMAINS, "remove a stale rule"))?,
            }
        }
        Ok(())
    }

    /// What the domain rules decide beyond their entries: how many there are, what they no
    /// longer allow, and whether DNS queries are filtered.
    fn write_dns_settings(&self, policy: &Policy) -> Result<(), DatapathError> {
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
        )
    }
}

/// What the policy maps at `layout` hold.
fn read_live(layout: &PinLayout) -> Result<Live, DatapathError> {
    let v4 = open_trie::<IPV4_ADDR_LEN>(layout, names::POLICY_V4)?;
    let v6 = open_trie::<IPV6_ADDR_LEN>(layout, names::POLICY_V6)?;
    let domains: AyaHashMap<MapData, u64, DomainValue> = open_map(layout, names::DOMAINS)?;
    let mut live = Live::default();
    for item in v4.iter() {
        let (key, value) = item.map_err(DatapathError::map(names::POLICY_V4, "read"))?;
        live.prefixes
            .insert(LpmKey::V4(key.prefix_len(), key.data()), value);
    }
    for item in v6.iter() {
        let (key, value) = item.map_err(DatapathError::map(names::POLICY_V6, "read"))?;
        live.prefixes
            .insert(LpmKey::V6(key.prefix_len(), key.data()), value);
    }
    for item in domains.iter() {
        let (hash, value) = item.map_err(DatapathError::map(names::DOMAINS, "read"))?;
        live.domains.insert(hash, value);
    }
    Ok(live)
}

/// The state file of `policy` applied as `plan` says: every rule's name by its id.
fn recorded_state(policy: &Policy, plan: &Plan, version: u64) -> StateFile {
    let entry = |id: &u32, cidr: String, action, name: &str, origin: String| StateRule {
        id: *id,
        cidr,
        action,
        name: name.to_owned(),
        origin,
        expires: None,
    };
    let prefixes = policy.rules.iter().zip(&plan.prefix_ids).map(|(rule, id)| {
        let cidr = rule.network.to_string();
        StateRule {
            expires: rule.expires.map(egress_monitor_api::time::rfc3339),
            ..entry(id, cidr, rule.action, &rule.name, rule.origin.to_string())
        }
    });
    let domains = policy
        .domains
        .iter()
        .zip(&plan.domain_ids)
        .map(|(rule, id)| {
            let cidr = rule.domain.to_string();
            entry(id, cidr, rule.action, &rule.name, rule.origin.to_string())
        });
    let mut rules: Vec<StateRule> = prefixes.chain(domains).collect();
    rules.sort_by_key(|rule| rule.id);
    StateFile {
        version: format!("{version:016x}"),
        mode: policy.mode,
        mode_source: policy.mode_source.clone(),
        applied_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        groups: policy
            .groups
            .iter()
            .map(|(n, on)| ((*n).to_owned(), *on))
            .collect(),
        rules,
    }
}
