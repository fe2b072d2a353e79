//! `egress-monitor check`: proves the live verdicts without sending a packet.
//!
//! Synthetic packets run through the pinned programs with `BPF_PROG_TEST_RUN`, carrying the
//! check secret (`config::CHECK_SECRET`, in the skb's `cb`, which no process can set) so the
//! kernel judges them exactly as real ones but neither counts nor reports them. Each verdict is
//! compared with what the recorded policy and the live mode say it must be: fixed probes
//! (internet addresses must not pass unless a rule allows them; the essentials and private
//! ranges must pass), every deny rule of the policy (up to [`MAX_DENY_PROBES`]) and a sample of
//! its allow rules. The node is "isolated" only in enforce mode, with every probe agreeing, the
//! programs attached and each attached cgroup's raw-socket guards with them; observe mode
//! drops nothing, so it passes only when asked for (`--mode observe`).

use std::{io, net::IpAddr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use egress_monitor_policy::{Action, Mode};

use crate::{
    datapath::pins::PinLayout,
    datapath::state::StateFile,
    datapath::{CgroupHook, Datapath, DatapathError, Judge, LinkName, frame_to},
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

/// Deny rules of the policy probed, at most (the first ones by id).
pub const MAX_DENY_PROBES: usize = 32;
/// Allow rules of the policy probed, at most (spread evenly over them).
pub const MAX_ALLOW_PROBES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub destination: IpAddr,
    pub stands_for: String,
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
    /// Each attached cgroup, and whether its raw-socket guards are attached with it.
    pub raw_socket_guards: Vec<GuardStatus>,
    pub probes: Vec<Probe>,
    /// Why the node is not isolated as configured; empty when it is.
    pub problems: Vec<String>,
    /// What the check cannot prove on this node, though nothing is wrong.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuardStatus {
    /// The cgroup's egress link.
    pub cgroup_link: String,
    pub attached: bool,
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

/// What `check` is asked to require.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Also require this mode.
    pub required_mode: Option<Mode>,
    /// Pass although 32-bit system calls are on (see [`compat_syscalls`]).
    pub accept_compat_syscalls: bool,
}

/// Whether 32-bit system calls (x86 IA32 emulation) are on. Their `setsockopt` skips the
/// cgroup setsockopt hook (the kernel runs it for native calls only), so a process with
/// CAP_NET_RAW could set `PACKET_QDISC_BYPASS` or make an AF_XDP TX ring past the guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compat {
    Off,
    On,
    /// The kernel's configuration could not be read: treated as on.
    Unknown,
}

/// [`Compat`] from the machine, the kernel command line and its build configuration (`None`:
/// unreadable). On x86-64, x32 system calls are compat calls too and no command line turns
/// them off; else `ia32_emulation=` wins over the build's default. Elsewhere (arm64's AArch32),
/// `CONFIG_COMPAT` says.
pub fn compat_syscalls(arch: &str, cmdline: &str, config: Option<&str>) -> Compat {
    let set = |option: &str| {
        config.map(|config| config.lines().any(|line| line == format!("{option}=y")))
    };
    if arch != "x86_64" {
        return match set("CONFIG_COMPAT") {
            Some(true) => Compat::On,
            Some(false) => Compat::Off,
            None => Compat::Unknown,
        };
    }
    if set("CONFIG_X86_X32_ABI") == Some(true) {
        return Compat::On;
    }
    for word in cmdline.split_whitespace() {
        match word {
            "ia32_emulation=0" | "ia32_emulation=false" | "ia32_emulation=off" => {
                return Compat::Off;
            }
            "ia32_emulation=1" | "ia32_emulation=true" | "ia32_emulation=on" => {
                return Compat::On;
            }
            _ => {}
        }
    }
    match (
        set("CONFIG_IA32_EMULATION"),
        set("CONFIG_IA32_EMULATION_DEFAULT_DISABLED"),
    ) {
        (None, _) | (_, None) => Compat::Unknown,
        (Some(true), Some(false)) => Compat::On,
        _ => Compat::Off,
    }
}

/// [`compat_syscalls`] for this machine: /proc/cmdline, and the build configuration from
/// /boot/config-RELEASE.
pub fn this_kernels_compat() -> Compat {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok();
    compat_syscalls(
        std::env::consts::ARCH,
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        config.as_deref(),
    )
}

