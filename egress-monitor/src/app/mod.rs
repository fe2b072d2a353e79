//! From a parsed command line to work done and an exit code.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use serde::Serialize;

use egress_monitor_policy::{
    CommandLineRules, PolicySource,
    service_tags::{self, ServiceTags},
};

mod exit;

use self::exit::{ExitStatus, classify};
use crate::{
    azure, check,
    cli::{Cli, Command, PolicyArgs, PolicyCommand, RunArgs},
    daemon::{self, RunConfig},
    datapath::DatapathError,
    datapath::{self, Datapath},
    error::chain,
    events::EventsTarget,
    pins::PinLayout,
    reporter::{ReporterConfig, ReporterStatus},
    source::{self, RecordedSource},
    status,
};

pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Controller { args } => controller_alias(args),
        Command::Status { pins, json } => match status::status(&PinLayout::new(pins.pin_path)) {
            Ok(status) => print(&status, json, status::render),
            Err(err) => fail(&err, classify(&err)),
        },
        Command::Check {
            pins,
            mode,
            accept_compat_syscalls,
            json,
        } => {
            let options = check::Options {
                required_mode: mode,
                accept_compat_syscalls,
            };
            match check::check(&PinLayout::new(pins.pin_path), options) {
                Ok(report) => {
                    print(&report, json, check::render);
                    if report.ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitStatus::Failure.into()
                    }
                }
                Err(err) => fail(&err, classify(&err)),
            }
        }
        Command::Detach { pins, json } => {
            let layout = PinLayout::new(pins.pin_path);
            if !layout.exists() && !layout.links().exists() {
                eprintln!(
                    "egress-monitor: nothing is pinned at {}",
                    layout.root.display()
                );
                return ExitStatus::Environment.into();
            }
            if let Some(pid) = status::running_daemon(&layout) {
                eprintln!(
                    "egress-monitor: a daemon (pid {pid}) serves {}; detaching anyway (it keeps running without programs until stopped)",
                    layout.root.display()
                );
            }
            match datapath::detach(&layout) {
                Ok(report) => print(&report, json, |r| {
                    format!(
                        "detached {}\nremoved programs {}\nremoved maps {}\n",
                        if r.links.is_empty() {
                            "nothing (no attachment was pinned)".to_owned()
                        } else {
                            r.links.join(", ")
                        },
                        r.programs.join(", "),
                        r.maps.join(", ")
                    )
                }),
                Err(err) => fail(&err, classify(&err)),
            }
        }
        Command::Policy(PolicyCommand::Check {
            file,
            mode,
            break_platform_access,
        }) => {
            let source = PolicySource {
                file: Some(file.clone()),
                command_line: CommandLineRules::default(),
                mode,
                accept_risk: break_platform_access,
                discovered: Vec::new(),
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
                    // `policy check` answers a yes/no question: no is 1, whatever the reason.
                    ExitCode::from(1)
                }
            }
        }
        Command::NsgAudit {
            file,
            node_ip,
            json,
        } => match azure::nsg::load(&file) {
            Ok(rules) => {
                let audit = azure::nsg::audit(&rules, node_ip);
                print(&audit, json, azure::nsg::render);
                if audit.isolated() {
                    ExitCode::SUCCESS
                } else {
                    ExitStatus::Failure.into()
                }
            }
            Err(err) => fail(&err, ExitStatus::InvalidInput),
        },
        Command::Policy(PolicyCommand::ServiceTags {
            file,
            tags,
            allow_azure_cloud,
        }) => {
            let result = ServiceTags::load(&file).and_then(|loaded| {
                let prefixes = loaded.prefixes(&tags, allow_azure_cloud)?;
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
        Command::Policy(PolicyCommand::Show { policy }) => match source(&policy, None).build() {
            Ok(policy) => {
                let mut out = std::io::stdout().lock();
                // A closed pipe (`| head`) is not an error worth reporting.
                let _ = out.write_all(policy.render().as_bytes());
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err, ExitStatus::InvalidInput),
        },
        Command::Policy(PolicyCommand::Apply {
            file,
            mode,
            break_platform_access,
            pins,
        }) => policy_apply(
            file,
            mode,
            break_platform_access,
            &PinLayout::new(pins.pin_path),
        ),
    }
}

/// `policy apply`: refused on a node the fleet governs; otherwise the file is built, recorded
/// as the node's policy source (so that the daemon's SIGHUP and restarts keep it), and applied.
/// The record comes first: there is no moment when the new policy is live but a reload would
/// build another. A policy the datapath refuses puts the previous record back.
fn policy_apply(
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
        crate::state::StateFile::load(&layout.state_file())
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

fn source(args: &PolicyArgs, mode: Option<egress_monitor_policy::Mode>) -> PolicySource {
    PolicySource {
        file: args.policy.clone(),
        command_line: CommandLineRules {
            allow: args.allow.clone(),
            deny: args.deny.clone(),
        },
        mode,
        accept_risk: args.break_platform_access,
        discovered: Vec::new(),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let source = source(&args.policy, args.mode);
    let policy = match source.build() {
        Ok(policy) => policy,
        Err(err) => return fail(&err, ExitStatus::InvalidInput),
    };
    let policy_wants_azure = policy.azure;
    let config = RunConfig {
        policy,
        source,
        hook: args.hook,
        cgroup: args.cgroup,
        interfaces: args.interfaces,
        events: EventsTarget::parse(&args.events),
        pin_path: PathBuf::from(&args.pins.pin_path),
        rule_capacity: args.rule_capacity,
        metrics: args.metrics,
        kernel_log: args.kernel_log,
        flow_interval: std::time::Duration::from_secs(args.flow_interval),
        dns_grace: std::time::Duration::from_secs(args.dns_grace),
        imds: (args.azure || policy_wants_azure).then(|| daemon::Imds {
            url: args.imds_url.clone(),
            interval: std::time::Duration::from_secs(args.imds_interval.max(1)),
        }),
        controller: args.controller.clone().map(|url| ReporterConfig {
            url,
            token_file: args
                .token_file
                .clone()
                .expect("clap: --controller requires it"),
            ca_file: args.controller_ca.clone(),
            node_id: args
                .node_id
                .clone()
                .unwrap_or_else(crate::reporter::identity::hostname),
            interval: std::time::Duration::from_secs(u64::from(args.report_interval)),
            spool_dir: args.spool_dir.clone(),
            spool_max_bytes: args.spool_max_mb << 20,
            imds_url: args.imds_url.clone(),
        }),
    };
    let (runtime, stop) = match runtime_and_stop(tokio::runtime::Builder::new_current_thread()) {
        Ok(both) => both,
        Err(err) => return fail(&err, ExitStatus::Failure),
    };
    match runtime.block_on(daemon::run(config, stop)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => fail(&err, classify(&err)),
    }
}

/// `egress-monitor controller ARGS`, kept for one release: the controller is its own program
/// now (`egress-monitor-controller`, beside this one or on PATH), run in this process's place.
fn controller_alias(args: Vec<std::ffi::OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    const PROGRAM: &str = "egress-monitor-controller";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(PROGRAM)))
        .filter(|path| path.is_file());
    eprintln!(
        "egress-monitor: `egress-monitor controller` is deprecated and goes away in the next \
         release: run `{PROGRAM}` instead (same arguments)"
    );
    let err = std::process::Command::new(beside.as_deref().unwrap_or(PROGRAM.as_ref()))
        .args(args)
        .exec();
    eprintln!("egress-monitor: cannot run {PROGRAM}: {err} (is its package installed?)");
    ExitStatus::Environment.into()
}

/// Builds the runtime and installs the stop handlers in it at once: a signal that arrives
/// while the service starts must stop it cleanly, not kill it half-way.
fn runtime_and_stop(
    mut builder: tokio::runtime::Builder,
) -> std::io::Result<(
    tokio::runtime::Runtime,
    impl std::future::Future<Output = ()>,
)> {
    let runtime = builder.enable_all().build()?;
    let stop = {
        let _context = runtime.enter();
        stop_signal()?
    };
    Ok((runtime, stop))
}

/// Installs SIGINT and SIGTERM handlers now; the future completes on either.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => log::info!("SIGINT received"),
            _ = terminate.recv() => log::info!("SIGTERM received"),
        }
    })
}

/// Prints a report as JSON or as text.
fn print<T: Serialize>(value: &T, json: bool, text: impl Fn(&T) -> String) -> ExitCode {
    let rendered = if json {
        match serde_json::to_string_pretty(value) {
            Ok(json) => json + "\n",
            Err(err) => return fail(&err, ExitStatus::Failure),
        }
    } else {
        text(value)
    };
    let _ = std::io::stdout().lock().write_all(rendered.as_bytes());
    ExitCode::SUCCESS
}

fn report(err: &(dyn std::error::Error + 'static)) {
    eprintln!("egress-monitor: {}", chain(err));
}

fn fail<E: std::error::Error + 'static>(err: &E, status: ExitStatus) -> ExitCode {
    report(err);
    status.into()
}
