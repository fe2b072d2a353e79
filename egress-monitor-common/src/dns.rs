//! Domain rules: names in the policy, matched in the kernel against the question of each DNS
//! answer a process in the cgroup receives; the answer's addresses are then allowed until
//! their TTL (plus a grace period) runs out.
//!
//! Names are matched by hash, in DNS wire format (length-prefixed labels, ending with the
//! root's zero byte), ASCII case folded. The kernel hashes every suffix of a question name
//! that starts at a label; a rule is the hash of its domain's wire form. [`suffix_hash`] is the
//! one definition both sides use.

use crate::hash::{FNV_OFFSET_BASIS, fnv1a_step};

/// One step of the suffix hash (FNV-1a of the case-folded byte): suffixes are hashed from
/// their last byte to their first, so the hash of every suffix of a name comes out of one
/// backward pass.
#[inline(always)]
pub const fn fold(hash: u64, byte: u8) -> u64 {
    fnv1a_step(hash, byte.to_ascii_lowercase())
}

/// The hash the kernel computes for a name (or suffix) whose wire form is `wire`.
pub fn suffix_hash(wire: &[u8]) -> u64 {
    wire.iter()
        .rev()
        .fold(HASH_SEED, |hash, byte| fold(hash, *byte))
}

/// Where the backward pass starts.
pub const HASH_SEED: u64 = FNV_OFFSET_BASIS;

/// The longest name in wire format.
pub const MAX_NAME: usize = 255;

/// What the rules for one domain say, keyed by [`suffix_hash`] of the domain: a rule for the
/// name itself (`example.com`) and one for the names below it (`*.example.com`) share the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainValue {
    pub exact_rule: u32,
    pub subdomain_rule: u32,
    /// [`crate::verdict::action`], or [`NO_RULE`].
    pub exact_action: u8,
    pub subdomain_action: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<DomainValue>() == 16);

/// [`DomainValue`] action when there is no such rule.
pub const NO_RULE: u8 = 0xff;

/// An address learned from an allowed answer (`DNS_ALLOWED_V4` / `_V6`, keyed by address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedValue {
    /// `bpf_ktime_get_boot_ns()` after which the address is no longer allowed.
    pub expires_ns: u64,
    /// The domain rule that allowed it.
    pub rule_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LearnedValue>() == 16);

/// `DNS_QUERIES` config values.
pub mod queries {
    /// Queries pass unexamined; no DNS events.
    pub const OFF: u64 = 0;
    /// Every query (rate-limited) and answer is reported; none is refused for its name.
    pub const REPORT: u64 = 1;
    /// Also: a query whose name no domain rule allows is denied (dropped in enforce mode), so
    /// nothing leaves inside query names.
    pub const FILTER: u64 = 2;
}

/// Addresses an answer record carries to userspace (for `dst_name`).
pub const ANSWER_ADDRESSES: usize = 8;

/// The ring-buffer record for DNS: a question leaving or an answer arriving. The byte fields
/// come first, after the kind, so that they fill the 8 bytes before the timestamp.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    /// [`crate::record::KIND_DNS_QUERY`] or [`crate::record::KIND_DNS_ANSWER`].
    pub kind: u8,
    pub ip_version: u8,
    pub proto: u8,
    pub hook: u8,
    /// Queries: [`crate::verdict::outcome`].
    pub outcome: u8,
    /// [`crate::event::flags::OWNER_KNOWN`].
    pub flags: u8,
    pub address_count: u8,
    /// Answers: why the addresses were not learned ([`refusal`]); [`refusal::NONE`] when they
    /// were (or for queries).
    pub refusal: u8,
    pub ts_boot_ns: u64,
    /// Sender's cgroup (queries on the cgroup hook; 0 otherwise).
    pub cgroup_id: u64,
    /// The resolver: the query's destination, the answer's source.
    pub server: [u8; 16],
    /// Answers: the first [`ANSWER_ADDRESSES`] A/AAAA addresses (IPv4 in the first 4 bytes).
    pub addresses: [[u8; 16]; ANSWER_ADDRESSES],
    /// Answers: the smallest TTL among them.
    pub ttl: u32,
    pub pid: u32,
    pub uid: u32,
    /// Queries: the rule that decided the name (a domain rule, or [`crate::verdict::RULE_ID_DEFAULT`]).
    pub rule_id: u32,
    /// Queries: the same question from the same socket since the previous event, not reported
    /// on its own (rate limit).
    pub repeats: u32,
    pub ifindex: u32,
    pub comm: [u8; 16],
    pub src_port: u16,
    pub qtype: u16,
    /// Bytes of `name` used (wire format, root byte included).
    pub name_len: u16,
    pub _pad: [u8; 2],
    /// The question's name in wire format.
    pub name: [u8; 256],
}
pub const DNS_EVENT_SIZE: usize = 472;
const _: () = assert!(core::mem::size_of::<DnsEvent>() == DNS_EVENT_SIZE);
// The kind byte opens every ring record: the daemon reads it before anything else.
const _: () = assert!(core::mem::offset_of!(DnsEvent, kind) == 0);
// No implicit padding before the name.
const _: () = assert!(core::mem::offset_of!(DnsEvent, name) == DNS_EVENT_SIZE - 256);

