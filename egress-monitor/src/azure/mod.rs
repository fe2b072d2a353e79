//! Azure: finding the NSG gap this product exists for, and allowing one Azure service by its
//! published service tag instead of by hand-copied prefixes.
//!
//! - [`imds`]: the node's VNet prefixes from the instance metadata service (`run --azure`).
//! - [`nsg`]: `egress-monitor nsg-audit`, does an NSG let this node reach the internet?
//! - [`service_tags`]: `ServiceTags_Public.json` entries as named allow rules.

pub mod imds;
pub mod nsg;
pub mod service_tags;
