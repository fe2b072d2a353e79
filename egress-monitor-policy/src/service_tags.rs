//! Azure service tags (`ServiceTags_Public.json`, as Microsoft publishes it weekly) as named
//! allow rules: the way to let a node reach one Azure service — a storage account's region, say —
//! and nothing else.
//!
//! The catch-all `AzureCloud` tag (and its regional `AzureCloud.*` variants) is refused unless
//! forced: it covers the public addresses of every Azure tenant, so allowing it voids the
//! isolation.

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::{parse_cidr, quote};

#[derive(Debug, thiserror::Error)]
pub enum TagError {
    // The path and the tag names come from a policy file or the command line: quoted (and cut
    // short if long), since a path or name of megabytes must not make an error as big. A path
    // that could be opened is at most PATH_MAX, so only `Read` needs it for the path.
    #[error("cannot read the service tags file {}", quote(.path))]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a service tags file (values[].name, values[].properties.addressPrefixes)"
    )]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no service tag {} in {path}{}", quote(.name), suggestion(.close))]
    Unknown {
        name: String,
        path: String,
        close: Vec<String>,
    },
    #[error(
        "{} covers the public addresses of every Azure tenant: allowing it voids the isolation; pass --allow-azure-cloud (or allow_azure_cloud = true) to do it anyway",
        quote(.0)
    )]
    AzureCloud(String),
    #[error("service tag `{tag}` has an invalid prefix: {message}")]
    Prefix { tag: String, message: String },
}

fn suggestion(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}

#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(rename = "changeNumber")]
    change_number: Option<u64>,
    values: Vec<RawTag>,
}

#[derive(Debug, Deserialize)]
struct RawTag {
    name: String,
    properties: RawProperties,
}

#[derive(Debug, Deserialize)]
struct RawProperties {
    #[serde(rename = "addressPrefixes", default)]
    address_prefixes: Vec<String>,
}

/// A loaded service tags file.
#[derive(Debug)]
pub struct ServiceTags {
    pub path: String,
    pub change_number: Option<u64>,
    tags: Vec<RawTag>,
}

impl ServiceTags {
    /// Parses the text of a tags file; `name` is how errors name it. Reading the file is
    /// [`ServiceTags::load`]'s (the crate's one reading step, in `read.rs`).
    pub fn parse(name: &str, text: &str) -> Result<ServiceTags, TagError> {
        let raw: RawFile = serde_json::from_str(text).map_err(|source| TagError::Parse {
            path: name.to_owned(),
            source,
        })?;
        Ok(ServiceTags {
            path: name.to_owned(),
            change_number: raw.change_number,
            tags: raw.values,
        })
    }

    /// The prefixes of the named tags, as (tag, prefix) in the order asked, each prefix once.
    pub fn prefixes(
        &self,
        names: &[String],
        allow_azure_cloud: bool,
    ) -> Result<Vec<(String, IpNetwork)>, TagError> {
        let mut out: Vec<(String, IpNetwork)> = Vec::new();
        for name in names {
            let lower = name.to_ascii_lowercase();
            if !allow_azure_cloud && (lower == "azurecloud" || lower.starts_with("azurecloud.")) {
                return Err(TagError::AzureCloud(name.clone()));
            }
            let tag = self
                .tags
                .iter()
                .find(|tag| tag.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| TagError::Unknown {
                    name: name.clone(),
                    path: self.path.clone(),
                    close: self
                        .tags
                        .iter()
                        .filter(|tag| {
                            let candidate = tag.name.to_ascii_lowercase();
                            candidate.starts_with(&lower) || lower.starts_with(&candidate)
                        })
                        .take(5)
                        .map(|tag| tag.name.clone())
                        .collect(),
                })?;
            for prefix in &tag.properties.address_prefixes {
                let network = parse_cidr(prefix).map_err(|message| TagError::Prefix {
                    tag: tag.name.clone(),
                    message,
                })?;
                if !out.iter().any(|(_, seen)| *seen == network) {
                    out.push((tag.name.clone(), network));
                }
            }
        }
        Ok(out)
    }
}

