//! The command line. Parsing only: `crate::app` turns it into work.

use std::path::PathBuf;

use clap::{
    Args, Parser, Subcommand,
    builder::{PossibleValuesParser, TypedValueParser},
};

use egress_monitor_api::Words;
use egress_monitor_policy::Mode;

use crate::{daemon::HookChoice, datapath::pins::DEFAULT_PIN_PATH, events::read::ActionFilter};

/// The command line of this process (clap exits with its usage on an error).
pub fn parse() -> Cli {
    Cli::parse()
}

#[derive(Debug, Parser)]
#[command(
    name = "egress-monitor",
    version,
    about = "eBPF egress firewall and audit monitor: allow private and cloud-internal \
             destinations, count (observe) or drop (enforce) everything else",
    after_help = "Exit codes: 0 ok; 1 failure (`policy check`: invalid policy; `check`: not \
                  isolated as configured); 2 invalid input (arguments, policy); 3 environment \
                  (privilege, kernel, missing cgroup, interface or pinned state).\n\nRun \
                  `egress-monitor <command> --help` for examples."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pin and attach the datapath (or adopt the pinned one), then stream events for denied
    /// packets: each flow's first at once, then its counts once per flow interval. Stopping
    /// leaves enforcement in place; `detach` removes it.
    #[command(after_help = "Examples:
  # Audit the whole host (observe mode, cgroup hook on the cgroup2 root), events to stdout:
  egress-monitor run
  # Enforce on a node: both hooks, a policy file, events to a file:
  egress-monitor run --mode enforce --hook both --policy /etc/egress-monitor/policy.toml \\
      --events /var/log/egress-monitor/events.jsonl
  # Let one update mirror through, and deny a lab subnet inside 10/8:
  egress-monitor run --allow 203.0.113.0/24 --deny 10.1.2.0/24
  # Forensics: an event for every denied packet, not one per flow and interval; metrics:
  egress-monitor run --flow-interval 0 --metrics 127.0.0.1:9464

SIGHUP re-reads the policy and applies the difference. After `egress-monitor policy apply FILE`,
SIGHUP and restarts build from FILE instead of --policy, --mode, --allow and --deny, and the log
says so (`policy source is FILE (set by `policy apply` at TIME), not --policy X`); an unreadable or
invalid FILE keeps the live policy at a SIGHUP and stops a start with exit code 2.")]
    Run(Box<RunArgs>),
    /// Deprecated: runs `egress-monitor-controller` with these arguments (the fleet
    /// controller is its own program and package now).
    #[command(hide = true, disable_help_flag = true)]
    Controller {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Say what is enforced: hooks, mode, policy version, counters, daemon.
    #[command(after_help = "Examples:\n  egress-monitor status\n  egress-monitor status --json")]
    Status {
        #[command(flatten)]
        pins: PinArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Prove the live verdicts without sending a packet: synthetic packets through the attached
    /// programs. Exit 0 only when the node is isolated as configured.
    #[command(
        after_help = "Examples:\n  egress-monitor check --mode enforce   # fail unless enforcing\n  egress-monitor check --json"
    )]
    Check {
        #[command(flatten)]
        pins: PinArgs,
        /// Also require this mode.
        #[arg(long, value_parser = spelled::<Mode>())]
        mode: Option<Mode>,
        /// Pass although 32-bit system calls (IA32 emulation) are on: their setsockopt skips
        /// the cgroup hooks, so the raw-socket guards cannot see it (boot with
        /// `ia32_emulation=0` to close it instead).
        #[arg(long)]
        accept_compat_syscalls: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove the programs, links and pins: the only thing that ends enforcement.
    #[command(after_help = "Example:\n  egress-monitor detach")]
    Detach {
        #[command(flatten)]
        pins: PinArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the events the daemon wrote, filtered, for people (or `--json`); `--follow` shows
    /// new ones as they come, across log rotation, until interrupted.
    #[command(after_help = "Examples:
  egress-monitor events --follow --action dropped
  egress-monitor events --follow --dst 203.0.113.0/24 --process curl
  egress-monitor events --file /var/log/egress-monitor/events.jsonl --kind dns --json")]
    Events(EventsArgs),
    /// Validate, print or apply policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Audit an Azure NSG export: can this node reach the internet, on which ports, by which
    /// rule? Exit 0 when isolated, 1 when not (a deployment gate), 2 for an unreadable file.
    #[command(after_help = "Examples:
  az network nsg show -g RG -n NSG -o json > nsg.json && egress-monitor nsg-audit nsg.json
  az network nic list-effective-nsg -g RG -n NIC -o json > eff.json && egress-monitor nsg-audit eff.json
  egress-monitor nsg-audit nsg.json --accept Storage.WestEurope   # the one service it must reach")]
    NsgAudit {
        /// `az network nsg show -o json` or `az network nic list-effective-nsg -o json` output.
        file: PathBuf,
        /// The node's private address, to decide rules limited to some sources (without it, a
        /// source-limited Deny is not trusted and a source-limited Allow is).
        #[arg(long, value_name = "IP")]
        node_ip: Option<std::net::IpAddr>,
        /// An intended exposure: a service tag (a regional tag inside it counts) or a public
        /// prefix the design reaches on purpose; listed as accepted, not failing. Repeatable.
        /// Never the whole internet, nor AzureCloud.
        #[arg(long = "accept", value_name = "TAG_OR_PREFIX")]
        accept: Vec<crate::azure::nsg::Acceptance>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// The events file the packaged daemon writes.
pub const DEFAULT_EVENTS_FILE: &str = "/var/log/egress-monitor/events.jsonl";

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The daemon's events file (`run --events`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_EVENTS_FILE)]
    pub file: PathBuf,
    /// Keep reading: show events as the daemon writes them (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
    /// With --follow, how many of the latest matching events to show first.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub last: usize,
    /// Only this action: allowed, observed, dropped, or denied (observed or dropped).
    #[arg(long, value_parser = spelled::<ActionFilter>())]
    pub action: Option<ActionFilter>,
    /// Only events to this destination (an address or CIDR; for DNS, the resolver or an
    /// answered address).
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    pub dst: Option<ipnetwork::IpNetwork>,
    /// Only events of this process: its command name, or its executable's name or path.
    #[arg(long, value_name = "NAME")]
    pub process: Option<String>,
    /// Only events of this kind: first, update, packet, dns, dns_answer, raw_socket, alarm.
    #[arg(long, value_name = "KIND",
          value_parser = PossibleValuesParser::new(crate::events::read::KINDS).map(|s: String| s))]
    pub kind: Option<String>,
    /// The event lines as written (JSON), for scripts.
    #[arg(long)]
    pub json: bool,
}

