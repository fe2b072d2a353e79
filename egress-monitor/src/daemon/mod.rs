//! `egress-monitor run`: make the pinned datapath match the configuration, then stream events
//! until asked to stop. Stopping leaves the programs attached: only `detach` removes them.
//!
//! [`run`] takes its shutdown signal as a future, so tests drive the daemon in-process exactly
//! as the binary does with SIGINT/SIGTERM. SIGHUP re-reads the policy and applies the
//! difference; a policy applied by `egress-monitor policy apply` is noticed within a tick.
//!
//! The policy is built from the source the node follows (see [`crate::daemon::source`]): the fleet's
//! policy and mode, else the file `policy apply` recorded beside the pins, else the daemon's
//! own arguments. Start-up and every SIGHUP choose again, so neither undoes an applied policy.

mod output;
mod proof;
mod reload;
pub mod source;
mod start;

pub use self::start::summary_line;
use self::{
    output::{Output, drain, load_names, report_flows, watch},
    reload::{Reload, follow_fleet, follow_recorded_at_start, rediscover_vnet, reload_policy},
    start::{
        connect_fleet, discover_vnet, follow_recorded_source, log_apply, open_and_attach,
        raise_memlock_limit, resolve_targets, stopped_summary, vnet_rules,
    },
};

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use egress_monitor_policy::{Policy, PolicySource};

use crate::{
    daemon::source::{RecordedSource, SourceError},
    datapath::pins::PinLayout,
    datapath::state::{StateError, StateFile},
    datapath::{ApplyReport, Counters, Datapath, DatapathError, Opened},
    events::dns::{DnsAnswerRecord, DnsRecord},
    events::flows::FlowReporter,
    events::{self, Clock, EventRecord, EventWriter, EventsTarget, GuardRecord, KernelRecord},
    fleet::reporter::{Exchange, FleetUpdate, Reporter, ReporterConfig, ReporterError},
    inspect::status,
    system::cgroup::{self, CgroupError},
    system::iface::{self, InterfaceError},
};

egress_monitor_api::words! {
    /// Which programs to attach.
    pub enum HookChoice {
        /// cgroup_skb egress on a cgroup: every local socket, any network namespace.
        Cgroup = "cgroup",
        /// TC egress on interfaces: everything leaving them, forwarded traffic too.
        Tc = "tc",
        /// Both (what enforce mode on a real node wants).
        Both = "both",
    }
}

