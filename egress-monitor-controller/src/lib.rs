//! `egress-monitor-controller`: one service for a fleet. Nodes report to it (the node's
//! reporter, `egress-monitor run --controller`); operators read the fleet, its violations and stale nodes from the API
//! or the page, and set one policy and one mode for every node.
//!
//! - The JSON API's types and their validation are `egress_monitor_api::wire`, shared with the
//!   node's reporter; fleet policies are validated by `egress_monitor_policy`, as nodes do.
//! - [`auth`]: admin and node tokens; [`attest`]: Azure attested documents (node identity); [`api`]: routes; [`params`]: query parameters, strictly;
//!   [`page`]: the HTML page;
//!   [`view`]: node states (enforced, observing, drifted, unprotected, stale) and the summary.
//! - [`store`]: SQLite (embedded, default) or PostgreSQL (shared by replicas).
//! - [`quota`]: per-node reports per minute and bytes per day (429 + `Retry-After`).
//! - [`rollout`]: staged rollouts (a group or a share of the nodes first, paused by a canary's
//!   new drops or failing self-check, promoted or rolled back in one call).
//! - [`metrics`]: the controller's own Prometheus metrics (`--metrics`).
//! - [`otlp`]: every violation to an OpenTelemetry receiver (`--otlp-endpoint`).
//! - [`certificates`]: `certificates`, a CA and the controller's TLS certificate.

