//! `policy check`, `show`, `apply` and `service-tags`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use egress_monitor_policy::{
    CommandLineRules, Mode, PolicySource,
    service_tags::{self, ServiceTags},
};

use super::{
    exit::{ExitStatus, classify},
    fail, report,
};
use crate::{
    cli::PolicyArgs,
    daemon::source::{self, RecordedSource},
    datapath::pins::PinLayout,
    datapath::{Datapath, DatapathError},
    fleet::reporter::ReporterStatus,
    inspect::status,
};

/// Exit 0 valid, 1 invalid (whatever the reason: it answers a yes/no question).
pub fn check(file: PathBuf, mode: Option<Mode>, break_platform_access: bool) -> ExitCode {
    let source = PolicySource {
        file: Some(file.clone()),
        command_line: CommandLineRules::default(),
        mode,
        accept_risk: break_platform_access,
        discovered: Vec::new(),
        ..PolicySource::default()
    };
    match source.build() {
        Ok(policy) => {
            let domains = if policy.domains.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} domain rules: DNS queries for other names refused in enforce mode",
                    policy.domains.len()
                )
            };
            println!(
                "{}: valid ({} rules{domains}, {} mode, version {:016x})",
                file.display(),
                policy.rules.len(),
                policy.mode,
                policy.version()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            report(&err);
            ExitStatus::Failure.into()
        }
    }
}

/// Every effective rule and where it came from.
pub fn show(args: &PolicyArgs) -> ExitCode {
    match source(args, None).build() {
        Ok(policy) => {
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = std::io::stdout()
                .lock()
                .write_all(policy.render().as_bytes());
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err, ExitStatus::InvalidInput),
    }
}

/// The named tags of a service tags file, printed as policy rules.
pub fn service_tags(file: &Path, tags: &[String], allow_azure_cloud: bool) -> ExitCode {
    let result = ServiceTags::load(file).and_then(|loaded| {
        let prefixes = loaded.prefixes(tags, allow_azure_cloud)?;
        Ok(service_tags::render_rules(&loaded, &prefixes))
    });
    match result {
        Ok(text) => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err, ExitStatus::InvalidInput),
    }
}

/// `policy apply`: refused on a node the fleet governs; otherwise the file is built, recorded
/// as the node's policy source (so that the daemon's SIGHUP and restarts keep it), and applied.
/// The record comes first: there is no moment when the new policy is live but a reload would
/// build another. A policy the datapath refuses puts the previous record back.
pub fn apply(
    file: PathBuf,
    mode: Option<egress_monitor_policy::Mode>,
    break_platform_access: bool,
    layout: &PinLayout,
) -> ExitCode {
    if let Some(conflict) = source::fleet_conflict(ReporterStatus::read(layout).as_ref()) {
        eprintln!(
            "egress-monitor: {}: not applied: {conflict}",
            file.display()
        );
        return ExitStatus::InvalidInput.into();
    }
    let policy_source = PolicySource {
        file: Some(file.clone()),
        command_line: CommandLineRules::default(),
        mode,
        accept_risk: break_platform_access,
        discovered: Vec::new(),
        ..PolicySource::default()
    };
    let policy = match policy_source.build() {
        Ok(policy) => policy,
        Err(err) => return fail(&err, ExitStatus::InvalidInput),
    };
    // Built above, so it exists; canonical, because the daemon's working directory is not ours.
    let canonical = match std::fs::canonicalize(&file) {
        Ok(canonical) => canonical,
        Err(source) => {
            return fail(
                &egress_monitor_policy::PolicyError::Read { path: file, source },
                ExitStatus::InvalidInput,
            );
        }
    };
    let mut datapath = match Datapath::existing(layout) {
        Ok(datapath) => datapath,
        Err(err) => return fail(&err, classify(&err)),
    };
    let record_path = RecordedSource::path(layout);
    let previous = match RecordedSource::load(&record_path) {
        Ok(previous) => previous,
        Err(err) => return fail(&err, ExitStatus::Environment),
    };
    let record = RecordedSource {
        file: canonical,
        mode,
        accept_risk: break_platform_access,
        recorded_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    if let Err(err) = record.save(&record_path) {
        return fail(&err, ExitStatus::Environment);
    }
    match datapath.apply(&policy) {
        Ok(report) => {
            println!("{report}");
            println!(
                "policy source: {} (the daemon's SIGHUP and restarts build from it, not from its --policy)",
                record.file.display()
            );
            ExitCode::SUCCESS
        }
        // Bigger maps are swapped in by the process that attached the programs: the running
        // daemon, asked to reload the source just recorded.
        Err(DatapathError::CannotGrow { .. }) if status::running_daemon(layout).is_some() => {
            apply_through_daemon(layout, &policy, &record)
        }
        Err(err) => {
            if let Err(undo) = RecordedSource::restore(&record_path, previous.as_ref()) {
                report(&undo);
            }
            fail(&err, classify(&err))
        }
    }
}

/// How long `policy apply` waits for a daemon to apply a policy that needs bigger maps.
const DAEMON_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Has the running daemon apply the policy recorded as the node's source: SIGHUP, then waits,
/// bounded, until the daemon has written a new state (its version may differ from `policy`'s:
/// the daemon adds the prefixes it discovered, the VNet's on Azure). A refusal shows in the
/// daemon's log; here it is a timeout naming the log.
fn apply_through_daemon(
    layout: &PinLayout,
    policy: &egress_monitor_policy::Policy,
    record: &RecordedSource,
) -> ExitCode {
    let applied_state = || {
        crate::datapath::state::StateFile::load(&layout.state_file())
            .ok()
            .flatten()
            .map(|state| (state.version, state.applied_at))
    };
    let before = applied_state();
    let Some(pid) = status::running_daemon(layout) else {
        eprintln!("egress-monitor: the daemon stopped; the policy was not applied");
        return ExitStatus::Environment.into();
    };
    let asked = format!("{:016x}", policy.version());
    println!(
        "the policy needs bigger maps: asking the daemon (pid {pid}) to swap them in and apply {}",
        record.file.display()
    );
    // SAFETY: kill(2) with a pid read from the daemon's pid file.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
        report(&std::io::Error::last_os_error());
        return ExitStatus::Environment.into();
    }
    let deadline = std::time::Instant::now() + DAEMON_APPLY_WAIT;
    while std::time::Instant::now() < deadline {
        // A new state, and the pinned maps holding it: the swap is complete.
        let live = Datapath::existing(layout)
            .and_then(|datapath| datapath.config())
            .map(|config| format!("{:016x}", config.policy_version));
        if let Some((version, _)) = applied_state()
            .filter(|now| Some(now) != before.as_ref())
            .filter(|(version, _)| live.as_ref().is_ok_and(|live| live == version))
        {
            println!(
                "policy {version} applied by the daemon (the file alone is {asked}); policy source: {} (the daemon's SIGHUP and restarts build from it)",
                record.file.display()
            );
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!(
        "egress-monitor: the daemon (pid {pid}) has not applied policy {asked} after {} s; see its log (`journalctl -u egress-monitor`). The policy source stays recorded: its next reload tries again",
        DAEMON_APPLY_WAIT.as_secs()
    );
    ExitStatus::Failure.into()
}

pub fn source(args: &PolicyArgs, mode: Option<egress_monitor_policy::Mode>) -> PolicySource {
    PolicySource {
        file: args.policy.clone(),
        command_line: CommandLineRules {
            allow: args.allow.clone(),
            deny: args.deny.clone(),
        },
        mode,
        accept_risk: args.break_platform_access,
        discovered: Vec::new(),
        ..PolicySource::default()
    }
}
