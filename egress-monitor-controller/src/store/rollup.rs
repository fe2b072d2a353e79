//! Hourly rollups of the violations: per hour (of the event's time) × node × kind ×
//! destination × process, the packets and events summed. Written in the same transaction as
//! the events they sum; the summary's and the page's tops read them (at most 24 rows a day per
//! node, destination and process) instead of a day of raw events.

use std::collections::BTreeMap;

use egress_monitor_api::wire::{FlowEvent, Report};

pub const HOUR_MS: u64 = 3_600_000;

/// The hour an instant falls in (its start).
pub fn hour(ms: u64) -> u64 {
    ms - ms % HOUR_MS
}

/// What a rollup row is keyed by: hour, kind, destination (`''` when none), process.
type Key = (u64, &'static str, String, String);

/// One row's share of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollup {
    pub hour_ms: u64,
    pub kind: &'static str,
    /// The destination address as text, `''` when the event has none.
    pub dst: String,
    /// Executable, else command name, else `(unknown)`: what the process tops show.
    pub process: String,
    pub dst_name: Option<String>,
    pub packets: u64,
    pub events: u64,
}

/// The process key of an event (as the tops group by).
pub fn process_key(event: &FlowEvent) -> String {
    event
        .exe
        .clone()
        .or_else(|| event.comm.clone())
        .unwrap_or_else(|| "(unknown)".to_owned())
}

/// A report's events summed by rollup key: one upsert per key, never two for the same row in
/// one statement.
pub fn of_report(report: &Report) -> Vec<Rollup> {
    let mut rows: BTreeMap<Key, (Option<String>, u64, u64)> = BTreeMap::new();
    for event in &report.events {
        let key = (
            hour(event.ts_ms),
            event.kind.as_str(),
            event.dst.map(|a| a.to_string()).unwrap_or_default(),
            process_key(event),
        );
        let row = rows.entry(key).or_default();
        if row.0.is_none() {
            row.0.clone_from(&event.dst_name);
        }
        row.1 = row.1.saturating_add(event.packets);
        row.2 += 1;
    }
    rows.into_iter()
        .map(
            |((hour_ms, kind, dst, process), (dst_name, packets, events))| Rollup {
                hour_ms,
                kind,
                dst,
                process,
                dst_name,
                packets,
                events,
            },
        )
        .collect()
}

/// The table, and the rollups of the events stored before it existed.
pub const MIGRATION: &str = "CREATE TABLE IF NOT EXISTS event_rollups (
         hour_ms BIGINT NOT NULL, node_id TEXT NOT NULL, kind TEXT NOT NULL, dst TEXT NOT NULL,
         process TEXT NOT NULL, dst_name TEXT, packets BIGINT NOT NULL, events BIGINT NOT NULL,
         PRIMARY KEY (hour_ms, node_id, kind, dst, process));
     INSERT INTO event_rollups (hour_ms, node_id, kind, dst, process, dst_name, packets, events)
         SELECT ts_ms - ts_ms % 3600000, node_id, kind, COALESCE(dst, ''),
                COALESCE(exe, comm, '(unknown)'), MAX(dst_name), SUM(packets), COUNT(*)
         FROM events
         GROUP BY ts_ms - ts_ms % 3600000, node_id, kind, COALESCE(dst, ''),
                  COALESCE(exe, comm, '(unknown)');";

/// What an upsert does to an existing row.
const ON_CONFLICT: &str = " ON CONFLICT (hour_ms, node_id, kind, dst, process) DO UPDATE SET \
     packets = event_rollups.packets + excluded.packets, \
     events = event_rollups.events + excluded.events, \
     dst_name = COALESCE(excluded.dst_name, event_rollups.dst_name)";

