//! Domain rules in the kernel: the answers a process in the cgroup receives are read on the
//! cgroup's ingress hook, before the process sees them; when the question's name matches an
//! allow rule, the answer's A and AAAA addresses are allowed until their TTL (plus the grace
//! period) runs out. Learning happens before the answer is delivered, so the process's first
//! packet to the address already finds it allowed, and expiry is checked against the clock on
//! every lookup, with or without a daemon.
//!
//! Every loop is bounded: at most [`MAX_LABELS`] labels per name, [`MAX_ANSWERS`] records.

use core::hint::black_box;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_skb_load_bytes},
    programs::sk_buff::SkBuff,
};
use egress_monitor_common::{
    dns::{HASH_SEED, LearnedValue, MAX_ANSWERS, MAX_NAME, NO_RULE, fold},
    event::flags,
    policy::config,
    verdict::action,
};

use crate::{
    maps::{CONFIG, DNS_ALLOWED_V4, DNS_ALLOWED_V6, DNS_SCRATCH, DOMAINS},
    parse::{self, L3Start, Parsed},
};

const DNS_PORT: u16 = 53;
const DNS_HEADER: usize = 12;
const UDP_HEADER: usize = 8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// A name of at most 255 bytes has at most 127 labels.
const MAX_LABELS: usize = 128;

/// A question name read from a message, and where its labels start.
#[repr(C)]
pub struct NameScratch {
    /// The name in wire format (only the first `len` bytes are meaningful).
    pub name: [u8; 256],
    /// `starts[i] == run`: a label's length byte is at offset `i` of the name read in this
    /// run (a mark per offset rather than a list keeps the verifier's work linear; the run
    /// number spares clearing the marks of earlier runs).
    pub starts: [u32; 256],
    pub run: u32,
}

/// The cgroup ingress hook: learns from DNS answers. Never drops anything.
#[inline(always)]
pub fn learn(skb: &SkBuff, raw: *mut __sk_buff) {
    if CONFIG.get(config::DOMAIN_RULES).is_none_or(|&n| n == 0) {
        return;
    }
    // SAFETY: reading a context field of the program's own skb.
    let protocol = unsafe { (*raw).protocol } as u16;
    let Parsed::Ip(mut packet) = parse::parse(skb, L3Start::Network, protocol) else {
        return;
    };
    parse::transport(skb, &mut packet);
    if packet.flags & flags::HAS_PORTS == 0 || packet.src_port != DNS_PORT {
        return;
    }
    let message = match packet.proto {
        IPPROTO_UDP => packet.l4() + UDP_HEADER,
        // A DNS message over TCP follows a 2-byte length; only a segment that starts one is
        // read (an answer split over segments teaches nothing, which fails closed).
        IPPROTO_TCP => match skb.load::<u8>(packet.l4() + 12) {
            Ok(offset) => packet.l4() + usize::from(offset >> 4) * 4 + 2,
            Err(_) => return,
        },
        _ => return,
    };
    let _ = learn_from(skb, raw, message);
}

fn learn_from(skb: &SkBuff, raw: *mut __sk_buff, message: usize) -> Option<()> {
    let header = skb.load::<[u8; DNS_HEADER]>(message).ok()?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let answers = u16::from_be_bytes([header[6], header[7]]);
    // A response (QR), no error, one question.
    if flags & 0x8000 == 0 || flags & 0x000f != 0 || questions != 1 {
        return None;
    }
    let (name_len, rule_id, rule_action) = question(skb, raw, message + DNS_HEADER)?;
    if rule_action != action::ALLOW {
        return None;
    }
    // SAFETY: the helper reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let grace = CONFIG.get(config::DNS_GRACE_NS).copied().unwrap_or(0);
    // The question's type and class follow its name.
    let mut offset = message + DNS_HEADER + name_len + 4;
    for index in 0..MAX_ANSWERS {
        if index >= usize::from(answers) {
            break;
        }
        offset = skip_name(skb, offset)?;
        let record = skb.load::<[u8; 10]>(offset).ok()?;
        let kind = u16::from_be_bytes([record[0], record[1]]);
        let class = u16::from_be_bytes([record[2], record[3]]);
        let ttl = u32::from_be_bytes([record[4], record[5], record[6], record[7]]);
        let length = usize::from(u16::from_be_bytes([record[8], record[9]]));
        offset += 10;
        let learned = LearnedValue {
            expires_ns: now + u64::from(ttl) * 1_000_000_000 + grace,
            rule_id,
            _pad: 0,
        };
        if class == CLASS_IN && kind == TYPE_A && length == 4 {
            if let Ok(address) = skb.load::<[u8; 4]>(offset) {
                let _ = DNS_ALLOWED_V4.insert(&address, &learned, 0);
            }
        } else if class == CLASS_IN
            && kind == TYPE_AAAA
            && length == 16
            && let Ok(address) = skb.load::<[u8; 16]>(offset)
        {
            let _ = DNS_ALLOWED_V6.insert(&address, &learned, 0);
        }
        offset += length;
    }
    Some(())
}

