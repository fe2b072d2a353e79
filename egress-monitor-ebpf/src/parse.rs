//! Bounded packet parsing: where the IP header is, what its destination is, and (when the
//! transport header is reachable) the protocol and ports.
//!
//! Every read goes through `bpf_skb_load_bytes` with a fixed size, so a short or non-linear skb
//! fails the read instead of the verifier. Loops are bounded by constants.

use core::ptr::NonNull;

use aya_ebpf::{bindings::__sk_buff, programs::sk_buff::SkBuff};
use egress_monitor_common::event::flags;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
pub(crate) const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
/// Q-in-Q at most; a deeper stack is judged as a non-IP frame (denied), not looked into.
const MAX_VLAN_TAGS: usize = 2;

pub(crate) const IPV4_MIN_HLEN: usize = 20;
/// IPv4 options (RFC 791): end of list, no-op, and the two source routes (loose, strict),
/// whose later addresses are where the packet is really going.
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 0x83;
const IPOPT_SSRR: u8 = 0x89;
/// At most 40 bytes of options, so at most 40 of them (each at least one byte).
const MAX_IPV4_OPTIONS: usize = 40;
pub(crate) const IPV6_HLEN: usize = 40;
/// Enough for any sane chain (hop-by-hop, destination options, routing, fragment, AH, ...).
const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// Where the program's packet data starts.
#[derive(Clone, Copy)]
pub enum L3Start {
    /// At the IP header (cgroup_skb).
    Network,
    /// At an Ethernet header, possibly VLAN-tagged (TC on an Ethernet device).
    Ethernet,
}

/// What a packet is. The verdict needs only the destination; the transport fields (protocol
/// after IPv6 extension headers, ports) are filled in by [`transport`] for events alone, so
/// an allowed packet costs one header read.
pub struct Packet {
    /// 4 or 6; 0 when the frame is not IP at all.
    pub ip_version: u8,
    /// The Ethernet frame's ethertype (after VLAN tags); 0 on the cgroup hook.
    pub ethertype: u16,
    /// The IP protocol; for IPv6, the fixed header's next header until [`transport`] walks on.
    pub proto: u8,
    pub flags: u8,
    /// IPv4 addresses fill the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// Bytes from the IP header on.
    pub len: u32,
    /// Where the header after the fixed IP header starts.
    l4: usize,
    /// An IPv4 fragment other than the first: no transport header.
    later_fragment: bool,
    /// IPv4: the header's length, options included (0 for IPv6).
    ipv4_header_len: u8,
}

impl Packet {
    /// Where the transport header starts (after IPv6 extension headers once [`transport`] ran).
    pub fn l4(&self) -> usize {
        self.l4
    }

    /// Whether an IPv4 header carries options (which [`source_routed_v4`] reads).
    pub fn has_ipv4_options(&self) -> bool {
        usize::from(self.ipv4_header_len) > IPV4_MIN_HLEN
    }

    const fn empty(len: u32) -> Self {
        Self {
            ip_version: 0,
            ethertype: 0,
            proto: 0,
            flags: 0,
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            len,
            l4: 0,
            later_fragment: false,
            ipv4_header_len: 0,
        }
    }
}

/// The outcome of parsing.
pub enum Parsed {
    /// An IP packet with a readable destination.
    Ip(Packet),
    /// A frame with no destination to judge: an IP packet whose fixed header cannot be read,
    /// or a non-IP, non-ARP frame. No allow rule can apply, so it is denied.
    Unjudgeable(Packet),
    /// ARP: stays on the link, and IPv4 cannot work without it.
    Arp,
}

/// Reads what the verdict needs. `protocol` is `skb->protocol` (network order), which the
/// stack sets for every locally sent IP packet: the cgroup hook takes the family from it. The
/// TC hook reads the ethertype from the frame itself instead, since an AF_PACKET sender
/// chooses `skb->protocol` freely.
pub fn parse(skb: &SkBuff, start: L3Start, protocol: u16) -> Parsed {
    let (l3, ethertype) = match start {
        L3Start::Network => (0, u16::from_be(protocol)),
        L3Start::Ethernet => ethernet(skb),
    };
    let len = skb.len().saturating_sub(l3 as u32);
    let parsed = match ethertype {
        ETH_P_IP => ipv4(skb, l3, len),
        ETH_P_IPV6 => ipv6(skb, l3, len),
        ETH_P_ARP if matches!(start, L3Start::Ethernet) => return Parsed::Arp,
        _ if matches!(start, L3Start::Ethernet) => return not_ip(ethertype, len),
        _ => return malformed(0, len),
    };
    match (parsed, start) {
        (Parsed::Ip(mut packet), L3Start::Ethernet) => {
            packet.ethertype = ethertype;
            Parsed::Ip(packet)
        }
        (Parsed::Unjudgeable(mut packet), L3Start::Ethernet) => {
            packet.ethertype = ethertype;
            Parsed::Unjudgeable(packet)
        }
        (parsed, _) => parsed,
    }
}

