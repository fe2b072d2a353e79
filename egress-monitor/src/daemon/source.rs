//! Which policy source a node follows.
//!
//! `egress-monitor policy apply FILE` records FILE (canonical, absolute) beside the pins, in
//! `<run dir>/policy-source.json`. From then on the daemon builds its policy from that record —
//! at every SIGHUP and at every start that adopts these pins — and no longer from its own
//! `--policy`, `--mode`, `--allow`, `--deny` and `--break-platform-access`, and it says so in
//! its log. An applied policy is therefore never undone behind the operator's back: only
//! another `policy apply`, a fleet policy (which ranks above both), or `detach` (which removes
//! the pins and the record with them) changes what the node follows.
//!
//! The record lives exactly as long as the pins: both are gone after `detach` or a reboot, and
//! a daemon that pins anew starts from its own arguments.
//!
//! Precedence, highest first: the fleet's policy and mode (`run --controller`), the recorded
//! source, the daemon's arguments. [`choose`] decides between the last two; it is pure.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use egress_monitor_policy::{CommandLineRules, Mode, PolicySource};

use crate::{datapath::pins::PinLayout, fleet::reporter::ReporterStatus};

/// The name of the record in the run directory.
const RECORD_FILE: &str = "policy-source.json";

/// What `policy apply` asked for, kept so that reloads and restarts build the same policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedSource {
    /// The policy file, canonical and absolute: the daemon's working directory is not the
    /// operator's.
    pub file: PathBuf,
    /// `policy apply --mode`, overriding the file's `mode`.
    pub mode: Option<Mode>,
    /// `policy apply --break-platform-access`.
    pub accept_risk: bool,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the recorded policy source {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid policy source record", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot record the policy source in {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the stale policy source record {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RecordedSource {
    /// Where the record of these pins lives.
    pub fn path(layout: &PinLayout) -> PathBuf {
        layout.run_dir().join(RECORD_FILE)
    }

    /// `Ok(None)` when nothing was recorded.
    pub fn load(path: &Path) -> Result<Option<RecordedSource>, SourceError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SourceError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| SourceError::Parse {
                path: path.to_owned(),
                source,
            })
    }

    /// Writes atomically (a temporary file renamed over the old one): a daemon reloading at the
    /// same moment reads the old record or the new, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), SourceError> {
        let temporary = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("plain struct");
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(&temporary, text))
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|source| SourceError::Write {
                path: path.to_owned(),
                source,
            })
    }

    /// Puts `previous` back, or removes the record when there was none: what `policy apply`
    /// does when the datapath refuses the policy it has just recorded.
    pub fn restore(path: &Path, previous: Option<&RecordedSource>) -> Result<(), SourceError> {
        match previous {
            Some(previous) => previous.save(path),
            None => RecordedSource::forget(path),
        }
    }

    /// Removes the record; no record is not an error.
    pub fn forget(path: &Path) -> Result<(), SourceError> {
        match std::fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(SourceError::Remove {
                path: path.to_owned(),
                source: err,
            }),
            _ => Ok(()),
        }
    }

    /// The source it stands for: the file alone, as `policy apply` built it. Rules found at run
    /// time (`discovered`) are the node's, not the file's, and carry over.
    fn source(&self, discovered: &[egress_monitor_policy::Rule]) -> PolicySource {
        PolicySource {
            file: Some(self.file.clone()),
            command_line: CommandLineRules::default(),
            mode: self.mode,
            accept_risk: self.accept_risk,
            discovered: discovered.to_vec(),
            mode_label: self.mode.map(|_| "`policy apply --mode`".to_owned()),
            ..PolicySource::default()
        }
    }
}

/// What the daemon builds its policy from.
#[derive(Clone, Debug)]
pub struct Chosen {
    pub source: PolicySource,
    /// What to log when a recorded source is followed: `policy source is FILE (set by `policy
    /// apply` at TIME), not --policy X`.
    pub notice: Option<String>,
    /// The daemon's own arguments the recorded source leaves unused (the notice is then a
    /// warning: someone started the daemon expecting them to count).
    pub unused: Vec<String>,
}

