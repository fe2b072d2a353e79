//! Where the controller keeps nodes, reports, violations and the fleet policy: one interface,
//! two implementations. [`sqlite`] is embedded (the default, nothing to install); [`postgres`]
//! lets several stateless controller replicas share one database server.
//!
//! Every report is stored in one transaction keyed by (node, stream, seq): a report sent again
//! (a retry after a lost reply, a replayed spool) changes nothing and is answered as such.

mod migrate;
pub mod postgres;
mod query;
mod rollup;
mod rows;
pub mod sqlite;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::Serialize;

use egress_monitor_api::Mode;
use egress_monitor_api::wire::{FlowEvent, Health, NodeCounters, Report};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot get a PostgreSQL connection")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("cannot set up the PostgreSQL connection pool")]
    PoolSetup(#[from] deadpool_postgres::CreatePoolError),
    #[error("the stored {what} is unreadable: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("`{0}` is not a database: use sqlite:PATH or postgres://USER@HOST/DB")]
    Url(String),
    #[error("cannot create the database directory {path}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the database task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot read the database CA file {path}")]
    CaRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the database CA file {path} is unusable: {message}")]
    Ca { path: String, message: String },
}

/// What storing a report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ingest {
    Stored,
    /// This (node, stream, seq) was stored before; nothing changed.
    Duplicate,
    /// Refused: the node id belongs to another machine (a fleet token cannot take it over).
    Conflict(String),
}

impl Ingest {
    /// The refusal of a fleet token reporting for a node id another machine registered. It
    /// names neither the owner's machine id nor anything else of it: a forger would send it.
    fn taken(node_id: &str) -> Ingest {
        Ingest::Conflict(format!(
            "node id `{node_id}` is registered to another machine; a fleet token cannot report for it (give this node its own --node-id, or a `NODE_ID TOKEN` line)"
        ))
    }
}

/// A node as its newest report describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub node_id: String,
    pub hostname: String,
    pub machine_id: String,
    pub vm_id: Option<String>,
    /// The node's group (`--node-group`, or its Azure scale set).
    pub group: Option<String>,
    pub mode: Mode,
    pub policy_version: String,
    pub fleet_version: Option<u64>,
    pub policy_error: Option<String>,
    pub interval_s: u32,
    pub first_seen_ms: u64,
    /// When the controller last received a report from it (controller clock).
    pub last_seen_ms: u64,
    pub stream: String,
    pub last_seq: u64,
    pub counters: NodeCounters,
    pub health: Health,
    pub reports: u64,
    pub events: u64,
    /// The node's latest self-check (continuous proof), when it sent one.
    pub proof: Option<NodeProof>,
}

/// A node's proof as stored: what it sent, and when the check ran on the controller's clock
/// (the report's age of the check, taken from when the report arrived).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NodeProof {
    #[serde(flatten)]
    pub proof: egress_monitor_api::wire::Proof,
    pub checked_at_ms: u64,
}

impl NodeProof {
    pub fn received(proof: egress_monitor_api::wire::Proof, report: &Report, now_ms: u64) -> Self {
        let age = report.created_ms.saturating_sub(proof.checked_ms);
        NodeProof {
            checked_at_ms: now_ms.saturating_sub(age),
            proof,
        }
    }
}

/// A stored violation: a flow event and the node that sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Increasing in the order stored: `before` pages with it.
    pub id: i64,
    pub node_id: String,
    pub received_ms: u64,
    #[serde(flatten)]
    pub event: FlowEvent,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViolationFilter {
    pub node: Option<String>,
    /// One kind of event: `dns` for DNS questions, or a flow event's kind.
    pub kind: Option<egress_monitor_api::wire::FlowKind>,
    /// The rule that decided (its name; `default` when none matched).
    pub rule: Option<String>,
    /// An address (as text) or the name it was resolved from.
    pub destination: Option<String>,
    /// An executable's path or base name, or a command name.
    pub process: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only ids below this one (the next page, newest first).
    pub before: Option<i64>,
    /// Only ids above this one, oldest first: the arrival-order cursor of a poller (ids grow in
    /// the order violations are stored, whatever the nodes' clocks say).
    pub after: Option<i64>,
    pub limit: u32,
}

/// The most frequent destinations or processes since a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Top {
    pub key: String,
    /// The resolved name of a destination, when one was seen.
    pub name: Option<String>,
    pub packets: u64,
    pub events: u64,
    pub nodes: u64,
}