fn malformed(ip_version: u8, len: u32) -> Parsed {
    let mut packet = Packet::empty(len);
    packet.ip_version = ip_version;
    packet.flags = flags::MALFORMED;
    Parsed::Unjudgeable(packet)
}

fn not_ip(ethertype: u16, len: u32) -> Parsed {
    let mut packet = Packet::empty(len);
    packet.ethertype = ethertype;
    packet.flags = flags::NOT_IP;
    Parsed::Unjudgeable(packet)
}

/// The offset of the payload and its ethertype, after at most [`MAX_VLAN_TAGS`] tags. A frame
/// too short for its header reports ethertype 0 (unknown, so denied).
fn ethernet(skb: &SkBuff) -> (usize, u16) {
    let mut offset = ETH_HLEN - 2;
    let read = |offset: usize| skb.load::<[u8; 2]>(offset).map_or(0, u16::from_be_bytes);
    let mut ethertype = read(offset);
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        offset += VLAN_HLEN;
        ethertype = read(offset);
    }
    (offset + 2, ethertype)
}

fn ipv4(skb: &SkBuff, l3: usize, len: u32) -> Parsed {
    let Ok(h) = skb.load::<[u8; IPV4_MIN_HLEN]>(l3) else {
        return malformed(4, len);
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    // The version must match the family the frame claims: a mismatch is a crafted packet.
    if h[0] >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return malformed(4, len);
    }
    let mut packet = Packet::empty(len);
    packet.ip_version = 4;
    packet.proto = h[9];
    packet.src[..4].copy_from_slice(&h[12..16]);
    packet.dst[..4].copy_from_slice(&h[16..20]);
    packet.l4 = l3 + ihl;
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    if more_fragments || offset != 0 {
        packet.flags |= flags::FRAGMENT;
    }
    // Only the first fragment carries the transport header.
    packet.later_fragment = offset != 0;
    packet.ipv4_header_len = ihl as u8;
    Parsed::Ip(packet)
}

/// Whether the IPv4 options carry a source route (or cannot be walked: fail closed). Source
/// routes are copied into every fragment, so each fragment is judged alike. Not inlined: only
/// packets with options (rare) pay for the walk, and the verifier checks it once.
#[inline(never)]
pub fn source_routed_v4(raw: *mut __sk_buff, packet: &Packet) -> bool {
    let Some(skb) = NonNull::new(raw).map(SkBuff::new) else {
        return true;
    };
    let ihl = usize::from(packet.ipv4_header_len);
    let l3 = packet.l4 - ihl;
    let mut offset = IPV4_MIN_HLEN;
    for _ in 0..MAX_IPV4_OPTIONS {
        if offset >= ihl {
            return false;
        }
        let Ok(kind) = skb.load::<u8>(l3 + offset) else {
            return true;
        };
        match kind {
            IPOPT_END => return false,
            IPOPT_NOOP => {
                offset += 1;
                continue;
            }
            IPOPT_LSRR | IPOPT_SSRR => return true,
            _ => {}
        }
        let Ok(len) = skb.load::<u8>(l3 + offset + 1) else {
            return true;
        };
        if len < 2 {
            return true;
        }
        offset += usize::from(len);
    }
    offset < ihl
}

