//! The fleet's policy and mode on this node. The reporter brings them from the controller;
//! the daemon's loop applies them here, live, as a difference, like a SIGHUP reload: the
//! policy text is validated exactly as a local policy file would be (the failsafe included),
//! and an invalid one changes nothing. What was applied is kept in the spool directory, so a
//! restarted daemon runs the fleet's policy and mode from its first moment (a lockdown is not
//! undone by a restart).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use egress_monitor_api::wire::Desired;
use egress_monitor_policy::{Mode, PolicyError, PolicySource};

use crate::{
    datapath::Datapath,
    fleet::reporter::{Following, spool::write_durably},
};

/// What was applied last: `fleet.json` beside the policy file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    policy_version: Option<u64>,
    mode: Option<Mode>,
}

/// How the fleet's mode is named as a mode's source.
const FLEET_MODE: &str = "the fleet's mode (PUT /api/v1/mode)";

fn applied_path(dir: &Path) -> PathBuf {
    dir.join("fleet.json")
}

fn policy_path(dir: &Path) -> PathBuf {
    dir.join("fleet-policy.toml")
}

/// Checks the kept fleet policy, if there is one, as every fleet policy is checked
/// (`fleet_policy_file`: the same meaning on the controller and on every node).
pub fn check_kept(dir: &Path) -> Result<(), PolicyError> {
    let path = policy_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => egress_monitor_policy::fleet_policy_file(&text).map(drop),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PolicyError::Read { path, source }),
    }
}

/// Makes `source` the fleet's policy and mode as last applied, if any were; returns the state
/// the reporter starts from.
pub fn restore(dir: &Path, source: &mut PolicySource) -> Following {
    let Some(applied) = std::fs::read(applied_path(dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Applied>(&bytes).ok())
    else {
        return Following::default();
    };
    if let Some(version) = applied.policy_version {
        source.file = Some(policy_path(dir));
        source.file_label = Some(format!("fleet policy v{version}"));
    }
    if let Some(mode) = applied.mode {
        source.mode = Some(mode);
        source.mode_label = Some(FLEET_MODE.to_owned());
    }
    log::info!(
        "running the fleet's {} and {} mode, as last applied",
        applied
            .policy_version
            .map_or("local policy".to_owned(), |v| format!("policy v{v}")),
        applied.mode.map_or("the local", Mode::as_str),
    );
    Following {
        policy_version: applied.policy_version,
        mode: applied.mode,
        error: None,
        refused: None,
    }
}

/// When the fleet no longer sets a policy (`desired` version 0) or a mode (`None`) the node
/// follows (a rolled-back rollout), forgets them in the record kept in `dir` and returns the
/// state without them: the caller then builds the node's own source again. `None` when
/// nothing is released.
pub fn release(dir: &Path, desired: Desired, state: &Following) -> Option<Following> {
    let policy_released = desired.policy_version == 0 && state.policy_version.is_some();
    let mode_released = desired.mode.is_none() && state.mode.is_some();
    if !policy_released && !mode_released {
        return None;
    }
    let applied = Applied {
        policy_version: if policy_released {
            None
        } else {
            state.policy_version
        },
        mode: if mode_released { None } else { state.mode },
    };
    if let Err(err) = write_durably(
        &applied_path(dir),
        &serde_json::to_vec(&applied).expect("plain struct"),
    ) {
        log::error!(
            "cannot record the fleet's release: {}",
            crate::system::error::chain(&err)
        );
        return None;
    }
    log::info!(
        "the fleet no longer sets {}: back to this node's own",
        match (policy_released, mode_released) {
            (true, true) => "a policy or a mode",
            (true, false) => "a policy",
            _ => "a mode",
        }
    );
    Some(Following {
        policy_version: applied.policy_version,
        mode: applied.mode,
        error: None,
        refused: None,
    })
}

/// Applies the fleet's wishes; on success `source` is the new source. `Err` says why nothing
/// changed.
pub fn apply(
    dir: &Path,
    desired: Desired,
    policy: Option<&str>,
    source: &mut PolicySource,
    datapath: &mut Datapath,
    state: &Following,
) -> Result<Following, String> {
    let mut candidate = source.clone();
    if let Some(mode) = desired.mode {
        candidate.mode = Some(mode);
        candidate.mode_label = Some(FLEET_MODE.to_owned());
    }
    let pending = dir.join("fleet-policy.pending.toml");
    if let Some(text) = policy {
        // As the controller validated it: a fleet policy reads no file of this node.
        egress_monitor_policy::fleet_policy_file(text).map_err(|err| {
            format!(
                "fleet policy v{} is invalid here: {err}",
                desired.policy_version
            )
        })?;
        write_durably(&pending, text.as_bytes())
            .map_err(|err| crate::system::error::chain(&err))?;
        candidate.file = Some(pending.clone());
        // Validated under its pending name first: the live file is only ever a valid policy.
        if let Err(err) = candidate.build() {
            let _ = std::fs::remove_file(&pending);
            return Err(format!(
                "fleet policy v{} is invalid here: {err}",
                desired.policy_version
            ));
        }
        std::fs::rename(&pending, policy_path(dir)).map_err(|err| err.to_string())?;
        candidate.file = Some(policy_path(dir));
        candidate.file_label = Some(format!("fleet policy v{}", desired.policy_version));
    }
    let built = candidate.build().map_err(|err| {
        format!(
            "the fleet's {} mode is invalid with this node's policy: {err}",
            desired.mode.map_or("", Mode::as_str)
        )
    })?;
    let report = datapath
        .apply(&built)
        .map_err(|err| crate::system::error::chain(&err))?;
    log::info!("fleet: {report}");
    let applied = Applied {
        policy_version: if policy.is_some() {
            Some(desired.policy_version)
        } else {
            state.policy_version
        },
        mode: desired.mode.or(state.mode),
    };
    write_durably(
        &applied_path(dir),
        &serde_json::to_vec(&applied).expect("plain struct"),
    )
    .map_err(|err| crate::system::error::chain(&err))?;
    *source = candidate;
    Ok(Following {
        policy_version: applied.policy_version,
        mode: applied.mode,
        error: None,
        refused: None,
    })
}

#[cfg(test)]
mod tests {
    use super::check_kept;

    #[test]
    fn a_kept_fleet_policy_naming_a_service_tags_file_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            check_kept(dir.path()).is_ok(),
            "nothing kept, nothing to refuse"
        );
        std::fs::write(
            dir.path().join("fleet-policy.toml"),
            "[service_tags]\nfile = \"tags.json\"\ntags = [\"Storage\"]\n",
        )
        .unwrap();
        // A file beside it would have been read by an older version; now it never is.
        std::fs::write(dir.path().join("tags.json"), r#"{"values": []}"#).unwrap();
        let err = check_kept(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("a fleet policy cannot name a service tags file"),
            "{err}"
        );
        std::fs::write(
            dir.path().join("fleet-policy.toml"),
            "[[rule]]\nname = \"mirror\"\ncidr = \"198.51.100.0/24\"\naction = \"allow\"\n",
        )
        .unwrap();
        assert!(check_kept(dir.path()).is_ok());
    }
}
