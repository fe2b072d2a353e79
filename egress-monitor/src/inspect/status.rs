//! `egress-monitor status`: what is enforced here, read from the pinned state alone.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use egress_monitor_policy::Mode;

use crate::{
    datapath::pins::PinLayout,
    datapath::state::StateFile,
    datapath::{Counters, Datapath, DatapathError, LinkName, build_id},
};

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub pin_path: String,
    pub mode: Mode,
    /// Where the mode came from: the fleet's mode, `--mode` (of the daemon or `policy apply`),
    /// the policy file's (or fleet policy's) mode, or the default; empty when unknown (state
    /// pinned by an older build).
    pub mode_source: String,
    pub policy_version: String,
    pub rules: usize,
    /// Where the programs are attached.
    pub attached: Vec<Attached>,
    /// RFC 3339.
    pub pinned_since: String,
    /// Whether the pinned programs come from this binary's build.
    pub same_build: bool,
    /// The pid of the daemon serving this pin path, if one runs.
    pub daemon_pid: Option<u32>,
    pub counters: Counters,
    /// The egress programs' fast lane and its tables (`None`: state pinned by a build without
    /// one).
    pub fast_lane: Option<crate::datapath::FastLane>,
    /// Hits per named rule, most first (rules without hits left out).
    pub rule_hits: Vec<RuleHits>,
    /// Addresses domain rules allow now (learned from DNS answers), soonest to expire first.
    pub dns_allowed: Vec<DnsAllowed>,
    /// The link to the fleet controller, when the daemon reports to one.
    pub controller: Option<crate::fleet::reporter::ReporterStatus>,
    /// Rules that expire (`expires = …`), soonest first, with whether they still apply.
    pub expiring: Vec<ExpiringRule>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExpiringRule {
    pub name: String,
    pub cidr: String,
    pub action: egress_monitor_policy::Action,
    /// RFC 3339.
    pub expires: String,
    /// Seconds left; negative once it expired (the kernel judges its prefix by the next
    /// shorter rule).
    pub expires_in_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DnsAllowed {
    pub address: std::net::IpAddr,
    /// The domain rule's name and pattern.
    pub rule: String,
    pub domain: String,
    /// Seconds left (the record's TTL plus the grace period, from the answer on).
    pub expires_in_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attached {
    /// The pinned link's name, as `datapath::LinkName` makes it.
    pub link: String,
    /// The cgroup's path or the interface's name, when they can still be found from here.
    pub target: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleHits {
    pub name: String,
    pub cidr: String,
    pub hits: u64,
}

pub fn status(layout: &PinLayout) -> Result<Status, DatapathError> {
    let datapath = Datapath::existing(layout)?;
    let live = datapath.config()?;
    let state = StateFile::load(&layout.state_file())?;
    let hits = datapath.rule_hits()?;
    let mut rule_hits: Vec<RuleHits> = state
        .iter()
        .flat_map(|state| &state.rules)
        .filter_map(|rule| {
            let count = *hits.get(rule.id as usize)?;
            (count > 0).then(|| RuleHits {
                name: rule.name.clone(),
                cidr: rule.cidr.clone(),
                hits: count,
            })
        })
        .collect();
    rule_hits.sort_by_key(|rule| std::cmp::Reverse(rule.hits));
    Ok(Status {
        pin_path: layout.root.display().to_string(),
        mode: live.mode,
        // The state file names the source of the mode it recorded; a mode switched since
        // (`set_mode` without an apply) is no longer that one's.
        mode_source: state
            .as_ref()
            .filter(|state| state.mode == live.mode)
            .map(|state| state.mode_source.clone())
            .unwrap_or_default(),
        policy_version: format!("{:016x}", live.policy_version),
        rules: state.as_ref().map_or(0, |state| state.rules.len()),
        attached: datapath
            .attachments()
            .into_iter()
            .map(|a| Attached {
                target: describe(&a.name),
                link: a.name,
            })
            .collect(),
        pinned_since: humantime::format_rfc3339_seconds(
            UNIX_EPOCH + Duration::from_secs(live.pinned_since),
        )
        .to_string(),
        same_build: live.build_id == build_id(),
        daemon_pid: running_daemon(layout),
        counters: datapath.counters()?,
        fast_lane: datapath.fast_lane().ok(),
        rule_hits,
        dns_allowed: dns_allowed(&datapath, state.as_ref())?,
        controller: crate::fleet::reporter::ReporterStatus::read(layout),
        expiring: expiring(state.as_ref()),
    })
}

fn expiring(state: Option<&StateFile>) -> Vec<ExpiringRule> {
    let now = egress_monitor_api::time::now_ms() as f64;
    let mut rules: Vec<ExpiringRule> = state
        .iter()
        .flat_map(|state| &state.rules)
        .filter_map(|rule| {
            let expires = rule.expires.clone()?;
            let end = egress_monitor_api::time::parse_rfc3339_ms(&expires)? as f64;
            Some(ExpiringRule {
                name: rule.name.clone(),
                cidr: rule.cidr.clone(),
                action: rule.action,
                expires,
                expires_in_s: (end - now) / 1000.0,
            })
        })
        .collect();
    rules.sort_by(|a, b| a.expires_in_s.total_cmp(&b.expires_in_s));
    rules
}

fn dns_allowed(
    datapath: &Datapath,
    state: Option<&StateFile>,
) -> Result<Vec<DnsAllowed>, DatapathError> {
    let now = crate::system::clock::boot_time_ns();
    let mut allowed: Vec<DnsAllowed> = datapath
        .learned()?
        .into_iter()
        .filter(|(_, value)| value.expires_ns > now)
        .map(|(address, value)| {
            let rule = state.and_then(|s| s.rule(value.rule_id));
            DnsAllowed {
                address,
                rule: rule.map_or_else(|| "?".to_owned(), |r| r.name.clone()),
                domain: rule.map_or_else(String::new, |r| r.cidr.clone()),
                expires_in_s: (value.expires_ns - now) as f64 / 1e9,
            }
        })
        .collect();
    allowed.sort_by(|a, b| a.expires_in_s.total_cmp(&b.expires_in_s));
    Ok(allowed)
}

/// The cgroup path or interface name behind a link name, if it can be found: the cgroup by
/// its id (the directory's inode) below the cgroup2 root, the interface by index when the link
/// is in this process's network namespace.
fn describe(link: &str) -> Option<String> {
    let (netns, ifindex) = match link.parse().ok()? {
        LinkName::Cgroup { cgroup, .. } => {
            return crate::system::cgroup::path_of(&crate::system::cgroup::root().ok()?, cgroup)
                .map(|p| p.display().to_string());
        }
        LinkName::Tc { netns, ifindex } => (netns, ifindex),
    };
    if LinkName::own_netns().ok()? != netns {
        return Some(format!("ifindex {ifindex} in network namespace {netns}"));
    }
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into the buffer.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return Some(format!("ifindex {ifindex} (gone)"));
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(
        unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The pid in the pid file, if that process is alive and is an egress-monitor.
pub fn running_daemon(layout: &PinLayout) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(layout.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "egress-monitor").then_some(pid)
}

/// `controller https://… as node-a: delivering (last 2026-…), 0 pending; fleet policy v3, mode enforce`.
fn controller_line(link: &crate::fleet::reporter::ReporterStatus) -> String {
    let state = match (&link.throttled_until, &link.failing_since, &link.last_error) {
        (Some(until), _, Some(error)) => {
            format!("throttled by the controller until {until} ({error})")
        }
        (_, Some(since), Some(error)) => format!("failing since {since} ({error})"),
        _ => format!(
            "delivering (last {})",
            link.last_delivery.as_deref().unwrap_or("none yet")
        ),
    };
    let mut line = format!(
        "controller   {} as {}: {state}, {} pending, {} delivered, {} dropped by the full spool; fleet policy {}, mode {}",
        link.controller,
        link.node_id,
        link.pending,
        link.delivered,
        link.dropped_reports,
        link.fleet_policy_version
            .map_or("none (local policy)".to_owned(), |v| format!("v{v}")),
        link.fleet_mode
            .map_or("local", egress_monitor_policy::Mode::as_str),
    );
    if let Some(error) = &link.fleet_error {
        line.push_str(&format!("; refused the fleet's newest: {error}"));
    }
    line.push('\n');
    line
}

pub fn render(status: &Status) -> String {
    let hook = |name: &str, c: &crate::datapath::HookCounters| {
        format!(
            "{name:<7} allowed {} pkts / {} B, denied-observed {} / {} B, denied-dropped {} / {} B\n",
            c.allowed.packets,
            c.allowed.bytes,
            c.denied_observed.packets,
            c.denied_observed.bytes,
            c.denied_dropped.packets,
            c.denied_dropped.bytes
        )
    };
    let mode = if status.mode_source.is_empty() {
        status.mode.to_string()
    } else {
        format!("{} (from {})", status.mode, status.mode_source)
    };
    let mut out = format!(
        "pin path     {}\nmode         {}\npolicy       {} ({} rules)\nattached     {}\npinned since {}{}\ndaemon       {}\n",
        status.pin_path,
        mode,
        status.policy_version,
        status.rules,
        if status.attached.is_empty() {
            "nowhere (not enforcing)".to_owned()
        } else {
            status
                .attached
                .iter()
                .map(|a| match &a.target {
                    Some(target) => format!("{} ({target})", a.link),
                    None => a.link.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
        status.pinned_since,
        if status.same_build {
            ""
        } else {
            " (another build; the next `run` replaces it)"
        },
        status.daemon_pid.map_or(
            "not running (enforcement continues; events wait in the ring buffer)".to_owned(),
            |pid| format!("running, pid {pid}")
        ),
    );
    out.push_str(&match &status.fast_lane {
        Some(lane) => format!(
            "fast lane    {}; flat tables: IPv4 {} allow entries, {} of {} blocks; IPv6 {} allow entries, {} of {} blocks\n",
            if lane.on { "on" } else { "off (every packet takes the full path)" },
            lane.v4.allow_entries,
            lane.v4.blocks,
            egress_monitor_common::flat::BLOCKS,
            lane.v6.allow_entries,
            lane.v6.blocks,
            egress_monitor_common::flat::BLOCKS,
        ),
        None => "fast lane    unknown (pinned by another build)\n".to_owned(),
    });
    out.push_str(&hook("cgroup", &status.counters.cgroup));
    out.push_str(&hook("tc", &status.counters.tc));
    out.push_str(&format!(
        "events lost {}, packets aggregated into flows {}, left by TC to the cgroup hook {}, \
         malformed {}, non-IP denied {}, ARP {}\n",
        status.counters.events_lost,
        status.counters.aggregated,
        status.counters.judged_by_cgroup,
        status.counters.malformed,
        status.counters.not_ip,
        status.counters.arp
    ));
    out.push_str(&format!(
        "dns questions allowed {}, denied for their name {}; answers learned {}, untrusted {}; \
         packets kept by their socket after expiry {}\n",
        status.counters.dns_queries_allowed,
        status.counters.dns_queries_denied,
        status.counters.dns_answers_learned,
        status.counters.dns_answers_untrusted,
        status.counters.learned_socket_passes
    ));
    out.push_str(&format!(
        "source-routed packets denied {}; raw-socket guard hits {}\n",
        status.counters.source_routed, status.counters.raw_guard_hits
    ));
    if let Some(link) = &status.controller {
        out.push_str(&controller_line(link));
    }
    for learned in &status.dns_allowed {
        out.push_str(&format!(
            "dns-allowed {} ({} {}, {:.0} s left)\n",
            learned.address, learned.rule, learned.domain, learned.expires_in_s
        ));
    }
    for rule in &status.expiring {
        let when = if rule.expires_in_s > 0.0 {
            format!("{:.0} s left", rule.expires_in_s)
        } else {
            "expired".to_owned()
        };
        out.push_str(&format!(
            "expires {} {} ({} {}, {when})\n",
            rule.expires,
            rule.name,
            rule.action.as_str(),
            rule.cidr
        ));
    }
    for rule in &status.rule_hits {
        out.push_str(&format!(
            "hits {:>12}  {} {}\n",
            rule.hits, rule.name, rule.cidr
        ));
    }
    out
}
