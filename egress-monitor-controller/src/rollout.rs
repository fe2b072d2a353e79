//! Staged rollouts: a new fleet policy or mode goes to a group of nodes first (a scale set,
//! a `--node-group` label, or a stable percentage of the nodes), the others keep what they run;
//! the rollout pauses by itself when a canary reports new drops or a failing self-check, and
//! is promoted (every node) or rolled back (the canaries return to what the others run) in one
//! call. Each stage is recorded in the fleet's history with who did it.
//!
//! The candidate becomes the fleet's newest policy version when the rollout starts; the
//! rollout keeps the version, text and mode every other node stays on (its base) until it ends.
//! Pure: the stores carry out the [`Plan`] this module decides, under the fleet row's lock.

use egress_monitor_api::{Mode, time::rfc3339, wire::Desired};
use serde::{Deserialize, Serialize};

/// Which nodes get the candidate first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Nodes of this group (`--node-group`, or the Azure scale set).
    Group(String),
    /// This share of the nodes (1-100), chosen by a hash of their id: the same nodes each
    /// time, whatever else changes.
    Percent(u8),
}

impl Target {
    pub fn includes(&self, node_id: &str, group: Option<&str>) -> bool {
        match self {
            Target::Group(name) => group == Some(name.as_str()),
            Target::Percent(percent) => bucket(node_id) < u32::from(*percent),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Group(name) => format!("group {name}"),
            Target::Percent(percent) => format!("{percent}% of the nodes"),
        }
    }
}

/// A node's stable bucket, 0-99.
fn bucket(node_id: &str) -> u32 {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(node_id.as_bytes());
    u32::from_be_bytes(digest[..4].try_into().expect("4 bytes")) % 100
}

egress_monitor_api::words! {
    /// Where a rollout stands.
    pub enum Stage { Canary = "canary", Paused = "paused" }
}

/// The rollout in progress, kept in the fleet's row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub target: Target,
    pub stage: Stage,
    /// Why it paused (a canary's new drops, a failed self-check, an operator).
    pub reason: Option<String>,
    pub started_ms: u64,
    pub started_by: String,
    /// What the nodes outside the target keep: the fleet's version, policy and mode before.
    pub base_version: u64,
    pub base_policy: Option<String>,
    pub base_mode: Option<Mode>,
}

/// The fleet as a transition is decided from: its policy version, policy and mode, and the
/// rollout in progress.
#[derive(Clone, Copy, Debug)]
pub struct Current<'a> {
    pub policy_version: u64,
    pub policy: Option<&'a str>,
    pub mode: Option<Mode>,
    pub rollout: Option<&'a Rollout>,
}

impl Current<'_> {
    /// What the fleet wants `node_id` (of `group`) to run now.
    pub fn desired_for(&self, node_id: &str, group: Option<&str>) -> Desired {
        match self.rollout {
            Some(rollout) if !rollout.target.includes(node_id, group) => Desired {
                policy_version: rollout.base_version,
                mode: rollout.base_mode,
            },
            _ => Desired {
                policy_version: self.policy_version,
                mode: self.mode,
            },
        }
    }

    /// The policy text of what [`Current::desired_for`] says.
    pub fn policy_for(&self, node_id: &str, group: Option<&str>) -> Option<String> {
        match self.rollout {
            Some(rollout) if !rollout.target.includes(node_id, group) => {
                rollout.base_policy.clone()
            }
            _ => self.policy.map(str::to_owned),
        }
    }
}

/// What an operator (or the controller) asks of the fleet's rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    Start {
        /// A new policy text (validated by the caller), or none (the mode only).
        policy: Option<String>,
        mode: Option<Mode>,
        target: Target,
        /// `If-Match`: only from this fleet version.
        expected: Option<u64>,
    },
    /// Stop the canaries' rollout where it is (the canaries keep the candidate).
    Pause { reason: String },
    /// Every node gets the candidate: the rollout ends. A paused rollout only with
    /// `confirm_paused` (the operator saw why it paused).
    Promote { confirm_paused: bool },
    /// The fleet's mode, during a rollout or not: during one, only `enforce` (the lockdown,
    /// which the nodes outside the target get too); `observe` waits for the rollout's end.
    SetMode(Mode),
    /// The canaries return to the base: the rollout ends and the fleet is as before it.
    Rollback,
}