pub fn check(layout: &PinLayout, options: Options) -> Result<CheckReport, CheckError> {
    let datapath = Datapath::existing(layout)?;
    let live = datapath.config()?;
    let state = crate::datapath::state::StateFile::load(&layout.state_file())
        .map_err(DatapathError::from)?
        .ok_or_else(|| CheckError::NoState(layout.root.display().to_string()))?;
    let attachments: Vec<String> = datapath.attachments().into_iter().map(|a| a.name).collect();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if attachments.is_empty() {
        problems.push("no program is attached: nothing is filtered".to_owned());
    }
    problems.extend(mode_problem(options.required_mode, live.mode));
    let raw_socket_guards = guards(&attachments);
    raw_socket_findings(
        &raw_socket_guards,
        options.accept_compat_syscalls,
        &mut problems,
        &mut notes,
    );
    notes.extend(tc_notes(&attachments));
    if state.version != format!("{:016x}", live.policy_version) {
        problems.push(format!(
            "the maps hold policy {:016x} but the state file names {}",
            live.policy_version, state.version
        ));
    }
    let probes = run_probes(&datapath, &state, live.mode, &mut problems)?;
    Ok(CheckReport {
        pin_path: layout.root.display().to_string(),
        mode: live.mode,
        policy_version: format!("{:016x}", live.policy_version),
        attachments,
        raw_socket_guards,
        probes,
        problems,
        notes,
    })
}

/// Why the live mode is not the one asked for (enforce, unless `required` says otherwise).
fn mode_problem(required: Option<Mode>, live: Mode) -> Option<String> {
    match required {
        Some(required) if required != live => Some(format!("the mode is {live}, not {required}")),
        None if live == Mode::Observe => Some(
            "observe mode counts and reports denied packets but drops none: the node is not \
             isolated (pass --mode observe to check an audit node)"
                .to_owned(),
        ),
        _ => None,
    }
}

/// Cgroups whose raw-socket guards are missing (problems), and 32-bit system calls that skip
/// the guards (a problem, or a note when accepted).
fn raw_socket_findings(
    guards: &[GuardStatus],
    accept_compat_syscalls: bool,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    for guard in guards.iter().filter(|guard| !guard.attached) {
        problems.push(format!(
            "{}: the raw-socket guards are not attached: its processes can send frames past \
             the TC hook (PACKET_QDISC_BYPASS, AF_XDP)",
            guard.cgroup_link
        ));
    }
    let compat = this_kernels_compat();
    if compat == Compat::Off || guards.is_empty() {
        return;
    }
    let message = format!(
        "32-bit system calls are {} (compat calls: IA32 emulation, x32 or AArch32): a \
         setsockopt made through them skips the cgroup hooks, so a process with CAP_NET_RAW \
         can set PACKET_QDISC_BYPASS or make an AF_XDP TX ring and send past the TC hook. On \
         x86-64, boot with ia32_emulation=0 (Linux 6.7+, and a kernel without x32) to close \
         it{}",
        if compat == Compat::On {
            "on"
        } else {
            "possibly on (the kernel's configuration is unreadable)"
        },
        if accept_compat_syscalls {
            "; accepted with --accept-compat-syscalls"
        } else {
            ", or pass --accept-compat-syscalls to accept the risk"
        }
    );
    if accept_compat_syscalls {
        notes.push(message);
    } else {
        problems.push(message);
    }
}

/// What the TC links leave unjudged: interfaces without one, or everything when there is none.
fn tc_notes(attachments: &[String]) -> Option<String> {
    let any_tc = attachments
        .iter()
        .any(|name| matches!(name.parse(), Ok(LinkName::Tc { .. })));
    if !any_tc {
        return Some(
            "no TC link: packet sockets (AF_PACKET) and forwarded traffic are judged only by the \
             TC hook, which is attached nowhere"
                .to_owned(),
        );
    }
    let unhooked = interfaces_without_tc(attachments);
    (!unhooked.is_empty()).then(|| {
        format!(
            "interfaces of this network namespace without the TC hook: {}: frames from packet \
             sockets (AF_PACKET) and forwarded traffic leave through them unjudged",
            unhooked.join(", ")
        )
    })
}

/// Runs every probe (fixed, then the policy's) through both judging programs, each verdict
/// that differs from what the policy and `mode` require a problem.
fn run_probes(
    datapath: &Datapath,
    state: &StateFile,
    mode: Mode,
    problems: &mut Vec<String>,
) -> Result<Vec<Probe>, CheckError> {
    let runner = datapath.test_runner()?;
    let secret = datapath.check_secret()?;
    let mut probes = Vec::new();
    let fixed = PROBES.iter().map(|(address, stands_for)| {
        (
            address.parse::<IpAddr>().expect("valid probe address"),
            (*stands_for).to_owned(),
        )
    });
    for (destination, stands_for) in fixed.chain(policy_probes(state)) {
        let (rule, allowed) = decide(state, destination);
        let expected = if allowed || mode == Mode::Observe {
            "pass"
        } else {
            "drop"
        };
        let frame = frame_to(destination);
        for judge in Judge::ALL {
            let program = judge.program();
            let retval = runner
                .run(judge, &frame, 1, Some(secret))
                .map_err(|source| CheckError::TestRun { program, source })?
                .retval;
            let actual = if retval == judge.pass_code() {
                "pass"
            } else {
                "drop"
            };
            if actual != expected {
                problems.push(format!(
                    "{destination} ({stands_for}) on {program}: {actual}, but the policy says {expected}"
                ));
            }
            probes.push(Probe {
                destination,
                stands_for: stands_for.clone(),
                program,
                expected,
                actual,
                rule: rule.clone(),
            });
        }
    }
    Ok(probes)
}

