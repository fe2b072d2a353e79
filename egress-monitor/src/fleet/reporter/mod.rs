//! `run --controller`: the node's side of the fleet. Every interval the reporter seals a
//! report (identity, mode, policy version, counters, health and the flow events since the
//! previous one) into the on-disk [`spool`], then sends the spool oldest first. The
//! controller stores each (node, stream, seq) once, so a report sent twice (a lost answer, a
//! restart) is never counted twice, and one not yet acknowledged is never forgotten.
//!
//! The controller's answer says which fleet policy and mode the node should run; when they
//! differ from what it runs, the reporter fetches the policy and hands it to the daemon's loop,
//! which validates and applies it live (see [`crate::fleet::follow`]) and says how it went in the next
//! report, sent at once.
//!
//! - [`feed`]: events from the daemon's loop; [`spool`]: the bounded disk queue;
//!   [`client`]: HTTP; [`identity`]: hostname, machine id, VM id.

pub mod client;
pub mod feed;
pub mod identity;
pub mod spool;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc, oneshot, watch};

use self::{
    client::{Client, ClientError, SendError},
    feed::Feed,
    spool::{Spool, SpoolError},
};
use egress_monitor_api::wire::{
    Desired, FlowEvent, Health, Identity, MAX_REPORT_BYTES, NodeCounters, PolicyState, Report,
};
use egress_monitor_policy::Mode;

use crate::datapath::pins::PinLayout;

#[derive(Clone, Debug)]
pub struct ReporterConfig {
    pub url: String,
    pub token_file: PathBuf,
    /// PEM certificates to trust for an https controller (instead of the public roots).
    pub ca_file: Option<PathBuf>,
    pub node_id: String,
    pub interval: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Where the VM id comes from on Azure.
    pub imds_url: String,
    /// Prove the node's identity with Azure's attested document, and report with the
    /// credential the controller gives for it.
    pub attest: bool,
    /// The node's group at the controller (default: its Azure scale set).
    pub group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// The reporter's state for `egress-monitor status`, in the run directory.
pub const STATUS_FILE: &str = "reporter.json";

/// How the link to the controller is, as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReporterStatus {
    pub controller: String,
    pub node_id: String,
    /// Reports waiting in the spool, acknowledged since the daemon started, dropped by the
    /// full spool (ever).
    pub pending: u64,
    pub delivered: u64,
    pub dropped_reports: u64,
    /// RFC 3339: the last acknowledged report; since when sending fails, and why.
    pub last_delivery: Option<String>,
    pub failing_since: Option<String>,
    pub last_error: Option<String>,
    /// RFC 3339: until when the controller asked this node to wait (its quota); reports wait
    /// in the spool meanwhile.
    #[serde(default)]
    pub throttled_until: Option<String>,
    /// What the node runs of the fleet's wishes, and why it refused the newest.
    pub fleet_policy_version: Option<u64>,
    pub fleet_mode: Option<Mode>,
    pub fleet_error: Option<String>,
}

