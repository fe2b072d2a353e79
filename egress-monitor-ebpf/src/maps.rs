//! Every map of the datapath. Sizes here are defaults: the loader resizes the policy tries and
//! the rule-hit counters to fit the policy, and the ring buffer to the configured size.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use egress_monitor_common::{
    maps::{
        COUNTER_SLOTS, Counter, DEFAULT_RULE_CAPACITY, EVENTS_RING_BYTES, SOCK_OWNERS_CAPACITY,
        SockOwner, stat,
    },
    policy::{IPV4_ADDR_LEN, IPV6_ADDR_LEN, RuleValue, config},
};

#[map]
pub static POLICY_V4: LpmTrie<[u8; IPV4_ADDR_LEN], RuleValue> =
    LpmTrie::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
pub static POLICY_V6: LpmTrie<[u8; IPV6_ADDR_LEN], RuleValue> =
    LpmTrie::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(config::COUNT, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
pub static RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Socket cookie → who created the socket.
#[map]
pub static SOCK_OWNERS: LruHashMap<u64, SockOwner> =
    LruHashMap::with_max_entries(SOCK_OWNERS_CAPACITY, 0);
