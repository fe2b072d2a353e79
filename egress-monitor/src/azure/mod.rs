//! Azure, as the node sees it: the instance metadata service and the NSG gap this product
//! exists for. (Service tags are policy: `egress_monitor_policy::service_tags`.)
//!
//! - [`imds`]: the node's VNet prefixes from the instance metadata service (`run --azure`).
//! - [`nsg`]: `egress-monitor nsg-audit`, does an NSG let this node reach the internet?

pub mod imds;
pub mod nsg;
