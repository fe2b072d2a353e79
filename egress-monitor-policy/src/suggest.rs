//! Learning mode: a proposed policy built from observed traffic (the denied packets an
//! observing node or fleet reported), with the evidence for every rule.
//!
//! Destinations are grouped into what their DNS names support — one domain rule per name a
//! process resolved them from — and otherwise into prefixes (or, with a service tags file,
//! into the Azure service tag that holds them). Nothing is wider than what was seen unless
//! asked: by default a name is that exact name and an address its /32 or /128; `wildcards`
//! turns three or more names under one parent into `*.parent`, `widen` two or more addresses
//! of one /24 (IPv6: /64) into that prefix, and a tags file the tag.
//!
//! Pure: the caller reads the events (a node's file, the controller's store) into [`Seen`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnetwork::IpNetwork;

use crate::{Domain, Mode, service_tags::ServiceTags};

/// One observation: a denied packet (or a flow's packets) to a destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub dst: Option<IpAddr>,
    /// The name the node resolved `dst` from, when it knows one.
    pub name: Option<String>,
    pub process: Option<String>,
    pub node: Option<String>,
    pub at_ms: u64,
    pub packets: u64,
}

/// What may make a rule wider than what was seen (all off by default).
#[derive(Debug, Default)]
pub struct Widening<'a> {
    /// Three or more names under one parent of two or more labels become `*.parent`.
    pub wildcards: bool,
    /// Two or more addresses in one IPv4 /24 or IPv6 /64 become that prefix.
    pub widen: bool,
    /// Addresses without a name inside one of these tags become the tag.
    pub service_tags: Option<(&'a ServiceTags, String)>,
}

/// Why a rule is proposed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub processes: BTreeSet<String>,
    pub nodes: BTreeSet<String>,
    /// The addresses seen (for a domain rule: those its name resolved to).
    pub addresses: BTreeSet<IpAddr>,
    /// The names seen (for a wildcard: those under it).
    pub names: BTreeSet<String>,
    pub first_ms: u64,
    pub last_ms: u64,
    pub packets: u64,
    /// Observations (events).
    pub seen: u64,
}

impl Evidence {
    fn add(&mut self, seen: &Seen) {
        if self.seen == 0 || seen.at_ms < self.first_ms {
            self.first_ms = seen.at_ms;
        }
        self.last_ms = self.last_ms.max(seen.at_ms);
        self.packets += seen.packets.max(1);
        self.seen += 1;
        self.processes.extend(seen.process.clone());
        self.nodes.extend(seen.node.clone());
        self.addresses.extend(seen.dst);
        self.names.extend(seen.name.clone());
    }

