//! Dry runs: a policy replayed against recorded traffic — the denied packets nodes reported —
//! before it is rolled out: which of them it would still block (how many flows, on how many
//! nodes, to which destinations, from which processes) and which it would let through.
//!
//! A decision here is the kernel's, made in userspace: the longest matching prefix rule (one
//! that has expired by the packet's time does not count), else the most specific domain rule
//! for the name the node resolved the destination from, else the default deny. Recorded
//! traffic holds only what was denied when it was recorded, so a replay says what a policy
//! would change about that traffic; packets allowed then were not recorded.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::{Action, Policy, suggest::Seen};

/// What a policy decides for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The deciding rule's name, or `default`.
    pub rule: String,
}

impl Policy {
    /// The decision for a packet to `dst` at `at_ms` (ms since the epoch), which the node
    /// knew by `name` when it resolved one.
    pub fn decide(&self, dst: IpAddr, name: Option<&str>, at_ms: u64) -> Decision {
        let prefix = self
            .rules
            .iter()
            .filter(|rule| rule.network.contains(dst))
            .filter(|rule| rule.expires.is_none_or(|end| at_ms < end))
            .max_by_key(|rule| rule.network.prefix());
        if let Some(rule) = prefix {
            return Decision {
                allowed: rule.action == Action::Allow,
                rule: rule.name.clone(),
            };
        }
        // No prefix rule speaks of it: a domain rule may, through the name.
        let domain = name.and_then(|name| {
            self.domains
                .iter()
                .filter(|rule| rule.domain.matches(name))
                // The exact name first, then the longest parent.
                .max_by_key(|rule| (!rule.domain.subdomains, rule.domain.name.len()))
        });
        match domain {
            Some(rule) => Decision {
                allowed: rule.action == Action::Allow,
                rule: rule.name.clone(),
            },
            None => Decision {
                allowed: false,
                rule: "default".to_owned(),
            },
        }
    }
}

/// A part of the recorded traffic: how much, on which nodes, to what, from whom.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Events (flows' reports) and the packets they stand for.
    pub flows: u64,
    pub packets: u64,
    pub nodes: BTreeSet<String>,
    /// Packets per destination (the name, when the node knew one, else the address).
    pub destinations: BTreeMap<String, u64>,
    /// Packets per process.
    pub processes: BTreeMap<String, u64>,
    /// Packets per deciding rule of the replayed policy.
    pub rules: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, seen: &Seen, dst: IpAddr, rule: &str) {
        let packets = seen.packets.max(1);
        self.flows += 1;
        self.packets += packets;
        self.nodes.extend(seen.node.clone());
        let destination = seen.name.clone().unwrap_or_else(|| dst.to_string());
        *self.destinations.entry(destination).or_default() += packets;
        let process = seen.process.clone().unwrap_or_else(|| "unknown".to_owned());
        *self.processes.entry(process).or_default() += packets;
        *self.rules.entry(rule.to_owned()).or_default() += packets;
    }
}

/// The replay's outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// What the policy would still block.
    pub blocked: Tally,
    /// What it would let through (denied when recorded).
    pub allowed: Tally,
    /// Records without a destination (not judged).
    pub skipped: u64,
}

/// Replays `policy` against recorded denied traffic.
pub fn replay<'a>(policy: &Policy, seen: impl IntoIterator<Item = &'a Seen>) -> ReplayReport {
    let mut report = ReplayReport::default();
    for item in seen {
        let Some(dst) = item.dst else {
            report.skipped += 1;
            continue;
        };
        let decision = policy.decide(dst, item.name.as_deref(), item.at_ms);
        let tally = if decision.allowed {
            &mut report.allowed
        } else {
            &mut report.blocked
        };
        tally.add(item, dst, &decision.rule);
    }
    report
}

