//! The console: the fleet for people, rendered on the controller (maud escapes every value),
//! server-side pages linked to each other — no build step, no external assets, the one script
//! being the chart library the controller serves itself (uPlot, `/assets/`).
//!
//! - [`home`] (`/`): what needs attention first, the violations over time, the fleet by group,
//!   the rollout, exceptions, the policy and its history; how to enrol a node when none has.
//! - [`nodes`] (`/nodes`, `/nodes/ID`): the nodes, searched, filtered and paged; one node.
//! - [`violations`] (`/violations`): the violations, filtered, paged back in time.
//! - [`replay`] (`/replay`): a dry run of a candidate policy against them, as a diff.
//!
//! Every node, destination, process and rule links to its filtered view.

pub mod home;
pub mod nodes;
pub mod replay;
pub mod violations;

use egress_monitor_api::time::rfc3339;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{
    store::{Top, Violation},
    view::{NodeState, NodeView},
};

/// The chart library the controller serves (see `assets/uplot/README.md`).
pub const UPLOT_JS_PATH: &str = "/assets/uplot-1.6.32.min.js";
pub const UPLOT_CSS_PATH: &str = "/assets/uplot-1.6.32.min.css";
pub const UPLOT_JS: &str = include_str!("../../assets/uplot/uPlot.iife.min.js");
pub const UPLOT_CSS: &str = include_str!("../../assets/uplot/uPlot.min.css");

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
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232a; }
main { margin: 1em 1.5em 2em; }
nav { background: #1d232a; padding: .5em 1.5em; display: flex; gap: 1.4em; align-items: center; }
nav a { color: #dee2e6; text-decoration: none; } nav a.here { color: #fff; font-weight: 600; }
nav form { margin-left: auto; } nav input { width: 16em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border-bottom: 1px solid #d8dde3; padding: .25em .7em; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
a { color: #1864ab; }
.tiles { display: flex; gap: .8em; flex-wrap: wrap; }
.tile { border: 1px solid #d8dde3; border-radius: 6px; padding: .5em 1em; min-width: 7em; color: inherit; text-decoration: none; }
.tile b { display: block; font-size: 1.6em; }
.tile.alert b { color: #c92a2a; }
.state { font-weight: 600; padding: 0 .4em; border-radius: 4px; }
.enforced, .verified { background: #d3f9d8; } .observing { background: #e7f5ff; }
.drifted, .unverified, .paused { background: #fff3bf; } .unprotected, .stale { background: #ffe3e3; }
.attention { border-left: 4px solid #e03131; padding-left: .8em; }
.rollout { padding: .4em .8em; border-radius: 6px; } .rollout.canary { background: #e7f5ff; }
#chart { min-height: 220px; max-width: 980px; }
pre { background: #f8f9fa; border: 1px solid #d8dde3; padding: .6em; max-height: 24em; overflow: auto; }
.muted { color: #68717a; }
.pager { display: flex; gap: 1em; margin: .6em 0; }
form.filters { display: flex; gap: .6em; flex-wrap: wrap; align-items: end; margin: .6em 0; }
form.filters label { display: flex; flex-direction: column; font-size: .85em; color: #68717a; }
";

/// Which page a layout is for (the navigation marks it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Nodes,
    Violations,
    DryRun,
}

/// Every console page: the head, the navigation with the node search, the page's body.
pub fn layout(title: &str, section: Section, head_extra: Markup, body: Markup) -> Markup {
    let here = |s: Section| if s == section { "here" } else { "" };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " — egress-monitor fleet" }
                style { (PreEscaped(STYLE)) }
                (head_extra)
            }
            body {
                nav {
                    a class=(here(Section::Overview)) href="/" { "egress-monitor fleet" }
                    a class=(here(Section::Nodes)) href="/nodes" { "Nodes" }
                    a class=(here(Section::Violations)) href="/violations" { "Violations" }
                    a class=(here(Section::DryRun)) href="/replay" { "Dry run" }
                    form action="/nodes" method="get" {
                        input type="search" name="q" placeholder="find a node (id or hostname)" aria-label="find a node";
                    }
                }
                main { (body) }
            }
        }
    }
}

/// `/nodes/ID`, with the id escaped for a URL path.
pub fn node_href(node_id: &str) -> String {
    format!("/nodes/{}", encode(node_id))
}

/// `/violations?KEY=VALUE`, the value escaped.
pub fn violations_href(key: &str, value: &str) -> String {
    format!("/violations?{key}={}", encode(value))
}

/// Percent-encoding of everything but unreserved characters (RFC 3986).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A node's state, coloured.
pub fn state_badge(state: NodeState) -> Markup {
    html! { span class={ "state " (state.as_str()) } { (state.as_str()) } }
}

/// Whether the node's proof holds, coloured.
pub fn proof_badge(view: &NodeView) -> Markup {
    html! {
        @if view.verified { span.state.verified { "verified" } }
        @else { span.state.unverified { "unverified" } }
    }
}

/// Whether a node needs someone: not reporting, not protected, not verified, or not running
/// what the fleet wants.
pub fn needs_attention(view: &NodeView) -> bool {
    matches!(
        view.state,
        NodeState::Stale | NodeState::Unprotected | NodeState::Drifted
    ) || !view.verified
}

/// A table of violations, each node, destination, process and rule a link to its view.
pub fn violations_table(id: &str, rows: &[Violation]) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th { "time" } th { "node" } th { "destination" } th { "process" } th { "action" } th { "rule" } th { "packets" } } }
            tbody {
                @for v in rows {
                    tr {
                        td { (rfc3339(v.event.ts_ms)) }
                        td { a href=(node_href(&v.node_id)) { (v.node_id) } }
                        td {
                            @if let Some(dst) = v.event.dst {
                                a href=(violations_href("destination", &dst.to_string())) {
                                    (dst) @if let Some(port) = v.event.dst_port { ":" (port) }
                                }
                            }
                            @if let Some(name) = &v.event.dst_name {
                                " (" a href=(violations_href("destination", name)) { (name) } ")"
                            }
                            " " span.muted { (v.event.proto) }
                        }
                        td {
                            @if let Some(process) = v.event.exe.as_deref().or(v.event.comm.as_deref()) {
                                a href=(violations_href("process", process)) { (process) }
                            }
                        }
                        td { (v.event.action) }
                        td { a href=(violations_href("rule", &v.event.rule)) { (v.event.rule) } }
                        td.n { (v.event.packets) }
                    }
                }
            }
        }
    }
}

/// A count, linking to the nodes it counts; `alert` colours a non-zero one.
fn tile(label: &str, value: usize, href: &str, alert: bool) -> Markup {
    html! {
        a class={ "tile" @if alert && value > 0 { " alert" } } data-count=(label) href=(href) {
            b { (value) } (label)
        }
    }
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
                            td {
                                a href=(violations_href(if what == "process" { "process" } else { "destination" }, &row.key)) { (row.key) }
                                @if let Some(name) = &row.name { " (" (name) ")" }
                            }
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
