//! The HTTP API (`/api/v1/…`) and the page at `/`: authentication, input checks, and the
//! mapping from requests to the store. A refused request stores nothing and says why, as
//! `{"error": "…"}` with a fitting status.

mod console;
mod identity;
mod learn;
mod rollout;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequestParts, Query, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};

use super::{
    auth::{Caller, NodeScope, Operator, Role, Tokens, presented},
    metrics::{ControllerMetrics, ReportOutcome, count_requests},
    params::Params,
    store::{Ingest, PolicyChange, Store, StoreError, Top, ViolationFilter},
    view::{self, NodeView},
};
use egress_monitor_api::{
    time::{now_ms, parse_rfc3339_ms, rfc3339},
    wire::{
        API, ErrorBody, FleetPolicy, HistoryEntry, MAX_POLICY_BYTES, MAX_REPORT_BYTES, ModeRequest,
        PolicyVersion, Report, ReportReply,
    },
};

pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Replaced whole when the token files are read again (SIGHUP).
    pub tokens: std::sync::RwLock<Arc<Tokens>>,
    /// Reports made longer ago than this are acknowledged but not stored: the controller
    /// keeps nothing older.
    pub retention: Duration,
    /// A node silent this long is stale, whatever interval it claims.
    pub stale_after: Duration,
    pub quotas: crate::quota::Quotas,
    pub meter: crate::quota::Meter,
    pub tops: TopsCache,
    pub metrics: Arc<ControllerMetrics>,
    pub refusals: Refusals,
    /// The fleet's wishes as last read, and when (see [`fleet_now`]).
    pub desired: tokio::sync::Mutex<Option<(std::time::Instant, Arc<super::store::FleetSettings>)>>,
    /// Nonces per node id (their own quota: asking for nonces cannot use up a node's reports).
    pub nonce_meter: crate::quota::Meter,
    /// Checks Azure attested documents (node identity).
    pub attestation: Arc<crate::attest::Verifier>,
    /// `https` when the controller serves TLS (the console's enrolment steps name it).
    pub scheme: &'static str,
}

/// The day's top destinations and processes, shared by the summary and the page. A task
/// ([`refresh_tops`]) computes them every [`TOPS_REFRESH`] from the hourly rollups, off the
/// requests' path: a request reads the last result, and computes one itself (others waiting
/// for it) only before the first or when the task has not managed for [`TOPS_STALE`].
#[derive(Default)]
pub struct TopsCache(tokio::sync::Mutex<Option<CachedTops>>);

struct CachedTops {
    at: std::time::Instant,
    since_ms: u64,
    tops: (Vec<Top>, Vec<Top>),
    /// Violations per hour over the same day (the console's chart).
    hours: Vec<super::store::Hour>,
}

pub const TOPS_REFRESH: Duration = Duration::from_secs(30);
const TOPS_STALE: Duration = Duration::from_secs(300);

/// The last day's top destinations and processes, and since when they count.
async fn tops(state: &Shared) -> Result<(u64, (Vec<Top>, Vec<Top>)), ApiError> {
    let (since_ms, tops, _) = day(state).await?;
    Ok((since_ms, tops))
}

/// The day's tops and its violations per hour, from the cache (see [`TopsCache`]).
async fn day(
    state: &Shared,
) -> Result<(u64, (Vec<Top>, Vec<Top>), Vec<super::store::Hour>), ApiError> {
    let mut cache = state.tops.0.lock().await;
    if let Some(cached) = cache.as_ref()
        && cached.at.elapsed() < TOPS_STALE
    {
        return Ok((cached.since_ms, cached.tops.clone(), cached.hours.clone()));
    }
    let fresh = compute_tops(state).await?;
    let answer = (fresh.since_ms, fresh.tops.clone(), fresh.hours.clone());
    *cache = Some(fresh);
    Ok(answer)
}

async fn compute_tops(state: &Shared) -> Result<CachedTops, StoreError> {
    // The rollups count whole hours: the window starts at the hour a day ago began.
    let since_ms = now_ms().saturating_sub(TOP_WINDOW_MS);
    let since_ms = since_ms - since_ms % 3_600_000;
    let started = std::time::Instant::now();
    let tops = state.store.top(since_ms, TOP_LIMIT).await?;
    let hours = state.store.hours(since_ms).await?;
    log::debug!("tops computed in {} ms", started.elapsed().as_millis());
    Ok(CachedTops {
        at: std::time::Instant::now(),
        since_ms,
        tops,
        hours,
    })
}

