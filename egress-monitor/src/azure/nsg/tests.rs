use std::path::PathBuf;

use super::*;

fn fixture(name: &str) -> Vec<Rule> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/azure")
        .join(name);
    load(&path).unwrap()
}

fn summary(audit: &Audit) -> Vec<String> {
    audit
        .exposures
        .iter()
        .map(|e| {
            format!(
                "{} {:?} {}-{} {}",
                e.destination, e.protocol, e.ports.0, e.ports.1, e.rule
            )
        })
        .collect()
}

#[test]
fn the_default_nsg_opens_the_internet_through_allow_internet_outbound() {
    let rules = fixture("nsg-default.json");
    assert_eq!(rules.len(), 3, "outbound rules only: {rules:#?}");
    let audit = audit(&rules, None);
    assert!(!audit.isolated());
    assert_eq!(
        summary(&audit),
        [
            "the internet Tcp 0-65535 AllowInternetOutBound",
            "the internet Udp 0-65535 AllowInternetOutBound",
            "the internet Icmp 0-65535 AllowInternetOutBound",
            "the internet Other 0-65535 AllowInternetOutBound",
        ]
    );
    assert!(
        audit
            .exposures
            .iter()
            .all(|e| e.default_rule && e.priority == 65001)
    );
    assert!(render(&audit).contains("an Azure default rule: add a Deny rule"));
}

#[test]
fn the_usual_fix_isolates() {
    let audit = audit(&fixture("nsg-fixed.json"), None);
    assert!(audit.isolated(), "{:#?}", audit.exposures);
    assert!(render(&audit).starts_with("isolated"));
}

#[test]
fn a_port_range_rule_and_a_service_tag_rule_reopen_it() {
    let rules = fixture("nsg-tricky.json");
    assert_eq!(rules.len(), 6, "nested ARM properties are read: {rules:#?}");
    let audit = audit(&rules, None);
    assert_eq!(
        summary(&audit),
        [
            "the internet Tcp 8000-8100 AllowVendorSupport",
            "service tag Storage.WestEurope Tcp 443-443 AllowStorageHttps",
            "service tag Storage.WestEurope Tcp 8000-8100 AllowVendorSupport",
        ]
    );
}

#[test]
fn effective_rules_are_read_and_a_udp_deny_leaves_tcp_open() {
    let rules = fixture("effective-nsg.json");
    assert_eq!(rules.len(), 4);
    assert!(
        rules
            .iter()
            .any(|r| r.name == "AllowInternetOutBound" && r.default)
    );
    let audit = audit(&rules, None);
    assert_eq!(
        summary(&audit),
        [
            "the internet Tcp 0-65535 AllowInternetOutBound",
            "the internet Icmp 0-65535 AllowInternetOutBound",
            "the internet Other 0-65535 AllowInternetOutBound",
        ]
    );
}

#[test]
fn defaults_are_added_when_the_export_lists_none_and_sources_are_conservative() {
    let document = serde_json::json!({"securityRules": [
        {"name": "DenyFromOneHost", "direction": "Outbound", "access": "Deny", "priority": 100,
         "protocol": "*", "destinationAddressPrefix": "Internet", "sourceAddressPrefix": "10.0.0.5/32"}
    ]});
    let rules = parse(&document).unwrap();
    assert_eq!(rules.len(), 4, "three defaults added");
    // A deny that may not cover the node is not trusted...
    assert!(!audit(&rules, None).isolated());
    // ...unless the node's address is given and inside it.
    assert!(audit(&rules, Some("10.0.0.5".parse().unwrap())).isolated());
    assert!(!audit(&rules, Some("10.0.0.6".parse().unwrap())).isolated());
}

#[test]
fn malformed_documents_are_refused() {
    assert!(parse(&serde_json::json!({"name": "x"})).is_err());
    let bad = serde_json::json!({"securityRules": [
        {"name": "r", "direction": "Outbound", "access": "Maybe", "priority": 100}
    ]});
    assert!(parse(&bad).unwrap_err().contains("neither Allow nor Deny"));
    let bad = serde_json::json!({"securityRules": [
        {"name": "r", "direction": "Outbound", "access": "Allow", "priority": 100, "destinationPortRange": "90-80"}
    ]});
    assert!(parse(&bad).unwrap_err().contains("bad port range"));
}

#[test]
fn an_accepted_exposure_is_listed_apart_and_the_rest_still_fails() {
    let rules = fixture("nsg-tricky.json");
    let accepted: Vec<Acceptance> = vec!["Storage".parse().unwrap()];
    let audit = audit(&rules, None).accept(&accepted);
    assert_eq!(
        summary(&audit),
        ["the internet Tcp 8000-8100 AllowVendorSupport"],
        "the regional tag is inside the accepted one; the internet is never accepted"
    );
    assert_eq!(audit.accepted.len(), 2);
    assert!(!audit.isolated());
    let text = render(&audit);
    assert!(
        text.starts_with("NOT ISOLATED") && text.contains("accepted (--accept):"),
        "{text}"
    );
    // The exposures the design means, all accepted: the gate passes and says what it accepted.
    let fixed = audit_of_one_service(&["Storage.WestEurope"]);
    assert!(fixed.isolated());
    assert!(render(&fixed).starts_with("isolated but for what was accepted:"));
    // A prefix inside an accepted prefix.
    let mut rules = fixture("nsg-fixed.json");
    rules.insert(0, prefix_rule("AllowMirror", "203.0.113.0/25"));
    let accepted: Vec<Acceptance> = vec!["203.0.113.0/24".parse().unwrap()];
    assert!(super::audit(&rules, None).accept(&accepted).isolated());
    let narrower: Vec<Acceptance> = vec!["203.0.113.0/26".parse().unwrap()];
    assert!(!super::audit(&rules, None).accept(&narrower).isolated());
}

fn prefix_rule(name: &str, destination: &str) -> Rule {
    let mut rule = fixture("nsg-tricky.json")
        .into_iter()
        .find(|r| r.name == "AllowStorageHttps")
        .unwrap();
    rule.name = name.to_owned();
    rule.priority = 100;
    rule.destinations = vec![destination.to_owned()];
    rule
}

fn audit_of_one_service(accept: &[&str]) -> Audit {
    let mut rules = fixture("nsg-fixed.json");
    rules.insert(0, prefix_rule("AllowStorageHttps", "Storage.WestEurope"));
    let accepted: Vec<Acceptance> = accept.iter().map(|a| a.parse().unwrap()).collect();
    audit(&rules, None).accept(&accepted)
}

#[test]
fn the_whole_internet_private_space_and_azure_cloud_cannot_be_accepted() {
    for (bad, says) in [
        ("*", "whole internet"),
        ("0.0.0.0/0", "whole internet"),
        ("Internet", "whole internet"),
        ("10.1.0.0/16", "private"),
        ("203.0.113.7", "as a prefix"),
        ("AzureCloud", "every Azure tenant"),
        ("AzureCloud.westeurope", "every Azure tenant"),
        ("VirtualNetwork", "neither a service tag"),
        ("not a tag!", "neither a service tag"),
    ] {
        let err = bad.parse::<Acceptance>().unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
    assert!("Storage.WestEurope".parse::<Acceptance>().is_ok());
    assert!("2001:db8::/32".parse::<Acceptance>().is_ok());
}
