//! Domain rules in the kernel: the answers a process in the cgroup receives are read on the
//! cgroup's ingress hook, before the process sees them; when the question's name matches an
//! allow rule, the answer's A and AAAA addresses are allowed until their TTL (plus the grace
//! period) runs out. Learning happens before the answer is delivered, so the process's first
//! packet to the address already finds it allowed, and expiry is checked against the clock on
//! every lookup, with or without a daemon.
//!
//! Every loop is bounded: at most [`MAX_LABELS`] labels per name, [`MAX_ANSWERS`] records.

use core::{ffi::c_void, hint::black_box};

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_ktime_get_boot_ns, bpf_skb_cgroup_id,
        generated::{bpf_get_socket_cookie, bpf_loop, bpf_sk_fullsock, bpf_skb_load_bytes},
    },
    programs::sk_buff::SkBuff,
};
use egress_monitor_common::{
    dns::{
        ANSWER_ADDRESSES, DnsEvent, HASH_SEED, LearnedSocket, LearnedValue, MAX_ANSWERS,
        MAX_LEARNED_TTL, MAX_NAME, NO_RULE, PendingKey, QueryKey, QueryValue, fold, queries,
        refusal, resolver,
    },
    event::flags,
    maps::stat,
    policy::config,
    record,
    verdict::{RULE_ID_DEFAULT, action, hook as hooks},
};