pub mod api;
pub mod attest;
pub mod auth;
pub mod certificates;
pub mod metrics;
pub mod otlp;
pub mod page;
pub mod params;
pub mod quota;
pub mod rollout;
pub mod store;
pub mod view;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use self::{api::AppState, auth::Tokens, store::StoreError};

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://…`.
    pub db: String,
    /// CA certificates (PEM) a PostgreSQL server's certificate must chain to
    /// (`sslmode=require`); without it, the public roots.
    pub db_ca: Option<PathBuf>,
    pub admin_token_file: PathBuf,
    pub node_token_file: PathBuf,
    /// Certificate chain and private key (PEM): HTTPS when given.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Violations older than this are removed (hourly).
    pub retention: Duration,
    /// A node silent this long is stale, whatever interval it claims (at most three of its
    /// intervals in any case).
    pub stale_after: Duration,
    /// Per-node limits.
    pub quotas: quota::Quotas,
    /// Where to serve the controller's own Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    /// How Azure attested documents are checked (node identity).
    pub attestation: attest::Settings,
    /// Where every violation is exported (OTLP/HTTP logs).
    pub otlp: Option<otlp::OtlpConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Tokens(#[from] auth::TokenError),
    #[error("cannot set up the checks of Azure attested documents")]
    Attestation(#[from] attest::TrustError),
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
    #[error("cannot open the database {url}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the TLS certificate {cert} and key {key}")]
    Tls {
        cert: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--db-ca verifies a PostgreSQL server's TLS certificate: add `sslmode=require` to a postgres:// --db"
    )]
    DbCaUnused,
    #[error("cannot catch SIGHUP")]
    Signal(#[source] std::io::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// A controller with its tokens loaded, its database open and its port bound, ready to serve.
pub struct Controller {
    state: Arc<AppState>,
    exporter: Option<otlp::Exporter>,
    listener: std::net::TcpListener,
    metrics_listener: Option<std::net::TcpListener>,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    address: SocketAddr,
    /// SIGHUP, caught from the start (its default action would end the controller).
    hangup: tokio::signal::unix::Signal,
    /// What SIGHUP reads again.
    files: Reloadable,
}

/// The files a running controller reads again on SIGHUP.
struct Reloadable {
    admin_token_file: PathBuf,
    node_token_file: PathBuf,
    tls: Option<(PathBuf, PathBuf)>,
}

/// How often old violations are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Rows per pruning transaction: short enough that ingestion never waits long behind one.
const PRUNE_BATCH: u32 = 2000;
/// The pause between two batches, for ingestion.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);
/// A new connection that has not sent a whole first request by then is closed (a client
/// opening connections and trickling headers holds nothing for long; the TLS handshake has its
/// own 10 s). Idle keep-alive connections are left alone: hyper's header timeout would also
/// close those, and a node's pooled connection closed under it would fail its next report.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Controller {
    /// Everything that can be wrong with the configuration fails here, before serving.
    pub async fn bind(config: &ControllerConfig) -> Result<Controller, ControllerError> {
        let tokens = Tokens::load(&config.admin_token_file, &config.node_token_file)?;
        let attestation = Arc::new(attest::Verifier::new(&config.attestation)?);
        let exporter = config
            .otlp
            .as_ref()
            .map(|otlp| otlp::Exporter::new(otlp, config.listen))
            .transpose()?;
        let tls = match &config.tls {
            Some((cert, key)) => {
                // One process-wide crypto provider: ring (installing it twice is harmless).
                let _ = rustls::crypto::ring::default_provider().install_default();
                Some(
                    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                        .await
                        .map_err(|source| ControllerError::Tls {
                            cert: cert.display().to_string(),
                            key: key.display().to_string(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        if config.db_ca.is_some() && !store::postgres::requires_tls(&config.db) {
            return Err(ControllerError::DbCaUnused);
        }
        let store = store::open(&config.db, config.db_ca.as_deref())
            .await
            .map_err(|source| ControllerError::Store {
                url: redact(&config.db),
                source,
            })?;
        let listener = std::net::TcpListener::bind(config.listen).map_err(|source| {
            ControllerError::Listen {
                address: config.listen,
                source,
            }
        })?;
        let address = listener
            .local_addr()
            .map_err(|source| ControllerError::Listen {
                address: config.listen,
                source,
            })?;
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(ControllerError::Signal)?;
        let metrics_listener = config
            .metrics
            .map(|address| {
                std::net::TcpListener::bind(address)
                    .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                    .map_err(|source| ControllerError::Listen { address, source })
            })
            .transpose()?;
        Ok(Controller {
            exporter,
            state: Arc::new(AppState {
                store,
                tokens: std::sync::RwLock::new(Arc::new(tokens)),
                retention: config.retention,
                stale_after: config.stale_after,
                quotas: config.quotas,
                meter: quota::Meter::default(),
                tops: api::TopsCache::default(),
                metrics: Arc::default(),
                refusals: api::Refusals::default(),
                nonce_meter: quota::Meter::default(),
                desired: tokio::sync::Mutex::default(),
                attestation,
                scheme: if tls.is_some() { "https" } else { "http" },
            }),
            listener,
            metrics_listener,
            tls,
            address,
            hangup,
            files: Reloadable {
                admin_token_file: config.admin_token_file.clone(),
                node_token_file: config.node_token_file.clone(),
                tls: config.tls.clone(),
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls.is_some() { "https" } else { "http" },
            self.address
        )
    }

    /// Serves until `shutdown` completes, then lets open requests finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ControllerError> {
        let app = api::router(Arc::clone(&self.state));
        let handle = axum_server::Handle::new();
        let pruner = tokio::spawn(prune_forever(Arc::clone(&self.state)));
        let tops = tokio::spawn(api::refresh_tops(Arc::clone(&self.state)));
        let exporter = self.exporter.map(|exporter| {
            log::info!(
                "exporting every violation to {} (OTLP/HTTP)",
                exporter.url()
            );
            tokio::spawn(exporter.run(
                Arc::clone(&self.state.store),
                Arc::clone(&self.state.metrics),
            ))
        });
        let reloader = tokio::spawn(reload_on_hangup(
            self.hangup,
            self.files,
            Arc::clone(&self.state),
            self.tls.clone(),
        ));
        let metrics_server = match self.metrics_listener {
            Some(listener) => {
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(ControllerError::Serve)?;
                let state = Arc::clone(&self.state);
                let states = move || {
                    let state = Arc::clone(&state);
                    async move { api::node_states(&state).await }
                };
                let metrics = Arc::clone(&self.state.metrics);
                Some(tokio::spawn(async move {
                    if let Err(err) = metrics::serve(listener, metrics, states).await {
                        log::error!("the metrics server stopped: {err}");
                    }
                }))
            }
            None => None,
        };
        let server = {
            let handle = handle.clone();
            let listener = self.listener;
            let tls = self.tls;
            async move {
                let service = app.into_make_service();
                match tls {
                    Some(tls) => {
                        axum_server::from_tcp_rustls(listener, tls)?
                            .first_request_timeout(FIRST_REQUEST_TIMEOUT)
                            .handle(handle)
                            .serve(service)
                            .await
                    }
                    None => {
                        axum_server::from_tcp(listener)?
                            .first_request_timeout(FIRST_REQUEST_TIMEOUT)
                            .handle(handle)
                            .serve(service)
                            .await
                    }
                }
            }
        };
        tokio::pin!(server);
        tokio::pin!(shutdown);
        let result = tokio::select! {
            result = &mut server => result,
            () = &mut shutdown => {
                handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                server.await
            }
        };
        pruner.abort();
        tops.abort();
        reloader.abort();
        if let Some(exporter) = exporter {
            exporter.abort();
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        result.map_err(ControllerError::Serve)
    }
}

/// SIGHUP: reads the token files and the TLS certificate and key again. What cannot be read,
/// or is invalid, changes nothing (the controller keeps serving with what it had) and is
/// logged as an error; what can is in force for the next request.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    files: Reloadable,
    state: Arc<AppState>,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) {
    while hangup.recv().await.is_some() {
        match Tokens::load(&files.admin_token_file, &files.node_token_file) {
            Ok(tokens) => {
                let (admin, nodes) = tokens.counts();
                *state.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
                log::info!("SIGHUP: tokens read again ({admin} admin, {nodes} node tokens)");
            }
            Err(err) => log::error!(
                "SIGHUP: kept the previous tokens: {}",
                egress_monitor_api::error_line(&err)
            ),
        }
        if let (Some(config), Some((cert, key))) = (&tls, &files.tls) {
            match config.reload_from_pem_file(cert, key).await {
                Ok(()) => log::info!("SIGHUP: TLS certificate {} read again", cert.display()),
                Err(err) => log::error!(
                    "SIGHUP: kept the previous TLS certificate: cannot load {} and {}: {err}",
                    cert.display(),
                    key.display()
                ),
            }
        }
    }
}

async fn prune_forever(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tick.tick().await;
        let now = egress_monitor_api::time::now_ms();
        state.meter.forget_idle(now);
        state.nonce_meter.forget_idle(now);
        let before = now.saturating_sub(state.retention.as_millis() as u64);
        match prune(state.store.as_ref(), before, PRUNE_BATCH, PRUNE_PAUSE).await {
            Ok(0) => {}
            Ok(n) => log::info!("pruned {n} violations older than the retention"),
            Err(err) => log::error!(
                "cannot prune old violations: {}",
                egress_monitor_api::error_line(&err)
            ),
        }
    }
}

/// Removes what was received before `before_ms`, `batch` rows per short transaction with a
/// `pause` between, until nothing is left or another replica is pruning. Returns how many
/// violations went.
pub async fn prune(
    store: &dyn store::Store,
    before_ms: u64,
    batch: u32,
    pause: Duration,
) -> Result<u64, StoreError> {
    let mut pruned = 0;
    while let Some(batch_pruned) = store.prune_batch(before_ms, batch).await? {
        pruned += batch_pruned.events;
        if batch_pruned.last(batch) {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    Ok(pruned)
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact("postgres://em:secret@db.internal/fleet"),
            "postgres://em:***@db.internal/fleet"
        );
        assert_eq!(
            super::redact("sqlite:/var/lib/x.db"),
            "sqlite:/var/lib/x.db"
        );
    }
}
