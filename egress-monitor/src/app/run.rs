//! `run` (the daemon: a runtime whose stop signals are caught from the start) and the old
//! `controller` command.

use std::{path::PathBuf, process::ExitCode};

use super::{
    exit::{ExitStatus, classify},
    fail,
    policy::source,
};
use crate::{
    cli::RunArgs,
    daemon::{self, RunConfig},
    events::EventsTarget,
    fleet::reporter::ReporterConfig,
};

pub fn run(args: RunArgs) -> ExitCode {
    let source = source(&args.policy, args.mode);
    let policy = match source.build() {
        Ok(policy) => policy,
        Err(err) => return fail(&err, ExitStatus::InvalidInput),
    };
    let policy_wants_azure = policy.azure;
    let node = args
        .node_id
        .clone()
        .unwrap_or_else(crate::fleet::reporter::identity::hostname);
    let config = RunConfig {
        policy,
        source,
        hook: args.hook,
        cgroup: args.cgroup,
        interfaces: args.interfaces,
        events: EventsTarget::parse(&args.events),
        node: node.clone(),
        check_interval: std::time::Duration::from_secs(u64::from(args.check_interval)),
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
            node_id: node.clone(),
            interval: std::time::Duration::from_secs(u64::from(args.report_interval)),
            spool_dir: args.spool_dir.clone(),
            spool_max_bytes: args.spool_max_mb << 20,
            imds_url: args.imds_url.clone(),
            attest: args.attest,
            group: args.node_group.clone(),
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
pub fn controller_alias(args: Vec<std::ffi::OsString>) -> ExitCode {
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
