//! Map names (what the loader looks up) and how the counter arrays are indexed.

use crate::verdict::{hook, outcome};

pub const POLICY_V4: &str = "POLICY_V4";
pub const POLICY_V6: &str = "POLICY_V6";
/// The flat tables in front of the tries (see [`crate::flat`]).
pub const FLAT_V4: &str = "FLAT_V4";
pub const FLAT_V6: &str = "FLAT_V6";
pub const CONFIG: &str = "CONFIG";
pub const COUNTERS: &str = "COUNTERS";
pub const RULE_HITS: &str = "RULE_HITS";
/// When expiring rules stop applying, by rule id (see [`crate::policy::RuleExpiry`]).
pub const RULE_EXPIRY: &str = "RULE_EXPIRY";
pub const STATS: &str = "STATS";
pub const EVENTS: &str = "EVENTS";
pub const SOCK_OWNERS: &str = "SOCK_OWNERS";
pub const FLOWS: &str = "FLOWS";
/// The dirty-flow queues, one per parity of the reporting period (see [`crate::flow`]).
pub const FLOW_DIRTY: [&str; 2] = ["FLOW_DIRTY_0", "FLOW_DIRTY_1"];
pub const FLOW_REPORTED: &str = "FLOW_REPORTED";
pub const CGROUP_JUDGED: &str = "CGROUP_JUDGED";
pub const FLOW_SCRATCH: &str = "FLOW_SCRATCH";
pub const DOMAINS: &str = "DOMAINS";
pub const DNS_ALLOWED_V4: &str = "DNS_ALLOWED_V4";
pub const DNS_ALLOWED_V6: &str = "DNS_ALLOWED_V6";
pub const DNS_SCRATCH: &str = "DNS_SCRATCH";
pub const DNS_QUERY_EVENTS: &str = "DNS_QUERY_EVENTS";
pub const DNS_PENDING: &str = "DNS_PENDING";
pub const DNS_RESOLVERS_V4: &str = "DNS_RESOLVERS_V4";
pub const DNS_RESOLVERS_V6: &str = "DNS_RESOLVERS_V6";
pub const DNS_NETNS: &str = "DNS_NETNS";
pub const LEARNED_SOCKETS: &str = "LEARNED_SOCKETS";
pub const RAW_EXEMPT: &str = "RAW_EXEMPT";

/// Sockets remembered with their creator (an LRU map: the oldest are forgotten first).
pub const SOCK_OWNERS_CAPACITY: u32 = 1 << 16;

/// Who created a socket, recorded by the `sock_create` program in process context and looked
/// up by socket cookie on the egress path (packets carry no pid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    pub cgroup_id: u64,
    /// Thread-group id: the process id as userspace sees it.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
    /// The network namespace the socket was made in (`bpf_get_netns_cookie`): DNS answers
    /// teach only sockets of the namespaces the daemon trusts (see [`crate::dns`]).
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<SockOwner>() == 48);

/// Entries of the per-CPU `COUNTERS` array: one per (hook, outcome).
pub const COUNTER_SLOTS: u32 = hook::COUNT * outcome::COUNT;

/// Index into `COUNTERS` for a hook and an outcome.
#[inline(always)]
pub const fn counter_index(hook: u8, outcome: u32) -> u32 {
    hook as u32 * outcome::COUNT + outcome
}

/// Packets and bytes (bytes of the IP packet, from the IP header on, whatever the hook).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// Slots of the per-CPU `STATS` array (`u64` values): things that are not per-verdict.
pub mod stat {
    /// Events that did not fit in the ring buffer (the packet's verdict was still applied and
    /// counted).
    pub const EVENTS_LOST: u32 = 0;
    /// IP packets too short or malformed to read a destination from. They are treated as
    /// denied (dropped in enforce mode): a firewall must not pass what it cannot read.
    pub const MALFORMED: u32 = 1;
    /// ARP frames seen on the TC hook. They pass: they never leave the link, and IPv4 needs them.
    pub const ARP: u32 = 2;
    /// Other non-IP frames on the TC hook (and IP hidden under more VLAN tags than are
    /// unwrapped). Denied like malformed packets: nothing in them can be checked.
    pub const NOT_IP: u32 = 3;
    /// Denied packets folded into their flow's counts instead of getting an event of their own
    /// (see [`crate::flow`]).
    pub const AGGREGATED: u32 = 4;
    /// Times a flow could not be queued for its report because `FLOW_DIRTY` was full; the
    /// flow's next packet tries again.
    pub const FLOW_QUEUE_FULL: u32 = 5;
    /// DNS questions that left (their name allowed, or no domain rules).
    pub const DNS_QUERIES_ALLOWED: u32 = 6;
    /// DNS questions denied for their name (dropped in enforce mode, passed in observe).
    pub const DNS_QUERIES_DENIED: u32 = 7;
    /// DNS answers whose addresses were learned (a domain rule allowed the name, and the answer
    /// answered a question this socket asked).
    pub const DNS_ANSWERS_LEARNED: u32 = 8;
    /// DNS answers for an allowed name that taught nothing: not from a trusted resolver, not
    /// to a socket of a trusted network namespace, or not answering a question this socket
    /// asked (see [`crate::dns::refusal`]).
    pub const DNS_ANSWERS_UNTRUSTED: u32 = 9;
    /// Packets that name further destinations (IPv4 source-route options, IPv6 routing
    /// headers, or an IPv6 extension chain too long to walk): denied, whatever the first hop.
    pub const SOURCE_ROUTED: u32 = 10;
    /// Guarded socket options refused (enforce) or reported (observe) (see [`crate::guard`]).
    pub const RAW_GUARD_HITS: u32 = 11;
    /// Packets allowed only because their socket opened to the address while a DNS answer
    /// allowed it (see [`crate::dns::LearnedSocket`]).
    pub const LEARNED_SOCKET_PASSES: u32 = 12;
    /// Denied packets TC passed in observe mode without counting or reporting them, since the
    /// cgroup hook had judged them already (see [`crate::flow::JudgedKey`]).
    pub const JUDGED_BY_CGROUP: u32 = 13;
    pub const COUNT: u32 = 14;
}

/// Default ring buffer size; a power-of-two multiple of the page size as the kernel requires.
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// Default capacity of each policy trie and of the per-rule hit counters. The loader raises
/// it to fit a larger policy.
pub const DEFAULT_RULE_CAPACITY: u32 = 1 << 12;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), two u64 fields, no padding.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: repr(C), integer fields and explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::SockOwner {}
}
