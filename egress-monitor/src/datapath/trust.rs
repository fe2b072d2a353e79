//! Whose DNS answers teach, and which cgroups the raw-socket guards leave alone.

use std::net::IpAddr;

use egress_monitor_common::{dns::resolver as dns_resolver, maps as names, policy::config};

use super::{
    Datapath, DatapathError,
    maps::{replace_entries, replace_set, write_config},
};
use egress_monitor_policy::Policy;

use crate::{system::cgroup, system::resolvers};

/// Whose DNS answers teach and which cgroups the raw-socket guards leave alone, as the maps
/// hold them.
pub(super) struct TrustPlan {
    resolvers_v4: Vec<([u8; 4], u8)>,
    resolvers_v6: Vec<([u8; 16], u8)>,
    netns: Vec<u64>,
    any_netns: bool,
    exempt: Vec<u64>,
}

impl TrustPlan {
    pub(super) fn of(policy: &Policy) -> Result<TrustPlan, DatapathError> {
        let resolvers = resolvers::trusted_resolvers(&policy.dns);
        let local = resolvers::local_addresses();
        let place = |address: &IpAddr| {
            if resolvers::is_local(address, &local) {
                dns_resolver::LOCAL
            } else {
                dns_resolver::REMOTE
            }
        };
        let resolvers_v4 = resolvers
            .iter()
            .filter_map(|address| match address {
                IpAddr::V4(v4) => Some((v4.octets(), place(address))),
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map(|v4| (v4.octets(), place(&IpAddr::V4(v4)))),
            })
            .collect();
        let resolvers_v6 = resolvers
            .iter()
            .filter_map(|address| match address {
                IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                    Some((v6.octets(), place(address)))
                }
                _ => None,
            })
            .collect();
        let mut exempt = Vec::new();
        for path in &policy.raw_sockets.allow_cgroups {
            match cgroup::id(path) {
                Ok(id) => exempt.push(id),
                // Exempting nothing is the stricter outcome: say so, and go on.
                Err(err) => log::warn!(
                    "[raw_sockets] allow_cgroups: {} is not exempt: {}",
                    path.display(),
                    crate::system::error::chain(&err)
                ),
            }
        }
        Ok(TrustPlan {
            resolvers_v4,
            resolvers_v6,
            netns: resolvers::trusted_netns_cookies(&policy.dns)?,
            any_netns: policy.dns.any_network_namespace,
            exempt,
        })
    }
}

impl Datapath {
    /// Writes whose DNS answers teach (resolvers, network namespaces) and which cgroups the
    /// raw-socket guards leave alone, each map brought to the plan by a diff (new entries
    /// first).
    pub(super) fn write_trust(&mut self, trust: &TrustPlan) -> Result<(), DatapathError> {
        replace_entries(&self.target, names::DNS_RESOLVERS_V4, &trust.resolvers_v4)?;
        replace_entries(&self.target, names::DNS_RESOLVERS_V6, &trust.resolvers_v6)?;
        replace_set(&self.target, names::DNS_NETNS, &trust.netns)?;
        write_config(
            &self.target,
            config::DNS_ANY_NETNS,
            u64::from(trust.any_netns),
        )?;
        replace_set(&self.target, names::RAW_EXEMPT, &trust.exempt)
    }
}