/// An address (a /32 or /128) or a CIDR.
fn cidr(text: &str) -> Result<ipnetwork::IpNetwork, String> {
    text.parse()
        .map_err(|err| format!("not an address or CIDR ({err})"))
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Where the datapath is pinned (on a bpf filesystem; /sys/fs/bpf is mounted if needed).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// observe: count and report denied packets; enforce: also drop them. Overrides the
    /// policy file's `mode`. Default: the file's mode, else observe. Unused while the node
    /// follows a file recorded by `policy apply`.
    #[arg(long, value_parser = spelled::<Mode>())]
    pub mode: Option<Mode>,
    /// Where to attach.
    #[arg(long, value_parser = spelled::<HookChoice>(), default_value = "cgroup")]
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
    #[command(flatten)]
    pub pins: PinArgs,
    /// Log, at debug level, each packet the kernel could not judge (an unreadable IP header, a
    /// non-IP frame); off by default. Turned on or off live, also on adopted programs.
    #[arg(long)]
    pub kernel_log: bool,
    /// Seconds between the reports of a busy flow: its first denied packet is an event at once,
    /// the rest are counted in the kernel and reported (packets, bytes) at most once per
    /// interval. 0: an event for every denied packet (a flood fills the ring buffer; losses are
    /// counted).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub flow_interval: u64,
    /// Seconds an address a domain rule allowed (from a DNS answer) stays allowed beyond the
    /// record's TTL: connections opened just before expiry, and resolvers' caches, need it.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub dns_grace: u64,
    /// Seconds between the daemon's scheduled self-checks (`check`, also run after every
    /// change; its result goes to the controller as the node's proof). The links are watched
    /// every 2 s regardless: a removed, detached or replaced link raises an alarm at once.
    #[arg(long, value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(10..=86_400))]
    pub check_interval: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Allow the node's own VNet (any address space) as the Azure instance metadata service
    /// reports it, at start and every --imds-interval; the policy key `azure = true` does the
    /// same. When IMDS does not answer, the last prefixes it gave stay.
    #[arg(long)]
    pub azure: bool,
    /// Where the instance metadata service answers (never through a proxy).
    #[arg(long, value_name = "URL", default_value = crate::azure::imds::DEFAULT_URL)]
    pub imds_url: String,
    /// Seconds between IMDS refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub imds_interval: u64,
    /// Report to the fleet controller at this URL (http:// or https://) and follow its policy
    /// and mode. Needs --token-file.
    #[arg(long, value_name = "URL", requires = "token_file")]
    pub controller: Option<String>,
    /// The node token for the controller: a file holding it on one line.
    #[arg(long, value_name = "FILE", requires = "controller")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates to trust for an https:// controller (default: the public roots).
    #[arg(long, value_name = "FILE", requires = "controller")]
    pub controller_ca: Option<PathBuf>,
    /// Prove this node is the Azure VM it runs on: the instance metadata service's attested
    /// document (signed by Azure, for a nonce the controller gives) binds the node id to this
    /// VM at the controller, which gives the node a credential of its own; no other machine
    /// can then report as this node. Azure VMs only; --token-file then only asks.
    #[arg(long, requires = "controller")]
    pub attest: bool,
    /// The node's name, in every event line (`node`) and at the controller (default: the
    /// hostname): 1-128 letters, digits, '.', '_' and '-'.
    #[arg(long, value_name = "NAME", value_parser = node_id)]
    pub node_id: Option<String>,
    /// The node's group at the controller, which filters the fleet by it (`/api/v1/nodes?group=`):
    /// a scale set, a role, an environment. Default: the Azure scale set the VM is in, if any.
    #[arg(long, value_name = "NAME", requires = "controller", value_parser = node_id)]
    pub node_group: Option<String>,
    /// Seconds between reports to the controller; three missed make the node stale.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub report_interval: u32,
    /// Where reports wait until the controller acknowledges them, and where the fleet's policy
    /// and mode are kept.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/egress-monitor/spool"
    )]
    pub spool_dir: PathBuf,
    /// The spool's bound in MiB: when full, the oldest reports are dropped (and counted).
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub spool_max_mb: u64,
    /// Rule slots of newly pinned maps: at least 4096, and at least twice the policy's rules
    /// (the log says when it raised the number given). Bigger policies later grow the maps
    /// live.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub rule_capacity: usize,
}

