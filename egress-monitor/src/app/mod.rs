//! From a parsed command line to work done and an exit code.

//!
//! One module per kind of command: [`run`] (the daemon), `node` (status, check, detach,
//! nsg-audit), `events` (reading the events file), `policy` (check, show, apply, service-tags), `learn` (suggest, replay); [`exit`] decides exit codes.

use std::{io::Write as _, process::ExitCode};

use serde::Serialize;

mod events;
mod exit;
mod learn;
mod node;
mod policy;
mod run;

use self::exit::ExitStatus;
use crate::{
    cli::{Cli, Command, PolicyCommand},
    datapath::pins::PinLayout,
    inspect::check,
    system::error::chain,
};

pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Controller { args } => run::controller_alias(args),
        Command::Status { pins, json } => node::status(&PinLayout::new(pins.pin_path), json),
        Command::Check {
            pins,
            mode,
            accept_compat_syscalls,
            json,
        } => node::check(
            &PinLayout::new(pins.pin_path),
            check::Options {
                required_mode: mode,
                accept_compat_syscalls,
            },
            json,
        ),
        Command::Detach { pins, json } => node::detach(&PinLayout::new(pins.pin_path), json),
        Command::NsgAudit {
            file,
            node_ip,
            accept,
            json,
        } => node::nsg_audit(&file, node_ip, &accept, json),
        Command::Events(args) => events::show(&args),
        Command::Policy(PolicyCommand::Check {
            file,
            mode,
            break_platform_access,
        }) => policy::check(file, mode, break_platform_access),
        Command::Policy(PolicyCommand::ServiceTags {
            file,
            tags,
            allow_azure_cloud,
        }) => policy::service_tags(&file, &tags, allow_azure_cloud),
        Command::Policy(PolicyCommand::Show { policy }) => policy::show(&policy),
        Command::Policy(PolicyCommand::Suggest {
            events,
            wildcards,
            widen,
            service_tags,
            mode,
        }) => learn::suggest(
            &events,
            learn::Widen {
                wildcards,
                widen,
                service_tags,
            },
            mode,
        ),
        Command::Policy(PolicyCommand::Replay {
            file,
            events,
            top,
            fail_if_blocking,
            json,
        }) => learn::replay(&file, &events, top, fail_if_blocking, json),
        Command::Policy(PolicyCommand::Apply {
            file,
            mode,
            break_platform_access,
            pins,
        }) => policy::apply(
            file,
            mode,
            break_platform_access,
            &PinLayout::new(pins.pin_path),
        ),
    }
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