impl ReporterStatus {
    /// The reporter's last word, if a daemon reporting to a controller served this pin path.
    pub fn read(layout: &PinLayout) -> Option<ReporterStatus> {
        let bytes = std::fs::read(layout.run_dir().join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// What the node runs of the fleet's wishes, as the daemon's loop last applied them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Following {
    /// The fleet policy version it runs; `None`: its local policy.
    pub policy_version: Option<u64>,
    /// The fleet mode it applied; `None`: its own.
    pub mode: Option<Mode>,
    /// Why it refused the newest wishes.
    pub error: Option<String>,
    /// The wishes it refused (not asked for again until the fleet changes them).
    pub refused: Option<Desired>,
}

/// What the daemon's loop and the reporter exchange: flow events one way, how the node
/// follows the fleet both ways, and a nudge to report now.
#[derive(Default)]
pub struct Exchange {
    pub feed: Feed,
    pub following: Mutex<Following>,
    /// Wakes the reporter for a report now (the fleet state changed, an alarm was raised).
    pub report_now: Notify,
    /// The daemon's latest self-check, sent with every report.
    pub proof: Mutex<Option<egress_monitor_api::wire::Proof>>,
}

impl Exchange {
    pub fn following(&self) -> Following {
        self.following
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_following(&self, state: Following) {
        *self.following.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    pub fn proof(&self) -> Option<egress_monitor_api::wire::Proof> {
        self.proof.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A new self-check result; `urgent` (an alarm, a failed check) reports it at once.
    pub fn set_proof(&self, proof: egress_monitor_api::wire::Proof, urgent: bool) {
        *self.proof.lock().unwrap_or_else(|p| p.into_inner()) = Some(proof);
        if urgent {
            self.report_now.notify_one();
        }
    }
}

/// A fleet policy or mode for the daemon's loop to apply; it answers on `done`.
#[derive(Debug)]
pub struct FleetUpdate {
    pub desired: Desired,
    /// The policy file's text, when the fleet's policy version changed.
    pub policy: Option<String>,
    pub done: oneshot::Sender<Result<(), String>>,
}

pub struct Reporter {
    config: ReporterConfig,
    client: Arc<Client>,
    spool: Arc<Mutex<Spool>>,
    exchange: Arc<Exchange>,
    updates: mpsc::Sender<FleetUpdate>,
    layout: PinLayout,
    started: Instant,
    counts: Arc<crate::events::counts::DaemonCounts>,
}

/// The first retry waits this long, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often a node the controller refuses (401, 403, 409) asks again: an operator has to act.
const REFUSED_RETRY: Duration = Duration::from_secs(300);
/// At a stop, the spool gets this long to drain; what remains is sent by the next daemon.
const FINAL_DELIVERY: Duration = Duration::from_secs(5);

impl Reporter {
    /// Checks the configuration and opens the spool: every error is the operator's to fix, and
    /// is found before the daemon attaches anything.
    pub fn new(
        config: ReporterConfig,
        exchange: Arc<Exchange>,
        layout: PinLayout,
        counts: Arc<crate::events::counts::DaemonCounts>,
    ) -> Result<(Reporter, mpsc::Receiver<FleetUpdate>), ReporterError> {
        let client = Client::new(&config.url, &config.token_file, config.ca_file.as_deref())?;
        let spool = Spool::open(&config.spool_dir, config.spool_max_bytes)?;
        if !spool.entries().is_empty() {
            log::info!(
                "{} reports from an earlier run wait in {}; they go first",
                spool.entries().len(),
                config.spool_dir.display()
            );
        }
        let (updates, receiver) = mpsc::channel(1);
        Ok((
            Reporter {
                config,
                client: Arc::new(client),
                spool: Arc::new(Mutex::new(spool)),
                exchange,
                updates,
                layout,
                started: Instant::now(),
                counts,
            },
            receiver,
        ))
    }

    /// Reports every interval until `stop` turns true, then seals what is left and gives the
    /// spool a few seconds to drain.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        log::info!(
            "reporting to {} every {} s as node `{}` (spool {})",
            self.client.base(),
            self.config.interval.as_secs(),
            self.config.node_id,
            self.config.spool_dir.display()
        );
        let identity = {
            let (url, group) = (self.config.imds_url.clone(), self.config.group.clone());
            let fallback = group.clone();
            tokio::task::spawn_blocking(move || identity::identity(&url, group))
                .await
                .unwrap_or_else(|_| identity::identity("", fallback))
        };
        let mut tick = tokio::time::interval(self.config.interval);
        let mut backoff = FIRST_BACKOFF;
        let mut retry_at = Instant::now();
        let mut failures = 0u32;
        let mut link = ReporterStatus {
            controller: self.client.base().to_owned(),
            node_id: self.config.node_id.clone(),
            ..ReporterStatus::default()
        };
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = self.exchange.feed.full.notified() => false,
                () = self.exchange.report_now.notified() => false,
                changed = stop.changed() => changed.is_err() || *stop.borrow(),
            };
            if let Err(err) = self.seal(&identity).await {
                log::error!(
                    "cannot spool a report: {}",
                    crate::system::error::chain(&err)
                );
            }
            self.publish(&mut link);
            if stopping {
                self.final_delivery().await;
                self.publish(&mut link);
                return;
            }
            if Instant::now() < retry_at {
                continue;
            }
            let sent = match self.prove_identity().await {
                Ok(()) => self.deliver(None).await,
                Err(err) => Err(err),
            };
            match sent {
                Ok((delivered, reply)) => {
                    if delivered > 0 {
                        link.last_delivery = Some(egress_monitor_api::time::rfc3339(
                            egress_monitor_api::time::now_ms(),
                        ));
                    }
                    link.failing_since = None;
                    link.last_error = None;
                    link.throttled_until = None;
                    if failures > 0 {
                        log::info!("the controller answers again: {delivered} reports delivered");
                    }
                    failures = 0;
                    backoff = FIRST_BACKOFF;
                    if let Some(desired) = reply {
                        self.follow_fleet(desired).await;
                    }
                    self.publish(&mut link);
                }
                Err(err) if err.retry_after().is_some() => {
                    // A quota: the controller says how long; the reports stay spooled.
                    let wait = err.retry_after().unwrap_or(FIRST_BACKOFF);
                    let until = egress_monitor_api::time::now_ms()
                        + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    if link.throttled_until.is_none() {
                        log::warn!(
                            "{err}; {} reports wait in the spool (retry in {} s, as the controller asks)",
                            self.pending(),
                            wait.as_secs()
                        );
                    }
                    link.throttled_until = Some(egress_monitor_api::time::rfc3339(until));
                    link.last_error = Some(err.to_string());
                    self.publish(&mut link);
                    retry_at = Instant::now() + wait;
                }
                Err(err) if err.is_refusal_of_the_node() => {
                    // Only an operator can change this: say so loudly, ask again rarely.
                    link.failing_since.get_or_insert_with(|| {
                        egress_monitor_api::time::rfc3339(egress_monitor_api::time::now_ms())
                    });
                    let message = format!("the controller refuses this node: {err}");
                    if link.last_error.as_deref() != Some(message.as_str()) {
                        log::error!(
                            "{message}; {} reports wait in the spool (asking again every {} s)",
                            self.pending(),
                            REFUSED_RETRY.as_secs()
                        );
                    }
                    link.last_error = Some(message);
                    self.publish(&mut link);
                    if self.config.attest {
                        // A credential the controller no longer knows: attest again next time.
                        self.client.drop_credential();
                    }
                    failures += 1;
                    retry_at = Instant::now() + REFUSED_RETRY;
                }
                Err(err) => {
                    link.failing_since.get_or_insert_with(|| {
                        egress_monitor_api::time::rfc3339(egress_monitor_api::time::now_ms())
                    });
                    link.last_error = Some(err.to_string());
                    self.publish(&mut link);
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(10) {
                        let pending = self.pending();
                        log::warn!(
                            "{err}; {pending} reports wait in the spool (retry in {} s; failure {failures})",
                            backoff.as_secs()
                        );
                    }
                    retry_at = Instant::now() + jitter(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// With `--attest`, gets the node a credential of its own when it has none (at start, and
    /// after the controller refused the last one).
    async fn prove_identity(&self) -> Result<(), SendError> {
        if !self.config.attest || self.client.has_credential() {
            return Ok(());
        }
        let client = Arc::clone(&self.client);
        let (node_id, imds_url) = (self.config.node_id.clone(), self.config.imds_url.clone());
        let vm_id = tokio::task::spawn_blocking(move || client.attest(&node_id, &imds_url))
            .await
            .unwrap_or_else(|err| panic!("the attestation task panicked: {err}"))?;
        log::info!("attested as Azure VM {vm_id}: reports go with this node's own credential");
        Ok(())
    }

    /// Seals the events waiting (in reports of at most the controller's maximum) into the
    /// spool; at least one report, the heartbeat.
    async fn seal(&self, identity: &Identity) -> Result<(), SpoolError> {
        let layout = self.layout.clone();
        let snapshot = match tokio::task::spawn_blocking(move || Snapshot::read(&layout)).await {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(err)) => {
                log::warn!(
                    "the report goes without counters: {}",
                    crate::system::error::chain(&err)
                );
                Snapshot::unreadable()
            }
            Err(_) => Snapshot::unreadable(),
        };
        let fleet = self.exchange.following();
        let spool = Arc::clone(&self.spool);
        let exchange = Arc::clone(&self.exchange);
        let identity = identity.clone();
        let config = self.config.clone();
        let uptime = self.started.elapsed().as_secs();
        tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let events = exchange.feed.take();
                spool_events(&mut spool, events, |events, spool| {
                    let state = spool.state();
                    Report {
                        node_id: config.node_id.clone(),
                        stream: state.stream.clone(),
                        seq: spool.next_seq(),
                        created_ms: egress_monitor_api::time::now_ms(),
                        interval_s: config.interval.as_secs().clamp(1, 3600) as u32,
                        identity: identity.clone(),
                        mode: snapshot.mode,
                        policy: PolicyState {
                            version: snapshot.policy_version.clone(),
                            fleet_version: fleet.policy_version,
                            error: fleet.error.clone(),
                        },
                        counters: snapshot.counters,
                        health: Health {
                            attachments: snapshot.attachments,
                            events_lost: snapshot.events_lost,
                            uptime_s: uptime,
                            spool_dropped_reports: state.dropped_reports,
                            spool_dropped_events: state.dropped_events + exchange.feed.dropped(),
                            spool_pending: spool.entries().len() as u64,
                        },
                        events,
                        proof: exchange.proof(),
                    }
                })?;
                if exchange.feed.is_empty() {
                    return Ok(());
                }
            }
        })
        .await
        .unwrap_or_else(|err| panic!("the spool task panicked: {err}"))
    }

    /// Sends the spool oldest first until it is empty, the controller fails, or `deadline`.
    /// Returns how many were delivered and the fleet's wishes from the last answer.
    async fn deliver(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(usize, Option<Desired>), SendError> {
        let spool = Arc::clone(&self.spool);
        let client = Arc::clone(&self.client);
        let counts = Arc::clone(&self.counts);
        tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering::Relaxed;
            let mut delivered = 0;
            let mut desired = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let (entry, body) = {
                    let spool = spool.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(entry) = spool.entries().first().cloned() else {
                        break;
                    };
                    let body = spool
                        .read(&entry)
                        .map_err(|err| SendError::Transport(crate::system::error::chain(&err)))?;
                    (entry, body)
                };
                match client.post_report(&body) {
                    Ok(reply) => {
                        let mut spool = spool.lock().unwrap_or_else(|p| p.into_inner());
                        spool.remove(entry.seq).map_err(|err| {
                            SendError::Transport(crate::system::error::chain(&err))
                        })?;
                        delivered += 1;
                        counts.reports_delivered.fetch_add(1, Relaxed);
                        desired = Some(reply.fleet);
                    }
                    Err(err) if err.is_invalid_request() => {
                        let mut spool = spool.lock().unwrap_or_else(|p| p.into_inner());
                        let moved = spool.reject(entry.seq).map_err(|err| {
                            SendError::Transport(crate::system::error::chain(&err))
                        })?;
                        counts.reports_rejected.fetch_add(1, Relaxed);
                        log::error!(
                            "report #{} was refused as invalid and moved to {}: {err}",
                            entry.seq,
                            moved.display()
                        );
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok((delivered, desired))
        })
        .await
        .unwrap_or_else(|err| panic!("the delivery task panicked: {err}"))
    }

    /// The spool's figures for the metrics, and the link's state for `status`
    /// ([`STATUS_FILE`] in the run directory).
    fn publish(&self, link: &mut ReporterStatus) {
        use std::sync::atomic::Ordering::Relaxed;
        {
            let spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
            link.pending = spool.entries().len() as u64;
            link.dropped_reports = spool.state().dropped_reports;
        }
        self.counts.reports_pending.store(link.pending, Relaxed);
        self.counts
            .reports_dropped
            .store(link.dropped_reports, Relaxed);
        link.delivered = self.counts.reports_delivered.load(Relaxed);
        let fleet = self.exchange.following();
        link.fleet_policy_version = fleet.policy_version;
        link.fleet_mode = fleet.mode;
        link.fleet_error = fleet.error;
        let path = self.layout.run_dir().join(STATUS_FILE);
        let body = serde_json::to_vec_pretty(link).expect("plain struct");
        let tmp = path.with_extension("tmp");
        if let Err(err) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path)) {
            log::debug!("cannot write {}: {err}", path.display());
        }
    }

    /// Reports waiting in the spool.
    fn pending(&self) -> usize {
        self.spool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries()
            .len()
    }

    async fn final_delivery(&self) {
        match self.deliver(Some(Instant::now() + FINAL_DELIVERY)).await {
            Ok(_) => {}
            Err(err) => log::warn!("{err}; the spooled reports go when the daemon runs again"),
        }
        let pending = self.pending();
        if pending > 0 {
            log::info!(
                "{pending} reports stay in {} for the next run",
                self.config.spool_dir.display()
            );
        }
    }

    /// Fetches and hands over the fleet's policy and mode when the node does not run them.
    async fn follow_fleet(&self, desired: Desired) {
        let state = self.exchange.following();
        let policy_needed =
            desired.policy_version > 0 && state.policy_version != Some(desired.policy_version);
        // Also when the fleet stops setting what the node follows (a rolled-back rollout).
        let released = (desired.policy_version == 0 && state.policy_version.is_some())
            || (desired.mode.is_none() && state.mode.is_some());
        let mode_needed = (desired.mode.is_some() && state.mode != desired.mode) || released;
        if !(policy_needed || mode_needed) || state.refused == Some(desired) {
            return;
        }
        let (desired, policy) = if policy_needed {
            let client = Arc::clone(&self.client);
            let node_id = self.config.node_id.clone();
            match tokio::task::spawn_blocking(move || client.policy(&node_id)).await {
                Ok(Ok(fleet)) => (
                    Desired {
                        policy_version: fleet.version,
                        mode: fleet.mode,
                    },
                    fleet.policy,
                ),
                Ok(Err(err)) => {
                    log::warn!(
                        "cannot fetch the fleet policy v{}: {err}",
                        desired.policy_version
                    );
                    return;
                }
                Err(_) => return,
            }
        } else {
            (desired, None)
        };
        let (done, answer) = oneshot::channel();
        if self
            .updates
            .send(FleetUpdate {
                desired,
                policy,
                done,
            })
            .await
            .is_err()
        {
            return;
        }
        if answer.await.is_ok() {
            // Say how it went now, not an interval later.
            self.exchange.report_now.notify_one();
        }
    }
}

/// Spools `events` as one report, or, when that would be larger than the controller takes, as
/// several: halved until each fits (each its own sequence number), in order.
fn spool_events(
    spool: &mut Spool,
    events: Vec<FlowEvent>,
    make: impl Fn(Vec<FlowEvent>, &Spool) -> Report,
) -> Result<(), SpoolError> {
    // Batches still to spool, the next on top.
    let mut batches = vec![events];
    while let Some(events) = batches.pop() {
        let report = make(events, spool);
        let body = serde_json::to_vec(&report).expect("plain structs serialise");
        if body.len() > MAX_REPORT_BYTES && report.events.len() > 1 {
            let mut first = report.events;
            let second = first.split_off(first.len() / 2);
            batches.push(second);
            batches.push(first);
            continue;
        }
        spool.push(report.seq, report.events.len() as u64, &body)?;
    }
    Ok(())
}

/// What a report says of the datapath, read straight from the pinned maps (not through
/// `status`, which also resolves rule names, learned addresses and the cgroup tree).
struct Snapshot {
    mode: Mode,
    policy_version: String,
    attachments: u32,
    counters: NodeCounters,
    events_lost: u64,
}

impl Snapshot {
    fn read(layout: &PinLayout) -> Result<Snapshot, crate::datapath::DatapathError> {
        let datapath = crate::datapath::Datapath::existing(layout)?;
        let live = datapath.config()?;
        let counters = datapath.counters()?;
        Ok(Snapshot {
            mode: live.mode,
            policy_version: format!("{:016x}", live.policy_version),
            attachments: datapath.attachments().len() as u32,
            counters: node_counters(&counters),
            events_lost: counters.events_lost,
        })
    }

