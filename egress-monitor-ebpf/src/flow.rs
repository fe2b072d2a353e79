//! Which denied packets become events: per flow, the first at once; the rest are added to the
//! flow's counts and reported by the daemon at most once per interval (the protocol is
//! described in `egress_monitor_common::flow`). With aggregation off (generation 0) every
//! denied packet is an event.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_socket_cookie, bpf_sk_fullsock},
    },
    programs::sk_buff::SkBuff,
};
use egress_monitor_common::{
    event::flags,
    flow::{FlowKey, FlowValue, JudgedKey},
    maps::stat,
    policy::config,
    verdict::hook as hooks,
};

use crate::{
    emit,
    maps::{CGROUP_JUDGED, CONFIG, FLOW_DIRTY_0, FLOW_DIRTY_1, FLOW_SCRATCH, FLOWS},
    parse::Packet,
};

/// Reports a denied packet: an event, or a count in its flow.
#[inline(always)]
pub fn denied(
    skb: &SkBuff,
    raw: *mut __sk_buff,
    hook: u8,
    outcome: u32,
    rule_id: u32,
    packet: &Packet,
) {
    // The event is built in a per-CPU scratch slot: the 512-byte stack has no room for it.
    let Some(scratch) = FLOW_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the helper reads the socket of the program's own skb (0 when there is none).
    let cookie = unsafe { bpf_get_socket_cookie(raw.cast()) };
    if generation() == 0 {
        // SAFETY: a per-CPU slot: only this program run uses it until it returns.
        let event = unsafe { &mut (*scratch).first };
        emit::describe(event, skb, raw, hook, outcome, rule_id, packet, cookie);
        emit::output(event);
        return;
    }
    let key = FlowKey {
        cookie,
        src: packet.src,
        dst: packet.dst,
        rule_id,
        // SAFETY: reading a context field of the program's own skb.
        ifindex: if hook == hooks::TC {
            unsafe { (*raw).ifindex }
        } else {
            0
        },
        dst_port: packet.dst_port,
        ethertype: packet.ethertype,
        proto: packet.proto,
        ip_version: packet.ip_version,
        hook,
        outcome: outcome as u8,
    };
    if let Some(flow) = FLOWS.get_ptr_mut(&key) {
        aggregate(flow, &key, packet.len);
        return;
    }
    // SAFETY: as above.
    let flow = unsafe { &mut *scratch };
    emit::describe(
        &mut flow.first,
        skb,
        raw,
        hook,
        outcome,
        rule_id,
        packet,
        cookie,
    );
    flow.first.flags |= flags::FLOW_FIRST;
    flow.packets = 1;
    flow.bytes = u64::from(packet.len);
    flow.last_seen_ns = flow.first.ts_boot_ns;
    // Never a live generation: the flow's next packet queues it.
    flow.queued_generation = 0;
    if FLOWS.insert(&key, flow, u64::from(BPF_NOEXIST)).is_ok() {
        emit::output(&flow.first);
    } else if let Some(existing) = FLOWS.get_ptr_mut(&key) {
        // Another CPU started the same flow a moment ago.
        aggregate(existing, &key, packet.len);
    } else {
        // The flow cannot be tracked: the packet is reported on its own rather than lost.
        flow.first.flags &= !flags::FLOW_FIRST;
        emit::output(&flow.first);
    }
}

/// The key under which the cgroup hook remembers a denied destination of the packet's socket;
/// `None` for packets without one.
#[inline(always)]
fn judged_key(raw: *mut __sk_buff, packet: &Packet) -> Option<JudgedKey> {
    // SAFETY: the helper reads the socket of the program's own skb (0 when there is none).
    let cookie = unsafe { bpf_get_socket_cookie(raw.cast()) };
    (cookie != 0).then_some(JudgedKey {
        cookie,
        dst: packet.dst,
        proto: packet.proto,
        ip_version: packet.ip_version,
        _pad: [0; 6],
    })
}

/// Cgroup hook, observe mode: remembers that this socket's denied packets to this destination
/// are reported here, so that TC does not report them again. Not inlined: only denied packets
/// come here.
#[inline(never)]
pub fn remember_judged(raw: *mut __sk_buff, packet: &Packet) {
    let Some(key) = judged_key(raw, packet) else {
        return;
    };
    if CGROUP_JUDGED.get_ptr(&key).is_none() {
        let _ = CGROUP_JUDGED.insert(&key, &0, 0);
    }
}

/// TC, observe mode: whether the cgroup hook judged and reported this denied packet already:
/// its socket sent a denied packet to the same destination through the cgroup hook, and the
/// packet is the socket's own — its transport protocol, and with ports its source port, are the
/// socket's. A packet a socket's data only rides in (a tunnel's outer header, sent without the
/// cgroup hook) has another protocol or port and stays TC's to report, as do packets without a
/// socket and those to a destination the cgroup hook did not see.
#[inline(never)]
pub fn judged_by_cgroup(raw: *mut __sk_buff, packet: &Packet) -> bool {
    if !sent_by_its_socket(raw, packet) {
        return false;
    }
    judged_key(raw, packet).is_some_and(|key| CGROUP_JUDGED.get_ptr(&key).is_some())
}

/// Whether the packet's transport protocol and source port are those of the socket it
/// carries.
#[inline(always)]
fn sent_by_its_socket(raw: *mut __sk_buff, packet: &Packet) -> bool {
    // SAFETY: reading a context field of the program's own skb; the helper checks the socket.
    unsafe {
        let sk = (*raw).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() || (*full).protocol != u32::from(packet.proto) {
            return false;
        }
        packet.flags & flags::HAS_PORTS == 0 || (*full).src_port == u32::from(packet.src_port)
    }
}

/// Adds a packet to its flow, and queues the flow for the daemon's next report unless it is
/// queued already in this period.
#[inline(always)]
fn aggregate(flow: *mut FlowValue, key: &FlowKey, len: u32) {
    // SAFETY: `flow` is a value pointer from a map lookup, valid for this program run; the
    // counts are shared between CPUs and so added to atomically.
    unsafe {
        emit::atomic_add(&raw mut (*flow).packets, 1);
        emit::atomic_add(&raw mut (*flow).bytes, u64::from(len));
        (*flow).last_seen_ns = bpf_ktime_get_boot_ns();
    }
    emit::stat(stat::AGGREGATED);
    // Read after the counts were added: a packet counted before the daemon advanced the
    // generation is in the values the daemon reads after advancing it; one counted after sees
    // the new generation and queues the flow for the next report.
    let generation = generation();
    // SAFETY: as above.
    if unsafe { (*flow).queued_generation } == generation {
        return;
    }
    let queue = if generation & 1 == 0 {
        &FLOW_DIRTY_0
    } else {
        &FLOW_DIRTY_1
    };
    if queue.push(key, 0).is_ok() {
        // SAFETY: as above. Two CPUs may both push the flow; the daemon reads each key once.
        unsafe { (*flow).queued_generation = generation };
    } else {
        emit::stat(stat::FLOW_QUEUE_FULL);
    }
}

/// The current reporting period; 0: aggregation is off.
#[inline(always)]
fn generation() -> u64 {
    CONFIG.get(config::FLOW_GENERATION).copied().unwrap_or(0)
}
