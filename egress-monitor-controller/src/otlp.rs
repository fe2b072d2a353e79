//! Export to the pipelines fleets already run: every stored violation (flows and DNS) as an
//! OpenTelemetry log record over OTLP/HTTP (protobuf, `POST …/v1/logs`), in the order stored.
//!
//! At-least-once and resumable: the export cursor (the last violation id the receiver
//! acknowledged) lives in the database, advanced only after a 2xx; a controller killed
//! mid-batch sends that batch again when it (or another replica) resumes. One replica exports
//! at a time, under a lease it renews at half time. Events the retention removes before the
//! receiver took them are not exported. Bounded in memory: one batch of at most [`BATCH`]
//! events. Retried with exponential back-off (1 s to 60 s, or the receiver's
//! `Retry-After`) on no answer and on any refusal but one: a 400 (the receiver cannot take the
//! batch, and never will) is logged, counted and passed over, as the OTLP specification asks.
//!
//! Attributes use OpenTelemetry's semantic names where they exist (`network.transport`,
//! `source.address`, `destination.address`, `destination.port`, `process.pid`,
//! `process.executable.path`, `process.executable.name`, `dns.question.name`) and
//! `egress_monitor.*` for the rest; `egress_monitor.violation.id` lets a receiver drop the
//! duplicates at-least-once may bring.

use std::{path::PathBuf, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use prost::Message as _;

use crate::{
    metrics::ControllerMetrics,
    store::{Store, Violation, ViolationFilter},
};
use egress_monitor_api::wire::FlowKind;

/// Events per request.
pub const BATCH: u32 = 1000;
/// How long a replica's claim on the export lasts without renewal (ms): longer than the
/// longest back-off and a request together, so a replica waiting to retry keeps it.
const LEASE_MS: u64 = 120_000;
const IDLE: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A request gets this long, connecting included.
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// `http(s)://HOST:PORT` (then `/v1/logs` is added) or the full logs URL.
    pub endpoint: String,
    /// Extra request headers (`NAME=VALUE`), e.g. a receiver's API key.
    pub headers: Vec<(String, String)>,
    /// PEM CA certificates for an https receiver (default: the public roots).
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint must be an http:// or https:// URL, not `{0}`")]
    Endpoint(String),
    #[error("--otlp-header must be NAME=VALUE, not `{0}`")]
    Header(String),
    #[error("cannot read the OTLP CA file {path}")]
    CaRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate in the file")]
    Ca(String),
}

/// The exporter, its configuration checked.
pub struct Exporter {
    url: String,
    headers: Vec<(String, String)>,
    agent: ureq::Agent,
    /// Who holds the lease: this replica (its host and listening address, the same after a
    /// restart, so a restarted replica resumes at once instead of waiting out its own lease).
    holder: String,
}

/// Why a request did not deliver.
enum Failure {
    /// Try again (no answer, 429, 5xx), after `Retry-After` when the receiver said.
    Retry(String, Option<Duration>),
    /// The receiver will never take this batch (400 and other 4xx).
    Rejected(String),
}

