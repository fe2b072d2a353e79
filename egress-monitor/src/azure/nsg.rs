//! `egress-monitor nsg-audit`: evaluates an NSG's outbound rules the way Azure does — lowest
//! priority number first, first match wins, the default rules last — and says whether, where
//! and by which rule traffic from the node can reach the internet.
//!
//! Reads `az network nsg show -o json` (rules flattened, or nested under `properties` as in ARM
//! exports) and `az network nic list-effective-nsg -o json` (`value[].effectiveSecurityRules`).
//! The audit is conservative: a rule whose source the audit cannot confirm covers the node is
//! taken to apply when it allows and not to apply when it denies, so an exposure is never
//! hidden.

use std::{collections::BTreeSet, net::IpAddr, path::Path};

use ipnetwork::IpNetwork;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum NsgError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not JSON")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Shape { path: String, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// Anything else (ESP, AH, GRE, ...).
    Other,
}

const PROTOCOLS: [Protocol; 4] = [
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Icmp,
    Protocol::Other,
];

/// One outbound security rule, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub name: String,
    pub priority: u32,
    pub allow: bool,
    /// `None` = any protocol.
    pub protocol: Option<Protocol>,
    /// Inclusive port ranges; empty = any port.
    pub ports: Vec<(u16, u16)>,
    /// Destination prefixes as written: `*`, `Internet`, a service tag, a CIDR.
    pub destinations: Vec<String>,
    /// Source prefixes as written.
    pub sources: Vec<String>,
    pub default: bool,
}

/// Azure's default outbound rules, used when the document does not list them.
fn default_rules() -> Vec<Rule> {
    let rule = |name: &str, priority, allow, destination: &str| Rule {
        name: name.to_owned(),
        priority,
        allow,
        protocol: None,
        ports: Vec::new(),
        destinations: vec![destination.to_owned()],
        sources: vec!["*".to_owned()],
        default: true,
    };
    vec![
        rule("AllowVnetOutBound", 65000, true, "VirtualNetwork"),
        rule("AllowInternetOutBound", 65001, true, "Internet"),
        rule("DenyAllOutBound", 65500, false, "*"),
    ]
}

/// Reads the outbound rules of an NSG document (either export), defaults included.
pub fn load(path: &Path) -> Result<Vec<Rule>, NsgError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| NsgError::Read {
        path: name.clone(),
        source,
    })?;
    let document: Value = serde_json::from_str(&text).map_err(|source| NsgError::Json {
        path: name.clone(),
        source,
    })?;
    parse(&document).map_err(|message| NsgError::Shape {
        path: name,
        message,
    })
}

