//! `/violations`: the stored violations, filtered by node, process, destination, rule, kind
//! and time, newest first, paged back with the `before` cursor.

use maud::{Markup, html};

use super::{Section, encode, layout, violations_table};
use crate::store::Violation;

/// Violations per page.
pub const PAGE_SIZE: u32 = 100;

/// The filter as asked (echoed in the form and kept in the paging link).
#[derive(Clone, Debug, Default)]
pub struct Asked {
    pub pairs: Vec<(String, String)>,
}

impl Asked {
    fn get(&self, key: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// This filter, one page further back.
    fn before(&self, id: i64) -> String {
        let mut parts: Vec<String> = self
            .pairs
            .iter()
            .filter(|(k, _)| k != "before")
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        parts.push(format!("before={id}"));
        parts.join("&")
    }
}

pub fn list(asked: &Asked, rows: &[Violation]) -> Markup {
    let field = |key: &'static str, label: &'static str| {
        html! { label { (label) input type="text" name=(key) value=(asked.get(key)); } }
    };
    let body = html! {
        h1 { "Violations" }
        form.filters method="get" action="/violations" {
            (field("node", "node"))
            (field("destination", "destination (address or name)"))
            (field("process", "process"))
            (field("rule", "rule"))
            (field("kind", "kind (first, update, packet, dns)"))
            (field("since", "since (RFC 3339)"))
            (field("until", "until"))
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p.muted id="none" { "No violation matches." }
        } @else {
            p id="shown" { (rows.len()) " shown, newest first." }
            (violations_table("violations", rows))
            @if rows.len() == PAGE_SIZE as usize {
                @if let Some(last) = rows.last() {
                    div.pager { a id="older" href={ "/violations?" (asked.before(last.id)) } { "older →" } }
                }
            }
        }
    };
    layout("Violations", Section::Violations, html! {}, body)
}
