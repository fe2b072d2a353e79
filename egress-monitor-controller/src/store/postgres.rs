//! The shared store: PostgreSQL, for fleets that outgrow one controller. Controllers keep no
//! state of their own, so several replicas behind one load balancer share one database; every
//! write is one transaction, and per-node work is serialised with a row lock.
//!
//! Connections come from a pool (deadpool-postgres), without TLS: run the database on the
//! controllers' private network or loopback.

use std::{path::Path, sync::Arc};

use deadpool_postgres::{Config, Pool, Runtime};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres::{NoTls, Row, types::ToSql};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    FleetChange, FleetSettings, Ingest, NodeRow, PolicyChange, Pruned, Store, StoreError, Top,
    Violation, ViolationFilter, migrate, mode_from, process_name,
    query::{self, Param, pg},
    rollup, rows,
};
use egress_monitor_api::{time::now_ms, wire::Report};

/// The advisory lock migrations run under (transaction-level).
const MIGRATION_LOCK: i64 = 7_266_420;
/// The advisory lock a replica prunes under: one at a time.
const PRUNE_LOCK: i64 = 7_266_421;
/// The advisory lock that orders event ids with commits (see `ingest`).
const EVENTS_LOCK: i64 = 7_266_422;

/// Inserts a report's events in one statement: the node and time once, each column an array.
const INSERT_EVENTS: &str = "INSERT INTO events (node_id, received_ms, ts_ms, kind, hook, action, proto, src, dst, \
     dst_port, dst_name, rule, pid, comm, exe, process, cgroup, packets, bytes, tunnel_score) \
     SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[], $13::bigint[], $14::text[], \
     $15::text[], $16::text[], $17::text[], $18::bigint[], $19::bigint[], $20::bigint[])";

/// The longest a request waits for a pooled connection, a new one, or a health check of one.
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct PgStore {
    pool: Pool,
}

type Boxed = Box<dyn ToSql + Sync + Send>;

fn boxed(params: Vec<Param>) -> Vec<Boxed> {
    params
        .into_iter()
        .map(|param| -> Boxed {
            match param {
                Param::Int(v) => Box::new(v),
                Param::Text(v) => Box::new(v),
            }
        })
        .collect()
}