    fn merge(&mut self, other: &Evidence) {
        if self.seen == 0 || other.first_ms < self.first_ms {
            self.first_ms = other.first_ms;
        }
        self.last_ms = self.last_ms.max(other.last_ms);
        self.packets += other.packets;
        self.seen += other.seen;
        self.processes.extend(other.processes.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
        self.addresses.extend(other.addresses.iter().copied());
        self.names.extend(other.names.iter().cloned());
    }

    /// How much the evidence supports the rule.
    pub fn confidence(&self) -> Confidence {
        const HOUR_MS: u64 = 3_600_000;
        if self.nodes.len() >= 2 || (self.seen >= 3 && self.last_ms - self.first_ms >= HOUR_MS) {
            Confidence::High
        } else if self.seen >= 2 {
            Confidence::Medium
        } else {
            Confidence::Low
        }
    }
}

egress_monitor_api::words! {
    /// `high`: seen on two or more nodes, or three or more times over an hour or more;
    /// `medium`: seen more than once; `low`: seen once.
    pub enum Confidence { Low = "low", Medium = "medium", High = "high" }
}

/// What a proposed rule allows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A domain rule: a name, or `*.parent`.
    Domain(Domain),
    Prefix(IpNetwork),
    /// A service tag (the `[service_tags]` table).
    Tag(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggested {
    pub target: Target,
    pub evidence: Evidence,
}

/// The proposal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suggestion {
    pub rules: Vec<Suggested>,
    /// Observations read, and those without a destination (not used).
    pub seen: u64,
    pub skipped: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// The tags file the `[service_tags]` table names, when tags were proposed.
    pub tags_file: Option<String>,
}

/// Builds the proposal from observations.
pub fn suggest<'a>(seen: impl IntoIterator<Item = &'a Seen>, widening: &Widening) -> Suggestion {
    let mut suggestion = Suggestion::default();
    let mut by_name: BTreeMap<String, Evidence> = BTreeMap::new();
    let mut by_address: BTreeMap<IpAddr, Evidence> = BTreeMap::new();
    for item in seen {
        suggestion.seen += 1;
        let Some(dst) = item.dst else {
            suggestion.skipped += 1;
            continue;
        };
        if suggestion.seen == 1 || item.at_ms < suggestion.first_ms {
            suggestion.first_ms = item.at_ms;
        }
        suggestion.last_ms = suggestion.last_ms.max(item.at_ms);
        let name = item
            .name
            .as_deref()
            .and_then(|name| Domain::parse(name).ok())
            .filter(|domain| !domain.subdomains);
        match name {
            Some(domain) => by_name.entry(domain.name).or_default().add(item),
            None => by_address.entry(dst).or_default().add(item),
        }
    }
    // An address some events named belongs to its name's rule.
    let mut unnamed: BTreeMap<IpAddr, Evidence> = BTreeMap::new();
    for (address, evidence) in by_address {
        match by_name
            .values_mut()
            .find(|named| named.addresses.contains(&address))
        {
            Some(named) => named.merge(&evidence),
            None => {
                unnamed.insert(address, evidence);
            }
        }
    }
    let mut rules = domains(by_name, widening.wildcards);
    rules.extend(prefixes(unnamed, widening, &mut suggestion.tags_file));
    rules.sort_by(|a, b| a.target.cmp(&b.target));
    suggestion.rules = rules;
    suggestion
}

/// One rule per name; with `wildcards`, names under a common parent grouped.
fn domains(by_name: BTreeMap<String, Evidence>, wildcards: bool) -> Vec<Suggested> {
    const WILDCARD_MIN_NAMES: usize = 3;
    let mut grouped: BTreeMap<String, Vec<(String, Evidence)>> = BTreeMap::new();
    let mut rules = Vec::new();
    for (name, evidence) in by_name {
        // The parent must keep two labels: never `*.com`.
        let parent = name
            .split_once('.')
            .map(|(_, parent)| parent.to_owned())
            .filter(|parent| wildcards && parent.contains('.'));
        match parent {
            Some(parent) => grouped.entry(parent).or_default().push((name, evidence)),
            None => rules.push(exact(name, evidence)),
        }
    }
    for (parent, names) in grouped {
        if names.len() >= WILDCARD_MIN_NAMES {
            let mut evidence = Evidence::default();
            for (_, one) in &names {
                evidence.merge(one);
            }
            rules.push(Suggested {
                target: Target::Domain(Domain {
                    name: parent,
                    subdomains: true,
                }),
                evidence,
            });
        } else {
            rules.extend(names.into_iter().map(|(name, e)| exact(name, e)));
        }
    }
    rules
}

fn exact(name: String, evidence: Evidence) -> Suggested {
    Suggested {
        target: Target::Domain(Domain {
            name,
            subdomains: false,
        }),
        evidence,
    }
}

/// Addresses without a name: their tag (with a tags file), their /24 or /64 (with `widen`,
/// when two or more share it), else themselves.
fn prefixes(
    unnamed: BTreeMap<IpAddr, Evidence>,
    widening: &Widening,
    tags_file: &mut Option<String>,
) -> Vec<Suggested> {
    let mut by_target: BTreeMap<Target, Evidence> = BTreeMap::new();
    let mut by_wide: BTreeMap<IpNetwork, Vec<(IpAddr, Evidence)>> = BTreeMap::new();
    for (address, evidence) in unnamed {
        if let Some((tags, file)) = &widening.service_tags
            && let Some(tag) = tags.tag_for(address)
        {
            *tags_file = Some(file.clone());
            by_target
                .entry(Target::Tag(tag))
                .or_default()
                .merge(&evidence);
            continue;
        }
        if widening.widen {
            by_wide
                .entry(wide_prefix(address))
                .or_default()
                .push((address, evidence));
        } else {
            by_target
                .entry(Target::Prefix(IpNetwork::from(address)))
                .or_default()
                .merge(&evidence);
        }
    }
    for (prefix, addresses) in by_wide {
        if addresses.len() >= 2 {
            let evidence = by_target.entry(Target::Prefix(prefix)).or_default();
            for (_, one) in &addresses {
                evidence.merge(one);
            }
        } else {
            for (address, one) in addresses {
                by_target
                    .entry(Target::Prefix(IpNetwork::from(address)))
                    .or_default()
                    .merge(&one);
            }
        }
    }
    by_target
        .into_iter()
        .map(|(target, evidence)| Suggested { target, evidence })
        .collect()
}

