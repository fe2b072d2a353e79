//! egress-monitor: an eBPF egress firewall and audit monitor for isolated Linux cloud nodes.
//!
//! Every outbound packet is checked in the kernel against an allow set (private ranges, the
//! cloud's internal addresses, what the operator allows) and counted (observe mode) or dropped
//! (enforce mode) when it is not allowed. This crate is the userspace side: it loads and
//! attaches the programs of `egress-monitor-ebpf`, fills their maps, and turns their ring
//! buffer into JSON-lines events.
//!
//! # Layout
//! Modules by concern, each importing only from the ones listed after it (`cargo xtask test`
//! checks it; README.md's layout section is the same list):
//! - [`app`] (what each command does; exit codes) and [`cli`] (the only module that knows clap).
//! - [`daemon`]: `run(config, shutdown)`, the long-running loop; the policy source it follows.
//! - [`inspect`]: `status`, `check` (proof by synthetic packets), Prometheus `metrics`.
//! - [`fleet`]: the reporter to the controller, and following the fleet's policy and mode.
//! - [`events`]: ring-buffer records to JSON lines, flow reports, DNS events, the tunnelling
//!   score, the daemon's own counts.
//! - [`datapath`]: the pinned state — create, adopt, replace or grow it, apply policies by a
//!   planned diff, attach, read counters and flows, test-run packets, detach. Every pin opened
//!   and every BPF syscall is made there.
//! - [`azure`]: `nsg-audit` and the node's VNet from IMDS.
//! - [`system`]: cgroups, interfaces, processes, the node's resolvers, files, clocks, error text.
//!
//! The policy (model, file, groups, failsafe) is the crate `egress_monitor_policy`; what the
//! node and the controller say to each other is `egress_monitor_api`.

pub mod app;
pub mod azure;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod fleet;
pub mod inspect;
pub mod system;
