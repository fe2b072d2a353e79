//! The pinned maps: which there are, opening them, and the config array.

use aya::maps::{Array, HashMap as AyaHashMap, LpmTrie, Map, MapData, MapError, MapInfo};
use egress_monitor_common::{
    maps as names,
    policy::{RuleValue, config},
    verdict::mode,
};

use super::{DatapathError, LiveConfig};
use crate::{pins::PinLayout, policy::Mode};

/// aya-log's ring buffer; pinned like the others so a later daemon can read it.
const LOG_MAP: &str = "AYA_LOGS";

/// Every map the object defines, all pinned.
pub(super) const MAPS: [&str; 25] = [
    names::POLICY_V4,
    names::POLICY_V6,
    names::CONFIG,
    names::COUNTERS,
    names::RULE_HITS,
    names::STATS,
    names::EVENTS,
    names::SOCK_OWNERS,
    names::FLOWS,
    names::FLOW_DIRTY[0],
    names::FLOW_DIRTY[1],
    names::FLOW_REPORTED,
    names::FLOW_SCRATCH,
    names::DOMAINS,
    names::DNS_ALLOWED_V4,
    names::DNS_ALLOWED_V6,
    names::DNS_SCRATCH,
    names::DNS_QUERY_EVENTS,
    names::DNS_PENDING,
    names::DNS_RESOLVERS_V4,
    names::DNS_RESOLVERS_V6,
    names::DNS_NETNS,
    names::LEARNED_SOCKETS,
    names::RAW_EXEMPT,
    LOG_MAP,
];

/// The rule slots of the maps pinned at `layout` (the per-rule counters' size, which the
/// tries share).
pub(super) fn capacity_of(layout: &PinLayout) -> Result<u32, DatapathError> {
    Ok(MapInfo::from_pin(layout.map(names::RULE_HITS))
        .map_err(DatapathError::map(names::RULE_HITS, "open"))?
        .max_entries())
}

pub(crate) fn open_map<T>(layout: &PinLayout, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let kind = map_kind(name).ok_or(DatapathError::UnknownMap(name))?;
    let data = MapData::from_pin(layout.map(name)).map_err(DatapathError::map(name, "open"))?;
    let map = match kind {
        MapKind::LpmTrie => Map::LpmTrie(data),
        MapKind::RingBuf => Map::RingBuf(data),
        MapKind::Array => Map::Array(data),
        MapKind::HashMap => Map::HashMap(data),
        MapKind::LruHashMap => Map::LruHashMap(data),
        MapKind::Queue => Map::Queue(data),
        MapKind::PerCpuArray => Map::PerCpuArray(data),
    };
    T::try_from(map).map_err(DatapathError::map(name, "open"))
}

/// The kinds of map the object defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapKind {
    LpmTrie,
    RingBuf,
    Array,
    HashMap,
    LruHashMap,
    Queue,
    PerCpuArray,
}

/// Each map's kind, by name (as `egress-monitor-ebpf/src/maps.rs` defines it). `None`: a name
/// this table does not know, which is a bug to report, not a kind to guess.
fn map_kind(name: &str) -> Option<MapKind> {
    Some(match name {
        names::POLICY_V4 | names::POLICY_V6 => MapKind::LpmTrie,
        names::EVENTS | LOG_MAP => MapKind::RingBuf,
        names::CONFIG => MapKind::Array,
        names::DOMAINS
        | names::DNS_RESOLVERS_V4
        | names::DNS_RESOLVERS_V6
        | names::DNS_NETNS
        | names::RAW_EXEMPT => MapKind::HashMap,
        names::SOCK_OWNERS
        | names::FLOWS
        | names::FLOW_REPORTED
        | names::DNS_ALLOWED_V4
        | names::DNS_ALLOWED_V6
        | names::DNS_PENDING
        | names::DNS_QUERY_EVENTS
        | names::LEARNED_SOCKETS => MapKind::LruHashMap,
        name if names::FLOW_DIRTY.contains(&name) => MapKind::Queue,
        names::COUNTERS
        | names::RULE_HITS
        | names::STATS
        | names::FLOW_SCRATCH
        | names::DNS_SCRATCH => MapKind::PerCpuArray,
        _ => return None,
    })
}

/// Makes the hash map `name` (a set: every value 1) hold exactly `wanted`.
pub(super) fn replace_set<K: aya::Pod + PartialEq>(
    layout: &PinLayout,
    name: &'static str,
    wanted: &[K],
) -> Result<(), DatapathError> {
    let entries: Vec<(K, u8)> = wanted.iter().map(|key| (*key, 1)).collect();
    replace_entries(layout, name, &entries)
}

/// Makes the hash map `name` hold exactly `wanted`: new and changed entries first, then the
/// stale ones removed.
pub(super) fn replace_entries<K: aya::Pod + PartialEq>(
    layout: &PinLayout,
    name: &'static str,
    wanted: &[(K, u8)],
) -> Result<(), DatapathError> {
    let mut map: AyaHashMap<MapData, K, u8> = open_map(layout, name)?;
    for (key, value) in wanted {
        map.insert(key, value, 0)
            .map_err(DatapathError::map(name, "insert"))?;
    }
    let live: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in live
        .iter()
        .filter(|key| !wanted.iter().any(|(wanted, _)| wanted == *key))
    {
        map.remove(key)
            .map_err(DatapathError::map(name, "remove a stale entry"))?;
    }
    Ok(())
}

pub(super) fn open_trie<const N: usize>(
    layout: &PinLayout,
    name: &'static str,
) -> Result<LpmTrie<MapData, [u8; N], RuleValue>, DatapathError> {
    open_map(layout, name)
}

pub(crate) fn read_config(layout: &PinLayout) -> Result<LiveConfig, DatapathError> {
    let array: Array<MapData, u64> = open_map(layout, names::CONFIG)?;
    let get = |slot: u32| {
        array
            .get(&slot, 0)
            .map_err(DatapathError::map(names::CONFIG, "read"))
    };
    Ok(LiveConfig {
        mode: if get(config::MODE)? == u64::from(mode::ENFORCE) {
            Mode::Enforce
        } else {
            Mode::Observe
        },
        policy_version: get(config::POLICY_VERSION)?,
        build_id: get(config::BUILD_ID)?,
        pinned_since: get(config::PINNED_SINCE)?,
        flow_generation: get(config::FLOW_GENERATION)?,
    })
}

pub(crate) fn write_config(layout: &PinLayout, slot: u32, value: u64) -> Result<(), DatapathError> {
    let mut array: Array<MapData, u64> = open_map(layout, names::CONFIG)?;
    array
        .set(slot, &value, 0)
        .map_err(DatapathError::map(names::CONFIG, "write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_kind() {
        for name in MAPS {
            assert!(map_kind(name).is_some(), "{name}");
        }
        assert_eq!(map_kind("NO_SUCH_MAP"), None);
    }
}
