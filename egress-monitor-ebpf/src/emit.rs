//! What the datapath reports: per-CPU counters (no atomics on the hot path), per-rule hits,
//! and a ring-buffer event for every denied packet. A full ring buffer is counted, never silent.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id},
    programs::sk_buff::SkBuff,
};
use egress_monitor_common::{
    event::Event,
    maps::{counter_index, stat as stat_slot},
    verdict::hook as hooks,
};

use crate::{
    maps::{COUNTERS, EVENTS, RULE_HITS, STATS},
    parse::Packet,
};

#[inline(always)]
pub fn count(hook: u8, outcome: u32, len: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(counter_index(hook, outcome)) {
        // SAFETY: a per-CPU slot: only this CPU writes it while this program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(len);
        }
    }
}

#[inline(always)]
pub fn rule_hit(rule_id: u32) {
    if let Some(hits) = RULE_HITS.get_ptr_mut(rule_id) {
        // SAFETY: per-CPU slot, as above.
        unsafe { *hits += 1 }
    }
}

#[inline(always)]
pub fn stat(slot: u32) {
    if let Some(value) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, as above.
        unsafe { *value += 1 }
    }
}

#[inline(always)]
pub fn event(
    skb: &SkBuff,
    raw: *mut __sk_buff,
    hook: u8,
    outcome: u32,
    rule_id: u32,
    packet: &Packet,
) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        stat(stat_slot::EVENTS_LOST);
        return;
    };
    // SAFETY: the helpers only read the skb the program was given.
    let ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    let (uid, cgroup_id, ifindex) = if hook == hooks::CGROUP {
        // SAFETY: cgroup_skb may call both helpers on its own skb.
        (skb.get_socket_uid(), unsafe { bpf_skb_cgroup_id(raw) }, 0)
    } else {
        // SAFETY: reading a context field of the program's own skb.
        (0, 0, unsafe { (*raw).ifindex })
    };
    entry.write(Event {
        ts_boot_ns,
        cgroup_id,
        len: packet.len,
        uid,
        ifindex,
        rule_id,
        src: packet.src,
        dst: packet.dst,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        ip_version: packet.ip_version,
        proto: packet.proto,
        hook,
        outcome: outcome as u8,
        flags: packet.flags,
        _pad: 0,
        ethertype: packet.ethertype,
        _pad2: [0; 4],
    });
    entry.submit(0);
}
