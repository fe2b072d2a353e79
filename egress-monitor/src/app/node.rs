//! `status`, `check`, `detach` and `nsg-audit`: what is enforced here, and proof of it.

use std::{net::IpAddr, path::Path, process::ExitCode};

use super::{
    exit::{ExitStatus, classify},
    fail, print,
};
use crate::{azure, datapath, datapath::pins::PinLayout, inspect::check, inspect::status};

pub fn status(layout: &PinLayout, json: bool) -> ExitCode {
    match status::status(layout) {
        Ok(status) => print(&status, json, status::render),
        Err(err) => fail(&err, classify(&err)),
    }
}

/// Exit 0 only when every verdict is what the policy and mode require.
pub fn check(layout: &PinLayout, options: check::Options, json: bool) -> ExitCode {
    match check::check(layout, options) {
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

/// The only way enforcement ends.
pub fn detach(layout: &PinLayout, json: bool) -> ExitCode {
    if !layout.exists() && !layout.links().exists() {
        eprintln!(
            "egress-monitor: nothing is pinned at {}",
            layout.root.display()
        );
        return ExitStatus::Environment.into();
    }
    if let Some(pid) = status::running_daemon(layout) {
        eprintln!(
            "egress-monitor: a daemon (pid {pid}) serves {}; detaching anyway (it keeps running without programs until stopped)",
            layout.root.display()
        );
    }
    match datapath::detach(layout) {
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

/// Exit 1 when the NSG lets the node reach the internet or a service tag.
pub fn nsg_audit(
    file: &Path,
    node_ip: Option<IpAddr>,
    accept: &[azure::nsg::Acceptance],
    json: bool,
) -> ExitCode {
    match azure::nsg::load(file) {
        Ok(rules) => {
            let audit = azure::nsg::audit(&rules, node_ip).accept(accept);
            print(&audit, json, azure::nsg::render);
            if audit.isolated() {
                ExitCode::SUCCESS
            } else {
                ExitStatus::Failure.into()
            }
        }
        Err(err) => fail(&err, ExitStatus::InvalidInput),
    }
}
