//! Kernel records to the event output: drained from the ring buffer, resolved (cgroup paths,
//! executables, names), written, and handed to the reporter; flow updates each interval.

// The daemon's types, its imports and its other parts.
use super::*;

pub(super) fn load_names(layout: &PinLayout) -> Result<StateFile, DaemonError> {
    Ok(
        StateFile::load(&layout.state_file())?.unwrap_or_else(|| StateFile {
            version: String::new(),
            mode: egress_monitor_policy::Mode::Observe,
            mode_source: String::new(),
            applied_at: String::new(),
            groups: Vec::new(),
            rules: Vec::new(),
        }),
    )
}

/// Registers a ring buffer's fd with the reactor.
pub(super) fn watch<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>, DaemonError> {
    // SAFETY: both ring buffers handed in here own their map fd (aya's MapData holds an
    // OwnedFd) and never replace it, so it stays open and the same for the AsyncFd's life.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|err| DaemonError::Poll(err.into()))
}

/// Where the daemon's event records go, and what it counts of them.
pub(super) struct Output<'a> {
    pub(super) writer: &'a mut EventWriter,
    pub(super) counts: &'a crate::events::counts::DaemonCounts,
    pub(super) cgroups: crate::system::cgroup::PathCache,
    pub(super) exes: crate::system::process::ExeCache,
    pub(super) tunnel: crate::events::tunnel::TunnelScorer,
    pub(super) dst_names: crate::events::dns::NameCache,
    pub(super) clock: Clock,
    /// The reporter's queue, when a controller is configured.
    pub(super) feed: Option<Arc<Exchange>>,
}

impl Output<'_> {
    /// What the kernel cannot say: the sender's cgroup path and executable.
    pub(super) fn resolve(
        &mut self,
        cgroup_id: Option<u64>,
        pid: Option<u32>,
    ) -> (Option<String>, Option<String>) {
        (
            cgroup_id.and_then(|id| self.cgroups.path(id)),
            pid.and_then(|pid| self.exes.exe(pid)),
        )
    }

    pub(super) fn write(&mut self, mut record: EventRecord) {
        (record.cgroup, record.exe) = self.resolve(record.cgroup_id, record.pid);
        record.dst_name = record.dst.and_then(|dst| self.dst_names.name(dst));
        if let Some(exchange) = &self.feed {
            exchange.feed.push(&record);
        }
        self.writer.write(&record);
    }

    pub(super) fn write_answer(&mut self, mut record: DnsAnswerRecord) {
        (record.cgroup, record.exe) = self.resolve(Some(record.cgroup_id), record.pid);
        self.dst_names.learn(&record);
        self.writer.write(&record);
    }

    pub(super) fn write_guard(&mut self, mut record: GuardRecord) {
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

    pub(super) fn write_dns(&mut self, mut record: DnsRecord) {
        (record.cgroup, record.exe) = self.resolve(record.cgroup_id, record.pid);
        record.tunnel = self.tunnel.score(&record.name);
        if let Some(exchange) = &self.feed {
            exchange.feed.push_dns(&record);
        }
        self.writer.write(&record);
    }

    /// Ends a batch: readers see its records, the metrics their counts.
    pub(super) fn flush(&mut self) {
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

pub(super) fn drain(ring: &mut RingBuf<MapData>, names: &StateFile, out: &mut Output) {
    out.clock.follow();
    while let Some(item) = ring.next() {
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
    // Every drain, written or not: a moved events file is reopened within one drain interval.
    out.flush();
}

/// Writes an update for every flow that sent packets since its previous report. A failure is
/// logged and the daemon goes on: the counts stay in the kernel for the next sweep.
pub(super) fn report_flows(flows: &mut FlowReporter, names: &StateFile, out: &mut Output) {
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
