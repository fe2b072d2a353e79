//! The daemon's half of flow aggregation (the protocol: `egress_monitor_common::flow`).
//!
//! The kernel makes an event of each flow's first denied packet and only counts the rest. Once
//! per interval, [`FlowReporter::sweep`] starts a new reporting period, pops the flows that had
//! packets in the one that ended, and returns what each accumulated since its previous report.
//! What was reported is kept in the pinned `FLOW_REPORTED` map, so the reports of a flow add up
//! to exactly its packets, across daemon restarts too.

use std::collections::HashSet;

use egress_monitor_common::{
    event::Event,
    flow::{FlowKey, FlowReported},
};

use crate::{
    datapath::pins::PinLayout,
    datapath::{DatapathError, FlowMaps},
};

/// What one flow sent since its previous report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowUpdate {
    /// The event of the flow's first packet (addresses, ports, process, rule).
    pub first: Event,
    /// Packets and IP bytes since the previous report.
    pub packets: u64,
    pub bytes: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the latest packet.
    pub last_seen_ns: u64,
}

/// Reads and reports the kernel's flows.
pub struct FlowReporter {
    maps: FlowMaps,
    /// No sweep yet: the first also takes what older periods left.
    first: bool,
    generation: u64,
    updates: u64,
    evicted: u64,
}

impl FlowReporter {
    /// Opens the flow maps pinned at `layout`. Aggregation is on from the first [`sweep`].
    ///
    /// [`sweep`]: FlowReporter::sweep
    pub fn open(layout: &PinLayout) -> Result<FlowReporter, DatapathError> {
        let maps = FlowMaps::open(layout)?;
        Ok(FlowReporter {
            generation: maps.generation()?,
            maps,
            first: true,
            updates: 0,
            evicted: 0,
        })
    }

    /// Ends the current reporting period (starting one if aggregation was off) and returns,
    /// oldest activity first, the update of every flow with packets not yet reported.
    pub fn sweep(&mut self) -> Result<Vec<FlowUpdate>, DatapathError> {
        let ended = self.generation;
        let mut keys = HashSet::new();
        if self.first {
            // What an older period left (a daemon killed between advancing and popping).
            self.pop_all((ended as usize + 1) & 1, &mut keys)?;
            self.first = false;
        }
        // Advanced before the ended period's queue is read: a packet counted from here on
        // queues its flow on the other queue, for the next sweep (the kernel reads the
        // generation after counting).
        self.generation = match ended.wrapping_add(1) {
            0 => 1,
            next => next,
        };
        self.maps.set_generation(self.generation)?;
        self.pop_all(ended as usize & 1, &mut keys)?;
        let mut updates = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(flow) = self.maps.flow(&key)? else {
                // Forgotten by the LRU map between its packets and this sweep (more flows than
                // it holds): what it sent since its last report is in the counters and
                // metrics, not in an event.
                self.evicted += 1;
                continue;
            };
            let before = self
                .maps
                .reported(&key)
                .filter(|r| r.first_ts_boot_ns == flow.first.ts_boot_ns)
                // Never reported since its first event, which stood for one packet.
                .unwrap_or(FlowReported {
                    first_ts_boot_ns: flow.first.ts_boot_ns,
                    packets: 1,
                    bytes: u64::from(flow.first.len),
                });
            let packets = flow.packets.saturating_sub(before.packets);
            if packets == 0 {
                continue;
            }
            updates.push(FlowUpdate {
                first: flow.first,
                packets,
                bytes: flow.bytes.saturating_sub(before.bytes),
                last_seen_ns: flow.last_seen_ns,
            });
            let now = FlowReported {
                first_ts_boot_ns: flow.first.ts_boot_ns,
                packets: flow.packets,
                bytes: flow.bytes,
            };
            self.maps.set_reported(&key, &now)?;
        }
        updates.sort_by_key(|update| update.last_seen_ns);
        self.updates += updates.len() as u64;
        Ok(updates)
    }

    fn pop_all(&mut self, parity: usize, keys: &mut HashSet<FlowKey>) -> Result<(), DatapathError> {
        while let Some(key) = self.maps.pop_dirty(parity)? {
            keys.insert(key);
        }
        Ok(())
    }

    /// Turns aggregation off: from now on every denied packet is an event of its own. Call
    /// [`sweep`](FlowReporter::sweep) first to report what the flows hold.
    pub fn disable(&mut self) -> Result<(), DatapathError> {
        self.generation = 0;
        self.maps.set_generation(0)
    }

    /// Flow updates reported so far by this reporter.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Flows whose unreported packets were forgotten before a sweep could read them.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}
