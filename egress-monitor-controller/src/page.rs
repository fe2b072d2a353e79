//! The page at `/`: the fleet at a glance, for people. Rendered on the controller (maud
//! escapes every value), one self-contained document with no scripts or external assets;
//! it reloads itself every 15 seconds.

use egress_monitor_api::{
    time::rfc3339,
    wire::{FleetPolicy, HistoryEntry},
};
use maud::{DOCTYPE, Markup, html};

use super::{
    store::{Top, Violation},
    view::{NodeState, NodeView, Summary},
};

pub struct PageData {
    pub summary: Summary,
    pub nodes: Vec<NodeView>,
    pub fleet: FleetPolicy,
    pub recent: Vec<Violation>,
    /// The newest DNS questions refused (or that would be) and tunnelling-like names.
    pub dns: Vec<Violation>,
    /// The newest changes of the fleet's policy and mode.
    pub history: Vec<HistoryEntry>,
    /// The fleet policy's rules that end within [`EXCEPTIONS_AHEAD_MS`] (or have ended),
    /// soonest first.
    pub exceptions: Vec<Exception>,
    /// The staged rollout in progress, if one is.
    pub rollout: Option<crate::rollout::Rollout>,
}

/// How far ahead the page looks for rules about to expire: a week.
pub const EXCEPTIONS_AHEAD_MS: u64 = 7 * 24 * 3600 * 1000;

/// A rule of the fleet policy with an end (`expires`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exception {
    pub name: String,
    pub cidr: String,
    pub action: &'static str,
    pub expires_ms: u64,
}

