//! Exit codes: the one place that decides which code an error deserves.

use std::{error::Error, process::ExitCode};

use crate::{
    daemon::DaemonError,
    datapath::DatapathError,
    inspect::check::CheckError,
    system::error::{hint_for, root_io_error},
};

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