use crate::{
    emit,
    maps::{
        CONFIG, DNS_ALLOWED_V4, DNS_ALLOWED_V6, DNS_NETNS, DNS_PENDING, DNS_QUERY_EVENTS,
        DNS_RESOLVERS_V4, DNS_RESOLVERS_V6, DNS_SCRATCH, DOMAINS, EVENTS, LEARNED_SOCKETS,
        SOCK_OWNERS,
    },
    parse::{self, L3Start, Packet, Parsed},
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

/// A DNS event being built, with the question name read into it, and where its labels start.
#[repr(C)]
pub struct DnsScratch {
    /// `event.name` holds the name in wire format.
    pub event: DnsEvent,
    /// `starts[i] == run`: a label's length byte is at offset `i` of the name read in this
    /// run (a mark per offset rather than a list keeps the verifier's work linear; the run
    /// number spares clearing the marks of earlier runs).
    pub starts: [u32; 256],
    pub run: u32,
}

/// The cgroup ingress hook: learns from DNS answers. Never drops anything.
#[inline(always)]
pub fn learn(skb: &SkBuff, raw: *mut __sk_buff) {
    if queries_mode() == queries::OFF {
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
    let _ = learn_from(skb, raw, &packet, message);
}

/// Reads an answer: learns its addresses when a domain rule allows the question's name, and
/// reports name → addresses (rate-limited) so that events can name the destinations.
fn learn_from(skb: &SkBuff, raw: *mut __sk_buff, packet: &Packet, message: usize) -> Option<()> {
    let header = skb.load::<[u8; DNS_HEADER]>(message).ok()?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let answers = u16::from_be_bytes([header[6], header[7]]);
    // A response (QR), no error, one question.
    if flags & 0x8000 == 0 || flags & 0x000f != 0 || questions != 1 {
        return None;
    }
    let (name_len, name_hash, rule) = question(skb, raw, message + DNS_HEADER)?;
    let (rule_id, rule_action) = rule.unwrap_or((RULE_ID_DEFAULT, NO_RULE));
    let id = u16::from_be_bytes([header[0], header[1]]);
    // SAFETY: the helper reads the receiving socket of the program's own skb.
    let cookie = unsafe { bpf_get_socket_cookie(raw.cast()) };
    // Only the node's own resolvers teach, and only sockets of the namespaces the daemon
    // trusts: a process that runs a resolver of its own (on its own 127.0.0.1, in a user
    // namespace, say) and asks it for an allowed name learns nothing for anyone.
    let place = resolver_place(packet);
    let why = if rule_action != action::ALLOW {
        refusal::NAME_NOT_ALLOWED
    } else if place == 0 {
        refusal::NOT_A_RESOLVER
    } else if place == resolver::REMOTE && arrived_over_loopback(raw) {
        refusal::LOOPED_BACK
    } else if !trusted_netns(cookie) {
        refusal::OTHER_NETNS
    } else if !answers_a_question(cookie, packet, id, name_hash) {
        refusal::NOT_ASKED
    } else {
        refusal::NONE
    };
    let allowed = why == refusal::NONE;
    let qtype = u16::from_be_bytes(skb.load::<[u8; 2]>(message + DNS_HEADER + name_len).ok()?);
    let scratch = DNS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot, used by this program run only (`question` filled its name).
    let event = unsafe { &mut (*scratch).event };
    // The count and the smallest TTL live in the map slot, not in registers: as values the
    // verifier cannot know, they do not multiply the states it explores per answer.
    event.address_count = 0;
    event.ttl = u32::MAX;
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
        let ttl = ttl.min(MAX_LEARNED_TTL);
        let length = usize::from(u16::from_be_bytes([record[8], record[9]]));
        offset += 10;
        let learned = LearnedValue {
            expires_ns: now + u64::from(ttl) * 1_000_000_000 + grace,
            rule_id,
            _pad: 0,
        };
        if class == CLASS_IN && kind == TYPE_A && length == 4 {
            if let Ok(address) = skb.load::<[u8; 4]>(offset) {
                if allowed {
                    let _ = DNS_ALLOWED_V4.insert(&address, &learned, 0);
                }
                let count = usize::from(event.address_count);
                if count < ANSWER_ADDRESSES {
                    let slot = &mut event.addresses[count & (ANSWER_ADDRESSES - 1)];
                    *slot = [0; 16];
                    slot[..4].copy_from_slice(&address);
                    event.address_count += 1;
                    event.ttl = event.ttl.min(ttl);
                }
            }
        } else if class == CLASS_IN
            && kind == TYPE_AAAA
            && length == 16
            && let Ok(address) = skb.load::<[u8; 16]>(offset)
        {
            if allowed {
                let _ = DNS_ALLOWED_V6.insert(&address, &learned, 0);
            }
            let count = usize::from(event.address_count);
            if count < ANSWER_ADDRESSES {
                event.addresses[count & (ANSWER_ADDRESSES - 1)] = address;
                event.address_count += 1;
                event.ttl = event.ttl.min(ttl);
            }
        }
        offset += length;
    }
    if allowed {
        emit::stat(stat::DNS_ANSWERS_LEARNED);
    } else if rule_action == action::ALLOW {
        emit::stat(stat::DNS_ANSWERS_UNTRUSTED);
    }
    if event.address_count > 0 {
        let learned = if allowed { flags::LEARNED } else { 0 };
        event.refusal = why;
        report_answer(raw, packet, event, name_hash, qtype, rule_id, learned);
    }
    Some(())
}

/// Where the resolver the answer names as its source is ([`resolver`]), or 0 when it is not one
/// of the node's resolvers (`DNS_RESOLVERS_V4`/`_V6`).
#[inline(always)]
fn resolver_place(packet: &Packet) -> u8 {
    let place = if packet.ip_version == 4 {
        let mut address = [0u8; 4];
        address.copy_from_slice(&packet.src[..4]);
        DNS_RESOLVERS_V4.get_ptr(&address)
    } else {
        DNS_RESOLVERS_V6.get_ptr(&packet.src)
    };
    // SAFETY: a value pointer from a map lookup, valid for this program run.
    place.map_or(0, |place| unsafe { *place })
}

/// The loopback device's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Whether the packet was received over loopback: sent by a process on this node.
#[inline(always)]
fn arrived_over_loopback(raw: *mut __sk_buff) -> bool {
    // SAFETY: reading a context field of the program's own skb.
    unsafe { (*raw).ingress_ifindex == LOOPBACK_IFINDEX }
}

/// Whether the packet leaves a raw socket. An answer from port 53 written by a raw socket is
/// a forgery: resolvers answer from UDP and TCP sockets. Not inlined: only packets from port
/// 53 ask.
#[inline(never)]
pub fn sent_by_raw_socket(raw: *mut __sk_buff) -> bool {
    const SOCK_RAW: u32 = 3;
    // SAFETY: reading a context field of the program's own skb; the helper checks the socket.
    unsafe {
        let sk = (*raw).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        let full = bpf_sk_fullsock(sk);
        !full.is_null() && (*full).type_ == SOCK_RAW
    }
}

/// Whether the receiving socket was made in a network namespace the daemon trusts (recorded
/// with its owner when it was made). Unknown sockets are not trusted.
#[inline(always)]
fn trusted_netns(cookie: u64) -> bool {
    if CONFIG
        .get(config::DNS_ANY_NETNS)
        .is_some_and(|&any| any != 0)
    {
        return true;
    }
    let Some(owner) = SOCK_OWNERS.get_ptr(&cookie) else {
        return false;
    };
    // SAFETY: a value pointer from a map lookup, valid for this program run.
    let netns = unsafe { (*owner).netns_cookie };
    DNS_NETNS.get_ptr(&netns).is_some()
}

/// The domain rule that allows this packet's destination: learned from an answer and not
/// expired (the sending socket is then remembered with it), or learned when this socket opened
/// to it. [`RULE_ID_DEFAULT`] when neither. Not inlined: the verdict gets one number back, and
/// the verifier does not carry these lookups' paths into the rest of the program.
#[inline(never)]
pub fn learned_rule(raw: *mut __sk_buff, packet: &Packet, accounted: bool) -> u32 {
    if let Some(rule_id) = learned(packet.ip_version, &packet.dst) {
        remember_socket(raw, packet, rule_id);
        return rule_id;
    }
    match learned_socket(raw, packet) {
        Some(rule_id) => {
            if accounted {
                emit::stat(stat::LEARNED_SOCKET_PASSES);
            }
            rule_id
        }
        None => RULE_ID_DEFAULT,
    }
}

/// Remembers that the sending socket opened to a learned address while it was allowed, so that
/// it keeps the address until it closes (see `LearnedSocket`). Looked up first: a busy
/// connection does not rewrite its entry on every packet.
#[inline(always)]
fn remember_socket(raw: *mut __sk_buff, packet: &Packet, rule_id: u32) {
    // SAFETY: the helper reads the socket of the program's own skb (0 when there is none).
    let cookie = unsafe { bpf_get_socket_cookie(raw.cast()) };
    if cookie == 0 {
        return;
    }
    let key = LearnedSocket {
        cookie,
        dst: packet.dst,
    };
    if LEARNED_SOCKETS.get_ptr(&key).is_none() {
        let _ = LEARNED_SOCKETS.insert(&key, &rule_id, 0);
    }
}

/// The domain rule that allowed this socket's destination when the socket opened to it, if it
/// did (the address itself may have expired since).
#[inline(always)]
fn learned_socket(raw: *mut __sk_buff, packet: &Packet) -> Option<u32> {
    // SAFETY: the helper reads the socket of the program's own skb (0 when there is none).
    let cookie = unsafe { bpf_get_socket_cookie(raw.cast()) };
    if cookie == 0 {
        return None;
    }
    let key = LearnedSocket {
        cookie,
        dst: packet.dst,
    };
    // SAFETY: a value pointer from a map lookup, valid for this program run.
    LEARNED_SOCKETS.get_ptr(&key).map(|rule| unsafe { *rule })
}

/// What a question says: its name's length in wire format, the hash of the whole name, and
/// the most specific domain rule for it (id, action), if any.
type Question = (usize, u64, Option<(u32, u8)>);

/// Reads the question name at `offset` into the scratch event and finds the most specific
/// domain rule for it. `None`: no readable name.
fn question(skb: &SkBuff, raw: *mut __sk_buff, offset: usize) -> Option<Question> {
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
            scratch.event.name.as_mut_ptr().cast(),
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
    // Both walks run under `bpf_loop`: the verifier checks a loop body once, not once per
    // iteration and per path into it (the egress program has many such paths).
    let mut walk = NameWalk {
        scratch,
        len: len as u64,
        run: scratch.run,
        position: 0,
        end: 0,
        hash: HASH_SEED,
        best_id: RULE_ID_DEFAULT,
        best_action: NO_RULE,
        bad: 0,
    };
    // SAFETY: the callbacks take `walk` (this frame's, alive for the call) and touch only it
    // and the scratch slot it points to.
    unsafe {
        bpf_loop(
            MAX_LABELS as u32,
            label_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    if walk.bad != 0 || walk.end == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe {
        bpf_loop(256, suffix_step as *mut c_void, (&raw mut walk).cast(), 0);
    }
    let end = walk.end as usize;
    scratch.event.name_len = end as u16;
    let best = (walk.best_action != NO_RULE).then_some((walk.best_id, walk.best_action));
    Some((end, walk.hash, best))
}

/// The state of [`label_step`] and [`suffix_step`].
#[repr(C)]
struct NameWalk {
    scratch: *mut DnsScratch,
    /// Bytes of the name buffer that were read.
    len: u64,
    run: u32,
    /// Forward: the next label's length byte; the offset after the root byte once found.
    position: u64,
    end: u64,
    /// Backward: the hash of the suffix walked so far, and the best rule found.
    hash: u64,
    best_id: u32,
    best_action: u8,
    /// Set when the name is not a plain question name.
    bad: u8,
}

/// Forward, one label per call: marks where each label starts, finds the root byte.
extern "C" fn label_step(_index: u64, context: *mut c_void) -> i64 {
    // SAFETY: `context` is the caller's `NameWalk`.
    let walk = unsafe { &mut *context.cast::<NameWalk>() };
    if walk.position >= walk.len {
        walk.bad = 1;
        return 1;
    }
    // SAFETY: the per-CPU scratch slot the caller holds.
    let scratch = unsafe { &mut *walk.scratch };
    let position = (walk.position & 0xff) as usize;
    let label = u64::from(scratch.event.name[position]);
    if label == 0 {
        walk.end = walk.position + 1;
        return 1;
    }
    // A compression pointer has no place in a question; longer labels do not exist.
    if label > 63 {
        walk.bad = 1;
        return 1;
    }
    scratch.starts[position] = walk.run;
    walk.position += 1 + label;
    0
}

/// Backward, one byte per call: the hash of every suffix, looked up where a label starts.
/// Going towards the name's start, a later match is a longer suffix: the most specific rule
/// wins.
extern "C" fn suffix_step(step: u64, context: *mut c_void) -> i64 {
    // SAFETY: `context` is the caller's `NameWalk`.
    let walk = unsafe { &mut *context.cast::<NameWalk>() };
    if step >= walk.end {
        return 1;
    }
    let at = ((walk.end - 1 - step) & 0xff) as usize;
    // SAFETY: the per-CPU scratch slot the caller holds.
    let scratch = unsafe { &*walk.scratch };
    walk.hash = fold(walk.hash, scratch.event.name[at]);
    if scratch.starts[at] == walk.run
        && let Some(rule) = DOMAINS.get_ptr(&walk.hash)
    {
        // SAFETY: a value pointer from a map lookup, valid for this program run.
        let rule = unsafe { *rule };
        let (id, action) = if at == 0 {
            (rule.exact_rule, rule.exact_action)
        } else {
            (rule.subdomain_rule, rule.subdomain_action)
        };
        if action != NO_RULE {
            walk.best_id = id;
            walk.best_action = action;
        }
    }
    0
}

/// A DNS query leaving, as the egress verdict sees it. Every field is always set (no enum
/// payloads): the verifier refuses a program that copies uninitialised bytes, which moving a
/// Rust enum around can produce.
#[derive(Clone, Copy)]
pub struct Query {
    pub status: u8,
    /// The most specific domain rule for the name, or [`NO_RULE`] as the action.
    pub rule_id: u32,
    pub rule_action: u8,
    pub name_hash: u64,
    pub qtype: u16,
    /// The message id.
    pub id: u16,
}

/// [`Query::status`] values.
pub mod status {
    /// Not a DNS query (not port 53, or no DNS reading asked for).
    pub const NONE: u8 = 0;
    /// Port 53 without a payload (a TCP handshake, an acknowledgement).
    pub const EMPTY: u8 = 1;
    /// Port 53 with a payload that is not one readable question (filtered: denied).
    pub const UNREADABLE: u8 = 2;
    /// A question whose name was read.
    pub const NAME: u8 = 3;
}

impl Query {
    pub const fn with_status(status: u8) -> Query {
        Query {
            status,
            rule_id: 0,
            rule_action: NO_RULE,
            name_hash: 0,
            qtype: 0,
            id: 0,
        }
    }
}

/// Reads the query a packet to port 53 carries (UDP, or a TCP segment that starts a message).
/// Leaves the name in the scratch event for [`report_query`].
#[inline(always)]
pub fn query(skb: &SkBuff, raw: *mut __sk_buff, packet: &Packet) -> Query {
    let unreadable = Query::with_status(status::UNREADABLE);
    let message = match packet.proto {
        IPPROTO_UDP => packet.l4() + UDP_HEADER,
        _ => match skb.load::<u8>(packet.l4() + 12) {
            Ok(offset) => {
                let payload = packet.l4() + usize::from(offset >> 4) * 4;
                let payload_len = (skb.len() as usize).saturating_sub(payload);
                if payload_len == 0 {
                    return Query::with_status(status::EMPTY);
                }
                // Exactly one whole message per segment: a second question behind the first
                // (pipelined, or bytes past the length the prefix gives) would leave unread.
                match skb.load::<[u8; 2]>(payload) {
                    Ok(prefix) if usize::from(u16::from_be_bytes(prefix)) + 2 == payload_len => {}
                    _ => return unreadable,
                }
                payload + 2
            }
            Err(_) => return unreadable,
        },
    };
    let Ok(header) = skb.load::<[u8; DNS_HEADER]>(message) else {
        return unreadable;
    };
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let questions = u16::from_be_bytes([header[4], header[5]]);
    if flags & 0x8000 != 0 || questions != 1 {
        return unreadable;
    }
    let Some((name_len, name_hash, rule)) = question(skb, raw, message + DNS_HEADER) else {
        return unreadable;
    };
    let Ok(kind) = skb.load::<[u8; 2]>(message + DNS_HEADER + name_len) else {
        return unreadable;
    };
    let (rule_id, rule_action) = rule.unwrap_or((RULE_ID_DEFAULT, NO_RULE));
    Query {
        status: status::NAME,
        rule_id,
        rule_action,
        name_hash,
        qtype: u16::from_be_bytes(kind),
        id: u16::from_be_bytes([header[0], header[1]]),
    }
}

/// Remembers a question that leaves, so that its answer (same socket, from the server asked,
/// same id and name) may teach addresses. Another answer — one a local process forged from a
/// socket bound to port 53, say — teaches nothing.
#[inline(always)]
pub fn remember(raw: *mut __sk_buff, packet: &Packet, question: &Query) {
    // SAFETY: the helper reads the socket of the program's own skb (0 when there is none).
    let cookie = unsafe { bpf_get_socket_cookie(raw.cast()) };
    let key = PendingKey {
        cookie,
        server: packet.dst,
        id: question.id,
        _pad: [0; 6],
    };
    let _ = DNS_PENDING.insert(&key, &question.name_hash, 0);
}

/// Whether this answer answers a question the receiving socket (`cookie`) asked (which it
/// then settles).
#[inline(always)]
fn answers_a_question(cookie: u64, packet: &Packet, id: u16, name_hash: u64) -> bool {
    let key = PendingKey {
        cookie,
        server: packet.src,
        id,
        _pad: [0; 6],
    };
    match DNS_PENDING.get_ptr(&key) {
        // SAFETY: a value pointer from a map lookup, valid for this program run.
        Some(asked) if unsafe { *asked } == name_hash => {
            let _ = DNS_PENDING.remove(&key);
            true
        }
        _ => false,
    }
}

/// What the programs do with DNS queries (`dns::queries`).
#[inline(always)]
pub fn queries_mode() -> u64 {
    CONFIG.get(config::DNS_QUERIES).copied().unwrap_or(0)
}

/// Reports a query read by [`query`]: an event at once for a new (name, type, socket,
/// verdict), then at most one per interval carrying how many repeats it stands for.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "inlined; every argument is a packet fact"
)]
pub fn report_query(
    raw: *mut __sk_buff,
    packet: &Packet,
    hook: u8,
    outcome: u32,
    rule_id: u32,
    name_hash: u64,
    qtype: u16,
) {
    // SAFETY: the helper reads the socket of the program's own skb (0 when there is none).
    let cookie = unsafe { bpf_get_socket_cookie(raw.cast()) };
    // With both hooks, a query from a socket made in the attached cgroup was reported by the
    // cgroup hook already (with its process); TC reports the others (forwarded, raw, other
    // cgroups).
    if hook == hooks::TC && cookie != 0 && SOCK_OWNERS.get_ptr(&cookie).is_some() {
        return;
    }
    let key = QueryKey {
        name_hash,
        cookie,
        qtype,
        hook,
        outcome: outcome as u8,
        _pad: 0,
    };
    // SAFETY: the helper reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let Some(repeats) = rate_limit(&key, now) else {
        return;
    };
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot; `query` left this run's name in it.
    let event = unsafe { &mut (*scratch).event };
    event.server = packet.dst;
    event.ttl = 0;
    event.rule_id = rule_id;
    event.repeats = repeats as u32;
    event.src_port = packet.src_port;
    event.qtype = qtype;
    event.kind = record::KIND_DNS_QUERY;
    event.ip_version = packet.ip_version;
    event.proto = packet.proto;
    event.outcome = outcome as u8;
    event.address_count = 0;
    event.refusal = refusal::NONE;
    send(event, raw, hook, now, cookie, 0);
}