/// What a store writes to carry a transition out (in this order), under the fleet row's lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// A new policy version with this text (as `PUT /policy` stores one).
    pub new_policy: Option<String>,
    /// The fleet's version, policy and mode set back to these (a rollback).
    pub restore: Option<(u64, Option<String>, Option<Mode>)>,
    /// The fleet's mode set to this.
    pub mode: Option<Mode>,
    /// The rollout as it is after (`None`: no rollout).
    pub rollout: Option<Rollout>,
    /// The history's word for it: `rollout-start`, `rollout-pause`, `rollout-promote`,
    /// `rollout-rollback`.
    pub change: &'static str,
}

/// Why a transition was refused (nothing written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 409: another rollout runs, or there is none to act on.
    Conflict(String),
    /// 412: the fleet moved since the version the caller saw.
    Moved { current: u64 },
    /// 422: nothing would change.
    Nothing(String),
}

/// Decides a transition from the fleet as it is at `now_ms`, asked by `actor`.
pub fn plan(
    fleet: Current,
    transition: Transition,
    now_ms: u64,
    actor: &str,
) -> Result<Plan, Refusal> {
    match transition {
        Transition::Start {
            policy,
            mode,
            target,
            expected,
        } => {
            if let Some(rollout) = fleet.rollout {
                return Err(Refusal::Conflict(format!(
                    "a rollout to {} runs since {} ({}): promote or roll it back first",
                    rollout.target.describe(),
                    rfc3339(rollout.started_ms),
                    rollout.stage
                )));
            }
            if let Some(expected) = expected
                && expected != fleet.policy_version
            {
                return Err(Refusal::Moved {
                    current: fleet.policy_version,
                });
            }
            let new_policy = policy.filter(|text| fleet.policy != Some(text.as_str()));
            let new_mode = mode.filter(|mode| fleet.mode != Some(*mode));
            if new_policy.is_none() && new_mode.is_none() {
                return Err(Refusal::Nothing(
                    "the fleet already runs this policy and mode: nothing to roll out".to_owned(),
                ));
            }
            Ok(Plan {
                new_policy,
                restore: None,
                mode: new_mode,
                rollout: Some(Rollout {
                    target,
                    stage: Stage::Canary,
                    reason: None,
                    started_ms: now_ms,
                    started_by: actor.to_owned(),
                    base_version: fleet.policy_version,
                    base_policy: fleet.policy.map(str::to_owned),
                    base_mode: fleet.mode,
                }),
                change: "rollout-start",
            })
        }
        Transition::Pause { reason } => {
            let Some(rollout) = fleet.rollout else {
                return Err(Refusal::Conflict("no rollout runs".to_owned()));
            };
            if rollout.stage == Stage::Paused {
                return Err(Refusal::Nothing(format!(
                    "the rollout is paused already: {}",
                    rollout.reason.as_deref().unwrap_or("")
                )));
            }
            Ok(Plan {
                rollout: Some(Rollout {
                    stage: Stage::Paused,
                    reason: Some(reason),
                    ..rollout.clone()
                }),
                change: "rollout-pause",
                ..Plan::default()
            })
        }
        Transition::Promote { confirm_paused } => {
            let Some(rollout) = fleet.rollout else {
                return Err(Refusal::Conflict("no rollout runs".to_owned()));
            };
            if rollout.stage == Stage::Paused && !confirm_paused {
                return Err(Refusal::Conflict(format!(
                    "the rollout is paused: {}; promote it with {{\"confirm\": \"paused\"}} if that is what you want",
                    rollout.reason.as_deref().unwrap_or("")
                )));
            }
            Ok(Plan {
                rollout: None,
                change: "rollout-promote",
                ..Plan::default()
            })
        }
        Transition::SetMode(mode) => match fleet.rollout {
            None => Ok(Plan {
                mode: Some(mode),
                change: "mode",
                ..Plan::default()
            }),
            Some(rollout) if mode == Mode::Enforce => Ok(Plan {
                mode: Some(mode),
                rollout: Some(Rollout {
                    base_mode: Some(mode),
                    ..rollout.clone()
                }),
                change: "mode",
                ..Plan::default()
            }),
            Some(rollout) => Err(Refusal::Conflict(format!(
                "a rollout to {} is in progress ({}): the fleet's mode goes to observe after it ends (promote or roll it back); enforce (the lockdown) is taken at any time",
                rollout.target.describe(),
                rollout.stage
            ))),
        },
        Transition::Rollback => {
            let Some(rollout) = fleet.rollout else {
                return Err(Refusal::Conflict("no rollout runs".to_owned()));
            };
            Ok(Plan {
                restore: Some((
                    rollout.base_version,
                    rollout.base_policy.clone(),
                    rollout.base_mode,
                )),
                rollout: None,
                change: "rollout-rollback",
                ..Plan::default()
            })
        }
    }
}

