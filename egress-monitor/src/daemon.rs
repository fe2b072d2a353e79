//! `egress-monitor run`: load, attach, stream events until asked to stop.
//!
//! [`run`] takes its shutdown signal as a future, so tests drive the daemon in-process exactly
//! as the binary does with SIGINT/SIGTERM.

use std::{future::Future, io, path::PathBuf, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    cgroup::{self, CgroupError},
    datapath::{Attachment, Counters, Datapath, DatapathError},
    events::{self, Clock, EventRecord, EventWriter, EventsTarget},
    iface::{self, InterfaceError},
    policy::Policy,
};

/// Which programs to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// cgroup_skb egress on a cgroup: every local socket, any network namespace.
    Cgroup,
    /// TC egress on interfaces: everything leaving them, forwarded traffic too.
    Tc,
    /// Both (what enforce mode on a real node wants).
    Both,
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
    pub policy: Policy,
    pub hook: HookChoice,
    /// The cgroup to attach to; the root of the cgroup2 hierarchy when `None`.
    pub cgroup: Option<PathBuf>,
    /// Interfaces for the TC hook; every up, non-loopback interface when empty.
    pub interfaces: Vec<String>,
    pub events: EventsTarget,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    #[error("no interface to attach the TC hook to: none is up apart from loopback")]
    NoInterfaces,
    #[error("cannot open the event output {path}")]
    EventsOpen {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot poll the event ring buffer")]
    Poll(#[source] io::Error),
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub attachments: Vec<Attachment>,
    pub counters: Counters,
    pub events_written: u64,
    /// Events the output did not accept (see [`EventWriter`]).
    pub events_unwritten: u64,
}

/// Upper bound on how long an event may wait in the ring buffer when no wake-up comes.
const DRAIN_INTERVAL: Duration = Duration::from_millis(200);

/// Loads and attaches the datapath, then writes every event until `shutdown` completes.
/// Detaches on return (the programs go with the daemon; pinning comes with durable mode).
pub async fn run(
    config: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, DaemonError> {
    raise_memlock_limit();
    let mut writer =
        EventWriter::open(&config.events).map_err(|source| DaemonError::EventsOpen {
            path: config.events.to_string(),
            source,
        })?;
    let mut datapath = Datapath::load(&config.policy)?;
    let ring = datapath.take_events()?;
    let logger = datapath.take_logger();
    attach(&mut datapath, &config)?;
    for attachment in datapath.attachments() {
        match attachment {
            Attachment::Cgroup { path } => log::info!(
                "attached cgroup egress hook to {} ({} mode)",
                path.display(),
                config.policy.mode
            ),
            Attachment::Tc { interface, ifindex } => log::info!(
                "attached TC egress hook to {interface} (ifindex {ifindex}, {} mode)",
                config.policy.mode
            ),
        }
    }
    log::info!(
        "{} rules loaded; events to {}",
        config.policy.rules.len(),
        config.events
    );

    let mut ring = watch(ring)?;
    let mut logger = logger.map(watch).transpose()?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(DaemonError::Poll)?;
                drain(guard.get_inner_mut(), &config.policy, &mut writer);
                guard.clear_ready();
            }
            guard = async { logger.as_mut().expect("guarded").readable_mut().await }, if logger.is_some() => {
                let mut guard = guard.map_err(DaemonError::Poll)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => {
                drain(ring.get_mut(), &config.policy, &mut writer);
            }
        }
    }
    // Whatever arrived before the stop is written, not lost.
    drain(ring.get_mut(), &config.policy, &mut writer);
    let counters = datapath.counters()?;
    log::info!(
        "stopping: {}; {} events written, {} unwritten",
        summary_line(&counters),
        writer.written(),
        writer.unwritten()
    );
    let hits = datapath.rule_hits(config.policy.rules.len())?;
    if let Some(line) = rule_hits_line(&config.policy, &hits) {
        log::info!("rule hits: {line}");
    }
    Ok(Summary {
        attachments: datapath.attachments().to_vec(),
        counters,
        events_written: writer.written(),
        events_unwritten: writer.unwritten(),
    })
}

/// Registers a ring buffer's fd with the reactor.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>, DaemonError> {
    // SAFETY: both ring buffers handed in here own their map fd (aya's MapData holds an
    // OwnedFd) and never replace it, so it stays open and the same for the AsyncFd's life.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|err| DaemonError::Poll(err.into()))
}

fn attach(datapath: &mut Datapath, config: &RunConfig) -> Result<(), DaemonError> {
    if config.hook.cgroup() {
        let path = match &config.cgroup {
            Some(path) => path.clone(),
            None => cgroup::root()?,
        };
        datapath.attach_cgroup(&path)?;
    }
    if config.hook.tc() {
        let names = if config.interfaces.is_empty() {
            egress_interfaces()?
        } else {
            config.interfaces.clone()
        };
        for name in names {
            datapath.attach_tc(&name)?;
        }
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

fn drain(ring: &mut RingBuf<MapData>, policy: &Policy, writer: &mut EventWriter) {
    let clock = Clock::now();
    let mut any = false;
    while let Some(item) = ring.next() {
        any = true;
        match events::decode(&item).and_then(|event| EventRecord::new(&event, policy, &clock)) {
            Ok(record) => writer.write(&record),
            Err(err) => log::error!("skipping an unreadable event: {err}"),
        }
    }
    if any {
        writer.flush();
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
fn rule_hits_line(policy: &Policy, hits: &[u64]) -> Option<String> {
    let mut hit: Vec<(u64, &crate::policy::Rule)> = hits
        .iter()
        .zip(&policy.rules)
        .filter(|(count, _)| **count > 0)
        .map(|(count, rule)| (*count, rule))
        .collect();
    hit.sort_by_key(|(count, _)| std::cmp::Reverse(*count));
    (!hit.is_empty()).then(|| {
        hit.iter()
            .map(|(count, rule)| format!("{} {}={count}", rule.name, rule.network))
            .collect::<Vec<_>>()
            .join(", ")
    })
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