pub fn parse(document: &Value) -> Result<Vec<Rule>, String> {
    let mut raw = Vec::new();
    let mut explicit_defaults = false;
    if let Some(effective) = document.get("value").and_then(Value::as_array) {
        for group in effective {
            for rule in group["effectiveSecurityRules"]
                .as_array()
                .into_iter()
                .flatten()
            {
                raw.push((
                    rule,
                    rule["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("defaultSecurityRules/")),
                ));
            }
        }
        explicit_defaults = true;
    } else {
        let document = document.get("properties").unwrap_or(document);
        for (key, default) in [("securityRules", false), ("defaultSecurityRules", true)] {
            if let Some(rules) = document.get(key) {
                let rules = rules
                    .as_array()
                    .ok_or_else(|| format!("`{key}` is not a list"))?;
                explicit_defaults |= default && !rules.is_empty();
                raw.extend(rules.iter().map(|rule| (rule, default)));
            }
        }
        if raw.is_empty() && document.get("securityRules").is_none() {
            return Err(
                "neither `securityRules` nor `value[].effectiveSecurityRules`: not an NSG export"
                    .into(),
            );
        }
    }
    let mut rules = Vec::new();
    for (rule, default) in raw {
        let fields = rule.get("properties").unwrap_or(rule);
        let name = rule["name"]
            .as_str()
            .unwrap_or("?")
            .trim_start_matches("defaultSecurityRules/")
            .trim_start_matches("securityRules/")
            .to_owned();
        let direction = fields["direction"].as_str().unwrap_or("");
        if !direction.eq_ignore_ascii_case("outbound") {
            continue;
        }
        let priority = fields["priority"]
            .as_u64()
            .ok_or_else(|| format!("rule `{name}` has no numeric priority"))?
            as u32;
        let access = fields["access"].as_str().unwrap_or("");
        let allow = match access.to_ascii_lowercase().as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(format!(
                    "rule `{name}`: access `{other}` is neither Allow nor Deny"
                ));
            }
        };
        let protocol = match fields["protocol"]
            .as_str()
            .unwrap_or("*")
            .to_ascii_lowercase()
            .as_str()
        {
            "*" | "all" => None,
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "icmp" => Some(Protocol::Icmp),
            _ => Some(Protocol::Other),
        };
        let ports = strings(fields, "destinationPortRange", "destinationPortRanges")
            .iter()
            .map(|range| {
                port_range(range).ok_or_else(|| format!("rule `{name}`: bad port range `{range}`"))
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        let mut destinations = strings(
            fields,
            "destinationAddressPrefix",
            "destinationAddressPrefixes",
        );
        // Effective rules spell out what a tag expanded to; the tag name stays the better key.
        if destinations.is_empty() {
            destinations = strings(fields, "", "expandedDestinationAddressPrefix");
        }
        rules.push(Rule {
            name,
            priority,
            allow,
            protocol,
            ports,
            destinations,
            sources: strings(fields, "sourceAddressPrefix", "sourceAddressPrefixes"),
            default,
        });
    }
    if !explicit_defaults {
        rules.extend(default_rules());
    }
    rules.sort_by_key(|rule| rule.priority);
    Ok(rules)
}

fn strings(fields: &Value, single: &str, many: &str) -> Vec<String> {
    let mut out: Vec<String> = fields[many]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if let Some(one) = fields.get(single).and_then(Value::as_str)
        && !one.is_empty()
    {
        out.push(one.to_owned());
    }
    out
}

/// `*` → any (None); `443`; `1000-2000`.
fn port_range(text: &str) -> Option<Option<(u16, u16)>> {
    let text = text.trim();
    if text == "*" || text == "0-65535" {
        return Some(None);
    }
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
            (low <= high).then_some(Some((low, high)))
        }
        None => text.parse().ok().map(|port| Some((port, port))),
    }
}

/// Where a packet goes, as far as NSG rules can tell.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Destination {
    /// Any internet address in no service tag and no listed prefix.
    Internet,
    /// The public addresses of a service tag (`Storage`, `Storage.WestEurope`, ...).
    Tag(String),
    /// A public prefix an allow rule names.
    Prefix(String),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Internet => f.write_str("the internet"),
            Destination::Tag(tag) => write!(f, "service tag {tag}"),
            Destination::Prefix(prefix) => write!(f, "{prefix}"),
        }
    }
}

/// Tags and keywords that are not internet destinations.
const NOT_INTERNET: [&str; 3] = ["virtualnetwork", "azureloadbalancer", "gatewaymanager"];

fn is_any(prefix: &str) -> bool {
    matches!(prefix, "*" | "0.0.0.0/0" | "::/0") || prefix.eq_ignore_ascii_case("internet")
}

fn public_cidr(prefix: &str) -> Option<IpNetwork> {
    let network: IpNetwork = prefix.parse().ok()?;
    let private = [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    ];
    let inside = |outer: &str| {
        let outer: IpNetwork = outer.parse().expect("valid");
        outer.prefix() <= network.prefix() && outer.contains(network.network())
    };
    (!private.iter().any(|p| inside(p))).then_some(network)
}

