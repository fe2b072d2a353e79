//! The embedded store: one SQLite file in WAL mode, `synchronous = FULL`, so a report the
//! controller acknowledged survives the controller being killed (and the machine losing
//! power). Writes are serialised on one connection; each runs on tokio's blocking pool.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use rusqlite::{
    Connection, OptionalExtension, TransactionBehavior, params_from_iter, types::Value,
};

use super::{
    FleetChange, FleetSettings, Ingest, NodeRow, PolicyChange, Pruned, Store, StoreError, Top,
    Violation, ViolationFilter, migrate, mode_from,
    query::{self, Param},
    rollup, rows,
};
use egress_monitor_api::{time::now_ms, wire::Report};

pub struct SqliteStore {
    /// Every write, and the small reads on the reports' path (the fleet's wishes).
    writer: Arc<Mutex<Connection>>,
    /// The operators' reads (nodes, violations, tops): in WAL mode they read a snapshot while
    /// reports are written, so a slow summary never holds up a node.
    reader: Arc<Mutex<Connection>>,
    path: std::path::PathBuf,
}

/// Which connection a piece of work runs on.
#[derive(Clone, Copy)]
enum Use {
    Write,
    Read,
}

fn value(param: Param) -> Value {
    match param {
        Param::Int(Some(v)) => Value::Integer(v),
        Param::Text(Some(v)) => Value::Text(v),
        Param::Int(None) | Param::Text(None) => Value::Null,
    }
}

fn values(params: Vec<Param>) -> impl Iterator<Item = Value> {
    params.into_iter().map(value)
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Directory {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let owned = path.to_owned();
        let (writer, reader) =
            tokio::task::spawn_blocking(move || -> Result<(Connection, Connection), StoreError> {
                let mut writer = Connection::open(&owned)?;
                writer.busy_timeout(std::time::Duration::from_secs(10))?;
                writer.pragma_update(None, "journal_mode", "WAL")?;
                writer.pragma_update(None, "synchronous", "FULL")?;
                migrate_sqlite(&mut writer)?;
                let reader = Connection::open_with_flags(
                    &owned,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                reader.busy_timeout(std::time::Duration::from_secs(10))?;
                Ok((writer, reader))
            })
            .await??;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_owned(),
        })
    }

    /// Runs `work` on one of the connections, off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        what: Use,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(match what {
            Use::Write => &self.writer,
            Use::Read => &self.reader,
        });
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await?
    }
}

/// Runs the pending migrations in one immediate transaction (see [`migrate`]).
fn migrate_sqlite(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(migrate::MIGRATIONS_TABLE)?;
    let current: i64 = tx.query_row(migrate::CURRENT_VERSION, [], |row| row.get(0))?;
    for migration in migrate::pending(current) {
        tx.execute_batch(&(migration.sql)(&migrate::SQLITE))?;
        tx.execute(
            migrate::RECORD,
            (migration.version, migration.name, now_ms() as i64),
        )?;
        log::info!(
            "database schema migrated to version {}: {}",
            migration.version,
            migration.name
        );
    }
    tx.commit()?;
    migrate::warn_if_newer(current);
    Ok(())
}

