//! Replacing the pinned state under traffic: another build's, or bigger maps for a policy
//! (carrying over what the live maps hold), then detaching the old.

use std::{collections::BTreeSet, path::PathBuf};

use aya::maps::{Array, HashMap as AyaHashMap, LpmTrie, MapData, MapError, PerCpuArray};
use egress_monitor_common::{
    dns::{DomainValue, LearnedSocket, LearnedValue, PendingKey},
    maps::{self as names, Counter, SockOwner},
    policy::{IPV4_ADDR_LEN, IPV6_ADDR_LEN, RuleExpiry, RuleValue, config},
    verdict::action,
};

use super::{
    ApplyReport, Datapath, DatapathError, Opened, STAGING,
    links::{CgroupHook, LinkName, link_names, unpin_link},
    maps::{MapKind, capacity_of, open_map, spec, write_config},
    object::create_or_clean,
    remove_dir_entries, remove_pins,
};
use egress_monitor_policy::Policy;

use crate::{datapath::pins::PinLayout, datapath::state::StateFile};

/// An attachment to make again when bigger maps are swapped in.
pub(super) enum Reattach {
    Cgroup(PathBuf),
    Tc(String),
}

/// Config slots that describe the live state and carry over to bigger maps (not the build, nor
/// the check secret, which the new maps have of their own).
const CARRIED_CONFIG: [u32; 11] = [
    config::MODE,
    config::POLICY_VERSION,
    config::PINNED_SINCE,
    config::KERNEL_LOG,
    config::FLOW_GENERATION,
    config::DNS_GRACE_NS,
    config::DOMAIN_RULES,
    config::DNS_QUERIES,
    config::DNS_EVENT_INTERVAL_NS,
    config::DNS_ANY_NETNS,
    config::FAST_LANE_OFF,
];

/// Copies what the maps at `from` hold into the (bigger, empty) maps at `to` of the same
/// build: the config, the policy as it is (so rule ids stay), the counters, and what the
/// programs learned ([`carry_dynamic`]).
pub(super) fn carry_over(from: &PinLayout, to: &PinLayout) -> Result<(), DatapathError> {
    let source: Array<MapData, u64> = open_map(from, names::CONFIG)?;
    for slot in CARRIED_CONFIG {
        let value = source
            .get(&slot, 0)
            .map_err(DatapathError::map(names::CONFIG, "read"))?;
        write_config(to, slot, value)?;
    }
    // The expiring rules' ends before the rules themselves.
    copy_map::<u32, RuleExpiry>(from, to, names::RULE_EXPIRY, 0)?;
    copy_map::<[u8; IPV4_ADDR_LEN], RuleValue>(from, to, names::POLICY_V4, 0)?;
    copy_map::<[u8; IPV6_ADDR_LEN], RuleValue>(from, to, names::POLICY_V6, 0)?;
    copy_map::<u64, DomainValue>(from, to, names::DOMAINS, 0)?;
    copy_map::<u32, Counter>(from, to, names::COUNTERS, 0)?;
    copy_map::<u32, u64>(from, to, names::STATS, 0)?;
    copy_map::<u32, u64>(from, to, names::RULE_HITS, 0)?;
    carry_dynamic(from, to)
}

/// Copies what the programs learned and keep learning: DNS-learned addresses, the sockets
/// holding one, socket owners (and their namespaces), questions in flight. Entries the new
/// maps have already are kept (they are newer).
fn carry_dynamic(from: &PinLayout, to: &PinLayout) -> Result<(), DatapathError> {
    const NO_OVERWRITE: u64 = 1; // BPF_NOEXIST
    copy_learned::<4>(from, to, names::DNS_ALLOWED_V4)?;
    copy_learned::<16>(from, to, names::DNS_ALLOWED_V6)?;
    copy_map::<LearnedSocket, u32>(from, to, names::LEARNED_SOCKETS, NO_OVERWRITE)?;
    copy_map::<u64, SockOwner>(from, to, names::SOCK_OWNERS, NO_OVERWRITE)?;
    copy_map::<PendingKey, u64>(from, to, names::DNS_PENDING, NO_OVERWRITE)
}

/// Removes learned addresses, and sockets holding one, whose domain rule no longer allows (no
/// rule of `DOMAINS` with that id and action allow).
pub(super) fn forget_revoked(layout: &PinLayout) -> Result<(), DatapathError> {
    let domains: AyaHashMap<MapData, u64, DomainValue> = open_map(layout, names::DOMAINS)?;
    let mut allowing = BTreeSet::new();
    for (_, value) in domains.iter().filter_map(Result::ok) {
        if value.exact_action == action::ALLOW {
            allowing.insert(value.exact_rule);
        }
        if value.subdomain_action == action::ALLOW {
            allowing.insert(value.subdomain_rule);
        }
    }
    let allowing = &allowing;
    fn forget<K: aya::Pod, V: aya::Pod>(
        layout: &PinLayout,
        name: &'static str,
        rule_of: impl Fn(&V) -> u32,
        allowing: &BTreeSet<u32>,
    ) -> Result<(), DatapathError> {
        let mut map: AyaHashMap<MapData, K, V> = open_map(layout, name)?;
        let revoked: Vec<K> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, value)| !allowing.contains(&rule_of(value)))
            .map(|(key, _)| key)
            .collect();
        for key in &revoked {
            // Gone already (the LRU evicted it): nothing to do.
            let _ = map.remove(key);
        }
        Ok(())
    }
    forget::<[u8; 4], LearnedValue>(layout, names::DNS_ALLOWED_V4, |v| v.rule_id, allowing)?;
    forget::<[u8; 16], LearnedValue>(layout, names::DNS_ALLOWED_V6, |v| v.rule_id, allowing)?;
    forget::<LearnedSocket, u32>(layout, names::LEARNED_SOCKETS, |rule| *rule, allowing)?;
    Ok(())
}

