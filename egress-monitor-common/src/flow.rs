//! Flows: how denied packets are aggregated so that one busy sender cannot flood the ring
//! buffer or the event log.
//!
//! A flow is (hook, outcome, rule, protocol, source, destination, destination port, interface,
//! socket). Its first denied packet is an event at once, and its [`Event`] is kept in the
//! `FLOWS` LRU map together with cumulative packet and byte counts. Later packets only add to
//! those counts; the first of them in each reporting period (the `FLOW_GENERATION` config slot,
//! advanced by the daemon once per interval) pushes the flow's key onto the period's queue,
//! `FLOW_DIRTY_0` or `_1` by the period's parity. At the end of each interval the daemon advances
//! the period, then pops the ended period's queue (pushes for the new period go to the other
//! queue, so none is taken early), reads each flow and reports what accumulated since its
//! previous report, which it remembers in `FLOW_REPORTED` (pinned, so a restarted
//! daemon neither repeats nor skips counts). A flow is thus reported at most once per interval
//! however many packets it sends, and the reports of a flow add up to exactly its packets.

use crate::event::Event;

/// Identifies a flow. Addresses as in [`Event`]; zero where the packet had none.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The sending socket's cookie; 0 when the packet has no local socket (forwarded).
    pub cookie: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub rule_id: u32,
    /// TC hook: the interface; 0 on the cgroup hook.
    pub ifindex: u32,
    /// Host byte order; 0 without ports.
    pub dst_port: u16,
    /// Non-IP frames: their ethertype (host byte order).
    pub ethertype: u16,
    pub proto: u8,
    pub ip_version: u8,
    pub hook: u8,
    pub outcome: u8,
}
pub const FLOW_KEY_SIZE: usize = 56;
const _: () = assert!(core::mem::size_of::<FlowKey>() == FLOW_KEY_SIZE);

/// A destination a socket sent a denied packet to, seen by the cgroup hook in observe mode
/// (`CGROUP_JUDGED`). With both hooks the same packet then reaches TC, which reports and counts
/// it only when the cgroup hook did not: a packet is one decision, reported once. Keyed by the
/// destination, not only the socket, so a packet TC sees for another destination (a tunnel's
/// outer header, say) is still TC's own to report.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JudgedKey {
    /// The sending socket's cookie (never 0: packets without a socket are TC's alone).
    pub cookie: u64,
    pub dst: [u8; 16],
    pub proto: u8,
    pub ip_version: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<JudgedKey>() == 32);

/// Destinations remembered at once; under more, the oldest are forgotten and a packet to one
/// of them is reported by both hooks again (never by neither).
pub const CGROUP_JUDGED_CAPACITY: u32 = FLOWS_CAPACITY;

/// What the kernel keeps per flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    /// Packets and IP bytes since the flow was first seen, the first packet included. Added to
    /// atomically: a flow's packets may be judged on several CPUs at once.
    pub packets: u64,
    pub bytes: u64,
    /// `bpf_ktime_get_boot_ns()` of the latest packet.
    pub last_seen_ns: u64,
    /// The reporting period in which the flow was last queued on `FLOW_DIRTY`.
    pub queued_generation: u64,
    /// The event of the flow's first packet; its `ts_boot_ns` tells one incarnation of a flow
    /// from a later one with the same key (after an LRU eviction).
    pub first: Event,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 128);

/// What the daemon has reported of a flow (`FLOW_REPORTED`, written only by the daemon).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowReported {
    /// [`FlowValue::first`]`.ts_boot_ns` of the flow incarnation these counts belong to.
    pub first_ts_boot_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<FlowReported>() == 24);

/// Flows tracked at once (an LRU map: under more, the least recently active are forgotten
/// first, and their next packet starts a new flow with a new first event).
pub const FLOWS_CAPACITY: u32 = 1 << 14;
/// Room for every tracked flow in the dirty queue, plus a few duplicate pushes from CPUs that
/// raced on the same flow.
pub const FLOW_DIRTY_CAPACITY: u32 = FLOWS_CAPACITY + 1024;
/// Twice the flows: the daemon's memory of what it reported outlives the kernel's flow entry.
pub const FLOW_REPORTED_CAPACITY: u32 = 2 * FLOWS_CAPACITY;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer and byte-array fields, no implicit padding (asserted sizes).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above; Event is itself plain old data.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: repr(C), three u64 fields.
    unsafe impl aya::Pod for super::FlowReported {}
    // SAFETY: repr(C), integer and byte-array fields, explicit padding (asserted size).
    unsafe impl aya::Pod for super::JudgedKey {}
}
