//! Query parameters, strictly: a name a route does not take, or one given twice, is refused
//! with a 400 that names it. Ignoring `?state=stale` on a route without that filter would
//! answer every node to a script about to forget the stale ones; keeping only the last of
//! `?node=a&node=b` would answer about one node when two were asked.

use std::collections::BTreeMap;

/// A request's query parameters, each named once and known to its route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// The parameters in `pairs` (as the query string gives them, in order), which may only be
    /// named from `allowed`, each at most once.
    pub fn parse(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Params, String> {
        let mut params = BTreeMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(if allowed.is_empty() {
                    format!("unknown parameter `{name}`: this route takes none")
                } else {
                    format!("unknown parameter `{name}`: use {}", allowed.join(", "))
                });
            }
            if params.contains_key(&name) {
                return Err(format!("`{name}` given more than once: give it once"));
            }
            params.insert(name, value);
        }
        Ok(Params(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The parameters, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unknown_and_repeated_names_are_refused_by_name() {
        let params = Params::parse(
            pairs(&[("state", "stale"), ("limit", "5")]),
            &["state", "limit"],
        )
        .unwrap();
        assert_eq!(params.get("state"), Some("stale"));
        assert_eq!(
            Params::parse(pairs(&[("sate", "stale")]), &["state", "limit"]).unwrap_err(),
            "unknown parameter `sate`: use state, limit"
        );
        assert_eq!(
            Params::parse(pairs(&[("node", "a"), ("node", "b")]), &["node"]).unwrap_err(),
            "`node` given more than once: give it once"
        );
        assert_eq!(
            Params::parse(pairs(&[("x", "1")]), &[]).unwrap_err(),
            "unknown parameter `x`: this route takes none"
        );
    }
}