/// One hour of violations across the fleet (from the rollups).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Hour {
    pub hour_ms: u64,
    /// Denied packets of flows (observed or dropped).
    pub flow_packets: u64,
    /// DNS violations (questions refused or that would be, tunnelling-like names).
    pub dns_violations: u64,
}

/// What one pruning batch removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub reports: u64,
    pub rollups: u64,
}

impl Pruned {
    /// Whether a batch of `batch` rows left nothing more to remove.
    pub fn last(&self, batch: u32) -> bool {
        let batch = u64::from(batch);
        self.events < batch && self.reports < batch && self.rollups < batch
    }
}

/// The fleet's policy and mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetSettings {
    pub policy_version: u64,
    pub policy: Option<String>,
    pub mode: Option<Mode>,
    pub updated_ms: Option<u64>,
    /// The staged rollout in progress, if one is (see [`crate::rollout`]).
    pub rollout: Option<crate::rollout::Rollout>,
}

impl FleetSettings {
    /// The fleet as a rollout transition is decided from.
    pub fn current(&self) -> crate::rollout::Current<'_> {
        crate::rollout::Current {
            policy_version: self.policy_version,
            policy: self.policy.as_deref(),
            mode: self.mode,
            rollout: self.rollout.as_ref(),
        }
    }
}

/// What storing a fleet policy did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// A new version.
    Set(FleetSettings),
    /// The text is the current policy's: no new version.
    Unchanged(FleetSettings),
    /// The fleet is not at the expected version (someone changed it since): nothing changed.
    Moved(FleetSettings),
    /// A staged rollout is in progress: the fleet's policy waits for its end.
    InRollout(FleetSettings),
}

impl PolicyChange {
    /// The decision, from the fleet as it was and what was asked.
    fn decide(current: &FleetSettings, text: &str, expected: Option<u64>) -> Option<PolicyChange> {
        if current.rollout.is_some() {
            Some(PolicyChange::InRollout(current.clone()))
        } else if expected.is_some_and(|version| version != current.policy_version) {
            Some(PolicyChange::Moved(current.clone()))
        } else if current.policy.as_deref() == Some(text) {
            Some(PolicyChange::Unchanged(current.clone()))
        } else {
            None
        }
    }
}