fn covers(rule_prefix: &str, destination: &Destination) -> bool {
    if is_any(rule_prefix) {
        return true;
    }
    match destination {
        Destination::Internet => false,
        Destination::Tag(tag) => {
            // A regional tag (`Storage.WestEurope`) is inside its parent (`Storage`).
            rule_prefix.eq_ignore_ascii_case(tag)
                || tag
                    .to_ascii_lowercase()
                    .starts_with(&format!("{}.", rule_prefix.to_ascii_lowercase()))
        }
        Destination::Prefix(prefix) => {
            match (
                rule_prefix.parse::<IpNetwork>(),
                prefix.parse::<IpNetwork>(),
            ) {
                (Ok(outer), Ok(inner)) => {
                    outer.prefix() <= inner.prefix() && outer.contains(inner.network())
                }
                _ => false,
            }
        }
    }
}

/// Whether the rule's source covers the node. Unknown sources count as covering for allow
/// rules and as not covering for deny rules (see the module doc).
fn source_applies(rule: &Rule, node: Option<IpAddr>) -> bool {
    if rule.sources.is_empty() {
        return true;
    }
    rule.sources.iter().any(|source| {
        if is_any(source) || source.eq_ignore_ascii_case("virtualnetwork") {
            return true;
        }
        match (source.parse::<IpNetwork>(), node) {
            (Ok(network), Some(node)) => network.contains(node),
            _ => rule.allow,
        }
    })
}

/// One stretch of reachable internet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exposure {
    pub destination: Destination,
    pub protocol: Protocol,
    /// Inclusive; ICMP and other protocols have no ports and report 0–65535.
    pub ports: (u16, u16),
    pub rule: String,
    pub priority: u32,
    /// The rule is one of Azure's defaults (`AllowInternetOutBound`).
    pub default_rule: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Audit {
    pub outbound_rules: usize,
    pub exposures: Vec<Exposure>,
    /// Exposures the operator said are intended (`--accept`): reported, not failing.
    pub accepted: Vec<Exposure>,
}

impl Audit {
    pub fn isolated(&self) -> bool {
        self.exposures.is_empty()
    }

    /// Moves the exposures to what `accepted` names (service tags, a regional tag inside an
    /// accepted one, or public prefixes inside an accepted prefix) aside: the design that
    /// reaches one service on purpose still gates a pipeline on everything else.
    pub fn accept(mut self, accepted: &[Acceptance]) -> Audit {
        let (intended, rest): (Vec<Exposure>, Vec<Exposure>) =
            self.exposures.into_iter().partition(|exposure| {
                accepted
                    .iter()
                    .any(|acceptance| covers(&acceptance.0, &exposure.destination))
            });
        self.exposures = rest;
        self.accepted = intended;
        self
    }
}

/// An exposure the operator accepts (`--accept`): a service tag or a public prefix, never the
/// internet as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acceptance(String);