impl Exporter {
    pub fn new(config: &OtlpConfig, listen: std::net::SocketAddr) -> Result<Exporter, OtlpError> {
        let base = config.endpoint.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 10 {
            return Err(OtlpError::Endpoint(config.endpoint.clone()));
        }
        let url = if base.ends_with("/v1/logs") {
            base.to_owned()
        } else {
            format!("{base}/v1/logs")
        };
        for (name, _) in &config.headers {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(OtlpError::Header(name.clone()));
            }
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|source| OtlpError::CaRead {
                path: ca.display().to_string(),
                source,
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(OtlpError::Ca(ca.display().to_string()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Exporter {
            url,
            headers: config.headers.clone(),
            agent,
            holder: format!(
                "{} {listen}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .ok()
                    .filter(|h| !h.is_empty())
                    // Without a host name, a name of its own: never the same as another's.
                    .unwrap_or_else(crate::attest::new_credential),
            ),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Exports until the task is aborted.
    pub async fn run(self, store: Arc<dyn Store>, metrics: Arc<ControllerMetrics>) {
        let exporter = Arc::new(self);
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        // The lease this replica holds (until when, on the controller's clock) and the cursor
        // it read with it: renewed at half time, re-read after anything went wrong.
        let mut held: Option<(u64, i64)> = None;
        loop {
            let now = egress_monitor_api::time::now_ms();
            let renew_at = held.map(|(until, _)| until.saturating_sub(LEASE_MS / 2));
            if renew_at.is_none_or(|at| now >= at) {
                match store
                    .export_lease(&exporter.url, &exporter.holder, now, now + LEASE_MS)
                    .await
                {
                    Ok(Some(cursor)) => {
                        // A renewal keeps the cursor this replica moved; a new lease reads it.
                        let cursor = held.map_or(cursor, |(_, mine)| mine.max(cursor));
                        held = Some((now + LEASE_MS, cursor));
                    }
                    Ok(None) => {
                        // Another replica exports; take over if its lease lapses.
                        held = None;
                        tokio::time::sleep(Duration::from_millis(LEASE_MS / 4)).await;
                        continue;
                    }
                    Err(err) => {
                        log::error!(
                            "OTLP export: the database failed: {}",
                            egress_monitor_api::error_line(&err)
                        );
                        held = None;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let Some((until, cursor)) = held else {
                continue;
            };
            let batch = match store
                .violations(&ViolationFilter {
                    after: Some(cursor),
                    limit: BATCH,
                    ..ViolationFilter::default()
                })
                .await
            {
                Ok(batch) => batch,
                Err(err) => {
                    log::error!(
                        "OTLP export: cannot read the violations: {}",
                        egress_monitor_api::error_line(&err)
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let Some(last) = batch.last().map(|v| v.id) else {
                tokio::time::sleep(IDLE).await;
                continue;
            };
            let count = batch.len() as u64;
            let body = encode(&batch).encode_to_vec();
            drop(batch);
            let sender = Arc::clone(&exporter);
            let sent = tokio::task::spawn_blocking(move || sender.send(&body))
                .await
                .unwrap_or_else(|err| Err(Failure::Retry(format!("the task failed: {err}"), None)));
            match sent {
                Ok(()) => {
                    metrics.otlp_exported(count);
                    if failing {
                        log::info!("OTLP export to {} works again", exporter.url);
                        failing = false;
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(Failure::Rejected(message)) => {
                    metrics.otlp_rejected(count);
                    log::error!(
                        "OTLP export: {} refused {count} events (violations {}..={last}) as invalid (400), passed over: {message}",
                        exporter.url,
                        cursor + 1
                    );
                }
                Err(Failure::Retry(message, retry_after)) => {
                    metrics.otlp_failure();
                    let wait = retry_after
                        .unwrap_or(backoff)
                        .clamp(FIRST_BACKOFF, MAX_BACKOFF);
                    if !failing {
                        log::warn!(
                            "OTLP export to {} failed: {message}; retrying (every {} s at most), the events wait in the database",
                            exporter.url,
                            MAX_BACKOFF.as_secs()
                        );
                        failing = true;
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            match store
                .export_advance(&exporter.url, &exporter.holder, cursor, last)
                .await
            {
                Ok(true) => held = Some((until, last)),
                Ok(false) => {
                    // The lease went to another replica meanwhile: it sends from the cursor
                    // it read (this batch perhaps again: at least once).
                    log::warn!("OTLP export: another replica took over the export");
                    held = None;
                }
                Err(err) => {
                    // The batch goes again: at least once.
                    log::error!(
                        "OTLP export: cannot record the export: {}",
                        egress_monitor_api::error_line(&err)
                    );
                    held = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn send(&self, body: &[u8]) -> Result<(), Failure> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/x-protobuf");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let mut response = request
            .send(body)
            .map_err(|err| Failure::Retry(err.to_string(), None))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        let message = format!("{status} {}", text.chars().take(200).collect::<String>());
        // Only a 400 says this batch can never be taken; anything else (a wrong key, a
        // wrong path, an overloaded receiver) may be fixed, and the events wait for it.
        if status == 400 {
            Err(Failure::Rejected(message))
        } else {
            Err(Failure::Retry(message, retry_after))
        }
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// A batch as one request: a resource per node, one record per violation.
pub fn encode(batch: &[Violation]) -> ExportLogsServiceRequest {
    let mut by_node: std::collections::BTreeMap<&str, Vec<LogRecord>> = Default::default();
    for violation in batch {
        by_node
            .entry(violation.node_id.as_str())
            .or_default()
            .push(record(violation));
    }
    ExportLogsServiceRequest {
        resource_logs: by_node
            .into_iter()
            .map(|(node_id, log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        text("service.name", "egress-monitor"),
                        text("egress_monitor.node.id", node_id),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "egress-monitor-controller".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn record(violation: &Violation) -> LogRecord {
    let event = &violation.event;
    let mut attributes = vec![
        int("egress_monitor.violation.id", violation.id),
        text("egress_monitor.kind", event.kind.as_str()),
        text("egress_monitor.hook", event.hook.as_str()),
        text("egress_monitor.action", event.action.as_str()),
        text("egress_monitor.rule", event.rule.as_str()),
        text("network.transport", event.proto.as_str()),
        int(
            "egress_monitor.packets",
            event.packets.min(i64::MAX as u64) as i64,
        ),
        int(
            "egress_monitor.bytes",
            event.bytes.min(i64::MAX as u64) as i64,
        ),
    ];
    if let Some(dst) = event.dst {
        attributes.push(text("destination.address", dst.to_string()));
        attributes.push(text(
            "network.type",
            if dst.is_ipv4() { "ipv4" } else { "ipv6" },
        ));
    }
    if let Some(port) = event.dst_port {
        attributes.push(int("destination.port", i64::from(port)));
    }
    if let Some(src) = event.src {
        attributes.push(text("source.address", src.to_string()));
    }
    if let Some(name) = &event.dst_name {
        let key = if event.kind == FlowKind::Dns {
            "dns.question.name"
        } else {
            "egress_monitor.destination.name"
        };
        attributes.push(text(key, name.as_str()));
    }
    if let Some(pid) = event.pid {
        attributes.push(int("process.pid", i64::from(pid)));
    }
    if let Some(exe) = &event.exe {
        attributes.push(text("process.executable.path", exe.as_str()));
    }
    if let Some(name) = crate::store::process_name(event) {
        attributes.push(text("process.executable.name", name));
    }
    if let Some(cgroup) = &event.cgroup {
        attributes.push(text("egress_monitor.cgroup", cgroup.as_str()));
    }
    if let Some(score) = event.tunnel_score {
        attributes.push(int("egress_monitor.dns.tunnel_score", i64::from(score)));
    }
    let what = if event.kind == FlowKind::Dns {
        format!(
            "DNS question {} to {} {}",
            event.dst_name.as_deref().unwrap_or("?"),
            event.dst.map(|a| a.to_string()).unwrap_or_default(),
            event.action
        )
    } else {
        format!(
            "egress to {}{} {} ({})",
            event.dst.map(|a| a.to_string()).unwrap_or_default(),
            event.dst_port.map(|p| format!(":{p}")).unwrap_or_default(),
            event.action,
            event.rule
        )
    };
    LogRecord {
        time_unix_nano: event.ts_ms.saturating_mul(1_000_000),
        observed_time_unix_nano: violation.received_ms.saturating_mul(1_000_000),
        severity_number: SeverityNumber::Warn as i32,
        severity_text: "WARN".into(),
        event_name: "egress_monitor.violation".into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(what)),
        }),
        attributes,
        ..Default::default()
    }
}
