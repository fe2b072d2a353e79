//! Events: decoding the kernel's ring-buffer records (and the daemon's flow updates) and
//! writing them as JSON lines.
//!
//! One JSON object per line (schema in docs/events.md):
//! `{"ts":"…","kind":"first","hook":"cgroup","action":"dropped","proto":"udp",
//! "src":"10.77.0.2","dst":"203.0.113.1","src_port":40000,"dst_port":53,"packets":1,
//! "bytes":56,"len":56,"rule":"default",…,"uid":0,"cgroup_id":1234}`

pub mod counts;
pub mod dns;
pub mod flows;
mod guard;
pub mod read;
pub mod tail;
pub mod tunnel;
mod writer;

pub use self::{
    guard::GuardRecord,
    writer::{EventWriter, EventsTarget},
};

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use egress_monitor_api::wire::{DeniedAction, FlowKind, Hook};
use egress_monitor_common::{
    dns::DnsEvent,
    event::{Event, flags},
    guard::{GuardEvent, PACKET_QDISC_BYPASS, SOL_PACKET, SOL_XDP, XDP_TX_RING},
    record,
    verdict::{hook, outcome},
};
use serde::Serialize;

use crate::{datapath::state::StateFile, events::flows::FlowUpdate};

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A ring-buffer record without a kind byte.
    #[error("empty ring buffer record")]
    Empty,
    #[error("ring buffer record of unknown kind {0}")]
    UnknownKind(u8),
    /// A record whose size is not its kind's struct's.
    #[error("ring buffer record of kind {kind} has {len} bytes; expected {expected}")]
    BadSize {
        kind: u8,
        len: usize,
        expected: usize,
    },
    #[error("event record with unknown {field} code {value}")]
    BadCode { field: &'static str, value: u8 },
}

/// A ring-buffer record, as its kind byte ([`record`]) says.
#[derive(Clone, Debug)]
pub enum KernelRecord {
    Packet(Event),
    DnsQuery(Box<DnsEvent>),
    DnsAnswer(Box<DnsEvent>),
    Guard(GuardEvent),
}

/// Reads a kernel record by its kind byte. An unknown kind, or a size other than the kind's
/// struct's, is an error: a record is never read as another kind.
pub fn decode(bytes: &[u8]) -> Result<KernelRecord, EventError> {
    let kind = *bytes.first().ok_or(EventError::Empty)?;
    Ok(match kind {
        record::KIND_PACKET => KernelRecord::Packet(read(kind, bytes)?),
        record::KIND_DNS_QUERY => KernelRecord::DnsQuery(Box::new(read(kind, bytes)?)),
        record::KIND_DNS_ANSWER => KernelRecord::DnsAnswer(Box::new(read(kind, bytes)?)),
        record::KIND_GUARD => KernelRecord::Guard(read(kind, bytes)?),
        _ => return Err(EventError::UnknownKind(kind)),
    })
}

