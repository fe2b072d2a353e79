//! The policy file (TOML), parsed strictly: unknown keys, wrong types, bad CIDRs and unknown
//! groups are errors with `path:line:column`, never warnings.
//!
//! ```toml
//! mode = "enforce"            # or "observe"; --mode overrides it
//!
//! [groups]                    # default groups on/off; see `egress-monitor policy show`
//! cgnat = true
//!
//! [[rule]]
//! name = "update-mirror"
//! cidr = "203.0.113.0/24"
//! action = "allow"
//!
//! [[rule]]                    # a domain rule: what its DNS answers name is allowed
//! name = "storage"
//! domain = "*.blob.core.windows.net"
//! action = "allow"
//!
//! [dns]                       # whose answers teach domain rules (default: the node's own
//! resolvers = ["10.0.0.4"]    # resolvers, in the daemon's network namespace)
//! network_namespaces = []     # more namespaces, by name under /run/netns or path
//!
//! [raw_sockets]               # cgroups exempt from the raw-socket guards
//! allow_cgroups = ["/sys/fs/cgroup/system.slice/xdp-app.service"]
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Action, Diagnostic, DnsTrust, Mode, Origin, PolicyError, RawSockets, Rule, clip,
    domain::{Domain, DomainRule},
    groups, parse_cidr, quote,
    service_tags::{ServiceTags, TagError},
};

/// The largest policy file read, refused before parsing: a file of 100,000 rules (the most the
/// datapath is measured with) is 7.4 MB with short names and 11 MB with 40-character ones, so
/// 64 MiB leaves room for long names and comments several times over, while a runaway file (a
/// log written to the wrong path, /dev/zero) is refused before it costs the node its memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A parsed, validated policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFile {
    pub path: PathBuf,
    pub mode: Option<Mode>,
    /// `azure = true`: allow the node's VNet as IMDS reports it.
    pub azure: bool,
    /// Group switches the file sets explicitly.
    pub groups: Vec<(&'static str, bool)>,
    pub rules: Vec<Rule>,
    pub domain_rules: Vec<DomainRule>,
    /// `[service_tags]`, as written: resolved into [`PolicyFile::service_tag_rules`] by
    /// [`PolicyFile::load`], the one step that reads the tags file.
    pub service_tags: Option<ServiceTagsRequest>,
    /// Allow rules from `[service_tags]`; they rank like the default groups (an explicit rule
    /// for the same prefix replaces them). Empty until resolved.
    pub service_tag_rules: Vec<Rule>,
    pub dns: DnsTrust,
    pub raw_sockets: RawSockets,
}

/// `[service_tags]` of a policy file: which tags to allow from which tags file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTagsRequest {
    /// As written: relative to the policy file's directory, or absolute.
    pub file: PathBuf,
    pub tags: Vec<String>,
    pub allow_azure_cloud: bool,
    /// `path:line:column` of the table, for errors found when the tags file is read.
    pub place: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    mode: Option<Mode>,
    /// Allow the node's VNet from the Azure instance metadata service (as `run --azure`).
    #[serde(default)]
    azure: bool,
    service_tags: Option<Spanned<RawServiceTags>>,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<bool>>,
    #[serde(default)]
    rule: Vec<RawRule>,
    dns: Option<Spanned<RawDns>>,
    raw_sockets: Option<Spanned<RawRawSockets>>,
}

/// `[dns]`: whose answers teach (see [`DnsTrust`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    resolvers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    network_namespaces: Vec<Spanned<String>>,
    #[serde(default)]
    any_network_namespace: bool,
}

/// `[raw_sockets]`: cgroups exempt from the raw-socket guards (see [`RawSockets`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRawSockets {
    #[serde(default)]
    allow_cgroups: Vec<Spanned<String>>,
}