/// Chooses between the daemon's arguments and the recorded source: the record wins whenever
/// there is one. `arguments.file` is compared with the record's file as given, so the caller
/// passes it canonical.
pub fn choose(arguments: &PolicySource, recorded: Option<&RecordedSource>) -> Chosen {
    let Some(recorded) = recorded else {
        return Chosen {
            source: arguments.clone(),
            notice: None,
            unused: Vec::new(),
        };
    };
    let versus = match &arguments.file {
        Some(file) if *file == recorded.file => "the same file as --policy".to_owned(),
        Some(file) => format!("not --policy {}", file.display()),
        None => "not the daemon's own arguments (no --policy)".to_owned(),
    };
    let notice = format!(
        "policy source is {} (set by `policy apply` at {}), {versus}",
        recorded.file.display(),
        recorded.recorded_at
    );
    Chosen {
        source: recorded.source(&arguments.discovered),
        notice: Some(notice),
        unused: unused_arguments(arguments, recorded),
    }
}

/// The daemon's policy arguments that a recorded source makes moot, as they were written.
fn unused_arguments(arguments: &PolicySource, recorded: &RecordedSource) -> Vec<String> {
    let mut unused = Vec::new();
    if let Some(file) = arguments
        .file
        .as_ref()
        .filter(|file| **file != recorded.file)
    {
        unused.push(format!("--policy {}", file.display()));
    }
    if let Some(mode) = arguments.mode.filter(|mode| Some(*mode) != recorded.mode) {
        unused.push(format!("--mode {mode}"));
    }
    unused.extend(
        arguments
            .command_line
            .allow
            .iter()
            .map(|c| format!("--allow {c}")),
    );
    unused.extend(
        arguments
            .command_line
            .deny
            .iter()
            .map(|c| format!("--deny {c}")),
    );
    if arguments.accept_risk && !recorded.accept_risk {
        unused.push("--break-platform-access".to_owned());
    }
    unused
}

/// Why a local `policy apply` must not run on a node that follows a fleet policy or mode (the
/// next fleet update, and every restart, would put the fleet's back), or `None`.
pub fn fleet_conflict(reporter: Option<&ReporterStatus>) -> Option<String> {
    let reporter = reporter?;
    let what = match (reporter.fleet_policy_version, reporter.fleet_mode) {
        (None, None) => return None,
        (Some(version), None) => format!("fleet policy v{version}"),
        (None, Some(mode)) => format!("the fleet's {mode} mode"),
        (Some(version), Some(mode)) => format!("fleet policy v{version} in {mode} mode"),
    };
    Some(format!(
        "this node follows {what} from the controller {}; the fleet's policy and mode rank \
         above a local one, so change it at the controller (PUT /api/v1/policy, /api/v1/mode)",
        reporter.controller
    ))
}

