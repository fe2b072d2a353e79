//! `/`: what needs attention first (in colour), the counts that link to their nodes, the
//! violations over time, the fleet by group, the rollout, the exceptions ending soon, the
//! policy and its history, the day's tops and the newest violations. With no node yet: how to
//! enrol one.

use egress_monitor_api::{
    time::rfc3339,
    wire::{FleetPolicy, HistoryEntry},
};
use maud::{Markup, PreEscaped, html};

use super::{
    Exception, Section, UPLOT_CSS_PATH, UPLOT_JS_PATH, encode, layout, node_href, proof_badge,
    state_badge, tile, tops, violations_table,
};
use crate::{
    rollout::Rollout,
    store::{Hour, Violation},
    view::{NodeView, Summary},
};

/// Nodes listed on the overview at most (the rest are one click away, paged).
pub const ATTENTION_SHOWN: usize = 50;
pub const NODES_SHOWN: usize = 50;

/// One group (a scale set, a `--node-group`) at a glance.
#[derive(Clone, Debug, Default)]
pub struct GroupRow {
    /// `None`: nodes without a group.
    pub group: Option<String>,
    pub nodes: usize,
    pub enforced: usize,
    pub observing: usize,
    pub attention: usize,
}

pub struct HomeData {
    pub summary: Summary,
    /// The first [`ATTENTION_SHOWN`] nodes that need someone, worst first, and how many do.
    pub attention: Vec<NodeView>,
    pub attention_total: usize,
    /// The first [`NODES_SHOWN`] nodes, attention first.
    pub nodes: Vec<NodeView>,
    pub groups: Vec<GroupRow>,
    /// Violations per hour over the last day.
    pub hours: Vec<Hour>,
    pub fleet: FleetPolicy,
    pub recent: Vec<Violation>,
    /// The newest DNS questions refused (or that would be) and tunnelling-like names.
    pub dns: Vec<Violation>,
    /// The newest changes of the fleet's policy and mode.
    pub history: Vec<HistoryEntry>,
    /// The fleet policy's rules that end within a week (or have ended), soonest first.
    pub exceptions: Vec<Exception>,
    pub rollout: Option<Rollout>,
    /// How nodes reach this controller (for the enrolment steps).
    pub controller_url: String,
}

pub fn render(data: &HomeData) -> Markup {
    let head = html! {
        link rel="stylesheet" href=(UPLOT_CSS_PATH);
        script src=(UPLOT_JS_PATH) {}
    };
    layout("Overview", Section::Overview, head, body(data))
}

fn body(data: &HomeData) -> Markup {
    let s = &data.summary;
    html! {
        h1 { "Fleet overview" }
        div.tiles id="summary" {
            (tile("nodes", s.nodes, "/nodes", false))
            (tile("enforced", s.enforced, "/nodes?state=enforced", false))
            (tile("observing", s.observing, "/nodes?state=observing", false))
            (tile("drifted", s.drifted, "/nodes?state=drifted", true))
            (tile("unprotected", s.unprotected, "/nodes?state=unprotected", true))
            (tile("stale", s.stale, "/nodes?state=stale", true))
            (tile("unverified", s.unverified, "/nodes?verified=false", true))
            (tile("converged", s.converged, "/nodes", false))
        }
        @if let Some(rollout) = &data.rollout { (rollout_banner(rollout, data.fleet.version)) }
        @if s.nodes == 0 {
            (enrol(&data.controller_url))
            (policy_section(data))
        } @else {
            (attention(data))
            (fleet(data))
        }
    }
}

