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
pub mod tunnel;

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

/// A guarded socket option, as written to the JSON-lines stream: a process tried to make a
/// socket whose frames would skip the TC hook.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuardRecord {
    pub ts: String,
    /// Always `raw_socket`.
    pub kind: &'static str,
    /// `dropped`: refused with EPERM (enforce mode); `observed`: allowed and reported.
    pub action: Action,
    /// The option: `PACKET_QDISC_BYPASS` or `XDP_TX_RING`.
    pub option: &'static str,
    /// What the caller got back: `EPERM` when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<&'static str>,
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl GuardRecord {
    pub fn new(event: &GuardEvent, clock: &Clock) -> Result<GuardRecord, EventError> {
        let option = match (event.level, event.optname) {
            (SOL_PACKET, PACKET_QDISC_BYPASS) => "PACKET_QDISC_BYPASS",
            (SOL_XDP, XDP_TX_RING) => "XDP_TX_RING",
            _ => {
                return Err(EventError::BadCode {
                    field: "guarded option",
                    value: event.optname as u8,
                });
            }
        };
        let action = action_of(event.outcome)?;
        Ok(GuardRecord {
            ts: clock.rfc3339(event.ts_boot_ns),
            kind: "raw_socket",
            action,
            option,
            errno: (action == Action::Dropped).then_some("EPERM"),
            pid: event.pid,
            comm: comm_text(&event.comm),
            uid: event.uid,
            exe: None,
            cgroup_id: event.cgroup_id,
            cgroup: None,
        })
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

/// Where events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsTarget {
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for EventsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventsTarget::Stdout => f.write_str("standard output"),
            EventsTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl EventsTarget {
    /// `-` is standard output; anything else a file path.
    pub fn parse(text: &str) -> EventsTarget {
        if text == "-" {
            EventsTarget::Stdout
        } else {
            EventsTarget::File(PathBuf::from(text))
        }
    }
}

/// A JSON-lines writer. Lines are buffered within a batch and flushed at the end of each, so a
/// reader sees every event within the batch interval.
///
/// A write that fails (a full disk, a closed pipe) never stops the daemon — stopping would
/// detach the firewall — it is counted in [`EventWriter::unwritten`] and warned about at most
/// every [`WARN_INTERVAL`], and writing resumes when the output accepts data again.
pub struct EventWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    written: u64,
    unwritten: u64,
    last_warning: Option<Instant>,
}

pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

impl EventWriter {
    pub fn open(target: &EventsTarget) -> io::Result<EventWriter> {
        let out: Box<dyn Write + Send> = match target {
            EventsTarget::Stdout => Box::new(io::stdout()),
            EventsTarget::File(path) => Box::new(open_append(path)?),
        };
        Ok(Self::new(out))
    }

    pub fn new(out: Box<dyn Write + Send>) -> EventWriter {
        EventWriter {
            out: BufWriter::with_capacity(64 * 1024, out),
            written: 0,
            unwritten: 0,
            last_warning: None,
        }
    }

    pub fn write(&mut self, record: &impl Serialize) {
        let result = serde_json::to_writer(&mut self.out, record)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match result {
            Ok(()) => self.written += 1,
            Err(err) => {
                self.unwritten += 1;
                self.warn(&err);
            }
        }
    }

    pub fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            self.warn(&err);
        }
    }

    fn warn(&mut self, err: &io::Error) {
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARN_INTERVAL)
        {
            self.last_warning = Some(Instant::now());
            log::error!(
                "cannot write events ({err}); {} unwritten so far, enforcement continues",
                self.unwritten
            );
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Events that could not be written to the output.
    pub fn unwritten(&self) -> u64 {
        self.unwritten
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use egress_monitor_policy::{Action, Mode};

    use super::*;
    use egress_monitor_common::{dns::DNS_EVENT_SIZE, event::EVENT_SIZE, guard::GUARD_EVENT_SIZE};

    use crate::datapath::state::StateRule;

    fn event() -> Event {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[10, 77, 0, 2]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[203, 0, 113, 1]);
        Event {
            kind: record::KIND_PACKET,
            ip_version: 4,
            proto: 17,
            hook: hook::CGROUP,
            outcome: outcome::DENIED_DROPPED as u8,
            flags: flags::HAS_PORTS,
            ethertype: 0,
            ts_boot_ns: 1_500_000_123,
            cgroup_id: 4242,
            len: 56,
            uid: 1000,
            ifindex: 0,
            rule_id: u32::MAX,
            pid: 0,
            src_port: 40000,
            dst_port: 53,
            src,
            dst,
            comm: [0; 16],
        }
    }

    /// The bytes the kernel writes for `value`.
    fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
        // SAFETY: T is plain old data without implicit padding: every byte is initialised.
        unsafe {
            std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()).to_vec()
        }
    }

    fn policy() -> StateFile {
        StateFile {
            version: "00000000deadbeef".into(),
            mode: Mode::Observe,
            applied_at: "2026-11-29T00:00:00Z".into(),
            groups: vec![],
            rules: vec![StateRule {
                id: 14,
                cidr: "10.1.2.0/24".into(),
                action: Action::Deny,
                name: "cli-deny".into(),
                origin: "command line".into(),
            }],
        }
    }

    fn clock() -> Clock {
        Clock::with_boot_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_374_400))
    }

    fn dns_event(kind: u8) -> DnsEvent {
        DnsEvent {
            kind,
            ip_version: 4,
            proto: 17,
            hook: hook::CGROUP,
            outcome: 0,
            flags: 0,
            address_count: 0,
            refusal: 0,
            ts_boot_ns: 1,
            cgroup_id: 2,
            server: [0; 16],
            addresses: [[0; 16]; 8],
            ttl: 0,
            pid: 0,
            uid: 0,
            rule_id: 0,
            repeats: 0,
            ifindex: 0,
            comm: [0; 16],
            src_port: 40000,
            qtype: 1,
            name_len: 1,
            _pad: [0; 2],
            name: [0; 256],
        }
    }

    fn guard_event() -> GuardEvent {
        GuardEvent {
            kind: record::KIND_GUARD,
            outcome: outcome::DENIED_DROPPED as u8,
            _pad: [0; 6],
            ts_boot_ns: 1,
            cgroup_id: 2,
            pid: 3,
            uid: 4,
            level: SOL_PACKET,
            optname: PACKET_QDISC_BYPASS,
            comm: [0; 16],
        }
    }

    #[test]
    fn records_are_read_as_their_kind_byte_says() {
        let packet = event();
        assert!(matches!(decode(&bytes_of(&packet)), Ok(KernelRecord::Packet(e)) if e == packet));
        let query = dns_event(record::KIND_DNS_QUERY);
        assert!(matches!(decode(&bytes_of(&query)), Ok(KernelRecord::DnsQuery(e)) if *e == query));
        let answer = dns_event(record::KIND_DNS_ANSWER);
        assert!(
            matches!(decode(&bytes_of(&answer)), Ok(KernelRecord::DnsAnswer(e)) if *e == answer)
        );
        let guard = guard_event();
        assert!(matches!(decode(&bytes_of(&guard)), Ok(KernelRecord::Guard(e)) if e == guard));
    }

    #[test]
    fn unknown_kinds_and_sizes_not_the_kinds_are_malformed() {
        for kind in [0, 5, 0xff] {
            let mut bytes = bytes_of(&event());
            bytes[0] = kind;
            assert!(
                matches!(decode(&bytes), Err(EventError::UnknownKind(k)) if k == kind),
                "{kind}"
            );
        }
        assert!(matches!(decode(&[]), Err(EventError::Empty)));
        // A size other than the kind's struct's is refused: a packet event cut short or with a
        // byte too many, and a record relabelled as another kind (a guard record is not read
        // as a packet event's first 56 bytes).
        let packet = bytes_of(&event());
        let mut long = packet.clone();
        long.push(0);
        let relabelled = |mut bytes: Vec<u8>, kind: u8| {
            bytes[0] = kind;
            bytes
        };
        for (bytes, expected) in [
            (packet[..1].to_vec(), EVENT_SIZE),
            (packet[..EVENT_SIZE - 1].to_vec(), EVENT_SIZE),
            (long, EVENT_SIZE),
            (
                relabelled(bytes_of(&guard_event()), record::KIND_PACKET),
                EVENT_SIZE,
            ),
            (
                relabelled(packet.clone(), record::KIND_GUARD),
                GUARD_EVENT_SIZE,
            ),
            (
                relabelled(packet.clone(), record::KIND_DNS_QUERY),
                DNS_EVENT_SIZE,
            ),
            (
                relabelled(
                    bytes_of(&dns_event(record::KIND_DNS_ANSWER)),
                    record::KIND_PACKET,
                ),
                EVENT_SIZE,
            ),
        ] {
            let (kind, len) = (bytes[0], bytes.len());
            assert!(
                matches!(
                    decode(&bytes),
                    Err(EventError::BadSize { kind: k, len: l, expected: e })
                        if (k, l, e) == (kind, len, expected)
                ),
                "kind {kind}, {len} bytes"
            );
        }
    }

    #[test]
    fn a_cgroup_event_has_every_schema_field() {
        let record = EventRecord::new(&event(), &policy(), &clock()).unwrap();
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ts": "2025-11-29T00:00:01.500000123Z", "kind": "packet",
                "hook": "cgroup", "action": "dropped", "proto": "udp",
                "src": "10.77.0.2", "dst": "203.0.113.1", "src_port": 40000, "dst_port": 53,
                "packets": 1, "bytes": 56, "len": 56,
                "rule": "default", "policy": "00000000deadbeef",
                "pid": null, "comm": null, "exe": null,
                "uid": 1000, "cgroup_id": 4242
            })
        );
    }

    #[test]
    fn a_flow_has_a_first_event_then_updates_with_what_was_aggregated() {
        let mut first = event();
        first.flags |= flags::FLOW_FIRST | flags::OWNER_KNOWN;
        first.pid = 4321;
        first.comm[..4].copy_from_slice(b"curl");
        let record = EventRecord::new(&first, &policy(), &clock()).unwrap();
        assert_eq!(
            (record.kind, record.packets, record.bytes),
            (FlowKind::First, 1, 56)
        );
        let update = FlowUpdate {
            first,
            packets: 9_999,
            bytes: 9_999 * 56,
            last_seen_ns: 12_000_000_000,
        };
        let json = serde_json::to_value(EventRecord::update(&update, &policy(), &clock()).unwrap())
            .unwrap();
        assert_eq!(json["kind"], "update");
        assert_eq!(
            json["ts"], "2025-11-29T00:00:12.000000000Z",
            "the latest packet's time"
        );
        assert_eq!(json["first_ts"], "2025-11-29T00:00:01.500000123Z");
        assert_eq!(
            (json["packets"].clone(), json["bytes"].clone()),
            (9_999.into(), (9_999 * 56).into())
        );
        assert!(json.get("len").is_none(), "an update is not one packet");
        // Everything else is the flow's: who sent what to where.
        assert_eq!(json["comm"], "curl");
        assert_eq!(json["pid"], 4321);
        assert_eq!(json["dst"], "203.0.113.1");
        assert_eq!(json["dst_port"], 53);
        assert_eq!(json["rule"], "default");
    }

    #[test]
    fn a_tc_v6_fragment_names_its_rule_and_has_null_ports() {
        let policy = policy();
        // Ids come from the live maps, not from positions: the state file maps 14 to the rule.
        let rule_id = 14;
        let mut e = event();
        e.hook = hook::TC;
        e.outcome = outcome::DENIED_OBSERVED as u8;
        e.ifindex = 3;
        e.ip_version = 6;
        e.proto = 58;
        e.flags = flags::FRAGMENT;
        e.rule_id = rule_id;
        e.dst = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        e.src = "fd77::2".parse::<Ipv6Addr>().unwrap().octets();
        let json = serde_json::to_value(EventRecord::new(&e, &policy, &clock()).unwrap()).unwrap();
        assert_eq!(json["hook"], "tc");
        assert_eq!(json["action"], "observed");
        assert_eq!(json["proto"], "icmpv6");
        assert_eq!(json["dst"], "2001:db8::1");
        assert_eq!(json["src"], "fd77::2");
        assert_eq!(json["src_port"], serde_json::Value::Null);
        assert_eq!(json["dst_port"], serde_json::Value::Null);
        assert_eq!(json["ifindex"], 3);
        assert_eq!(json["rule"], "cli-deny");
        assert_eq!(json["fragment"], true);
        assert!(json.get("uid").is_none() && json.get("cgroup_id").is_none());
        assert!(json.get("malformed").is_none() && json.get("ethertype").is_none());
    }

    #[test]
    fn a_non_ip_frame_has_null_addresses_and_its_ethertype() {
        let mut e = event();
        e.hook = hook::TC;
        e.ip_version = 0;
        e.proto = 0;
        e.flags = flags::NOT_IP;
        e.ethertype = 0x88b5;
        let json =
            serde_json::to_value(EventRecord::new(&e, &policy(), &clock()).unwrap()).unwrap();
        assert_eq!(json["ethertype"], "0x88b5");
        assert_eq!(
            (&json["src"], &json["dst"]),
            (&serde_json::Value::Null, &serde_json::Value::Null)
        );
        assert_eq!(json["dst_port"], serde_json::Value::Null);
        assert_eq!(json["rule"], "default");
        assert!(json.get("malformed").is_none());
        let mut e = event();
        e.flags = flags::MALFORMED;
        let json =
            serde_json::to_value(EventRecord::new(&e, &policy(), &clock()).unwrap()).unwrap();
        assert_eq!(
            (json["malformed"].clone(), json["dst"].clone()),
            (serde_json::Value::Bool(true), serde_json::Value::Null)
        );
    }

    /// An output that takes `capacity` bytes (a short write when it fills), then fails like a
    /// full disk.
    struct FullDisk {
        capacity: usize,
        taken: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut taken = self.taken.lock().unwrap();
            let room = self.capacity - taken.len();
            if room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = room.min(buf.len());
            taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_counts_unwritten_events_and_keeps_going() {
        let record = EventRecord::new(&event(), &policy(), &clock()).unwrap();
        let line_len = serde_json::to_string(&record).unwrap().len() + 1;
        let taken = std::sync::Arc::default();
        let disk = FullDisk {
            capacity: 2 * line_len,
            taken: std::sync::Arc::clone(&taken),
        };
        let mut writer = EventWriter::new(Box::new(disk));
        // The 64 KiB buffer takes the lines; the flush finds the disk full after two.
        for _ in 0..5 {
            writer.write(&record);
        }
        writer.flush();
        assert_eq!(writer.written(), 5, "buffered");
        // Past the buffer, writes fail and are counted rather than stopping anything.
        let many = 64 * 1024 / line_len + 10;
        for _ in 0..many {
            writer.write(&record);
        }
        assert!(writer.unwritten() > 0);
        assert_eq!(writer.written() + writer.unwritten(), 5 + many as u64);
        assert_eq!(
            taken.lock().unwrap().len(),
            2 * line_len,
            "the disk was filled"
        );
    }

    #[test]
    fn a_known_owner_names_the_process() {
        let mut e = event();
        e.flags |= flags::OWNER_KNOWN;
        e.pid = std::process::id();
        e.comm[..6].copy_from_slice(b"curl\0\0");
        let json =
            serde_json::to_value(EventRecord::new(&e, &policy(), &clock()).unwrap()).unwrap();
        assert_eq!(json["pid"], std::process::id());
        assert_eq!(json["comm"], "curl");
        e.flags &= !flags::OWNER_KNOWN;
        let json =
            serde_json::to_value(EventRecord::new(&e, &policy(), &clock()).unwrap()).unwrap();
        assert_eq!(
            (json["pid"].clone(), json["comm"].clone()),
            (serde_json::Value::Null, serde_json::Value::Null),
            "an unknown owner is null, not pid 0"
        );
    }

    #[test]
    fn unknown_protocols_are_numbers_and_bad_codes_are_errors() {
        assert_eq!(Proto::from_number(47, 4), Proto::Number(47));
        assert_eq!(serde_json::to_string(&Proto::Number(47)).unwrap(), "47");
        assert_eq!(Proto::from_number(1, 4), Proto::Name("icmp"));
        let mut e = event();
        e.hook = 9;
        assert!(EventRecord::new(&e, &policy(), &clock()).is_err());
        let mut e = event();
        e.outcome = outcome::ALLOWED as u8;
        assert!(EventRecord::new(&e, &policy(), &clock()).is_err());
    }
}
