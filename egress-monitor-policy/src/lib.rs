//! The policy: which destinations a node may reach.
//!
//! A policy is built from three sources, in this order: the default groups (on unless switched
//! off), the policy file's `[[rule]]` entries, and `--allow`/`--deny` on the command line. The
//! datapath matches the longest prefix, so a narrow `deny` inside a broad `allow` wins; a
//! destination that matches nothing is denied.
//!
//! Validation never falls back: a policy with any error is refused whole, with every error's
//! place (`file:line:column` or the command-line flag) and what was expected.

//!
//! This crate is pure: it parses and checks text it is given. The one step that reads files (a
//! policy file, the service tags file it names) is [`PolicyFile::load`], in `read.rs`. The node
//! and the fleet controller both use it, so a policy means the same on both.

pub mod domain;
pub mod failsafe;
mod file;
pub mod groups;
pub mod quote;
mod read;
pub mod replay;
pub mod service_tags;
pub mod suggest;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub use egress_monitor_api::Mode;

pub use self::{
    domain::{Domain, DomainRule},
    file::{MAX_FILE_BYTES, PolicyFile, ServiceTagsRequest},
    quote::{clip, quote},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Where a rule came from, for `policy show` and for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Group(&'static str),
    /// An Azure service tag named in the policy file's `[service_tags]`.
    ServiceTag(String),
    /// The node's VNet, from the instance metadata service (`run --azure`).
    Imds(String),
    File {
        path: PathBuf,
        line: usize,
    },
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Group(name) => write!(f, "group {name}"),
            Origin::ServiceTag(name) => write!(f, "service tag {name}"),
            Origin::Imds(source) => write!(f, "imds {source}"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::CommandLine => f.write_str("command line"),
        }
    }
}

/// `[dns]`: whose DNS answers may teach addresses to domain rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsTrust {
    /// The resolvers whose answers teach. `None`: the node's own (see
    /// `egress_monitor::system::resolvers::node_resolvers`): the nameservers of /etc/resolv.conf,
    /// systemd-resolved's upstream servers, Azure's 168.63.129.16 and the stub 127.0.0.53.
    pub resolvers: Option<Vec<std::net::IpAddr>>,
    /// Network namespaces besides the daemon's whose sockets answers may teach: names under
    /// /run/netns, or paths to a namespace file (a cluster DNS in a container, say).
    pub network_namespaces: Vec<String>,
    /// Answers teach sockets of every network namespace (an explicit opt-in: any process that
    /// can make a namespace and run a resolver in it can then teach).
    pub any_network_namespace: bool,
}

/// `[raw_sockets]`: cgroups exempt from the raw-socket guards (their processes may set
/// `PACKET_QDISC_BYPASS` and make AF_XDP TX rings, whose frames no hook sees).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawSockets {
    /// cgroup v2 directories (absolute paths); the exemption is exact, not inherited.
    pub allow_cgroups: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub network: IpNetwork,
    pub action: Action,
    pub origin: Origin,
    /// When the rule stops applying (milliseconds since the epoch): the kernel then judges its
    /// prefix as the next shorter rule does, without a reload. `None`: it never expires.
    pub expires: Option<u64>,
}

/// One thing wrong with a policy, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// `path:line:column`, or the command-line flag and value.
    pub place: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read the policy file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Refused unparsed: `size` is what its metadata says, or (when that is less) what a
    /// bounded read found, the limit plus one.
    #[error(
        "{}: the policy file holds at least {size} bytes, more than the limit of {limit} bytes",
        path.display(),
        limit = MAX_FILE_BYTES
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a policy comes from, kept so that a reload (SIGHUP) builds it again the same way.
#[derive(Clone, Debug, Default)]
pub struct PolicySource {
    pub file: Option<PathBuf>,
    pub command_line: CommandLineRules,
    /// `--mode`, overriding the file's.
    pub mode: Option<Mode>,
    /// `--break-platform-access`: let enforce mode deny essentials (see [`failsafe`]).
    pub accept_risk: bool,
    /// Allow rules found at run time (the VNet from IMDS); they rank like the default groups.
    pub discovered: Vec<Rule>,
    /// Who set `mode`, when not the command line (`fleet mode`): said in the built policy's
    /// [`Policy::mode_source`].
    pub mode_label: Option<String>,
    /// What the file is, when not the operator's own (`fleet policy v7`).
    pub file_label: Option<String>,
}