impl HookChoice {
    fn cgroup(self) -> bool {
        matches!(self, HookChoice::Cgroup | HookChoice::Both)
    }
    fn tc(self) -> bool {
        matches!(self, HookChoice::Tc | HookChoice::Both)
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The validated policy the daemon's own arguments make.
    pub policy: Policy,
    /// Where it came from: the daemon's own arguments. A source recorded by `policy apply`, and
    /// the fleet's policy and mode, rank above them (see [`crate::daemon::source`]).
    pub source: PolicySource,
    pub hook: HookChoice,
    /// The cgroup to attach to; the root of the cgroup2 hierarchy when `None`.
    pub cgroup: Option<PathBuf>,
    /// Interfaces for the TC hook; every up, non-loopback interface when empty.
    pub interfaces: Vec<String>,
    pub events: EventsTarget,
    /// The node's name in every event line (`--node-id`, else the hostname).
    pub node: String,
    /// Seconds between the scheduled self-checks (continuous proof).
    pub check_interval: Duration,
    pub pin_path: PathBuf,
    /// Minimum rule slots for newly created maps.
    pub rule_capacity: usize,
    /// Allow the node's VNet from the Azure instance metadata service.
    pub imds: Option<Imds>,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// Kernel debug log records on.
    pub kernel_log: bool,
    /// How often each flow's aggregated packets are reported; zero: every denied packet is an
    /// event of its own.
    pub flow_interval: Duration,
    /// How long an address a domain rule's DNS answer allowed stays allowed beyond its TTL.
    pub dns_grace: Duration,
    /// Report to a controller, and follow its policy and mode.
    pub controller: Option<ReporterConfig>,
}

#[derive(Clone, Debug)]
pub struct Imds {
    pub url: String,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no interface to attach the TC hook to: none is up apart from loopback")]
    NoInterfaces,
    #[error("a daemon (pid {pid}) already serves {pin_path}; stop it first")]
    AlreadyRunning { pid: u32, pin_path: String },
    #[error("cannot open the event output {path}")]
    EventsOpen {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot poll the event ring buffer")]
    Poll(#[source] io::Error),
    #[error("cannot write the pid file")]
    PidFile(#[source] io::Error),
    #[error("cannot serve metrics on {address}")]
    Metrics {
        address: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the policy with the VNet prefixes is invalid")]
    Policy(#[source] egress_monitor_policy::PolicyError),
    #[error("the fleet policy kept in {dir} is invalid")]
    FleetPolicy {
        dir: String,
        #[source]
        source: egress_monitor_policy::PolicyError,
    },
    #[error(transparent)]
    Reporter(#[from] ReporterError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "the policy source recorded by `policy apply` at {recorded_at}, {file}, is invalid; the pinned policy stays live (fix the file, or `policy apply` another)"
    )]
    RecordedPolicy {
        file: String,
        recorded_at: String,
        #[source]
        source: egress_monitor_policy::PolicyError,
    },
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub opened: Opened,
    pub counters: Counters,
    pub events_written: u64,
    /// Events the output did not accept (see [`EventWriter`]).
    pub events_unwritten: u64,
}

/// Upper bound on how long an event may wait in the ring buffer when no wake-up comes, and on
/// how long an applied policy's new names take to reach events.
const DRAIN_INTERVAL: Duration = Duration::from_millis(200);

/// How long the reporter gets at a stop to seal and send its last reports.
const REPORTER_STOP: Duration = Duration::from_secs(15);

/// The daemon's end of the reporter: events go to `exchange.feed`, fleet updates come in.
struct FleetLink {
    exchange: Arc<Exchange>,
    updates: tokio::sync::mpsc::Receiver<FleetUpdate>,
    /// Where the fleet's policy and mode are kept.
    dir: PathBuf,
}

/// How often expired DNS-learned addresses are removed from their maps (and the wall clock
/// checked for steps).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);
/// A wall clock that moved this much against the boot clock was stepped.
const CLOCK_STEP_NS: u64 = 1_000_000_000;

pub async fn run(
    config: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, DaemonError> {
    raise_memlock_limit();
    // Installed first: a SIGHUP during start-up must not terminate the daemon.
    let hangup = signal(SignalKind::hangup()).map_err(DaemonError::Poll)?;
    let layout = PinLayout::new(&config.pin_path);
    if let Some(pid) = status::running_daemon(&layout) {
        return Err(DaemonError::AlreadyRunning {
            pid,
            pin_path: layout.root.display().to_string(),
        });
    }
    let mut writer = EventWriter::open(&config.events, &config.node).map_err(|source| {
        DaemonError::EventsOpen {
            path: config.events.to_string(),
            source,
        }
    })?;
    // Every target must exist, and the metrics address be free, before anything is pinned.
    let targets = resolve_targets(&config)?;
    if !config.policy.domains.is_empty() && targets.cgroup.is_none() {
        log::warn!(
            "the policy's domain rules need the cgroup hook (it reads the DNS answers): with --hook tc alone their addresses stay denied"
        );
    }
    let metrics_listener = match config.metrics {
        Some(address) => Some(
            crate::inspect::metrics::bind(address)
                .await
                .map_err(|source| DaemonError::Metrics { address, source })?,
        ),
        None => None,
    };
    let mut config = config;
    // The daemon's own arguments, chosen from again at every SIGHUP.
    let arguments = config.source.clone();
    follow_recorded_source(&mut config, &arguments, &layout)?;
    let counts = Arc::new(crate::events::counts::DaemonCounts::default());
    // The controller's settings are checked, and the fleet's policy and mode restored, before
    // anything is attached.
    let mut fleet = connect_fleet(&mut config, &layout, &counts)?;
    discover_vnet(&mut config, &layout)?;
    // What was done to the links while no daemon ran, before anything is attached again.
    let while_down = proof::Prover::tampered_while_down(&layout);
    let mut datapath = open_and_attach(&config, &layout, &targets)?;
    std::fs::write(layout.pid_file(), std::process::id().to_string())
        .map_err(DaemonError::PidFile)?;
    if let Some(listener) = metrics_listener {
        let address = listener.local_addr().map_err(DaemonError::Poll)?;
        crate::inspect::metrics::spawn(listener, layout.clone(), Arc::clone(&counts));
        log::info!("metrics at http://{address}/metrics");
    }
    let (stop_reporter, stopped) = tokio::sync::watch::channel(false);
    let (reporter, link) = match fleet.take() {
        Some((reporter, link)) => (Some(tokio::spawn(reporter.run(stopped))), Some(link)),
        None => (None, None),
    };

    let reload = Reload {
        signal: hangup,
        arguments,
    };
    let result = serve(
        &mut datapath,
        &mut config,
        &mut writer,
        &counts,
        link,
        reload,
        while_down,
        shutdown,
    )
    .await;
    if let Some(reporter) = reporter {
        // The last events are sealed into the spool and sent if the controller answers.
        let _ = stop_reporter.send(true);
        if tokio::time::timeout(REPORTER_STOP, reporter).await.is_err() {
            log::warn!("the reporter did not finish in time; its spool keeps what was not sent");
        }
    }
    if status::running_daemon(&layout) == Some(std::process::id()) {
        let _ = std::fs::remove_file(layout.pid_file());
    }
    result?;
    stopped_summary(&datapath, &writer)
}

#[allow(
    clippy::too_many_arguments,
    reason = "the loop's parts, each made by `run` before the loop starts"
)]
async fn serve(
    datapath: &mut Datapath,
    config: &mut RunConfig,
    writer: &mut EventWriter,
    counts: &crate::events::counts::DaemonCounts,
    mut link: Option<FleetLink>,
    mut reload: Reload,
    while_down: Vec<crate::datapath::watch::Tampering>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let layout = datapath.layout().clone();
    let mut names = load_names(&layout)?;
    let mut out = Output {
        writer,
        counts,
        cgroups: crate::system::cgroup::PathCache::new(),
        exes: crate::system::process::ExeCache::new(),
        tunnel: crate::events::tunnel::TunnelScorer::new(),
        dst_names: crate::events::dns::NameCache::new(),
        clock: Clock::now(),
        feed: link.as_ref().map(|link| Arc::clone(&link.exchange)),
    };
    let mut ring = watch(datapath.events()?)?;
    // What the flows gathered while no daemon ran is reported now.
    let mut flows = FlowReporter::open(&layout)?;
    drain(ring.get_mut(), &names, &mut out);
    report_flows(&mut flows, &names, &mut out);
    let aggregate = !config.flow_interval.is_zero();
    if !aggregate {
        flows.disable()?;
    }
    // Said once the flows are aggregated as asked (the sweep above started the period): a
    // packet sent after this line is reported as its flow's first event, never on its own.
    log::info!(
        "{} rules loaded; events to {}",
        config.policy.rules.len(),
        config.events
    );
    let mut prover = proof::Prover::start(
        &layout,
        config.check_interval,
        while_down,
        link.as_ref().map(|link| Arc::clone(&link.exchange)),
        &mut out,
    );
    prover.check(datapath, &mut out);
    let mut watch_tick = tokio::time::interval(proof::WATCH_INTERVAL);
    watch_tick.reset();
    let mut check_tick = tokio::time::interval(prover.interval());
    check_tick.reset();
    let mut flow_tick = tokio::time::interval(config.flow_interval.max(Duration::from_millis(1)));
    flow_tick.reset();
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut logger = datapath.logger().map(watch).transpose()?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    let mut imds_tick = tokio::time::interval(
        config
            .imds
            .as_ref()
            .map_or(Duration::from_secs(3600), |i| i.interval),
    );
    imds_tick.reset();
    tokio::pin!(shutdown);
    let mut generation = datapath.generation();
    // The rules' ends converted to the boot clock now, and again whenever the wall clock is
    // seen to step from here on (a step while no daemon ran is caught here).
    let mut clock_epoch = crate::datapath::expiry::BootClock::now().epoch_ns();
    if let Err(err) = datapath.refresh_expiry() {
        log::warn!(
            "cannot convert the rules' expiry times: {}",
            crate::system::error::chain(&err)
        );
    }
    loop {
        if datapath.generation() != generation {
            // Bigger maps were swapped in: what the old ones still hold is reported, then the
            // readers follow the new ones.
            generation = datapath.generation();
            drain(ring.get_mut(), &names, &mut out);
            report_flows(&mut flows, &names, &mut out);
            ring = watch(datapath.events()?)?;
            flows = FlowReporter::open(&layout)?;
            if !aggregate {
                flows.disable()?;
            }
            logger = datapath.logger().map(watch).transpose()?;
            log::info!("reading events from the new maps");
            // The swap attached new links: they are what is watched from here on.
            prover.attached();
            prover.check(datapath, &mut out);
        }
        tokio::select! {
            () = &mut shutdown => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(DaemonError::Poll)?;
                drain(guard.get_inner_mut(), &names, &mut out);
                guard.clear_ready();
            }
            guard = async { logger.as_mut().expect("guarded").readable_mut().await }, if logger.is_some() => {
                let mut guard = guard.map_err(DaemonError::Poll)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = imds_tick.tick(), if config.imds.is_some() => {
                rediscover_vnet(config, datapath, &layout);
            }
            update = async { link.as_mut().expect("guarded").updates.recv().await }, if link.is_some() => {
                let Some(update) = update else { continue };
                // Events read before the change name the old rules; after it, the new.
                drain(ring.get_mut(), &names, &mut out);
                follow_fleet(update, link.as_ref().expect("guarded"), config, datapath, &reload.arguments);
                names = load_names(&layout)?;
                prover.check(datapath, &mut out);
            }
            _ = reload.signal.recv() => {
                log::info!("SIGHUP: re-reading the policy");
                out.writer.reopen();
                // Events read before the reload name the old rules; after it, the new.
                drain(ring.get_mut(), &names, &mut out);
                let fleet_dir = link.as_ref().map(|link| link.dir.as_path());
                reload_policy(&reload.arguments, config, datapath, fleet_dir);
                names = load_names(&layout)?;
                prover.check(datapath, &mut out);
            }
            _ = flow_tick.tick(), if aggregate => {
                // A flow's first event goes out before its first update.
                drain(ring.get_mut(), &names, &mut out);
                report_flows(&mut flows, &names, &mut out);
            }
            _ = watch_tick.tick() => {
                prover.watch(datapath, &mut out);
            }
            _ = check_tick.tick() => {
                prover.check(datapath, &mut out);
            }
            _ = housekeeping.tick() => {
                if let Err(err) = datapath.prune_learned() {
                    log::warn!("cannot prune expired DNS-learned addresses: {}", crate::system::error::chain(&err));
                }
                // Expiring rules end on the kernel's boot clock: a stepped wall clock moves
                // their ends, converted again here.
                let epoch = crate::datapath::expiry::BootClock::now().epoch_ns();
                if epoch.abs_diff(clock_epoch) > CLOCK_STEP_NS {
                    clock_epoch = epoch;
                    log::info!("the wall clock was stepped: converting the rules' expiry times again");
                    if let Err(err) = datapath.refresh_expiry() {
                        log::warn!("cannot convert the rules' expiry times: {}", crate::system::error::chain(&err));
                    }
                }
            }
            _ = tick.tick() => {
                drain(ring.get_mut(), &names, &mut out);
                let live = datapath.config()?.policy_version;
                if format!("{live:016x}") != names.version {
                    names = load_names(&layout)?;
                    log::info!("policy {} is live now", names.version);
                }
            }
        }
    }
    // Whatever arrived before the stop is written, not lost; the flows say what they gathered
    // (the kernel goes on counting them, and the next daemon reports the rest).
    drain(ring.get_mut(), &names, &mut out);
    if aggregate {
        report_flows(&mut flows, &names, &mut out);
    }
    Ok(())
}