    /// What a report says when the pins cannot be read: nothing attached, nothing counted.
    fn unreadable() -> Snapshot {
        Snapshot {
            mode: Mode::Observe,
            policy_version: String::new(),
            attachments: 0,
            counters: NodeCounters::default(),
            events_lost: 0,
        }
    }
}

fn node_counters(counters: &crate::datapath::Counters) -> NodeCounters {
    let hooks = [&counters.cgroup, &counters.tc];
    NodeCounters {
        allowed_packets: hooks.iter().map(|h| h.allowed.packets).sum(),
        denied_observed_packets: hooks.iter().map(|h| h.denied_observed.packets).sum(),
        denied_dropped_packets: hooks.iter().map(|h| h.denied_dropped.packets).sum(),
        denied_bytes: hooks
            .iter()
            .map(|h| h.denied_observed.bytes + h.denied_dropped.bytes)
            .sum(),
        malformed: counters.malformed,
    }
}

/// `base` ± 20 %, so that a fleet that lost its controller does not come back in one wave.
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use egress_monitor_api::wire::{DeniedAction, FlowKind, Hook};

    use super::*;

    fn event(exe: &str) -> FlowEvent {
        FlowEvent {
            ts_ms: 1_800_000_000_000,
            kind: FlowKind::First,
            hook: Hook::Cgroup,
            action: DeniedAction::Dropped,
            proto: "tcp".into(),
            src: None,
            dst: Some("203.0.113.1".parse().unwrap()),
            dst_port: Some(443),
            dst_name: None,
            rule: "default".into(),
            pid: Some(1),
            comm: None,
            exe: Some(exe.into()),
            cgroup: None,
            packets: 1,
            bytes: 60,
            tunnel_score: None,
        }
    }

