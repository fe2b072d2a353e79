//! What the fleet looks like: each node's isolation state, from its newest report, the fleet
//! policy and the time. The API and the page show the same views.

use serde::Serialize;

use super::store::{FleetSettings, NodeRow, Top};
use egress_monitor_api::{Mode, time::rfc3339};

/// A node is stale after this many of its intervals without a report, or after the
/// controller's `--stale-after`, whichever comes first (a node cannot keep itself fresh with a
/// long interval).
pub const STALE_INTERVALS: u64 = 3;
/// `--stale-after`'s default.
pub const DEFAULT_STALE_AFTER_S: u64 = 180;

egress_monitor_api::words! {
    #[derive(PartialOrd, Ord)]
    pub enum NodeState {
        /// No report within three of its intervals: nothing is known of it now.
        Stale = "stale",
        /// Its daemon reports no program attached: nothing is enforced or counted.
        Unprotected = "unprotected",
        /// It does not run the fleet's policy or mode (yet, or it refused them).
        Drifted = "drifted",
        /// It observes: denied packets are counted, not dropped.
        Observing = "observing",
        /// It drops what the policy denies.
        Enforced = "enforced",
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: NodeRow,
    pub state: NodeState,
    /// It runs the fleet policy version and mode (true when the fleet sets neither).
    pub converged: bool,
    /// Its last self-check passed within its interval, on programs of its daemon's own build,
    /// with no alarm open, and it runs the policy the fleet expects: proven, not only
    /// reported (see [`verification`]).
    pub verified: bool,
    /// RFC 3339.
    pub last_seen: String,
    /// What is wrong, in words; empty when nothing is.
    pub problems: Vec<String>,
}

/// The node's view at `now_ms` (the controller's clock, as `last_seen_ms` is); `stale_after_ms`
/// is the controller's bound on silence.
pub fn node_view(
    node: NodeRow,
    fleet: &FleetSettings,
    now_ms: u64,
    stale_after_ms: u64,
) -> NodeView {
    let mut problems = Vec::new();
    let silent_ms = now_ms.saturating_sub(node.last_seen_ms);
    let allowed_ms = (STALE_INTERVALS * u64::from(node.interval_s) * 1000).min(stale_after_ms);
    let stale = silent_ms > allowed_ms;
    if stale {
        problems.push(format!(
            "no report for {} s (stale after {} s)",
            silent_ms / 1000,
            allowed_ms / 1000
        ));
    }
    if node.health.attachments == 0 {
        problems.push("no program attached".to_owned());
    }
    // What the fleet wants this node to run: during a rollout, the base outside its target.
    let desired = fleet
        .current()
        .desired_for(&node.node_id, node.group.as_deref());
    let policy_converged =
        desired.policy_version == 0 || node.fleet_version == Some(desired.policy_version);
    if !policy_converged {
        problems.push(match node.fleet_version {
            Some(v) => format!(
                "runs fleet policy v{v}, the fleet's is v{}",
                desired.policy_version
            ),
            None => format!(
                "runs its local policy, the fleet's is v{}",
                desired.policy_version
            ),
        });
    }
    let mode_converged = desired.mode.is_none_or(|mode| mode == node.mode);
    if !mode_converged {
        problems.push(format!(
            "mode {}, the fleet's is {}",
            node.mode,
            desired.mode.map_or("", Mode::as_str)
        ));
    }
    if let Some(error) = &node.policy_error {
        problems.push(format!("refused the fleet's policy or mode: {error}"));
    }
    if node.health.events_lost > 0 {
        problems.push(format!(
            "{} events lost in the kernel",
            node.health.events_lost
        ));
    }
    if node.health.spool_dropped_reports > 0 {
        problems.push(format!(
            "its full spool dropped {} reports ({} events)",
            node.health.spool_dropped_reports, node.health.spool_dropped_events
        ));
    }
    let converged = policy_converged && mode_converged && node.policy_error.is_none();
    let unproven = verification(&node, now_ms);
    let verified = unproven.is_none() && converged && !stale;
    problems.extend(unproven);
    let state = if stale {
        NodeState::Stale
    } else if node.health.attachments == 0 {
        NodeState::Unprotected
    } else if !converged {
        NodeState::Drifted
    } else if node.mode == Mode::Enforce {
        NodeState::Enforced
    } else {
        NodeState::Observing
    };
    NodeView {
        last_seen: rfc3339(node.last_seen_ms),
        node,
        state,
        converged,
        verified,
        problems,
    }
}

/// How long a check proves anything: two of the node's check intervals, and a minute for the
/// report carrying it to arrive.
fn proof_lifetime_ms(interval_s: u32) -> u64 {
    2 * u64::from(interval_s) * 1000 + 60_000
}

/// Why the node's proof does not hold at `now_ms`; `None` when it does.
pub fn verification(node: &NodeRow, now_ms: u64) -> Option<String> {
    let Some(stored) = &node.proof else {
        return Some("no self-check reported (a node without continuous proof)".to_owned());
    };
    let proof = &stored.proof;
    if let Some(alarm) = proof.alarms.last().filter(|_| !proof.passed) {
        return Some(format!("alarm: {}", alarm.message));
    }
    if !proof.passed {
        return Some(format!("self-check failed: {}", proof.problems.join("; ")));
    }
    if !proof.same_build {
        return Some("its pinned programs are not its daemon's build".to_owned());
    }
    let age_ms = now_ms.saturating_sub(stored.checked_at_ms);
    if age_ms > proof_lifetime_ms(proof.interval_s) {
        return Some(format!(
            "its last self-check is {} s old (checks every {} s)",
            age_ms / 1000,
            proof.interval_s
        ));
    }
    None
}

/// `GET /api/v1/summary`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub enforced: usize,
    pub observing: usize,
    pub drifted: usize,
    pub unprotected: usize,
    pub stale: usize,
    /// Nodes whose proof does not hold (see [`NodeView::verified`]).
    pub unverified: usize,
    /// Nodes that run the fleet's policy version and mode.
    pub converged: usize,
    pub policy_version: u64,
    pub mode: Option<Mode>,
    /// Since when the tops count (the last 24 hours).
    pub since: String,
    pub top_destinations: Vec<Top>,
    pub top_processes: Vec<Top>,
}

pub fn summary(
    views: &[NodeView],
    fleet: &FleetSettings,
    since_ms: u64,
    (top_destinations, top_processes): (Vec<Top>, Vec<Top>),
) -> Summary {
    let count = |state| views.iter().filter(|v| v.state == state).count();
    Summary {
        nodes: views.len(),
        enforced: count(NodeState::Enforced),
        observing: count(NodeState::Observing),
        drifted: count(NodeState::Drifted),
        unprotected: count(NodeState::Unprotected),
        stale: count(NodeState::Stale),
        unverified: views.iter().filter(|v| !v.verified).count(),
        converged: views.iter().filter(|v| v.converged).count(),
        policy_version: fleet.policy_version,
        mode: fleet.mode,
        since: rfc3339(since_ms),
        top_destinations,
        top_processes,
    }
}
