//! The default allow groups: what every node needs to reach, on by default (but the opt-in
//! `cgnat` and `multicast`).

use ipnetwork::IpNetwork;

/// A named set of always-allowed prefixes that a policy can switch on or off as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub name: &'static str,
    pub description: &'static str,
    pub enabled_by_default: bool,
    pub members: &'static [&'static str],
    /// Domain patterns the group allows. They apply only to a policy with domain rules of its
    /// own (without any, DNS queries are reported, never refused).
    pub domains: &'static [&'static str],
}

pub const PRIVATE: Group = Group {
    name: "private",
    description: "RFC 1918, loopback, link-local, this-network, broadcast, link-local and \
                  admin-scoped multicast; IPv6 loopback, link-local, unique-local, multicast of \
                  interface- to organisation-local scope",
    enabled_by_default: true,
    members: &[
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
        "255.255.255.255/32",
        // IPv4 multicast that stays near the node. 224.0.0.0/24 is the Local Network Control
        // Block (RFC 5771 §4: routers never forward it; mDNS 224.0.0.251, VRRP, OSPF, IGMP).
        // 239.0.0.0/8 is administratively scoped (RFC 2365: 239.255.0.0/16 local scope, e.g.
        // SSDP 239.255.255.250; 239.192.0.0/14 organisation-local), kept inside the
        // organisation by its routers. The rest of 224.0.0.0/4 — the Internetwork Control
        // Block 224.0.1.0/24, SSM 232/8, GLOP 233/8, 234/8 and the ad hoc blocks — is routed
        // beyond the organisation, so it needs the `multicast` group or a rule.
        "224.0.0.0/24",
        "239.0.0.0/8",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
        // IPv6 multicast, by scope (the last nibble of the second byte, RFC 4291 §2.7 with the
        // realm-local scope of RFC 7346 §2): 1 interface-local, 2 link-local (neighbour
        // discovery, ff02::1 of the failsafe; mDNS ff02::fb), 3 realm-local, 4 admin-local,
        // 5 site-local, 8 organisation-local — the IPv6 counterparts of the IPv4 blocks above.
        // Left out: E global (ff0e::/16 reaches the internet's multicast routing), the
        // unassigned scopes 6, 7 and 9–D (RFC 4291 leaves them to administrators to define;
        // nothing standard uses them, and an administrator who defines one writes a rule), and
        // the reserved 0 (never originated) and F (RFC 4291: treated as global).
        // Each scope once per flags nibble in use (RFC 4291 §2.7 `0RPT`): 0 permanent
        // (IANA-assigned), 1 transient, 3 unicast-prefix-based (RFC 3306, P=1 needs T=1),
        // 7 embedded-RP (RFC 3956, R=1 needs P=1 and T=1). The other flag values are invalid
        // or reserved, so they are denied with the rest.
        "ff01::/16",
        "ff02::/16",
        "ff03::/16",
        "ff04::/16",
        "ff05::/16",
        "ff08::/16",
        "ff11::/16",
        "ff12::/16",
        "ff13::/16",
        "ff14::/16",
        "ff15::/16",
        "ff18::/16",
        "ff31::/16",
        "ff32::/16",
        "ff33::/16",
        "ff34::/16",
        "ff35::/16",
        "ff38::/16",
        "ff71::/16",
        "ff72::/16",
        "ff73::/16",
        "ff74::/16",
        "ff75::/16",
        "ff78::/16",
    ],
    domains: &[],
};

/// All multicast, global scope included: what `private` allowed before multicast was split by
/// scope. For nodes that take part in inter-domain multicast (SSM, GLOP, ff0e::/16).
pub const MULTICAST: Group = Group {
    name: "multicast",
    description: "all multicast, global scope included (224.0.0.0/4, ff00::/8); opt-in",
    enabled_by_default: false,
    members: &["224.0.0.0/4", "ff00::/8"],
    domains: &[],
};

pub const AZURE: Group = Group {
    name: "azure",
    description: "Azure platform: wireserver (DNS, DHCP, health probes) and the instance \
                  metadata service",
    enabled_by_default: true,
    members: &["168.63.129.16/32", "169.254.169.254/32"],
    domains: &[],
};

pub const CGNAT: Group = Group {
    name: "cgnat",
    description: "carrier-grade NAT shared address space (RFC 6598); opt-in",
    enabled_by_default: false,
    members: &["100.64.0.0/10"],
    domains: &[],
};

/// The names a node resolves for itself: Azure's internal DNS suffixes and the reverse zones
/// of private addresses (PTR lookups of peers, which many tools do). With domain rules, a
/// query for any other name must be allowed by a rule.
pub const INTERNAL_NAMES: Group = Group {
    name: "internal-names",
    description: "names the node resolves for itself once domain rules filter DNS: Azure's \
                  internal suffixes, reverse zones of private ranges",
    enabled_by_default: true,
    members: &[],
    domains: &[
        "*.internal.cloudapp.net",
        "*.reddog.microsoft.com",
        "*.10.in-addr.arpa",
        "*.168.192.in-addr.arpa",
        "*.254.169.in-addr.arpa",
        "*.16.172.in-addr.arpa",
        "*.17.172.in-addr.arpa",
        "*.18.172.in-addr.arpa",
        "*.19.172.in-addr.arpa",
        "*.20.172.in-addr.arpa",
        "*.21.172.in-addr.arpa",
        "*.22.172.in-addr.arpa",
        "*.23.172.in-addr.arpa",
        "*.24.172.in-addr.arpa",
        "*.25.172.in-addr.arpa",
        "*.26.172.in-addr.arpa",
        "*.27.172.in-addr.arpa",
        "*.28.172.in-addr.arpa",
        "*.29.172.in-addr.arpa",
        "*.30.172.in-addr.arpa",
        "*.31.172.in-addr.arpa",
        "*.d.f.ip6.arpa",
        "*.c.f.ip6.arpa",
    ],
};

/// Every group, in the order their rules are listed.
pub const ALL: [Group; 5] = [PRIVATE, AZURE, CGNAT, MULTICAST, INTERNAL_NAMES];

pub fn by_name(name: &str) -> Option<Group> {
    ALL.into_iter().find(|group| group.name == name)
}

impl Group {
    pub fn networks(&self) -> impl Iterator<Item = IpNetwork> {
        self.members.iter().map(|cidr| {
            cidr.parse()
                .unwrap_or_else(|err| panic!("built-in group member {cidr} is invalid: {err}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_is_a_canonical_network() {
        for group in ALL {
            for network in group.networks() {
                assert_eq!(
                    network.network(),
                    network.ip(),
                    "{} in {}",
                    network,
                    group.name
                );
            }
        }
    }

    #[test]
    fn only_cgnat_and_multicast_are_opt_in() {
        let opt_in: Vec<_> = ALL
            .iter()
            .filter(|g| !g.enabled_by_default)
            .map(|g| g.name)
            .collect();
        assert_eq!(opt_in, ["cgnat", "multicast"]);
    }
}