/// Recomputes the tops every [`TOPS_REFRESH`] from one interval after the start (until
/// aborted); a failure keeps the last ones.
pub async fn refresh_tops(state: Shared) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + TOPS_REFRESH, TOPS_REFRESH);
    loop {
        tick.tick().await;
        match compute_tops(&state).await {
            Ok(fresh) => {
                *state.tops.0.lock().await = Some(fresh);
            }
            Err(err) => log::error!(
                "cannot compute the top destinations and processes: {}",
                egress_monitor_api::error_line(&err)
            ),
        }
    }
}

type Shared = Arc<AppState>;

/// A refusal or a failure, answered as `{"error": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// What the refusal says.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let message = egress_monitor_api::error_line(&err);
        log::error!("storage: {message}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the controller's storage failed: {message}"),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(console::home))
        .route("/nodes", get(console::nodes))
        .route("/nodes/{node_id}", get(console::node))
        .route("/violations", get(console::violations))
        .route("/replay", get(console::replay_form).post(console::replay))
        .route(crate::page::UPLOT_JS_PATH, get(console::uplot_js))
        .route(crate::page::UPLOT_CSS_PATH, get(console::uplot_css))
        .route("/healthz", get(healthz))
        .route(&format!("{API}/reports"), post(post_report))
        .route(
            &format!("{API}/attestation/nonce"),
            post(identity::post_nonce),
        )
        .route(
            &format!("{API}/attestation"),
            post(identity::post_attestation),
        )
        .route(&format!("{API}/nodes"), get(get_nodes))
        .route(
            &format!("{API}/nodes/{{node_id}}"),
            get(get_node).delete(forget_node),
        )
        .route(&format!("{API}/violations"), get(get_violations))
        .route(&format!("{API}/summary"), get(get_summary))
        .route(&format!("{API}/policy"), get(get_policy).put(put_policy))
        .route(
            &format!("{API}/policy/suggestion"),
            get(learn::get_suggestion),
        )
        .route(&format!("{API}/policy/replay"), post(learn::post_replay))
        .route(
            &format!("{API}/rollout"),
            get(rollout::get_rollout).post(rollout::post_rollout),
        )
        .route(
            &format!("{API}/rollout/{{action}}"),
            post(rollout::post_rollout_action),
        )
        .route(
            &format!("{API}/policy/{{version}}"),
            get(get_policy_version),
        )
        .route(&format!("{API}/history"), get(get_history))
        .route(&format!("{API}/mode"), put(put_mode))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT_BYTES))
        .layer(axum::middleware::from_fn(guard_bodies))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            count_requests,
        ))
        .with_state(state)
}

