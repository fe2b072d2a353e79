//! The state file: what the pinned maps cannot say for themselves — the applied policy's rule
//! names and origins, by rule id. The maps hold the truth for verdicts (prefixes, actions, ids,
//! mode, version); this file names them for events and `status`.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use egress_monitor_policy::{Action, Mode};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The policy version (hex), as in the config map.
    pub version: String,
    pub mode: Mode,
    /// Where the mode came from (see `Policy::mode_source`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode_source: String,
    /// RFC 3339.
    pub applied_at: String,
    pub groups: Vec<(String, bool)>,
    /// Sorted by id (`apply` writes them so and [`StateFile::load`] sorts what it reads), so
    /// that [`StateFile::rule`] — once per event — is a binary search, not a scan of up to
    /// hundreds of thousands of rules.
    pub rules: Vec<StateRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRule {
    pub id: u32,
    pub cidr: String,
    pub action: Action,
    pub name: String,
    pub origin: String,
    /// When the rule stops applying (RFC 3339, UTC), for rules that expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid state file", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StateFile {
    /// `Ok(None)` when there is no state file.
    pub fn load(path: &Path) -> Result<Option<StateFile>, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut state: StateFile =
            serde_json::from_str(&text).map_err(|source| StateError::Parse {
                path: path.to_owned(),
                source,
            })?;
        state.rules.sort_by_key(|rule| rule.id);
        Ok(Some(state))
    }

    /// Writes atomically (a temporary file renamed over the old one): a reader sees the old
    /// state or the new, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let write = |source| StateError::Write {
            path: path.to_owned(),
            source,
        };
        let temporary = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|err| write(err.into()))?;
        std::fs::write(&temporary, text).map_err(write)?;
        std::fs::rename(&temporary, path).map_err(write)
    }

    /// The rule with this id.
    pub fn rule(&self, id: u32) -> Option<&StateRule> {
        self.rules
            .binary_search_by_key(&id, |rule| rule.id)
            .ok()
            .map(|index| &self.rules[index])
    }

    /// The name of a rule id; `default` for "no rule matched" or an unknown id.
    pub fn rule_name(&self, id: u32) -> &str {
        self.rule(id).map_or("default", |rule| rule.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_a_missing_file_is_none() {
        let dir = std::env::temp_dir().join(format!("em-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(StateFile::load(&path).unwrap(), None);
        let state = StateFile {
            version: "0123456789abcdef".into(),
            mode: Mode::Enforce,
            mode_source: String::new(),
            applied_at: "2026-11-29T00:00:00Z".into(),
            groups: vec![("private".into(), true)],
            rules: vec![StateRule {
                id: 7,
                cidr: "10.1.2.0/24".into(),
                action: Action::Deny,
                name: "lab".into(),
                origin: "command line".into(),
                expires: None,
            }],
        };
        state.save(&path).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), Some(state.clone()));
        assert_eq!(state.rule_name(7), "lab");
        assert_eq!(state.rule_name(8), "default");
        // A file whose rules are not in id order (written by an older build) is sorted on
        // load, so the binary search finds every rule.
        let mut unsorted = state.clone();
        unsorted.rules.insert(
            0,
            StateRule {
                id: 9,
                name: "late".into(),
                ..state.rules[0].clone()
            },
        );
        unsorted.rules.push(StateRule {
            id: 2,
            name: "early".into(),
            ..state.rules[0].clone()
        });
        unsorted.save(&path).unwrap();
        let loaded = StateFile::load(&path).unwrap().unwrap();
        assert_eq!(
            [2, 7, 9].map(|id| loaded.rule_name(id).to_owned()),
            ["early", "lab", "late"]
        );
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            StateFile::load(&path),
            Err(StateError::Parse { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
