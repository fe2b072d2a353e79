//! egress-monitor: an eBPF egress firewall and audit monitor for isolated Linux cloud nodes.
//!
//! Every outbound packet is checked in the kernel against an allow set (private ranges, the
//! cloud's internal addresses, what the operator allows) and counted (observe mode) or dropped
//! (enforce mode) when it is not allowed. This crate is the userspace side: it loads and
//! attaches the programs of `egress-monitor-ebpf`, fills their maps, and turns their ring
//! buffer into JSON-lines events.
//!
//! # Layout
//! - [`cli`]: the command line (clap); [`app`]: what each command does, exit codes.
//! - The policy (groups, the policy file, validation, the effective rule list) is the crate
//!   `egress_monitor_policy`; what the node and the controller say to each other is
//!   `egress_monitor_api`.
//! - [`datapath`]: the pinned state — create, adopt or replace it, apply policies by a planned
//!   diff, attach, read counters and flows, test-run packets, detach. Every pin opened and
//!   every BPF syscall is made there.
//! - [`pins`]: where pins and the run directory are; [`state`]: the applied policy's names;
//!   [`source`]: which policy source the node follows (`policy apply` records one).
//! - [`events`]: ring-buffer records → JSON lines; [`flows`]: the periodic flow reports;
//!   [`tunnel`]: the tunnelling score of DNS names.
//! - [`daemon`]: `run(config, shutdown)`, the long-running loop.
//! - [`status`], [`check`]: what is enforced, and proof by synthetic packets.
//! - [`metrics`]: Prometheus `/metrics`, read from the pinned maps at each scrape.
//! - [`azure`]: `nsg-audit` (does the NSG let the node out?) and the node's VNet from IMDS.
//! - [`clock`]: `CLOCK_BOOTTIME`, the kernel's timestamps.
//! - [`cgroup`], [`iface`], [`process`]: the cgroup2 hierarchy, network interfaces, and the
//!   executables that events name.
//! - [`resolvers`]: whose DNS answers teach (the node's resolvers, trusted network namespaces).
//! - [`error`]: operator-facing error text (exit codes are `app`'s).

pub mod app;
pub mod azure;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod clock;
pub mod counts;
pub mod daemon;
pub mod datapath;
pub mod dns_events;
pub mod error;
pub mod events;
pub mod fleet;
pub mod flows;
mod fs;
pub mod iface;
pub mod metrics;
pub mod pins;
pub mod process;
pub mod reporter;
pub mod resolvers;
pub mod source;
pub mod state;
pub mod status;
pub mod tunnel;
