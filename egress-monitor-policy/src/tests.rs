use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<PolicyFile, PolicyError> {
    parse_and_resolve(Path::new("p.toml"), text)
}

/// As [`PolicyFile::load`] builds a file: parsed, then `[service_tags]` read from disk.
fn parse_and_resolve(path: &Path, text: &str) -> Result<PolicyFile, PolicyError> {
    PolicyFile::parse(path, text)?.resolve(|tags| std::fs::read_to_string(tags))
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Err(PolicyError::Invalid(diagnostics)) => {
            diagnostics.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected an invalid policy, got {other:?}"),
    }
}

fn build(file: Option<&PolicyFile>, allow: &[&str], deny: &[&str]) -> Result<Policy, PolicyError> {
    let command_line = CommandLineRules {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        deny: deny.iter().map(|s| s.to_string()).collect(),
    };
    Policy::build(file, &command_line, None)
}

fn find<'a>(policy: &'a Policy, cidr: &str) -> Option<&'a Rule> {
    let network: IpNetwork = cidr.parse().unwrap();
    policy.rules.iter().find(|rule| rule.network == network)
}

const GOOD: &str = r#"
mode = "enforce"

[groups]
cgnat = true
azure = false

[[rule]]
name = "mirror"
cidr = "203.0.113.0/24"
action = "allow"

[[rule]]
name = "lab"
cidr = "10.1.2.0/24"
action = "deny"

[[rule]]
name = "docs-v6"
cidr = "2001:db8::/32"
action = "allow"
"#;

#[test]
fn a_good_file_gives_mode_groups_and_rules_with_lines() {
    let file = parse(GOOD).unwrap();
    assert_eq!(file.mode, Some(Mode::Enforce));
    assert_eq!(file.group_switch("cgnat"), Some(true));
    assert_eq!(file.group_switch("azure"), Some(false));
    assert_eq!(file.group_switch("private"), None);
    assert_eq!(file.rules.len(), 3);
    assert_eq!(file.rules[1].name, "lab");
    assert_eq!(file.rules[1].action, Action::Deny);
    assert_eq!(
        file.rules[1].origin,
        Origin::File {
            path: "p.toml".into(),
            line: 15
        }
    );
}

#[test]
fn the_effective_policy_follows_the_group_switches() {
    let file = parse(GOOD).unwrap();
    let policy = build(Some(&file), &[], &[]).unwrap();
    assert_eq!(policy.mode, Mode::Enforce);
    assert!(find(&policy, "10.0.0.0/8").is_some(), "private stays on");
    assert!(
        find(&policy, "100.64.0.0/10").is_some(),
        "cgnat switched on"
    );
    assert!(
        find(&policy, "168.63.129.16/32").is_none(),
        "azure switched off"
    );
    assert_eq!(find(&policy, "10.1.2.0/24").unwrap().action, Action::Deny);
    let private = groups::PRIVATE.members.len();
    assert_eq!(policy.rules.len(), private + 1 + 3);
}

#[test]
fn defaults_are_observe_private_and_azure() {
    let policy = build(None, &[], &[]).unwrap();
    assert_eq!(policy.mode, Mode::Observe);
    for cidr in groups::PRIVATE.members.iter().chain(groups::AZURE.members) {
        assert_eq!(find(&policy, cidr).unwrap().action, Action::Allow, "{cidr}");
    }
    assert!(find(&policy, "100.64.0.0/10").is_none());
}

#[test]
fn the_mode_flag_overrides_the_file() {
    let file = parse("mode = \"enforce\"").unwrap();
    let policy = Policy::build(
        Some(&file),
        &CommandLineRules::default(),
        Some(Mode::Observe),
    )
    .unwrap();
    assert_eq!(policy.mode, Mode::Observe);
}