/// Reads a `T` from a record that must be exactly its size.
fn read<T: aya::Pod>(kind: u8, bytes: &[u8]) -> Result<T, EventError> {
    let expected = std::mem::size_of::<T>();
    if bytes.len() != expected {
        return Err(EventError::BadSize {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length matches, and T is plain old data (aya::Pod): any bytes are valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

egress_monitor_api::words! {
    /// What the datapath did with a packet (or a socket option): `allowed`, or denied and
    /// `observed` (observe mode: passed and reported) or `dropped` (enforce mode).
    pub enum Action { Allowed = "allowed", Observed = "observed", Dropped = "dropped" }
}

impl Action {
    /// The action of a denied packet; `None` for an allowed one.
    pub fn denied(self) -> Option<DeniedAction> {
        match self {
            Action::Allowed => None,
            Action::Observed => Some(DeniedAction::Observed),
            Action::Dropped => Some(DeniedAction::Dropped),
        }
    }
}

/// The hook of a [`hook`] code.
pub fn hook_of(code: u8) -> Result<Hook, EventError> {
    match code {
        hook::CGROUP => Ok(Hook::Cgroup),
        hook::TC => Ok(Hook::Tc),
        value => Err(EventError::BadCode {
            field: "hook",
            value,
        }),
    }
}

/// The action of an [`outcome`] code.
pub fn action_of(code: u8) -> Result<Action, EventError> {
    match u32::from(code) {
        outcome::ALLOWED => Ok(Action::Allowed),
        outcome::DENIED_OBSERVED => Ok(Action::Observed),
        outcome::DENIED_DROPPED => Ok(Action::Dropped),
        _ => Err(EventError::BadCode {
            field: "outcome",
            value: code,
        }),
    }
}

/// A NUL-padded command name as text.
pub fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// A protocol by name where it has a common one, else by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Proto {
    Name(&'static str),
    Number(u8),
}

/// The protocol as the controller's reports carry it: its name, else its number.
impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proto::Name(name) => f.write_str(name),
            Proto::Number(number) => write!(f, "{number}"),
        }
    }
}

impl Proto {
    pub fn from_number(number: u8, ip_version: u8) -> Proto {
        match (number, ip_version) {
            (6, _) => Proto::Name("tcp"),
            (17, _) => Proto::Name("udp"),
            (1, 4) => Proto::Name("icmp"),
            (58, 6) => Proto::Name("icmpv6"),
            (number, _) => Proto::Number(number),
        }
    }
}

/// One event as written to the JSON-lines stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventRecord {
    /// RFC 3339, UTC, nanoseconds: when the packet was seen (for `update`, the latest one).
    pub ts: String,
    /// `packet`: one denied packet (flow aggregation off); `first`: the first denied packet of
    /// a flow, reported at once; `update`: the flow's later packets, counted in the kernel and
    /// reported at most once per flow interval.
    pub kind: FlowKind,
    pub hook: Hook,
    /// `observed` (observe mode: passed) or `dropped` (enforce mode).
    pub action: DeniedAction,
    pub proto: Proto,
    /// Null only when no IP header could be read (`malformed` or `ethertype` says why).
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// The name the node resolved `dst` from recently, when an answer said so (filled in by
    /// the daemon, see [`crate::events::dns::NameCache`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// Packets and IP bytes this event stands for: 1 and `len` for `packet` and `first`; for
    /// `update`, what the flow sent since its previous event. A flow's `packets` add up to
    /// every packet it sent.
    pub packets: u64,
    pub bytes: u64,
    /// IP length of the packet (`packet` and `first`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
    /// When the flow's first packet was seen (`update` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_ts: Option<String>,
    pub rule: String,
    /// The version of the policy that was live when the event was read.
    pub policy: String,
    /// The process that created the sending socket (null when unknown: a socket made before
    /// the cgroup hook was attached, a kernel thread, a forwarded packet).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Its executable, when the process still exists as the event is read (filled in by the
    /// daemon, see [`crate::system::process::ExeCache`]).
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The cgroup's path, when it still exists (filled in by the daemon, see
    /// [`crate::system::cgroup::PathCache`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    /// Present (true) only for IP fragments.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
    /// Present (true) only when the IP header could not be read.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub malformed: bool,
    /// Present only for a non-IP frame on the TC hook: its ethertype, as `0x88b5`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<String>,
}