/// Why a canary's report pauses the rollout: packets it dropped, reported while it runs the
/// candidate (`candidate_version` in `candidate_mode`), or a failing self-check on it. `None`:
/// it does not — a report from before the canary took the candidate says nothing about the
/// candidate. (Events are not compared with the rollout's start: they carry the node's clock.)
pub fn canary_trouble(
    rollout: &Rollout,
    candidate_version: u64,
    candidate_mode: Option<Mode>,
    report: &egress_monitor_api::wire::Report,
) -> Option<String> {
    let runs_candidate = (candidate_version == 0
        || report.policy.fleet_version == Some(candidate_version))
        && candidate_mode.is_none_or(|mode| report.mode == mode);
    if rollout.stage != Stage::Canary
        || !runs_candidate
        || !rollout
            .target
            .includes(&report.node_id, report.identity.group.as_deref())
    {
        return None;
    }
    let drops: Vec<&egress_monitor_api::wire::FlowEvent> = report
        .events
        .iter()
        .filter(|event| event.action == egress_monitor_api::wire::DeniedAction::Dropped)
        .collect();
    if !drops.is_empty() {
        let packets: u64 = drops.iter().map(|event| event.packets).sum();
        let first = drops[0];
        let destination = first
            .dst_name
            .clone()
            .or_else(|| first.dst.map(|dst| dst.to_string()))
            .unwrap_or_else(|| "an unreadable destination".to_owned());
        return Some(format!(
            "canary {} reported {packets} new dropped packets (first to {destination}, by {})",
            report.node_id,
            first
                .comm
                .as_deref()
                .or(first.exe.as_deref())
                .unwrap_or("an unknown process")
        ));
    }
    match &report.proof {
        Some(proof) if !proof.passed => Some(format!(
            "canary {}'s self-check failed: {}",
            report.node_id,
            proof.problems.join("; ")
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(version: u64, policy: &str, mode: Option<Mode>) -> Current<'_> {
        Current {
            policy_version: version,
            policy: Some(policy),
            mode,
            rollout: None,
        }
    }

    #[test]
    fn a_rollout_starts_pauses_and_rolls_back_to_what_the_others_run() {
        let before = fleet(4, "old", Some(Mode::Observe));
        let start = Transition::Start {
            policy: Some("new".into()),
            mode: Some(Mode::Enforce),
            target: Target::Group("canary".into()),
            expected: Some(4),
        };
        let plan = super::plan(before, start.clone(), 10, "ops").unwrap();
        assert_eq!(plan.new_policy.as_deref(), Some("new"));
        assert_eq!(plan.mode, Some(Mode::Enforce));
        let rollout = plan.rollout.clone().unwrap();
        assert_eq!((rollout.base_version, rollout.stage), (4, Stage::Canary));
        // As the store leaves it: v5 for the canaries, v4 for the others.
        let during = Current {
            policy_version: 5,
            policy: Some("new"),
            mode: Some(Mode::Enforce),
            rollout: Some(&rollout),
        };
        let canary = during.desired_for("vm-1", Some("canary"));
        let other = during.desired_for("vm-2", Some("web"));
        assert_eq!(
            (canary.policy_version, canary.mode),
            (5, Some(Mode::Enforce))
        );
        assert_eq!((other.policy_version, other.mode), (4, Some(Mode::Observe)));
        assert_eq!(
            during.policy_for("vm-2", Some("web")).as_deref(),
            Some("old")
        );
        // One at a time; a stale If-Match; nothing new.
        assert!(matches!(
            super::plan(during, start, 11, "ops"),
            Err(Refusal::Conflict(_))
        ));
        let stale = Transition::Start {
            policy: Some("x".into()),
            mode: None,
            target: Target::Percent(10),
            expected: Some(3),
        };
        assert_eq!(
            super::plan(before, stale, 11, "ops"),
            Err(Refusal::Moved { current: 4 })
        );
        let same = Transition::Start {
            policy: Some("old".into()),
            mode: Some(Mode::Observe),
            target: Target::Percent(10),
            expected: None,
        };
        assert!(matches!(
            super::plan(before, same, 11, "ops"),
            Err(Refusal::Nothing(_))
        ));
        // Paused, then rolled back to the base.
        let pause = Transition::Pause {
            reason: "drops".into(),
        };
        let paused = super::plan(during, pause, 12, "controller").unwrap();
        assert_eq!(paused.rollout.as_ref().unwrap().stage, Stage::Paused);
        let back = super::plan(during, Transition::Rollback, 13, "ops").unwrap();
        assert_eq!(
            back.restore,
            Some((4, Some("old".into()), Some(Mode::Observe)))
        );
        assert_eq!(back.rollout, None);
        let promoted = super::plan(
            during,
            Transition::Promote {
                confirm_paused: false,
            },
            13,
            "ops",
        )
        .unwrap();
        assert_eq!((promoted.restore, promoted.rollout), (None, None));
        assert!(matches!(
            super::plan(
                before,
                Transition::Promote {
                    confirm_paused: false
                },
                13,
                "ops"
            ),
            Err(Refusal::Conflict(_))
        ));
        // A paused rollout is promoted only when the operator says they saw why.
        let paused_rollout = paused.rollout.clone().unwrap();
        let paused_fleet = Current {
            rollout: Some(&paused_rollout),
            ..during
        };
        let unconfirmed = Transition::Promote {
            confirm_paused: false,
        };
        assert!(matches!(
            super::plan(paused_fleet, unconfirmed, 14, "ops"),
            Err(Refusal::Conflict(_))
        ));
        let confirmed = Transition::Promote {
            confirm_paused: true,
        };
        assert!(super::plan(paused_fleet, confirmed, 14, "ops").is_ok());
        // The lockdown during a rollout reaches the others too; observe waits.
        let lockdown = super::plan(during, Transition::SetMode(Mode::Enforce), 15, "ops").unwrap();
        assert_eq!(lockdown.rollout.unwrap().base_mode, Some(Mode::Enforce));
        assert!(matches!(
            super::plan(during, Transition::SetMode(Mode::Observe), 15, "ops"),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn a_percentage_picks_the_same_nodes_every_time() {
        let target = Target::Percent(25);
        let picked: Vec<bool> = (0..1000)
            .map(|i| target.includes(&format!("vm-{i}"), None))
            .collect();
        let share = picked.iter().filter(|p| **p).count();
        assert!((180..320).contains(&share), "{share} of 1000");
        let again: Vec<bool> = (0..1000)
            .map(|i| target.includes(&format!("vm-{i}"), None))
            .collect();
        assert_eq!(picked, again);
        assert!((0..1000).all(|i| Target::Percent(100).includes(&format!("vm-{i}"), None)));
    }
}
