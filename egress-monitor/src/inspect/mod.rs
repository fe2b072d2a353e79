//! What an operator asks of a node: what is enforced ([`status`]), proof that it is
//! ([`check`], by synthetic packets through the attached programs), and Prometheus
//! [`metrics`] read from the pinned maps at each scrape.

pub mod check;
pub mod metrics;
pub mod status;
