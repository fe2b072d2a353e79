//! What changes the live policy while the daemon runs: SIGHUP (the source chosen again), the
//! fleet's wishes, the VNet as IMDS reports it.

// The daemon's types, its imports and its other parts.
use super::*;

/// The VNet's prefixes as IMDS reports them now, applied when they changed; an error changes
/// nothing.
pub(super) fn rediscover_vnet(config: &mut RunConfig, datapath: &mut Datapath, layout: &PinLayout) {
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
pub(super) fn follow_fleet(
    update: FleetUpdate,
    link: &FleetLink,
    config: &mut RunConfig,
    datapath: &mut Datapath,
    arguments: &PolicySource,
) {
    let mut state = link.exchange.following();
    // The fleet no longer sets what it set (a rolled-back rollout): the node returns to its
    // own policy or mode, as a restart with the fleet's record would build it.
    if let Some(released) = crate::fleet::follow::release(&link.dir, update.desired, &state) {
        let layout = datapath.layout().clone();
        match reload_source(arguments, &config.source, &layout, Some(&link.dir)) {
            Ok(source) => {
                config.source = source;
                state = released;
            }
            Err(err) => log::error!(
                "cannot return to the node's own policy source: {}",
                crate::system::error::chain(&err)
            ),
        }
    }
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
pub(super) fn reload_policy(
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
pub(super) struct Reload {
    pub(super) signal: tokio::signal::unix::Signal,
    pub(super) arguments: PolicySource,
}

/// A source recorded by `policy apply` that the daemon follows instead of its arguments.
pub(super) struct Followed {
    pub(super) record: RecordedSource,
    pub(super) source: PolicySource,
}

/// The recorded source of these pins, if any, logged as followed. A record whose pins are gone
/// (the datapath was removed behind `detach`'s back) speaks for nothing: it is removed, and the
/// daemon pins anew from its own arguments.
pub(super) fn follow_recorded_at_start(
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
pub(super) fn follow_recorded(
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
pub(super) fn reload_source(
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