impl ServiceTags {
    /// The most specific tag holding `address`: the one with the longest prefix holding it,
    /// then a region's (`Storage.WestEurope`) over the service's (`Storage`); never
    /// `AzureCloud` or its regions.
    pub fn tag_for(&self, address: std::net::IpAddr) -> Option<String> {
        self.tags
            .iter()
            .filter(|tag| {
                let lower = tag.name.to_ascii_lowercase();
                lower != "azurecloud" && !lower.starts_with("azurecloud.")
            })
            .filter_map(|tag| {
                let longest = tag
                    .properties
                    .address_prefixes
                    .iter()
                    .filter_map(|prefix| prefix.parse::<IpNetwork>().ok())
                    .filter(|network| network.contains(address))
                    .map(|network| network.prefix())
                    .max()?;
                Some((longest, tag.name.contains('.'), &tag.name))
            })
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| b.2.cmp(a.2)))
            .map(|(_, _, name)| name.clone())
    }
}

/// Policy-file `[[rule]]` entries allowing the prefixes, named after their tag.
pub fn render_rules(tags: &ServiceTags, prefixes: &[(String, IpNetwork)]) -> String {
    let mut out = format!(
        "# From {} (changeNumber {}): {} prefixes.\n",
        tags.path,
        tags.change_number
            .map_or("unknown".to_owned(), |n| n.to_string()),
        prefixes.len()
    );
    for (tag, network) in prefixes {
        out.push_str(&format!(
            "\n[[rule]]\nname = \"{tag}\"\ncidr = \"{network}\"\naction = \"allow\"\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn fixture() -> ServiceTags {
        ServiceTags::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ServiceTags_Public.json"),
        )
        .unwrap()
    }

    #[test]
    fn an_address_belongs_to_its_most_specific_tag_never_azure_cloud() {
        let tags = fixture();
        let tag = |address: &str| tags.tag_for(address.parse().unwrap());
        assert_eq!(tag("20.38.108.5").as_deref(), Some("Storage.WestEurope"));
        assert_eq!(tag("20.60.1.1").as_deref(), Some("Storage.WestEurope"));
        assert_eq!(tag("20.150.3.3").as_deref(), Some("Storage"));
        assert_eq!(tag("4.175.0.1"), None, "AzureCloud is never proposed");
        assert_eq!(tag("203.0.113.1"), None);
    }

    #[test]
    fn tags_become_named_allow_prefixes_v4_and_v6() {
        let tags = fixture();
        assert_eq!(tags.change_number, Some(354));
        let prefixes = tags
            .prefixes(&["Storage.WestEurope".into()], false)
            .unwrap();
        let text: Vec<String> = prefixes.iter().map(|(t, n)| format!("{t} {n}")).collect();
        assert_eq!(
            text,
            [
                "Storage.WestEurope 20.38.108.0/23",
                "Storage.WestEurope 20.60.0.0/16",
                "Storage.WestEurope 2603:1020:206::/48"
            ]
        );
        let rendered = render_rules(&tags, &prefixes);
        assert!(rendered.contains("[[rule]]\nname = \"Storage.WestEurope\"\ncidr = \"2603:1020:206::/48\"\naction = \"allow\""));
        // The rendered rules are a valid policy file.
        let file = crate::PolicyFile::parse(Path::new("tags.toml"), &rendered).unwrap();
        assert_eq!(file.rules.len(), 3);
    }

    #[test]
    fn shared_prefixes_are_listed_once_and_names_match_case_insensitively() {
        let prefixes = fixture()
            .prefixes(&["storage.westeurope".into(), "Storage".into()], false)
            .unwrap();
        assert_eq!(prefixes.len(), 4, "{prefixes:?}");
        assert_eq!(prefixes[3].0, "Storage");
    }

    #[test]
    fn azure_cloud_is_refused_unless_forced() {
        let tags = fixture();
        for name in ["AzureCloud", "AzureCloud.westeurope"] {
            let err = tags.prefixes(&[name.into()], false).unwrap_err();
            assert!(err.to_string().contains("every Azure tenant"), "{err}");
        }
        assert_eq!(
            tags.prefixes(&["AzureCloud".into()], true).unwrap().len(),
            2
        );
    }

    #[test]
    fn unknown_tags_suggest_close_ones() {
        let err = fixture()
            .prefixes(&["Storage.West".into()], false)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("did you mean") && text.contains("Storage.WestEurope"),
            "{text}"
        );
    }
}