/// Rate limit of query events: one per (name, type, socket, verdict) per interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryKey {
    pub name_hash: u64,
    pub cookie: u64,
    pub qtype: u16,
    pub hook: u8,
    pub outcome: u8,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<QueryKey>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryValue {
    pub last_event_ns: u64,
    /// Queries since the last event (added to atomically).
    pub repeats: u64,
}
const _: () = assert!(core::mem::size_of::<QueryValue>() == 16);

/// A question in flight: which socket asked which server, with which id (`DNS_PENDING`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingKey {
    pub cookie: u64,
    pub server: [u8; 16],
    pub id: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<PendingKey>() == 32);

/// Questions in flight remembered (an LRU map: a flood of questions forgets the oldest, whose
/// answers then teach nothing).
pub const PENDING_CAPACITY: u32 = 16_384;

/// The longest TTL honoured for a learned address (a day): an answer cannot open an address
/// for longer.
pub const MAX_LEARNED_TTL: u32 = 86_400;

/// Query rate-limit entries (an LRU map).
pub const QUERIES_CAPACITY: u32 = 16_384;

/// Why an answer taught nothing (`DnsEvent::refusal`). Checked in this order.
pub mod refusal {
    /// Learned (or not an answer).
    pub const NONE: u8 = 0;
    /// No domain rule allows the question's name.
    pub const NAME_NOT_ALLOWED: u8 = 1;
    /// The answer did not come from one of the node's resolvers (`DNS_RESOLVERS_V4`/`_V6`).
    pub const NOT_A_RESOLVER: u8 = 2;
    /// The receiving socket is not of a trusted network namespace (`DNS_NETNS`), or its
    /// namespace is unknown (a socket made before the programs were attached).
    pub const OTHER_NETNS: u8 = 3;
    /// The answer does not answer a question this socket asked that server (id and name).
    pub const NOT_ASKED: u8 = 4;
    /// The answer names a resolver that is not on this node, yet arrived over loopback: a local
    /// process sent it in the resolver's name (a raw socket can write any source address).
    pub const LOOPED_BACK: u8 = 5;
}

/// `DNS_RESOLVERS_*` values: where a resolver is, and so how its answers may arrive.
pub mod resolver {
    /// Elsewhere: its answers arrive from the network, never over loopback.
    pub const REMOTE: u8 = 1;
    /// On this node (a loopback address, or one of the node's own): over loopback.
    pub const LOCAL: u8 = 2;
}

/// A socket that opened to an address while a DNS answer allowed it (`LEARNED_SOCKETS`):
/// its packets to that address stay allowed after the record expires, until the socket
/// closes (the LRU map forgets closed sockets' entries as new ones come). A new socket to the
/// address after expiry finds no entry and is denied.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedSocket {
    pub cookie: u64,
    pub dst: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<LearnedSocket>() == 24);

/// Sockets remembered with the learned address they opened to.
pub const LEARNED_SOCKETS_CAPACITY: u32 = 65_536;
/// Resolvers per family, network namespaces trusted for answers.
pub const RESOLVERS_CAPACITY: u32 = 64;
pub const NETNS_CAPACITY: u32 = 64;

/// Domain rules the kernel holds.
pub const DOMAINS_CAPACITY: u32 = 4096;
/// Addresses learned from answers, per family (an LRU map: the oldest are forgotten first).
pub const LEARNED_CAPACITY: u32 = 65_536;
/// Answer records read per DNS message (A, AAAA, CNAME...): a bounded walk.
pub const MAX_ANSWERS: usize = 16;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields, explicit padding.
    unsafe impl aya::Pod for super::DomainValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LearnedValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LearnedSocket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suffix_hash_ignores_case_and_is_the_backward_fold() {
        let wire = b"\x04Blob\x04core\x07windows\x03net\x00";
        assert_eq!(
            suffix_hash(wire),
            suffix_hash(b"\x04blob\x04core\x07windows\x03net\x00")
        );
        let mut hash = HASH_SEED;
        for byte in wire.iter().rev() {
            hash = fold(hash, *byte);
        }
        assert_eq!(hash, suffix_hash(wire));
        assert_ne!(suffix_hash(b"\x03net\x00"), suffix_hash(b"\x03org\x00"));
    }
}
