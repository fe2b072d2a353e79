//! DNS events (`"kind":"dns"`): every question a process asks, with its name, type, resolver
//! and verdict, rate-limited per (name, type, socket) like flows, and a tunnelling score.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egress_monitor_api::wire::Hook;
use egress_monitor_common::{
    dns::{DnsEvent, refusal},
    event::flags,
    record,
    verdict::hook,
};
use serde::Serialize;

use crate::{
    datapath::state::StateFile,
    events::tunnel::TunnelScore,
    events::{Action, Clock, EventError, Proto, action_of, comm_text, hook_of},
};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsRecord {
    pub ts: String,
    /// Always `dns`.
    pub kind: &'static str,
    pub hook: Hook,
    /// `allowed` (the query left), `observed` (observe mode: it left, a domain policy would
    /// refuse it) or `dropped`.
    pub action: Action,
    /// The question: its name (dotted, no trailing dot) and type.
    pub name: String,
    pub qtype: QueryType,
    /// The resolver asked, over which protocol.
    pub server: IpAddr,
    pub proto: Proto,
    pub src_port: u16,
    /// The domain rule that decided the name, or `default` (none matched).
    pub rule: String,
    pub policy: String,
    /// The same question from the same socket since the previous event for it.
    pub repeats: u32,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    pub tunnel: TunnelScore,
}

/// An answer a process in the cgroup received (`"kind":"dns_answer"`): which addresses a name
/// has now. At most one per (name, type) per flow interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsAnswerRecord {
    pub ts: String,
    /// Always `dns_answer`.
    pub kind: &'static str,
    pub name: String,
    pub qtype: QueryType,
    /// The resolver that answered, over which protocol.
    pub server: IpAddr,
    pub proto: Proto,
    /// The first eight A/AAAA addresses of the answer, and the smallest of their TTLs.
    pub addresses: Vec<IpAddr>,
    pub ttl: u32,
    /// The domain rule for the name, or `default`; `learned`: the kernel allowed the addresses
    /// until the TTL (plus the grace period) runs out — an allow rule covers the name and the
    /// answer answered a question this socket asked that server.
    pub rule: String,
    pub learned: bool,
    /// Why an answer for an allowed name taught nothing: `not_a_resolver` (not one of the
    /// node's resolvers), `other_network_namespace` (to a socket of an untrusted namespace),
    /// `not_asked` (no question of this socket to that server with that id and name);
    /// `name_not_allowed` when no rule allows the name. Absent when learned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<&'static str>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl DnsAnswerRecord {
    pub fn new(
        event: &DnsEvent,
        names: &StateFile,
        clock: &Clock,
    ) -> Result<DnsAnswerRecord, EventError> {
        if event.kind != record::KIND_DNS_ANSWER {
            return Err(EventError::BadCode {
                field: "dns kind",
                value: event.kind,
            });
        }
        let address = |bytes: &[u8; 16]| {
            if is_v6(bytes) {
                IpAddr::V6(Ipv6Addr::from(*bytes))
            } else {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            }
        };
        let count = usize::from(event.address_count).min(event.addresses.len());
        Ok(DnsAnswerRecord {
            ts: clock.rfc3339(event.ts_boot_ns),
            kind: "dns_answer",
            name: name(event),
            qtype: QueryType::from_number(event.qtype),
            server: server(event),
            proto: Proto::from_number(event.proto, event.ip_version),
            addresses: event.addresses[..count].iter().map(address).collect(),
            ttl: event.ttl,
            rule: names.rule_name(event.rule_id).to_owned(),
            learned: event.flags & flags::LEARNED != 0,
            why: refusal_name(event.refusal)?,
            pid: owner_known(event).then_some(event.pid),
            comm: owner_known(event).then(|| comm_text(&event.comm)),
            exe: None,
            cgroup_id: event.cgroup_id,
            cgroup: None,
        })
    }
}

/// The question's name as text.
fn name(event: &DnsEvent) -> String {
    let len = usize::from(event.name_len).min(event.name.len());
    wire_to_text(&event.name[..len])
}

/// The resolver: the query's destination, the answer's source.
fn server(event: &DnsEvent) -> IpAddr {
    if event.ip_version == 6 {
        IpAddr::V6(Ipv6Addr::from(event.server))
    } else {
        let s = event.server;
        IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
    }
}

fn owner_known(event: &DnsEvent) -> bool {
    event.flags & flags::OWNER_KNOWN != 0
}

/// Whether an address slot holds an IPv6 address: the kernel writes IPv4 into the first four
/// bytes and zeroes the rest; an AAAA record fills all sixteen. (An IPv6 address with twelve
/// trailing zero bytes would be `x::` — a network address no resolver answers with.)
fn is_v6(bytes: &[u8; 16]) -> bool {
    bytes[4..].iter().any(|b| *b != 0)
}

/// Names the node resolved recently, by address: what `dst_name` says in packet events.
/// Entries last the record's TTL plus [`NameCache::LINGER`] (a connection may come later than
/// the TTL), bounded in number.
#[derive(Debug, Default)]
pub struct NameCache {
    names: std::collections::HashMap<IpAddr, (String, std::time::Instant)>,
}