/// One row (SQLite): ?1 node, ?2 hour, ?3 kind, ?4 destination, ?5 process, ?6 name,
/// ?7 packets, ?8 events.
pub fn upsert_one() -> String {
    format!(
        "INSERT INTO event_rollups (node_id, hour_ms, kind, dst, process, dst_name, packets, events) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8){ON_CONFLICT}"
    )
}

/// Every row of a report in one statement (PostgreSQL): $1 node, then one array per column.
pub fn upsert_many() -> String {
    format!(
        "INSERT INTO event_rollups (node_id, hour_ms, kind, dst, process, dst_name, packets, events) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::bigint[], $8::bigint[]){ON_CONFLICT}"
    )
}

/// Top destinations of flows (DNS questions are not flows) from the hour of ?1 on, at most ?2.
pub const TOP_DESTINATIONS: &str = "SELECT dst, MAX(dst_name), SUM(packets), SUM(events), COUNT(DISTINCT node_id) \
     FROM event_rollups WHERE hour_ms >= ?1 AND dst <> '' AND kind <> 'dns' \
     GROUP BY dst ORDER BY SUM(packets) DESC, dst LIMIT ?2";

/// Top processes of flows from the hour of ?1 on, at most ?2.
pub const TOP_PROCESSES: &str = "SELECT process, NULL, SUM(packets), SUM(events), COUNT(DISTINCT node_id) \
     FROM event_rollups WHERE hour_ms >= ?1 AND kind <> 'dns' \
     GROUP BY process ORDER BY SUM(packets) DESC, process LIMIT ?2";

/// Denied flow packets and DNS violations per hour, from the hour of ?1 on (the console's
/// chart).
pub const HOURS: &str = "SELECT hour_ms, \
     CAST(SUM(CASE WHEN kind <> 'dns' THEN packets ELSE 0 END) AS BIGINT), \
     CAST(SUM(CASE WHEN kind = 'dns' THEN events ELSE 0 END) AS BIGINT) \
     FROM event_rollups WHERE hour_ms >= ?1 GROUP BY hour_ms ORDER BY hour_ms";

/// At most ?2 rollup rows of hours before ?1.
pub const PRUNE: &str = "DELETE FROM event_rollups WHERE (hour_ms, node_id, kind, dst, process) IN \
     (SELECT hour_ms, node_id, kind, dst, process FROM event_rollups WHERE hour_ms < ?1 \
      ORDER BY hour_ms LIMIT ?2)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reports_events_are_summed_per_hour_destination_and_process() {
        let event = |ts_ms: u64, dst: &str, exe: Option<&str>, packets: u64| {
            serde_json::from_value::<FlowEvent>(serde_json::json!({
                "ts_ms": ts_ms, "kind": "first", "hook": "cgroup", "action": "observed",
                "proto": "tcp", "src": null, "dst": dst, "dst_port": 443,
                "dst_name": if dst == "203.0.113.9" { Some("x.example") } else { None },
                "rule": "default", "pid": 1, "comm": "curl", "exe": exe,
                "cgroup": null, "packets": packets, "bytes": 0
            }))
            .unwrap()
        };
        let mut report: Report = crate::store::tests::report(1, 0);
        let h = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;
        report.events = vec![
            event(h + 5, "203.0.113.9", Some("/usr/bin/curl"), 2),
            event(h + 9, "203.0.113.9", Some("/usr/bin/curl"), 3),
            event(h + HOUR_MS, "203.0.113.9", Some("/usr/bin/curl"), 1),
            event(h + 7, "198.51.100.1", None, 4),
        ];
        let rows = of_report(&report);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        let first = rows
            .iter()
            .find(|r| r.hour_ms == h && r.dst == "203.0.113.9")
            .unwrap();
        assert_eq!((first.packets, first.events), (5, 2));
        assert_eq!(first.dst_name.as_deref(), Some("x.example"));
        assert!(rows.iter().any(|r| r.process == "curl" && r.packets == 4));
        assert!(rows.iter().any(|r| r.hour_ms == h + HOUR_MS));
    }
}
