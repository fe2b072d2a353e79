//! Per-node quotas: reports per minute (a token bucket: a node catching up from its spool is
//! paced, never starved) and bytes per day (UTC). A node over either gets 429 with
//! `Retry-After`, which the node's reporter obeys, keeping its reports spooled. Each replica
//! meters what it receives; behind a load balancer a node's quota is per replica.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// The limits (`--quota-reports-per-minute`, `--quota-mib-per-day`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    pub reports_per_minute: u32,
    pub bytes_per_day: u64,
}

impl Default for Quotas {
    /// Far above a busy honest node (one report per 10 s, even at the largest reports).
    fn default() -> Quotas {
        Quotas {
            reports_per_minute: DEFAULT_REPORTS_PER_MINUTE,
            bytes_per_day: DEFAULT_MIB_PER_DAY << 20,
        }
    }
}

pub const DEFAULT_REPORTS_PER_MINUTE: u32 = 120;
pub const DEFAULT_MIB_PER_DAY: u64 = 4096;

const DAY_MS: u64 = 86_400_000;

/// Why a report waits, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverQuota {
    pub retry_after: Duration,
    pub message: String,
}

#[derive(Debug)]
struct Usage {
    /// Reports the node may send now (fractions refill continuously).
    tokens: f64,
    refilled_ms: u64,
    /// The UTC day (`ms / DAY_MS`) `bytes` counts.
    day: u64,
    bytes: u64,
}

/// What every node used, in memory.
#[derive(Debug, Default)]
pub struct Meter {
    usage: Mutex<HashMap<String, Usage>>,
}

impl Meter {
    /// Admits a report of `bytes` from `node` at `now_ms`, or says how long it must wait. A
    /// refused report uses nothing.
    pub fn admit(
        &self,
        quotas: &Quotas,
        node: &str,
        bytes: u64,
        now_ms: u64,
    ) -> Result<(), OverQuota> {
        let capacity = f64::from(quotas.reports_per_minute);
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let entry = usage.entry(node.to_owned()).or_insert(Usage {
            tokens: capacity,
            refilled_ms: now_ms,
            day: now_ms / DAY_MS,
            bytes: 0,
        });
        let elapsed_ms = now_ms.saturating_sub(entry.refilled_ms);
        entry.tokens = (entry.tokens + elapsed_ms as f64 * capacity / 60_000.0).min(capacity);
        entry.refilled_ms = now_ms;
        if entry.day != now_ms / DAY_MS {
            (entry.day, entry.bytes) = (now_ms / DAY_MS, 0);
        }
        if entry.bytes.saturating_add(bytes) > quotas.bytes_per_day {
            let next_day_ms = (entry.day + 1) * DAY_MS;
            return Err(OverQuota {
                retry_after: Duration::from_millis(next_day_ms - now_ms)
                    .max(Duration::from_secs(1)),
                message: format!(
                    "node `{node}` sent {} MiB today, its quota is {} MiB a day: retry after midnight UTC",
                    entry.bytes >> 20,
                    quotas.bytes_per_day >> 20
                ),
            });
        }
        if entry.tokens < 1.0 {
            let wait_ms = ((1.0 - entry.tokens) * 60_000.0 / capacity).ceil() as u64;
            return Err(OverQuota {
                retry_after: Duration::from_millis(wait_ms).max(Duration::from_secs(1)),
                message: format!(
                    "node `{node}` sends more than {} reports a minute: retry in {} s",
                    quotas.reports_per_minute,
                    wait_ms.div_ceil(1000)
                ),
            });
        }
        entry.tokens -= 1.0;
        entry.bytes += bytes;
        Ok(())
    }

    /// Forgets nodes idle for a day (their buckets would be full again anyway).
    pub fn forget_idle(&self, now_ms: u64) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.retain(|_, u| now_ms.saturating_sub(u.refilled_ms) < DAY_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_paced_and_other_nodes_are_not_touched() {
        let quotas = Quotas {
            reports_per_minute: 6,
            bytes_per_day: 1 << 20,
        };
        let meter = Meter::default();
        let t = 10 * DAY_MS + 1_000;
        for _ in 0..6 {
            meter.admit(&quotas, "a", 100, t).unwrap();
        }
        let over = meter.admit(&quotas, "a", 100, t).unwrap_err();
        assert_eq!(over.retry_after, Duration::from_secs(10), "{over:?}");
        assert!(
            over.message.contains("more than 6 reports a minute"),
            "{over:?}"
        );
        meter.admit(&quotas, "b", 100, t).unwrap();
        // Ten seconds later one more report fits: paced, not starved.
        meter.admit(&quotas, "a", 100, t + 10_000).unwrap();
        assert!(meter.admit(&quotas, "a", 100, t + 10_000).is_err());
    }

    #[test]
    fn bytes_per_day_wait_for_the_next_utc_day() {
        let quotas = Quotas {
            reports_per_minute: 1000,
            bytes_per_day: 1000,
        };
        let meter = Meter::default();
        let t = 3 * DAY_MS + DAY_MS - 5_000;
        meter.admit(&quotas, "a", 900, t).unwrap();
        let over = meter.admit(&quotas, "a", 200, t).unwrap_err();
        assert_eq!(over.retry_after, Duration::from_secs(5));
        meter.admit(&quotas, "a", 200, t + 5_000).unwrap();
    }
}
