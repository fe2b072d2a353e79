//! `policy suggest` (learning mode) and `policy replay` (dry runs): a node's recorded traffic
//! turned into a proposed policy, and a policy tried against it.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use egress_monitor_policy::{
    CommandLineRules, Mode, PolicySource,
    replay::replay as replay_policy,
    service_tags::ServiceTags,
    suggest::{Widening, suggest as suggest_policy},
};

use super::{exit::ExitStatus, fail};
use crate::events::read::observations;

/// What may widen the proposal (see `egress_monitor_policy::suggest`).
pub struct Widen {
    pub wildcards: bool,
    pub widen: bool,
    pub service_tags: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the events file {path}")]
struct EventsFileError {
    path: String,
    #[source]
    source: std::io::Error,
}

fn read_events(events: &Path) -> Result<Vec<egress_monitor_policy::suggest::Seen>, ExitCode> {
    match observations(events) {
        Ok((seen, unreadable)) => {
            if unreadable > 0 {
                eprintln!(
                    "{}: {unreadable} lines were not events and were skipped",
                    events.display()
                );
            }
            Ok(seen)
        }
        Err(source) => Err(fail(
            &EventsFileError {
                path: events.display().to_string(),
                source,
            },
            ExitStatus::InvalidInput,
        )),
    }
}

pub fn suggest(events: &Path, widen: Widen, mode: Mode) -> ExitCode {
    let tags = match &widen.service_tags {
        Some(path) => match ServiceTags::load(path) {
            Ok(tags) => Some((tags, path.display().to_string())),
            Err(err) => return fail(&err, ExitStatus::InvalidInput),
        },
        None => None,
    };
    let seen = match read_events(events) {
        Ok(seen) => seen,
        Err(code) => return code,
    };
    let suggestion = suggest_policy(
        &seen,
        &Widening {
            wildcards: widen.wildcards,
            widen: widen.widen,
            service_tags: tags.as_ref().map(|(tags, path)| (tags, path.clone())),
        },
    );
    if suggestion.rules.is_empty() {
        eprintln!(
            "{}: no denied traffic recorded ({} observations): the policy in force already allows \
             everything seen",
            events.display(),
            suggestion.seen
        );
    }
    let text = suggestion.render(&events.display().to_string(), mode);
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

pub fn replay(
    file: &Path,
    events: &Path,
    top: usize,
    fail_if_blocking: bool,
    json: bool,
) -> ExitCode {
    let source = PolicySource {
        file: Some(file.to_owned()),
        command_line: CommandLineRules::default(),
        mode: None,
        accept_risk: true,
        discovered: Vec::new(),
        ..PolicySource::default()
    };
    let policy = match source.build() {
        Ok(policy) => policy,
        Err(err) => return fail(&err, ExitStatus::InvalidInput),
    };
    let seen = match read_events(events) {
        Ok(seen) => seen,
        Err(code) => return code,
    };
    let report = replay_policy(&policy, &seen);
    let text = if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => text + "\n",
            Err(err) => return fail(&err, ExitStatus::Failure),
        }
    } else {
        format!(
            "{} (version {:016x}) against {}:\n{}",
            file.display(),
            policy.version(),
            events.display(),
            report.render(top)
        )
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if fail_if_blocking && report.blocked.flows > 0 {
        ExitStatus::Failure.into()
    } else {
        ExitCode::SUCCESS
    }
}