/// Everything below the attention list, for a fleet with nodes.
fn fleet(data: &HomeData) -> Markup {
    let s = &data.summary;
    html! {
        h2 { "Violations over time (24 h)" }
        (chart(&data.hours))
        @if !data.groups.is_empty() { (groups(&data.groups)) }
        h2 { "Nodes" span.muted { " (those that need attention first; "
            a href="/nodes" { "all " (s.nodes) } ")" } }
        (nodes_table("nodes", &data.nodes))
        h2 { "Top destinations (24 h)" }
        (tops("destinations", "destination", &s.top_destinations))
        h2 { "Top processes (24 h)" }
        (tops("processes", "process", &s.top_processes))
        h2 { "Recent violations" span.muted { " (" a href="/violations" { "all, filtered" } ")" } }
        (violations_table("violations", &data.recent))
        h2 { "Recent DNS violations" }
        @if data.dns.is_empty() {
            p.muted { "No refused or tunnelling-like DNS questions." }
        } @else {
            (dns_table(&data.dns))
        }
        (policy_section(data))
        p {
            a id="suggest" href="/api/v1/policy/suggestion" { "Suggest a policy from the last week's violations" }
            " · " a href="/replay" { "Dry-run a candidate against them" }
        }
        p.muted { "API: /api/v1/nodes, /api/v1/violations, /api/v1/summary, /api/v1/policy, /api/v1/rollout, /api/v1/history. As of " (rfc3339(egress_monitor_api::time::now_ms())) "." }
    }
}