impl PolicySource {
    /// Reads, validates and builds the policy, failsafe included.
    pub fn build(&self) -> Result<Policy, PolicyError> {
        let file = self.file.as_deref().map(PolicyFile::load).transpose()?;
        let mut policy = Policy::build(file.as_ref(), &self.command_line, self.mode)?;
        policy.mode_source = if self.mode.is_some() {
            self.mode_label
                .clone()
                .unwrap_or_else(|| "--mode".to_owned())
        } else if file.as_ref().is_some_and(|file| file.mode.is_some()) {
            match (&self.file_label, &self.file) {
                (Some(label), _) => format!("the mode of {label}"),
                (None, Some(path)) => format!("the mode of the policy file {}", path.display()),
                (None, None) => "the policy file's mode".to_owned(),
            }
        } else {
            "the default (observe)".to_owned()
        };
        // Discovered prefixes fill in where the policy says nothing about the same prefix.
        for rule in &self.discovered {
            if !policy.rules.iter().any(|r| r.network == rule.network) {
                policy.rules.push(rule.clone());
            }
        }
        failsafe::check(&policy, self.accept_risk)?;
        Ok(policy)
    }
}

/// How a fleet policy is named in its errors.
pub const FLEET_POLICY_NAME: &str = "fleet-policy";

/// Validates a fleet policy (text the controller hands to every node), as a node builds it
/// from a file with no command-line rules: parsed, built in `mode` (else the text's own
/// mode) and checked by the failsafe. The controller checks it before any node sees it, and
/// each node again before applying it. It reads nothing, so it means the same on both: a
/// `[service_tags]` file, which would be read from whichever machine validates, is refused.
pub fn validate_fleet_policy(text: &str, mode: Option<Mode>) -> Result<Policy, PolicyError> {
    let file = fleet_policy_file(text)?;
    let policy = Policy::build(Some(&file), &CommandLineRules::default(), mode)?;
    failsafe::check(&policy, false)?;
    Ok(policy)
}

/// A fleet policy's text parsed as its file, reading nothing: a `[service_tags]` file, which
/// would be read from whichever machine reads it, is refused. Nodes check what the controller
/// hands them with it before building it as their policy.
pub fn fleet_policy_file(text: &str) -> Result<PolicyFile, PolicyError> {
    let file = PolicyFile::parse(Path::new(FLEET_POLICY_NAME), text)?;
    if let Some(request) = &file.service_tags {
        return Err(PolicyError::Invalid(vec![Diagnostic {
            place: request.place.clone(),
            message: "a fleet policy cannot name a service tags file: the controller and \
                      every node would each read their own; put the tags' prefixes in the \
                      policy instead (`egress-monitor policy service-tags FILE --tag NAME` \
                      prints them as rules)"
                .to_owned(),
        }]));
    }
    Ok(file)
}

