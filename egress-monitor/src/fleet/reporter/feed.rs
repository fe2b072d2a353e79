//! Flow events on their way from the daemon's event loop to the reporter: a bounded queue
//! in memory until the next report takes them (at most one interval, or sooner when a
//! report's worth has gathered). A queue at its bound drops the oldest and counts them.

use std::{collections::VecDeque, sync::Mutex};

use egress_monitor_api::wire::{FlowEvent, MAX_EVENTS_PER_REPORT, MAX_TEXT};

use crate::events::{Action, EventRecord, dns::DnsRecord};

/// Events held in memory at most (about 40 MB); the spool on disk takes over from there.
pub const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct Feed {
    inner: Mutex<Inner>,
    /// Wakes the reporter when a report's worth of events is waiting.
    pub full: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    events: VecDeque<FlowEvent>,
    dropped: u64,
}

impl Feed {
    /// Queues a denied flow's event.
    pub fn push(&self, record: &EventRecord) {
        self.queue(flow_event(record));
    }

    /// Queues a DNS question the controller should see: one a domain policy refused (or
    /// would, in observe mode), or whose name looks like tunnelling. Others stay local.
    pub fn push_dns(&self, record: &DnsRecord) {
        if record.action != Action::Allowed || record.tunnel.suspicious {
            self.queue(dns_event(record));
        }
    }

    fn queue(&self, event: FlowEvent) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.events.len() >= CAPACITY {
            inner.events.pop_front();
            inner.dropped += 1;
        }
        inner.events.push_back(event);
        if inner.events.len() == MAX_EVENTS_PER_REPORT {
            self.full.notify_one();
        }
    }

    /// Takes up to one report's worth of events, oldest first.
    pub fn take(&self) -> Vec<FlowEvent> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = inner.events.len().min(MAX_EVENTS_PER_REPORT);
        inner.events.drain(..n).collect()
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }
}

/// Text the controller accepts: control characters (a process may name itself anything)
/// become `?`, and it is cut to the controller's limit.
fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if out.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn flow_event(record: &EventRecord) -> FlowEvent {
    FlowEvent {
        // Always readable (the daemon wrote it); were it not, the time it was queued.
        ts_ms: egress_monitor_api::time::parse_rfc3339_ms(&record.ts)
            .unwrap_or_else(egress_monitor_api::time::now_ms),
        kind: record.kind,
        hook: record.hook,
        action: record.action,
        proto: record.proto.to_string(),
        src: record.src,
        dst: record.dst,
        dst_port: record.dst_port,
        dst_name: record.dst_name.as_deref().map(clean),
        rule: clean(&record.rule),
        pid: record.pid,
        comm: record.comm.as_deref().map(clean),
        exe: record.exe.as_deref().map(clean),
        cgroup: record.cgroup.as_deref().map(clean),
        packets: record.packets.max(1),
        bytes: record.bytes,
        tunnel_score: None,
    }
}

/// A DNS question as the controller stores violations: the resolver as the destination, the
/// name asked as its name; an allowed question (flagged for its name) counts as observed.
fn dns_event(record: &DnsRecord) -> FlowEvent {
    FlowEvent {
        ts_ms: egress_monitor_api::time::parse_rfc3339_ms(&record.ts)
            .unwrap_or_else(egress_monitor_api::time::now_ms),
        kind: egress_monitor_api::wire::FlowKind::Dns,
        hook: record.hook,
        action: record
            .action
            .denied()
            .unwrap_or(egress_monitor_api::wire::DeniedAction::Observed),
        proto: record.proto.to_string(),
        src: None,
        dst: Some(record.server),
        dst_port: Some(53),
        dst_name: Some(clean(&record.name)),
        rule: clean(&record.rule),
        pid: record.pid,
        comm: record.comm.as_deref().map(clean),
        exe: record.exe.as_deref().map(clean),
        cgroup: record.cgroup.as_deref().map(clean),
        packets: u64::from(record.repeats) + 1,
        bytes: 0,
        tunnel_score: Some(record.tunnel.score.min(100)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_made_acceptable() {
        assert_eq!(super::clean("evil\nname\u{7}"), "evil?name?");
        let long = "é".repeat(3000);
        let cleaned = super::clean(&long);
        assert!(cleaned.len() <= super::MAX_TEXT && cleaned.chars().all(|c| c == 'é'));
    }
}