/// `[service_tags]`: allow Azure service tags from a tags file (a path relative to the policy
/// file's directory, or absolute), so a refreshed tags file is one reload away.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceTags {
    file: String,
    tags: Vec<String>,
    #[serde(default)]
    allow_azure_cloud: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    /// Exactly one of `cidr` and `domain`.
    cidr: Option<Spanned<String>>,
    domain: Option<Spanned<String>>,
    action: Action,
    /// An allow rule wider than the documented limit over public space is taken only with it.
    #[serde(default)]
    wide: bool,
    /// When a prefix rule stops applying: RFC 3339, UTC (`2026-12-31T00:00:00Z`).
    expires: Option<Spanned<String>>,
}

impl PolicyFile {
    /// Turns `[service_tags]` into allow rules, with `read` giving the text of the tags file
    /// (its path taken from the policy file's directory when relative). Errors point at the
    /// table. Nothing to do for a file without `[service_tags]`.
    pub fn resolve(
        mut self,
        read: impl FnOnce(&Path) -> std::io::Result<String>,
    ) -> Result<PolicyFile, PolicyError> {
        let Some(request) = &self.service_tags else {
            return Ok(self);
        };
        let tags_path = self
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&request.file);
        let loaded = read(&tags_path)
            .map_err(|source| TagError::Read {
                path: tags_path.display().to_string(),
                source,
            })
            .and_then(|text| ServiceTags::parse(&tags_path.display().to_string(), &text))
            .and_then(|loaded| loaded.prefixes(&request.tags, request.allow_azure_cloud));
        match loaded {
            Ok(prefixes) => {
                self.service_tag_rules = prefixes
                    .into_iter()
                    .map(|(tag, network)| Rule {
                        origin: Origin::ServiceTag(tag.clone()),
                        name: tag,
                        network,
                        action: Action::Allow,
                        expires: None,
                    })
                    .collect();
                Ok(self)
            }
            Err(err) => Err(PolicyError::Invalid(vec![Diagnostic {
                place: request.place.clone(),
                message: egress_monitor_api::error_line(&err),
            }])),
        }
    }

    /// Parses and validates `text` as the policy file `path`, reading nothing; text over
    /// [`MAX_FILE_BYTES`] is refused before parsing, as [`PolicyFile::load`] refuses such a
    /// file. A `[service_tags]` table is kept as a request: [`PolicyFile::load`] resolves it.
    pub fn parse(path: &Path, text: &str) -> Result<PolicyFile, PolicyError> {
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(PolicyError::TooLarge {
                path: path.to_owned(),
                size: text.len() as u64,
            });
        }
        let lines = Lines::new(text);
        let place = |span: Range<usize>| {
            let (line, column) = lines.line_column(span.start);
            format!("{}:{line}:{column}", path.display())
        };
        let raw: RawFile = toml::from_str(text).map_err(|err| {
            PolicyError::Invalid(vec![Diagnostic {
                place: err.span().map_or_else(|| path.display().to_string(), place),
                message: clip(err.message().trim_end()),
            }])
        })?;

        let mut diagnostics = Vec::new();
        let switches = group_switches(&raw.groups, &place, &mut diagnostics);
        let line_of = |span: Range<usize>| lines.line_column(span.start).0;
        let mut rules = FileRules::new(path);
        for raw_rule in raw.rule {
            rules.add(raw_rule, &place, &line_of, &mut diagnostics);
        }
        let FileRules {
            rules,
            domain_rules,
            ..
        } = rules;
        let service_tags = raw.service_tags.map(|tags| {
            let place = place(tags.span());
            let settings = tags.into_inner();
            ServiceTagsRequest {
                file: PathBuf::from(settings.file),
                tags: settings.tags,
                allow_azure_cloud: settings.allow_azure_cloud,
                place,
            }
        });
        let dns = raw
            .dns
            .map(|dns| dns_trust(dns, &place, &mut diagnostics))
            .unwrap_or_default();
        let raw_sockets = raw
            .raw_sockets
            .map(|raw_sockets| raw_socket_settings(raw_sockets, &place, &mut diagnostics))
            .unwrap_or_default();
        if !diagnostics.is_empty() {
            return Err(PolicyError::Invalid(diagnostics));
        }
        Ok(PolicyFile {
            dns,
            raw_sockets,
            azure: raw.azure,
            service_tags,
            service_tag_rules: Vec::new(),
            path: path.to_owned(),
            mode: raw.mode,
            groups: switches,
            rules,
            domain_rules,
        })
    }

    /// Whether the file switches group `name` on or off, if it says.
    pub fn group_switch(&self, name: &str) -> Option<bool> {
        self.groups
            .iter()
            .find(|(group, _)| *group == name)
            .map(|(_, on)| *on)
    }
}

