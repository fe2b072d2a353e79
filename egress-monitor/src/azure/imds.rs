//! The node's own network from the Azure instance metadata service (IMDS): an Azure VNet may
//! use any address space, not only RFC 1918, and IMDS says which.
//!
//! `GET /metadata/instance` with `Metadata: true`, never through a proxy. Each interface's
//! IPv4 and IPv6 subnets become allow rules named `azure-vnet`. When IMDS does not answer, the
//! last prefixes it gave (kept in the run directory) stay in force: an error never widens the
//! policy, and never narrows it to the point of cutting the node off from its own VNet.

use std::{net::IpAddr, path::Path, time::Duration};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use egress_monitor_policy::{Action, Origin, Rule};

pub const DEFAULT_URL: &str = "http://169.254.169.254/metadata/instance?api-version=2021-02-01";
/// The rule name events and `status` show for these prefixes.
pub const RULE_NAME: &str = "azure-vnet";
/// Azure's DMI chassis asset tag: how a VM knows it runs on Azure.
const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("the instance metadata service at {url} did not answer")]
    Request {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("the instance metadata document is not JSON")]
    Json(#[source] serde_json::Error),
    #[error("the instance metadata document has no {0}")]
    Shape(&'static str),
}

/// A prefix and where in the document it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnetPrefix {
    pub network: IpNetwork,
    /// e.g. `interface 0 ipv4 subnet 0`.
    pub source: String,
}

/// Fetches the instance document (2 s timeout, no proxy).
pub fn fetch(url: &str) -> Result<Value, ImdsError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let request_error = |source| ImdsError::Request {
        url: url.to_owned(),
        source: Box::new(source),
    };
    let text = agent
        .get(url)
        .header("Metadata", "true")
        .call()
        .map_err(request_error)?
        .body_mut()
        .read_to_string()
        .map_err(request_error)?;
    serde_json::from_str(&text).map_err(ImdsError::Json)
}

/// The attested document for `nonce` (`/metadata/attested/document` on the same service as
/// `instance_url`): Azure's signed statement of this VM's id and subscription, carrying the
/// nonce, for the controller to verify.
pub fn attested_document(
    instance_url: &str,
    nonce: &str,
) -> Result<egress_monitor_api::wire::AttestedDocument, ImdsError> {
    let base = instance_url
        .split_once("/metadata/")
        .map_or(instance_url, |(base, _)| base);
    let url = format!("{base}/metadata/attested/document?api-version=2020-09-01&nonce={nonce}");
    serde_json::from_value(fetch(&url)?)
        .map_err(|_| ImdsError::Shape("attested document (encoding, signature)"))
}

