//! The console's pages (rendered by [`crate::page`]): an operator's token — the password of
//! HTTP basic authentication, what a browser asks for, or a `Bearer` — for every page; the
//! chart library the pages load is public (it is uPlot, as published) and cached.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use egress_monitor_api::time::now_ms;

use super::{
    ApiError, Caller, PAGE_HISTORY, Shared, caller, day, fleet_policy, history, params, views,
    violation_filter,
};
use crate::{
    page::{self, home, nodes, violations},
    store::{Hour, ViolationFilter},
    view::{NodeState, NodeView},
};

/// `None` when the caller is an operator; else the 401 that makes a browser ask.
async fn refused(headers: &HeaderMap, state: &Shared) -> Option<Response> {
    match caller(headers, state).await {
        Ok(Caller::Operator(_)) => None,
        _ => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"egress-monitor controller (password: the admin token)\"",
                )],
                "the admin token is needed (as the password; any user name)\n",
            )
                .into_response(),
        ),
    }
}

fn html(result: Result<maud::Markup, ApiError>) -> Response {
    match result {
        Ok(markup) => (
            [
                // Not framed by another site (no clickjacking), not sniffed, not kept.
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            Html(markup.into_string()),
        )
            .into_response(),
        Err(err) => err.into_response(),
    }
}

/// Nodes that need someone first (worst state first), then by id.
fn attention_first(views: &mut [NodeView]) {
    views.sort_by(|a, b| {
        page::needs_attention(b)
            .cmp(&page::needs_attention(a))
            .then(a.state.cmp(&b.state))
            .then_with(|| a.node.node_id.cmp(&b.node.node_id))
    });
}

pub async fn home(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&headers, &state).await {
        return refusal;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("CONTROLLER:8443")
        .to_owned();
    html(
        home_data(&state, host)
            .await
            .map(|data| home::render(&data)),
    )
}

async fn home_data(state: &Shared, host: String) -> Result<home::HomeData, ApiError> {
    let (mut views, fleet) = views(state).await?;
    attention_first(&mut views);
    let (since, tops, hours) = day(state).await?;
    let recent = state
        .store
        .violations(&ViolationFilter {
            limit: 20,
            ..ViolationFilter::default()
        })
        .await?;
    let dns = state
        .store
        .violations(&ViolationFilter {
            kind: Some(egress_monitor_api::wire::FlowKind::Dns),
            limit: 20,
            ..ViolationFilter::default()
        })
        .await?;
    let summary = crate::view::summary(&views, &fleet, since, tops);
    // Every hour of the day, quiet ones as zeros: the chart spans the day, not the hours seen.
    let now = now_ms();
    let hours: Vec<Hour> = (0..)
        .map(|n| since + n * 3_600_000)
        .take_while(|hour| *hour <= now)
        .map(|hour_ms| {
            hours
                .iter()
                .find(|h| h.hour_ms == hour_ms)
                .copied()
                .unwrap_or(Hour {
                    hour_ms,
                    flow_packets: 0,
                    dns_violations: 0,
                })
        })
        .collect();
    let mut groups: BTreeMap<Option<String>, home::GroupRow> = BTreeMap::new();
    for view in &views {
        let row = groups
            .entry(view.node.group.clone())
            .or_insert_with(|| home::GroupRow {
                group: view.node.group.clone(),
                ..home::GroupRow::default()
            });
        row.nodes += 1;
        row.enforced += usize::from(view.state == NodeState::Enforced);
        row.observing += usize::from(view.state == NodeState::Observing);
        row.attention += usize::from(page::needs_attention(view));
    }
    let attention_total = views.iter().filter(|v| page::needs_attention(v)).count();
    let attention = views
        .iter()
        .filter(|v| page::needs_attention(v))
        .take(home::ATTENTION_SHOWN)
        .cloned()
        .collect();
    views.truncate(home::NODES_SHOWN);
    let rollout = fleet.rollout.clone();
    let fleet = fleet_policy(fleet);
    let exceptions = fleet.policy.as_deref().map_or_else(Vec::new, |text| {
        page::exceptions(text, now_ms(), page::EXCEPTIONS_AHEAD_MS)
    });
    Ok(home::HomeData {
        summary,
        attention,
        attention_total,
        nodes: views,
        // A fleet of one group (or none) needs no table of groups.
        groups: if groups.len() > 1 {
            groups.into_values().collect()
        } else {
            Vec::new()
        },
        hours,
        fleet,
        recent,
        dns,
        history: history(state, PAGE_HISTORY).await?,
        exceptions,
        rollout,
        controller_url: format!("{}://{host}", state.scheme),
    })
}

pub async fn nodes(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(refusal) = refused(&headers, &state).await {
        return refusal;
    }
    html(
        node_list(&state, query)
            .await
            .map(|data| nodes::list(&data)),
    )
}

async fn node_list(
    state: &Shared,
    query: Vec<(String, String)>,
) -> Result<nodes::NodeList, ApiError> {
    let query = params(
        query,
        &["q", "state", "group", "attention", "verified", "page"],
    )?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let nonempty = |key: &str| query.get(key).filter(|v| !v.is_empty()).map(str::to_owned);
    let state_word = nonempty("state");
    let wanted_state = state_word
        .as_deref()
        .map(|word| {
            word.parse::<NodeState>()
                .map_err(|err| bad(format!("`state`: {err}")))
        })
        .transpose()?;
    let flag = |key: &str| -> Result<Option<bool>, ApiError> {
        match query.get(key) {
            None | Some("") => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(bad(format!("`{key}` takes true or false, not `{other}`"))),
        }
    };
    let filter = nodes::NodeFilter {
        q: nonempty("q").map(|q| q.to_lowercase()),
        state: state_word,
        group: nonempty("group"),
        attention: flag("attention")?.unwrap_or(false),
        verified: flag("verified")?,
        page: match query.get("page") {
            None | Some("") => 1,
            Some(page) => page
                .parse::<usize>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| bad("`page` is a page number, from 1".to_owned()))?,
        },
    };
    let (mut views, _) = views(state).await?;
    let groups: Vec<String> = views
        .iter()
        .filter_map(|v| v.node.group.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    views.retain(|v| {
        filter.q.as_deref().is_none_or(|q| {
            v.node.node_id.to_lowercase().contains(q) || v.node.hostname.to_lowercase().contains(q)
        }) && wanted_state.is_none_or(|s| v.state == s)
            && filter
                .group
                .as_deref()
                .is_none_or(|g| v.node.group.as_deref() == Some(g))
            && (!filter.attention || page::needs_attention(v))
            && filter.verified.is_none_or(|want| v.verified == want)
    });
    attention_first(&mut views);
    let matching = views.len();
    let nodes = views
        .into_iter()
        .skip((filter.page - 1) * nodes::PAGE_SIZE)
        .take(nodes::PAGE_SIZE)
        .collect();
    Ok(nodes::NodeList {
        filter,
        nodes,
        matching,
        groups,
    })
}

pub async fn node(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
) -> Response {
    if let Some(refusal) = refused(&headers, &state).await {
        return refusal;
    }
    html(
        node_page(&state, &node_id)
            .await
            .map(|data| nodes::node(&data)),
    )
}

async fn node_page(state: &Shared, node_id: &str) -> Result<nodes::NodePage, ApiError> {
    let Some(row) = state.store.node(node_id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such node"));
    };
    let fleet = state.store.fleet().await?;
    let desired = fleet
        .current()
        .desired_for(&row.node_id, row.group.as_deref());
    let view = crate::view::node_view(row, &fleet, now_ms(), state.stale_after.as_millis() as u64);
    let violations = state
        .store
        .violations(&ViolationFilter {
            node: Some(node_id.to_owned()),
            limit: 50,
            ..ViolationFilter::default()
        })
        .await?;
    Ok(nodes::NodePage {
        view,
        violations,
        desired_version: desired.policy_version,
        desired_mode: desired.mode,
    })
}

pub async fn violations(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(refusal) = refused(&headers, &state).await {
        return refusal;
    }
    // Empty form fields mean "any".
    let asked: Vec<(String, String)> = query.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let result = async {
        // The API's filters but its cursors forward and page sizes: the page pages back.
        let allowed: Vec<&str> = super::VIOLATION_PARAMS
            .iter()
            .copied()
            .filter(|param| !matches!(*param, "after" | "limit"))
            .collect();
        let checked = params(asked.clone(), &allowed)?;
        let mut filter = violation_filter(&checked)
            .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
        filter.limit = violations::PAGE_SIZE;
        let rows = state.store.violations(&filter).await?;
        Ok(violations::list(&violations::Asked { pairs: asked }, &rows))
    }
    .await;
    html(result)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The path names the version: the content never changes under it.
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

pub async fn uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", page::UPLOT_JS)
}

pub async fn uplot_css() -> Response {
    asset("text/css; charset=utf-8", page::UPLOT_CSS)
}

/// The form of `/replay`.
#[derive(Debug, serde::Deserialize)]
pub struct ReplayForm {
    #[serde(default)]
    policy: String,
    #[serde(default)]
    since: String,
}

/// `GET /replay`: the form, with the fleet's policy in it.
pub async fn replay_form(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&headers, &state).await {
        return refusal;
    }
    let result = async {
        let fleet = state.store.fleet().await?;
        Ok(page::replay::render(&page::replay::ReplayPage {
            policy: fleet.policy.unwrap_or_default(),
            since: String::new(),
            outcome: None,
        }))
    }
    .await;
    html(result)
}

/// `POST /replay`: the candidate replayed (nothing is set), shown as what it would block and
/// let through.
pub async fn replay(
    State(state): State<Shared>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<ReplayForm>,
) -> Response {
    if let Some(refusal) = refused(&headers, &state).await {
        return refusal;
    }
    let result = async {
        let mut pairs = Vec::new();
        if !form.since.trim().is_empty() {
            pairs.push(("since".to_owned(), form.since.trim().to_owned()));
        }
        let outcome = match super::learn::Scope::parse(&params(pairs, &["since"])?) {
            Err(err) => Err(err.message().to_owned()),
            Ok(scope) => match egress_monitor_policy::validate_fleet_policy(&form.policy, None) {
                Err(err) => Err(egress_monitor_api::error_line(&err)),
                Ok(policy) => {
                    let (seen, truncated) = super::learn::recorded(&state, &scope).await?;
                    Ok((
                        scope.describe(seen.len(), truncated),
                        egress_monitor_policy::replay::replay(&policy, &seen),
                    ))
                }
            },
        };
        Ok(page::replay::render(&page::replay::ReplayPage {
            policy: form.policy.clone(),
            since: form.since.clone(),
            outcome: Some(outcome),
        }))
    }
    .await;
    html(result)
}