/// The /24 (IPv4) or /64 (IPv6) holding `address`.
fn wide_prefix(address: IpAddr) -> IpNetwork {
    let prefix = match address {
        IpAddr::V4(_) => 24,
        IpAddr::V6(_) => 64,
    };
    let network = IpNetwork::new(address, prefix).expect("a valid prefix length");
    IpNetwork::new(network.network(), prefix).expect("a valid prefix length")
}

impl Suggestion {
    /// A valid policy file, every rule with its evidence as comments. `source` says where the
    /// observations came from.
    pub fn render(&self, source: &str, mode: Mode) -> String {
        let time = egress_monitor_api::time::rfc3339;
        let mut out = format!(
            "# Suggested by `egress-monitor policy suggest` from {source}: {} observations",
            self.seen
        );
        if self.seen > self.skipped {
            out.push_str(&format!(
                ", {} to {}",
                time(self.first_ms),
                time(self.last_ms)
            ));
        }
        out.push_str(&format!(
            ".\n# {} rules. Each allows no more than what was seen unless asked (--wildcards, \
             --widen, --service-tags).\n# Confidence: high = seen on 2+ nodes, or 3+ times \
             over an hour or more; medium = seen more than once; low = seen once.\n# Review \
             every rule before enforcing: a destination seen is not a destination needed.\n\n\
             mode = \"{mode}\"\n",
            self.rules.len()
        ));
        let mut tags = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let e = &rule.evidence;
            let list = |items: &BTreeSet<String>| -> String {
                if items.is_empty() {
                    "unknown".to_owned()
                } else {
                    let shown: Vec<&str> = items.iter().take(5).map(String::as_str).collect();
                    let more = items.len().saturating_sub(5);
                    shown.join(", ")
                        + &if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        }
                }
            };
            let addresses: BTreeSet<String> = e.addresses.iter().map(ToString::to_string).collect();
            let mut comment = format!(
                "\n# confidence {}: {} packets in {} events, {} to {}; processes: {}; nodes: {}; addresses: {}",
                e.confidence(),
                e.packets,
                e.seen,
                time(e.first_ms),
                time(e.last_ms),
                list(&e.processes),
                if e.nodes.is_empty() {
                    "this node".to_owned()
                } else {
                    format!("{} ({})", e.nodes.len(), list(&e.nodes))
                },
                list(&addresses),
            );
            if matches!(&rule.target, Target::Domain(domain) if domain.subdomains) {
                comment.push_str(&format!("; names: {}", list(&e.names)));
            }
            out.push_str(&comment);
            out.push('\n');
            match &rule.target {
                Target::Domain(domain) => out.push_str(&format!(
                    "[[rule]]\nname = \"learned-{}\"\ndomain = \"{domain}\"\naction = \"allow\"\n",
                    index + 1
                )),
                Target::Prefix(network) => out.push_str(&format!(
                    "[[rule]]\nname = \"learned-{}\"\ncidr = \"{network}\"\naction = \"allow\"\n",
                    index + 1
                )),
                Target::Tag(tag) => {
                    out.push_str(&format!("# service tag {tag}: in [service_tags] below\n"));
                    tags.push(tag.clone());
                }
            }
        }
        if let Some(file) = self.tags_file.as_ref().filter(|_| !tags.is_empty()) {
            out.push_str(&format!(
                "\n[service_tags]\nfile = \"{}\"\ntags = [{}]\n",
                file.replace('\\', "\\\\").replace('"', "\\\""),
                tags.iter()
                    .map(|tag| format!("\"{tag}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::PolicyFile;

    fn seen(dst: &str, name: Option<&str>, process: &str, node: &str, at_ms: u64) -> Seen {
        Seen {
            dst: Some(dst.parse().unwrap()),
            name: name.map(str::to_owned),
            process: Some(process.to_owned()),
            node: Some(node.to_owned()),
            at_ms,
            packets: 2,
        }
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn names_become_domain_rules_and_the_rest_exact_prefixes_with_evidence() {
        let t = 1_796_144_400_000;
        let observed = [
            seen("203.0.113.10", Some("api.example.com"), "curl", "vm-1", t),
            seen(
                "203.0.113.11",
                Some("API.example.com."),
                "curl",
                "vm-2",
                t + HOUR,
            ),
            // The same address, once without its name: still the domain's.
            seen("203.0.113.11", None, "python3", "vm-2", t + 2 * HOUR),
            seen("198.51.100.7", None, "backup", "vm-1", t),
            seen("2001:db8::5", None, "backup", "vm-1", t + 5),
            Seen::default(),
        ];
        let suggestion = suggest(&observed, &Widening::default());
        assert_eq!((suggestion.seen, suggestion.skipped), (6, 1));
        let targets: Vec<String> = suggestion
            .rules
            .iter()
            .map(|rule| match &rule.target {
                Target::Domain(d) => d.to_string(),
                Target::Prefix(p) => p.to_string(),
                Target::Tag(t) => t.clone(),
            })
            .collect();
        assert_eq!(
            targets,
            ["api.example.com", "198.51.100.7/32", "2001:db8::5/128"]
        );
        let api = &suggestion.rules[0].evidence;
        assert_eq!(api.seen, 3);
        assert_eq!(api.packets, 6);
        assert_eq!(api.addresses.len(), 2);
        assert_eq!(
            api.processes.iter().collect::<Vec<_>>(),
            ["curl", "python3"]
        );
        assert_eq!(api.confidence(), Confidence::High);
        assert_eq!(suggestion.rules[1].evidence.confidence(), Confidence::Low);

        // The proposal is a valid policy file, as written.
        let text = suggestion.render("events.jsonl", Mode::Observe);
        let file = PolicyFile::parse(Path::new("suggested.toml"), &text).expect(&text);
        assert_eq!(file.rules.len(), 2);
        assert_eq!(file.domain_rules.len(), 1);
        assert!(
            text.contains("# confidence high: 6 packets in 3 events"),
            "{text}"
        );
        assert!(text.contains("processes: curl, python3"), "{text}");
    }

    #[test]
    fn nothing_is_wider_than_seen_unless_asked() {
        let observed = [
            seen("203.0.113.10", Some("a1.blob.example.net"), "az", "vm-1", 1),
            seen("203.0.113.11", Some("b2.blob.example.net"), "az", "vm-1", 2),
            seen("203.0.113.12", Some("c3.blob.example.net"), "az", "vm-1", 3),
            seen("198.51.100.7", None, "backup", "vm-1", 4),
            seen("198.51.100.9", None, "backup", "vm-1", 5),
            seen("192.0.2.1", None, "backup", "vm-1", 6),
            // One label under a TLD is never a wildcard's parent.
            seen("192.0.2.50", Some("x.com"), "a", "vm-1", 7),
            seen("192.0.2.51", Some("y.com"), "a", "vm-1", 8),
            seen("192.0.2.52", Some("z.com"), "a", "vm-1", 9),
        ];
        let exact = suggest(&observed, &Widening::default());
        assert_eq!(exact.rules.len(), 9);
        let wide = suggest(
            &observed,
            &Widening {
                wildcards: true,
                widen: true,
                service_tags: None,
            },
        );
        let text = wide.render("events.jsonl", Mode::Observe);
        assert!(text.contains("domain = \"*.blob.example.net\""), "{text}");
        assert!(text.contains("cidr = \"198.51.100.0/24\""), "{text}");
        assert!(text.contains("cidr = \"192.0.2.1/32\""), "{text}");
        assert!(!text.contains("*.com"), "{text}");
        assert!(text.contains("domain = \"x.com\""), "{text}");
        PolicyFile::parse(Path::new("suggested.toml"), &text).expect(&text);
    }
}