fn node_id(text: &str) -> Result<String, String> {
    if egress_monitor_api::wire::valid_node_id(text) {
        Ok(text.to_owned())
    } else {
        Err("a node id is 1-128 letters, digits, '.', '_' and '-'".to_owned())
    }
}

/// A value spelled as one of its type's words (`--mode`, `--hook`), listed by --help. Those
/// types know no clap: the command line is the only module that does.
fn spelled<T: Words + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|value| value.as_str())).map(|text| {
        *T::ALL
            .iter()
            .find(|value| value.as_str() == text)
            .expect("clap accepts only the listed words")
    })
}

/// Where the policy comes from.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Policy file (TOML). For `run`: once `policy apply` has recorded another file as the
    /// node's policy source, SIGHUP and restarts build from that one (and say so), and --allow,
    /// --deny and --break-platform-access are unused too.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Also allow this destination prefix; repeatable.
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<String>,
    /// Also deny this destination prefix (wins inside a broader allow); repeatable.
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<String>,
    /// Let enforce mode deny the platform essentials (loopback, DHCP, the wireserver's DNS and
    /// health probes, instance metadata, IPv6 neighbour discovery): the node may lose its
    /// lease, its name resolution and its management.
    #[arg(long)]
    pub break_platform_access: bool,
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
        /// Validate it for this mode (the failsafe applies to enforce mode).
        #[arg(long, value_parser = spelled::<Mode>())]
        mode: Option<Mode>,
        /// Accept a policy that denies platform essentials in enforce mode.
        #[arg(long)]
        break_platform_access: bool,
    },
    /// Print the effective rules, one per line: built-in groups, the file, the command line.
    #[command(after_help = "Examples:
  egress-monitor policy show
  egress-monitor policy show --policy /etc/egress-monitor/policy.toml --deny 10.1.2.0/24")]
    Show {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Print `[[rule]]` entries allowing Azure service tags, from Microsoft's published
    /// ServiceTags_Public.json.
    #[command(after_help = "Example:
  egress-monitor policy service-tags ServiceTags_Public.json --tag Storage.WestEurope >> policy.toml

A policy file can also name the tags itself, so that a refreshed file is one reload away:
  [service_tags]
  file = \"ServiceTags_Public.json\"
  tags = [\"Storage.WestEurope\"]")]
    ServiceTags {
        /// The service tags file.
        file: PathBuf,
        /// A tag to allow (`Storage`, `Storage.WestEurope`, ...); repeatable.
        #[arg(long = "tag", value_name = "NAME", required = true)]
        tags: Vec<String>,
        /// Allow `AzureCloud`, which covers every Azure tenant's public addresses.
        #[arg(long)]
        allow_azure_cloud: bool,
    },
    /// Learning mode: print a proposed policy (a valid, commented policy file) built from the
    /// traffic a node recorded — domain rules for the names destinations were resolved from,
    /// exact addresses otherwise, each with its evidence and a confidence.
    #[command(after_help = "Examples:
  egress-monitor policy suggest --events /var/log/egress-monitor/events.jsonl > suggested.toml
  egress-monitor policy suggest --events events.jsonl --wildcards --widen \
      --service-tags ServiceTags_Public.json > suggested.toml
  egress-monitor policy replay suggested.toml --events events.jsonl

