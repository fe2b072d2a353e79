//! The verdict: look the destination up in the policy tries, apply the mode, account for it.

use aya_ebpf::{
    bindings::__sk_buff, helpers::bpf_ktime_get_boot_ns, maps::lpm_trie::Key,
    programs::sk_buff::SkBuff,
};
use egress_monitor_common::{
    dns::{NO_RULE, queries},
    event::flags,
    maps::stat,
    policy::{IPV4_ADDR_LEN, MAX_EXPIRY_HOPS, RuleValue, config, rule_flags},
    verdict::{RULE_ID_DEFAULT, action, hook as hooks, mode, outcome},
};

use crate::{
    dns, emit, flow,
    maps::{CONFIG, POLICY_V4, POLICY_V6, RULE_EXPIRY},
    parse::{self, L3Start, Packet, Parsed},
};

const DNS_PORT: u16 = 53;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

pub enum Verdict {
    Pass,
    Drop,
}

pub struct Judgement {
    pub verdict: Verdict,
    /// No destination could be read (a malformed IP header, or a non-IP frame other than ARP):
    /// the packet was treated as denied.
    pub unjudgeable: bool,
}

/// The one verdict function both hooks share. `raw` is the same skb as `skb`, for the context
/// fields and helpers the event needs.
#[inline(always)]
pub fn judge(skb: &SkBuff, raw: *mut __sk_buff, start: L3Start, hook: u8) -> Judgement {
    let accounted = !is_check(raw);
    // SAFETY: reading a context field of the program's own skb.
    let protocol = unsafe { (*raw).protocol } as u16;
    let (mut packet, judgeable) = match parse::parse(skb, start, protocol) {
        Parsed::Ip(packet) => (packet, true),
        Parsed::Unjudgeable(packet) => (packet, false),
        Parsed::Arp => {
            if accounted {
                emit::stat(stat::ARP);
            }
            return Judgement {
                verdict: Verdict::Pass,
                unjudgeable: false,
            };
        }
    };
    if !judgeable && accounted {
        emit::stat(if packet.flags & flags::NOT_IP != 0 {
            stat::NOT_IP
        } else {
            stat::MALFORMED
        });
    }
    // IPv4 options and IPv6 extension headers are walked before the verdict: a source route or
    // a routing header names further destinations.
    let routed = if packet.ip_version == 6 {
        parse::is_extension_header(packet.proto)
            && parse::source_routed_v6(raw, packet.proto, packet.l4())
    } else {
        packet.has_ipv4_options() && parse::source_routed_v4(raw, &packet)
    };
    if judgeable && routed {
        packet.flags |= flags::SOURCE_ROUTE;
    }
    // A packet that names destinations beyond its IP destination is denied whatever its first
    // hop: nothing ordinary on a node sends one, and a router honouring the route would
    // deliver it to an address no rule was asked about.
    let source_routed = packet.flags & flags::SOURCE_ROUTE != 0;
    if source_routed && accounted {
        emit::stat(stat::SOURCE_ROUTED);
    }
    let judged = judgeable && !source_routed;
    // Without a destination no rule can match: the packet falls to the default deny.
    let rule = if judged { lookup(&packet) } else { None };
    let (rule_id, allowed) = match rule {
        Some(rule) => (rule.rule_id, rule.action == action::ALLOW),
        // No prefix rule: an address a domain rule's answer allowed, until it expires. (An
        // explicit deny prefix wins over a domain.) A socket that opened to it meanwhile keeps
        // it until it closes.
        None if judged => match dns::learned_rule(raw, &packet, accounted) {
            RULE_ID_DEFAULT => (RULE_ID_DEFAULT, false),
            rule_id => (rule_id, true),
        },
        None => (RULE_ID_DEFAULT, false),
    };
    // DNS: a query to an allowed resolver is read for its name (reported, and with domain
    // rules, denied unless a rule allows the name: nothing leaves inside query names).
    let mode = dns::queries_mode();
    let mut question = dns::Query::with_status(dns::status::NONE);
    if judgeable && allowed && mode != queries::OFF {
        parse::transport(skb, &mut packet);
        if packet.flags & flags::HAS_PORTS != 0
            && packet.dst_port == DNS_PORT
            && (packet.proto == IPPROTO_UDP || packet.proto == IPPROTO_TCP)
        {
            question = dns::query(skb, raw, &packet);
        }
    }
    let (rule_id, allowed) = if mode != queries::FILTER {
        (rule_id, allowed)
    } else if question.status == dns::status::NAME {
        match question.rule_action {
            action::ALLOW => (rule_id, true),
            NO_RULE => (RULE_ID_DEFAULT, false),
            _ => (question.rule_id, false),
        }
    } else if question.status == dns::status::UNREADABLE {
        (RULE_ID_DEFAULT, false)
    } else {
        (rule_id, allowed)
    };
    // An answer from port 53 that a raw socket writes is forged in a resolver's name: denied,
    // so no socket of the node receives it (resolvers answer from UDP and TCP sockets).
    let (rule_id, allowed) = if allowed
        && packet.flags & flags::HAS_PORTS != 0
        && packet.src_port == DNS_PORT
        && (packet.proto == IPPROTO_UDP || packet.proto == IPPROTO_TCP)
        && dns::sent_by_raw_socket(raw)
    {
        (RULE_ID_DEFAULT, false)
    } else {
        (rule_id, allowed)
    };
    if allowed && question.status == dns::status::NAME && question.rule_action == action::ALLOW {
        dns::remember(raw, &packet, &question);
    }
    let (result, verdict) = if allowed {
        (outcome::ALLOWED, Verdict::Pass)
    } else if enforcing() {
        (outcome::DENIED_DROPPED, Verdict::Drop)
    } else {
        (outcome::DENIED_OBSERVED, Verdict::Pass)
    };
    // With both hooks a packet the cgroup hook passed in observe mode reaches TC too: one
    // decision, counted and reported once, by the hook that knows its process. (In enforce
    // mode the cgroup hook dropped it; what TC drops is always its own.)
    if accounted && judgeable && result == outcome::DENIED_OBSERVED {
        // Keyed by the transport protocol: TC's IPv6 fragments carry a fragment header the
        // cgroup hook's whole datagram does not (the walk is idempotent, done once).
        parse::transport(skb, &mut packet);
        if hook == hooks::CGROUP {
            flow::remember_judged(raw, &packet);
        } else if flow::judged_by_cgroup(raw, &packet) {
            emit::stat(stat::JUDGED_BY_CGROUP);
            return Judgement {
                verdict,
                unjudgeable: false,
            };
        }
    }
    if rule_id != RULE_ID_DEFAULT && accounted {
        emit::rule_hit(rule_id);
    }
    if accounted {
        emit::count(hook, result, packet.len);
        if question.status == dns::status::NAME {
            emit::stat(if result == outcome::ALLOWED {
                stat::DNS_QUERIES_ALLOWED
            } else {
                stat::DNS_QUERIES_DENIED
            });
            // A query is reported as such, with its name, whatever the verdict.
            dns::report_query(
                raw,
                &packet,
                hook,
                result,
                question.rule_id,
                question.name_hash,
                question.qtype,
            );
        } else if result != outcome::ALLOWED {
            if judgeable {
                parse::transport(skb, &mut packet);
            }
            flow::denied(skb, raw, hook, result, rule_id, &packet);
        }
    }
    Judgement {
        verdict,
        unjudgeable: !judgeable,
    }
}

