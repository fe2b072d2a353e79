//! Start-up and stop: the policy source followed at start, the fleet link, the VNet, the
//! targets checked and attached, and the summary a stopping daemon logs.

// The daemon's types, its imports and its other parts.
use super::*;

/// Builds from the source `policy apply` recorded, when there is one (see [`crate::daemon::source`]).
pub(super) fn follow_recorded_source(
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
pub(super) fn connect_fleet(
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
        let invalid = |source| DaemonError::FleetPolicy {
            dir: reporter_config.spool_dir.display().to_string(),
            source,
        };
        // Checked as the controller and `apply` check it: a policy kept by an older version
        // that names a service tags file is refused, not read from the spool directory.
        crate::fleet::follow::check_kept(&reporter_config.spool_dir).map_err(invalid)?;
        config.policy = config.source.build().map_err(invalid)?;
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
pub(super) fn discover_vnet(config: &mut RunConfig, layout: &PinLayout) -> Result<(), DaemonError> {
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
pub(super) fn open_and_attach(
    config: &RunConfig,
    layout: &PinLayout,
    targets: &Targets,
) -> Result<Datapath, DaemonError> {
    // Prefix and domain rules take ids from the same slots.
    let needed = (config.policy.rules.len() + config.policy.domains.len()) * 2;
    let capacity = config.rule_capacity.max(needed);
    let minimum = egress_monitor_common::maps::DEFAULT_RULE_CAPACITY as usize;
    if capacity < minimum {
        log::info!(
            "--rule-capacity {} is below the minimum: new maps get {minimum} rule slots",
            config.rule_capacity
        );
    } else if capacity > config.rule_capacity {
        log::info!(
            "--rule-capacity {} is raised to {capacity}: twice the policy's {} rules, so that a \
             change can hold old and new rules at once",
            config.rule_capacity,
            needed / 2
        );
    }
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
pub(super) fn stopped_summary(
    datapath: &Datapath,
    writer: &EventWriter,
) -> Result<Summary, DaemonError> {
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

pub(super) fn log_apply(report: &ApplyReport) {
    log::info!("{report}");
}

/// The VNet's prefixes as rules: from IMDS, or the last known when it does not answer.
pub(super) fn vnet_rules(imds: &Imds, layout: &PinLayout) -> Vec<egress_monitor_policy::Rule> {
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

/// Where to attach, checked: the cgroup is a cgroup2 directory, the interfaces exist and are
/// Ethernet devices.
pub(super) struct Targets {
    pub(super) cgroup: Option<PathBuf>,
    pub(super) interfaces: Vec<String>,
}

pub(super) fn resolve_targets(config: &RunConfig) -> Result<Targets, DaemonError> {
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

pub(super) fn attach(datapath: &mut Datapath, targets: &Targets) -> Result<(), DaemonError> {
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
pub(super) fn egress_interfaces() -> Result<Vec<String>, DaemonError> {
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
pub(super) fn rule_hits_line(layout: &PinLayout) -> Result<Option<String>, DaemonError> {
    let hits = status::status(layout)?.rule_hits;
    Ok((!hits.is_empty()).then(|| {
        hits.iter()
            .map(|rule| format!("{} {}={}", rule.name, rule.cidr, rule.hits))
            .collect::<Vec<_>>()
            .join(", ")
    }))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg and ignore it.
pub(super) fn raise_memlock_limit() {
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
