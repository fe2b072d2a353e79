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

pub mod source;

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

/// How often expired DNS-learned addresses are removed from their maps.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

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
    let mut writer =
        EventWriter::open(&config.events).map_err(|source| DaemonError::EventsOpen {
            path: config.events.to_string(),
            source,
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
    let mut datapath = open_and_attach(&config, &layout, &targets)?;
    std::fs::write(layout.pid_file(), std::process::id().to_string())
        .map_err(DaemonError::PidFile)?;
    if let Some(listener) = metrics_listener {
        let address = listener.local_addr().map_err(DaemonError::Poll)?;
        crate::inspect::metrics::spawn(listener, layout.clone(), Arc::clone(&counts));
        log::info!("metrics at http://{address}/metrics");
    }
    log::info!(
        "{} rules loaded; events to {}",
        config.policy.rules.len(),
        config.events
    );
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

/// Builds from the source `policy apply` recorded, when there is one (see [`crate::daemon::source`]).
fn follow_recorded_source(
    config: &mut RunConfig,
    arguments: &PolicySource,
    layout: &PinLayout,
) -> Result<(), DaemonError> {
    if let Some(recorded) = follow_recorded_at_start(arguments, layout)? {
        config.policy = recorded
            .source
            .build()
            .map_err(|source| DaemonError::RecordedPolicy {
                file: recorded.record.file.display().to_string(),
                recorded_at: recorded.record.recorded_at.clone(),
                source,
            })?;
        config.source = recorded.source;
    }
    Ok(())
}

/// With `--controller`: the reporter, ready to run, and the daemon's end of it, with the
/// fleet's policy and mode as last applied restored into `config`. Without: nothing, and no
/// word left of an earlier daemon's link.
fn connect_fleet(
    config: &mut RunConfig,
    layout: &PinLayout,
    counts: &Arc<crate::events::counts::DaemonCounts>,
) -> Result<Option<(Reporter, FleetLink)>, DaemonError> {
    let Some(reporter_config) = config.controller.clone() else {
        let _ = std::fs::remove_file(layout.run_dir().join(crate::fleet::reporter::STATUS_FILE));
        return Ok(None);
    };
    let exchange = Arc::new(Exchange::default());
    let restored = crate::fleet::follow::restore(&reporter_config.spool_dir, &mut config.source);
    if restored != Default::default() {
        config.policy = config
            .source
            .build()
            .map_err(|source| DaemonError::FleetPolicy {
                dir: reporter_config.spool_dir.display().to_string(),
                source,
            })?;
    }
    exchange.set_following(restored);
    let (reporter, updates) = Reporter::new(
        reporter_config.clone(),
        Arc::clone(&exchange),
        layout.clone(),
        Arc::clone(counts),
    )?;
    Ok(Some((
        reporter,
        FleetLink {
            exchange,
            updates,
            dir: reporter_config.spool_dir,
        },
    )))
}

/// With `--azure`: the VNet's prefixes from IMDS join the policy.
fn discover_vnet(config: &mut RunConfig, layout: &PinLayout) -> Result<(), DaemonError> {
    match &config.imds {
        Some(imds) => {
            std::fs::create_dir_all(layout.run_dir()).map_err(DaemonError::PidFile)?;
            config.source.discovered = vnet_rules(imds, layout);
            config.policy = config.source.build().map_err(DaemonError::Policy)?;
        }
        None if crate::azure::imds::on_azure() => log::info!(
            "this is an Azure VM: --azure (or `azure = true` in the policy) would allow its VNet's own prefixes"
        ),
        None => {}
    }
    Ok(())
}

/// Creates, adopts, replaces or grows the pinned datapath, applies the policy and attaches
/// to every target, saying which it did.
fn open_and_attach(
    config: &RunConfig,
    layout: &PinLayout,
    targets: &Targets,
) -> Result<Datapath, DaemonError> {
    // Prefix and domain rules take ids from the same slots.
    let capacity = config
        .rule_capacity
        .max((config.policy.rules.len() + config.policy.domains.len()) * 2);
    let mut datapath = Datapath::open(layout, capacity)?;
    match datapath.opened() {
        Opened::Created => log::info!("pinned a new datapath at {}", layout.root.display()),
        Opened::Adopted => log::info!(
            "adopted the pinned datapath at {}: attachments, counters and policy carry on",
            layout.root.display()
        ),
        Opened::Replacing { previous_build } => log::warn!(
            "{} was pinned by another build ({previous_build:016x}); replacing it: new programs attach first, then the old ones go",
            layout.root.display()
        ),
        Opened::Growing { from, to } => log::warn!(
            "the maps at {} hold {from} rule slots, {to} are asked for: swapping in bigger ones (policy, counters and learned addresses carried over; new programs attach first, then the old ones go)",
            layout.root.display()
        ),
    }
    log_apply(&datapath.apply(&config.policy)?);
    datapath.set_kernel_log(config.kernel_log)?;
    datapath.set_dns_grace(config.dns_grace)?;
    datapath.set_dns_event_interval(config.flow_interval)?;
    attach(&mut datapath, targets)?;
    for kept in datapath.finish_replacement()? {
        log::warn!(
            "kept the old build's attachment {kept}: it was not asked for again (`detach` removes it)"
        );
    }
    for attachment in datapath.attachments() {
        match attachment.target {
            Some(target) => log::info!(
                "attached: {} ({target}) ({} mode)",
                attachment.name,
                config.policy.mode
            ),
            None => log::warn!(
                "still attached from an earlier run: {} (not asked for now; `egress-monitor detach` removes it)",
                attachment.name
            ),
        }
    }
    Ok(datapath)
}

/// What the stopping daemon logs and returns: the counters, the events written.
fn stopped_summary(datapath: &Datapath, writer: &EventWriter) -> Result<Summary, DaemonError> {
    let counters = datapath.counters()?;
    log::info!(
        "stopping: {}; {} events written, {} unwritten; the programs stay attached (`egress-monitor detach` removes them)",
        summary_line(&counters),
        writer.written(),
        writer.unwritten()
    );
    if let Some(line) = rule_hits_line(datapath.layout())? {
        log::info!("rule hits: {line}");
    }
    Ok(Summary {
        opened: datapath.opened(),
        counters,
        events_written: writer.written(),
        events_unwritten: writer.unwritten(),
    })
}

async fn serve(
    datapath: &mut Datapath,
    config: &mut RunConfig,
    writer: &mut EventWriter,
    counts: &crate::events::counts::DaemonCounts,
    mut link: Option<FleetLink>,
    mut reload: Reload,
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
                follow_fleet(update, link.as_ref().expect("guarded"), config, datapath);
                names = load_names(&layout)?;
            }
            _ = reload.signal.recv() => {
                log::info!("SIGHUP: re-reading the policy");
                // Events read before the reload name the old rules; after it, the new.
                drain(ring.get_mut(), &names, &mut out);
                let fleet_dir = link.as_ref().map(|link| link.dir.as_path());
                reload_policy(&reload.arguments, config, datapath, fleet_dir);
                names = load_names(&layout)?;
            }
            _ = flow_tick.tick(), if aggregate => {
                // A flow's first event goes out before its first update.
                drain(ring.get_mut(), &names, &mut out);
                report_flows(&mut flows, &names, &mut out);
            }
            _ = housekeeping.tick() => {
                if let Err(err) = datapath.prune_learned() {
                    log::warn!("cannot prune expired DNS-learned addresses: {}", crate::system::error::chain(&err));
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

/// The VNet's prefixes as IMDS reports them now, applied when they changed; an error changes
/// nothing.
fn rediscover_vnet(config: &mut RunConfig, datapath: &mut Datapath, layout: &PinLayout) {
    let imds = config.imds.clone().expect("called with --azure only");
    let discovered = vnet_rules(&imds, layout);
    if discovered == config.source.discovered {
        return;
    }
    config.source.discovered = discovered;
    match config.source.build().map_err(DaemonError::Policy) {
        Ok(policy) => match datapath.apply(&policy) {
            Ok(report) => log_apply(&report),
            Err(err) => log::error!(
                "the new VNet prefixes were not applied: {}",
                crate::system::error::chain(&err)
            ),
        },
        Err(err) => log::error!("{}", crate::system::error::chain(&err)),
    }
}

/// Applies the fleet's policy and mode, tells the reporter how it went (a refusal with its
/// reason), and answers the update.
fn follow_fleet(
    update: FleetUpdate,
    link: &FleetLink,
    config: &mut RunConfig,
    datapath: &mut Datapath,
) {
    let state = link.exchange.following();
    let outcome = crate::fleet::follow::apply(
        &link.dir,
        update.desired,
        update.policy.as_deref(),
        &mut config.source,
        datapath,
        &state,
    );
    match &outcome {
        Ok(applied) => {
            log::info!(
                "fleet policy {} and mode {} applied",
                applied
                    .policy_version
                    .map_or("(local)".to_owned(), |v| format!("v{v}")),
                applied
                    .mode
                    .map_or("(local)", egress_monitor_policy::Mode::as_str)
            );
            link.exchange.set_following(applied.clone());
        }
        Err(err) => {
            log::error!("the fleet's policy or mode was not applied; the live one stays: {err}");
            link.exchange
                .set_following(crate::fleet::reporter::Following {
                    error: Some(err.clone()),
                    refused: Some(update.desired),
                    ..state
                });
        }
    }
    let _ = update.done.send(outcome.map(|_| ()));
}

/// SIGHUP: the policy source chosen again from `arguments`, built and applied; an unknown
/// source, an invalid policy or a refused apply keeps the live one.
fn reload_policy(
    arguments: &PolicySource,
    config: &mut RunConfig,
    datapath: &mut Datapath,
    fleet_dir: Option<&std::path::Path>,
) {
    let layout = datapath.layout().clone();
    match reload_source(arguments, &config.source, &layout, fleet_dir) {
        Ok(source) => match source.build() {
            Ok(policy) => match datapath.apply(&policy) {
                Ok(report) => {
                    log_apply(&report);
                    config.source = source;
                }
                Err(err) => log::error!(
                    "the new policy was not applied: {}",
                    crate::system::error::chain(&err)
                ),
            },
            Err(err) => log::error!("the new policy is invalid; the live one stays:\n{err}"),
        },
        Err(err) => log::error!(
            "the policy source is unknown; the live policy stays: {}",
            crate::system::error::chain(&err)
        ),
    }
}

/// What a SIGHUP needs: the signal, and the daemon's own arguments to choose the source from
/// again.
struct Reload {
    signal: tokio::signal::unix::Signal,
    arguments: PolicySource,
}

/// A source recorded by `policy apply` that the daemon follows instead of its arguments.
struct Followed {
    record: RecordedSource,
    source: PolicySource,
}

/// The recorded source of these pins, if any, logged as followed. A record whose pins are gone
/// (the datapath was removed behind `detach`'s back) speaks for nothing: it is removed, and the
/// daemon pins anew from its own arguments.
fn follow_recorded_at_start(
    arguments: &PolicySource,
    layout: &PinLayout,
) -> Result<Option<Followed>, DaemonError> {
    if layout.exists() {
        return Ok(follow_recorded(arguments, layout)?);
    }
    let path = RecordedSource::path(layout);
    if let Some(stale) = RecordedSource::load(&path)? {
        log::warn!(
            "the policy source {} recorded at {} was for a datapath no longer pinned at {}; starting from the daemon's own arguments",
            stale.file.display(),
            stale.recorded_at,
            layout.root.display()
        );
        RecordedSource::forget(&path)?;
    }
    Ok(None)
}

/// The recorded source, if there is one, with the notice that it is followed: a warning when it
/// leaves some of the daemon's arguments unused.
fn follow_recorded(
    arguments: &PolicySource,
    layout: &PinLayout,
) -> Result<Option<Followed>, SourceError> {
    let Some(record) = RecordedSource::load(&RecordedSource::path(layout))? else {
        return Ok(None);
    };
    let chosen = source::choose(&source::canonical_arguments(arguments), Some(&record));
    let notice = chosen.notice.unwrap_or_default();
    if chosen.unused.is_empty() {
        log::info!("{notice}");
    } else {
        log::warn!(
            "{notice}; unused: {} (`egress-monitor policy apply` another file to change the source)",
            chosen.unused.join(", ")
        );
    }
    Ok(Some(Followed {
        record,
        source: chosen.source,
    }))
}

/// The source a SIGHUP builds: the recorded one or the daemon's arguments, with the rules
/// discovered so far, and the fleet's policy and mode over both.
fn reload_source(
    arguments: &PolicySource,
    current: &PolicySource,
    layout: &PinLayout,
    fleet_dir: Option<&Path>,
) -> Result<PolicySource, SourceError> {
    let mut source =
        follow_recorded(arguments, layout)?.map_or_else(|| arguments.clone(), |f| f.source);
    source.discovered = current.discovered.clone();
    if let Some(dir) = fleet_dir {
        crate::fleet::follow::restore(dir, &mut source);
    }
    Ok(source)
}

fn load_names(layout: &PinLayout) -> Result<StateFile, DaemonError> {
    Ok(
        StateFile::load(&layout.state_file())?.unwrap_or_else(|| StateFile {
            version: String::new(),
            mode: egress_monitor_policy::Mode::Observe,
            applied_at: String::new(),
            groups: Vec::new(),
            rules: Vec::new(),
        }),
    )
}

fn log_apply(report: &ApplyReport) {
    log::info!("{report}");
}

/// The VNet's prefixes as rules: from IMDS, or the last known when it does not answer.
fn vnet_rules(imds: &Imds, layout: &PinLayout) -> Vec<egress_monitor_policy::Rule> {
    let prefixes =
        crate::azure::imds::prefixes_or_last_known(&imds.url, &layout.run_dir().join("imds.json"));
    log::info!(
        "VNet prefixes from the instance metadata service: {}",
        prefixes
            .iter()
            .map(|p| p.network.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    crate::azure::imds::rules(&prefixes)
}

/// Registers a ring buffer's fd with the reactor.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>, DaemonError> {
    // SAFETY: both ring buffers handed in here own their map fd (aya's MapData holds an
    // OwnedFd) and never replace it, so it stays open and the same for the AsyncFd's life.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|err| DaemonError::Poll(err.into()))
}

/// Where to attach, checked: the cgroup is a cgroup2 directory, the interfaces exist and are
/// Ethernet devices.
struct Targets {
    cgroup: Option<PathBuf>,
    interfaces: Vec<String>,
}

fn resolve_targets(config: &RunConfig) -> Result<Targets, DaemonError> {
    let cgroup = if config.hook.cgroup() {
        let path = match &config.cgroup {
            Some(path) => path.clone(),
            None => cgroup::root()?,
        };
        cgroup::open(&path)?;
        Some(path)
    } else {
        None
    };
    let interfaces = if !config.hook.tc() {
        Vec::new()
    } else if config.interfaces.is_empty() {
        egress_interfaces()?
    } else {
        for name in &config.interfaces {
            let interface = iface::lookup(name)?;
            if !interface.is_ethernet() {
                return Err(DatapathError::NotEthernet {
                    name: name.clone(),
                    link_type: interface.link_type,
                }
                .into());
            }
        }
        config.interfaces.clone()
    };
    Ok(Targets { cgroup, interfaces })
}

fn attach(datapath: &mut Datapath, targets: &Targets) -> Result<(), DaemonError> {
    if let Some(path) = &targets.cgroup {
        datapath.attach_cgroup(path)?;
    }
    for name in &targets.interfaces {
        datapath.attach_tc(name)?;
    }
    Ok(())
}

/// Every up, non-loopback interface. Non-Ethernet ones (tunnels) are named in a warning: the
/// cgroup hook still covers their local senders, the TC hook cannot parse them yet.
fn egress_interfaces() -> Result<Vec<String>, DaemonError> {
    let mut names = Vec::new();
    for interface in iface::all()? {
        if !interface.up || interface.is_loopback() {
            continue;
        }
        if interface.is_ethernet() {
            names.push(interface.name);
        } else {
            log::warn!(
                "skipping interface {} (link type {}): the TC hook supports Ethernet devices only",
                interface.name,
                interface.link_type
            );
        }
    }
    if names.is_empty() {
        return Err(DaemonError::NoInterfaces);
    }
    Ok(names)
}

/// Where the daemon's event records go, and what it counts of them.
struct Output<'a> {
    writer: &'a mut EventWriter,
    counts: &'a crate::events::counts::DaemonCounts,
    cgroups: crate::system::cgroup::PathCache,
    exes: crate::system::process::ExeCache,
    tunnel: crate::events::tunnel::TunnelScorer,
    dst_names: crate::events::dns::NameCache,
    clock: Clock,
    /// The reporter's queue, when a controller is configured.
    feed: Option<Arc<Exchange>>,
}

impl Output<'_> {
    /// What the kernel cannot say: the sender's cgroup path and executable.
    fn resolve(
        &mut self,
        cgroup_id: Option<u64>,
        pid: Option<u32>,
    ) -> (Option<String>, Option<String>) {
        (
            cgroup_id.and_then(|id| self.cgroups.path(id)),
            pid.and_then(|pid| self.exes.exe(pid)),
        )
    }

    fn write(&mut self, mut record: EventRecord) {
        (record.cgroup, record.exe) = self.resolve(record.cgroup_id, record.pid);
        record.dst_name = record.dst.and_then(|dst| self.dst_names.name(dst));
        if let Some(exchange) = &self.feed {
            exchange.feed.push(&record);
        }
        self.writer.write(&record);
    }

    fn write_answer(&mut self, mut record: DnsAnswerRecord) {
        (record.cgroup, record.exe) = self.resolve(Some(record.cgroup_id), record.pid);
        self.dst_names.learn(&record);
        self.writer.write(&record);
    }

    fn write_guard(&mut self, mut record: GuardRecord) {
        (record.cgroup, record.exe) = self.resolve(Some(record.cgroup_id), Some(record.pid));
        log::warn!(
            "raw-socket guard: pid {} ({}) set {}: {}",
            record.pid,
            record.comm,
            record.option,
            if record.action == events::Action::Dropped {
                "refused (EPERM)"
            } else {
                "allowed (observe mode)"
            }
        );
        self.writer.write(&record);
    }

    fn write_dns(&mut self, mut record: DnsRecord) {
        (record.cgroup, record.exe) = self.resolve(record.cgroup_id, record.pid);
        record.tunnel = self.tunnel.score(&record.name);
        self.writer.write(&record);
    }

    /// Ends a batch: readers see its records, the metrics their counts.
    fn flush(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.writer.flush();
        self.counts
            .events_written
            .store(self.writer.written(), Relaxed);
        self.counts
            .events_unwritten
            .store(self.writer.unwritten(), Relaxed);
    }
}

fn drain(ring: &mut RingBuf<MapData>, names: &StateFile, out: &mut Output) {
    out.clock.follow();
    let mut any = false;
    while let Some(item) = ring.next() {
        any = true;
        let written = match events::decode(&item) {
            Ok(KernelRecord::Packet(event)) => {
                EventRecord::new(&event, names, &out.clock).map(|record| out.write(record))
            }
            Ok(KernelRecord::DnsAnswer(event)) => DnsAnswerRecord::new(&event, names, &out.clock)
                .map(|record| out.write_answer(record)),
            Ok(KernelRecord::DnsQuery(event)) => {
                DnsRecord::query(&event, names, &out.clock).map(|record| out.write_dns(record))
            }
            Ok(KernelRecord::Guard(event)) => {
                GuardRecord::new(&event, &out.clock).map(|record| out.write_guard(record))
            }
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            log::error!("skipping an unreadable event: {err}");
        }
    }
    if any {
        out.flush();
    }
}

/// Writes an update for every flow that sent packets since its previous report. A failure is
/// logged and the daemon goes on: the counts stay in the kernel for the next sweep.
fn report_flows(flows: &mut FlowReporter, names: &StateFile, out: &mut Output) {
    use std::sync::atomic::Ordering::Relaxed;
    let updates = match flows.sweep() {
        Ok(updates) => updates,
        Err(err) => {
            log::error!(
                "cannot read the flows: {}",
                crate::system::error::chain(&err)
            );
            return;
        }
    };
    out.clock.follow();
    for update in &updates {
        match EventRecord::update(update, names, &out.clock) {
            Ok(record) => out.write(record),
            Err(err) => log::error!("skipping an unreadable flow: {err}"),
        }
    }
    out.counts.flow_updates.store(flows.updates(), Relaxed);
    out.counts.flows_evicted.store(flows.evicted(), Relaxed);
    if !updates.is_empty() {
        out.flush();
    }
}

pub fn summary_line(counters: &Counters) -> String {
    let hook = |name: &str, c: &crate::datapath::HookCounters| {
        format!(
            "{name}: {} allowed, {} denied-observed, {} denied-dropped",
            c.allowed.packets, c.denied_observed.packets, c.denied_dropped.packets
        )
    };
    format!(
        "{}; {}; {} events lost, {} malformed, {} non-IP denied",
        hook("cgroup", &counters.cgroup),
        hook("tc", &counters.tc),
        counters.events_lost,
        counters.malformed,
        counters.not_ip
    )
}

/// The rules that matched, most hits first: `private 10.0.0.0/8=12, lab 10.1.2.0/24=3`.
fn rule_hits_line(layout: &PinLayout) -> Result<Option<String>, DaemonError> {
    let hits = status::status(layout)?.rule_hits;
    Ok((!hits.is_empty()).then(|| {
        hits.iter()
            .map(|rule| format!("{} {}={}", rule.name, rule.cidr, rule.hits))
            .collect::<Vec<_>>()
            .join(", ")
    }))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg and ignore it.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}
