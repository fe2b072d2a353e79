//! Operator-facing error text: one line per error, with a sentence for the causes an operator
//! can fix (privilege, no BPF). Which exit code an error deserves is the CLI's decision
//! (`app::exit`); this module imports nothing from the crate, so anything may use it.

use std::{error::Error, io};

/// An error and its causes on one line: `outer: inner: root`. A permission or missing-BPF
/// root cause gets a sentence saying what to do.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = egress_monitor_api::error_line(err);
    if let Some(hint) = root_io_error(err).and_then(hint_for) {
        text.push_str(&format!(" ({hint})"));
    }
    text
}

pub(crate) fn root_io_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a io::Error> {
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

pub(crate) fn hint_for(err: &io::Error) -> Option<&'static str> {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            Some("this needs root, or CAP_BPF and CAP_NET_ADMIN")
        }
        Some(libc::ENOSYS) => Some("this kernel has no BPF support"),
        _ => None,
    }
}
