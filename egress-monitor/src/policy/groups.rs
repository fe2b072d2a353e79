//! The default allow groups: what every node needs to reach, on by default (but `cgnat`).

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
    description: "RFC 1918, loopback, link-local, this-network, broadcast, multicast; IPv6 \
                  loopback, link-local, unique-local, multicast",
    enabled_by_default: true,
    members: &[
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
        "255.255.255.255/32",
        "224.0.0.0/4",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
        "ff00::/8",
    ],
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
pub const ALL: [Group; 4] = [PRIVATE, AZURE, CGNAT, INTERNAL_NAMES];

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
    fn only_cgnat_is_opt_in() {
        let opt_in: Vec<_> = ALL
            .iter()
            .filter(|g| !g.enabled_by_default)
            .map(|g| g.name)
            .collect();
        assert_eq!(opt_in, ["cgnat"]);
    }
}