impl ReplayReport {
    /// For people: the counts, then the top destinations and processes of each side.
    pub fn render(&self, top: usize) -> String {
        let side = |what: &str, tally: &Tally| -> String {
            let nodes = tally.nodes.len();
            let mut out = format!(
                "would {what} {} flows ({} packets) on {nodes} node{}\n",
                tally.flows,
                tally.packets,
                if nodes == 1 { "" } else { "s" }
            );
            for (title, items) in [
                ("destinations", &tally.destinations),
                ("processes", &tally.processes),
                ("rules", &tally.rules),
            ] {
                if items.is_empty() {
                    continue;
                }
                let mut sorted: Vec<(&String, &u64)> = items.iter().collect();
                sorted.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                let shown: Vec<String> = sorted
                    .iter()
                    .take(top)
                    .map(|(name, packets)| format!("{name} ({packets})"))
                    .collect();
                let more = sorted.len().saturating_sub(top);
                out.push_str(&format!("  {title}: {}", shown.join(", ")));
                if more > 0 {
                    out.push_str(&format!(" and {more} more"));
                }
                out.push('\n');
            }
            out
        };
        let mut out = side("block", &self.blocked);
        out.push_str(&side("allow", &self.allowed));
        if self.skipped > 0 {
            out.push_str(&format!(
                "{} records had no destination and were not judged\n",
                self.skipped
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{CommandLineRules, PolicyFile};

    fn policy(text: &str) -> Policy {
        let file = PolicyFile::parse(Path::new("p.toml"), text).unwrap();
        Policy::build(Some(&file), &CommandLineRules::default(), None).unwrap()
    }

    fn seen(dst: &str, name: Option<&str>, process: &str, node: &str, packets: u64) -> Seen {
        Seen {
            dst: Some(dst.parse().unwrap()),
            name: name.map(str::to_owned),
            process: Some(process.to_owned()),
            node: Some(node.to_owned()),
            at_ms: 1_000,
            packets,
        }
    }

    #[test]
    fn decisions_follow_the_kernels_order() {
        let p = policy(
            r#"
[[rule]]
name = "vendor"
cidr = "203.0.113.0/24"
action = "allow"
expires = "1970-01-01T00:00:02Z"

[[rule]]
name = "carve"
cidr = "203.0.113.128/25"
action = "deny"

[[rule]]
name = "storage"
domain = "*.blob.example.net"
action = "allow"

[[rule]]
name = "not-this-one"
domain = "public.blob.example.net"
action = "deny"
"#,
        );
        let decide = |dst: &str, name: Option<&str>, at: u64| {
            let d = p.decide(dst.parse().unwrap(), name, at);
            (d.allowed, d.rule)
        };
        assert_eq!(decide("203.0.113.1", None, 1_000), (true, "vendor".into()));
        assert_eq!(
            decide("203.0.113.1", None, 2_000),
            (false, "default".into())
        );
        assert_eq!(
            decide("203.0.113.200", None, 1_000),
            (false, "carve".into())
        );
        assert_eq!(decide("10.1.2.3", None, 1_000), (true, "private".into()));
        assert_eq!(
            decide("198.51.100.1", Some("a.blob.example.net"), 0),
            (true, "storage".into())
        );
        assert_eq!(
            decide("198.51.100.1", Some("public.blob.example.net"), 0),
            (false, "not-this-one".into())
        );
        // A prefix rule speaks first: the carve-out wins over the name.
        assert_eq!(
            decide("203.0.113.200", Some("a.blob.example.net"), 0),
            (false, "carve".into())
        );
        assert_eq!(decide("198.51.100.1", None, 0), (false, "default".into()));
    }

    #[test]
    fn a_replay_counts_every_recorded_flow_once() {
        let p =
            policy("[[rule]]\nname = \"api\"\ncidr = \"203.0.113.10/32\"\naction = \"allow\"\n");
        let recorded = [
            seen("203.0.113.10", Some("api.example.com"), "curl", "vm-1", 5),
            seen("203.0.113.10", None, "curl", "vm-2", 1),
            seen("198.51.100.7", None, "backup", "vm-1", 3),
            seen("2001:db8::9", Some("v6.example.org"), "backup", "vm-3", 2),
            Seen::default(),
        ];
        let report = replay(&p, &recorded);
        assert_eq!((report.allowed.flows, report.allowed.packets), (2, 6));
        assert_eq!(report.allowed.nodes.len(), 2);
        assert_eq!((report.blocked.flows, report.blocked.packets), (2, 5));
        assert_eq!(report.blocked.nodes.len(), 2);
        assert_eq!(report.blocked.destinations["198.51.100.7"], 3);
        assert_eq!(report.blocked.destinations["v6.example.org"], 2);
        assert_eq!(report.blocked.processes["backup"], 5);
        assert_eq!(report.blocked.rules["default"], 5);
        assert_eq!(report.skipped, 1);
        let text = report.render(3);
        assert!(
            text.starts_with("would block 2 flows (5 packets) on 2 nodes\n"),
            "{text}"
        );
        assert!(
            text.contains("would allow 2 flows (6 packets) on 2 nodes\n"),
            "{text}"
        );
    }
}