/// The rules of a fleet policy's text that end before `now_ms + ahead_ms`, soonest first.
pub fn exceptions(policy_text: &str, now_ms: u64, ahead_ms: u64) -> Vec<Exception> {
    let Ok(file) =
        egress_monitor_policy::PolicyFile::parse(std::path::Path::new("fleet policy"), policy_text)
    else {
        return Vec::new();
    };
    let mut soon: Vec<Exception> = file
        .rules
        .iter()
        .filter_map(|rule| {
            let expires_ms = rule.expires?;
            (expires_ms <= now_ms.saturating_add(ahead_ms)).then(|| Exception {
                name: rule.name.clone(),
                cidr: rule.network.to_string(),
                action: rule.action.as_str(),
                expires_ms,
            })
        })
        .collect();
    soon.sort_by_key(|e| e.expires_ms);
    soon
}

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border-bottom: 1px solid #d8dde3; padding: .25em .7em; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.tiles { display: flex; gap: .8em; flex-wrap: wrap; }
.tile { border: 1px solid #d8dde3; border-radius: 6px; padding: .5em 1em; min-width: 7em; }
.tile b { display: block; font-size: 1.6em; }
.state { font-weight: 600; padding: 0 .4em; border-radius: 4px; }
.enforced { background: #d3f9d8; } .observing { background: #e7f5ff; }
.drifted { background: #fff3bf; } .unprotected, .stale { background: #ffe3e3; }
pre { background: #f8f9fa; border: 1px solid #d8dde3; padding: .6em; max-height: 24em; overflow: auto; }
.muted { color: #68717a; }
";

pub fn render(data: &PageData) -> Markup {
    let s = &data.summary;
    let stale: Vec<&NodeView> = data
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Stale)
        .collect();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="15";
                title { "egress-monitor fleet" }
                style { (STYLE) }
            }
            body {
                h1 { "egress-monitor fleet" }
                div.tiles id="summary" {
                    (tile("nodes", s.nodes))
                    (tile("enforced", s.enforced))
                    (tile("observing", s.observing))
                    (tile("drifted", s.drifted))
                    (tile("unprotected", s.unprotected))
                    (tile("stale", s.stale))
                    (tile("unverified", s.unverified))
                    (tile("converged", s.converged))
                }
                h2 { "Nodes" span.muted { " (those that need attention first)" } }
                table id="nodes" {
                    thead { tr {
                        th { "node" } th { "state" } th { "proof" } th { "mode" } th { "fleet policy" }
                        th { "denied (observed / dropped)" } th { "last report" } th { "problems" }
                    } }
                    tbody {
                        @for node in &data.nodes {
                            tr data-node=(node.node.node_id) {
                                td { (node.node.node_id) br; span.muted { (node.node.hostname) } }
                                td { span class={ "state " (node.state.as_str()) } { (node.state.as_str()) } }
                                td {
                                    @if node.verified { span.state.enforced { "verified" } }
                                    @else { span.state.drifted { "unverified" } }
                                }
                                td {
                                    (node.node.mode.as_str())
                                    @if let Some(proof) = &node.node.proof {
                                        br; span.muted { "from " (proof.proof.mode_source) }
                                    }
                                }
                                td { @match node.node.fleet_version { Some(v) => { "v" (v) }, None => span.muted { "local" } } }
                                td.n { (node.node.counters.denied_observed_packets) " / " (node.node.counters.denied_dropped_packets) }
                                td { (node.last_seen) }
                                td { @for problem in &node.problems { div { (problem) } } }
                            }
                        }
                    }
                }
                @if data.nodes.is_empty() { p.muted { "No node has reported yet." } }
                h2 { "Stale nodes" }
                @if stale.is_empty() {
                    p.muted id="stale" { "None: every node reported within three of its intervals." }
                } @else {
                    ul id="stale" { @for node in &stale { li { (node.node.node_id) " — last report " (node.last_seen) } } }
                }
                h2 { "Top destinations (24 h)" }
                (tops("destinations", "destination", &s.top_destinations))
                h2 { "Top processes (24 h)" }
                (tops("processes", "process", &s.top_processes))
                h2 { "Recent violations" }
                table id="violations" {
                    thead { tr { th { "time" } th { "node" } th { "destination" } th { "process" } th { "action" } th { "packets" } } }
                    tbody {
                        @for v in &data.recent {
                            tr {
                                td { (rfc3339(v.event.ts_ms)) }
                                td { (v.node_id) }
                                td {
                                    (v.event.dst.map(|a| a.to_string()).unwrap_or_default())
                                    @if let Some(port) = v.event.dst_port { ":" (port) }
                                    @if let Some(name) = &v.event.dst_name { " (" (name) ")" }
                                    " " span.muted { (v.event.proto) }
                                }
                                td { (v.event.exe.as_deref().or(v.event.comm.as_deref()).unwrap_or("")) }
                                td { (v.event.action) }
                                td.n { (v.event.packets) }
                            }
                        }
                    }
                }
                h2 { "Recent DNS violations" }
                @if data.dns.is_empty() {
                    p.muted { "No refused or tunnelling-like DNS questions." }
                } @else {
                    table id="dns" {
                        thead { tr { th { "time" } th { "node" } th { "question" } th { "resolver" } th { "process" } th { "action" } th { "rule" } th { "tunnel score" } } }
                        tbody {
                            @for v in &data.dns {
                                tr {
                                    td { (rfc3339(v.event.ts_ms)) }
                                    td { (v.node_id) }
                                    td { (v.event.dst_name.as_deref().unwrap_or("")) }
                                    td {
                                        (v.event.dst.map(|a| a.to_string()).unwrap_or_default())
                                        " " span.muted { (v.event.proto) }
                                    }
                                    td { (v.event.exe.as_deref().or(v.event.comm.as_deref()).unwrap_or("")) }
                                    td { (v.event.action) }
                                    td { (v.event.rule) }
                                    td.n { (v.event.tunnel_score.map(|s| s.to_string()).unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
                h2 { "Fleet policy and rollout" }
                p id="rollout" {
                    @if data.fleet.version == 0 {
                        "No fleet policy: nodes run their local policy. "
                    } @else {
                        "Version " b { (data.fleet.version) } ", set " (data.fleet.updated.as_deref().unwrap_or("")) ". "
                    }
                    "Fleet mode: " b { (data.fleet.mode.map_or("not set (each node keeps its own)", |m| m.as_str())) } ". "
                    (s.converged) " of " (s.nodes) " nodes run it."
                }
                @if let Some(rollout) = &data.rollout {
                    p id="rollout-stage" class={ "rollout " (rollout.stage.as_str()) } {
                        "Rollout of v" (data.fleet.version) " to " (rollout.target.describe()) ": "
                        b { (rollout.stage.as_str()) }
                        @if let Some(reason) = &rollout.reason { " — " (reason) }
                        ". Started " (rfc3339(rollout.started_ms)) " by " (rollout.started_by)
                        "; the other nodes keep v" (rollout.base_version) ". "
                        span.muted { "POST /api/v1/rollout/promote or /rollback." }
                    }
                }
                @if !data.exceptions.is_empty() {
                    h2 { "Exceptions ending within 7 days" }
                    table id="exceptions" {
                        thead { tr { th { "rule" } th { "action" } th { "prefix" } th { "ends" } } }
                        tbody {
                            @for e in &data.exceptions {
                                tr data-rule=(e.name) {
                                    td { (e.name) }
                                    td { (e.action) }
                                    td { (e.cidr) }
                                    td { (rfc3339(e.expires_ms)) }
                                }
                            }
                        }
                    }
                }
                @if let Some(policy) = &data.fleet.policy { pre id="policy" { (policy) } }
                @if !data.history.is_empty() {
                    table id="history" {
                        thead { tr { th { "changed" } th { "what" } th { "policy" } th { "mode" } th { "by" } } }
                        tbody {
                            @for h in &data.history {
                                tr data-change=(h.change) data-version=(h.policy_version) {
                                    td { (h.at) }
                                    td { (h.change) }
                                    td { "v" (h.policy_version) }
                                    td { (h.mode.map_or("not set", |m| m.as_str())) }
                                    td { (h.by.as_deref().unwrap_or("–")) }
                                }
                            }
                        }
                    }
                }
                p.muted { "API: /api/v1/nodes, /api/v1/violations, /api/v1/summary, /api/v1/policy, /api/v1/history. This page reloads every 15 s." }
            }
        }
    }
}

fn tile(label: &str, value: usize) -> Markup {
    html! { div.tile data-count=(label) { b { (value) } (label) } }
}

fn tops(id: &str, what: &str, rows: &[Top]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted id=(id) { "None in the last 24 hours." }
        } @else {
            table id=(id) {
                thead { tr { th { (what) } th { "packets" } th { "events" } th { "nodes" } } }
                tbody {
                    @for row in rows {
                        tr {
                            td { (row.key) @if let Some(name) = &row.name { " (" (name) ")" } }
                            td.n { (row.packets) } td.n { (row.events) } td.n { (row.nodes) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exceptions_listed_are_the_fleet_rules_ending_within_the_window() {
        let text = r#"
[[rule]]
name = "ended"
cidr = "192.0.2.0/24"
action = "allow"
expires = "2026-11-30T00:00:00Z"

[[rule]]
name = "next-week"
cidr = "203.0.113.0/24"
action = "allow"
expires = "2026-12-05T00:00:00Z"

[[rule]]
name = "next-year"
cidr = "198.51.100.0/24"
action = "deny"
expires = "2027-12-01T00:00:00Z"

[[rule]]
name = "forever"
cidr = "10.1.0.0/16"
action = "deny"
"#;
        let now = egress_monitor_api::time::parse_rfc3339_ms("2026-12-01T00:00:00Z").unwrap();
        let listed = exceptions(text, now, EXCEPTIONS_AHEAD_MS);
        let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["ended", "next-week"]);
        assert_eq!(listed[1].cidr, "203.0.113.0/24");
        assert!(exceptions("not a policy [", now, EXCEPTIONS_AHEAD_MS).is_empty());
    }
}
