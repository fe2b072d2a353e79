//! Exit codes, and one clear sentence for the errors an operator can fix.

use std::{error::Error, io, process::ExitCode};

use crate::{check::CheckError, daemon::DaemonError, datapath::DatapathError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Something failed that is neither the input's nor the machine's fault.
    Failure = 1,
    /// Bad arguments or policy.
    InvalidInput = 2,
    /// The machine: no privilege, no BPF, a missing cgroup or interface.
    Environment = 3,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(status as u8)
    }
}

/// An error and its causes on one line: `outer: inner: root`. A permission or missing-BPF
/// root cause gets a sentence saying what to do.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if let Some(hint) = root_io_error(err).and_then(hint_for) {
        text.push_str(&format!(" ({hint})"));
    }
    text
}

fn root_io_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn Error + 'static)> = Some(err);
    let mut found = None;
    while let Some(e) = current {
        if let Some(io_error) = e.downcast_ref::<io::Error>() {
            found = Some(io_error);
        }
        current = e.source();
    }
    found
}

fn hint_for(err: &io::Error) -> Option<&'static str> {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            Some("this needs root, or CAP_BPF and CAP_NET_ADMIN")
        }
        Some(libc::ENOSYS) => Some("this kernel has no BPF support"),
        _ => None,
    }
}

/// Which exit code an error deserves: the first cause in its chain that says.
pub fn classify(err: &(dyn Error + 'static)) -> ExitStatus {
    let mut current: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(status) = status_of(e) {
            return status;
        }
        current = e.source();
    }
    if root_io_error(err).and_then(hint_for).is_some() {
        ExitStatus::Environment
    } else {
        ExitStatus::Failure
    }
}

/// The status an error of ours implies. Wrappers marked `#[error(transparent)]` forward
/// `source()` past the error they wrap, so they are unwrapped here explicitly.
fn status_of(err: &(dyn Error + 'static)) -> Option<ExitStatus> {
    use ExitStatus::{Environment, InvalidInput};
    if let Some(err) = err.downcast_ref::<DaemonError>() {
        return match err {
            DaemonError::Datapath(inner) => status_of(inner),
            DaemonError::EventsOpen { .. }
            | DaemonError::Policy(_)
            | DaemonError::FleetPolicy { .. }
            | DaemonError::RecordedPolicy { .. }
            | DaemonError::Reporter(_)
            | DaemonError::Metrics { .. } => Some(InvalidInput),
            DaemonError::Cgroup(_)
            | DaemonError::Interface(_)
            | DaemonError::NoInterfaces
            | DaemonError::Source(_)
            | DaemonError::AlreadyRunning { .. } => Some(Environment),
            _ => None,
        };
    }
    if let Some(err) = err.downcast_ref::<DatapathError>() {
        return match err {
            DatapathError::CannotGrow { .. } | DatapathError::TooManyRules { .. } => {
                Some(InvalidInput)
            }
            DatapathError::Cgroup(_)
            | DatapathError::Interface(_)
            | DatapathError::NotEthernet { .. }
            | DatapathError::Privilege { .. }
            | DatapathError::NotPinned(_)
            | DatapathError::Pins(_) => Some(Environment),
            _ => None,
        };
    }
    if let Some(err) = err.downcast_ref::<CheckError>() {
        return match err {
            CheckError::Datapath(inner) => status_of(inner),
            CheckError::NoState(_) => Some(Environment),
            CheckError::TestRun { .. } => None,
        };
    }
    None
}