impl NameCache {
    pub const LINGER: std::time::Duration = std::time::Duration::from_secs(300);
    const CAPACITY: usize = 65_536;

    pub fn new() -> NameCache {
        NameCache::default()
    }

    pub fn learn(&mut self, answer: &DnsAnswerRecord) {
        let now = std::time::Instant::now();
        let until = now + std::time::Duration::from_secs(u64::from(answer.ttl)) + Self::LINGER;
        if self.names.len() + answer.addresses.len() > Self::CAPACITY {
            self.names.retain(|_, (_, expires)| *expires > now);
            if self.names.len() + answer.addresses.len() > Self::CAPACITY {
                self.names.clear();
            }
        }
        for address in &answer.addresses {
            self.names.insert(*address, (answer.name.clone(), until));
        }
    }

    pub fn name(&self, address: IpAddr) -> Option<String> {
        self.names
            .get(&address)
            .filter(|(_, expires)| *expires > std::time::Instant::now())
            .map(|(name, _)| name.clone())
    }
}

/// A record type by name where it has a common one, else by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum QueryType {
    Name(&'static str),
    Number(u16),
}

impl QueryType {
    pub fn from_number(number: u16) -> QueryType {
        match number {
            1 => QueryType::Name("A"),
            2 => QueryType::Name("NS"),
            5 => QueryType::Name("CNAME"),
            6 => QueryType::Name("SOA"),
            12 => QueryType::Name("PTR"),
            15 => QueryType::Name("MX"),
            16 => QueryType::Name("TXT"),
            28 => QueryType::Name("AAAA"),
            33 => QueryType::Name("SRV"),
            65 => QueryType::Name("HTTPS"),
            255 => QueryType::Name("ANY"),
            other => QueryType::Number(other),
        }
    }
}

/// A wire-format name as text: labels joined by dots; bytes outside printable ASCII (and dots
/// inside a label) escaped as `\\DDD`, as `dig` prints them, so nothing hides in a label.
pub fn wire_to_text(wire: &[u8]) -> String {
    let mut text = String::new();
    let mut position = 0;
    while let Some(&len) = wire.get(position) {
        if len == 0 || len > 63 {
            break;
        }
        let label = wire
            .get(position + 1..position + 1 + usize::from(len))
            .unwrap_or(&[]);
        if !text.is_empty() {
            text.push('.');
        }
        for &byte in label {
            if byte.is_ascii_graphic() && byte != b'.' && byte != b'\\' {
                text.push(char::from(byte));
            } else {
                text.push_str(&format!("\\{byte:03}"));
            }
        }
        position += 1 + usize::from(len);
    }
    text
}

impl DnsRecord {
    /// A query event. The tunnelling score is left for the daemon, which keeps the state it
    /// needs (see [`crate::events::tunnel::TunnelScorer`]).
    pub fn query(
        event: &DnsEvent,
        names: &StateFile,
        clock: &Clock,
    ) -> Result<DnsRecord, EventError> {
        if event.kind != record::KIND_DNS_QUERY {
            return Err(EventError::BadCode {
                field: "dns kind",
                value: event.kind,
            });
        }
        let hook = hook_of(event.hook)?;
        let action = action_of(event.outcome)?;
        let on_cgroup = event.hook == hook::CGROUP;
        Ok(DnsRecord {
            ts: clock.rfc3339(event.ts_boot_ns),
            kind: "dns",
            hook,
            action,
            name: name(event),
            qtype: QueryType::from_number(event.qtype),
            server: server(event),
            proto: Proto::from_number(event.proto, event.ip_version),
            src_port: event.src_port,
            rule: names.rule_name(event.rule_id).to_owned(),
            policy: names.version.clone(),
            repeats: event.repeats,
            pid: owner_known(event).then_some(event.pid),
            comm: owner_known(event).then(|| comm_text(&event.comm)),
            exe: None,
            cgroup_id: on_cgroup.then_some(event.cgroup_id),
            cgroup: None,
            ifindex: (!on_cgroup).then_some(event.ifindex),
            tunnel: TunnelScore::default(),
        })
    }
}

/// The name of a [`refusal`] code (`None` for a learned answer).
pub fn refusal_name(code: u8) -> Result<Option<&'static str>, EventError> {
    Ok(Some(match code {
        refusal::NONE => return Ok(None),
        refusal::NAME_NOT_ALLOWED => "name_not_allowed",
        refusal::NOT_A_RESOLVER => "not_a_resolver",
        refusal::OTHER_NETNS => "other_network_namespace",
        refusal::NOT_ASKED => "not_asked",
        refusal::LOOPED_BACK => "looped_back",
        value => {
            return Err(EventError::BadCode {
                field: "dns refusal",
                value,
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_print_like_dig_and_hide_nothing() {
        assert_eq!(
            wire_to_text(b"\x03api\x07example\x03com\x00"),
            "api.example.com"
        );
        assert_eq!(wire_to_text(b"\x03a.b\x02\x00z\x00"), "a\\046b.\\000z");
        assert_eq!(wire_to_text(b"\x00"), "");
    }
}