/// Interfaces of this network namespace that are up (or of unknown state), other than
/// loopback, with no TC link pinned here.
fn interfaces_without_tc(attachments: &[String]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut unhooked: Vec<String> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let read = |file: &str| std::fs::read_to_string(entry.path().join(file)).ok();
            let state = read("operstate")?;
            let index: u32 = read("ifindex")?.trim().parse().ok()?;
            let up = matches!(state.trim(), "up" | "unknown");
            let link = LinkName::tc(index).ok()?.to_string();
            (name != "lo" && up && !attachments.contains(&link)).then_some(name)
        })
        .collect();
    unhooked.sort();
    unhooked
}

/// Each cgroup egress link, and whether the guard link of the same cgroup is pinned beside
/// it.
fn guards(attachments: &[String]) -> Vec<GuardStatus> {
    attachments
        .iter()
        .filter_map(|name| match name.parse() {
            Ok(
                link @ LinkName::Cgroup {
                    hook: CgroupHook::Egress,
                    ..
                },
            ) => Some(GuardStatus {
                cgroup_link: name.clone(),
                attached: link
                    .beside(CgroupHook::Setsockopt)
                    .is_some_and(|guard| attachments.contains(&guard.to_string())),
            }),
            _ => None,
        })
        .collect()
}

/// Probes from the policy itself: an address in each deny rule's prefix (up to
/// [`MAX_DENY_PROBES`]) and in a sample of its allow rules (up to [`MAX_ALLOW_PROBES`], spread
/// evenly). Which verdict each must get is decided by [`decide`] like any probe, so a narrower
/// rule inside the prefix is respected.
fn policy_probes(state: &StateFile) -> Vec<(IpAddr, String)> {
    let prefixes = |wanted: Action| -> Vec<(IpNetwork, &str, &str)> {
        state
            .rules
            .iter()
            .filter(|rule| rule.action == wanted)
            .filter_map(|rule| {
                let network = rule.cidr.parse::<IpNetwork>().ok()?;
                Some((network, rule.name.as_str(), rule.origin.as_str()))
            })
            .collect()
    };
    let deny = prefixes(Action::Deny);
    // The operator's own allow rules first (the default groups have fixed probes), then the
    // groups', each spread evenly.
    let (own, groups): (Vec<_>, Vec<_>) = prefixes(Action::Allow)
        .into_iter()
        .partition(|(_, _, origin)| !origin.starts_with("group "));
    let own = spread(own, MAX_ALLOW_PROBES);
    let groups = spread(groups, MAX_ALLOW_PROBES - own.len());
    deny.into_iter()
        .take(MAX_DENY_PROBES)
        .map(|(network, name, _)| (network, format!("deny rule `{name}`")))
        .chain(
            own.into_iter()
                .chain(groups)
                .map(|(network, name, _)| (network, format!("allow rule `{name}`"))),
        )
        .map(|(network, stands_for)| (inside(network), stands_for))
        .collect()
}

/// At most `most` of `rules`, spread evenly over them.
fn spread<T>(rules: Vec<T>, most: usize) -> Vec<T> {
    let step = rules.len().div_ceil(most.max(1)).max(1);
    rules.into_iter().step_by(step).take(most).collect()
}

/// An address inside `network`: the one after the network address where there is one (a host
/// rather than the network's own address).
fn inside(network: IpNetwork) -> IpAddr {
    match network {
        IpNetwork::V4(v4) if v4.prefix() < 32 => {
            IpAddr::from(u32::from(v4.network()).wrapping_add(1).to_be_bytes())
        }
        IpNetwork::V6(v6) if v6.prefix() < 128 => {
            IpAddr::from(u128::from(v6.network()).wrapping_add(1).to_be_bytes())
        }
        other => other.network(),
    }
}