/// How to enrol a node, for a fleet with none.
fn enrol(controller_url: &str) -> Markup {
    html! {
        section id="enrol" {
            h2 { "No node has reported yet" }
            p { "Enrol a node: install the node's package, give it the fleet token, and point it here." }
            pre { (format!("# on each node (or in the scale set's cloud-init):
apt install ./egress-monitor_*.deb
install -m 600 fleet.token /etc/egress-monitor/fleet.token     # a line of the controller's --node-token-file
egress-monitor run --hook both --controller {controller_url} \\
    --token-file /etc/egress-monitor/fleet.token [--controller-ca ca.crt] [--node-group NAME]")) }
            p.muted { "Nodes appear here within one report interval (10 s). On Azure, add --attest so no other machine can report as the node. Details: docs/fleet.md." }
        }
    }
}

/// The nodes that need someone, worst first, each with what is wrong.
fn attention(data: &HomeData) -> Markup {
    html! {
        h2 { "Needs attention" }
        @if data.attention.is_empty() {
            p.muted id="attention" { "Nothing: every node reports, enforces or observes as the fleet wants, and proves it." }
        } @else {
            div.attention id="attention" {
                table {
                    thead { tr { th { "node" } th { "group" } th { "state" } th { "proof" } th { "what is wrong" } } }
                    tbody {
                        @for node in &data.attention {
                            tr data-attention=(node.node.node_id) {
                                td { a href=(node_href(&node.node.node_id)) { (node.node.node_id) } }
                                td { (group_link(node.node.group.as_deref())) }
                                td { (state_badge(node.state)) }
                                td { (proof_badge(node)) }
                                td { @for problem in &node.problems { div { (problem) } } }
                            }
                        }
                    }
                }
                @if data.attention_total > data.attention.len() {
                    p { a href="/nodes?attention=true" { "and " (data.attention_total - data.attention.len()) " more" } }
                }
            }
        }
    }
}

fn group_link(group: Option<&str>) -> Markup {
    html! {
        @match group {
            Some(group) => a href={ "/nodes?group=" (encode(group)) } { (group) },
            None => span.muted { "–" },
        }
    }
}

fn rollout_banner(rollout: &Rollout, version: u64) -> Markup {
    html! {
        p id="rollout-stage" class={ "rollout " (rollout.stage.as_str()) } {
            "Rollout of v" (version) " to " (rollout.target.describe()) ": "
            b { (rollout.stage.as_str()) }
            @if let Some(reason) = &rollout.reason { " — " (reason) }
            ". Started " (rfc3339(rollout.started_ms)) " by " (rollout.started_by)
            "; the other nodes keep v" (rollout.base_version) ". "
            span.muted { "POST /api/v1/rollout/promote or /rollback." }
        }
    }
}

/// The hourly violations, drawn by uPlot from data in the page (a table for those without
/// scripts).
fn chart(hours: &[Hour]) -> Markup {
    let times: Vec<u64> = hours.iter().map(|h| h.hour_ms / 1000).collect();
    let flows: Vec<u64> = hours.iter().map(|h| h.flow_packets).collect();
    let dns: Vec<u64> = hours.iter().map(|h| h.dns_violations).collect();
    let data = serde_json::json!([times, flows, dns]).to_string();
    html! {
        @if hours.is_empty() {
            p.muted id="chart-empty" { "No violation in the last 24 hours." }
        } @else {
            div id="chart" data-hours=(hours.len()) {}
            noscript {
                table {
                    thead { tr { th { "hour" } th { "denied packets" } th { "DNS violations" } } }
                    tbody { @for h in hours { tr { td { (rfc3339(h.hour_ms)) } td.n { (h.flow_packets) } td.n { (h.dns_violations) } } } }
                }
            }
            script { (PreEscaped(format!(r##"
(function () {{
  var el = document.getElementById("chart");
  if (!window.uPlot || !el) return;
  var data = {data};
  new uPlot({{
    width: Math.min(980, el.clientWidth || 980), height: 220,
    series: [{{}},
      {{ label: "denied packets", stroke: "#e03131", fill: "rgba(224,49,49,.08)" }},
      {{ label: "DNS violations", stroke: "#1971c2" }}],
    axes: [{{}}, {{}}]
  }}, data, el);
}})();"##))) }
        }
    }
}

fn groups(rows: &[GroupRow]) -> Markup {
    html! {
        h2 { "By group (scale set)" }
        table id="groups" {
            thead { tr { th { "group" } th { "nodes" } th { "enforced" } th { "observing" } th { "need attention" } } }
            tbody {
                @for row in rows {
                    tr data-group=(row.group.as_deref().unwrap_or("")) {
                        td { (group_link(row.group.as_deref())) }
                        td.n { (row.nodes) } td.n { (row.enforced) } td.n { (row.observing) }
                        td.n {
                            @if row.attention > 0 { b { (row.attention) } } @else { "0" }
                        }
                    }
                }
            }
        }
    }
}

/// Nodes with their state, proof, mode and its source, policy, counts and problems.
pub fn nodes_table(id: &str, nodes: &[NodeView]) -> Markup {
    html! {
        table id=(id) {
            thead { tr {
                th { "node" } th { "group" } th { "state" } th { "proof" } th { "mode" } th { "fleet policy" }
                th { "denied (observed / dropped)" } th { "last report" } th { "problems" }
            } }
            tbody {
                @for node in nodes {
                    tr data-node=(node.node.node_id) {
                        td { a href=(node_href(&node.node.node_id)) { (node.node.node_id) } br; span.muted { (node.node.hostname) } }
                        td { (group_link(node.node.group.as_deref())) }
                        td { (state_badge(node.state)) }
                        td { (proof_badge(node)) }
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
    }
}

fn dns_table(rows: &[Violation]) -> Markup {
    html! {
        table id="dns" {
            thead { tr { th { "time" } th { "node" } th { "question" } th { "resolver" } th { "process" } th { "action" } th { "rule" } th { "tunnel score" } } }
            tbody {
                @for v in rows {
                    tr {
                        td { (rfc3339(v.event.ts_ms)) }
                        td { a href=(node_href(&v.node_id)) { (v.node_id) } }
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
}

fn policy_section(data: &HomeData) -> Markup {
    let s = &data.summary;
    html! {
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
        @if !data.exceptions.is_empty() {
            h2 { "Exceptions ending within 7 days" }
            table id="exceptions" {
                thead { tr { th { "rule" } th { "action" } th { "prefix" } th { "ends" } } }
                tbody {
                    @for e in &data.exceptions {
                        tr data-rule=(e.name) {
                            td { (e.name) } td { (e.action) } td { (e.cidr) } td { (rfc3339(e.expires_ms)) }
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
                            td { (h.at) } td { (h.change) } td { "v" (h.policy_version) }
                            td { (h.mode.map_or("not set", |m| m.as_str())) }
                            td { (h.by.as_deref().unwrap_or("–")) }
                        }
                    }
                }
            }
        }
    }
}
