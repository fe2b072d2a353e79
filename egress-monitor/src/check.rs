//! `egress-monitor check`: proves the live verdicts without sending a packet.
//!
//! Synthetic packets run through the pinned programs with `BPF_PROG_TEST_RUN`, carrying
//! [`CHECK_MARK`] so the kernel judges them exactly as real ones but neither counts nor reports
//! them. Each verdict is compared with what the recorded policy and the live mode say it must
//! be; internet probes must not pass unless a rule allows them, and the essentials and private
//! ranges must pass. The node is "isolated as configured" only if every probe agrees and the
//! programs are attached.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::programs::{CgroupSkb, CgroupSkbAttachType, SchedClassifier};
use egress_monitor_common::verdict::CHECK_MARK;
use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::{
    datapath::{CGROUP_PROGRAM, Datapath, DatapathError, TC_PROGRAM},
    pins::PinLayout,
    policy::{Action, Mode},
    state::StateFile,
    testrun,
};

/// Destinations probed: (address, what it stands for).
pub const PROBES: [(&str, &str); 18] = [
    ("1.1.1.1", "internet"),
    ("8.8.8.8", "internet"),
    ("203.0.113.1", "internet (documentation range)"),
    ("2606:4700:4700::1111", "internet"),
    ("2001:db8::1", "internet (documentation range)"),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("192.168.0.1", "private"),
    ("fd00::1", "private (unique local)"),
    (
        "168.63.129.16",
        "Azure wireserver: DNS, DHCP, health probes",
    ),
    ("169.254.169.254", "instance metadata"),
    ("255.255.255.255", "DHCP broadcast"),
    ("fe80::1", "IPv6 link-local"),
    ("ff02::1", "IPv6 neighbour discovery"),
    ("233.252.0.1", "global multicast (MCAST-TEST-NET)"),
    ("ff0e::db8:1", "global-scope IPv6 multicast"),
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub destination: IpAddr,
    pub stands_for: &'static str,
    pub program: &'static str,
    /// What the policy and mode require: `pass` or `drop`.
    pub expected: &'static str,
    /// What the kernel program returned.
    pub actual: &'static str,
    /// The rule that decides it (`default` when none matches).
    pub rule: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub pin_path: String,
    pub mode: Mode,
    pub policy_version: String,
    pub attachments: Vec<String>,
    pub probes: Vec<Probe>,
    /// Why the node is not isolated as configured; empty when it is.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("no policy has been applied at {0} (no state file)")]
    NoState(String),
    #[error("BPF_PROG_TEST_RUN on {program} failed")]
    TestRun {
        program: &'static str,
        #[source]
        source: io::Error,
    },
}

pub fn check(layout: &PinLayout, required_mode: Option<Mode>) -> Result<CheckReport, CheckError> {
    let datapath = Datapath::existing(layout)?;
    let live = datapath.config()?;
    let state = crate::state::StateFile::load(&layout.state_file())
        .map_err(DatapathError::from)?
        .ok_or_else(|| CheckError::NoState(layout.root.display().to_string()))?;
    let attachments: Vec<String> = datapath.attachments().into_iter().map(|a| a.name).collect();
    let mut problems = Vec::new();
    if attachments.is_empty() {
        problems.push("no program is attached: nothing is filtered".to_owned());
    }
    if let Some(required) = required_mode
        && required != live.mode
    {
        problems.push(format!("the mode is {}, not {required}", live.mode));
    }
    if state.version != format!("{:016x}", live.policy_version) {
        problems.push(format!(
            "the maps hold policy {:016x} but the state file names {}",
            live.policy_version, state.version
        ));
    }

    let cgroup = CgroupSkb::from_pin(layout.program(CGROUP_PROGRAM), CgroupSkbAttachType::Egress)
        .map_err(|source| DatapathError::Program {
        name: CGROUP_PROGRAM,
        source,
    })?;
    let tc = SchedClassifier::from_pin(layout.program(TC_PROGRAM)).map_err(|source| {
        DatapathError::Program {
            name: TC_PROGRAM,
            source,
        }
    })?;
    let cgroup_fd = cgroup.fd().map_err(|source| DatapathError::Program {
        name: CGROUP_PROGRAM,
        source,
    })?;
    let tc_fd = tc.fd().map_err(|source| DatapathError::Program {
        name: TC_PROGRAM,
        source,
    })?;

    let mut probes = Vec::new();
    for (address, stands_for) in PROBES {
        let destination: IpAddr = address.parse().expect("valid probe address");
        let (rule, allowed) = decide(&state, destination);
        let expected = if allowed || live.mode == Mode::Observe {
            "pass"
        } else {
            "drop"
        };
        let frame = testrun::frame_to(destination);
        for (program, fd, pass_code) in [
            (CGROUP_PROGRAM, cgroup_fd.as_fd().as_raw_fd(), 1u32),
            (TC_PROGRAM, tc_fd.as_fd().as_raw_fd(), u32::MAX),
        ] {
            let retval = testrun::run(fd, &frame, 1, Some(CHECK_MARK))
                .map_err(|source| CheckError::TestRun { program, source })?
                .retval;
            let actual = if retval == pass_code { "pass" } else { "drop" };
            if actual != expected {
                problems.push(format!(
                    "{destination} ({stands_for}) on {program}: {actual}, but the policy says {expected}"
                ));
            }
            probes.push(Probe {
                destination,
                stands_for,
                program,
                expected,
                actual,
                rule: rule.clone(),
            });
        }
    }
    Ok(CheckReport {
        pin_path: layout.root.display().to_string(),
        mode: live.mode,
        policy_version: format!("{:016x}", live.policy_version),
        attachments,
        probes,
        problems,
    })
}

