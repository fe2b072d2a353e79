//! Versioned schema migrations. Each runs once, in order, inside one transaction that holds
//! the database's migration lock (PostgreSQL: a transaction-level advisory lock, released only
//! when the transaction commits, so a replica starting beside another waits and then finds the
//! schema done; SQLite: an immediate transaction). `schema_migrations` records what ran.
//!
//! Migrations only ever add (tables, columns with defaults, indexes): a controller of the
//! previous release keeps working on a database an upgraded replica migrated, so replicas can
//! be upgraded one by one. A controller finding a database newer than it knows starts, and
//! says so.

/// One step of the schema.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    /// The step's SQL for a dialect.
    pub sql: fn(&Dialect) -> String,
}

/// What differs between the databases' SQL.
pub struct Dialect {
    /// The auto-increment primary key.
    pub serial: &'static str,
    /// SQLite's storage hint for the report keys (nothing on PostgreSQL).
    pub without_rowid: &'static str,
}

pub const POSTGRES: Dialect = Dialect {
    serial: "BIGSERIAL PRIMARY KEY",
    without_rowid: "",
};

pub const SQLITE: Dialect = Dialect {
    serial: "INTEGER PRIMARY KEY AUTOINCREMENT",
    without_rowid: "WITHOUT ROWID",
};

/// Every migration, in order. Version 1 is the schema as it was before migrations were
/// versioned (`CREATE … IF NOT EXISTS`, so it is a no-op on such a database).
pub const MIGRATIONS: [Migration; 11] = [
    Migration {
        version: 1,
        name: "nodes, reports, events, fleet, policies, fleet changes",
        sql: |dialect| super::query::schema(dialect.serial, dialect.without_rowid),
    },
    Migration {
        version: 2,
        name: "indexes for the destination and process filters and for batched pruning",
        sql: |_| {
            "CREATE INDEX IF NOT EXISTS events_dst ON events (dst, id);
             CREATE INDEX IF NOT EXISTS events_dst_name ON events (dst_name, id);
             CREATE INDEX IF NOT EXISTS events_process ON events (process, id);
             CREATE INDEX IF NOT EXISTS events_exe ON events (exe, id);
             CREATE INDEX IF NOT EXISTS events_comm ON events (comm, id);
             CREATE INDEX IF NOT EXISTS reports_received ON reports (received_ms);"
                .to_owned()
        },
    },
    Migration {
        version: 3,
        name: "who changed the fleet: the operator token's name in its history",
        sql: |_| "ALTER TABLE fleet_changes ADD COLUMN actor TEXT;".to_owned(),
    },
    Migration {
        version: 4,
        name: "node identity: node ids bound to Azure VMs, their credentials, attestation nonces",
        sql: |_| {
            "CREATE TABLE IF NOT EXISTS node_bindings (
                 node_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL, credential TEXT NOT NULL UNIQUE,
                 bound_ms BIGINT NOT NULL, attested_ms BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS attestation_nonces (
                 nonce TEXT PRIMARY KEY, node_id TEXT NOT NULL, expires_ms BIGINT NOT NULL);"
                .to_owned()
        },
    },
    Migration {
        version: 5,
        name: "DNS violations: the tunnelling score, and an index for the kind filter",
        sql: |_| {
            "ALTER TABLE events ADD COLUMN tunnel_score BIGINT;
             CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id);"
                .to_owned()
        },
    },
    Migration {
        version: 6,
        name: "hourly rollups of the violations for the summary (filled from the stored events)",
        sql: |_| super::rollup::MIGRATION.to_owned(),
    },
    Migration {
        version: 7,
        name: "OTLP export: the last violation exported per endpoint, and who exports",
        sql: |_| {
            "CREATE TABLE IF NOT EXISTS otlp_cursors (
                 endpoint TEXT PRIMARY KEY, last_id BIGINT NOT NULL, holder TEXT,
                 leased_until_ms BIGINT NOT NULL);"
                .to_owned()
        },
    },
    Migration {
        version: 8,
        name: "node groups (a scale set, a role) to filter the fleet by",
        sql: |_| {
            "ALTER TABLE nodes ADD COLUMN node_group TEXT;
             CREATE INDEX IF NOT EXISTS nodes_group ON nodes (node_group, node_id);"
                .to_owned()
        },
    },
    Migration {
        version: 9,
        name: "one node id per VM, and nonces expired by index",
        sql: |_| {
            "CREATE UNIQUE INDEX IF NOT EXISTS node_bindings_vm ON node_bindings (vm_id);
             CREATE INDEX IF NOT EXISTS attestation_nonces_expiry ON attestation_nonces (expires_ms);"
                .to_owned()
        },
    },
    Migration {
        version: 10,
        name: "continuous proof: each node's latest self-check and alarms",
        sql: |_| "ALTER TABLE nodes ADD COLUMN proof TEXT;".to_owned(),
    },
    Migration {
        version: 11,
        name: "staged rollouts: the rollout in progress, beside the fleet's policy and mode",
        sql: |_| "ALTER TABLE fleet ADD COLUMN rollout TEXT;".to_owned(),
    },
];

/// The table that records them.
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)";

pub const CURRENT_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations";

/// Records a migration (`?1` version, `?2` name, `?3` when).
pub const RECORD: &str =
    "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?1, ?2, ?3)";

/// The migrations a database at `current` has yet to run, in order.
pub fn pending(current: i64) -> impl Iterator<Item = &'static Migration> {
    MIGRATIONS.iter().filter(move |m| m.version > current)
}

/// The newest version this build knows.
pub fn latest() -> i64 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Says so when the database is newer than this build (another replica was upgraded first).
pub fn warn_if_newer(current: i64) {
    if current > latest() {
        log::warn!(
            "the database's schema is at version {current}, newer than this controller's {}: \
             another replica was upgraded; this one keeps working (migrations only add), \
             upgrade it too",
            latest()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_rise_one_by_one() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i64 + 1, "{}", migration.name);
        }
        assert_eq!(
            pending(1).map(|m| m.version).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
        );
        assert_eq!(pending(latest()).count(), 0);
    }
}