#[test]
fn an_explicit_rule_replaces_a_group_member_with_the_same_prefix() {
    let file =
        parse("[[rule]]\nname = \"no-imds\"\ncidr = \"169.254.169.254/32\"\naction = \"deny\"\n")
            .unwrap();
    let policy = build(Some(&file), &[], &[]).unwrap();
    let rule = find(&policy, "169.254.169.254/32").unwrap();
    assert_eq!((rule.action, rule.name.as_str()), (Action::Deny, "no-imds"));
    let count = policy
        .rules
        .iter()
        .filter(|r| r.network.to_string() == "169.254.169.254/32")
        .count();
    assert_eq!(count, 1);
}

#[test]
fn the_command_line_replaces_a_file_rule_for_the_same_prefix() {
    let file = parse(GOOD).unwrap();
    let policy = build(Some(&file), &[], &["203.0.113.0/24"]).unwrap();
    let rule = find(&policy, "203.0.113.0/24").unwrap();
    assert_eq!(
        (rule.action, &rule.origin),
        (Action::Deny, &Origin::CommandLine)
    );
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let errs = errors("mode = \"observe\"\nmodes = 1\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("p.toml:2:1: unknown field `modes`"),
        "{errs:?}"
    );
    let errs =
        errors("[[rule]]\nname = \"x\"\ncidr = \"10.0.0.0/8\"\naction = \"allow\"\nport = 443\n");
    assert!(
        errs[0].starts_with("p.toml:5:1: unknown field `port`"),
        "{errs:?}"
    );
}

#[test]
fn wrong_types_and_values_are_refused() {
    let errs = errors("mode = 1\n");
    assert!(errs[0].starts_with("p.toml:1:8:"), "{errs:?}");
    let errs = errors("mode = \"audit\"\n");
    assert!(
        errs[0].contains("`audit` is not one of observe, enforce"),
        "{errs:?}"
    );
    assert!(
        errs[0].contains("observe") && errs[0].contains("enforce"),
        "{errs:?}"
    );
    let errs = errors("[[rule]]\nname = \"x\"\ncidr = \"10.0.0.0/8\"\naction = \"permit\"\n");
    assert!(errs[0].starts_with("p.toml:4:10:"), "{errs:?}");
    let errs = errors("[[rule]]\nname = \"x\"\naction = \"allow\"\n");
    assert_eq!(
        errs,
        ["p.toml:2:8: a rule needs `cidr` (a prefix) or `domain` (a name)"]
    );
    let errs = errors("[groups]\nprivate = \"yes\"\n");
    assert!(errs[0].starts_with("p.toml:2:11:"), "{errs:?}");
}

#[test]
fn domain_rules_are_parsed_checked_and_part_of_the_version() {
    let text = "[[rule]]\nname = \"storage\"\ndomain = \"*.Blob.core.windows.net\"\naction = \"allow\"\n\
                [[rule]]\nname = \"apex\"\ndomain = \"example.com\"\naction = \"allow\"\n";
    let file = parse(text).unwrap();
    let policy = build(Some(&file), &[], &[]).unwrap();
    // The file's two, then the internal names a node resolves for itself.
    let internal = groups::INTERNAL_NAMES.domains.len();
    assert_eq!(policy.domains.len(), 2 + internal);
    assert!(
        policy.domains[2..]
            .iter()
            .all(|rule| rule.origin == Origin::Group("internal-names"))
    );
    assert!(
        build(None, &[], &[]).unwrap().domains.is_empty(),
        "no domain rules of its own: no name filtering, no internal names"
    );
    assert_eq!(
        policy.domains[0].domain.to_string(),
        "*.blob.core.windows.net"
    );
    assert_eq!(policy.domains[0].origin.to_string(), "p.toml:3");
    assert!(policy.render().contains("*.blob.core.windows.net"));
    let without = build(None, &[], &[]).unwrap();
    assert_ne!(
        policy.version(),
        without.version(),
        "domains change the version"
    );

    let errs = errors(
        "[[rule]]\nname = \"x\"\ncidr = \"10.0.0.0/8\"\ndomain = \"a.com\"\naction = \"allow\"\n",
    );
    assert_eq!(
        errs,
        ["p.toml:2:8: a rule has either `cidr` or `domain`, not both"]
    );
    let errs = errors("[[rule]]\nname = \"x\"\ndomain = \"*.com\"\naction = \"allow\"\n");
    assert!(
        errs[0].starts_with("p.toml:3:10: `*.com` is not a valid domain"),
        "{errs:?}"
    );
    let errs = errors(
        "[[rule]]\nname = \"a\"\ndomain = \"a.com\"\naction = \"allow\"\n\
         [[rule]]\nname = \"b\"\ndomain = \"A.com.\"\naction = \"deny\"\n",
    );
    assert!(
        errs[0].starts_with("p.toml:7:10: a.com is already given by rule `a` at p.toml:3"),
        "{errs:?}"
    );
}