/// The recorded policy's decision for `address`: the longest matching prefix.
fn decide(state: &StateFile, address: IpAddr) -> (String, bool) {
    state
        .rules
        .iter()
        .filter_map(|rule| {
            let network: IpNetwork = rule.cidr.parse().ok()?;
            network
                .contains(address)
                .then_some((network.prefix(), rule))
        })
        .max_by_key(|(prefix, _)| *prefix)
        .map_or(("default".to_owned(), false), |(_, rule)| {
            (rule.name.clone(), rule.action == Action::Allow)
        })
}

/// The report as text, one probe per line.
pub fn render(report: &CheckReport) -> String {
    let mut out = format!(
        "pin path {}\nmode {}\npolicy {}\nattached {}\n",
        report.pin_path,
        report.mode,
        report.policy_version,
        if report.attachments.is_empty() {
            "nowhere".to_owned()
        } else {
            report.attachments.join(", ")
        }
    );
    for probe in &report.probes {
        out.push_str(&format!(
            "{:<4} {:<13} {:<22} expected {:<4} rule {} ({})\n",
            probe.actual,
            probe.program,
            probe.destination.to_string(),
            probe.expected,
            probe.rule,
            probe.stands_for
        ));
    }
    if report.ok() {
        out.push_str("OK: the node is isolated as configured\n");
    } else {
        for problem in &report.problems {
            out.push_str(&format!("PROBLEM: {problem}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateRule;

    #[test]
    fn probe_frames_parse_back_to_their_destination() {
        for (address, _) in PROBES {
            let destination: IpAddr = address.parse().unwrap();
            let frame = testrun::frame_to(destination);
            let parsed = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
            let dst = match parsed.net.unwrap() {
                etherparse::NetSlice::Ipv4(ip) => IpAddr::V4(ip.header().destination_addr()),
                etherparse::NetSlice::Ipv6(ip) => IpAddr::V6(ip.header().destination_addr()),
                _ => panic!("not IP"),
            };
            assert_eq!(dst, destination);
        }
    }

    #[test]
    fn decisions_follow_the_longest_recorded_prefix() {
        let rule = |id, cidr: &str, action, name: &str| StateRule {
            id,
            cidr: cidr.into(),
            action,
            name: name.into(),
            origin: String::new(),
        };
        let state = StateFile {
            version: String::new(),
            mode: Mode::Enforce,
            applied_at: String::new(),
            groups: vec![],
            rules: vec![
                rule(0, "10.0.0.0/8", Action::Allow, "private"),
                rule(1, "10.1.0.0/16", Action::Deny, "lab"),
                rule(2, "8.8.8.8/32", Action::Allow, "resolver"),
            ],
        };
        assert_eq!(
            decide(&state, "10.2.0.1".parse().unwrap()),
            ("private".into(), true)
        );
        assert_eq!(
            decide(&state, "10.1.0.1".parse().unwrap()),
            ("lab".into(), false)
        );
        assert_eq!(
            decide(&state, "8.8.8.8".parse().unwrap()),
            ("resolver".into(), true)
        );
        assert_eq!(
            decide(&state, "1.1.1.1".parse().unwrap()),
            ("default".into(), false)
        );
    }
}
