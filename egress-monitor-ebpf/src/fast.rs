//! The fast lane: the common allowed packet judged with direct packet access, array lookups
//! and no helper or BPF-to-BPF call, exactly as the full path ([`crate::policy::judge`]) would
//! judge it. It takes only packets whose verdict needs nothing beyond the destination: IPv4
//! without options or fragmentation, IPv6 without extension headers, headers in the linear
//! part of the skb, no port 53 either way (DNS queries are read, and answers from raw sockets
//! refused, on the full path), and a destination the flat table allows. Everything else — VLAN
//! tags, deny, no rule, a table entry that asks the trie — takes the full path, which decides
//! from the beginning.
//!
//! The ingress program's early exit is here too: a received packet that cannot be a DNS answer
//! (no ports, or a source port other than 53) is not parsed at all.

use aya_ebpf::bindings::__sk_buff;
use egress_monitor_common::{flat, policy::config, verdict::outcome};

use crate::{
    emit,
    maps::{CONFIG, FLAT_V4, FLAT_V6},
    parse::{self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV4_MIN_HLEN, IPV6_HLEN, L3Start, has_ports},
    policy,
};

const DNS_PORT: u16 = 53;

/// The packet's linear bytes, `[start, end)`, as the verifier knows them.
#[derive(Clone, Copy)]
struct Linear {
    start: usize,
    end: usize,
}

impl Linear {
    /// # Safety
    /// `raw` is the program's own skb.
    #[inline(always)]
    unsafe fn of(raw: *mut __sk_buff) -> Linear {
        // SAFETY: as the caller promises.
        unsafe {
            Linear {
                start: (*raw).data as usize,
                end: (*raw).data_end as usize,
            }
        }
    }

    /// `N` bytes at `offset`, when the linear part holds them.
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if self.start + offset + N > self.end {
            return None;
        }
        // SAFETY: bounds-checked against `data_end` just above, as the verifier requires.
        Some(unsafe { core::ptr::read_unaligned((self.start + offset) as *const [u8; N]) })
    }
}

/// Where the IP header starts and which family it is, or `None` (the full path decides).
#[inline(always)]
fn network(raw: *mut __sk_buff, packet: Linear, start: L3Start) -> Option<(usize, u16)> {
    match start {
        L3Start::Network => {
            // SAFETY: reading a context field of the program's own skb.
            let protocol = unsafe { (*raw).protocol } as u16;
            Some((0, u16::from_be(protocol)))
        }
        // Only a plain Ethernet header: VLAN tags take the full path.
        L3Start::Ethernet => {
            let ethertype = u16::from_be_bytes(packet.read::<2>(ETH_HLEN - 2)?);
            Some((ETH_HLEN, ethertype))
        }
    }
}

/// Whether the ports at `l4` (when `proto` has them) keep the packet off DNS: `None` when
/// they cannot be read directly.
#[inline(always)]
fn not_dns(packet: Linear, proto: u8, l4: usize) -> Option<bool> {
    if !has_ports(proto) {
        return Some(true);
    }
    let ports = packet.read::<4>(l4)?;
    let (src, dst) = (
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    );
    Some(src != DNS_PORT && dst != DNS_PORT)
}

/// The fast lane of an egress program: `true` when the packet is allowed, its rule hit and
/// its verdict counted, exactly as the full path would have; `false` when the full path must
/// judge it (nothing was counted).
#[inline(always)]
pub fn egress(raw: *mut __sk_buff, start: L3Start, hook: u8) -> bool {
    if CONFIG
        .get(config::FAST_LANE_OFF)
        .is_some_and(|&off| off != 0)
    {
        return false;
    }
    // SAFETY: the program's own skb.
    let packet = unsafe { Linear::of(raw) };
    let Some((l3, family)) = network(raw, packet, start) else {
        return false;
    };
    let rule = match family {
        ETH_P_IP => {
            let Some(h) = packet.read::<IPV4_MIN_HLEN>(l3) else {
                return false;
            };
            // Version 4, no options; neither a fragment nor one to come.
            let fragmented = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
            if h[0] != 0x45 || fragmented || not_dns(packet, h[9], l3 + IPV4_MIN_HLEN) != Some(true)
            {
                return false;
            }
            let dst = [h[16], h[17], h[18], h[19]];
            flat::walk(&dst, |index| FLAT_V4.get(index).copied())
        }
        ETH_P_IPV6 => {
            let Some(h) = packet.read::<IPV6_HLEN>(l3) else {
                return false;
            };
            let next = h[6];
            if h[0] >> 4 != 6
                || parse::is_extension_header(next)
                || not_dns(packet, next, l3 + IPV6_HLEN) != Some(true)
            {
                return false;
            }
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&h[24..40]);
            flat::walk(&dst, |index| FLAT_V6.get(index).copied())
        }
        _ => None,
    };
    let Some(rule_id) = rule else {
        return false;
    };
    if !policy::is_check(raw) {
        // SAFETY: reading a context field of the program's own skb.
        let len = unsafe { (*raw).len }.saturating_sub(l3 as u32);
        emit::rule_hit(rule_id);
        emit::count(hook, outcome::ALLOWED, len);
    }
    true
}

/// Whether a received packet may be a DNS answer, which the ingress program must read: `false`
/// only when it certainly is not (no ports, a later fragment, or a source port other than 53),
/// read directly. Anything else is read by the full parse.
#[inline(always)]
pub fn may_be_dns_answer(raw: *mut __sk_buff) -> bool {
    // SAFETY: the program's own skb.
    let packet = unsafe { Linear::of(raw) };
    let Some((_, family)) = network(raw, packet, L3Start::Network) else {
        return true;
    };
    let (proto, l4) = match family {
        ETH_P_IP => {
            let Some(h) = packet.read::<IPV4_MIN_HLEN>(0) else {
                return true;
            };
            if h[0] != 0x45 {
                return true;
            }
            // Only the first fragment carries ports.
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return false;
            }
            (h[9], IPV4_MIN_HLEN)
        }
        ETH_P_IPV6 => {
            let Some(h) = packet.read::<IPV6_HLEN>(0) else {
                return true;
            };
            if h[0] >> 4 != 6 || parse::is_extension_header(h[6]) {
                return true;
            }
            (h[6], IPV6_HLEN)
        }
        _ => return true,
    };
    if !has_ports(proto) {
        return false;
    }
    match packet.read::<2>(l4) {
        Some(src) => u16::from_be_bytes(src) == DNS_PORT,
        None => true,
    }
}