/// Reads the question name at `offset` and finds the most specific domain rule for it: the
/// length of the name in wire format, and the rule's id and action.
fn question(skb: &SkBuff, raw: *mut __sk_buff, offset: usize) -> Option<(usize, u32, u8)> {
    let scratch = DNS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot, used by this program run only.
    let scratch = unsafe { &mut *scratch };
    let available = (skb.len() as usize).checked_sub(offset)?;
    // black_box, then the checks: the verifier must see the very register the helper gets
    // tested against 0, which the compiler's rewriting of `min` would otherwise hide.
    let len = black_box(available.min(MAX_NAME)) & 0xff;
    if len == 0 {
        return None;
    }
    // SAFETY: the helper writes at most `len` (1 to 255) bytes into the 256-byte buffer.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            raw.cast(),
            offset as u32,
            scratch.name.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    // Forward: where the labels start, and where the name ends.
    scratch.run = match scratch.run.wrapping_add(1) {
        0 => 1,
        run => run,
    };
    let run = scratch.run;
    let mut position = 0usize;
    let mut end = 0usize;
    for _ in 0..MAX_LABELS {
        if position >= len {
            return None;
        }
        let label = usize::from(scratch.name[position & 0xff]);
        if label == 0 {
            end = position + 1;
            break;
        }
        // A compression pointer has no place in a question; longer labels do not exist.
        if label > 63 {
            return None;
        }
        scratch.starts[position & 0xff] = run;
        position += 1 + label;
    }
    if end == 0 {
        return None;
    }
    // Backward: the hash of every suffix, looked up where a label starts. Going towards the
    // name's start, a later match is a longer suffix: the most specific rule wins.
    let mut hash = HASH_SEED;
    let mut best = None;
    for step in 0..256usize {
        if step >= end {
            break;
        }
        let at = end - 1 - step;
        // black_box: the compiler would otherwise drop the mask (it knows `at` < 255) and
        // hand the verifier a count-down index it cannot prove non-negative.
        hash = fold(hash, scratch.name[black_box(at) & 0xff]);
        if scratch.starts[black_box(at) & 0xff] == run
            && let Some(rule) = DOMAINS.get_ptr(&hash)
        {
            // SAFETY: a value pointer from a map lookup, valid for this program run.
            let rule = unsafe { *rule };
            let (id, action) = if at == 0 {
                (rule.exact_rule, rule.exact_action)
            } else {
                (rule.subdomain_rule, rule.subdomain_action)
            };
            if action != NO_RULE {
                best = Some((id, action));
            }
        }
    }
    best.map(|(id, action)| (end, id, action))
}

/// The offset after a record's owner name: labels ending in the root or in a compression
/// pointer.
fn skip_name(skb: &SkBuff, mut offset: usize) -> Option<usize> {
    for _ in 0..MAX_LABELS {
        let label = skb.load::<u8>(offset).ok()?;
        if label == 0 {
            return Some(offset + 1);
        }
        if label & 0xc0 == 0xc0 {
            return Some(offset + 2);
        }
        offset += 1 + usize::from(label);
    }
    None
}

/// An address a domain rule allows now: the rule's id.
#[inline(always)]
pub fn learned(ip_version: u8, destination: &[u8; 16]) -> Option<u32> {
    let value = if ip_version == 4 {
        let mut address = [0u8; 4];
        address.copy_from_slice(&destination[..4]);
        DNS_ALLOWED_V4.get_ptr(&address)?
    } else {
        DNS_ALLOWED_V6.get_ptr(destination)?
    };
    // SAFETY: a value pointer from a map lookup, valid for this program run.
    let value = unsafe { *value };
    // SAFETY: the helper reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    (now < value.expires_ns).then_some(value.rule_id)
}