/// The recorded policy's decision for `address`: the longest matching prefix of the rules
/// that have not expired.
fn decide(state: &StateFile, address: IpAddr) -> (String, bool) {
    let now = egress_monitor_api::time::now_ms();
    state
        .rules
        .iter()
        .filter(|rule| {
            rule.expires.as_deref().is_none_or(|expires| {
                egress_monitor_api::time::parse_rfc3339_ms(expires).is_some_and(|end| end > now)
            })
        })
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
    for guard in &report.raw_socket_guards {
        out.push_str(&format!(
            "raw-socket guards on {}: {}\n",
            guard.cgroup_link,
            if guard.attached {
                "attached"
            } else {
                "MISSING"
            }
        ));
    }
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
    for note in &report.notes {
        out.push_str(&format!("NOTE: {note}\n"));
    }
    if report.ok() && report.mode == Mode::Observe {
        out.push_str(
            "OK: the node observes as configured (observe mode: nothing is dropped, it is not \
             isolated)\n",
        );
    } else if report.ok() {
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
    use crate::datapath::state::StateRule;

    #[test]
    fn probe_frames_parse_back_to_their_destination() {
        for (address, _) in PROBES {
            let destination: IpAddr = address.parse().unwrap();
            let frame = frame_to(destination);
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
    fn compat_syscalls_follow_the_command_line_then_the_build() {
        let on = "CONFIG_X86_64=y\nCONFIG_IA32_EMULATION=y\n";
        let default_off = "CONFIG_IA32_EMULATION=y\nCONFIG_IA32_EMULATION_DEFAULT_DISABLED=y\n";
        let none = "# CONFIG_IA32_EMULATION is not set\n";
        assert_eq!(compat_syscalls("x86_64", "quiet", Some(on)), Compat::On);
        assert_eq!(
            compat_syscalls("x86_64", "ro ia32_emulation=0", Some(on)),
            Compat::Off
        );
        assert_eq!(
            compat_syscalls("x86_64", "", Some(default_off)),
            Compat::Off
        );
        assert_eq!(
            compat_syscalls("x86_64", "ia32_emulation=1", Some(default_off)),
            Compat::On
        );
        assert_eq!(compat_syscalls("x86_64", "", Some(none)), Compat::Off);
        assert_eq!(compat_syscalls("x86_64", "", None), Compat::Unknown);
        assert_eq!(compat_syscalls("aarch64", "", None), Compat::Unknown);
        assert_eq!(
            compat_syscalls("aarch64", "", Some("CONFIG_COMPAT=y\n")),
            Compat::On
        );
        assert_eq!(compat_syscalls("aarch64", "", Some(none)), Compat::Off);
        let x32 = "CONFIG_IA32_EMULATION=y\nCONFIG_X86_X32_ABI=y\n";
        assert_eq!(
            compat_syscalls("x86_64", "ia32_emulation=0", Some(x32)),
            Compat::On,
            "no command line turns x32 off"
        );
    }

    #[test]
    fn guards_are_missing_where_a_cgroup_link_has_no_guard_link() {
        let links: Vec<String> = [
            "cgroup-7",
            "optcgroup-7",
            "cgroup-9",
            "incgroup-9",
            "tc-1-2",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            guards(&links),
            [
                GuardStatus {
                    cgroup_link: "cgroup-7".into(),
                    attached: true
                },
                GuardStatus {
                    cgroup_link: "cgroup-9".into(),
                    attached: false
                }
            ]
        );
    }

    #[test]
    fn the_policys_deny_rules_and_a_sample_of_its_allows_are_probed() {
        let rule = |id, cidr: String, action| StateRule {
            id,
            cidr,
            action,
            name: format!("r{id}"),
            origin: String::new(),
            expires: None,
        };
        let mut rules: Vec<StateRule> = (0..40)
            .map(|i| rule(i, format!("10.{i}.0.0/16"), Action::Allow))
            .collect();
        rules.push(rule(40, "10.1.2.0/24".into(), Action::Deny));
        rules.push(rule(41, "2001:db8::/32".into(), Action::Deny));
        rules.push(rule(42, "198.51.100.7/32".into(), Action::Deny));
        rules.push(rule(43, "*.example.com".into(), Action::Allow));
        let state = StateFile {
            version: String::new(),
            mode: Mode::Enforce,
            mode_source: String::new(),
            applied_at: String::new(),
            groups: vec![],
            rules,
        };
        let probes = policy_probes(&state);
        let denies: Vec<IpAddr> = probes
            .iter()
            .filter(|(_, why)| why.starts_with("deny"))
            .map(|(address, _)| *address)
            .collect();
        assert_eq!(
            denies,
            [
                "10.1.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap(),
                "198.51.100.7".parse().unwrap()
            ]
        );
        let allows = probes.len() - denies.len();
        assert!((1..=MAX_ALLOW_PROBES).contains(&allows), "{probes:?}");
        // A deny inside an allowed range is still decided as denied.
        assert_eq!(decide(&state, denies[0]), ("r40".into(), false));
    }

    #[test]
    fn decisions_follow_the_longest_recorded_prefix() {
        let rule = |id, cidr: &str, action, name: &str| StateRule {
            id,
            cidr: cidr.into(),
            action,
            name: name.into(),
            origin: String::new(),
            expires: None,
        };
        let state = StateFile {
            version: String::new(),
            mode: Mode::Enforce,
            mode_source: String::new(),
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