/// `--allow`/`--deny` from the command line, in the order given.
#[derive(Clone, Debug, Default)]
pub struct CommandLineRules {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// The effective policy: the mode and every rule the datapath holds. A rule's id is its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub rules: Vec<Rule>,
    /// Domain rules (from the policy file).
    pub domains: Vec<DomainRule>,
    /// Which groups are on, in [`groups::ALL`] order.
    pub groups: Vec<(&'static str, bool)>,
    /// The policy file asks for the node's VNet from IMDS (`azure = true`).
    pub azure: bool,
    pub dns: DnsTrust,
    pub raw_sockets: RawSockets,
    /// Where `mode` came from, in words: the fleet's mode, `--mode`, the policy file's mode, or
    /// the default (see [`PolicySource::build`]; the precedence is in docs/operations.md).
    pub mode_source: String,
}

impl Policy {
    /// Builds the effective policy. `mode` (from `--mode`) overrides the file's `mode`; with
    /// neither, the mode is observe.
    pub fn build(
        file: Option<&PolicyFile>,
        command_line: &CommandLineRules,
        mode: Option<Mode>,
    ) -> Result<Policy, PolicyError> {
        let mut diagnostics = Vec::new();
        let groups: Vec<(&'static str, bool)> = groups::ALL
            .iter()
            .map(|group| {
                let on = file
                    .and_then(|file| file.group_switch(group.name))
                    .unwrap_or(group.enabled_by_default);
                (group.name, on)
            })
            .collect();
        let mut rules = RuleSet::default();
        for (group, _) in groups::ALL.iter().zip(&groups).filter(|(_, (_, on))| *on) {
            for network in group.networks() {
                rules.put(Rule {
                    name: group.name.to_owned(),
                    network,
                    action: Action::Allow,
                    origin: Origin::Group(group.name),
                    expires: None,
                });
            }
        }

        // Service tags rank like groups: an explicit rule for the same prefix replaces them.
        for rule in file.iter().flat_map(|file| &file.service_tag_rules) {
            rules.put(rule.clone());
        }

        // The file's rules: each prefix at most once; a rule replaces a group member with the
        // same prefix (the operator said so explicitly).
        if let Some(file) = file {
            for rule in &file.rules {
                if let Some(earlier) = rules
                    .get(rule.network)
                    .filter(|r| matches!(r.origin, Origin::File { .. }))
                {
                    diagnostics.push(Diagnostic {
                        place: rule.origin.to_string(),
                        message: format!(
                            "{} is already given by rule {} at {}; each prefix may appear once",
                            rule.network,
                            quote(&earlier.name),
                            earlier.origin
                        ),
                    });
                    continue;
                }
                rules.put(rule.clone());
            }
        }

        // The command line's rules, which replace any earlier rule for the same prefix.
        let flags = command_line
            .allow
            .iter()
            .map(|cidr| (Action::Allow, cidr))
            .chain(command_line.deny.iter().map(|cidr| (Action::Deny, cidr)));
        let mut from_command_line = RuleSet::default();
        for (action, cidr) in flags {
            let place = format!("--{} {}", action.as_str(), quote(cidr));
            let network = match parse_cidr(cidr) {
                Ok(network) => network,
                Err(message) => {
                    diagnostics.push(Diagnostic { place, message });
                    continue;
                }
            };
            if action == Action::Allow
                && let Some(message) = too_wide(&network)
            {
                diagnostics.push(Diagnostic {
                    place,
                    message: message.replace(
                        "add `wide = true` to the rule",
                        "put it in a policy file with `wide = true`",
                    ),
                });
                continue;
            }
            if let Some(earlier) = from_command_line.get(network) {
                diagnostics.push(Diagnostic {
                    place,
                    message: format!(
                        "{network} is already given by --{} on the command line",
                        earlier.action.as_str()
                    ),
                });
                continue;
            }
            from_command_line.put(Rule {
                name: format!("cli-{}", action.as_str()),
                network,
                action,
                origin: Origin::CommandLine,
                expires: None,
            });
        }
        for rule in from_command_line.rules {
            rules.put(rule);
        }
        let rules = rules.rules;

        if !diagnostics.is_empty() {
            return Err(PolicyError::Invalid(diagnostics));
        }
        let mode_source = if mode.is_some() {
            "--mode"
        } else if file.is_some_and(|file| file.mode.is_some()) {
            "the policy file's mode"
        } else {
            "the default (observe)"
        }
        .to_owned();
        let mode = mode
            .or_else(|| file.and_then(|file| file.mode))
            .unwrap_or(Mode::Observe);
        let mut domains: Vec<DomainRule> = file
            .map(|file| file.domain_rules.clone())
            .unwrap_or_default();
        if !domains.is_empty() {
            // The groups' names rank below the file's: a file rule for the same pattern wins.
            for (group, _) in groups::ALL.iter().zip(&groups).filter(|(_, (_, on))| *on) {
                for pattern in group.domains {
                    let domain = Domain::parse(pattern).unwrap_or_else(|err| {
                        panic!("built-in group domain {pattern} is invalid: {err}")
                    });
                    if !domains.iter().any(|rule| rule.domain == domain) {
                        domains.push(DomainRule {
                            name: group.name.to_owned(),
                            domain,
                            action: Action::Allow,
                            origin: Origin::Group(group.name),
                        });
                    }
                }
            }
        }
        Ok(Policy {
            mode,
            rules,
            domains,
            groups,
            azure: file.is_some_and(|file| file.azure),
            dns: file.map(|file| file.dns.clone()).unwrap_or_default(),
            raw_sockets: file
                .map(|file| file.raw_sockets.clone())
                .unwrap_or_default(),
            mode_source,
        })
    }

    /// The policy's version: a content hash of its rules (prefix, action, name), independent of
    /// their order and of the mode. Shown as 16 hex digits; the config map holds it as a u64.
    pub fn version(&self) -> u64 {
        use sha2::{Digest as _, Sha256};
        let mut lines: Vec<String> = self
            .rules
            .iter()
            .map(|rule| {
                // A rule without an end keeps the line (and so the version) it always had.
                let ends = rule
                    .expires
                    .map(|ms| format!(" expires {ms}"))
                    .unwrap_or_default();
                format!(
                    "{} {} {}{ends}",
                    rule.network,
                    rule.action.as_str(),
                    rule.name
                )
            })
            .chain(self.domains.iter().map(|rule| {
                format!(
                    "domain {} {} {}",
                    rule.domain,
                    rule.action.as_str(),
                    rule.name
                )
            }))
            .chain(self.trust_lines())
            .collect();
        lines.sort();
        let digest = Sha256::digest(lines.join("\n").as_bytes());
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    /// The `[dns]` and `[raw_sockets]` settings as version lines (none when left at their
    /// defaults, so a policy without them keeps the version it had).
    fn trust_lines(&self) -> impl Iterator<Item = String> + '_ {
        let dns = &self.dns;
        dns.resolvers
            .iter()
            .flatten()
            .map(|resolver| format!("dns resolver {resolver}"))
            .chain(
                dns.network_namespaces
                    .iter()
                    .map(|netns| format!("dns network-namespace {netns}")),
            )
            .chain(
                dns.any_network_namespace
                    .then(|| "dns any-network-namespace".to_owned()),
            )
            .chain(
                self.raw_sockets
                    .allow_cgroups
                    .iter()
                    .map(|cgroup| format!("raw-sockets allow-cgroup {}", cgroup.display())),
            )
    }

    /// What the datapath decides for `address`: the longest matching prefix, or `None` (the
    /// default deny). The same semantics as the kernel's LPM lookup.
    pub fn verdict(&self, address: std::net::IpAddr) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|rule| rule.network.contains(address))
            .max_by_key(|rule| rule.network.prefix())
    }