#[inline(always)]
fn lookup(packet: &Packet) -> Option<RuleValue> {
    let rule = if packet.ip_version == 4 {
        let mut addr = [0u8; IPV4_ADDR_LEN];
        addr.copy_from_slice(&packet.dst[..IPV4_ADDR_LEN]);
        POLICY_V4.get(&Key::new(32, addr)).copied()
    } else {
        POLICY_V6.get(&Key::new(128, packet.dst)).copied()
    }?;
    if rule.flags & rule_flags::EXPIRES == 0 {
        return Some(rule);
    }
    let mut rule = rule;
    match unexpired(&mut rule) {
        EXPIRY_APPLIES => Some(rule),
        EXPIRY_NO_RULE => None,
        // Denied by the default rule, whatever a DNS answer allowed.
        _ => Some(RuleValue::new(RULE_ID_DEFAULT, action::DENY)),
    }
}

/// What [`unexpired`] found.
const EXPIRY_APPLIES: u8 = 0;
/// No rule contains the expired one's prefix: judged as if no prefix rule matched.
const EXPIRY_NO_RULE: u8 = 1;
/// The fallbacks ran out or an entry was never written: denied.
const EXPIRY_DENIED: u8 = 2;

/// Turns `rule` into the rule that applies in its place now — itself until it expires, then
/// its fallback (itself perhaps expired) — and says whether one does ([`EXPIRY_APPLIES`]), none
/// contains the prefix ([`EXPIRY_NO_RULE`]), or the packet is denied ([`EXPIRY_DENIED`]: more expired
/// fallbacks than are followed, or an entry never written). Not inlined: only expiring rules
/// come here (and a BPF function returns one register, hence the pointer).
#[inline(never)]
fn unexpired(rule: &mut RuleValue) -> u8 {
    // SAFETY: the helper reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    for _ in 0..MAX_EXPIRY_HOPS {
        if rule.flags & rule_flags::EXPIRES == 0 {
            return EXPIRY_APPLIES;
        }
        let Some(expiry) = RULE_EXPIRY.get(rule.rule_id).copied() else {
            return EXPIRY_DENIED;
        };
        if expiry.set == 0 {
            return EXPIRY_DENIED;
        }
        if now < expiry.expires_boot_ns {
            return EXPIRY_APPLIES;
        }
        if expiry.fallback_rule == RULE_ID_DEFAULT {
            return EXPIRY_NO_RULE;
        }
        *rule = RuleValue::new(expiry.fallback_rule, expiry.fallback_action)
            .with_flags(expiry.fallback_flags);
    }
    EXPIRY_DENIED
}

/// Whether `skb` is one of `check`'s synthetic packets: its `cb` carries the secret only the
/// pinned config and the check run know (see `config::CHECK_SECRET`). Real packets reach the
/// cgroup hook with `cb` cleared by the kernel, and no process can set it.
#[inline(always)]
pub fn is_check(raw: *mut __sk_buff) -> bool {
    let secret = CONFIG.get(config::CHECK_SECRET).copied().unwrap_or(0);
    if secret == 0 {
        return false;
    }
    // SAFETY: reading context fields of the program's own skb.
    let (low, high) = unsafe { ((*raw).cb[0], (*raw).cb[1]) };
    (u64::from(high) << 32 | u64::from(low)) == secret
}

/// Whether the daemon asked for kernel debug log records (`run --kernel-log`).
#[inline(always)]
pub fn kernel_log() -> bool {
    CONFIG
        .get(config::KERNEL_LOG)
        .is_some_and(|&value| value != 0)
}

/// Enforce unless the daemon set observe. The loader writes the mode before attaching; an
/// unreadable slot (which the verifier makes impossible for an array) would mean enforce.
#[inline(always)]
pub fn enforcing() -> bool {
    CONFIG
        .get(config::MODE)
        .is_none_or(|&value| value == u64::from(mode::ENFORCE))
}