    fn report(events: Vec<FlowEvent>, spool: &Spool) -> Report {
        Report {
            node_id: "n".into(),
            stream: spool.state().stream.clone(),
            seq: spool.next_seq(),
            created_ms: 1_800_000_000_000,
            interval_s: 10,
            identity: Identity {
                hostname: "h".into(),
                machine_id: "m".into(),
                vm_id: None,
                group: None,
            },
            mode: Mode::Enforce,
            policy: PolicyState {
                version: String::new(),
                fleet_version: None,
                error: None,
            },
            counters: NodeCounters::default(),
            health: Health::default(),
            events,
            proof: None,
        }
    }

    #[test]
    fn reports_too_large_for_the_controller_are_split_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        // 5,000 events with 4 KiB paths: about 20 MiB in one report.
        let long = "/x".repeat(2_000);
        let events: Vec<FlowEvent> = (0..5_000).map(|i| event(&format!("{long}{i}"))).collect();
        spool_events(&mut spool, events, report).unwrap();
        let entries = spool.entries().to_vec();
        assert!(entries.len() >= 3, "{} reports", entries.len());
        let mut next = 0;
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry.seq, i as u64 + 1);
            assert!(entry.bytes as usize <= MAX_REPORT_BYTES);
            let body: Report = serde_json::from_slice(&spool.read(entry).unwrap()).unwrap();
            for event in &body.events {
                assert_eq!(event.exe.as_deref(), Some(format!("{long}{next}").as_str()));
                next += 1;
            }
        }
        assert_eq!(next, 5_000);
        // A small batch stays one report.
        spool_events(&mut spool, vec![event("/bin/sh")], report).unwrap();
        assert_eq!(spool.entries().len(), entries.len() + 1);
    }
}