Nothing is wider than what was seen unless asked: --wildcards turns three or more names under
one parent (of two or more labels) into `*.parent`, --widen two or more addresses of one /24
(IPv6 /64) into that prefix, --service-tags an address into the most specific Azure service tag
holding it (never AzureCloud). Run the node in observe mode first: its events are the traffic.")]
    Suggest {
        /// The events file (`run --events`).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_EVENTS_FILE)]
        events: PathBuf,
        /// Group three or more names under one parent into `*.parent`.
        #[arg(long)]
        wildcards: bool,
        /// Group two or more addresses of one /24 (IPv6: /64) into that prefix.
        #[arg(long)]
        widen: bool,
        /// Propose Azure service tags from this ServiceTags_Public.json for addresses without
        /// a name.
        #[arg(long, value_name = "FILE")]
        service_tags: Option<PathBuf>,
        /// The mode the proposed policy says.
        #[arg(long, value_parser = spelled::<Mode>(), default_value = "observe")]
        mode: Mode,
    },
    /// Dry run: replay a policy against the traffic a node recorded and say what it would
    /// still block (flows, packets, nodes, destinations, processes) and what it would let
    /// through. Exit 0; 1 with --fail-if-blocking when it would block anything.
    #[command(after_help = "Examples:
  egress-monitor policy replay /etc/egress-monitor/next.toml --events /var/log/egress-monitor/events.jsonl
  egress-monitor policy replay next.toml --events events.jsonl --json | jq .blocked.destinations

The events hold the packets that were denied when they were recorded (allowed packets are not
recorded): a replay says what the policy changes about those. Each is judged at its own time
(an `expires` rule no longer counts after its end).")]
    Replay {
        /// The policy file to try.
        file: PathBuf,
        /// The events file (`run --events`).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_EVENTS_FILE)]
        events: PathBuf,
        /// How many destinations, processes and rules to list per side.
        #[arg(long, value_name = "N", default_value_t = 10)]
        top: usize,
        /// Exit 1 when the policy would block any recorded flow (a pipeline gate).
        #[arg(long)]
        fail_if_blocking: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Apply a policy to the live datapath as a difference (new rules first, stale ones
    /// after) and make FILE the node's policy source; an invalid policy changes nothing.
    #[command(after_help = "Example:
  egress-monitor policy apply /etc/egress-monitor/policy.toml

FILE (canonical, with --mode and --break-platform-access as given here) is recorded beside the
pins as the node's policy source: the daemon's SIGHUP and restarts build from it, not from the
daemon's own --policy, --mode, --allow and --deny, and log that they do. Another `policy apply`
changes the source; `detach` (or a reboot) removes it with the pins. Refused (exit 2) on a node
that follows a fleet policy or mode (`run --controller`): change it at the controller.")]
    Apply {
        /// The policy file.
        file: PathBuf,
        /// Overrides the file's mode.
        #[arg(long, value_parser = spelled::<Mode>())]
        mode: Option<Mode>,
        /// Accept a policy that denies platform essentials in enforce mode.
        #[arg(long)]
        break_platform_access: bool,
        #[command(flatten)]
        pins: PinArgs,
    },
}
