//! The raw-socket guards (see `egress_monitor_common::guard`): the `setsockopt` calls that would
//! let a packet skip the TC hook are refused in enforce mode and reported in both modes.

use aya_ebpf::{
    bindings::bpf_sockopt,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
};
use egress_monitor_common::{
    guard::{GuardEvent, PACKET_QDISC_BYPASS, SOL_PACKET, SOL_XDP, XDP_TX_RING},
    maps::stat,
    record,
    verdict::outcome,
};

use crate::{
    emit,
    maps::{EVENTS, RAW_EXEMPT},
    policy,
};

/// cgroup/setsockopt return codes: 1 lets the call go on, 0 fails it with EPERM.
pub const SOCKOPT_ALLOW: i32 = 1;
pub const SOCKOPT_REFUSE: i32 = 0;

/// The most option bytes a sockopt program is shown (the kernel's PAGE_SIZE on x86).
const SHOWN_OPTLEN: i32 = 4096;

/// Judges one `setsockopt` call.
#[inline(always)]
pub fn setsockopt(opt: *mut bpf_sockopt) -> i32 {
    let verdict = judge(opt);
    if verdict == SOCKOPT_ALLOW {
        pass_original(opt);
    }
    verdict
}

/// For a call whose option is longer than the program is shown, says "use the caller's own
/// bytes" (optlen 0): kernels before 6.5 fail such calls with EFAULT when the program leaves
/// optlen as it was (large iptables tables, for one).
#[inline(always)]
fn pass_original(opt: *mut bpf_sockopt) {
    // SAFETY: reading and writing the program's own sockopt context.
    unsafe {
        if (*opt).optlen > SHOWN_OPTLEN {
            (*opt).optlen = 0;
        }
    }
}

#[inline(always)]
fn judge(opt: *mut bpf_sockopt) -> i32 {
    // SAFETY: reading context fields of the program's own sockopt context.
    let (level, optname) = unsafe { ((*opt).level, (*opt).optname) };
    let guarded = match (level, optname) {
        (SOL_PACKET, PACKET_QDISC_BYPASS) => turns_on(opt),
        // A TX ring is all an XDP socket needs to send: refused whatever its size.
        (SOL_XDP, XDP_TX_RING) => true,
        _ => false,
    };
    if !guarded {
        return SOCKOPT_ALLOW;
    }
    // SAFETY: the helper reads the current task's cgroup.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if RAW_EXEMPT.get_ptr(&cgroup_id).is_some() {
        return SOCKOPT_ALLOW;
    }
    let enforce = policy::enforcing();
    report(cgroup_id, level, optname, enforce);
    if enforce {
        SOCKOPT_REFUSE
    } else {
        SOCKOPT_ALLOW
    }
}

/// Whether the option's value is non-zero (an int). A value that cannot be read counts as
/// turning it on: the guard fails closed.
#[inline(always)]
fn turns_on(opt: *mut bpf_sockopt) -> bool {
    // SAFETY: reading context fields; the value is read only inside [optval, optval_end).
    unsafe {
        let start = (*opt).__bindgen_anon_2.optval as *const u8;
        let end = (*opt).__bindgen_anon_3.optval_end as *const u8;
        if start.wrapping_add(4) > end {
            return true;
        }
        core::ptr::read_unaligned(start.cast::<i32>()) != 0
    }
}

#[inline(always)]
fn report(cgroup_id: u64, level: i32, optname: i32, enforce: bool) {
    emit::stat(stat::RAW_GUARD_HITS);
    // SAFETY: the helpers read the current task and the clock.
    let (pid_tgid, uid_gid, ts_boot_ns) = unsafe {
        (
            bpf_get_current_pid_tgid(),
            bpf_get_current_uid_gid(),
            bpf_ktime_get_boot_ns(),
        )
    };
    let event = GuardEvent {
        kind: record::KIND_GUARD,
        outcome: if enforce {
            outcome::DENIED_DROPPED as u8
        } else {
            outcome::DENIED_OBSERVED as u8
        },
        _pad: [0; 6],
        ts_boot_ns,
        cgroup_id,
        pid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        level,
        optname,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output(&event, 0).is_err() {
        emit::stat(stat::EVENTS_LOST);
    }
}
