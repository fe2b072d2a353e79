//! What the datapath reports: per-CPU counters (no atomics on the hot path), per-rule hits,
//! and ring-buffer events for denied packets (which ones: `flow`). A full ring buffer is
//! counted, never silent.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_skb_cgroup_id,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    programs::sk_buff::SkBuff,
};
use egress_monitor_common::{
    event::{Event, flags},
    maps::SockOwner,
    maps::{counter_index, stat as stat_slot},
    record,
    verdict::hook as hooks,
};

use crate::{
    maps::{COUNTERS, EVENTS, RULE_HITS, SOCK_OWNERS, STATS},
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

/// Remembers the current process as the creator of the socket `sock` (a `bpf_sock` context).
#[inline(always)]
pub fn record_owner(sock: *mut core::ffi::c_void) {
    // SAFETY: the helpers read the current task and the program's own socket context.
    let (cookie, netns_cookie, pid_tgid, uid_gid, cgroup_id) = unsafe {
        (
            bpf_get_socket_cookie(sock),
            bpf_get_netns_cookie(sock),
            bpf_get_current_pid_tgid(),
            bpf_get_current_uid_gid(),
            bpf_get_current_cgroup_id(),
        )
    };
    let owner = SockOwner {
        cgroup_id,
        pid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        netns_cookie,
    };
    // A full map evicts the least recently used socket: an old socket may lose its name.
    let _ = SOCK_OWNERS.insert(&cookie, &owner, 0);
}

/// Who created the socket with this cookie: pid, comm and [`flags::OWNER_KNOWN`], when known.
#[inline(always)]
pub fn owner(cookie: u64) -> (u32, [u8; 16], u8) {
    let owner = if cookie == 0 {
        None
    } else {
        SOCK_OWNERS.get_ptr(&cookie)
    };
    match owner {
        // SAFETY: a value pointer the map lookup returned, valid for this program run.
        Some(owner) => unsafe { ((*owner).pid, (*owner).comm, flags::OWNER_KNOWN) },
        None => (0, [0; 16], 0),
    }
}

/// BPF's atomic add (`lock xadd`). The bpf target has no compare-and-swap, so core's atomic
/// types offer no `fetch_add` there; the intrinsic compiles to the one instruction.
///
/// # Safety
/// `dst` must be valid for writes and 8-byte aligned.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn atomic_add(dst: *mut u64, value: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: as the caller promises.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, value) };
}

/// # Safety
/// `dst` must be valid for writes and 8-byte aligned.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn atomic_add(dst: *mut u64, value: u64) {
    // SAFETY: as the caller promises.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(dst) }
        .fetch_add(value, core::sync::atomic::Ordering::Relaxed);
}

/// Queues `event` on the ring buffer, or counts it lost when the buffer is full.
#[inline(always)]
pub fn output(event: &Event) {
    if EVENTS.output(event, 0).is_err() {
        stat(stat_slot::EVENTS_LOST);
    }
}

/// Writes the event for a denied packet into `out`. `cookie` is the sending socket's (0 without
/// one).
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "inlined; every argument is a packet fact"
)]
pub fn describe(
    out: &mut Event,
    skb: &SkBuff,
    raw: *mut __sk_buff,
    hook: u8,
    outcome: u32,
    rule_id: u32,
    packet: &Packet,
    cookie: u64,
) {
    // SAFETY: the helpers only read the skb the program was given.
    let ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    let (uid, cgroup_id, ifindex) = if hook == hooks::CGROUP {
        // SAFETY: cgroup_skb may call both helpers on its own skb.
        (skb.get_socket_uid(), unsafe { bpf_skb_cgroup_id(raw) }, 0)
    } else {
        // SAFETY: reading a context field of the program's own skb.
        (0, 0, unsafe { (*raw).ifindex })
    };
    let (pid, comm, owner_flag) = owner(cookie);
    *out = Event {
        kind: record::KIND_PACKET,
        ip_version: packet.ip_version,
        proto: packet.proto,
        hook,
        outcome: outcome as u8,
        flags: packet.flags | owner_flag,
        ethertype: packet.ethertype,
        ts_boot_ns,
        cgroup_id,
        len: packet.len,
        uid,
        ifindex,
        rule_id,
        pid,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        src: packet.src,
        dst: packet.dst,
        comm,
    };
}
