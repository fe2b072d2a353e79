//! SQL both stores share. It is written with SQLite's numbered placeholders (`?1`); [`pg`]
//! turns them into PostgreSQL's (`$1`). Where the dialects differ, each store has its own.

use super::{ViolationFilter, process_name};
use egress_monitor_api::wire::{FlowEvent, Report};

/// A bound value, turned into each driver's own type by its store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Param {
    fn from(value: i64) -> Self {
        Param::Int(Some(value))
    }
}

impl From<u64> for Param {
    fn from(value: u64) -> Self {
        // Validation keeps every stored number at most 2^63-1.
        Param::Int(Some(value.min(i64::MAX as u64) as i64))
    }
}

impl From<&str> for Param {
    fn from(value: &str) -> Self {
        Param::Text(Some(value.to_owned()))
    }
}

impl From<Option<String>> for Param {
    fn from(value: Option<String>) -> Self {
        Param::Text(value)
    }
}

/// The schema, in the types both databases take (SQLite reads `BIGINT` as an integer):
/// `serial` is each store's auto-increment primary key, `without_rowid` SQLite's storage hint
/// for the report keys.
pub fn schema(serial: &str, without_rowid: &str) -> String {
    format!(
        r#"
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, hostname TEXT NOT NULL, machine_id TEXT NOT NULL, vm_id TEXT,
    mode TEXT NOT NULL, policy_version TEXT NOT NULL, fleet_version BIGINT, policy_error TEXT,
    interval_s BIGINT NOT NULL, first_seen_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
    report_created_ms BIGINT NOT NULL, stream TEXT NOT NULL, last_seq BIGINT NOT NULL,
    counters TEXT NOT NULL, health TEXT NOT NULL, reports BIGINT NOT NULL, events BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    node_id TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL,
    received_ms BIGINT NOT NULL, events BIGINT NOT NULL,
    PRIMARY KEY (node_id, stream, seq)
) {without_rowid};
CREATE TABLE IF NOT EXISTS events (
    id {serial}, node_id TEXT NOT NULL, received_ms BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL, kind TEXT NOT NULL, hook TEXT NOT NULL, action TEXT NOT NULL,
    proto TEXT NOT NULL, src TEXT, dst TEXT, dst_port BIGINT, dst_name TEXT, rule TEXT NOT NULL,
    pid BIGINT, comm TEXT, exe TEXT, process TEXT, cgroup TEXT,
    packets BIGINT NOT NULL, bytes BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_node ON events (node_id, id);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ms);
CREATE INDEX IF NOT EXISTS events_received ON events (received_ms);
CREATE TABLE IF NOT EXISTS fleet (
    id BIGINT PRIMARY KEY CHECK (id = 1), policy_version BIGINT NOT NULL, policy TEXT,
    mode TEXT, updated_ms BIGINT
);
INSERT INTO fleet (id, policy_version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS policies (
    version BIGINT PRIMARY KEY, policy TEXT NOT NULL, set_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_changes (
    id {serial}, at_ms BIGINT NOT NULL, change TEXT NOT NULL, policy_version BIGINT NOT NULL,
    mode TEXT
);
"#
    )
}

/// PostgreSQL's placeholders for SQLite's.
pub fn pg(sql: &str) -> String {
    sql.replace('?', "$")
}

pub const SELECT_EVENTS: &str = "SELECT id, node_id, received_ms, ts_ms, kind, hook, action, proto, src, dst, dst_port, \
     dst_name, rule, pid, comm, exe, cgroup, packets, bytes, tunnel_score FROM events";

pub const INSERT_EVENT_COLUMNS: &str = "node_id, received_ms, ts_ms, kind, hook, action, proto, src, dst, dst_port, dst_name, \
     rule, pid, comm, exe, process, cgroup, packets, bytes, tunnel_score";

/// An event's values in [`INSERT_EVENT_COLUMNS`] order.
pub fn event_params(node_id: &str, received_ms: u64, event: &FlowEvent) -> Vec<Param> {
    vec![
        node_id.into(),
        received_ms.into(),
        event.ts_ms.into(),
        event.kind.as_str().into(),
        event.hook.as_str().into(),
        event.action.as_str().into(),
        event.proto.as_str().into(),
        event.src.map(|a| a.to_string()).into(),
        event.dst.map(|a| a.to_string()).into(),
        Param::Int(event.dst_port.map(i64::from)),
        event.dst_name.clone().into(),
        event.rule.as_str().into(),
        Param::Int(event.pid.map(i64::from)),
        event.comm.clone().into(),
        event.exe.clone().into(),
        process_name(event).into(),
        event.cgroup.clone().into(),
        event.packets.into(),
        event.bytes.into(),
        Param::Int(event.tunnel_score.map(i64::from)),
    ]
}

/// Creates the node's row on its first report (the state columns are set right after).
pub const INSERT_NODE: &str = "INSERT INTO nodes (node_id, hostname, machine_id, mode, policy_version, interval_s, \
     first_seen_ms, last_seen_ms, report_created_ms, stream, last_seq, counters, health, reports, events) \
     VALUES (?1, ?2, ?3, 'observe', '', 1, ?4, ?4, 0, '', 0, '{}', '{}', 0, 0) \
     ON CONFLICT (node_id) DO NOTHING";

/// Counts the report and moves `last_seen` on.
pub const COUNT_REPORT: &str = "UPDATE nodes SET reports = reports + 1, events = events + ?2, \
     last_seen_ms = CASE WHEN last_seen_ms > ?3 THEN last_seen_ms ELSE ?3 END WHERE node_id = ?1";

/// The node's state, from the report the controller received last, unless it is an older one
/// of the same stream (a spool replayed out of order). The node's own clock (`created_ms`) is
/// data, never the order: a report dated in the future cannot freeze the state.
pub const UPDATE_NODE_STATE: &str = "UPDATE nodes SET hostname = ?2, machine_id = ?3, vm_id = ?4, mode = ?5, \
     policy_version = ?6, fleet_version = ?7, policy_error = ?8, interval_s = ?9, report_created_ms = ?10, \
     stream = ?11, last_seq = ?12, counters = ?13, health = ?14, node_group = ?15, \
     proof = COALESCE(?16, proof) \
     WHERE node_id = ?1 AND (stream <> ?11 OR last_seq <= ?12)";

/// The parameters of [`UPDATE_NODE_STATE`]; `now_ms` (the controller's clock) dates the
/// report's proof on the controller's clock.
pub fn node_state_params(report: &Report, now_ms: u64) -> Vec<Param> {
    vec![
        report.node_id.as_str().into(),
        report.identity.hostname.as_str().into(),
        report.identity.machine_id.as_str().into(),
        report.identity.vm_id.clone().into(),
        report.mode.as_str().into(),
        report.policy.version.as_str().into(),
        Param::Int(
            report
                .policy
                .fleet_version
                .map(|v| v.min(i64::MAX as u64) as i64),
        ),
        report.policy.error.clone().into(),
        i64::from(report.interval_s).into(),
        report.created_ms.into(),
        report.stream.as_str().into(),
        report.seq.into(),
        super::to_json(&report.counters).as_str().into(),
        super::to_json(&report.health).as_str().into(),
        report.identity.group.clone().into(),
        report
            .proof
            .as_ref()
            .map(|proof| super::to_json(&super::NodeProof::received(proof.clone(), report, now_ms)))
            .into(),
    ]
}

/// The columns of a node's row, in the order [`super::rows::node`] reads them.
macro_rules! node_columns {
    () => {
        "SELECT node_id, hostname, machine_id, vm_id, mode, policy_version, fleet_version, \
         policy_error, interval_s, first_seen_ms, last_seen_ms, stream, last_seq, counters, health, \
         reports, events, node_group, proof"
    };
}

/// Every node's row, as [`super::rows::node`] reads it.
pub const SELECT_NODES: &str = concat!(node_columns!(), " FROM nodes ORDER BY node_id");

/// One node's row (?1: its id).
pub const SELECT_NODE: &str = concat!(node_columns!(), " FROM nodes WHERE node_id = ?1");

/// The violations query for a filter, newest first.
pub fn violations(filter: &ViolationFilter) -> (String, Vec<Param>) {
    let mut clauses = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let mut push = |clause: &str, param: Param, params: &mut Vec<Param>| {
        params.push(param);
        clauses.push(clause.replace("?N", &format!("?{}", params.len())));
    };
    if let Some(node) = &filter.node {
        push("node_id = ?N", node.as_str().into(), &mut params);
    }
    if let Some(kind) = filter.kind {
        push("kind = ?N", kind.as_str().into(), &mut params);
    }
    if let Some(rule) = &filter.rule {
        push("rule = ?N", rule.as_str().into(), &mut params);
    }
    if let Some(destination) = &filter.destination {
        push(
            "(dst = ?N OR dst_name = ?N)",
            destination.as_str().into(),
            &mut params,
        );
    }
    if let Some(process) = &filter.process {
        push(
            "(exe = ?N OR process = ?N OR comm = ?N)",
            process.as_str().into(),
            &mut params,
        );
    }
    if let Some(since) = filter.since_ms {
        push("ts_ms >= ?N", since.into(), &mut params);
    }
    if let Some(until) = filter.until_ms {
        push("ts_ms < ?N", until.into(), &mut params);
    }
    if let Some(before) = filter.before {
        push("id < ?N", before.into(), &mut params);
    }
    if let Some(after) = filter.after {
        push("id > ?N", after.into(), &mut params);
    }
    let mut sql = SELECT_EVENTS.to_owned();
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    params.push(i64::from(filter.limit).into());
    let order = if filter.after.is_some() {
        "ASC"
    } else {
        "DESC"
    };
    sql.push_str(&format!(" ORDER BY id {order} LIMIT ?{}", params.len()));
    (sql, params)
}

/// At most ?2 of the violations received before ?1, oldest first (by the `received_ms` index).
pub const PRUNE_EVENTS: &str = "DELETE FROM events WHERE id IN \
     (SELECT id FROM events WHERE received_ms < ?1 ORDER BY received_ms LIMIT ?2)";

/// At most ?2 of the report keys received before ?1.
pub const PRUNE_REPORTS: &str = "DELETE FROM reports WHERE (node_id, stream, seq) IN \
     (SELECT node_id, stream, seq FROM reports WHERE received_ms < ?1 ORDER BY received_ms LIMIT ?2)";

pub const SELECT_FLEET: &str =
    "SELECT policy_version, policy, mode, updated_ms, rollout FROM fleet WHERE id = 1";

/// A new policy version: after every version stored (a rolled-back rollout leaves the fleet
/// below its candidate's version, which is never given out again).
pub const SET_POLICY: &str = "UPDATE fleet SET policy_version = policy_version + 1 + \
     (SELECT COUNT(*) FROM policies WHERE version > fleet.policy_version), policy = ?1, \
     updated_ms = ?2 WHERE id = 1";

/// A rollback: the fleet's version, policy and mode as they were before the rollout.
pub const RESTORE_FLEET: &str = "UPDATE fleet SET policy_version = ?1, policy = ?2, mode = ?3, \
     updated_ms = ?4 WHERE id = 1";

/// The rollout in progress (?1: JSON, or NULL when none).
pub const SET_ROLLOUT: &str = "UPDATE fleet SET rollout = ?1, updated_ms = ?2 WHERE id = 1";

pub const RECORD_POLICY: &str = "INSERT INTO policies (version, policy, set_ms) SELECT policy_version, policy, updated_ms FROM fleet WHERE id = 1";

/// Appends the fleet's wishes as they are now to its history; ?1 says what changed (`policy`
/// or `mode`).
pub const RECORD_CHANGE: &str = "INSERT INTO fleet_changes (at_ms, change, policy_version, mode, actor) \
     SELECT updated_ms, CAST(?1 AS TEXT), policy_version, mode, CAST(?2 AS TEXT) FROM fleet WHERE id = 1";

/// The newest ?1 changes of the fleet's policy or mode.
pub const SELECT_CHANGES: &str = "SELECT at_ms, change, policy_version, mode, actor FROM fleet_changes \
     ORDER BY id DESC LIMIT ?1";

/// One stored version of the fleet policy: its text and when it was set.
pub const SELECT_POLICY_VERSION: &str = "SELECT policy, set_ms FROM policies WHERE version = ?1";

pub const FORGET_NODE: &str = "DELETE FROM nodes WHERE node_id = ?1";
/// A forgotten node id is free for another VM.
pub const UNBIND_NODE: &str = "DELETE FROM node_bindings WHERE node_id = ?1";

// Node identity (see `crate::attest`). A nonce is given out for one node id and used once.
pub const ISSUE_NONCE: &str = "INSERT INTO attestation_nonces (nonce, node_id, expires_ms) VALUES (?1, ?2, ?3) \
     ON CONFLICT (nonce) DO NOTHING";
pub const EXPIRE_NONCES: &str = "DELETE FROM attestation_nonces WHERE expires_ms < ?1";
pub const TAKE_NONCE: &str =
    "DELETE FROM attestation_nonces WHERE nonce = ?1 AND node_id = ?2 AND expires_ms >= ?3";
/// Binds a node id to a VM with a new credential; a binding to another VM stays as it was (no
/// row changes).
pub const BIND_NODE: &str = "INSERT INTO node_bindings (node_id, vm_id, credential, bound_ms, attested_ms) \
     VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (node_id) DO UPDATE SET credential = excluded.credential, \
     attested_ms = excluded.attested_ms WHERE node_bindings.vm_id = excluded.vm_id";
pub const CREDENTIAL_OWNER: &str = "SELECT node_id, vm_id FROM node_bindings WHERE credential = ?1";
pub const VM_OWNER: &str = "SELECT node_id FROM node_bindings WHERE vm_id = ?1";
pub const NODE_BOUND: &str = "SELECT COUNT(*) FROM node_bindings WHERE node_id = ?1";

// OTLP export: a cursor per endpoint, advanced by the replica holding its lease.
pub const ADD_EXPORT_CURSOR: &str = "INSERT INTO otlp_cursors (endpoint, last_id, holder, leased_until_ms) \
     VALUES (?1, 0, NULL, 0) ON CONFLICT (endpoint) DO NOTHING";
/// ?1 endpoint, ?2 holder, ?3 now, ?4 until.
pub const LEASE_EXPORT: &str = "UPDATE otlp_cursors SET holder = ?2, leased_until_ms = ?4 \
     WHERE endpoint = ?1 AND (holder = ?2 OR leased_until_ms < ?3) RETURNING last_id";
/// ?1 endpoint, ?2 holder, ?3 from, ?4 to.
pub const ADVANCE_EXPORT: &str =
    "UPDATE otlp_cursors SET last_id = ?4 WHERE endpoint = ?1 AND holder = ?2 AND last_id = ?3";

pub const SET_MODE: &str = "UPDATE fleet SET mode = ?1, updated_ms = ?2 WHERE id = 1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_filters_number_their_placeholders() {
        let (sql, params) = violations(&ViolationFilter {
            node: Some("a".into()),
            process: Some("curl".into()),
            before: Some(7),
            limit: 10,
            ..ViolationFilter::default()
        });
        assert!(
            sql.ends_with("WHERE node_id = ?1 AND (exe = ?2 OR process = ?2 OR comm = ?2) AND id < ?3 ORDER BY id DESC LIMIT ?4"),
            "{sql}"
        );
        assert_eq!(params.len(), 4);
        assert!(pg(&sql).ends_with("id < $3 ORDER BY id DESC LIMIT $4"));
    }
}
