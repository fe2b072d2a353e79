//! The stores' own behaviour, on an SQLite file: migrations, batched pruning, node bindings.

use std::time::Duration;

use serde_json::json;

use super::{Store, ViolationFilter, sqlite::SqliteStore};
use egress_monitor_api::wire::Report;

/// A report of node `node-p` with `events` copies of one flow event.
pub(super) fn report(seq: u64, events: usize) -> Report {
    let event = json!({
        "ts_ms": 1_000, "kind": "first", "hook": "cgroup", "action": "observed",
        "proto": "tcp", "src": "10.0.0.4", "dst": "203.0.113.9", "dst_port": 443,
        "dst_name": null, "rule": "default-deny", "pid": 1, "comm": "curl",
        "exe": "/usr/bin/curl", "cgroup": "/", "packets": 1, "bytes": 60
    });
    serde_json::from_value(json!({
        "node_id": "node-p", "stream": "00112233aabbccdd", "seq": seq, "created_ms": 1_000,
        "interval_s": 10,
        "identity": {"hostname": "host-p", "machine_id": "machine-p", "vm_id": null},
        "mode": "observe",
        "policy": {"version": "00000000deadbeef", "fleet_version": null, "error": null},
        "counters": {"allowed_packets": 0, "denied_observed_packets": 0,
                     "denied_dropped_packets": 0, "denied_bytes": 0, "malformed": 0},
        "health": {"attachments": 1, "events_lost": 0, "uptime_s": 5,
                   "spool_dropped_reports": 0, "spool_dropped_events": 0, "spool_pending": 0},
        "events": vec![event; events]
    }))
    .expect("a valid report")
}

async fn count(store: &SqliteStore) -> usize {
    store
        .violations(&ViolationFilter {
            limit: 1000,
            ..ViolationFilter::default()
        })
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn pruning_goes_in_short_batches_and_keeps_what_is_newer() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("controller.db"))
        .await
        .unwrap();
    for seq in 1..=3 {
        store
            .ingest(&report(seq, 300), false, 10_000)
            .await
            .unwrap();
    }
    store.ingest(&report(4, 7), false, 50_000).await.unwrap();
    assert_eq!(count(&store).await, 907);
    // One batch takes no more than its size, whatever is older.
    assert_eq!(
        store.prune_batch(20_000, 250).await.unwrap(),
        Some(super::Pruned {
            events: 250,
            reports: 3,
            rollups: 0
        })
    );
    assert_eq!(count(&store).await, 657);
    // Ingestion goes on between batches.
    store.ingest(&report(5, 1), false, 60_000).await.unwrap();
    let pruned = crate::prune(&store, 20_000, 250, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pruned, 650);
    assert_eq!(count(&store).await, 8, "the newer reports' events stay");
    // The newer report's key was kept: sent again, it is still a duplicate.
    assert_eq!(
        store.ingest(&report(4, 7), false, 70_000).await.unwrap(),
        super::Ingest::Duplicate
    );
}

#[tokio::test]
async fn migrations_run_once_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    drop(SqliteStore::open(&path).await.unwrap());
    // Opened again (a restart): nothing runs twice.
    drop(SqliteStore::open(&path).await.unwrap());
    let connection = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = connection
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let indexes: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'events_%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(indexes >= 8, "{indexes} event indexes");
}

