//! `/nodes`: the nodes, searched (id or hostname), filtered (state, group, attention, proof) and
//! paged — a page of rows however large the fleet; `/nodes/ID`: one node, its problems, proof,
//! alarms, counters and recent violations.

use egress_monitor_api::time::rfc3339;
use maud::{Markup, html};

use super::{
    Section, encode, home::nodes_table, layout, proof_badge, state_badge, violations_href,
    violations_table,
};
use crate::{store::Violation, view::NodeView};

/// Nodes per page of `/nodes`.
pub const PAGE_SIZE: usize = 100;

/// What `/nodes` was asked for (kept in the paging links).
#[derive(Clone, Debug, Default)]
pub struct NodeFilter {
    pub q: Option<String>,
    pub state: Option<String>,
    pub group: Option<String>,
    pub attention: bool,
    pub verified: Option<bool>,
    /// 1-based.
    pub page: usize,
}

impl NodeFilter {
    /// The query string of this filter on another page.
    pub fn query(&self, page: usize) -> String {
        let mut parts = Vec::new();
        if let Some(q) = &self.q {
            parts.push(format!("q={}", encode(q)));
        }
        if let Some(state) = &self.state {
            parts.push(format!("state={}", encode(state)));
        }
        if let Some(group) = &self.group {
            parts.push(format!("group={}", encode(group)));
        }
        if self.attention {
            parts.push("attention=true".to_owned());
        }
        if let Some(verified) = self.verified {
            parts.push(format!("verified={verified}"));
        }
        parts.push(format!("page={page}"));
        parts.join("&")
    }
}

pub struct NodeList {
    pub filter: NodeFilter,
    /// This page's nodes.
    pub nodes: Vec<NodeView>,
    /// How many match.
    pub matching: usize,
    /// Every group, for the filter.
    pub groups: Vec<String>,
}

pub fn list(data: &NodeList) -> Markup {
    let f = &data.filter;
    let pages = data.matching.div_ceil(PAGE_SIZE).max(1);
    let body = html! {
        h1 { "Nodes" }
        form.filters method="get" action="/nodes" {
            label { "search" input type="search" name="q" value=(f.q.as_deref().unwrap_or("")); }
            label { "state"
                select name="state" {
                    option value="" { "any" }
                    @for state in ["stale", "unprotected", "drifted", "observing", "enforced"] {
                        option value=(state) selected[f.state.as_deref() == Some(state)] { (state) }
                    }
                }
            }
            label { "group"
                select name="group" {
                    option value="" { "any" }
                    @for group in &data.groups {
                        option value=(group) selected[f.group.as_deref() == Some(group.as_str())] { (group) }
                    }
                }
            }
            label { "needs attention" input type="checkbox" name="attention" value="true" checked[f.attention]; }
            button type="submit" { "Filter" }
        }
        p id="matching" { (data.matching) " nodes match" @if pages > 1 { ", page " (f.page) " of " (pages) } "." }
        @if data.nodes.is_empty() {
            p.muted { "No node matches." }
        } @else {
            (nodes_table("nodes", &data.nodes))
        }
        div.pager {
            @if f.page > 1 { a id="previous" href={ "/nodes?" (f.query(f.page - 1)) } { "← previous" } }
            @if f.page < pages { a id="next" href={ "/nodes?" (f.query(f.page + 1)) } { "next →" } }
        }
    };
    layout("Nodes", Section::Nodes, html! {}, body)
}

pub struct NodePage {
    pub view: NodeView,
    pub violations: Vec<Violation>,
    /// The version and mode the fleet wants this node to run (its own during a rollout).
    pub desired_version: u64,
    pub desired_mode: Option<egress_monitor_api::Mode>,
}

pub fn node(data: &NodePage) -> Markup {
    let v = &data.view;
    let n = &v.node;
    let body = html! {
        h1 id="node" data-node=(n.node_id) { (n.node_id) " " (state_badge(v.state)) " " (proof_badge(v)) }
        table id="facts" {
            tr { th { "hostname" } td { (n.hostname) } }
            tr { th { "group" } td { (n.group.as_deref().unwrap_or("–")) } }
            tr { th { "VM id" } td { (n.vm_id.as_deref().unwrap_or("–")) } }
            tr { th { "mode" } td { (n.mode.as_str())
                @if let Some(proof) = &n.proof { " (from " (proof.proof.mode_source) ")" } } }
            tr { th { "policy" } td { (n.policy_version) " — fleet "
                @match n.fleet_version { Some(v) => { "v" (v) }, None => "local" }
                "; the fleet wants v" (data.desired_version) " in "
                (data.desired_mode.map_or("its own", |m| m.as_str())) " mode" } }
            tr { th { "last report" } td { (v.last_seen) " (every " (n.interval_s) " s)" } }
            tr { th { "programs attached" } td { (n.health.attachments) } }
            tr { th { "denied (observed / dropped)" } td { (n.counters.denied_observed_packets) " / " (n.counters.denied_dropped_packets) } }
        }
        h2 { "Problems" }
        @if v.problems.is_empty() { p.muted id="problems" { "None." } }
        @else { ul id="problems" { @for p in &v.problems { li { (p) } } } }
        h2 { "Proof" }
        @match &n.proof {
            None => p.muted { "This node has sent no self-check." },
            Some(stored) => {
                p id="proof" {
                    "Last self-check " (rfc3339(stored.checked_at_ms)) " (every " (stored.proof.interval_s) " s): "
                    b { @if stored.proof.passed { "passed" } @else { "failed" } }
                    @if !stored.proof.same_build { " — its pinned programs are not its daemon's build" }
                }
                @if !stored.proof.problems.is_empty() { ul { @for p in &stored.proof.problems { li { (p) } } } }
                @if !stored.proof.alarms.is_empty() {
                    table id="alarms" {
                        thead { tr { th { "alarm" } th { "when (node clock)" } th { "what" } } }
                        tbody { @for a in &stored.proof.alarms { tr { td { (a.kind) } td { (rfc3339(a.ts_ms)) } td { (a.message) } } } }
                    }
                }
            }
        }
        h2 { "Recent violations" span.muted { " (" a href=(violations_href("node", &n.node_id)) { "all" } ")" } }
        @if data.violations.is_empty() { p.muted { "None stored." } }
        @else { (violations_table("violations", &data.violations)) }
    };
    layout(&n.node_id, Section::Nodes, html! {}, body)
}