/// Reports an answer's addresses: at most one event per (name, type) per interval.
#[inline(always)]
fn report_answer(
    raw: *mut __sk_buff,
    packet: &Packet,
    event: &mut DnsEvent,
    name_hash: u64,
    qtype: u16,
    rule_id: u32,
    learned: u8,
) {
    let key = QueryKey {
        name_hash,
        cookie: 0,
        qtype,
        hook: ANSWER_KEY,
        outcome: 0,
        _pad: 0,
    };
    // SAFETY: the helper reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if rate_limit(&key, now).is_none() {
        return;
    }
    // SAFETY: the helper reads the socket of the program's own skb (0 when there is none).
    let cookie = unsafe { bpf_get_socket_cookie(raw.cast()) };
    event.server = packet.src;
    event.rule_id = rule_id;
    event.repeats = 0;
    event.src_port = packet.dst_port;
    event.qtype = qtype;
    event.kind = record::KIND_DNS_ANSWER;
    event.ip_version = packet.ip_version;
    event.proto = packet.proto;
    event.outcome = 0;
    send(event, raw, hooks::CGROUP, now, cookie, learned);
}

/// [`QueryKey::hook`] of answer rate-limit entries (no hook has this code).
const ANSWER_KEY: u8 = 0xfe;

/// Whether an event for `key` is due: none in the last interval. If so, records it and returns
/// how many repeats it stands for (taken off the count: repeats counted meanwhile stay for the
/// next event); if not, counts a repeat.
#[inline(always)]
fn rate_limit(key: &QueryKey, now: u64) -> Option<u64> {
    let interval = CONFIG
        .get(config::DNS_EVENT_INTERVAL_NS)
        .copied()
        .unwrap_or(0);
    let Some(seen) = DNS_QUERY_EVENTS.get_ptr_mut(key) else {
        let first = QueryValue {
            last_event_ns: now,
            repeats: 0,
        };
        let _ = DNS_QUERY_EVENTS.insert(key, &first, 0);
        return Some(0);
    };
    // SAFETY: a value pointer from a map lookup, valid for this program run; the repeat count
    // is shared between CPUs and so changed atomically.
    unsafe {
        if now.saturating_sub((*seen).last_event_ns) < interval {
            emit::atomic_add(&raw mut (*seen).repeats, 1);
            return None;
        }
        let repeats = (*seen).repeats;
        emit::atomic_add(&raw mut (*seen).repeats, repeats.wrapping_neg());
        (*seen).last_event_ns = now;
        Some(repeats)
    }
}

/// Completes a DNS event with when, where and who (the socket's creator), and queues it.
#[inline(always)]
fn send(event: &mut DnsEvent, raw: *mut __sk_buff, hook: u8, now: u64, cookie: u64, extra: u8) {
    let (pid, comm, owner_flag) = emit::owner(cookie);
    event.ts_boot_ns = now;
    // SAFETY: cgroup_skb may ask for its skb's cgroup; the TC program reads its context field.
    (event.cgroup_id, event.ifindex) = unsafe {
        if hook == hooks::CGROUP {
            (bpf_skb_cgroup_id(raw), 0)
        } else {
            (0, (*raw).ifindex)
        }
    };
    event.pid = pid;
    event.uid = 0;
    event.comm = comm;
    event.hook = hook;
    event.flags = owner_flag | extra;
    if EVENTS.output(event, 0).is_err() {
        emit::stat(stat::EVENTS_LOST);
    }
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
fn learned(ip_version: u8, destination: &[u8; 16]) -> Option<u32> {
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
