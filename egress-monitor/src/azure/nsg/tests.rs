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
