//! The record the kernel writes to the `EVENTS` ring buffer for a denied packet: the first of
//! its flow, or each one when aggregation is off (see [`crate::flow`]).

/// `Event::flags` bits.
pub mod flags {
    /// `src_port` and `dst_port` hold the transport ports (TCP/UDP/SCTP/UDP-Lite, first
    /// fragment only).
    pub const HAS_PORTS: u8 = 1 << 0;
    /// The packet is an IP fragment.
    pub const FRAGMENT: u8 = 1 << 1;
    /// The IP header could not be read in full; only the fields read so far are set.
    pub const MALFORMED: u8 = 1 << 2;
    /// Not an IP packet (TC hook): an ethertype other than IPv4, IPv6 and ARP, or more VLAN
    /// tags than the parser unwraps. `ethertype` says which; there are no addresses.
    pub const NOT_IP: u8 = 1 << 3;
    /// `pid` and `comm` name the process that created the sending socket.
    pub const OWNER_KNOWN: u8 = 1 << 4;
    /// The first packet of a flow: the flow's later packets are counted, not sent as events
    /// (see [`crate::flow`]). Without it, the event stands for this one packet alone.
    pub const FLOW_FIRST: u8 = 1 << 5;
    /// DNS answers: a domain rule allowed the name and the answer answered a question this
    /// socket asked, so its addresses were learned.
    pub const LEARNED: u8 = 1 << 6;
    /// The packet names further destinations beyond its IP destination (an IPv4 source-route
    /// option, an IPv6 routing header) or hides them behind an extension chain too long to
    /// walk: it was denied whatever its first hop, since a router honouring the route would
    /// deliver it elsewhere.
    pub const SOURCE_ROUTE: u8 = 1 << 7;
}

/// The kind byte first (see [`crate::record`]), with the other byte fields and the ethertype
/// in the first 8 bytes; then largest-first, so that no implicit padding exists and the size is
/// a multiple of 8 (consecutive records in the ring buffer stay aligned).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// [`crate::record::KIND_PACKET`].
    pub kind: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// IP protocol number of the transport header (after IPv6 extension headers).
    pub proto: u8,
    /// [`crate::verdict::hook`].
    pub hook: u8,
    /// [`crate::verdict::outcome`], as a byte.
    pub outcome: u8,
    pub flags: u8,
    /// The frame's ethertype (host byte order) on the TC hook; 0 on the cgroup hook.
    pub ethertype: u16,
    /// `bpf_ktime_get_boot_ns()` when the packet was seen.
    pub ts_boot_ns: u64,
    /// cgroup v2 id of the sending socket (cgroup hook only; 0 on TC).
    pub cgroup_id: u64,
    /// Length of the IP packet in bytes.
    pub len: u32,
    /// Socket owner's uid (cgroup hook only).
    pub uid: u32,
    /// Interface the packet leaves by (TC hook only).
    pub ifindex: u32,
    /// Matched rule, or [`crate::verdict::RULE_ID_DEFAULT`].
    pub rule_id: u32,
    /// Process (thread-group) id of the socket's creator, with [`flags::OWNER_KNOWN`].
    pub pid: u32,
    /// Host byte order; meaningful only with [`flags::HAS_PORTS`].
    pub src_port: u16,
    pub dst_port: u16,
    /// Source and destination addresses: IPv4 in the first 4 bytes, network order.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Command name of the socket's creator (NUL-padded), with [`flags::OWNER_KNOWN`].
    pub comm: [u8; 16],
}
pub const EVENT_SIZE: usize = 96;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);
// The kind byte opens every ring record: the daemon reads it before anything else.
const _: () = assert!(core::mem::offset_of!(Event, kind) == 0);
// No implicit padding before the byte arrays, none at the end.
const _: () = assert!(core::mem::offset_of!(Event, comm) == EVENT_SIZE - 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer and byte-array fields, no implicit padding (asserted offsets).
    unsafe impl aya::Pod for super::Event {}
}