/// Whether an IPv6 extension chain starting with `next` at `offset` holds a routing header, or
/// cannot be walked to its end (too long, unreadable): fail closed. The verdict's own walk, apart
/// from [`transport`]'s: not inlined, it hands back one bit, so the verifier does not carry the
/// walk's states into the rest of the program.
#[inline(never)]
pub fn source_routed_v6(raw: *mut __sk_buff, mut next: u8, mut offset: usize) -> bool {
    // The context pointer goes by value: a reference would pin the caller's `SkBuff` to its
    // stack, whose every byte counts (the 512-byte limit spans the call chain).
    let Some(skb) = NonNull::new(raw).map(SkBuff::new) else {
        return true;
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_ROUTING => return true,
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => {
                let Ok(ext) = skb.load::<[u8; 2]>(offset) else {
                    return true;
                };
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let Ok(ext) = skb.load::<[u8; 2]>(offset) else {
                    return true;
                };
                next = ext[0];
                offset += (usize::from(ext[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let Ok(ext) = skb.load::<[u8; 4]>(offset) else {
                    return true;
                };
                next = ext[0];
                offset += 8;
                // A later fragment: what follows is payload (its first fragment carried the
                // chain), unless the fragment header itself says a routing header follows.
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    return next == IPPROTO_ROUTING;
                }
            }
            _ => return false,
        }
    }
    is_extension_header(next)
}

/// Whether a transport protocol starts with the ports (TCP, UDP, SCTP, UDP-Lite).
#[inline(always)]
pub fn has_ports(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE
    )
}

/// Whether an IPv6 next-header value is an extension header [`transport`] walks.
#[inline(always)]
pub fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    )
}

fn ipv6(skb: &SkBuff, l3: usize, len: u32) -> Parsed {
    let Ok(h) = skb.load::<[u8; IPV6_HLEN]>(l3) else {
        return malformed(6, len);
    };
    if h[0] >> 4 != 6 {
        return malformed(6, len);
    }
    let mut packet = Packet::empty(len);
    packet.ip_version = 6;
    packet.proto = h[6];
    packet.src.copy_from_slice(&h[8..24]);
    packet.dst.copy_from_slice(&h[24..40]);
    packet.l4 = l3 + IPV6_HLEN;
    Parsed::Ip(packet)
}

/// Fills in the transport fields of a parsed IP packet: walks IPv6 extension headers (bounded)
/// and reads the ports of TCP, UDP, SCTP and UDP-Lite first fragments. A routing header, or a
/// chain that cannot be walked to its end (too long, unreadable), sets
/// [`flags::SOURCE_ROUTE`]: a destination may hide behind it. Idempotent: a second call finds
/// the walk done.
pub fn transport(skb: &SkBuff, packet: &mut Packet) {
    // A later fragment was found by an earlier walk: what follows it is payload.
    if packet.ip_version == 6 && !packet.later_fragment {
        let mut next = packet.proto;
        let mut offset = packet.l4;
        for _ in 0..MAX_IPV6_EXT_HEADERS {
            match next {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    if next == IPPROTO_ROUTING {
                        packet.flags |= flags::SOURCE_ROUTE;
                    }
                    let Ok(ext) = skb.load::<[u8; 2]>(offset) else {
                        break;
                    };
                    next = ext[0];
                    offset += (usize::from(ext[1]) + 1) * 8;
                }
                IPPROTO_AH => {
                    let Ok(ext) = skb.load::<[u8; 2]>(offset) else {
                        break;
                    };
                    next = ext[0];
                    offset += (usize::from(ext[1]) + 2) * 4;
                }
                IPPROTO_FRAGMENT => {
                    let Ok(ext) = skb.load::<[u8; 4]>(offset) else {
                        break;
                    };
                    packet.flags |= flags::FRAGMENT;
                    next = ext[0];
                    offset += 8;
                    if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                        packet.later_fragment = true;
                        break;
                    }
                }
                _ => break,
            }
        }
        // Still an extension header: the walk ran out or could not read on. A later fragment's
        // headers are beyond reach (its first fragment carried the chain).
        if is_extension_header(next) && (!packet.later_fragment || next == IPPROTO_ROUTING) {
            packet.flags |= flags::SOURCE_ROUTE;
        }
        packet.proto = next;
        packet.l4 = offset;
    }
    if packet.later_fragment || !has_ports(packet.proto) {
        return;
    }
    if let Ok(p) = skb.load::<[u8; 4]>(packet.l4) {
        packet.src_port = u16::from_be_bytes([p[0], p[1]]);
        packet.dst_port = u16::from_be_bytes([p[2], p[3]]);
        packet.flags |= flags::HAS_PORTS;
    }
}