/// One change of the fleet's policy or mode, and the wishes it left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetChange {
    pub at_ms: u64,
    /// `policy` or `mode`.
    pub change: String,
    pub policy_version: u64,
    pub mode: Option<Mode>,
    /// The name of the operator's token that made it.
    pub actor: Option<String>,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Stores a validated report once. `bound_node` is true when the caller's token is bound to
    /// this node id; a fleet token may only report for the machine that first took the id.
    async fn ingest(
        &self,
        report: &Report,
        bound_node: bool,
        now_ms: u64,
    ) -> Result<Ingest, StoreError>;
    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError>;
    /// One node, by id.
    async fn node(&self, node_id: &str) -> Result<Option<NodeRow>, StoreError>;
    async fn violations(&self, filter: &ViolationFilter) -> Result<Vec<Violation>, StoreError>;
    /// Top destinations and processes of flows (by packets) from the hour of `since_ms` on,
    /// from the hourly rollups.
    async fn top(&self, since_ms: u64, limit: u32) -> Result<(Vec<Top>, Vec<Top>), StoreError>;
    /// Violations per hour from the hour of `since_ms` on, from the hourly rollups.
    async fn hours(&self, since_ms: u64) -> Result<Vec<Hour>, StoreError>;
    async fn fleet(&self) -> Result<FleetSettings, StoreError>;
    /// Stores a new fleet policy; its version is the previous one plus one. `actor` (the
    /// operator's token name) goes into the history. The same text as the current policy
    /// changes nothing; with `expected`, only a fleet still at that version changes.
    async fn set_policy(
        &self,
        text: &str,
        now_ms: u64,
        actor: &str,
        expected: Option<u64>,
    ) -> Result<PolicyChange, StoreError>;
    /// Carries out a rollout transition as [`crate::rollout::plan`] decides it from the fleet
    /// as it is, under the fleet row's lock (two replicas deciding at once decide one after
    /// the other). The inner `Err` says why nothing was written.
    async fn transition(
        &self,
        transition: crate::rollout::Transition,
        now_ms: u64,
        actor: &str,
    ) -> Result<Result<FleetSettings, crate::rollout::Refusal>, StoreError>;
    /// The newest `limit` changes of the fleet's policy and mode, newest first.
    async fn history(&self, limit: u32) -> Result<Vec<FleetChange>, StoreError>;
    /// A fleet policy version as it was set: its text and when.
    async fn policy_version(&self, version: u64) -> Result<Option<(String, u64)>, StoreError>;
    /// Forgets a node (one scaled in for good): its row and its binding to a VM go, its
    /// violations stay. False when there was no such node. A node that reports again is a new
    /// node.
    async fn forget(&self, node_id: &str) -> Result<bool, StoreError>;
    /// Removes at most `batch` violations, `batch` report keys received before `before_ms` and
    /// `batch` rollup rows of hours before it, in one short transaction, so that ingestion
    /// never waits long behind pruning. Returns how many of each went, or `None` when another
    /// replica is pruning at this moment (only one does at a time).
    async fn prune_batch(&self, before_ms: u64, batch: u32) -> Result<Option<Pruned>, StoreError>;
    /// Keeps a nonce given out to `node_id` until `expires_ms`, dropping expired ones. False
    /// when the nonce is taken (draw another).
    async fn issue_nonce(
        &self,
        nonce: &str,
        node_id: &str,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError>;
    /// Uses a nonce up: true when it was given out to `node_id` and has not expired.
    async fn take_nonce(&self, nonce: &str, node_id: &str, now_ms: u64)
    -> Result<bool, StoreError>;
    /// Binds `node_id` to `vm_id` with a new credential (its SHA-256, hex), replacing the
    /// credential an earlier attestation of the same VM got. False, and nothing changes, when
    /// the id is bound to another VM.
    async fn bind(
        &self,
        node_id: &str,
        vm_id: &str,
        credential: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError>;
    /// The node id a credential (its SHA-256, hex) belongs to, and the VM it is bound to.
    async fn credential_owner(
        &self,
        credential: &str,
    ) -> Result<Option<(String, String)>, StoreError>;
    /// The node id a VM is bound to.
    async fn vm_owner(&self, vm_id: &str) -> Result<Option<String>, StoreError>;
    /// Whether the node id is bound to a VM (then only its own credential reports for it).
    async fn bound(&self, node_id: &str) -> Result<bool, StoreError>;
    /// Takes or renews the OTLP export lease of `endpoint` for `holder` until `until_ms`, and
    /// returns the id of the last violation exported there (0: none yet). `None` while
    /// another replica's lease runs: one replica exports at a time, another takes over when
    /// its lease lapses.
    async fn export_lease(
        &self,
        endpoint: &str,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<i64>, StoreError>;
    /// Moves the export cursor of `endpoint` from `from` to `to`, if `holder` still holds the
    /// lease and nobody moved it meanwhile.
    async fn export_advance(
        &self,
        endpoint: &str,
        holder: &str,
        from: i64,
        to: i64,
    ) -> Result<bool, StoreError>;
    /// Bytes the database takes on disk.
    async fn size_bytes(&self) -> Result<u64, StoreError>;
}

/// Opens `sqlite:PATH` or `postgres://…` (also `postgresql://…`), creating the schema;
/// `db_ca` verifies a PostgreSQL server's TLS certificate (`sslmode=require`).
pub async fn open(
    url: &str,
    db_ca: Option<&std::path::Path>,
) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(StoreError::Url(url.to_owned()));
        }
        Ok(Arc::new(sqlite::SqliteStore::open(path.as_ref()).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(url, db_ca).await?))
    } else {
        Err(StoreError::Url(url.to_owned()))
    }
}

/// The base name a process is filtered and grouped by: the executable's file name, else the
/// command name (also what the OTLP export calls `process.executable.name`).
pub(crate) fn process_name(event: &FlowEvent) -> Option<String> {
    event
        .exe
        .as_deref()
        .map(|exe| exe.rsplit('/').next().unwrap_or(exe).to_owned())
        .or_else(|| event.comm.clone())
}

fn mode_from(text: &str) -> Result<Mode, StoreError> {
    text.parse().map_err(|message| StoreError::Corrupt {
        what: "mode",
        message,
    })
}

/// The fleet's rollout column, as stored.
fn rollout_from(text: Option<String>) -> Result<Option<crate::rollout::Rollout>, StoreError> {
    text.map(|text| from_json("rollout", &text)).transpose()
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt {
        what,
        message: err.to_string(),
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain structs serialise")
}
