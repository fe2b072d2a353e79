//! `/replay`: a dry run on the page — a candidate policy pasted into a form, replayed against
//! the violations the fleet reported (as `POST /api/v1/policy/replay` does), shown as what it
//! would still block and what it would let through, beside a link to the fleet's suggestion.

use egress_monitor_policy::replay::{ReplayReport, Tally};
use maud::{Markup, html};

use super::{Section, layout, violations_href};

/// What the form was given, and the outcome when it was replayed.
pub struct ReplayPage {
    pub policy: String,
    pub since: String,
    pub outcome: Option<Result<(String, ReplayReport), String>>,
}

pub fn render(data: &ReplayPage) -> Markup {
    let body = html! {
        h1 { "Dry run" }
        p {
            "Paste a candidate fleet policy: it is judged against the violations the nodes reported (each at its own time, as the kernel would), and nothing is set. Start from "
            a id="suggestion" href="/api/v1/policy/suggestion" { "the policy suggested from the last week's traffic" }
            " (a valid, commented policy file)."
        }
        form method="post" action="/replay" {
            label { "since (RFC 3339; default a week ago) " input type="text" name="since" value=(data.since); }
            br;
            textarea name="policy" rows="14" cols="100" { (data.policy) }
            br;
            button type="submit" { "Replay" }
        }
        @match &data.outcome {
            None => {},
            Some(Err(message)) => p id="replay-error" class="state unprotected" { (message) },
            Some(Ok((traffic, report))) => {
                p id="replay-traffic" { "Replayed against " (traffic) "." }
                div id="replay-diff" {
                    (side("would-block", "Would still block", &report.blocked))
                    (side("would-allow", "Would let through (denied when recorded)", &report.allowed))
                }
            }
        }
    };
    layout("Dry run", Section::DryRun, html! {}, body)
}

fn side(id: &str, title: &str, tally: &Tally) -> Markup {
    let mut destinations: Vec<(&String, &u64)> = tally.destinations.iter().collect();
    destinations.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let mut processes: Vec<(&String, &u64)> = tally.processes.iter().collect();
    processes.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    html! {
        section id=(id) {
            h2 { (title) ": " (tally.flows) " flows, " (tally.packets) " packets on " (tally.nodes.len()) " nodes" }
            @if !destinations.is_empty() {
                table {
                    thead { tr { th { "destination" } th { "packets" } } }
                    tbody { @for (name, packets) in destinations.iter().take(20) {
                        tr { td { a href=(violations_href("destination", name)) { (name) } } td.n { (packets) } }
                    } }
                }
                table {
                    thead { tr { th { "process" } th { "packets" } } }
                    tbody { @for (name, packets) in processes.iter().take(20) {
                        tr { td { (name) } td.n { (packets) } }
                    } }
                }
            }
        }
    }
}