impl std::str::FromStr for Acceptance {
    type Err = String;
    fn from_str(text: &str) -> Result<Acceptance, String> {
        if is_any(text) {
            return Err(format!(
                "`{text}` is the whole internet: accept a service tag or a public prefix"
            ));
        }
        if text.parse::<IpNetwork>().is_ok() {
            return match public_cidr(text) {
                Some(_) if text.contains('/') => Ok(Acceptance(text.to_owned())),
                Some(_) => Err(format!("write `{text}` as a prefix, e.g. {text}/32")),
                None => Err(format!(
                    "`{text}` is private: nsg-audit reports internet destinations only"
                )),
            };
        }
        let tag_like = !text.is_empty()
            && text.len() <= 128
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-');
        if !tag_like || NOT_INTERNET.contains(&text.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{text}` is neither a service tag (Storage, Storage.WestEurope) nor a public prefix"
            ));
        }
        if text.eq_ignore_ascii_case("azurecloud")
            || text.to_ascii_lowercase().starts_with("azurecloud.")
        {
            return Err(format!(
                "`{text}` covers every Azure tenant's public addresses: accepting it accepts \
                 no isolation"
            ));
        }
        Ok(Acceptance(text.to_owned()))
    }
}

/// Evaluates the rules for the generic internet and for every tag or public prefix some allow
/// rule names, per protocol, over every port range where the winning rule changes.
pub fn audit(rules: &[Rule], node: Option<IpAddr>) -> Audit {
    let mut destinations: BTreeSet<Destination> = BTreeSet::from([Destination::Internet]);
    for rule in rules.iter().filter(|r| r.allow) {
        for prefix in &rule.destinations {
            if is_any(prefix) || NOT_INTERNET.contains(&prefix.to_ascii_lowercase().as_str()) {
                continue;
            }
            if prefix.parse::<IpNetwork>().is_ok() {
                if public_cidr(prefix).is_some() {
                    destinations.insert(Destination::Prefix(prefix.clone()));
                }
            } else {
                destinations.insert(Destination::Tag(prefix.clone()));
            }
        }
    }
    // Port boundaries: every place where some rule's port set starts or stops.
    let mut cuts: BTreeSet<u32> = BTreeSet::from([0, 65536]);
    for rule in rules {
        for (low, high) in &rule.ports {
            cuts.insert(u32::from(*low));
            cuts.insert(u32::from(*high) + 1);
        }
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    let mut exposures = Vec::new();
    for destination in &destinations {
        for protocol in PROTOCOLS {
            let ported = matches!(protocol, Protocol::Tcp | Protocol::Udp);
            let segments: Vec<(u32, u32)> = if ported {
                cuts.windows(2).map(|w| (w[0], w[1] - 1)).collect()
            } else {
                vec![(0, 65535)]
            };
            for (low, high) in segments {
                let winner = rules.iter().find(|rule| {
                    rule.protocol.is_none_or(|p| p == protocol)
                        && (!ported
                            || rule.ports.is_empty()
                            || rule
                                .ports
                                .iter()
                                .any(|(a, b)| u32::from(*a) <= low && high <= u32::from(*b)))
                        && rule.destinations.iter().any(|d| covers(d, destination))
                        && source_applies(rule, node)
                });
                let Some(rule) = winner.filter(|rule| rule.allow) else {
                    continue;
                };
                let ports = (low as u16, high as u16);
                match exposures.last_mut() {
                    Some(Exposure {
                        destination: d,
                        protocol: p,
                        ports: (_, end),
                        rule: name,
                        ..
                    }) if d == destination
                        && *p == protocol
                        && *name == rule.name
                        && u32::from(*end) + 1 == low =>
                    {
                        *end = high as u16;
                    }
                    _ => exposures.push(Exposure {
                        destination: destination.clone(),
                        protocol,
                        ports,
                        rule: rule.name.clone(),
                        priority: rule.priority,
                        default_rule: rule.default,
                    }),
                }
            }
        }
    }
    Audit {
        outbound_rules: rules.len(),
        exposures,
        accepted: Vec::new(),
    }
}

pub fn render(audit: &Audit) -> String {
    let mut out = if audit.isolated() && audit.accepted.is_empty() {
        return format!(
            "isolated: no outbound rule of {} lets traffic reach the internet\n",
            audit.outbound_rules
        );
    } else if audit.isolated() {
        String::from("isolated but for what was accepted:\n")
    } else {
        String::from("NOT ISOLATED: the internet is reachable\n")
    };
    for e in &audit.exposures {
        out.push_str(&exposure_line(e));
    }
    if !audit.isolated() && !audit.accepted.is_empty() {
        out.push_str("accepted (--accept):\n");
    }
    for e in &audit.accepted {
        out.push_str(&exposure_line(e));
    }
    out
}

fn exposure_line(e: &Exposure) -> String {
    let ports = match e.protocol {
        Protocol::Tcp | Protocol::Udp if e.ports == (0, 65535) => " all ports".to_owned(),
        Protocol::Tcp | Protocol::Udp if e.ports.0 == e.ports.1 => format!(" port {}", e.ports.0),
        Protocol::Tcp | Protocol::Udp => format!(" ports {}-{}", e.ports.0, e.ports.1),
        _ => String::new(),
    };
    format!(
        "  {} {:?}{ports}: allowed by {} (priority {}){}\n",
        e.destination,
        e.protocol,
        e.rule,
        e.priority,
        if e.default_rule {
            ", an Azure default rule: add a Deny rule for destination Internet with a lower priority number"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests;