#[tokio::test]
async fn nonces_are_used_once_and_ids_stay_bound_to_their_vm() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("controller.db"))
        .await
        .unwrap();
    assert!(
        store
            .issue_nonce("0000000001", "node-a", 1_000, 2_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .issue_nonce("0000000001", "node-b", 1_000, 2_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_nonce("0000000001", "node-b", 1_500)
            .await
            .unwrap()
    );
    assert!(
        store
            .take_nonce("0000000001", "node-a", 1_500)
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_nonce("0000000001", "node-a", 1_500)
            .await
            .unwrap()
    );
    store
        .issue_nonce("0000000002", "node-a", 1_000, 2_000)
        .await
        .unwrap();
    assert!(
        !store
            .take_nonce("0000000002", "node-a", 2_001)
            .await
            .unwrap()
    );

    assert!(!store.bound("node-a").await.unwrap());
    assert!(
        store
            .bind("node-a", "vm-1", "digest-1", 1_000)
            .await
            .unwrap()
    );
    assert!(store.bound("node-a").await.unwrap());
    assert_eq!(
        store.credential_owner("digest-1").await.unwrap(),
        Some(("node-a".to_owned(), "vm-1".to_owned()))
    );
    assert_eq!(
        store.vm_owner("vm-1").await.unwrap().as_deref(),
        Some("node-a")
    );
    // Another VM cannot take the id; the same VM gets a new credential, the old one is void.
    assert!(
        !store
            .bind("node-a", "vm-2", "digest-2", 2_000)
            .await
            .unwrap()
    );
    assert_eq!(store.credential_owner("digest-2").await.unwrap(), None);
    assert!(
        store
            .bind("node-a", "vm-1", "digest-3", 3_000)
            .await
            .unwrap()
    );
    assert_eq!(store.credential_owner("digest-1").await.unwrap(), None);
    assert_eq!(
        store
            .credential_owner("digest-3")
            .await
            .unwrap()
            .map(|o| o.0),
        Some("node-a".to_owned())
    );
    // Forgetting the node frees the id.
    store.ingest(&report(1, 0), false, 4_000).await.unwrap();
    assert!(store.forget("node-p").await.unwrap());
    assert!(store.bound("node-a").await.unwrap());
    store.forget("node-a").await.unwrap();
    assert!(!store.bound("node-a").await.unwrap());
    assert!(
        store
            .bind("node-a", "vm-2", "digest-4", 5_000)
            .await
            .unwrap()
    );
}

/// The summary's tops from the rollups are what the raw events say, and the migration's
/// backfill builds the same rollups from events stored before them.
#[tokio::test]
async fn tops_from_rollups_match_the_events_and_the_backfill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let hour = super::rollup::HOUR_MS;
    for seq in 1..=6u64 {
        let mut report = report(seq, 0);
        for i in 0..40u64 {
            let mut event = serde_json::to_value(report_event()).unwrap();
            event["ts_ms"] = json!(1_800_000_000_000 + (seq % 3) * hour + i);
            event["dst"] = json!(format!("203.0.113.{}", i % 7));
            event["exe"] = json!(format!("/usr/bin/tool{}", i % 3));
            event["packets"] = json!(1 + i % 5);
            report.events.push(serde_json::from_value(event).unwrap());
        }
        store.ingest(&report, false, 10_000).await.unwrap();
    }
    let tops = store.top(1_800_000_000_000, 10).await.unwrap();
    let raw = |sql: &str| -> Vec<(String, i64, i64)> {
        let connection = rusqlite::Connection::open(&path).unwrap();
        let mut statement = connection.prepare(sql).unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let expected = raw(
        "SELECT dst, SUM(packets), COUNT(*) FROM events GROUP BY dst ORDER BY SUM(packets) DESC, dst",
    );
    let got: Vec<(String, i64, i64)> = tops
        .0
        .iter()
        .map(|t| (t.key.clone(), t.packets as i64, t.events as i64))
        .collect();
    assert_eq!(got, expected);
    let expected = raw(
        "SELECT exe, SUM(packets), COUNT(*) FROM events GROUP BY exe ORDER BY SUM(packets) DESC, exe",
    );
    let got: Vec<(String, i64, i64)> = tops
        .1
        .iter()
        .map(|t| (t.key.clone(), t.packets as i64, t.events as i64))
        .collect();
    assert_eq!(got, expected);
    // Rebuilt by the backfill, the rollups are the same.
    let before =
        raw("SELECT dst || process || hour_ms, packets, events FROM event_rollups ORDER BY 1");
    {
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection.execute("DELETE FROM event_rollups", []).unwrap();
        connection.execute_batch(super::rollup::MIGRATION).unwrap();
    }
    let after =
        raw("SELECT dst || process || hour_ms, packets, events FROM event_rollups ORDER BY 1");
    assert_eq!(before, after);
    assert!(before.len() >= 21, "{before:?}");
}

fn report_event() -> egress_monitor_api::wire::FlowEvent {
    report(1, 1).events.remove(0)
}
