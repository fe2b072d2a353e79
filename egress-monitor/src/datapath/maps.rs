//! The pinned maps: which there are, opening them, and the config array.

use aya::maps::{Array, HashMap as AyaHashMap, LpmTrie, Map, MapData, MapError, MapInfo};
use egress_monitor_common::{
    maps::{self as names, EVENTS_RING_BYTES},
    policy::{RuleValue, config},
    verdict::mode,
};

use super::{DatapathError, LiveConfig};
use egress_monitor_policy::Mode;

use crate::datapath::pins::PinLayout;

/// The kinds of map the object defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MapKind {
    LpmTrie,
    RingBuf,
    Array,
    HashMap,
    LruHashMap,
    Queue,
    PerCpuArray,
}

/// How many entries the loader gives a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Size {
    /// What the object declares.
    Declared,
    /// One entry per rule slot: the capacity the maps are created with (see
    /// [`capacity_of`]).
    RuleSlots,
    /// This many (bytes, for a ring buffer).
    Fixed(u32),
}

/// One map of the object.
#[derive(Clone, Copy, Debug)]
pub(super) struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub size: Size,
}

const fn map(name: &'static str, kind: MapKind, size: Size) -> MapSpec {
    MapSpec { name, kind, size }
}

/// Every map the object defines (as `egress-monitor-ebpf/src/maps.rs` declares it), with its
/// kind and size: the loader pins each of them, and [`open_map`] opens these and no other. The
/// one place a map's kind is stated.
pub(super) const MAPS: [MapSpec; 29] = [
    map(names::POLICY_V4, MapKind::LpmTrie, Size::RuleSlots),
    map(names::POLICY_V6, MapKind::LpmTrie, Size::RuleSlots),
    map(names::FLAT_V4, MapKind::Array, Size::Declared),
    map(names::FLAT_V6, MapKind::Array, Size::Declared),
    map(names::CONFIG, MapKind::Array, Size::Declared),
    map(names::COUNTERS, MapKind::PerCpuArray, Size::Declared),
    map(names::RULE_HITS, MapKind::PerCpuArray, Size::RuleSlots),
    map(names::RULE_EXPIRY, MapKind::Array, Size::RuleSlots),
    map(names::STATS, MapKind::PerCpuArray, Size::Declared),
    map(
        names::EVENTS,
        MapKind::RingBuf,
        Size::Fixed(EVENTS_RING_BYTES),
    ),
    map(names::SOCK_OWNERS, MapKind::LruHashMap, Size::Declared),
    map(names::FLOWS, MapKind::LruHashMap, Size::Declared),
    map(names::FLOW_DIRTY[0], MapKind::Queue, Size::Declared),
    map(names::FLOW_DIRTY[1], MapKind::Queue, Size::Declared),
    map(names::FLOW_REPORTED, MapKind::LruHashMap, Size::Declared),
    map(names::CGROUP_JUDGED, MapKind::LruHashMap, Size::Declared),
    map(names::FLOW_SCRATCH, MapKind::PerCpuArray, Size::Declared),
    map(names::DOMAINS, MapKind::HashMap, Size::Declared),
    map(names::DNS_ALLOWED_V4, MapKind::LruHashMap, Size::Declared),
    map(names::DNS_ALLOWED_V6, MapKind::LruHashMap, Size::Declared),
    map(names::DNS_SCRATCH, MapKind::PerCpuArray, Size::Declared),
    map(names::DNS_QUERY_EVENTS, MapKind::LruHashMap, Size::Declared),
    map(names::DNS_PENDING, MapKind::LruHashMap, Size::Declared),
    map(names::DNS_RESOLVERS_V4, MapKind::HashMap, Size::Declared),
    map(names::DNS_RESOLVERS_V6, MapKind::HashMap, Size::Declared),
    map(names::DNS_NETNS, MapKind::HashMap, Size::Declared),
    map(names::LEARNED_SOCKETS, MapKind::LruHashMap, Size::Declared),
    map(names::RAW_EXEMPT, MapKind::HashMap, Size::Declared),
    // aya-log's ring buffer; pinned like the others so a later daemon can read it.
    map("AYA_LOGS", MapKind::RingBuf, Size::Declared),
];

/// The entry of [`MAPS`] for `name`. A name not there is a bug to report, not a kind to guess.
pub(super) fn spec(name: &'static str) -> Result<MapSpec, DatapathError> {
    MAPS.iter()
        .find(|spec| spec.name == name)
        .copied()
        .ok_or(DatapathError::UnknownMap(name))
}

/// The rule slots of the maps pinned at `layout` (the size of every [`Size::RuleSlots`] map).
pub(super) fn capacity_of(layout: &PinLayout) -> Result<u32, DatapathError> {
    Ok(MapInfo::from_pin(layout.map(names::RULE_HITS))
        .map_err(DatapathError::map(names::RULE_HITS, "open"))?
        .max_entries())
}

/// Opens the map `name` pinned at `layout` as `T`, the kind [`MAPS`] gives it.
pub(super) fn open_map<T>(layout: &PinLayout, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let kind = spec(name)?.kind;
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

pub(super) fn read_config(layout: &PinLayout) -> Result<LiveConfig, DatapathError> {
    let array: Array<MapData, u64> = open_map(layout, names::CONFIG)?;
    let get = |slot: u32| {
        array
            .get(&slot, 0)
            .map_err(DatapathError::map(names::CONFIG, "read"))
    };
    Ok(LiveConfig {
        mode: match get(config::MODE)? {
            value if value == u64::from(mode::ENFORCE) => Mode::Enforce,
            value if value == u64::from(mode::OBSERVE) => Mode::Observe,
            value => {
                return Err(DatapathError::BadConfig {
                    slot: "mode",
                    value,
                });
            }
        },
        policy_version: get(config::POLICY_VERSION)?,
        build_id: get(config::BUILD_ID)?,
        pinned_since: get(config::PINNED_SINCE)?,
        flow_generation: get(config::FLOW_GENERATION)?,
    })
}

pub(super) fn write_config(layout: &PinLayout, slot: u32, value: u64) -> Result<(), DatapathError> {
    let mut array: Array<MapData, u64> = open_map(layout, names::CONFIG)?;
    array
        .set(slot, &value, 0)
        .map_err(DatapathError::map(names::CONFIG, "write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_map_is_named_once() {
        for (i, spec) in MAPS.iter().enumerate() {
            assert!(
                MAPS[i + 1..].iter().all(|other| other.name != spec.name),
                "{} twice",
                spec.name
            );
        }
    }

    #[test]
    fn an_unknown_map_is_an_error_not_a_guess() {
        assert!(matches!(
            spec("NO_SUCH_MAP"),
            Err(DatapathError::UnknownMap("NO_SUCH_MAP"))
        ));
        assert_eq!(spec(names::FLOW_DIRTY[1]).unwrap().kind, MapKind::Queue);
    }

    #[test]
    fn the_rule_slots_are_read_from_a_map_sized_by_them() {
        // `capacity_of` reads RULE_HITS: it must be one of the maps created that size.
        assert_eq!(spec(names::RULE_HITS).unwrap().size, Size::RuleSlots);
    }
}