/// Copies learned addresses, keeping whichever of two entries for an address expires later (an
/// answer refreshed in the live maps after the first copy must not keep its earlier expiry).
fn copy_learned<const N: usize>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
) -> Result<(), DatapathError> {
    let source: AyaHashMap<MapData, [u8; N], LearnedValue> = open_map(from, name)?;
    let mut target: AyaHashMap<MapData, [u8; N], LearnedValue> = open_map(to, name)?;
    for (address, learned) in source.iter().filter_map(Result::ok) {
        let newer = target
            .get(&address, 0)
            .is_ok_and(|existing| existing.expires_ns >= learned.expires_ns);
        if !newer {
            target
                .insert(&address, &learned, 0)
                .map_err(DatapathError::map(name, "copy"))?;
        }
    }
    Ok(())
}

/// Copies the entries of map `name` from the maps at `from` to those at `to` (of the same
/// build), as its kind in [`MAPS`](super::maps::MAPS) has them stored: `K` and `V` are its key
/// and value types (arrays are indexed by `u32`, whatever `K`), `flags` those of each insert.
fn copy_map<K: aya::Pod, V: aya::Pod>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
    flags: u64,
) -> Result<(), DatapathError> {
    match spec(name)?.kind {
        MapKind::LpmTrie => copy_trie::<K, V>(from, to, name, flags),
        MapKind::HashMap | MapKind::LruHashMap => copy_hash::<K, V>(from, to, name, flags),
        MapKind::PerCpuArray => copy_per_cpu::<V>(from, to, name, flags),
        MapKind::Array => copy_array::<V>(from, to, name, flags),
        MapKind::RingBuf | MapKind::Queue => Err(DatapathError::NotCopied(name)),
    }
}

fn copy_trie<K: aya::Pod, V: aya::Pod>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
    flags: u64,
) -> Result<(), DatapathError> {
    let source: LpmTrie<MapData, K, V> = open_map(from, name)?;
    let mut target: LpmTrie<MapData, K, V> = open_map(to, name)?;
    for item in source.iter() {
        let (key, value) = item.map_err(DatapathError::map(name, "read"))?;
        target
            .insert(&key, &value, flags)
            .map_err(DatapathError::map(name, "copy"))?;
    }
    Ok(())
}

/// Copies a hash or LRU map's entries; an entry that went while it was read is skipped.
fn copy_hash<K: aya::Pod, V: aya::Pod>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
    flags: u64,
) -> Result<(), DatapathError> {
    let source: AyaHashMap<MapData, K, V> = open_map(from, name)?;
    let mut target: AyaHashMap<MapData, K, V> = open_map(to, name)?;
    for (key, value) in source.iter().filter_map(Result::ok) {
        match target.insert(&key, &value, flags) {
            Ok(()) => {}
            // Already there (NO_OVERWRITE): the new maps' entry is the newer.
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => return Err(DatapathError::map(name, "copy")(err)),
        }
    }
    Ok(())
}

fn copy_per_cpu<V: aya::Pod>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
    flags: u64,
) -> Result<(), DatapathError> {
    let source: PerCpuArray<MapData, V> = open_map(from, name)?;
    let mut target: PerCpuArray<MapData, V> = open_map(to, name)?;
    for index in 0..source.len().min(target.len()) {
        let values = source
            .get(&index, 0)
            .map_err(DatapathError::map(name, "read"))?;
        target
            .set(index, values, flags)
            .map_err(DatapathError::map(name, "copy"))?;
    }
    Ok(())
}

fn copy_array<V: aya::Pod>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
    flags: u64,
) -> Result<(), DatapathError> {
    let source: Array<MapData, V> = open_map(from, name)?;
    let mut target: Array<MapData, V> = open_map(to, name)?;
    for index in 0..source.len().min(target.len()) {
        let value = source
            .get(&index, 0)
            .map_err(DatapathError::map(name, "read"))?;
        target
            .set(index, &value, flags)
            .map_err(DatapathError::map(name, "copy"))?;
    }
    Ok(())
}

