//! The command line. Parsing only: `crate::app` turns it into work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{daemon::HookChoice, policy::Mode};

#[derive(Debug, Parser)]
#[command(
    name = "egress-monitor",
    version,
    about = "eBPF egress firewall and audit monitor: allow private and cloud-internal \
             destinations, count (observe) or drop (enforce) everything else",
    after_help = "Exit codes: 0 ok; 1 failure (and `policy check`: invalid policy); 2 invalid \
                  input (arguments, policy); 3 environment (privilege, kernel, missing cgroup or \
                  interface).\n\nRun `egress-monitor <command> --help` for examples."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the datapath, attach it, and stream an event for every denied packet.
    #[command(after_help = "Examples:
  # Audit the whole host (observe mode, cgroup hook on the cgroup2 root), events to stdout:
  egress-monitor run
  # Enforce on a node: both hooks, a policy file, events to a file:
  egress-monitor run --mode enforce --hook both --policy /etc/egress-monitor/policy.toml \\
      --events /var/log/egress-monitor/events.jsonl
  # Let one update mirror through, and deny a lab subnet inside 10/8:
  egress-monitor run --allow 203.0.113.0/24 --deny 10.1.2.0/24")]
    Run(RunArgs),
    /// Validate or print policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// observe: count and report denied packets; enforce: also drop them. Overrides the
    /// policy file's `mode`. Default: the file's mode, else observe.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Where to attach.
    #[arg(long, value_enum, default_value = "cgroup")]
    pub hook: HookChoice,
    /// cgroup v2 directory for the cgroup hook (default: the hierarchy's root, from /proc/mounts).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Interface for the TC hook; repeatable (default: every up, non-loopback interface).
    #[arg(long = "iface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Where to write events (JSON lines): a file (appended to) or `-` for standard output.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    pub events: String,
}

/// Where the policy comes from.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Policy file (TOML).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Also allow this destination prefix; repeatable.
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<String>,
    /// Also deny this destination prefix (wins inside a broader allow); repeatable.
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file: exit 0 if valid, 1 with `file:line:column: …` errors if not.
    #[command(
        after_help = "Example:\n  egress-monitor policy check /etc/egress-monitor/policy.toml"
    )]
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the effective rules, one per line: built-in groups, the file, the command line.
    #[command(after_help = "Examples:
  egress-monitor policy show
  egress-monitor policy show --policy /etc/egress-monitor/policy.toml --deny 10.1.2.0/24")]
    Show {
        #[command(flatten)]
        policy: PolicyArgs,
    },
}
