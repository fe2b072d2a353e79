//! What only the daemon counts (events written, flow updates, reports), as opposed to the
//! kernel's counters in the pinned maps. The daemon's loops and the reporter add to it; the
//! metrics endpoint and the reports read it.

use std::sync::atomic::AtomicU64;

/// Counts only the daemon has, shared by its loops, the reporter and the scrape handler.
#[derive(Debug, Default)]
pub struct DaemonCounts {
    pub events_written: AtomicU64,
    pub events_unwritten: AtomicU64,
    /// Flow updates written (also in `events_written`).
    pub flow_updates: AtomicU64,
    /// Flows forgotten by the kernel's LRU map before their last packets were reported.
    pub flows_evicted: AtomicU64,
    /// Reports the controller acknowledged, refused as invalid, or the full spool dropped;
    /// and those waiting in the spool (all zero without `--controller`).
    pub reports_delivered: AtomicU64,
    pub reports_rejected: AtomicU64,
    pub reports_dropped: AtomicU64,
    pub reports_pending: AtomicU64,
}
