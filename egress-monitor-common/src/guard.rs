//! Raw-socket guards: the socket options that would let a sender skip the TC egress hook.
//!
//! A packet socket with `PACKET_QDISC_BYPASS` hands its frames straight to the driver
//! (`dev_direct_xmit`), and an AF_XDP socket transmits from its TX ring the same way: neither
//! passes the qdisc layer where the TC egress program runs, and neither has an IP socket the
//! cgroup hook could see. Without those options a packet socket's frames go through
//! `dev_queue_xmit`, so TC judges them like any other frame. The `cgroup/setsockopt` program
//! therefore refuses the two options (EPERM) for every process of the attached cgroup, in
//! enforce mode; in observe mode it reports them and lets them be set. A cgroup the policy
//! names in `[raw_sockets] allow_cgroups` is exempt (an AF_XDP application, say).

/// `SOL_PACKET` and its option that skips the qdisc layer (include/uapi/linux/if_packet.h).
pub const SOL_PACKET: i32 = 263;
pub const PACKET_QDISC_BYPASS: i32 = 20;
/// `SOL_XDP` and the option that makes an AF_XDP socket's TX ring (include/uapi/linux/if_xdp.h):
/// without a TX ring an XDP socket cannot send.
pub const SOL_XDP: i32 = 283;
pub const XDP_TX_RING: i32 = 3;

/// The ring-buffer record for a guarded socket option.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardEvent {
    /// [`crate::record::KIND_GUARD`].
    pub kind: u8,
    /// [`crate::verdict::outcome`]: refused (enforce) or observed.
    pub outcome: u8,
    /// Up to the 8-byte alignment of the timestamp.
    pub _pad: [u8; 6],
    pub ts_boot_ns: u64,
    /// The calling process's cgroup.
    pub cgroup_id: u64,
    pub pid: u32,
    pub uid: u32,
    /// The `setsockopt` level and option name.
    pub level: i32,
    pub optname: i32,
    pub comm: [u8; 16],
}
pub const GUARD_EVENT_SIZE: usize = 56;
const _: () = assert!(core::mem::size_of::<GuardEvent>() == GUARD_EVENT_SIZE);
// The kind byte opens every ring record: the daemon reads it before anything else.
const _: () = assert!(core::mem::offset_of!(GuardEvent, kind) == 0);

/// Cgroups exempt from the guards (`RAW_EXEMPT`, keyed by cgroup id).
pub const EXEMPT_CAPACITY: u32 = 256;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields, explicit padding.
    unsafe impl aya::Pod for super::GuardEvent {}
}