#[test]
fn bad_cidrs_are_all_reported_with_their_places() {
    let text = "[[rule]]\nname = \"a\"\ncidr = \"10.0.0.300/8\"\naction = \"allow\"\n\
                [[rule]]\nname = \"b\"\ncidr = \"10.1.2.3/8\"\naction = \"deny\"\n\
                [[rule]]\nname = \"c\"\ncidr = \"::ffff:203.0.113.0/120\"\naction = \"deny\"\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with("p.toml:3:8: `10.0.0.300/8` is not a CIDR"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("p.toml:7:8: `10.1.2.3/8` has host bits set; did you mean 10.0.0.0/8?"),
        "{errs:?}"
    );
    assert!(errs[2].contains("IPv4-mapped"), "{errs:?}");
}

#[test]
fn unknown_groups_and_empty_names_are_refused() {
    let errs = errors("[groups]\naws = true\n");
    assert!(
        errs[0].starts_with("p.toml:2:7: unknown group `aws`"),
        "{errs:?}"
    );
    let errs = errors("[[rule]]\nname = \" \"\ncidr = \"10.0.0.0/8\"\naction = \"allow\"\n");
    assert!(errs[0].starts_with("p.toml:2:8: a rule name"), "{errs:?}");
}

#[test]
fn a_prefix_twice_in_the_file_is_refused_with_both_places() {
    let file = parse(
        "[[rule]]\nname = \"a\"\ncidr = \"203.0.113.0/24\"\naction = \"allow\"\n\
         [[rule]]\nname = \"b\"\ncidr = \"203.0.113.0/24\"\naction = \"deny\"\n",
    )
    .unwrap();
    let Err(PolicyError::Invalid(errs)) = build(Some(&file), &[], &[]) else {
        panic!("a duplicate prefix must be refused");
    };
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].place, "p.toml:7");
    assert!(errs[0].message.contains("rule `a` at p.toml:3"), "{errs:?}");
}

#[test]
fn bad_command_line_rules_are_refused_with_the_flag() {
    let Err(PolicyError::Invalid(errs)) =
        build(None, &["10.0.0.0/33", "192.0.2.0/24"], &["192.0.2.0/24"])
    else {
        panic!("bad flags must be refused");
    };
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].starts_with("--allow `10.0.0.0/33`: `10.0.0.0/33` is not a CIDR"),
        "{text:?}"
    );
    assert!(
        text[1].starts_with("--deny `192.0.2.0/24`: 192.0.2.0/24 is already given"),
        "{text:?}"
    );
}

