//! Every map of the datapath. Sizes here are defaults: the loader resizes the policy tries and
//! the rule-hit counters to fit the policy, and the ring buffer to the configured size.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, Queue, RingBuf},
};
use egress_monitor_common::{
    dns::{
        DOMAINS_CAPACITY, DomainValue, LEARNED_CAPACITY, LEARNED_SOCKETS_CAPACITY, LearnedSocket,
        LearnedValue, NETNS_CAPACITY, PENDING_CAPACITY, PendingKey, QUERIES_CAPACITY, QueryKey,
        QueryValue, RESOLVERS_CAPACITY,
    },
    flat,
    flow::{
        CGROUP_JUDGED_CAPACITY, FLOW_DIRTY_CAPACITY, FLOW_REPORTED_CAPACITY, FLOWS_CAPACITY,
        FlowKey, FlowReported, FlowValue, JudgedKey,
    },
    guard::EXEMPT_CAPACITY,
    maps::{
        COUNTER_SLOTS, Counter, DEFAULT_RULE_CAPACITY, EVENTS_RING_BYTES, SOCK_OWNERS_CAPACITY,
        SockOwner, stat,
    },
    policy::{IPV4_ADDR_LEN, IPV6_ADDR_LEN, RuleExpiry, RuleValue, config},
};

use crate::dns::DnsScratch;

#[map]
pub static POLICY_V4: LpmTrie<[u8; IPV4_ADDR_LEN], RuleValue> =
    LpmTrie::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
pub static POLICY_V6: LpmTrie<[u8; IPV6_ADDR_LEN], RuleValue> =
    LpmTrie::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[allow(
    clippy::unnecessary_cast,
    reason = "the flag is u32 in some architectures' bindings and not in others"
)]
const MMAPABLE: u32 = BPF_F_MMAPABLE as u32;

/// The flat tables in front of the tries (see `egress_monitor_common::flat`): the fast lane's
/// lookup. Mappable, so the daemon writes them as memory.
#[map]
pub static FLAT_V4: Array<u64> = Array::with_max_entries(flat::ENTRIES, MMAPABLE);
#[map]
pub static FLAT_V6: Array<u64> = Array::with_max_entries(flat::ENTRIES, MMAPABLE);

#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(config::COUNT, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
pub static RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

/// When expiring rules stop applying, and what applies after (by rule id; sized like the
/// hit counters).
#[map]
pub static RULE_EXPIRY: Array<RuleExpiry> = Array::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Socket cookie → who created the socket.
#[map]
pub static SOCK_OWNERS: LruHashMap<u64, SockOwner> =
    LruHashMap::with_max_entries(SOCK_OWNERS_CAPACITY, 0);

/// Denied flows: first event and cumulative counts (see `egress_monitor_common::flow`).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(FLOWS_CAPACITY, 0);

/// Destinations the cgroup hook reported a denied packet to, per socket: TC leaves those
/// packets to it (see `egress_monitor_common::flow::JudgedKey`). The value is unused.
#[map]
pub static CGROUP_JUDGED: LruHashMap<JudgedKey, u8> =
    LruHashMap::with_max_entries(CGROUP_JUDGED_CAPACITY, 0);

/// Domain rules, by the suffix hash of their domain (see `egress_monitor_common::dns`).
#[map]
pub static DOMAINS: HashMap<u64, DomainValue> = HashMap::with_max_entries(DOMAINS_CAPACITY, 0);

/// Addresses allowed by a domain rule's answer, until they expire.
#[map]
pub static DNS_ALLOWED_V4: LruHashMap<[u8; 4], LearnedValue> =
    LruHashMap::with_max_entries(LEARNED_CAPACITY, 0);
#[map]
pub static DNS_ALLOWED_V6: LruHashMap<[u8; 16], LearnedValue> =
    LruHashMap::with_max_entries(LEARNED_CAPACITY, 0);

/// Questions in flight, with their name's hash: an answer teaches only when it answers one.
#[map]
pub static DNS_PENDING: LruHashMap<PendingKey, u64> =
    LruHashMap::with_max_entries(PENDING_CAPACITY, 0);

/// The node's resolvers: only their answers teach (the value is unused).
#[map]
pub static DNS_RESOLVERS_V4: HashMap<[u8; 4], u8> =
    HashMap::with_max_entries(RESOLVERS_CAPACITY, 0);
#[map]
pub static DNS_RESOLVERS_V6: HashMap<[u8; 16], u8> =
    HashMap::with_max_entries(RESOLVERS_CAPACITY, 0);

/// Network namespaces (by cookie) whose sockets DNS answers may teach (the value is unused).
#[map]
pub static DNS_NETNS: HashMap<u64, u8> = HashMap::with_max_entries(NETNS_CAPACITY, 0);

/// Sockets that opened to a learned address while it was allowed → the domain rule's id.
#[map]
pub static LEARNED_SOCKETS: LruHashMap<LearnedSocket, u32> =
    LruHashMap::with_max_entries(LEARNED_SOCKETS_CAPACITY, 0);

/// Cgroups (by id) exempt from the raw-socket guards (the value is unused).
#[map]
pub static RAW_EXEMPT: HashMap<u64, u8> = HashMap::with_max_entries(EXEMPT_CAPACITY, 0);

/// Query events' rate limit: one per question and socket per interval.
#[map]
pub static DNS_QUERY_EVENTS: LruHashMap<QueryKey, QueryValue> =
    LruHashMap::with_max_entries(QUERIES_CAPACITY, 0);

/// Where a question name is read into (one slot per CPU: it does not fit on the stack).
#[map]
pub static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(1, 0);

/// Where a flow's first event is built (one slot per CPU: it does not fit on the stack).
#[map]
pub static FLOW_SCRATCH: PerCpuArray<FlowValue> = PerCpuArray::with_max_entries(1, 0);

/// Flows with packets not yet reported, queued once per reporting period: on `_0` in even
/// periods, on `_1` in odd ones.
#[map]
pub static FLOW_DIRTY_0: Queue<FlowKey> = Queue::with_max_entries(FLOW_DIRTY_CAPACITY, 0);
#[map]
pub static FLOW_DIRTY_1: Queue<FlowKey> = Queue::with_max_entries(FLOW_DIRTY_CAPACITY, 0);

/// What the daemon reported of each flow. Only the daemon uses it; it is defined here so that
/// it is created and pinned with the others.
#[map]
pub static FLOW_REPORTED: LruHashMap<FlowKey, FlowReported> =
    LruHashMap::with_max_entries(FLOW_REPORTED_CAPACITY, 0);