/// The daemon's arguments with `--policy` made canonical, for [`choose`] to compare; a file
/// that cannot be resolved is kept as given (building it reports the error with its path).
pub fn canonical_arguments(arguments: &PolicySource) -> PolicySource {
    let mut canonical = arguments.clone();
    if let Some(file) = &arguments.file {
        canonical.file = Some(std::fs::canonicalize(file).unwrap_or_else(|_| file.clone()));
    }
    canonical
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(file: &str, mode: Option<Mode>) -> RecordedSource {
        RecordedSource {
            file: PathBuf::from(file),
            mode,
            accept_risk: false,
            recorded_at: "2026-12-01T14:00:00Z".into(),
        }
    }

    fn arguments(file: Option<&str>, mode: Option<Mode>) -> PolicySource {
        PolicySource {
            file: file.map(PathBuf::from),
            mode,
            ..PolicySource::default()
        }
    }

    #[test]
    fn without_a_record_the_daemons_arguments_are_followed() {
        let args = arguments(Some("/etc/a.toml"), Some(Mode::Observe));
        let chosen = choose(&args, None);
        assert_eq!(chosen.source.file, args.file);
        assert_eq!(chosen.source.mode, Some(Mode::Observe));
        assert_eq!(chosen.notice, None);
        assert!(chosen.unused.is_empty());
    }

    #[test]
    fn a_record_wins_over_policy_and_mode_and_says_which_arguments_it_leaves_unused() {
        let mut args = arguments(Some("/etc/a.toml"), Some(Mode::Observe));
        args.command_line.allow.push("198.51.100.0/24".into());
        args.command_line.deny.push("10.1.2.0/24".into());
        args.accept_risk = true;
        let chosen = choose(&args, Some(&recorded("/srv/b.toml", None)));
        assert_eq!(chosen.source.file, Some(PathBuf::from("/srv/b.toml")));
        // The file's own mode decides, not the daemon's --mode observe.
        assert_eq!(chosen.source.mode, None);
        assert!(chosen.source.command_line.allow.is_empty());
        assert!(chosen.source.command_line.deny.is_empty());
        assert!(!chosen.source.accept_risk);
        assert_eq!(
            chosen.notice.as_deref(),
            Some(
                "policy source is /srv/b.toml (set by `policy apply` at 2026-12-01T14:00:00Z), \
                 not --policy /etc/a.toml"
            )
        );
        assert_eq!(
            chosen.unused,
            [
                "--policy /etc/a.toml",
                "--mode observe",
                "--allow 198.51.100.0/24",
                "--deny 10.1.2.0/24",
                "--break-platform-access",
            ]
        );
    }

    #[test]
    fn the_recorded_mode_and_risk_are_kept_and_discovered_rules_carry_over() {
        let mut args = arguments(None, Some(Mode::Enforce));
        args.discovered.push(egress_monitor_policy::Rule {
            name: "vnet".into(),
            network: "10.5.0.0/16".parse().unwrap(),
            action: egress_monitor_policy::Action::Allow,
            origin: egress_monitor_policy::Origin::Imds("test".into()),
            expires: None,
        });
        let mut record = recorded("/srv/b.toml", Some(Mode::Enforce));
        record.accept_risk = true;
        let chosen = choose(&args, Some(&record));
        assert_eq!(chosen.source.mode, Some(Mode::Enforce));
        assert!(chosen.source.accept_risk);
        assert_eq!(chosen.source.discovered, args.discovered);
        assert!(
            chosen
                .notice
                .unwrap()
                .ends_with("not the daemon's own arguments (no --policy)")
        );
        // The same --mode as recorded is not "unused".
        assert!(chosen.unused.is_empty(), "{:?}", chosen.unused);
    }

    #[test]
    fn the_same_file_as_policy_is_named_so() {
        let chosen = choose(
            &arguments(Some("/srv/b.toml"), None),
            Some(&recorded("/srv/b.toml", None)),
        );
        assert!(
            chosen
                .notice
                .unwrap()
                .ends_with("the same file as --policy")
        );
        assert!(chosen.unused.is_empty());
    }

    #[test]
    fn a_fleet_policy_or_mode_refuses_a_local_apply() {
        assert_eq!(fleet_conflict(None), None);
        let mut reporter = ReporterStatus {
            controller: "https://controller:8443".into(),
            ..ReporterStatus::default()
        };
        assert_eq!(fleet_conflict(Some(&reporter)), None);
        reporter.fleet_policy_version = Some(7);
        let text = fleet_conflict(Some(&reporter)).unwrap();
        assert!(
            text.starts_with(
                "this node follows fleet policy v7 from the controller https://controller:8443;"
            ),
            "{text}"
        );
        reporter.fleet_mode = Some(Mode::Enforce);
        assert!(
            fleet_conflict(Some(&reporter))
                .unwrap()
                .contains("fleet policy v7 in enforce mode")
        );
        reporter.fleet_policy_version = None;
        assert!(
            fleet_conflict(Some(&reporter))
                .unwrap()
                .contains("follows the fleet's enforce mode")
        );
    }

    #[test]
    fn a_record_round_trips_is_restored_and_forgetting_nothing_is_fine() {
        let dir = std::env::temp_dir().join(format!("em-source-{}", std::process::id()));
        let path = dir.join(RECORD_FILE);
        assert_eq!(RecordedSource::load(&path).unwrap(), None);
        let first = recorded("/srv/a.toml", None);
        first.save(&path).unwrap();
        let second = recorded("/srv/b.toml", Some(Mode::Enforce));
        second.save(&path).unwrap();
        assert_eq!(RecordedSource::load(&path).unwrap(), Some(second));
        RecordedSource::restore(&path, Some(&first)).unwrap();
        assert_eq!(RecordedSource::load(&path).unwrap(), Some(first));
        RecordedSource::restore(&path, None).unwrap();
        RecordedSource::forget(&path).unwrap();
        assert_eq!(RecordedSource::load(&path).unwrap(), None);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            RecordedSource::load(&path),
            Err(SourceError::Parse { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
