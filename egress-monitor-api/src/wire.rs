//! The controller's JSON API, as types: what nodes send and what the controller answers. The
//! node's reporter and the controller share them, so both sides agree by construction.
//!
//! Everything a node sends is checked by [`Report::validate`] before anything is stored: a
//! report out of range is refused whole, with a message that says which field and why.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::Mode;

/// Every route lives under this prefix.
pub const API: &str = "/api/v1";
/// Events one report may carry; the reporter cuts longer batches into several reports.
pub const MAX_EVENTS_PER_REPORT: usize = 5_000;
/// The largest report body the controller reads.
pub const MAX_REPORT_BYTES: usize = 8 << 20;
/// The largest policy file the controller takes.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Any one text field (a path, a name).
pub const MAX_TEXT: usize = 4_096;
/// Reporting intervals nodes may announce, in seconds.
pub const INTERVAL_RANGE: std::ops::RangeInclusive<u32> = 1..=3_600;

/// What a node sends every interval: who it is, what it enforces, how it is, and the flow
/// events since its previous report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub node_id: String,
    /// A random id (16 hex digits) made when the node's spool was created: a re-imaged node
    /// starts a new stream, so its sequence numbers starting over are not taken for repeats.
    pub stream: String,
    /// 1, 2, 3, … within the stream: the controller stores each (node, stream, seq) once.
    pub seq: u64,
    /// When the node made the report: milliseconds since the epoch, node clock.
    pub created_ms: u64,
    /// Seconds between the node's reports: three of them without one make the node stale.
    pub interval_s: u32,
    pub identity: Identity,
    pub mode: Mode,
    pub policy: PolicyState,
    pub counters: NodeCounters,
    pub health: Health,
    pub events: Vec<FlowEvent>,
    /// The node's latest self-check, when its daemon ran one (older nodes send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// A node's continuous proof: its daemon's latest self-check (`egress-monitor check`, run on a
/// schedule and after every change) and the tampering it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// When the check ran (node clock, ms since the epoch).
    pub checked_ms: u64,
    /// Every probe agreed with the policy and mode, every link is attached with the program it
    /// was attached with, and no alarm is open.
    pub passed: bool,
    /// Why not, when it did not pass (at most [`MAX_PROOF_LINES`]).
    pub problems: Vec<String>,
    /// Seconds between the scheduled checks: an older check proves nothing.
    pub interval_s: u32,
    /// The pinned programs are the daemon's own build.
    pub same_build: bool,
    /// The live mode and where it came from (`fleet mode`, `--mode`, `the policy file's mode`,
    /// `the default`).
    pub mode_source: String,
    /// Alarms raised since the daemon started, newest last (at most [`MAX_PROOF_LINES`]).
    pub alarms: Vec<Alarm>,
}

/// Something done to the node's enforcement: a link removed or detached, a program replaced,
/// a self-check failing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alarm {
    pub ts_ms: u64,
    /// `link_removed`, `link_detached`, `program_replaced`, `link_unreadable`, `check_failed`.
    pub kind: String,
    pub message: String,
}

/// Problems and alarms a proof carries at most.
pub const MAX_PROOF_LINES: usize = 32;

