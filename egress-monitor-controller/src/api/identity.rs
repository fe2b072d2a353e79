//! Node identity: who may report for a node id, and how an Azure VM proves it is the node it
//! says (a nonce, then an attested document carrying it, for a credential of its own).
//!
//! A node id is bound to the strongest proof it was given: its own `NODE_ID TOKEN` line, or
//! the VM whose attested document it showed. A fleet token reports only for ids bound to
//! neither. A second attestation of the same VM (a reimaged instance: same `vmId`, new disk and
//! machine id) gets a new credential and voids the old one; another VM is refused the id.
//! Refusals name what failed, never the owner's identifiers.

use axum::{Json, extract::State, http::StatusCode};

use super::{ApiError, Node, Shared};
use crate::auth::{NodeScope, digest_hex};
use egress_monitor_api::{
    time::now_ms,
    wire::{AttestationReply, AttestationRequest, NonceReply, NonceRequest, valid_node_id},
};

/// How long a nonce is good for: enough for the node to ask the metadata service and come back.
const NONCE_LIFETIME_MS: u64 = 300_000;

/// Refuses a report for `node_id` by a token that may not make it.
pub(super) async fn may_report_for(
    state: &Shared,
    scope: &NodeScope,
    node_id: &str,
) -> Result<(), ApiError> {
    match scope.owner() {
        Some(owner) if owner != node_id => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this credential belongs to node `{owner}`; it cannot report for `{node_id}`"),
        )),
        Some(_) => Ok(()),
        None => {
            let tokens = state
                .tokens
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if tokens.has_own_token(node_id) || state.store.bound(node_id).await? {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "node id `{node_id}` has a credential of its own; a fleet token cannot report for it"
                    ),
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// `POST /api/v1/attestation/nonce`: a nonce for this node id, good once, for five minutes.
pub(super) async fn post_nonce(
    State(state): State<Shared>,
    Node(scope): Node,
    body: Result<Json<NonceRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<NonceReply>, ApiError> {
    let Json(request) = body?;
    check_node_id(&scope, &request.node_id)?;
    attestation_allowed(&state, &scope, &request.node_id)?;
    let now = now_ms();
    // Nonces have a quota of their own, per node id: asking cannot flood the database, nor
    // use up the reports of the node named.
    if let Err(over) = state
        .nonce_meter
        .admit(&NONCE_QUOTA, &request.node_id, 0, now)
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "node `{}` asks for more than {} nonces a minute; ask again in {} s",
                request.node_id,
                NONCE_QUOTA.reports_per_minute,
                over.retry_after.as_secs().max(1)
            ),
        ));
    }
    for _ in 0..3 {
        let nonce = crate::attest::new_nonce();
        if state
            .store
            .issue_nonce(&nonce, &request.node_id, now, now + NONCE_LIFETIME_MS)
            .await?
        {
            return Ok(Json(NonceReply {
                nonce,
                expires_in_s: NONCE_LIFETIME_MS / 1000,
            }));
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no free nonce: try again",
    ))
}

/// `POST /api/v1/attestation`: the attested document for a nonce, answered with the node's
/// own credential.
pub(super) async fn post_attestation(
    State(state): State<Shared>,
    Node(scope): Node,
    body: Result<Json<AttestationRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<AttestationReply>, ApiError> {
    let Json(request) = body?;
    check_node_id(&scope, &request.node_id)?;
    attestation_allowed(&state, &scope, &request.node_id)?;
    let now = now_ms();
    if !state
        .store
        .take_nonce(&request.nonce, &request.node_id, now)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown, used or expired nonce: ask for a new one",
        ));
    }
    let attested = state
        .attestation
        .verify(
            &request.document.encoding,
            &request.document.signature,
            &request.nonce,
            now / 1000,
        )
        .map_err(|err| {
            let message = egress_monitor_api::error_line(&err);
            log::warn!(
                "refused an attestation for node {}: {message}",
                request.node_id
            );
            ApiError::new(StatusCode::UNAUTHORIZED, message)
        })?;
    // A VM is one node; and a node that reported a VM id before it was bound is that VM.
    let refuse = |message: String| {
        log::warn!(
            "refused an attestation for node {} (VM {}): {message}",
            request.node_id,
            attested.vm_id
        );
        Err(ApiError::new(StatusCode::CONFLICT, message))
    };
    if let Some(other) = state.store.vm_owner(&attested.vm_id).await?
        && other != request.node_id
    {
        return refuse(
            "this VM is bound to another node id: a VM reports as one node (an operator can forget the other node)"
                .into(),
        );
    }
    if !state.store.bound(&request.node_id).await?
        && let Some(node) = state.store.node(&request.node_id).await?
        && node
            .vm_id
            .as_deref()
            .is_some_and(|vm| !vm.eq_ignore_ascii_case(&attested.vm_id))
    {
        return refuse(format!(
            "node id `{}` has reported from another VM; give this node its own --node-id",
            request.node_id
        ));
    }
    let credential = crate::attest::new_credential();
    if !state
        .store
        .bind(
            &request.node_id,
            &attested.vm_id,
            &digest_hex(&credential),
            now,
        )
        .await?
    {
        log::warn!(
            "refused an attestation for node {}: the id is bound to another VM than {}",
            request.node_id,
            attested.vm_id
        );
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "node id `{}` is bound to another VM; give this node its own --node-id (an operator can forget the old node to free the id)",
                request.node_id
            ),
        ));
    }
    log::info!(
        "node {} attested as VM {} (subscription {}): it has a credential of its own",
        request.node_id,
        attested.vm_id,
        attested.subscription_id
    );
    Ok(Json(AttestationReply {
        credential,
        vm_id: attested.vm_id,
    }))
}

/// Nonces a node id may ask for (a node asks once per start, and after its credential was
/// refused).
const NONCE_QUOTA: crate::quota::Quotas = crate::quota::Quotas {
    reports_per_minute: 20,
    bytes_per_day: u64::MAX,
};

/// Attestation is on (the controller knows which subscriptions its VMs are in), and a fleet
/// token does not ask for an id with a token of its own.
fn attestation_allowed(state: &Shared, scope: &NodeScope, node_id: &str) -> Result<(), ApiError> {
    if !state.attestation.enabled() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "attestation is off: the controller takes attested documents only from the subscriptions given with --attestation-subscription",
        ));
    }
    if *scope == NodeScope::AnyNode
        && state
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has_own_token(node_id)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "node id `{node_id}` has a token of its own; a fleet token cannot attest for it"
            ),
        ));
    }
    Ok(())
}

/// A node id the caller may ask about: a valid one, and the caller's own when its token is
/// bound to one.
fn check_node_id(scope: &NodeScope, node_id: &str) -> Result<(), ApiError> {
    if !valid_node_id(node_id) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "node_id: 1-128 letters, digits, '.', '_', '-'",
        ));
    }
    match scope.owner() {
        Some(owner) if owner != node_id => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this credential belongs to node `{owner}`, not `{node_id}`"),
        )),
        _ => Ok(()),
    }
}