/// A body announced larger than any route takes is refused before it is read (a body sent
/// without a length is cut off at the same size by the body limit).
///
/// A refusal of a request that carried a body closes the connection (`Connection: close`):
/// the body may be left unread (a bad token is refused from the headers), and the server then
/// drops the connection after answering. Without the header a client would keep it for its
/// next request and see that request fail with the peer gone.
async fn guard_bodies(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = request.headers();
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let carries_body = announced.is_some_and(|length| length > 0)
        || headers.contains_key(header::TRANSFER_ENCODING);
    let mut response = if announced.is_some_and(|length| length > MAX_REPORT_BYTES as u64) {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body is at most {MAX_REPORT_BYTES} bytes"),
        )
        .into_response()
    } else {
        next.run(request).await
    };
    let refused = response.status().is_client_error() || response.status().is_server_error();
    if carries_body && refused {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The caller, from `Authorization`: an operator's or a node's token from the token files, or
/// a node's own credential (from an attestation); refuses a missing or unknown token.
async fn caller(headers: &HeaderMap, state: &Shared) -> Result<Caller, ApiError> {
    let header = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer TOKEN`",
        )
    })?;
    let token = header.to_str().ok().and_then(presented).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "`Authorization` must be `Bearer TOKEN`",
        )
    })?;
    let tokens = Arc::clone(&state.tokens.read().unwrap_or_else(|e| e.into_inner()));
    if let Some(caller) = tokens.caller(&token) {
        return Ok(caller);
    }
    if let Some((node_id, vm_id)) = state
        .store
        .credential_owner(&crate::auth::digest_hex(&token))
        .await?
    {
        if tokens.has_own_token(&node_id) {
            // A `NODE_ID TOKEN` line added since (an operator taking the id back): only that
            // token speaks for the node now.
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("node id `{node_id}` has a token of its own now: this credential is void"),
            ));
        }
        return Ok(Caller::Node(NodeScope::Attested { node_id, vm_id }));
    }
    state.refusals.unknown_token();
    Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))
}

/// Refused authentications, logged at most once per [`REFUSAL_LOG_EVERY`] with how many came
/// since the last line: a guesser is seen in the log, and cannot flood it.
#[derive(Default)]
pub struct Refusals(std::sync::Mutex<(Option<std::time::Instant>, u64)>);

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Refusals {
    fn unknown_token(&self) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (last, unlogged) = &mut *guard;
        *unlogged += 1;
        if last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            log::warn!(
                "refused {} request(s) with an unknown token since the last such line",
                unlogged
            );
            *last = Some(std::time::Instant::now());
            *unlogged = 0;
        }
    }
}

/// An operator's token, of any role: who may read the fleet.
pub struct Reader(pub Operator);

impl FromRequestParts<Shared> for Reader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        match caller(&parts.headers, state).await? {
            Caller::Operator(operator) => Ok(Reader(operator)),
            Caller::Node(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a node token cannot do this: it needs the admin token",
            )),
        }
    }
}

/// An operator's token with the `operator` role: who may change the fleet.
pub struct Admin(pub Operator);

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let Reader(operator) = Reader::from_request_parts(parts, state).await?;
        if operator.role != Role::Operator {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the token `{}` is read-only: changing the fleet needs an operator's",
                    operator.name
                ),
            ));
        }
        Ok(Admin(operator))
    }
}

/// A node (fleet or per-node token).
pub struct Node(NodeScope);

impl FromRequestParts<Shared> for Node {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        match caller(&parts.headers, state).await? {
            Caller::Node(scope) => Ok(Node(scope)),
            Caller::Operator(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "reports come from nodes: use a node token",
            )),
        }
    }
}

/// Anyone with a token (the policy is read by nodes and operators).
pub struct AnyCaller;

impl FromRequestParts<Shared> for AnyCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        caller(&parts.headers, state).await.map(|_| AnyCaller)
    }
}

async fn post_report(
    State(state): State<Shared>,
    Node(scope): Node,
    headers: HeaderMap,
    body: Result<Json<Report>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut report) = body?;
    let now = now_ms();
    report
        .validate(now)
        .map_err(|message| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message))?;
    identity::may_report_for(&state, &scope, &report.node_id).await?;
    if let NodeScope::Attested { vm_id, .. } = &scope {
        // The VM the node proved it is, whatever the report says.
        report.identity.vm_id = Some(vm_id.clone());
    }
    let bytes = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| serde_json::to_vec(&report).map_or(0, |body| body.len() as u64));
    // Metered per node id and machine: reports forged for another node's id (refused by the
    // store, which knows the machine that took the id) do not use up that node's quota.
    let meter_key = format!("{}\u{0}{}", report.node_id, report.identity.machine_id);
    if let Err(over) = state.meter.admit(&state.quotas, &meter_key, bytes, now) {
        state.metrics.report(ReportOutcome::Throttled);
        let mut response =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, over.message).into_response();
        if let Ok(value) = header::HeaderValue::from_str(&over.retry_after.as_secs().to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    let expired = report.created_ms < now.saturating_sub(state.retention.as_millis() as u64);
    let outcome = if expired {
        log::warn!(
            "report {} #{} of node {} is older than the retention: acknowledged, not stored",
            report.stream,
            report.seq,
            report.node_id
        );
        ReportOutcome::Expired
    } else {
        match state
            .store
            .ingest(&report, scope.owner().is_some(), now)
            .await?
        {
            Ingest::Stored => ReportOutcome::Stored {
                events: report.events.len(),
            },
            Ingest::Duplicate => ReportOutcome::Duplicate,
            Ingest::Conflict(message) => {
                return Err(ApiError::new(StatusCode::CONFLICT, message));
            }
        }
    };
    state.metrics.report(outcome);
    let mut fleet = fleet_now(&state).await?;
    if matches!(outcome, ReportOutcome::Stored { .. })
        && let Some(reason) = fleet.rollout.as_ref().and_then(|rollout| {
            crate::rollout::canary_trouble(rollout, fleet.policy_version, fleet.mode, &report)
        })
    {
        // A canary in trouble: the rollout stops where it is, for an operator to decide.
        let pause = crate::rollout::Transition::Pause { reason };
        if let Ok(paused) = state.store.transition(pause, now, AUTOMATIC).await? {
            log::warn!(
                "rollout paused: {}",
                paused
                    .rollout
                    .as_ref()
                    .and_then(|r| r.reason.as_deref())
                    .unwrap_or("")
            );
            *state.desired.lock().await = None;
            fleet = Arc::new(paused);
        }
    }
    let desired = fleet
        .current()
        .desired_for(&report.node_id, report.identity.group.as_deref());
    Ok(Json(ReportReply {
        stored: matches!(outcome, ReportOutcome::Stored { .. }),
        fleet: desired,
    })
    .into_response())
}

/// Who the history names for what the controller did by itself (no token has this name:
/// token names have no spaces).
const AUTOMATIC: &str = "controller (automatic)";

/// The fleet's wishes, as the answer to every report carries them (each node's own, during a
/// rollout): read at most once per [`DESIRED_MAX_AGE`] (a change made on another replica
/// reaches the nodes that much later; one made on this replica at once), not once per report.
async fn fleet_now(state: &Shared) -> Result<Arc<super::store::FleetSettings>, ApiError> {
    let mut cached = state.desired.lock().await;
    if let Some((at, fleet)) = cached.as_ref()
        && at.elapsed() < DESIRED_MAX_AGE
    {
        return Ok(Arc::clone(fleet));
    }
    let fleet = Arc::new(state.store.fleet().await?);
    *cached = Some((std::time::Instant::now(), Arc::clone(&fleet)));
    Ok(fleet)
}

const DESIRED_MAX_AGE: Duration = Duration::from_secs(1);

async fn views(state: &Shared) -> Result<(Vec<NodeView>, super::store::FleetSettings), ApiError> {
    let fleet = state.store.fleet().await?;
    let now = now_ms();
    let views = state
        .store
        .nodes()
        .await?
        .into_iter()
        .map(|node| view::node_view(node, &fleet, now, state.stale_after.as_millis() as u64))
        .collect();
    Ok((views, fleet))
}

/// A request's query parameters, of which only `allowed` may be named, each once (else 400).
fn params(query: Vec<(String, String)>, allowed: &[&str]) -> Result<Params, ApiError> {
    Params::parse(query, allowed).map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))
}

/// `/nodes` answers at most this many nodes by default (`limit` up to [`MAX_NODES_PAGE`]).
const NODES_PAGE: usize = 1000;
const MAX_NODES_PAGE: usize = 10_000;

/// `GET /api/v1/nodes?state=&after=&limit=`: nodes in id order, those in `state` only (a
/// state's word), after the node id `after`, `limit` of them (default 1000). When more follow,
/// a `Link: <…>; rel="next"` header gives the next page's URL.
async fn get_nodes(
    State(state): State<Shared>,
    _: Reader,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = params(query, &["state", "group", "after", "limit"])?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let wanted = query
        .get("state")
        .map(|word| word.parse::<view::NodeState>())
        .transpose()
        .map_err(|_| {
            let words: Vec<&str> = view::NodeState::ALL.iter().map(|s| s.as_str()).collect();
            bad(format!("`state` must be one of {}", words.join(", ")))
        })?;
    let after = query.get("after");
    if after.is_some_and(|id| !egress_monitor_api::wire::valid_node_id(id)) {
        return Err(bad("`after` must be a node id".into()));
    }
    let group = query.get("group");
    if group.is_some_and(|g| !egress_monitor_api::wire::valid_node_id(g)) {
        return Err(bad(
            "`group` must be a group name (1-128 letters, digits, '.', '_', '-')".into(),
        ));
    }
    let limit = match query.get("limit") {
        None => NODES_PAGE,
        Some(value) => value
            .parse::<usize>()
            .ok()
            .filter(|v| (1..=MAX_NODES_PAGE).contains(v))
            .ok_or_else(|| bad(format!("`limit` must be between 1 and {MAX_NODES_PAGE}")))?,
    };
    let mut nodes: Vec<NodeView> = views(&state)
        .await?
        .0
        .into_iter()
        .filter(|node| wanted.is_none_or(|wanted| node.state == wanted))
        .filter(|node| group.is_none_or(|group| node.node.group.as_deref() == Some(group)))
        .filter(|node| after.is_none_or(|after| node.node.node_id.as_str() > after))
        .take(limit + 1)
        .collect();
    let more = nodes.len() > limit;
    nodes.truncate(limit);
    let mut response = Json(&nodes).into_response();
    if let (true, Some(last)) = (more, nodes.last()) {
        let mut next = format!("{API}/nodes?after={}&limit={limit}", last.node.node_id);
        if let Some(wanted) = wanted {
            next.push_str(&format!("&state={}", wanted.as_str()));
        }
        if let Some(group) = group {
            next.push_str(&format!("&group={group}"));
        }
        if let Ok(value) = header::HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// `GET /api/v1/nodes/NODE_ID`: one node's view.
async fn get_node(
    State(state): State<Shared>,
    _: Reader,
    axum::extract::Path(node_id): axum::extract::Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<NodeView>, ApiError> {
    params(query, &[])?;
    if !egress_monitor_api::wire::valid_node_id(&node_id) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "not a node id"));
    }
    let node = state
        .store
        .node(&node_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no node `{node_id}`")))?;
    let fleet = state.store.fleet().await?;
    Ok(Json(view::node_view(
        node,
        &fleet,
        now_ms(),
        state.stale_after.as_millis() as u64,
    )))
}

/// `DELETE /api/v1/nodes/NODE_ID`: a node scaled in for good leaves the fleet view (its
/// violations stay).
async fn forget_node(
    State(state): State<Shared>,
    _: Admin,
    axum::extract::Path(node_id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !egress_monitor_api::wire::valid_node_id(&node_id) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "not a node id"));
    }
    if state.store.forget(&node_id).await? {
        log::info!("node {node_id} forgotten");
        Ok(Json(serde_json::json!({ "forgotten": node_id })))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no node `{node_id}`"),
        ))
    }
}

/// How far back the summary's and the page's tops look.
const TOP_WINDOW_MS: u64 = 24 * 3_600_000;
const TOP_LIMIT: u32 = 10;

async fn get_summary(
    State(state): State<Shared>,
    _: Reader,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<view::Summary>, ApiError> {
    params(query, &[])?;
    let (views, fleet) = views(&state).await?;
    let (since, tops) = tops(&state).await?;
    Ok(Json(view::summary(&views, &fleet, since, tops)))
}

/// `limit=`: how many rows a list answers with.
fn limit(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|v| (1..=1000).contains(v))
        .ok_or_else(|| "`limit` must be between 1 and 1000".to_owned())
}

/// What `/violations` filters on.
const VIOLATION_PARAMS: [&str; 10] = [
    "node",
    "rule",
    "kind",
    "destination",
    "process",
    "since",
    "until",
    "before",
    "after",
    "limit",
];

/// `?node=&kind=&destination=&process=&since=&until=&before=&after=&limit=`; times are RFC 3339 or
/// milliseconds since the epoch (the node's clock); `before` pages back from the newest,
/// `after` forward in the order the controller stored them (a poller's cursor).
fn violation_filter(query: &Params) -> Result<ViolationFilter, String> {
    let mut filter = ViolationFilter {
        limit: 100,
        ..ViolationFilter::default()
    };
    let id = |key: &str, value: &str| {
        value
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| format!("`{key}` must be a violation id (a non-negative integer)"))
    };
    for (key, value) in query.iter() {
        let text = || -> Result<Option<String>, String> {
            if value.is_empty() || value.len() > egress_monitor_api::wire::MAX_TEXT {
                Err(format!(
                    "`{key}` must be 1-{} bytes",
                    egress_monitor_api::wire::MAX_TEXT
                ))
            } else {
                Ok(Some(value.to_owned()))
            }
        };
        match key {
            "node" => filter.node = text()?,
            "rule" => filter.rule = text()?,
            "kind" => {
                filter.kind = Some(value.parse().map_err(|err| format!("`kind`: {err}"))?);
            }
            "destination" => filter.destination = text()?,
            "process" => filter.process = text()?,
            "since" => filter.since_ms = Some(time(key, value)?),
            "until" => filter.until_ms = Some(time(key, value)?),
            "before" => filter.before = Some(id(key, value)?),
            "after" => filter.after = Some(id(key, value)?),
            "limit" => filter.limit = limit(value)?,
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    if filter.before.is_some() && filter.after.is_some() {
        return Err("give `before` (back from the newest) or `after` (forward), not both".into());
    }
    if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms)
        && since >= until
    {
        return Err("`since` must be before `until`".into());
    }
    Ok(filter)
}

fn time(key: &str, value: &str) -> Result<u64, String> {
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    parse_rfc3339_ms(value).ok_or_else(|| {
        format!("`{key}` must be RFC 3339 (2026-11-29T10:00:00Z) or milliseconds since the epoch")
    })
}

async fn get_violations(
    State(state): State<Shared>,
    _: Reader,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<super::store::Violation>>, ApiError> {
    let filter = violation_filter(&params(query, &VIOLATION_PARAMS)?)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
    Ok(Json(state.store.violations(&filter).await?))
}

fn fleet_policy(fleet: super::store::FleetSettings) -> FleetPolicy {
    FleetPolicy {
        version: fleet.policy_version,
        policy: fleet.policy,
        mode: fleet.mode,
        updated: fleet.updated_ms.map(rfc3339),
    }
}

/// `GET /api/v1/policy[?node=ID]`: the fleet's policy and mode; with `node`, what that node
/// is to run (during a rollout, nodes outside its target keep the policy and mode before it).
async fn get_policy(
    State(state): State<Shared>,
    _: AnyCaller,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = params(query, &["node"])?;
    let fleet = state.store.fleet().await?;
    if let Some(node_id) = query.get("node") {
        if !egress_monitor_api::wire::valid_node_id(node_id) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`node` must be a node id (1-128 letters, digits, '.', '_' and '-')",
            ));
        }
        let group = state.store.node(node_id).await?.and_then(|node| node.group);
        let current = fleet.current();
        let desired = current.desired_for(node_id, group.as_deref());
        let answer = FleetPolicy {
            version: desired.policy_version,
            policy: current.policy_for(node_id, group.as_deref()),
            mode: desired.mode,
            updated: fleet.updated_ms.map(rfc3339),
        };
        return Ok(with_etag(Json(answer), desired.policy_version));
    }
    let version = fleet.policy_version;
    Ok(with_etag(Json(fleet_policy(fleet)), version))
}

/// `GET /api/v1/policy/VERSION`: a fleet policy as it was set, for audits and roll-backs.
async fn get_policy_version(
    State(state): State<Shared>,
    _: Reader,
    axum::extract::Path(version): axum::extract::Path<String>,
) -> Result<Json<PolicyVersion>, ApiError> {
    let version = version
        .parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "a policy version is a positive integer",
            )
        })?;
    match state.store.policy_version(version).await? {
        Some((policy, set_ms)) => Ok(Json(PolicyVersion {
            version,
            policy,
            set: rfc3339(set_ms),
        })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no fleet policy version {version}"),
        )),
    }
}

/// `GET /api/v1/history?limit=`: every change of the fleet's policy and mode, newest first,
/// with the wishes it left: when the fleet was locked down, and under which policy.
async fn get_history(
    State(state): State<Shared>,
    _: Reader,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let query = params(query, &["limit"])?;
    let count = match query.get("limit") {
        Some(value) => {
            limit(value).map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?
        }
        None => 100,
    };
    Ok(Json(history(&state, count).await?))
}

/// How many of the fleet's changes the page shows.
const PAGE_HISTORY: u32 = 10;

async fn history(state: &Shared, count: u32) -> Result<Vec<HistoryEntry>, ApiError> {
    let changes = state.store.history(count).await?;
    Ok(changes
        .into_iter()
        .map(|change| HistoryEntry {
            at: rfc3339(change.at_ms),
            change: change.change,
            policy_version: change.policy_version,
            mode: change.mode,
            by: change.actor,
        })
        .collect())
}

/// The body is the policy file itself (TOML), exactly as a node's `--policy` file.
/// `PUT /api/v1/policy`: a new fleet policy. The current text again changes nothing;
/// `If-Match: "VERSION"` (the `ETag` of `GET /api/v1/policy`) sets it only over that version
/// (412 otherwise: someone changed it since); a policy without a rule of its own needs
/// `?confirm=empty` (it leaves every node only the private ranges and the cloud's addresses).
async fn put_policy(
    State(state): State<Shared>,
    Admin(operator): Admin,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = params(query, &["confirm"])?;
    let confirmed_empty = match query.get("confirm") {
        None => false,
        Some("empty") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`confirm` takes `empty`, not `{other}`"),
            ));
        }
    };
    let expected = if_match(&headers)?;
    if body.len() > MAX_POLICY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a policy is at most {MAX_POLICY_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the policy must be UTF-8 text (TOML)",
        )
    })?;
    let fleet = state.store.fleet().await?;
    refuse_during_rollout(&fleet)?;
    check_fleet_policy(text, fleet.mode, confirmed_empty)?;
    let fleet = match state
        .store
        .set_policy(text, now_ms(), &operator.name, expected)
        .await?
    {
        PolicyChange::Set(fleet) => {
            *state.desired.lock().await = None;
            log::info!(
                "fleet policy v{} set by {}",
                fleet.policy_version,
                operator.name
            );
            fleet
        }
        PolicyChange::Unchanged(fleet) => fleet,
        PolicyChange::InRollout(fleet) => return Err(rollout_refusal(&fleet)),
        PolicyChange::Moved(fleet) => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "the fleet policy is at v{}, not v{}: read it again (GET /api/v1/policy) and decide",
                    fleet.policy_version,
                    expected.unwrap_or_default()
                ),
            ));
        }
    };
    Ok(with_etag(
        Json(fleet_policy(fleet.clone())),
        fleet.policy_version,
    ))
}

/// The `If-Match` header: the fleet policy version the caller read (`ETag` of GET /policy).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "`If-Match` must be a policy version, as the `ETag` of GET /api/v1/policy gives it (\"7\")",
                    )
                })
        })
        .transpose()
}

/// A fleet policy as nodes will build it (in `mode`), and not empty unless confirmed.
fn check_fleet_policy(
    text: &str,
    mode: Option<egress_monitor_api::Mode>,
    confirmed_empty: bool,
) -> Result<(), ApiError> {
    egress_monitor_policy::validate_fleet_policy(text, mode)
        .map_err(|err| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()))?;
    if !confirmed_empty
        && egress_monitor_policy::fleet_policy_file(text)
            .is_ok_and(|file| file.rules.is_empty() && file.domain_rules.is_empty() && !file.azure)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this policy has no rule of its own: every node would reach only the private ranges and the cloud's addresses; send it with ?confirm=empty if that is what you want",
        ));
    }
    Ok(())
}

/// The whole fleet's policy does not change under a rollout.
fn refuse_during_rollout(fleet: &super::store::FleetSettings) -> Result<(), ApiError> {
    match &fleet.rollout {
        Some(_) => Err(rollout_refusal(fleet)),
        None => Ok(()),
    }
}

fn rollout_refusal(fleet: &super::store::FleetSettings) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "a rollout to {} is in progress ({}): promote or roll it back first (POST /api/v1/rollout/promote or /rollback)",
            fleet
                .rollout
                .as_ref()
                .map_or(String::new(), |r| r.target.describe()),
            fleet.rollout.as_ref().map_or("", |r| r.stage.as_str())
        ),
    )
}

/// A response with the fleet policy's version as its `ETag` (for `If-Match`).
fn with_etag(body: impl IntoResponse, version: u64) -> Response {
    let mut response = body.into_response();
    if let Ok(value) = header::HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The fleet's mode, for every node: `{"mode": "enforce"}` is the emergency lockdown.
async fn put_mode(
    State(state): State<Shared>,
    Admin(operator): Admin,
    body: Result<Json<ModeRequest>, JsonRejection>,
) -> Result<Json<FleetPolicy>, ApiError> {
    let Json(request) = body?;
    let fleet = state.store.fleet().await?;
    if let Some(text) = &fleet.policy {
        egress_monitor_policy::validate_fleet_policy(text, Some(request.mode)).map_err(|err| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the fleet policy v{} is invalid in {} mode, so the mode stays: {err}",
                    fleet.policy_version, request.mode
                ),
            )
        })?;
    }
    // Decided under the fleet row's lock: during a rollout only the lockdown, which every
    // node gets (the rollout's base too).
    let transition = crate::rollout::Transition::SetMode(request.mode);
    let fleet = match state
        .store
        .transition(transition, now_ms(), &operator.name)
        .await?
    {
        Ok(fleet) => fleet,
        Err(crate::rollout::Refusal::Conflict(message)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, message));
        }
        Err(other) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the mode was not set: {other:?}"),
            ));
        }
    };
    *state.desired.lock().await = None;
    log::warn!("fleet mode set to {}", request.mode);
    Ok(Json(fleet_policy(fleet)))
}

/// How long `/healthz` and a metrics scrape wait for the database before calling it down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Every node's state now, for the metrics; None when the database does not answer in time.
pub async fn node_states(state: &Shared) -> Option<Vec<view::NodeState>> {
    match tokio::time::timeout(HEALTH_TIMEOUT, views(state)).await {
        Ok(Ok((views, _))) => Some(views.into_iter().map(|view| view.state).collect()),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// `GET /healthz`, without a token, for load balancers and probes: 200 when the database
/// answers within [`HEALTH_TIMEOUT`], else 503. It says nothing about the fleet, and the
/// reason of a failure goes to the log, not to an anonymous caller.
async fn healthz(State(state): State<Shared>) -> Response {
    let failure = match tokio::time::timeout(HEALTH_TIMEOUT, state.store.fleet()).await {
        Ok(Ok(_)) => return Json(serde_json::json!({ "status": "ok" })).into_response(),
        Ok(Err(err)) => egress_monitor_api::error_line(&err),
        Err(_) => format!("no answer within {} s", HEALTH_TIMEOUT.as_secs()),
    };
    log::warn!("health check: the database failed: {failure}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the controller's database does not answer",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Params {
        Params::parse(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            &VIOLATION_PARAMS,
        )
        .unwrap()
    }

    #[test]
    fn violation_filters_are_checked() {
        let filter = violation_filter(&query(&[
            ("node", "a"),
            ("since", "2026-11-29T10:00:00Z"),
            ("until", "1796000000000"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(filter.node.as_deref(), Some("a"));
        assert_eq!(filter.since_ms, Some(1_795_946_400_000));
        assert_eq!(filter.limit, 5);
        for (bad, message) in [
            (("limit", "0"), "`limit` must be between 1 and 1000"),
            (("limit", "1001"), "`limit` must be between 1 and 1000"),
            (("since", "yesterday"), "`since` must be RFC 3339"),
            (("node", ""), "`node` must be 1-"),
            (("before", "-3"), "`before` must be a violation id"),
            (("after", "x"), "`after` must be a violation id"),
            (
                ("kind", "dnss"),
                "`kind`: `dnss` is not one of first, update, packet, dns",
            ),
        ] {
            let err = violation_filter(&query(&[bad])).unwrap_err();
            assert!(err.starts_with(message), "{bad:?}: {err}");
        }
        let err = violation_filter(&query(&[("since", "2000"), ("until", "1000")])).unwrap_err();
        assert_eq!(err, "`since` must be before `until`");
        let err = violation_filter(&query(&[("before", "9"), ("after", "3")])).unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }
}