type FleetColumns = (
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn fleet(connection: &Connection) -> Result<FleetSettings, StoreError> {
    let (version, policy, mode, updated, rollout): FleetColumns =
        connection.query_row(query::SELECT_FLEET, [], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
    Ok(FleetSettings {
        policy_version: version as u64,
        policy,
        mode: mode.as_deref().map(mode_from).transpose()?,
        updated_ms: updated.map(|v| v as u64),
        rollout: super::rollout_from(rollout)?,
    })
}

fn top(
    connection: &Connection,
    sql: &str,
    since_ms: u64,
    limit: u32,
) -> Result<Vec<Top>, StoreError> {
    let mut statement = connection.prepare_cached(sql)?;
    let rows = statement.query_map((since_ms as i64, i64::from(limit)), |row| {
        Ok(Top {
            key: row.get(0)?,
            name: row.get(1)?,
            packets: row.get::<_, i64>(2)? as u64,
            events: row.get::<_, i64>(3)? as u64,
            nodes: row.get::<_, i64>(4)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ingest(
        &self,
        report: &Report,
        bound_node: bool,
        now_ms: u64,
    ) -> Result<Ingest, StoreError> {
        let report = report.clone();
        self.with(Use::Write, move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let owner: Option<String> = tx
                .query_row(
                    "SELECT machine_id FROM nodes WHERE node_id = ?1",
                    [&report.node_id],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(owner) = owner
                && !bound_node
                && owner != report.identity.machine_id
            {
                return Ok(Ingest::taken(&report.node_id));
            }
            let inserted = tx.execute(
                "INSERT INTO reports (node_id, stream, seq, received_ms, events) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT DO NOTHING",
                (
                    &report.node_id,
                    &report.stream,
                    report.seq as i64,
                    now_ms as i64,
                    report.events.len() as i64,
                ),
            )?;
            if inserted == 0 {
                return Ok(Ingest::Duplicate);
            }
            {
                let mut insert = tx.prepare_cached(&format!(
                    "INSERT INTO events ({}) VALUES ({})",
                    query::INSERT_EVENT_COLUMNS,
                    (1..=query::INSERT_EVENT_COLUMNS.split(',').count()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
                ))?;
                for event in &report.events {
                    insert.execute(params_from_iter(values(query::event_params(
                        &report.node_id,
                        now_ms,
                        event,
                    ))))?;
                }
                let mut upsert = tx.prepare_cached(&rollup::upsert_one())?;
                for row in rollup::of_report(&report) {
                    upsert.execute((
                        &report.node_id,
                        row.hour_ms as i64,
                        row.kind,
                        &row.dst,
                        &row.process,
                        &row.dst_name,
                        row.packets.min(i64::MAX as u64) as i64,
                        row.events as i64,
                    ))?;
                }
            }
            tx.execute(
                query::INSERT_NODE,
                (&report.node_id, &report.identity.hostname, &report.identity.machine_id, now_ms as i64),
            )?;
            tx.execute(
                query::COUNT_REPORT,
                (&report.node_id, report.events.len() as i64, now_ms as i64),
            )?;
            tx.execute(
                query::UPDATE_NODE_STATE,
                params_from_iter(values(query::node_state_params(&report, now_ms))),
            )?;
            tx.commit()?;
            Ok(Ingest::Stored)
        })
        .await
    }

    async fn node(&self, node_id: &str) -> Result<Option<NodeRow>, StoreError> {
        let node_id = node_id.to_owned();
        self.with(Use::Read, move |connection| {
            let mut statement = connection.prepare_cached(query::SELECT_NODE)?;
            let mut rows = statement.query([&node_id])?;
            rows.next()?.map(rows::node).transpose()
        })
        .await
    }

    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.with(Use::Read, |connection| {
            let mut statement = connection.prepare_cached(query::SELECT_NODES)?;
            let mut rows = statement.query([])?;
            let mut nodes = Vec::new();
            while let Some(row) = rows.next()? {
                nodes.push(rows::node(row)?);
            }
            Ok(nodes)
        })
        .await
    }

    async fn violations(&self, filter: &ViolationFilter) -> Result<Vec<Violation>, StoreError> {
        let (sql, params) = query::violations(filter);
        self.with(Use::Read, move |connection| {
            let mut statement = connection.prepare(&sql)?;
            let mut rows = statement.query(params_from_iter(values(params)))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(rows::violation(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn top(&self, since_ms: u64, limit: u32) -> Result<(Vec<Top>, Vec<Top>), StoreError> {
        let from_hour = rollup::hour(since_ms);
        self.with(Use::Read, move |connection| {
            Ok((
                top(connection, rollup::TOP_DESTINATIONS, from_hour, limit)?,
                top(connection, rollup::TOP_PROCESSES, from_hour, limit)?,
            ))
        })
        .await
    }

    async fn hours(&self, since_ms: u64) -> Result<Vec<super::Hour>, StoreError> {
        let from_hour = rollup::hour(since_ms) as i64;
        self.with(Use::Read, move |connection| {
            let mut statement = connection.prepare_cached(rollup::HOURS)?;
            let rows = statement.query_map([from_hour], |row| {
                Ok(super::Hour {
                    hour_ms: row.get::<_, i64>(0)? as u64,
                    flow_packets: row.get::<_, i64>(1)? as u64,
                    dns_violations: row.get::<_, i64>(2)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn fleet(&self) -> Result<FleetSettings, StoreError> {
        self.with(Use::Write, |connection| fleet(connection)).await
    }

    async fn set_policy(
        &self,
        text: &str,
        now_ms: u64,
        actor: &str,
        expected: Option<u64>,
    ) -> Result<PolicyChange, StoreError> {
        let (text, actor) = (text.to_owned(), actor.to_owned());
        self.with(Use::Write, move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(decided) = PolicyChange::decide(&fleet(&tx)?, &text, expected) {
                return Ok(decided);
            }
            tx.execute(query::SET_POLICY, (&text, now_ms as i64))?;
            tx.execute(query::RECORD_POLICY, [])?;
            tx.execute(query::RECORD_CHANGE, ["policy", actor.as_str()])?;
            let fleet = fleet(&tx)?;
            tx.commit()?;
            Ok(PolicyChange::Set(fleet))
        })
        .await
    }

    async fn transition(
        &self,
        transition: crate::rollout::Transition,
        now_ms: u64,
        actor: &str,
    ) -> Result<Result<FleetSettings, crate::rollout::Refusal>, StoreError> {
        let actor = actor.to_owned();
        self.with(Use::Write, move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let plan = match crate::rollout::plan(fleet(&tx)?.current(), transition, now_ms, &actor)
            {
                Ok(plan) => plan,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let now = now_ms as i64;
            if let Some(text) = &plan.new_policy {
                tx.execute(query::SET_POLICY, (text, now))?;
                tx.execute(query::RECORD_POLICY, [])?;
            }
            if let Some((version, policy, mode)) = &plan.restore {
                tx.execute(
                    query::RESTORE_FLEET,
                    (*version as i64, policy, mode.map(|m| m.as_str()), now),
                )?;
            }
            if let Some(mode) = plan.mode {
                tx.execute(query::SET_MODE, (mode.as_str(), now))?;
            }
            let rollout = plan.rollout.as_ref().map(super::to_json);
            tx.execute(query::SET_ROLLOUT, (rollout, now))?;
            tx.execute(query::RECORD_CHANGE, [plan.change, actor.as_str()])?;
            let fleet = fleet(&tx)?;
            tx.commit()?;
            Ok(Ok(fleet))
        })
        .await
    }

    async fn history(&self, limit: u32) -> Result<Vec<FleetChange>, StoreError> {
        self.with(Use::Read, move |connection| {
            let mut statement = connection.prepare_cached(query::SELECT_CHANGES)?;
            let mut rows = statement.query([i64::from(limit)])?;
            let mut changes = Vec::new();
            while let Some(row) = rows.next()? {
                changes.push(rows::change(row)?);
            }
            Ok(changes)
        })
        .await
    }

    async fn policy_version(&self, version: u64) -> Result<Option<(String, u64)>, StoreError> {
        self.with(Use::Read, move |connection| {
            Ok(connection
                .query_row(query::SELECT_POLICY_VERSION, [version as i64], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
                })
                .optional()?)
        })
        .await
    }

    async fn forget(&self, node_id: &str) -> Result<bool, StoreError> {
        let node_id = node_id.to_owned();
        self.with(Use::Write, move |connection| {
            let tx = connection.transaction()?;
            tx.execute(query::UNBIND_NODE, [&node_id])?;
            let forgotten = tx.execute(query::FORGET_NODE, [&node_id])? > 0;
            tx.commit()?;
            Ok(forgotten)
        })
        .await
    }

    async fn issue_nonce(
        &self,
        nonce: &str,
        node_id: &str,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError> {
        let (nonce, node_id) = (nonce.to_owned(), node_id.to_owned());
        self.with(Use::Write, move |connection| {
            connection.execute(query::EXPIRE_NONCES, [now_ms as i64])?;
            Ok(connection.execute(query::ISSUE_NONCE, (&nonce, &node_id, expires_ms as i64))? > 0)
        })
        .await
    }

    async fn take_nonce(
        &self,
        nonce: &str,
        node_id: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (nonce, node_id) = (nonce.to_owned(), node_id.to_owned());
        self.with(Use::Write, move |connection| {
            Ok(connection.execute(query::TAKE_NONCE, (&nonce, &node_id, now_ms as i64))? > 0)
        })
        .await
    }

    async fn bind(
        &self,
        node_id: &str,
        vm_id: &str,
        credential: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (node_id, vm_id, credential) =
            (node_id.to_owned(), vm_id.to_owned(), credential.to_owned());
        self.with(Use::Write, move |connection| {
            Ok(connection.execute(
                query::BIND_NODE,
                (&node_id, &vm_id, &credential, now_ms as i64),
            )? > 0)
        })
        .await
    }

    async fn credential_owner(
        &self,
        credential: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let credential = credential.to_owned();
        self.with(Use::Write, move |connection| {
            Ok(connection
                .query_row(query::CREDENTIAL_OWNER, [&credential], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?)
        })
        .await
    }

    async fn vm_owner(&self, vm_id: &str) -> Result<Option<String>, StoreError> {
        let vm_id = vm_id.to_owned();
        self.with(Use::Write, move |connection| {
            Ok(connection
                .query_row(query::VM_OWNER, [&vm_id], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    async fn export_lease(
        &self,
        endpoint: &str,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<i64>, StoreError> {
        let (endpoint, holder) = (endpoint.to_owned(), holder.to_owned());
        self.with(Use::Write, move |connection| {
            connection.execute(query::ADD_EXPORT_CURSOR, [&endpoint])?;
            Ok(connection
                .query_row(
                    query::LEASE_EXPORT,
                    (&endpoint, &holder, now_ms as i64, until_ms as i64),
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn export_advance(
        &self,
        endpoint: &str,
        holder: &str,
        from: i64,
        to: i64,
    ) -> Result<bool, StoreError> {
        let (endpoint, holder) = (endpoint.to_owned(), holder.to_owned());
        self.with(Use::Write, move |connection| {
            Ok(connection.execute(query::ADVANCE_EXPORT, (&endpoint, &holder, from, to))? > 0)
        })
        .await
    }

    async fn bound(&self, node_id: &str) -> Result<bool, StoreError> {
        let node_id = node_id.to_owned();
        self.with(Use::Write, move |connection| {
            let count: i64 =
                connection.query_row(query::NODE_BOUND, [&node_id], |row| row.get(0))?;
            Ok(count > 0)
        })
        .await
    }

    async fn prune_batch(&self, before_ms: u64, batch: u32) -> Result<Option<Pruned>, StoreError> {
        self.with(Use::Write, move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let params = (before_ms as i64, i64::from(batch));
            let events = tx.execute(query::PRUNE_EVENTS, params)?;
            let reports = tx.execute(query::PRUNE_REPORTS, params)?;
            let rollups = tx.execute(
                rollup::PRUNE,
                (rollup::hour(before_ms) as i64, i64::from(batch)),
            )?;
            tx.commit()?;
            Ok(Some(Pruned {
                events: events as u64,
                reports: reports as u64,
                rollups: rollups as u64,
            }))
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let path = self.path.clone();
        Ok(["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut name = path.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).ok()
            })
            .map(|m| m.len())
            .sum())
    }
}