    /// The rules as `policy show` prints them: one per line, aligned.
    pub fn render(&self) -> String {
        let mut out = format!("mode {}\n", self.mode);
        for (name, on) in &self.groups {
            out.push_str(&format!(
                "group {name} {}\n",
                if *on { "on" } else { "off" }
            ));
        }
        let width = self
            .rules
            .iter()
            .map(|rule| rule.network.to_string().len())
            .chain(
                self.domains
                    .iter()
                    .map(|rule| rule.domain.to_string().len()),
            )
            .max()
            .unwrap_or(0);
        for rule in &self.rules {
            let ends = rule
                .expires
                .map(|ms| format!("; until {}", egress_monitor_api::time::rfc3339(ms)))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:<5} {:<width$}  {:<16} ({}{ends})\n",
                rule.action.as_str(),
                rule.network.to_string(),
                rule.name,
                rule.origin,
            ));
        }
        for rule in &self.domains {
            out.push_str(&format!(
                "{:<5} {:<width$}  {:<16} ({}; the addresses its DNS answers name)\n",
                rule.action.as_str(),
                rule.domain.to_string(),
                rule.name,
                rule.origin,
            ));
        }
        out.push_str(&format!(
            "deny  {:<width$}  {:<16} (everything else)\n",
            "*", "default"
        ));
        out
    }
}

