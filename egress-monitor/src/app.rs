//! From a parsed command line to work done and an exit code.

use std::{io::Write as _, process::ExitCode};

use crate::{
    cli::{Cli, Command, PolicyArgs, PolicyCommand, RunArgs},
    daemon::{self, DaemonError, RunConfig},
    error::{ExitStatus, classify},
    events::EventsTarget,
    policy::{CommandLineRules, Mode, Policy, PolicyError, PolicyFile},
};

pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Policy(PolicyCommand::Check { file }) => match PolicyFile::load(&file)
            .and_then(|parsed| Policy::build(Some(&parsed), &CommandLineRules::default(), None))
        {
            Ok(policy) => {
                println!(
                    "{}: valid ({} rules, {} mode)",
                    file.display(),
                    policy.rules.len(),
                    policy.mode
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                report(&err);
                // `policy check` answers a yes/no question: no is 1, whatever the reason.
                ExitCode::from(1)
            }
        },
        Command::Policy(PolicyCommand::Show { policy }) => match build_policy(&policy, None) {
            Ok(policy) => {
                let mut out = std::io::stdout().lock();
                // A closed pipe (`| head`) is not an error worth reporting.
                let _ = out.write_all(policy.render().as_bytes());
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err, ExitStatus::InvalidInput),
        },
    }
}

fn build_policy(args: &PolicyArgs, mode: Option<Mode>) -> Result<Policy, PolicyError> {
    let file = args.policy.as_deref().map(PolicyFile::load).transpose()?;
    let command_line = CommandLineRules {
        allow: args.allow.clone(),
        deny: args.deny.clone(),
    };
    Policy::build(file.as_ref(), &command_line, mode)
}

fn run(args: RunArgs) -> ExitCode {
    let policy = match build_policy(&args.policy, args.mode) {
        Ok(policy) => policy,
        Err(err) => return fail(&err, ExitStatus::InvalidInput),
    };
    let config = RunConfig {
        policy,
        hook: args.hook,
        cgroup: args.cgroup,
        interfaces: args.interfaces,
        events: EventsTarget::parse(&args.events),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err, ExitStatus::Failure),
    };
    match runtime.block_on(daemon::run(config, stop_signal())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            let status = classify(&err);
            fail::<DaemonError>(&err, status)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        log::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => log::info!("SIGINT received"),
        _ = terminate.recv() => log::info!("SIGTERM received"),
    }
}

fn report(err: &(dyn std::error::Error + 'static)) {
    eprintln!("egress-monitor: {}", crate::error::chain(err));
}

fn fail<E: std::error::Error + 'static>(err: &E, status: ExitStatus) -> ExitCode {
    report(err);
    status.into()
}
