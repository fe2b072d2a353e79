//! Staged rollouts over the API (see [`crate::rollout`]): `POST /api/v1/rollout` starts one,
//! `GET /api/v1/rollout` says where it stands and which nodes run what, and
//! `POST /api/v1/rollout/{pause,promote,rollback}` move it on, each recorded in the history
//! with who did it.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use egress_monitor_api::{
    Mode,
    time::{now_ms, rfc3339},
};
use serde::{Deserialize, Serialize};

use super::{Admin, ApiError, Reader, Shared, check_fleet_policy, fleet_policy, if_match, views};
use crate::rollout::{Refusal, Target, Transition};

/// `POST /api/v1/rollout`: what to roll out, and to whom first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// A new fleet policy (the text a PUT /api/v1/policy takes), or none to roll out a mode.
    policy: Option<String>,
    mode: Option<Mode>,
    /// The canaries: the nodes of a group, or a share of the nodes (1-100).
    group: Option<String>,
    percent: Option<u8>,
    /// `empty`: the policy has no rule of its own, and that is meant.
    confirm: Option<String>,
}

pub async fn post_rollout(
    State(state): State<Shared>,
    Admin(operator): Admin,
    headers: HeaderMap,
    body: Result<Json<RolloutRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let bad = |message: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message.to_owned());
    let target = match (&request.group, request.percent) {
        (Some(group), None) if egress_monitor_api::wire::valid_node_id(group) => {
            Target::Group(group.clone())
        }
        (None, Some(percent)) if (1..=100).contains(&percent) => Target::Percent(percent),
        (Some(_), None) => {
            return Err(bad(
                "`group` must be a group name (1-128 letters, digits, '.', '_' and '-')",
            ));
        }
        (None, Some(_)) => return Err(bad("`percent` must be 1-100")),
        _ => return Err(bad("give the canaries: `group` or `percent`, one of them")),
    };
    let confirmed_empty = match request.confirm.as_deref() {
        None => false,
        Some("empty") => true,
        Some(other) => return Err(bad(&format!("`confirm` takes `empty`, not `{other}`"))),
    };
    let fleet = state.store.fleet().await?;
    if let Some(text) = &request.policy {
        if text.len() > egress_monitor_api::wire::MAX_POLICY_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the policy is too large",
            ));
        }
        check_fleet_policy(text, request.mode.or(fleet.mode), confirmed_empty)?;
    } else if let (Some(mode), Some(text)) = (request.mode, &fleet.policy) {
        check_fleet_policy(text, Some(mode), true)?;
    }
    let transition = Transition::Start {
        policy: request.policy,
        mode: request.mode,
        target,
        expected: if_match(&headers)?,
    };
    let fleet = apply(&state, transition, &operator.name).await?;
    log::warn!(
        "rollout of fleet policy v{} started by {} to {}",
        fleet.policy_version,
        operator.name,
        fleet
            .rollout
            .as_ref()
            .map_or(String::new(), |r| r.target.describe())
    );
    Ok((StatusCode::CREATED, Json(status(&state, fleet).await?)).into_response())
}

pub async fn post_rollout_action(
    State(state): State<Shared>,
    Admin(operator): Admin,
    Path(action): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<RolloutStatus>, ApiError> {
    // A JSON body (`{}`), so the call needs `Content-Type: application/json`: a form on
    // another site, posted with the browser's cached credentials of the console, cannot send
    // one without asking first (CORS), so it cannot move a rollout on.
    let Json(body) = body?;
    let transition = match action.as_str() {
        "pause" => Transition::Pause {
            reason: format!("paused by {}", operator.name),
        },
        "promote" => Transition::Promote {
            confirm_paused: body.get("confirm").and_then(|c| c.as_str()) == Some("paused"),
        },
        "rollback" => Transition::Rollback,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "a rollout takes pause, promote or rollback",
            ));
        }
    };
    let fleet = apply(&state, transition, &operator.name).await?;
    log::warn!("rollout {action} by {}", operator.name);
    Ok(Json(status(&state, fleet).await?))
}

pub async fn get_rollout(
    State(state): State<Shared>,
    _: Reader,
) -> Result<Json<RolloutStatus>, ApiError> {
    let fleet = state.store.fleet().await?;
    Ok(Json(status(&state, fleet).await?))
}

async fn apply(
    state: &Shared,
    transition: Transition,
    actor: &str,
) -> Result<crate::store::FleetSettings, ApiError> {
    match state.store.transition(transition, now_ms(), actor).await? {
        Ok(fleet) => {
            *state.desired.lock().await = None;
            Ok(fleet)
        }
        Err(Refusal::Conflict(message)) => Err(ApiError::new(StatusCode::CONFLICT, message)),
        Err(Refusal::Nothing(message)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message))
        }
        Err(Refusal::Moved { current }) => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "the fleet policy is at v{current}: read it again (GET /api/v1/policy) and decide"
            ),
        )),
    }
}

/// Where the rollout stands, and how far it got.
#[derive(Debug, Serialize)]
pub struct RolloutStatus {
    /// False when no rollout runs (the rest describes the fleet as it is).
    pub active: bool,
    pub fleet: egress_monitor_api::wire::FleetPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
}

#[derive(Debug, Serialize)]
pub struct RolloutView {
    pub target: String,
    /// `canary` or `paused`.
    pub stage: String,
    pub reason: Option<String>,
    pub started: String,
    pub started_by: String,
    /// The version and mode the canaries get, and those the other nodes keep.
    pub candidate_version: u64,
    pub candidate_mode: Option<Mode>,
    pub base_version: u64,
    pub base_mode: Option<Mode>,
    /// The canaries, and how many of them run the candidate now.
    pub canaries: usize,
    pub canaries_converged: usize,
    /// The other nodes.
    pub others: usize,
}

async fn status(
    state: &Shared,
    fleet: crate::store::FleetSettings,
) -> Result<RolloutStatus, ApiError> {
    let Some(rollout) = fleet.rollout.clone() else {
        return Ok(RolloutStatus {
            active: false,
            fleet: fleet_policy(fleet),
            rollout: None,
        });
    };
    let (views, _) = views(state).await?;
    let canaries: Vec<_> = views
        .iter()
        .filter(|v| {
            rollout
                .target
                .includes(&v.node.node_id, v.node.group.as_deref())
        })
        .collect();
    let view = RolloutView {
        target: rollout.target.describe(),
        stage: rollout.stage.as_str().to_owned(),
        reason: rollout.reason.clone(),
        started: rfc3339(rollout.started_ms),
        started_by: rollout.started_by.clone(),
        candidate_version: fleet.policy_version,
        candidate_mode: fleet.mode,
        base_version: rollout.base_version,
        base_mode: rollout.base_mode,
        canaries: canaries.len(),
        canaries_converged: canaries.iter().filter(|v| v.converged).count(),
        others: views.len() - canaries.len(),
    };
    Ok(RolloutStatus {
        active: true,
        fleet: fleet_policy(fleet),
        rollout: Some(view),
    })
}