#[test]
fn an_unreadable_file_names_the_path() {
    let err = PolicyFile::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/policy.toml: cannot read the policy file"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn bare_addresses_are_host_prefixes() {
    assert_eq!(parse_cidr("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
    assert_eq!(
        parse_cidr("2001:db8::1").unwrap().to_string(),
        "2001:db8::1/128"
    );
}

#[test]
fn render_lists_every_rule_and_the_default() {
    let policy = build(None, &[], &["10.1.2.0/24"]).unwrap();
    let text = policy.render();
    assert!(text.starts_with("mode observe\ngroup private on\ngroup azure on\ngroup cgnat off\n"));
    assert!(text.contains("allow 10.0.0.0/8"), "{text}");
    assert!(text.contains("deny  10.1.2.0/24"), "{text}");
    assert!(text.contains("(command line)"), "{text}");
    assert!(text.trim_end().ends_with("(everything else)"), "{text}");
    assert!(text.contains("group multicast off"), "{text}");
    assert!(text.contains("group internal-names on"), "{text}");
    assert_eq!(text.lines().count(), 6 + policy.rules.len() + 1);
}

#[test]
fn the_version_depends_on_the_rules_not_their_order_or_the_mode() {
    let a = build(None, &["203.0.113.0/24"], &["10.1.2.0/24"]).unwrap();
    let b = build(None, &["203.0.113.0/24"], &["10.1.2.0/24"]).unwrap();
    assert_eq!(a.version(), b.version());
    let mut reordered = a.clone();
    reordered.rules.reverse();
    reordered.mode = Mode::Enforce;
    assert_eq!(a.version(), reordered.version());
    let c = build(None, &["203.0.113.0/24"], &["10.1.3.0/24"]).unwrap();
    assert_ne!(a.version(), c.version());
}

#[test]
fn the_verdict_is_the_longest_matching_prefix() {
    let policy = build(None, &[], &["10.1.2.0/24"]).unwrap();
    let verdict = |ip: &str| {
        policy
            .verdict(ip.parse().unwrap())
            .map(|r| (r.action, r.network.to_string()))
    };
    assert_eq!(
        verdict("10.1.2.3"),
        Some((Action::Deny, "10.1.2.0/24".into()))
    );
    assert_eq!(
        verdict("10.1.3.3"),
        Some((Action::Allow, "10.0.0.0/8".into()))
    );
    assert_eq!(
        verdict("169.254.169.254"),
        Some((Action::Allow, "169.254.169.254/32".into()))
    );
    assert_eq!(verdict("203.0.113.1"), None);
    assert_eq!(
        verdict("fe80::1"),
        Some((Action::Allow, "fe80::/10".into()))
    );
}

#[test]
fn the_failsafe_refuses_denying_essentials_in_enforce_mode_only() {
    let deny_imds = parse("mode = \"enforce\"\n[[rule]]\nname = \"no-imds\"\ncidr = \"169.254.169.254/32\"\naction = \"deny\"\n").unwrap();
    let policy = build(Some(&deny_imds), &[], &[]).unwrap();
    let Err(PolicyError::Invalid(errs)) = failsafe::check(&policy, false) else {
        panic!("denying IMDS in enforce mode must be refused");
    };
    assert_eq!(errs.len(), 1, "{errs:?}");
    let text = errs[0].to_string();
    assert!(
        text.starts_with(
            "failsafe: in enforce mode 169.254.169.254 (the instance metadata service"
        ),
        "{text}"
    );
    assert!(
        text.contains("denied by rule `no-imds`") && text.contains("--break-platform-access"),
        "{text}"
    );
    assert!(
        failsafe::check(&policy, true).is_ok(),
        "the flag accepts the risk"
    );

    let observe = Policy::build(
        Some(&deny_imds),
        &CommandLineRules::default(),
        Some(Mode::Observe),
    )
    .unwrap();
    assert!(
        failsafe::check(&observe, false).is_ok(),
        "observe mode drops nothing"
    );

    let no_private = parse("mode = \"enforce\"\n[groups]\nprivate = false\n").unwrap();
    let Err(PolicyError::Invalid(errs)) =
        failsafe::check(&build(Some(&no_private), &[], &[]).unwrap(), false)
    else {
        panic!("switching the private group off in enforce mode must be refused");
    };
    assert_eq!(
        errs.len(),
        5,
        "loopback x2, broadcast, link-local, multicast: {errs:?}"
    );
    assert!(failsafe::check(&build(None, &[], &[]).unwrap(), false).is_ok());
    let enforce_default =
        Policy::build(None, &CommandLineRules::default(), Some(Mode::Enforce)).unwrap();
    assert!(
        failsafe::check(&enforce_default, false).is_ok(),
        "the defaults keep every essential"
    );
}

#[test]
fn service_tags_named_in_the_file_become_allow_rules() {
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    // A relative tags path is taken from the policy file's directory.
    let file = parse_and_resolve(
        &fixtures.join("policy.toml"),
        "[service_tags]\nfile = \"ServiceTags_Public.json\"\ntags = [\"Storage.WestEurope\"]\n\n\
         [[rule]]\nname = \"no-this-one\"\ncidr = \"20.60.0.0/16\"\naction = \"deny\"\n",
    )
    .unwrap();
    assert_eq!(file.service_tag_rules.len(), 3);
    let policy = build(Some(&file), &[], &[]).unwrap();
    let rule = find(&policy, "2603:1020:206::/48").unwrap();
    assert_eq!(
        (rule.action, rule.name.as_str()),
        (Action::Allow, "Storage.WestEurope")
    );
    assert_eq!(rule.origin, Origin::ServiceTag("Storage.WestEurope".into()));
    assert_eq!(
        find(&policy, "20.60.0.0/16").unwrap().action,
        Action::Deny,
        "an explicit rule wins"
    );
    assert!(policy.render().contains("(service tag Storage.WestEurope)"));

    let errs = errors("[service_tags]\nfile = \"/nonexistent/tags.json\"\ntags = [\"Storage\"]\n");
    assert!(
        errs[0]
            .starts_with("p.toml:1:1: cannot read the service tags file `/nonexistent/tags.json`"),
        "{errs:?}"
    );
    let azure_cloud = parse_and_resolve(
        &fixtures.join("policy.toml"),
        "mode = \"observe\"\n[service_tags]\nfile = \"ServiceTags_Public.json\"\ntags = [\"AzureCloud\"]\n",
    );
    let Err(PolicyError::Invalid(errs)) = azure_cloud else {
        panic!("AzureCloud must be refused");
    };
    assert!(
        errs[0]
            .to_string()
            .contains("policy.toml:2:1: `AzureCloud` covers the public addresses"),
        "{errs:?}"
    );
}

#[test]
fn multicast_is_allowed_by_scope_and_global_scope_only_by_opting_in() {
    let allowed = |policy: &Policy, ip: &str| {
        policy
            .verdict(ip.parse().unwrap())
            .is_some_and(|rule| rule.action == Action::Allow)
    };
    let near = [
        "224.0.0.251",          // mDNS: Local Network Control Block
        "224.0.0.22",           // IGMPv3 reports
        "239.255.255.250",      // SSDP: IPv4 local scope
        "239.192.0.1",          // IPv4 organisation-local scope
        "ff01::1",              // interface-local
        "ff02::1",              // link-local: neighbour discovery
        "ff02::fb",             // link-local: mDNS
        "ff03::fc",             // realm-local (MPL)
        "ff04::1",              // admin-local
        "ff05::1:3",            // site-local: DHCPv6 servers
        "ff08::1",              // organisation-local
        "ff12::1234",           // transient, link-local
        "ff35:40:2001:db8::1",  // unicast-prefix-based, site-local
        "ff78:140:2001:db8::1", // embedded-RP, organisation-local
    ];
    let far = [
        "224.0.1.1",   // NTP: Internetwork Control Block
        "232.1.2.3",   // source-specific multicast
        "233.252.0.1", // MCAST-TEST-NET (AD-HOC block III)
        "234.0.0.1",   // unicast-prefix-based
        "238.0.0.1",
        "ff0e::db8:1",          // global
        "ff1e::1",              // transient, global
        "ff3e:40:2001:db8::1",  // unicast-prefix-based, global
        "ff7e:140:2001:db8::1", // embedded-RP, global
        "ff0f::1",              // reserved scope F: treated as global
        "ff06::1",              // unassigned scope
        "ff22::1",              // invalid flags (P without T)
    ];
    let defaults = build(None, &[], &[]).unwrap();
    for ip in near {
        assert!(allowed(&defaults, ip), "{ip} is allowed by default");
    }
    for ip in far {
        assert!(!allowed(&defaults, ip), "{ip} is denied by default");
    }

    let opted_in = build(
        Some(&parse("[groups]\nmulticast = true\n").unwrap()),
        &[],
        &[],
    )
    .unwrap();
    for ip in near.iter().chain(&far) {
        assert!(
            allowed(&opted_in, ip),
            "{ip} is allowed with multicast = true"
        );
    }
    assert_eq!(
        opted_in
            .verdict("ff0e::db8:1".parse().unwrap())
            .unwrap()
            .origin,
        Origin::Group("multicast")
    );
}

/// 8 MiB: the string of the review's policy file.
const HUGE: usize = 8 << 20;

/// The one error of `text` (a file named p.toml): short, and starting with its place.
fn one_short_error(text: &str, place: &str) -> String {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{} errors", errs.len());
    let error = &errs[0];
    assert!(
        error.len() < 1024,
        "{} bytes: {}",
        error.len(),
        &error[..2048.min(error.len())]
    );
    assert!(error.starts_with(place), "{error}");
    error.clone()
}

#[test]
fn huge_values_are_quoted_short_with_their_place() {
    let huge = "a".repeat(HUGE);
    let cut = format!("`{}…` (8388608 bytes)", "a".repeat(quote::QUOTED_CHARS));

    let error = one_short_error(
        &format!("[[rule]]\nname = \"x\"\ncidr = \"{huge}\"\naction = \"allow\"\n"),
        "p.toml:3:8: ",
    );
    assert!(error.contains(&format!("{cut} is not a CIDR")), "{error}");
    // Valid once trimmed, so the message is the host-bits one; the padding is not echoed.
    let padded = format!("10.1.2.3/8{}", " ".repeat(HUGE));
    let error = one_short_error(
        &format!("[[rule]]\nname = \"x\"\ncidr = \"{padded}\"\naction = \"allow\"\n"),
        "p.toml:3:8: `10.1.2.3/8   ",
    );
    assert!(error.contains("has host bits set"), "{error}");
    let error = one_short_error(
        &format!("[[rule]]\nname = \"x\"\ndomain = \"{huge}.com\"\naction = \"allow\"\n"),
        "p.toml:3:10: ",
    );
    assert!(error.contains("is not a valid domain"), "{error}");
    let error = one_short_error(&format!("[groups]\n{huge} = true\n"), "p.toml:2:");
    assert!(error.contains(&format!("unknown group {cut}")), "{error}");
    // A mode's message quotes the value cut short and ends with what was expected.
    let error = one_short_error(&format!("mode = \"{huge}\"\n"), "p.toml:1:8: ");
    assert!(error.contains(&format!("{cut} is not one of")), "{error}");
    assert!(error.ends_with("is not one of observe, enforce"), "{error}");
    let error = one_short_error(&format!("{huge} = 1\n"), "p.toml:1:1: ");
    assert!(error.contains("unknown field"), "{error}");
    // A name is echoed where another rule points at it.
    let error = one_short_error(
        &format!(
            "[[rule]]\nname = \"{huge}\"\ndomain = \"a.com\"\naction = \"allow\"\n\
             [[rule]]\nname = \"b\"\ndomain = \"a.com\"\naction = \"deny\"\n"
        ),
        "p.toml:7:10: ",
    );
    assert!(
        error.contains(&format!("already given by rule {cut}")),
        "{error}"
    );

    let file = parse(&format!(
        "[[rule]]\nname = \"{huge}\"\ncidr = \"203.0.113.0/24\"\naction = \"allow\"\n\
         [[rule]]\nname = \"b\"\ncidr = \"203.0.113.0/24\"\naction = \"deny\"\n"
    ))
    .unwrap();
    let Err(err) = build(Some(&file), &[], &[]) else {
        panic!("a duplicate prefix must be refused");
    };
    let error = err.to_string();
    assert!(
        error.len() < 1024 && error.starts_with("p.toml:7: "),
        "{error}"
    );
    let Err(err) = build(None, &[&huge], &[]) else {
        panic!("a bad flag must be refused");
    };
    let error = err.to_string();
    assert!(error.len() < 1024, "{} bytes", error.len());
    assert!(
        error.starts_with(&format!("--allow {cut}: {cut} is not a CIDR")),
        "{error}"
    );

    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for (settings, expected) in [
        (
            format!("file = \"ServiceTags_Public.json\"\ntags = [\"{huge}\"]"),
            format!("no service tag {cut}"),
        ),
        (
            format!("file = \"{huge}\"\ntags = [\"Storage\"]"),
            "aaaa…` (".to_owned(),
        ),
    ] {
        let Err(PolicyError::Invalid(errs)) = parse_and_resolve(
            &fixtures.join("policy.toml"),
            &format!("[service_tags]\n{settings}\n"),
        ) else {
            panic!("a bad service tags setting must be refused");
        };
        let error = errs[0].to_string();
        assert!(error.len() < 1024, "{} bytes", error.len());
        assert!(
            error.contains("policy.toml:1:1: ") && error.contains(&expected),
            "{error}"
        );
    }
}

#[test]
fn a_file_over_the_limit_is_refused_unparsed_with_its_size_and_the_limit() {
    let limit = MAX_FILE_BYTES.to_string();
    // Its metadata says so: refused without reading (a sparse file, so nothing is written).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let err = PolicyFile::load(&path).unwrap_err();
    assert!(matches!(err, PolicyError::TooLarge { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the policy file holds at least {} bytes, more than the limit of {limit} bytes",
            path.display(),
            MAX_FILE_BYTES + 1
        )
    );
    // A file whose metadata says 0 but which never ends: the bounded read finds out.
    let err = PolicyFile::load(Path::new("/dev/zero")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/dev/zero: the policy file holds at least")
            && err
                .to_string()
                .ends_with(&format!("limit of {limit} bytes")),
        "{err}"
    );
    // Text given whole (the controller's fleet policy) is held to the same limit.
    let text = "#".repeat(MAX_FILE_BYTES as usize + 1);
    let err = validate_fleet_policy(&text, None).unwrap_err();
    assert!(err.to_string().contains(&limit), "{err}");
    // At the limit is not over it: a file of comments that long parses.
    let at_limit = &text[..MAX_FILE_BYTES as usize];
    assert!(validate_fleet_policy(at_limit, None).is_ok());
}

#[test]
fn a_fleet_policy_naming_a_service_tags_file_is_refused_wherever_it_is_validated() {
    let text = "[service_tags]\nfile = \"ServiceTags_Public.json\"\ntags = [\"Storage\"]\n";
    let Err(PolicyError::Invalid(errs)) = validate_fleet_policy(text, None) else {
        panic!("a fleet policy with [service_tags] must be refused");
    };
    let error = errs[0].to_string();
    assert!(
        error.starts_with("fleet-policy:1:1: a fleet policy cannot name a service tags file"),
        "{error}"
    );
    // Nothing is read to decide it: the answer does not depend on the validating machine.
    assert!(!error.contains("cannot read"), "{error}");
}

#[test]
fn parsing_reads_no_file_and_resolving_reads_the_tags_file_beside_the_policy() {
    let text = "[service_tags]\nfile = \"tags.json\"\ntags = [\"Storage.WestEurope\"]\n";
    let file = PolicyFile::parse(Path::new("/etc/egress-monitor/policy.toml"), text).unwrap();
    assert!(file.service_tag_rules.is_empty());
    let mut asked = None;
    let resolved = file
        .resolve(|path| {
            asked = Some(path.to_owned());
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ServiceTags_Public.json"),
            )
        })
        .unwrap();
    assert_eq!(
        asked.as_deref(),
        Some(Path::new("/etc/egress-monitor/tags.json"))
    );
    assert_eq!(resolved.service_tag_rules.len(), 3);
}

#[test]
fn an_allow_rule_opening_most_of_the_internet_needs_wide_true() {
    let rule = |cidr: &str, extra: &str| {
        format!("[[rule]]\nname = \"r\"\ncidr = \"{cidr}\"\naction = \"allow\"\n{extra}")
    };
    for cidr in [
        "0.0.0.0/0",
        "64.0.0.0/2",
        "10.0.0.0/7",
        "::/0",
        "2000::/3",
        "2a00::/12",
    ] {
        let errs = errors(&rule(cidr, ""));
        assert_eq!(errs.len(), 1, "{cidr}: {errs:?}");
        assert!(
            errs[0].starts_with("p.toml:3:8: allowing ")
                && errs[0].contains("opens most of the internet")
                && errs[0].ends_with("add `wide = true` to the rule to do it anyway"),
            "{cidr}: {errs:?}"
        );
        let forced = parse(&rule(cidr, "wide = true\n")).unwrap();
        assert_eq!(forced.rules[0].network.to_string(), cidr);
    }
    // Narrow enough, private, or a deny: taken as they are.
    for (cidr, action) in [
        ("20.0.0.0/8", "allow"),
        ("2a01::/16", "allow"),
        ("fc00::/7", "allow"),
        ("0.0.0.0/0", "deny"),
        ("::/0", "deny"),
    ] {
        let text = format!("[[rule]]\nname = \"r\"\ncidr = \"{cidr}\"\naction = \"{action}\"\n");
        assert!(parse(&text).is_ok(), "{cidr} {action}");
    }
    // On the command line too (there is no `wide` there: a file says it).
    let Err(PolicyError::Invalid(errs)) = build(None, &["0.0.0.0/0"], &[]) else {
        panic!("--allow 0.0.0.0/0 must be refused");
    };
    assert!(
        errs[0]
            .to_string()
            .starts_with("--allow `0.0.0.0/0`: allowing 0.0.0.0/0")
            && errs[0]
                .to_string()
                .ends_with("put it in a policy file with `wide = true` to do it anyway"),
        "{errs:?}"
    );
    assert!(build(None, &[], &["0.0.0.0/0"]).is_ok());
}

#[test]
fn a_prefix_rule_may_expire_at_a_time_given_in_full_in_utc() {
    let rule = |expires: &str| {
        format!(
            "[[rule]]\nname = \"vendor\"\ncidr = \"203.0.113.0/24\"\naction = \"allow\"\nexpires = \"{expires}\"\n"
        )
    };
    let file = parse(&rule("2026-12-31T00:00:00Z")).unwrap();
    assert_eq!(file.rules[0].expires, Some(1_798_675_200_000));
    let built = build(Some(&file), &[], &[]).unwrap();
    assert_eq!(
        find(&built, "203.0.113.0/24").unwrap().expires,
        Some(1_798_675_200_000)
    );
    assert_eq!(find(&built, "10.0.0.0/8").unwrap().expires, None);
    // Another offset, no zone, a date alone, words: refused with the form that is taken.
    for bad in [
        "2026-12-31T00:00:00+01:00",
        "2026-12-31T00:00:00",
        "2026-12-31",
        "next week",
    ] {
        let errs = errors(&rule(bad));
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].starts_with("p.toml:5:11: expires ")
                && errs[0].ends_with("is not an RFC 3339 time in UTC, as \"2026-12-31T00:00:00Z\""),
            "{bad}: {errs:?}"
        );
    }
    // A domain rule cannot expire (yet): said, not ignored.
    let errs = errors(
        "[[rule]]\nname = \"d\"\ndomain = \"example.com\"\naction = \"allow\"\nexpires = \"2026-12-31T00:00:00Z\"\n",
    );
    assert!(
        errs.len() == 1 && errs[0].contains("expires is for prefix (cidr) rules"),
        "{errs:?}"
    );
    // The version changes with the time: two policies that differ only there are different.
    let later = parse(&rule("2027-01-31T00:00:00Z")).unwrap();
    assert_ne!(
        build(Some(&file), &[], &[]).unwrap().version(),
        build(Some(&later), &[], &[]).unwrap().version()
    );
}