impl Proof {
    fn validate(&self) -> Result<(), String> {
        if self.problems.len() > MAX_PROOF_LINES || self.alarms.len() > MAX_PROOF_LINES {
            return Err(format!(
                "proof carries at most {MAX_PROOF_LINES} problems and {MAX_PROOF_LINES} alarms"
            ));
        }
        for problem in &self.problems {
            text("proof.problems[]", problem, false)?;
        }
        text("proof.mode_source", &self.mode_source, false)?;
        if !(1..=86_400).contains(&self.interval_s) {
            return Err("proof.interval_s must be between 1 and 86400 seconds".into());
        }
        for alarm in &self.alarms {
            text("proof.alarms[].kind", &alarm.kind, false)?;
            text("proof.alarms[].message", &alarm.message, false)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub hostname: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// The cloud's VM id (Azure's `compute.vmId`), when the metadata service answered.
    pub vm_id: Option<String>,
    /// The group the node belongs to, for operators to filter the fleet by (`--node-group`,
    /// else Azure's scale set name): 1-128 letters, digits, '.', '_', '-'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The policy the node runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyState {
    /// The live policy's hash, as `egress-monitor status` shows it.
    pub version: String,
    /// The fleet policy version it runs; `None` while it runs its local policy.
    pub fleet_version: Option<u64>,
    /// Why the node refused the newest fleet policy or mode (it keeps the one it runs).
    pub error: Option<String>,
}

/// Cumulative counters since the datapath was pinned (both hooks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCounters {
    pub allowed_packets: u64,
    pub denied_observed_packets: u64,
    pub denied_dropped_packets: u64,
    pub denied_bytes: u64,
    pub malformed: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Programs attached (cgroup and TC links).
    pub attachments: u32,
    /// Events the kernel could not queue (ring buffer full).
    pub events_lost: u64,
    pub uptime_s: u64,
    /// Reports the full spool dropped (oldest first), and the events they carried.
    pub spool_dropped_reports: u64,
    pub spool_dropped_events: u64,
    /// Reports waiting in the spool when this one was made.
    pub spool_pending: u64,
}

crate::words! {
    /// Which event of a flow: its first packet, a later count, or every packet (flow
    /// interval 0); or `dns`, a DNS question a domain policy refuses (or would, in observe
    /// mode) or whose name looks like tunnelling: `dst` is the resolver, `dst_name` the name
    /// asked, `rule` the domain rule, `tunnel_score` the name's score.
    pub enum FlowKind { First = "first", Update = "update", Packet = "packet", Dns = "dns" }
}

crate::words! {
    /// Which hook saw a packet.
    pub enum Hook { Cgroup = "cgroup", Tc = "tc" }
}

crate::words! {
    /// What became of a denied packet: counted (observe mode) or dropped (enforce mode).
    pub enum DeniedAction { Observed = "observed", Dropped = "dropped" }
}

/// One denied flow event, as the node's event stream has it (see `events::EventRecord`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowEvent {
    pub ts_ms: u64,
    pub kind: FlowKind,
    pub hook: Hook,
    pub action: DeniedAction,
    pub proto: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub dst_name: Option<String>,
    pub rule: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub cgroup: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    /// `dns` events: how much the name looks like data smuggled out (0-100; 50 or more is
    /// suspicious).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_score: Option<u8>,
}

/// The controller's answer to a report: whether it was new, and what the fleet wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportReply {
    /// False when this (node, stream, seq) was stored before: nothing was stored again.
    pub stored: bool,
    pub fleet: Desired,
}

/// What the fleet wants every node to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The fleet policy's version; 0 while none was set (nodes run their local policy).
    pub policy_version: u64,
    /// The fleet's mode; `None` while none was set (nodes keep their own).
    pub mode: Option<Mode>,
}

/// `GET /api/v1/policy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPolicy {
    pub version: u64,
    /// The policy file's text (TOML, as a node's `--policy` file); `None` before the first.
    pub policy: Option<String>,
    pub mode: Option<Mode>,
    /// RFC 3339, when the policy or the mode last changed.
    pub updated: Option<String>,
}

/// `GET /api/v1/policy/VERSION`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub policy: String,
    /// RFC 3339, when it was set.
    pub set: String,
}

/// `GET /api/v1/history`: a change of the fleet's policy or mode and what it left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// RFC 3339.
    pub at: String,
    /// `policy`, `mode`, or a staged rollout's stage: `rollout-start`, `rollout-pause` (by an
    /// operator, or by `controller (automatic)` when a canary reported new drops or a failed check),
    /// `rollout-promote`, `rollout-rollback`.
    pub change: String,
    pub policy_version: u64,
    pub mode: Option<Mode>,
    /// The name of the operator's token that made the change (none for changes made before
    /// names were recorded).
    #[serde(default)]
    pub by: Option<String>,
}

/// `PUT /api/v1/mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    pub mode: Mode,
}

/// `POST /api/v1/attestation/nonce`: a node asks for a nonce to put in an attested document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceRequest {
    pub node_id: String,
}

/// The nonce (ten digits, as Azure's instance metadata service takes), good once, for this
/// node id, for `expires_in_s`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceReply {
    pub nonce: String,
    pub expires_in_s: u64,
}

/// Azure's attested document as the instance metadata service returns it:
/// `GET /metadata/attested/document?nonce=…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedDocument {
    /// `pkcs7`.
    pub encoding: String,
    /// Base64 of the DER PKCS #7 signed data (the JSON document, signed).
    pub signature: String,
}

/// `POST /api/v1/attestation`: a node proves it is the Azure VM it says, with a document
/// carrying the nonce the controller gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationRequest {
    pub node_id: String,
    pub nonce: String,
    pub document: AttestedDocument,
}

/// The node's own credential: reports with it are this node's alone; a new attestation of
/// the same VM replaces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationReply {
    pub credential: String,
    /// The VM the node id is bound to.
    pub vm_id: String,
}

/// Every refusal: a status code and this body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Lowest and highest event time accepted: 2020-01-01, and a day past the controller's now.
const EARLIEST_MS: u64 = 1_577_836_800_000;
const FUTURE_SLACK_MS: u64 = 86_400_000;