fn refs(params: &[Boxed]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Whether `url` asks for TLS (`sslmode=require`): then the server's certificate is verified,
/// against `--db-ca` or the public roots (stricter than libpq's `require`, which only
/// encrypts). Without it the connection is in the clear, as with libpq's `disable`.
pub fn requires_tls(url: &str) -> bool {
    url.parse::<tokio_postgres::Config>()
        .is_ok_and(|config| config.get_ssl_mode() == tokio_postgres::config::SslMode::Require)
}

/// The TLS client for `sslmode=require`: rustls (ring), the server's certificate verified
/// against the CA certificates in `ca` (PEM) or, without it, the public roots.
fn tls_connector(ca: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| StoreError::CaRead {
                path: path.display().to_string(),
                source,
            })?;
            let bad = |message: String| StoreError::Ca {
                path: path.display().to_string(),
                message,
            };
            // Only the certificates: other items (keys) are passed over.
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| bad(err.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".to_owned()));
            }
            for cert in certs {
                roots.add(cert).map_err(|err| bad(err.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| StoreError::Ca {
        path: "(the TLS setup)".to_owned(),
        message: err.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl PgStore {
    /// Connects (over verified TLS when the URL says `sslmode=require`; see [`requires_tls`])
    /// and creates the schema.
    pub async fn open(url: &str, ca: Option<&Path>) -> Result<PgStore, StoreError> {
        // Bounded waits: a database that went away fails requests (503, nodes retry) instead
        // of holding them until TCP gives up.
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(POOL_TIMEOUT),
            create: Some(POOL_TIMEOUT),
            recycle: Some(POOL_TIMEOUT),
        };
        let config = Config {
            url: Some(url.to_owned()),
            pool: Some(deadpool_postgres::PoolConfig {
                timeouts,
                ..deadpool_postgres::PoolConfig::default()
            }),
            ..Config::default()
        };
        let pool = if requires_tls(url) {
            config.create_pool(Some(Runtime::Tokio1), tls_connector(ca)?)?
        } else {
            config.create_pool(Some(Runtime::Tokio1), NoTls)?
        };
        let mut client = pool.get().await?;
        // Replicas starting together: migrations run under a transaction-level lock, which
        // is released only when the transaction (and the schema it made) is committed.
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(migrate::MIGRATIONS_TABLE).await?;
        let current: i64 = tx.query_one(migrate::CURRENT_VERSION, &[]).await?.get(0);
        for migration in migrate::pending(current) {
            tx.batch_execute(&(migration.sql)(&migrate::POSTGRES))
                .await?;
            tx.execute(
                &pg(migrate::RECORD),
                &[&migration.version, &migration.name, &(now_ms() as i64)],
            )
            .await?;
            log::info!(
                "database schema migrated to version {}: {}",
                migration.version,
                migration.name
            );
        }
        tx.commit().await?;
        migrate::warn_if_newer(current);
        drop(client);
        Ok(PgStore { pool })
    }
}

fn fleet_from(row: &Row) -> Result<FleetSettings, StoreError> {
    Ok(FleetSettings {
        policy_version: row.get::<_, i64>(0) as u64,
        policy: row.get(1),
        mode: row
            .get::<_, Option<String>>(2)
            .as_deref()
            .map(mode_from)
            .transpose()?,
        updated_ms: row.get::<_, Option<i64>>(3).map(|v| v as u64),
        rollout: super::rollout_from(row.get(4))?,
    })
}

/// The fleet's row, locked until `tx` ends: two replicas deciding a change of the fleet at
/// once decide one after the other.
async fn locked_fleet(tx: &tokio_postgres::Transaction<'_>) -> Result<FleetSettings, StoreError> {
    fleet_from(
        &tx.query_one(&format!("{} FOR UPDATE", query::SELECT_FLEET), &[])
            .await?,
    )
}

fn top_from(row: &Row) -> Top {
    Top {
        key: row.get(0),
        name: row.get(1),
        packets: row.get::<_, i64>(2) as u64,
        events: row.get::<_, i64>(3) as u64,
        nodes: row.get::<_, i64>(4) as u64,
    }
}

/// PostgreSQL's `SUM(bigint)` is numeric: cast it back.
fn top_sql(sql: &str) -> String {
    pg(sql)
        .replace("SUM(packets)", "SUM(packets)::bigint")
        .replace("SUM(events)", "SUM(events)::bigint")
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ingest(
        &self,
        report: &Report,
        bound_node: bool,
        now_ms: u64,
    ) -> Result<Ingest, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Create the row first so that FOR UPDATE serialises this node's reports across replicas.
        let insert = boxed(vec![
            report.node_id.as_str().into(),
            report.identity.hostname.as_str().into(),
            report.identity.machine_id.as_str().into(),
            now_ms.into(),
        ]);
        let owner_row = tx
            .query_opt(
                "SELECT machine_id, reports FROM nodes WHERE node_id = $1 FOR UPDATE",
                &[&report.node_id],
            )
            .await?;
        if owner_row.is_none() {
            tx.execute(&pg(query::INSERT_NODE), &refs(&insert)).await?;
        }
        let row = tx
            .query_one(
                "SELECT machine_id, reports FROM nodes WHERE node_id = $1 FOR UPDATE",
                &[&report.node_id],
            )
            .await?;
        let owner: String = row.get(0);
        let reports: i64 = row.get(1);
        if reports > 0 && !bound_node && owner != report.identity.machine_id {
            return Ok(Ingest::taken(&report.node_id));
        }
        let inserted = tx
            .execute(
                "INSERT INTO reports (node_id, stream, seq, received_ms, events) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT DO NOTHING",
                &[
                    &report.node_id,
                    &report.stream,
                    &(report.seq as i64),
                    &(now_ms as i64),
                    &(report.events.len() as i64),
                ],
            )
            .await?;
        if inserted == 0 {
            return Ok(Ingest::Duplicate);
        }
        let rollups = rollup::of_report(report);
        if !rollups.is_empty() {
            let column = |f: &dyn Fn(&rollup::Rollup) -> i64| -> Vec<i64> {
                rollups.iter().map(f).collect()
            };
            let text = |f: &dyn Fn(&rollup::Rollup) -> Option<String>| -> Vec<Option<String>> {
                rollups.iter().map(f).collect()
            };
            tx.execute(
                &rollup::upsert_many(),
                &[
                    &report.node_id,
                    &column(&|r| r.hour_ms as i64),
                    &text(&|r| Some(r.kind.to_owned())),
                    &text(&|r| Some(r.dst.clone())),
                    &text(&|r| Some(r.process.clone())),
                    &text(&|r| r.dst_name.clone()),
                    &column(&|r| r.packets.min(i64::MAX as u64) as i64),
                    &column(&|r| r.events as i64),
                ],
            )
            .await?;
        }
        let count = boxed(vec![
            report.node_id.as_str().into(),
            (report.events.len() as i64).into(),
            now_ms.into(),
        ]);
        tx.execute(&pg(query::COUNT_REPORT), &refs(&count)).await?;
        let state = boxed(query::node_state_params(report, now_ms));
        tx.execute(&pg(query::UPDATE_NODE_STATE), &refs(&state))
            .await?;
        if !report.events.is_empty() {
            // Event ids are the arrival cursor (`after=`, the OTLP export): a transaction
            // holding a lower id must not commit after one holding a higher id, or a reader
            // between the two would move past the lower one for good. So the events go last,
            // and their insert and commit hold a lock every replica's ingest takes: ids become
            // visible in order. (Reports without events do not take it.)
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
                .await?;
            let events = &report.events;
            let ints = |f: &dyn Fn(&egress_monitor_api::wire::FlowEvent) -> Option<i64>| -> Vec<Option<i64>> {
                events.iter().map(f).collect()
            };
            let texts = |f: &dyn Fn(&egress_monitor_api::wire::FlowEvent) -> Option<String>| -> Vec<Option<String>> {
                events.iter().map(f).collect()
            };
            let ts = ints(&|e| Some(e.ts_ms as i64));
            let kind = texts(&|e| Some(e.kind.to_string()));
            let hook = texts(&|e| Some(e.hook.to_string()));
            let action = texts(&|e| Some(e.action.to_string()));
            let proto = texts(&|e| Some(e.proto.clone()));
            let src = texts(&|e| e.src.map(|a| a.to_string()));
            let dst = texts(&|e| e.dst.map(|a| a.to_string()));
            let dst_port = ints(&|e| e.dst_port.map(i64::from));
            let dst_name = texts(&|e| e.dst_name.clone());
            let rule = texts(&|e| Some(e.rule.clone()));
            let pid = ints(&|e| e.pid.map(i64::from));
            let comm = texts(&|e| e.comm.clone());
            let exe = texts(&|e| e.exe.clone());
            let process = texts(&process_name);
            let cgroup = texts(&|e| e.cgroup.clone());
            let packets = ints(&|e| Some(e.packets as i64));
            let bytes = ints(&|e| Some(e.bytes as i64));
            let tunnel_score = ints(&|e| e.tunnel_score.map(i64::from));
            tx.execute(
                INSERT_EVENTS,
                &[
                    &report.node_id,
                    &(now_ms as i64),
                    &ts,
                    &kind,
                    &hook,
                    &action,
                    &proto,
                    &src,
                    &dst,
                    &dst_port,
                    &dst_name,
                    &rule,
                    &pid,
                    &comm,
                    &exe,
                    &process,
                    &cgroup,
                    &packets,
                    &bytes,
                    &tunnel_score,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Ingest::Stored)
    }

    async fn node(&self, node_id: &str) -> Result<Option<NodeRow>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(&pg(query::SELECT_NODE), &[&node_id])
            .await?;
        row.as_ref().map(rows::node).transpose()
    }

    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client.query(query::SELECT_NODES, &[]).await?;
        rows.iter().map(rows::node).collect()
    }

    async fn violations(&self, filter: &ViolationFilter) -> Result<Vec<Violation>, StoreError> {
        let (sql, params) = query::violations(filter);
        let params = boxed(params);
        let client = self.pool.get().await?;
        let rows = client.query(&pg(&sql), &refs(&params)).await?;
        rows.iter().map(rows::violation).collect()
    }

    async fn top(&self, since_ms: u64, limit: u32) -> Result<(Vec<Top>, Vec<Top>), StoreError> {
        let client = self.pool.get().await?;
        let from_hour = rollup::hour(since_ms) as i64;
        let params: [&(dyn ToSql + Sync); 2] = [&from_hour, &i64::from(limit)];
        let destinations = client
            .query(&top_sql(rollup::TOP_DESTINATIONS), &params)
            .await?;
        let processes = client
            .query(
                &top_sql(rollup::TOP_PROCESSES).replace("NULL,", "NULL::text,"),
                &params,
            )
            .await?;
        Ok((
            destinations.iter().map(top_from).collect(),
            processes.iter().map(top_from).collect(),
        ))
    }

    async fn hours(&self, since_ms: u64) -> Result<Vec<super::Hour>, StoreError> {
        let client = self.pool.get().await?;
        let from_hour = rollup::hour(since_ms) as i64;
        let rows = client.query(&pg(rollup::HOURS), &[&from_hour]).await?;
        Ok(rows
            .iter()
            .map(|row| super::Hour {
                hour_ms: row.get::<_, i64>(0) as u64,
                flow_packets: row.get::<_, i64>(1) as u64,
                dns_violations: row.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    async fn fleet(&self) -> Result<FleetSettings, StoreError> {
        let client = self.pool.get().await?;
        fleet_from(&client.query_one(query::SELECT_FLEET, &[]).await?)
    }

    async fn set_policy(
        &self,
        text: &str,
        now_ms: u64,
        actor: &str,
        expected: Option<u64>,
    ) -> Result<PolicyChange, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = locked_fleet(&tx).await?;
        if let Some(decided) = PolicyChange::decide(&current, text, expected) {
            return Ok(decided);
        }
        tx.execute(&pg(query::SET_POLICY), &[&text, &(now_ms as i64)])
            .await?;
        tx.execute(query::RECORD_POLICY, &[]).await?;
        tx.execute(&pg(query::RECORD_CHANGE), &[&"policy", &actor])
            .await?;
        let fleet = fleet_from(&tx.query_one(query::SELECT_FLEET, &[]).await?)?;
        tx.commit().await?;
        Ok(PolicyChange::Set(fleet))
    }

    async fn transition(
        &self,
        transition: crate::rollout::Transition,
        now_ms: u64,
        actor: &str,
    ) -> Result<Result<FleetSettings, crate::rollout::Refusal>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = locked_fleet(&tx).await?;
        let plan = match crate::rollout::plan(current.current(), transition, now_ms, actor) {
            Ok(plan) => plan,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let now = now_ms as i64;
        if let Some(text) = &plan.new_policy {
            tx.execute(&pg(query::SET_POLICY), &[text, &now]).await?;
            tx.execute(query::RECORD_POLICY, &[]).await?;
        }
        if let Some((version, policy, mode)) = &plan.restore {
            let mode = mode.map(|m| m.as_str());
            tx.execute(
                &pg(query::RESTORE_FLEET),
                &[&(*version as i64), policy, &mode, &now],
            )
            .await?;
        }
        if let Some(mode) = plan.mode {
            tx.execute(&pg(query::SET_MODE), &[&mode.as_str(), &now])
                .await?;
        }
        let rollout = plan.rollout.as_ref().map(super::to_json);
        tx.execute(&pg(query::SET_ROLLOUT), &[&rollout, &now])
            .await?;
        tx.execute(&pg(query::RECORD_CHANGE), &[&plan.change, &actor])
            .await?;
        let fleet = fleet_from(&tx.query_one(query::SELECT_FLEET, &[]).await?)?;
        tx.commit().await?;
        Ok(Ok(fleet))
    }

    async fn history(&self, limit: u32) -> Result<Vec<FleetChange>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(&pg(query::SELECT_CHANGES), &[&i64::from(limit)])
            .await?;
        rows.iter().map(rows::change).collect()
    }

    async fn policy_version(&self, version: u64) -> Result<Option<(String, u64)>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(&pg(query::SELECT_POLICY_VERSION), &[&(version as i64)])
            .await?;
        Ok(row.map(|row| (row.get(0), row.get::<_, i64>(1) as u64)))
    }

    async fn forget(&self, node_id: &str) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(&pg(query::UNBIND_NODE), &[&node_id]).await?;
        let forgotten = tx.execute(&pg(query::FORGET_NODE), &[&node_id]).await? > 0;
        tx.commit().await?;
        Ok(forgotten)
    }

    async fn issue_nonce(
        &self,
        nonce: &str,
        node_id: &str,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(&pg(query::EXPIRE_NONCES), &[&(now_ms as i64)])
            .await?;
        Ok(client
            .execute(
                &pg(query::ISSUE_NONCE),
                &[&nonce, &node_id, &(expires_ms as i64)],
            )
            .await?
            > 0)
    }

    async fn take_nonce(
        &self,
        nonce: &str,
        node_id: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                &pg(query::TAKE_NONCE),
                &[&nonce, &node_id, &(now_ms as i64)],
            )
            .await?
            > 0)
    }

    async fn bind(
        &self,
        node_id: &str,
        vm_id: &str,
        credential: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                &pg(query::BIND_NODE),
                &[&node_id, &vm_id, &credential, &(now_ms as i64)],
            )
            .await?
            > 0)
    }

    async fn credential_owner(
        &self,
        credential: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(&pg(query::CREDENTIAL_OWNER), &[&credential])
            .await?
            .map(|row| (row.get(0), row.get(1))))
    }

    async fn vm_owner(&self, vm_id: &str) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(&pg(query::VM_OWNER), &[&vm_id])
            .await?
            .map(|row| row.get(0)))
    }

    async fn export_lease(
        &self,
        endpoint: &str,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(&pg(query::ADD_EXPORT_CURSOR), &[&endpoint])
            .await?;
        Ok(client
            .query_opt(
                &pg(query::LEASE_EXPORT),
                &[&endpoint, &holder, &(now_ms as i64), &(until_ms as i64)],
            )
            .await?
            .map(|row| row.get(0)))
    }

    async fn export_advance(
        &self,
        endpoint: &str,
        holder: &str,
        from: i64,
        to: i64,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                &pg(query::ADVANCE_EXPORT),
                &[&endpoint, &holder, &from, &to],
            )
            .await?
            > 0)
    }

    async fn bound(&self, node_id: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let count: i64 = client
            .query_one(&pg(query::NODE_BOUND), &[&node_id])
            .await?
            .get(0);
        Ok(count > 0)
    }

    async fn prune_batch(&self, before_ms: u64, batch: u32) -> Result<Option<Pruned>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let leader: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
            .await?
            .get(0);
        if !leader {
            return Ok(None);
        }
        let params: [&(dyn ToSql + Sync); 2] = [&(before_ms as i64), &i64::from(batch)];
        let events = tx.execute(&pg(query::PRUNE_EVENTS), &params).await?;
        let reports = tx.execute(&pg(query::PRUNE_REPORTS), &params).await?;
        let rollups = tx
            .execute(
                &pg(rollup::PRUNE),
                &[&(rollup::hour(before_ms) as i64), &i64::from(batch)],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(Pruned {
            events,
            reports,
            rollups,
        }))
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}