/// Rules by prefix, in the order first given: a later rule for the same prefix takes the
/// earlier one's place. Indexed, so policies of 100,000 rules build in linear time.
#[derive(Default)]
struct RuleSet {
    rules: Vec<Rule>,
    index: std::collections::HashMap<IpNetwork, usize>,
}

impl RuleSet {
    fn get(&self, network: IpNetwork) -> Option<&Rule> {
        self.index.get(&network).map(|&i| &self.rules[i])
    }

    fn put(&mut self, rule: Rule) {
        match self.index.get(&rule.network) {
            Some(&i) => self.rules[i] = rule,
            None => {
                self.index.insert(rule.network, self.rules.len());
                self.rules.push(rule);
            }
        }
    }
}

/// Parses a CIDR (or a bare address, meaning /32 or /128) strictly: host bits must be zero and
/// IPv4-mapped IPv6 prefixes are refused, because sockets send those as IPv4.
/// The widest allow rule over public space taken without `wide = true`: IPv4 /8 (16.7 million
/// addresses), IPv6 /16 of the global unicast space (2000::/3).
pub const WIDEST_ALLOW_V4: u8 = 8;
pub const WIDEST_ALLOW_V6: u8 = 16;

/// Why an allow rule for `network` opens too much of the internet to take without asking:
/// wider than [`WIDEST_ALLOW_V4`] (every such IPv4 prefix holds public addresses) or an IPv6
/// prefix wider than [`WIDEST_ALLOW_V6`] that reaches into the global unicast space. None when
/// it is narrow enough.
pub fn too_wide(network: &IpNetwork) -> Option<String> {
    let wide = match network {
        IpNetwork::V4(v4) => v4.prefix() < WIDEST_ALLOW_V4,
        IpNetwork::V6(v6) => {
            let global: ipnetwork::Ipv6Network = "2000::/3".parse().expect("a valid prefix");
            v6.prefix() < WIDEST_ALLOW_V6 && (v6.overlaps(global))
        }
    };
    wide.then(|| {
        format!(
            "allowing {network} opens most of the internet (wider than /{WIDEST_ALLOW_V4} for IPv4, /{WIDEST_ALLOW_V6} for public IPv6): it voids the isolation; add `wide = true` to the rule to do it anyway"
        )
    })
}

pub fn parse_cidr(text: &str) -> Result<IpNetwork, String> {
    let network = text.trim().parse::<IpNetwork>().map_err(|err| {
        format!(
            "{} is not a CIDR such as 10.0.0.0/8 or fd00::/8 ({})",
            quote(text),
            clip(&err.to_string())
        )
    })?;
    if network.network() != network.ip() {
        let canonical = IpNetwork::new(network.network(), network.prefix())
            .map_or_else(|_| network.network().to_string(), |n| n.to_string());
        return Err(format!(
            "{} has host bits set; did you mean {canonical}?",
            quote(text)
        ));
    }
    if let IpNetwork::V6(v6) = network {
        let mapped: ipnetwork::Ipv6Network = "::ffff:0:0/96".parse().expect("valid");
        if v6.prefix() >= 96 && mapped.contains(v6.network()) {
            return Err(format!(
                "{} is an IPv4-mapped IPv6 prefix; packets to it leave as IPv4, so write the \
                 IPv4 form",
                quote(text)
            ));
        }
    }
    Ok(network)
}

#[cfg(test)]
mod tests;