/// A node id: 1–128 of `A-Z a-z 0-9 . _ -`, as hostnames and scale-set instance names are.
pub fn valid_node_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Report {
    /// Checks every field; `Err` says which one and why.
    pub fn validate(&self, now_ms: u64) -> Result<(), String> {
        if !valid_node_id(&self.node_id) {
            return Err(
                "node_id must be 1-128 characters of letters, digits, '.', '_' and '-'".into(),
            );
        }
        if self.stream.len() != 16 || !self.stream.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("stream must be 16 hexadecimal digits".into());
        }
        if self.seq == 0 || self.seq > i64::MAX as u64 {
            return Err("seq must be between 1 and 2^63-1".into());
        }
        check_time("created_ms", self.created_ms, now_ms)?;
        if !INTERVAL_RANGE.contains(&self.interval_s) {
            return Err(format!(
                "interval_s must be between {} and {} seconds",
                INTERVAL_RANGE.start(),
                INTERVAL_RANGE.end()
            ));
        }
        text("identity.hostname", &self.identity.hostname, false)?;
        text("identity.machine_id", &self.identity.machine_id, false)?;
        opt_text("identity.vm_id", &self.identity.vm_id)?;
        if self
            .identity
            .group
            .as_deref()
            .is_some_and(|group| !valid_node_id(group))
        {
            return Err(
                "identity.group must be 1-128 characters of letters, digits, '.', '_' and '-'"
                    .into(),
            );
        }
        text("policy.version", &self.policy.version, true)?;
        opt_text("policy.error", &self.policy.error)?;
        if let Some(proof) = &self.proof {
            proof.validate()?;
        }
        if self.events.len() > MAX_EVENTS_PER_REPORT {
            return Err(format!(
                "a report carries at most {MAX_EVENTS_PER_REPORT} events, this one {}",
                self.events.len()
            ));
        }
        for (i, event) in self.events.iter().enumerate() {
            event
                .validate(now_ms)
                .map_err(|e| format!("events[{i}].{e}"))?;
        }
        for (name, value) in [
            ("allowed_packets", self.counters.allowed_packets),
            (
                "denied_observed_packets",
                self.counters.denied_observed_packets,
            ),
            (
                "denied_dropped_packets",
                self.counters.denied_dropped_packets,
            ),
            ("denied_bytes", self.counters.denied_bytes),
            ("malformed", self.counters.malformed),
            ("health.events_lost", self.health.events_lost),
            ("health.uptime_s", self.health.uptime_s),
            (
                "health.spool_dropped_reports",
                self.health.spool_dropped_reports,
            ),
            (
                "health.spool_dropped_events",
                self.health.spool_dropped_events,
            ),
            ("health.spool_pending", self.health.spool_pending),
        ] {
            if value > i64::MAX as u64 {
                return Err(format!("{name} is out of range (at most 2^63-1)"));
            }
        }
        Ok(())
    }
}

impl FlowEvent {
    fn validate(&self, now_ms: u64) -> Result<(), String> {
        check_time("ts_ms", self.ts_ms, now_ms)?;
        text("proto", &self.proto, false)?;
        text("rule", &self.rule, true)?;
        for (name, value) in [
            ("dst_name", &self.dst_name),
            ("comm", &self.comm),
            ("exe", &self.exe),
            ("cgroup", &self.cgroup),
        ] {
            opt_text(name, value)?;
        }
        if self.tunnel_score.is_some_and(|score| score > 100) {
            return Err("tunnel_score must be between 0 and 100".into());
        }
        if self.packets == 0 || self.packets > i64::MAX as u64 || self.bytes > i64::MAX as u64 {
            return Err("packets must be between 1 and 2^63-1, bytes at most 2^63-1".into());
        }
        Ok(())
    }
}

fn check_time(name: &str, ms: u64, now_ms: u64) -> Result<(), String> {
    if ms < EARLIEST_MS || ms > now_ms.saturating_add(FUTURE_SLACK_MS) {
        return Err(format!(
            "{name} must be milliseconds since the epoch, after 2020 and at most a day ahead of the controller's clock"
        ));
    }
    Ok(())
}

fn text(name: &str, value: &str, may_be_empty: bool) -> Result<(), String> {
    if (!may_be_empty && value.is_empty())
        || value.len() > MAX_TEXT
        || value.chars().any(char::is_control)
    {
        return Err(format!(
            "{name} must be {}printable text of at most {MAX_TEXT} bytes",
            if may_be_empty { "" } else { "non-empty " }
        ));
    }
    Ok(())
}

fn opt_text(name: &str, value: &Option<String>) -> Result<(), String> {
    value.as_deref().map_or(Ok(()), |v| text(name, v, false))
}
