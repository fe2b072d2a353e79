//! `controller --metrics ADDR`: the controller's own Prometheus metrics (OpenMetrics text at
//! `/metrics`), on a listener of their own like the daemon's, so that a scraper needs no token
//! that could also change the fleet.
//!
//! | metric | labels |
//! |---|---|
//! | `egress_monitor_controller_requests_total` | `route` (the route's pattern, or `unmatched`), `status` |
//! | `egress_monitor_controller_request_duration_seconds` (histogram) | `route` |
//! | `egress_monitor_controller_reports_total` | `outcome` (stored, duplicate, expired: older than the retention) |
//! | `egress_monitor_controller_events_stored_total` | |
//! | `egress_monitor_controller_nodes` | `state` (stale, unprotected, drifted, observing, enforced), read at scrape time |
//! | `egress_monitor_controller_database_up` | 1 when the database answered the scrape's query |

use std::{future::Future, sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::header::CONTENT_TYPE,
    middleware::Next,
    response::Response,
    routing::get,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::view::NodeState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// What became of a report the controller accepted.
#[derive(Clone, Copy, Debug)]
pub enum ReportOutcome {
    Stored {
        events: usize,
    },
    Duplicate,
    Expired,
    /// Over the node's quota: 429, nothing stored.
    Throttled,
}

type LatencyFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// The controller's counters, shared by the API (which counts) and the scrape (which reads).
pub struct ControllerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    reports: Family<OutcomeLabel, Counter>,
    events_stored: Counter,
    nodes: Family<StateLabel, Gauge>,
    database_up: Gauge,
    /// OTLP export (`--otlp-endpoint`): events delivered, events the receiver refused as
    /// invalid (dropped), and failed attempts (retried).
    otlp_exported: Counter,
    otlp_rejected: Counter,
    otlp_failures: Counter,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        let metrics = ControllerMetrics {
            registry: Registry::with_prefix("egress_monitor_controller"),
            requests: Family::default(),
            // 1 ms to 16 s.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            reports: Family::default(),
            events_stored: Counter::default(),
            nodes: Family::default(),
            database_up: Gauge::default(),
            otlp_exported: Counter::default(),
            otlp_rejected: Counter::default(),
            otlp_failures: Counter::default(),
        };
        let mut registry = metrics.registry;
        registry.register(
            "requests",
            "API and page requests answered, by route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, by route",
            metrics.latency.clone(),
        );
        registry.register(
            "reports",
            "Reports accepted: stored, duplicate (stored before) or expired (older than the retention)",
            metrics.reports.clone(),
        );
        registry.register(
            "events_stored",
            "Flow events stored with their reports",
            metrics.events_stored.clone(),
        );
        registry.register(
            "nodes",
            "Nodes by isolation state, at scrape time",
            metrics.nodes.clone(),
        );
        registry.register(
            "database_up",
            "1 when the database answered the scrape's query, 0 when it did not",
            metrics.database_up.clone(),
        );
        registry.register(
            "otlp_exported_events",
            "Events the OTLP receiver acknowledged (--otlp-endpoint)",
            metrics.otlp_exported.clone(),
        );
        registry.register(
            "otlp_rejected_events",
            "Events the OTLP receiver refused as invalid (400): not sent again",
            metrics.otlp_rejected.clone(),
        );
        registry.register(
            "otlp_failures",
            "OTLP export attempts that failed and are retried (no answer, 429, 5xx)",
            metrics.otlp_failures.clone(),
        );
        // Every outcome from the start, so that rates work before the first of each.
        for outcome in ["stored", "duplicate", "expired"] {
            metrics
                .reports
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(0);
        }
        ControllerMetrics {
            registry,
            ..metrics
        }
    }
}

impl ControllerMetrics {
    pub fn report(&self, outcome: ReportOutcome) {
        let outcome = match outcome {
            ReportOutcome::Stored { events } => {
                self.events_stored.inc_by(events as u64);
                "stored"
            }
            ReportOutcome::Duplicate => "duplicate",
            ReportOutcome::Expired => "expired",
            ReportOutcome::Throttled => "throttled",
        };
        self.reports.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn otlp_exported(&self, events: u64) {
        self.otlp_exported.inc_by(events);
    }

    pub fn otlp_rejected(&self, events: u64) {
        self.otlp_rejected.inc_by(events);
    }

    pub fn otlp_failure(&self) {
        self.otlp_failures.inc();
    }

    fn request(&self, route: String, status: u16, started: Instant) {
        self.latency
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// The text of a scrape, with the node states as `states` says (None: the database did
    /// not answer, and the states are unknown).
    fn encode(&self, states: Option<&[NodeState]>) -> String {
        self.database_up.set(i64::from(states.is_some()));
        match states {
            Some(states) => {
                // Every state, so that a state nobody is in reads 0, not absent.
                for &state in NodeState::ALL {
                    let count = states.iter().filter(|s| **s == state).count();
                    self.nodes
                        .get_or_create(&StateLabel {
                            state: state.as_str(),
                        })
                        .set(count as i64);
                }
            }
            None => self.nodes.clear(),
        }
        let mut body = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut body, &self.registry) {
            log::error!("cannot encode the controller's metrics: {err}");
        }
        body
    }
}

/// Middleware: counts and times every request by the route it matched (its pattern, so that
/// node ids do not make new series).
pub async fn count_requests(
    State(metrics): State<Arc<ControllerMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.request(route, response.status().as_u16(), started);
    response
}

/// Serves `/metrics` on `listener`; `states` reads the nodes' states at each scrape (None: the
/// database did not answer).
pub async fn serve<S, F>(
    listener: tokio::net::TcpListener,
    metrics: Arc<ControllerMetrics>,
    states: S,
) -> std::io::Result<()>
where
    S: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Option<Vec<NodeState>>> + Send,
{
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (metrics, states) = (Arc::clone(&metrics), states.clone());
            async move {
                let states = states().await;
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(states.as_deref()),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}