/// Every interface's IPv4 and IPv6 subnets.
pub fn vnet_prefixes(document: &Value) -> Result<Vec<VnetPrefix>, ImdsError> {
    let interfaces = document["network"]["interface"]
        .as_array()
        .ok_or(ImdsError::Shape("network.interface list"))?;
    let mut out: Vec<VnetPrefix> = Vec::new();
    for (i, interface) in interfaces.iter().enumerate() {
        for family in ["ipv4", "ipv6"] {
            for (j, subnet) in interface[family]["subnet"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let address: IpAddr = subnet["address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .ok_or(ImdsError::Shape("valid subnet address"))?;
                let prefix: u8 = subnet["prefix"]
                    .as_str()
                    .and_then(|p| p.parse().ok())
                    .or_else(|| subnet["prefix"].as_u64().and_then(|p| u8::try_from(p).ok()))
                    .ok_or(ImdsError::Shape("valid subnet prefix length"))?;
                let network = IpNetwork::new(address, prefix)
                    .map_err(|_| ImdsError::Shape("valid subnet prefix length"))?;
                let network =
                    IpNetwork::new(network.network(), prefix).expect("a valid prefix stays valid");
                if !out.iter().any(|seen| seen.network == network) {
                    out.push(VnetPrefix {
                        network,
                        source: format!("interface {i} {family} subnet {j}"),
                    });
                }
            }
        }
    }
    if out.is_empty() {
        return Err(ImdsError::Shape("subnet on any interface"));
    }
    Ok(out)
}

/// The prefixes as allow rules (they rank like the default groups).
pub fn rules(prefixes: &[VnetPrefix]) -> Vec<Rule> {
    prefixes
        .iter()
        .map(|prefix| Rule {
            name: RULE_NAME.to_owned(),
            network: prefix.network,
            action: Action::Allow,
            origin: Origin::Imds(prefix.source.clone()),
            expires: None,
        })
        .collect()
}

/// Asks IMDS; on any failure returns the last prefixes saved at `last_known` (and says so), or
/// none. Saves what a successful answer gave.
pub fn prefixes_or_last_known(url: &str, last_known: &Path) -> Vec<VnetPrefix> {
    match fetch(url).and_then(|document| vnet_prefixes(&document)) {
        Ok(prefixes) => {
            if let Ok(text) = serde_json::to_vec_pretty(&prefixes)
                && let Err(err) = std::fs::write(last_known, text)
            {
                log::warn!(
                    "cannot save the VNet prefixes to {}: {err}",
                    last_known.display()
                );
            }
            prefixes
        }
        Err(err) => {
            let last: Vec<VnetPrefix> = std::fs::read(last_known)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            log::warn!(
                "{}; keeping the {} VNet prefixes last known",
                crate::system::error::chain(&err),
                last.len()
            );
            last
        }
    }
}

/// Whether this machine says it is an Azure VM (DMI chassis asset tag).
pub fn on_azure() -> bool {
    std::fs::read_to_string("/sys/class/dmi/id/chassis_asset_tag")
        .is_ok_and(|tag| tag.trim() == AZURE_ASSET_TAG)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Value {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/azure/imds-instance.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn subnets_of_every_interface_become_prefixes_v4_and_v6() {
        let prefixes = vnet_prefixes(&recorded()).unwrap();
        let text: Vec<String> = prefixes
            .iter()
            .map(|p| format!("{} {}", p.network, p.source))
            .collect();
        assert_eq!(
            text,
            [
                "203.0.113.0/24 interface 0 ipv4 subnet 0",
                "fd77::/64 interface 0 ipv6 subnet 0",
                "198.51.100.0/26 interface 1 ipv4 subnet 0",
            ]
        );
        let rules = rules(&prefixes);
        assert!(
            rules
                .iter()
                .all(|r| r.name == "azure-vnet" && r.action == Action::Allow)
        );
        assert_eq!(
            rules[0].origin.to_string(),
            "imds interface 0 ipv4 subnet 0"
        );
    }

    #[test]
    fn malformed_documents_are_errors_not_empty_policies() {
        assert!(vnet_prefixes(&serde_json::json!({})).is_err());
        assert!(vnet_prefixes(&serde_json::json!({"network": {"interface": []}})).is_err());
        let bad = serde_json::json!({"network": {"interface": [{"ipv4": {"subnet": [{"address": "10.0.0.0", "prefix": "33"}]}}]}});
        assert!(vnet_prefixes(&bad).is_err());
    }

    #[test]
    fn when_imds_is_down_the_last_known_prefixes_stay() {
        let dir = std::env::temp_dir().join(format!("em-imds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let last = dir.join("imds.json");
        // Nothing listens on this port of loopback: the fetch fails at once.
        let down = "http://127.0.0.1:9/metadata/instance?api-version=2021-02-01";
        assert!(
            prefixes_or_last_known(down, &last).is_empty(),
            "nothing known yet: nothing allowed"
        );
        let known = vnet_prefixes(&recorded()).unwrap();
        std::fs::write(&last, serde_json::to_vec(&known).unwrap()).unwrap();
        assert_eq!(prefixes_or_last_known(down, &last), known);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