impl EventRecord {
    /// `names` is the applied policy's state: rule names by id, and its version.
    pub fn new(event: &Event, names: &StateFile, clock: &Clock) -> Result<EventRecord, EventError> {
        let hook = hook_of(event.hook)?;
        // A packet event is about a denied packet.
        let action = action_of(event.outcome)?
            .denied()
            .ok_or(EventError::BadCode {
                field: "outcome",
                value: event.outcome,
            })?;
        let not_ip = event.flags & flags::NOT_IP != 0;
        let malformed = event.flags & flags::MALFORMED != 0;
        let address = |bytes: &[u8; 16]| -> Option<IpAddr> {
            match event.ip_version {
                _ if not_ip || malformed => None,
                6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
                _ => Some(IpAddr::V4(Ipv4Addr::new(
                    bytes[0], bytes[1], bytes[2], bytes[3],
                ))),
            }
        };
        let has_ports = event.flags & flags::HAS_PORTS != 0;
        let owner_known = event.flags & flags::OWNER_KNOWN != 0;
        let comm = owner_known.then(|| comm_text(&event.comm));
        let on_cgroup = event.hook == hook::CGROUP;
        Ok(EventRecord {
            ts: clock.rfc3339(event.ts_boot_ns),
            kind: if event.flags & flags::FLOW_FIRST != 0 {
                FlowKind::First
            } else {
                FlowKind::Packet
            },
            hook,
            action,
            proto: Proto::from_number(event.proto, event.ip_version),
            src: address(&event.src),
            dst: address(&event.dst),
            dst_name: None,
            src_port: has_ports.then_some(event.src_port),
            dst_port: has_ports.then_some(event.dst_port),
            packets: 1,
            bytes: u64::from(event.len),
            len: Some(event.len),
            first_ts: None,
            pid: owner_known.then_some(event.pid),
            comm,
            exe: None,
            rule: names.rule_name(event.rule_id).to_owned(),
            policy: names.version.clone(),
            uid: on_cgroup.then_some(event.uid),
            cgroup_id: on_cgroup.then_some(event.cgroup_id),
            cgroup: None,
            ifindex: (!on_cgroup).then_some(event.ifindex),
            fragment: event.flags & flags::FRAGMENT != 0,
            malformed,
            ethertype: not_ip.then(|| format!("{:#06x}", event.ethertype)),
        })
    }
}

impl EventRecord {
    /// The record of a flow's aggregated packets.
    pub fn update(
        update: &FlowUpdate,
        names: &StateFile,
        clock: &Clock,
    ) -> Result<EventRecord, EventError> {
        let first = EventRecord::new(&update.first, names, clock)?;
        Ok(EventRecord {
            ts: clock.rfc3339(update.last_seen_ns),
            kind: FlowKind::Update,
            packets: update.packets,
            bytes: update.bytes,
            len: None,
            first_ts: Some(first.ts.clone()),
            ..first
        })
    }
}

/// Smaller differences between two readings of the boot epoch are jitter, not a clock step.
const CLOCK_STEP: Duration = Duration::from_millis(1);

/// Converts `CLOCK_BOOTTIME` nanoseconds (what the kernel stamps) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at boot time zero.
    boot_epoch: SystemTime,
}

impl Clock {
    /// Reads both clocks now. Re-read it per batch so wall-clock steps are followed.
    pub fn now() -> Clock {
        let since_boot = Duration::from_nanos(crate::system::clock::boot_time_ns());
        Clock::with_boot_epoch(SystemTime::now() - since_boot)
    }

    /// Follows a step of the wall clock (NTP, an operator). Reading the two clocks is not
    /// atomic, so a new reading differs by a few hundred nanoseconds even without a step; such
    /// jitter is ignored, so that one packet's time reads the same in every event.
    pub fn follow(&mut self) {
        let now = Clock::now();
        let drift = now
            .boot_epoch
            .duration_since(self.boot_epoch)
            .unwrap_or_else(|err| err.duration());
        if drift > CLOCK_STEP {
            *self = now;
        }
    }

    pub fn with_boot_epoch(boot_epoch: SystemTime) -> Clock {
        Clock { boot_epoch }
    }

    pub fn wall_time(&self, boot_ns: u64) -> SystemTime {
        self.boot_epoch + Duration::from_nanos(boot_ns)
    }

    /// RFC 3339, UTC, nanoseconds.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.wall_time(boot_ns)).to_string()
    }
}

#[cfg(test)]
mod tests;
