//! Learning mode and dry runs for the fleet: a policy suggested from the violations nodes
//! reported (`GET /api/v1/policy/suggestion`), and a policy replayed against them before it
//! is rolled out (`POST /api/v1/policy/replay`). Both use the pure engine the node's
//! `policy suggest` and `policy replay` use (`egress_monitor_policy::{suggest, replay}`).

use std::collections::BTreeSet;

use axum::{
    Json,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use egress_monitor_api::{
    Mode,
    time::{now_ms, rfc3339},
    wire::FlowKind,
};
use egress_monitor_policy::{
    replay::{ReplayReport, replay},
    suggest::{Seen, Widening, suggest},
};
use serde::Serialize;

use super::{ApiError, Reader, Shared, params};
use crate::store::ViolationFilter;

/// Violations read for one suggestion or replay at most (the newest first).
pub const MAX_OBSERVATIONS: usize = 200_000;
/// The window when `since` is not given: a week.
const DEFAULT_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
const PAGE: u32 = 1000;

/// The traffic a request asks about: a window, a node or a group.
pub(super) struct Scope {
    since_ms: u64,
    until_ms: Option<u64>,
    node: Option<String>,
    group: Option<String>,
}

impl Scope {
    pub(super) fn parse(query: &crate::params::Params) -> Result<Scope, ApiError> {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
        let time = |key: &str| -> Result<Option<u64>, ApiError> {
            query
                .get(key)
                .map(|value| super::time(key, value).map_err(bad))
                .transpose()
        };
        let text = |key: &str| -> Result<Option<String>, ApiError> {
            match query.get(key) {
                Some(value) if value.is_empty() || value.len() > 128 => {
                    Err(bad(format!("`{key}` must be 1-128 bytes")))
                }
                other => Ok(other.map(str::to_owned)),
            }
        };
        Ok(Scope {
            since_ms: time("since")?.unwrap_or_else(|| now_ms().saturating_sub(DEFAULT_WINDOW_MS)),
            until_ms: time("until")?,
            node: text("node")?,
            group: text("group")?,
        })
    }

    pub(super) fn describe(&self, read: usize, truncated: bool) -> String {
        let mut out = format!(
            "{read} violations reported since {}",
            rfc3339(self.since_ms)
        );
        if let Some(until) = self.until_ms {
            out.push_str(&format!(" until {}", rfc3339(until)));
        }
        if let Some(node) = &self.node {
            out.push_str(&format!(" by node {node}"));
        }
        if let Some(group) = &self.group {
            out.push_str(&format!(" in group {group}"));
        }
        if truncated {
            out.push_str(&format!(" (the newest {MAX_OBSERVATIONS} only)"));
        }
        out
    }
}

/// The recorded denied traffic in `scope`, newest first, and whether there was more.
pub(super) async fn recorded(state: &Shared, scope: &Scope) -> Result<(Vec<Seen>, bool), ApiError> {
    let members: Option<BTreeSet<String>> = match &scope.group {
        Some(group) => Some(
            state
                .store
                .nodes()
                .await?
                .into_iter()
                .filter(|node| node.group.as_deref() == Some(group.as_str()))
                .map(|node| node.node_id)
                .collect(),
        ),
        None => None,
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .store
            .violations(&ViolationFilter {
                node: scope.node.clone(),
                since_ms: Some(scope.since_ms),
                until_ms: scope.until_ms,
                before,
                limit: PAGE,
                ..ViolationFilter::default()
            })
            .await?;
        let last = page.len() < PAGE as usize;
        before = page.last().map(|violation| violation.id);
        for violation in page {
            if violation.event.kind == FlowKind::Dns
                || members
                    .as_ref()
                    .is_some_and(|members| !members.contains(&violation.node_id))
            {
                continue;
            }
            if seen.len() == MAX_OBSERVATIONS {
                return Ok((seen, true));
            }
            let process = crate::store::process_name(&violation.event);
            seen.push(Seen {
                dst: violation.event.dst,
                name: violation.event.dst_name,
                process,
                node: Some(violation.node_id),
                at_ms: violation.event.ts_ms,
                packets: violation.event.packets,
            });
        }
        if last || before.is_none() {
            return Ok((seen, false));
        }
    }
}

/// `GET /api/v1/policy/suggestion?since=&until=&node=&group=&wildcards=&widen=&mode=`: a
/// valid, commented policy (text) built from the violations in the window.
pub async fn get_suggestion(
    State(state): State<Shared>,
    _: Reader,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = params(
        query,
        &[
            "since",
            "until",
            "node",
            "group",
            "wildcards",
            "widen",
            "mode",
        ],
    )?;
    let scope = Scope::parse(&query)?;
    let flag = |key: &str| -> Result<bool, ApiError> {
        match query.get(key) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`{key}` takes true or false, not `{other}`"),
            )),
        }
    };
    let mode = match query.get("mode") {
        None => Mode::Observe,
        Some(word) => word
            .parse::<Mode>()
            .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, format!("`mode`: {err}")))?,
    };
    let widening = Widening {
        wildcards: flag("wildcards")?,
        widen: flag("widen")?,
        service_tags: None,
    };
    let (seen, truncated) = recorded(&state, &scope).await?;
    let suggestion = suggest(&seen, &widening);
    let text = suggestion.render(&scope.describe(seen.len(), truncated), mode);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// What `POST /api/v1/policy/replay` answers.
#[derive(Serialize)]
pub struct Replayed {
    /// What was replayed.
    pub traffic: String,
    pub truncated: bool,
    #[serde(flatten)]
    pub report: ReplayReport,
}

/// `POST /api/v1/policy/replay?since=&until=&node=&group=` with a policy's text: what it would
/// still block of the reported violations, and what it would let through. Changes nothing.
pub async fn post_replay(
    State(state): State<Shared>,
    _: Reader,
    Query(query): Query<Vec<(String, String)>>,
    body: String,
) -> Result<Json<Replayed>, ApiError> {
    let query = params(query, &["since", "until", "node", "group"])?;
    let scope = Scope::parse(&query)?;
    if body.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "send the policy to try as the body (the text a PUT /api/v1/policy would take)",
        ));
    }
    let policy = egress_monitor_policy::validate_fleet_policy(&body, None).map_err(|err| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            egress_monitor_api::error_line(&err),
        )
    })?;
    let (seen, truncated) = recorded(&state, &scope).await?;
    Ok(Json(Replayed {
        traffic: scope.describe(seen.len(), truncated),
        truncated,
        report: replay(&policy, &seen),
    }))
}