impl Datapath {
    /// Completes a replacement once the staged programs are attached everywhere the caller
    /// wants: the old links whose targets got a new link are detached, the old pins removed,
    /// and the staged ones moved into place. Old links to targets not attached again are kept
    /// (only `detach` removes enforcement) and named in the returned list.
    pub fn finish_replacement(&mut self) -> Result<Vec<String>, DatapathError> {
        if !matches!(
            self.opened,
            Opened::Replacing { .. } | Opened::Growing { .. }
        ) {
            return Ok(Vec::new());
        }
        if let Opened::Growing { .. } = self.opened {
            // What the live programs learned while the bigger maps were filled and attached
            // (but nothing the new policy revoked).
            carry_dynamic(&self.layout, &self.target)?;
            forget_revoked(&self.target)?;
        }
        let staging = self.target.clone();
        let mut kept = Vec::new();
        for name in link_names(&self.layout) {
            let old = self.layout.links().join(&name);
            if staging.links().join(&name).exists() {
                // The new program is attached here already: detaching the old leaves no gap.
                unpin_link(&old)?;
            } else {
                kept.push(name);
            }
        }
        for dir in [self.layout.maps(), self.layout.programs()] {
            remove_dir_entries(&dir);
        }
        for (from, to) in [
            (staging.maps(), self.layout.maps()),
            (staging.programs(), self.layout.programs()),
            (staging.links(), self.layout.links()),
        ] {
            for entry in std::fs::read_dir(&from)
                .map_err(DatapathError::pin("reading", &from))?
                .flatten()
            {
                let destination = to.join(entry.file_name());
                std::fs::rename(entry.path(), &destination)
                    .map_err(DatapathError::pin("moving a pin to", &destination))?;
            }
        }
        remove_pins(&staging);
        self.target = self.layout.clone();
        self.opened = Opened::Adopted;
        Ok(kept)
    }

    /// The attachments to make again for a swap: every live link's cgroup or interface. `Err`
    /// names a link this process cannot attach again (not attached by it, or a TC link in
    /// another network namespace).
    pub(super) fn reattach_targets(&self) -> Result<Vec<Reattach>, String> {
        let own_netns = LinkName::own_netns().ok();
        let mut targets = Vec::new();
        for link in link_names(&self.target) {
            let target = self.targets.get(&link).ok_or_else(|| link.clone())?;
            match link.parse::<LinkName>() {
                // The cgroup's other links are made again with it.
                Ok(LinkName::Cgroup {
                    hook: CgroupHook::Egress,
                    ..
                }) => targets.push(Reattach::Cgroup(PathBuf::from(target))),
                Ok(LinkName::Tc { netns, .. }) => {
                    if own_netns != Some(netns) {
                        return Err(link);
                    }
                    targets.push(Reattach::Tc(target.clone()));
                }
                Ok(LinkName::Cgroup { .. }) | Err(_) => {}
            }
        }
        Ok(targets)
    }

    /// Swaps in maps of `capacity` slots under traffic: bigger maps and programs are staged,
    /// filled with what the live maps hold (so rule ids, counters, learned addresses and the
    /// sockets that hold them carry on), given `policy`, attached beside the live programs at
    /// every target (a packet then passes only if both pass it), filled again with what the
    /// live ones learned meanwhile, and only then are the old links removed. If anything fails
    /// the staged state goes and the live one was never touched.
    pub(super) fn grow(
        &mut self,
        policy: &Policy,
        capacity: u32,
        attach_to: &[Reattach],
    ) -> Result<ApplyReport, DatapathError> {
        let from = capacity_of(&self.target)?;
        let state = StateFile::load(&self.layout.state_file())?;
        let staging = PinLayout::new(self.layout.root.join(STAGING));
        if staging.root.exists() {
            remove_pins(&staging);
        }
        staging.prepare()?;
        create_or_clean(&staging, capacity as usize)?;
        let live = std::mem::replace(&mut self.target, staging.clone());
        let opened = std::mem::replace(&mut self.opened, Opened::Growing { from, to: capacity });
        match self.fill_and_attach(&live, policy, attach_to) {
            Ok(mut report) => {
                for kept in self.finish_replacement()? {
                    log::warn!("kept the old maps' attachment {kept}");
                }
                self.generation += 1;
                report.grown = Some((from, capacity));
                Ok(report)
            }
            Err(err) => {
                for name in link_names(&staging) {
                    let _ = unpin_link(&staging.links().join(name));
                }
                remove_pins(&staging);
                self.target = live;
                self.opened = opened;
                if let Some(state) = state {
                    state.save(&self.layout.state_file())?;
                }
                Err(err)
            }
        }
    }

    fn fill_and_attach(
        &mut self,
        live: &PinLayout,
        policy: &Policy,
        attach_to: &[Reattach],
    ) -> Result<ApplyReport, DatapathError> {
        carry_over(live, &self.target)?;
        let report = self.apply_in_place(policy)?;
        for target in attach_to {
            match target {
                Reattach::Cgroup(path) => self.attach_cgroup(path)?,
                Reattach::Tc(name) => self.attach_tc(name)?,
            };
        }
        Ok(report)
    }
}