/// Validates `[dns]`: resolvers are IP addresses, and at least one when the key is given;
/// namespaces are names under /run/netns or absolute paths.
/// `[groups]`: each switch of a known group, in the file's order.
fn group_switches(
    groups: &BTreeMap<String, Spanned<bool>>,
    place: &impl Fn(Range<usize>) -> String,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(&'static str, bool)> {
    let mut switches = Vec::new();
    for (name, on) in groups {
        match groups::by_name(name) {
            Some(group) => switches.push((group.name, *on.get_ref())),
            None => diagnostics.push(Diagnostic {
                place: place(on.span()),
                message: format!(
                    "unknown group {}, expected one of {}",
                    quote(name),
                    groups::ALL.map(|g| format!("`{}`", g.name)).join(", ")
                ),
            }),
        }
    }
    switches
}

/// The `[[rule]]` entries read so far: prefix rules and domain rules.
struct FileRules<'a> {
    path: &'a Path,
    rules: Vec<Rule>,
    domain_rules: Vec<DomainRule>,
    /// Where each domain was first given, so a duplicate is found in constant time (as the
    /// prefixes' RuleSet does).
    domain_index: HashMap<Domain, usize>,
}

impl<'a> FileRules<'a> {
    fn new(path: &'a Path) -> FileRules<'a> {
        FileRules {
            path,
            rules: Vec::new(),
            domain_rules: Vec::new(),
            domain_index: HashMap::new(),
        }
    }

    fn origin(&self, line: usize) -> Origin {
        Origin::File {
            path: self.path.to_owned(),
            line,
        }
    }

    /// Reads one rule: a name and exactly one of `cidr` and `domain`.
    fn add(
        &mut self,
        raw_rule: RawRule,
        place: &impl Fn(Range<usize>) -> String,
        line_of: &impl Fn(Range<usize>) -> usize,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let name = raw_rule.name.get_ref().trim();
        let problem = |message: &str| Diagnostic {
            place: place(raw_rule.name.span()),
            message: message.to_owned(),
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            diagnostics.push(problem("a rule name must be non-empty printable text"));
            return;
        }
        let expires = match &raw_rule.expires {
            None => None,
            Some(text) => match egress_monitor_api::time::parse_rfc3339_utc_ms(text.get_ref()) {
                Some(ms) if raw_rule.domain.is_none() => Some(ms),
                Some(_) => {
                    diagnostics.push(Diagnostic {
                        place: place(text.span()),
                        message: "expires is for prefix (cidr) rules; a domain rule cannot \
                                  expire yet"
                            .to_owned(),
                    });
                    return;
                }
                None => {
                    diagnostics.push(Diagnostic {
                        place: place(text.span()),
                        message: format!(
                            "expires {} is not an RFC 3339 time in UTC, as \
                             \"2026-12-31T00:00:00Z\"",
                            quote(text.get_ref())
                        ),
                    });
                    return;
                }
            },
        };
        match (&raw_rule.cidr, &raw_rule.domain) {
            (Some(cidr), None) => match parse_cidr(cidr.get_ref()) {
                Ok(network)
                    if raw_rule.action == Action::Allow
                        && !raw_rule.wide
                        && crate::too_wide(&network).is_some() =>
                {
                    diagnostics.push(Diagnostic {
                        place: place(cidr.span()),
                        message: crate::too_wide(&network).unwrap_or_default(),
                    });
                }
                Ok(network) => self.rules.push(Rule {
                    name: name.to_owned(),
                    network,
                    action: raw_rule.action,
                    origin: self.origin(line_of(cidr.span())),
                    expires,
                }),
                Err(message) => diagnostics.push(Diagnostic {
                    place: place(cidr.span()),
                    message,
                }),
            },
            (None, Some(domain)) => match Domain::parse(domain.get_ref()) {
                Ok(parsed) => {
                    if let Some(earlier) = self
                        .domain_index
                        .get(&parsed)
                        .map(|&i| &self.domain_rules[i])
                    {
                        diagnostics.push(Diagnostic {
                            place: place(domain.span()),
                            message: format!(
                                "{parsed} is already given by rule {} at {}; each domain may appear once",
                                quote(&earlier.name),
                                earlier.origin
                            ),
                        });
                        return;
                    }
                    self.domain_index
                        .insert(parsed.clone(), self.domain_rules.len());
                    self.domain_rules.push(DomainRule {
                        name: name.to_owned(),
                        domain: parsed,
                        action: raw_rule.action,
                        origin: self.origin(line_of(domain.span())),
                    });
                }
                Err(message) => diagnostics.push(Diagnostic {
                    place: place(domain.span()),
                    message,
                }),
            },
            (Some(_), Some(_)) => {
                diagnostics.push(problem("a rule has either `cidr` or `domain`, not both"))
            }
            (None, None) => diagnostics.push(problem(
                "a rule needs `cidr` (a prefix) or `domain` (a name)",
            )),
        }
    }
}

fn dns_trust(
    dns: Spanned<RawDns>,
    place: &impl Fn(Range<usize>) -> String,
    diagnostics: &mut Vec<Diagnostic>,
) -> DnsTrust {
    let table_place = place(dns.span());
    let dns = dns.into_inner();
    let resolvers = dns.resolvers.map(|resolvers| {
        if resolvers.is_empty() {
            diagnostics.push(Diagnostic {
                place: table_place.clone(),
                message: "`resolvers = []` would let no DNS answer teach: name at least one \
                          resolver, or leave `resolvers` out for the node's own"
                    .to_owned(),
            });
        }
        resolvers
            .into_iter()
            .filter_map(|resolver| match resolver.get_ref().trim().parse() {
                Ok(address) => Some(address),
                Err(_) => {
                    diagnostics.push(Diagnostic {
                        place: place(resolver.span()),
                        message: format!(
                            "{} is not an IP address (a resolver is named by its address)",
                            quote(resolver.get_ref())
                        ),
                    });
                    None
                }
            })
            .collect()
    });
    let network_namespaces = dns
        .network_namespaces
        .into_iter()
        .filter_map(|netns| {
            let name = netns.get_ref();
            let plain_name = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
            if plain_name || name.starts_with('/') {
                Some(name.clone())
            } else {
                diagnostics.push(Diagnostic {
                    place: place(netns.span()),
                    message: format!(
                        "{} is neither a namespace name (as under /run/netns) nor an \
                         absolute path",
                        quote(name)
                    ),
                });
                None
            }
        })
        .collect();
    DnsTrust {
        resolvers,
        network_namespaces,
        any_network_namespace: dns.any_network_namespace,
    }
}

/// Validates `[raw_sockets]`: exempt cgroups are absolute paths.
fn raw_socket_settings(
    raw_sockets: Spanned<RawRawSockets>,
    place: &impl Fn(Range<usize>) -> String,
    diagnostics: &mut Vec<Diagnostic>,
) -> RawSockets {
    let allow_cgroups = raw_sockets
        .into_inner()
        .allow_cgroups
        .into_iter()
        .filter_map(|cgroup| {
            let path = PathBuf::from(cgroup.get_ref());
            if path.is_absolute() {
                Some(path)
            } else {
                diagnostics.push(Diagnostic {
                    place: place(cgroup.span()),
                    message: format!(
                        "{} is not an absolute cgroup path (e.g. \
                         /sys/fs/cgroup/system.slice/app.service)",
                        quote(cgroup.get_ref())
                    ),
                });
                None
            }
        })
        .collect();
    RawSockets { allow_cgroups }
}

/// Where each line starts, so that a byte offset's line is a binary search away (a file of
/// 100,000 rules is located in linear time, not quadratic).
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { text, starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
}
