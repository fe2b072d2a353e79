//! The failsafe: in enforce mode, a policy may not cut the node off from what it needs to stay
//! alive and manageable, unless the operator says so with a flag that names the risk.

use std::net::IpAddr;

use super::{Action, Diagnostic, Mode, Policy, PolicyError, quote};

/// The flag that lets a policy deny essentials anyway.
pub const OVERRIDE_FLAG: &str = "--break-platform-access";

/// Representative addresses of the essentials, and what stops working without them.
pub const ESSENTIALS: [(&str, &str); 7] = [
    ("127.0.0.1", "local services on loopback"),
    ("::1", "local services on IPv6 loopback"),
    ("255.255.255.255", "DHCP (lease renewal by broadcast)"),
    (
        "168.63.129.16",
        "Azure wireserver: DNS, DHCP, load-balancer health probes, the VM agent",
    ),
    (
        "169.254.169.254",
        "the instance metadata service: identity, tokens, scheduled events",
    ),
    ("fe80::1", "IPv6 link-local: router and neighbour discovery"),
    ("ff02::1", "IPv6 neighbour discovery (multicast)"),
];

/// Refuses an enforce-mode policy that denies any essential, unless `accept_risk`.
pub fn check(policy: &Policy, accept_risk: bool) -> Result<(), PolicyError> {
    if policy.mode != Mode::Enforce || accept_risk {
        return Ok(());
    }
    let broken: Vec<String> = ESSENTIALS
        .iter()
        .filter_map(|(address, purpose)| {
            let address: IpAddr = address.parse().expect("valid essential");
            match policy.verdict(address) {
                Some(rule) if rule.action == Action::Allow => None,
                Some(rule) => Some(format!(
                    "{address} ({purpose}) is denied by rule {} {} ({})",
                    quote(&rule.name),
                    rule.network,
                    rule.origin
                )),
                None => Some(format!(
                    "{address} ({purpose}) is allowed by no rule (group switched off?)"
                )),
            }
        })
        .collect();
    if broken.is_empty() {
        return Ok(());
    }
    Err(PolicyError::Invalid(
        broken
            .into_iter()
            .map(|message| Diagnostic {
                place: "failsafe".to_owned(),
                message: format!(
                    "in enforce mode {message}; the node would lose it. Pass {OVERRIDE_FLAG} to \
                     do this on purpose"
                ),
            })
            .collect(),
    ))
}
