//! The kernel's counters, summed over CPUs.

use aya::maps::{MapData, PerCpuArray};
use egress_monitor_common::{
    maps::{self as names, Counter, counter_index, stat},
    verdict::{hook, outcome},
};
use serde::Serialize;

use super::{Datapath, DatapathError, maps::open_map};

/// Packets and bytes (of the IP packet) summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// Per outcome, for one hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HookCounters {
    pub allowed: Totals,
    pub denied_observed: Totals,
    pub denied_dropped: Totals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub cgroup: HookCounters,
    pub tc: HookCounters,
    pub events_lost: u64,
    /// IP packets whose header could not be read (denied, and in the outcome counters too).
    pub malformed: u64,
    /// TC: non-IP frames other than ARP (denied, and in the outcome counters too).
    pub not_ip: u64,
    /// TC: ARP frames (passed; not in the outcome counters, which are about IP).
    pub arp: u64,
    /// Denied packets counted in their flow instead of getting an event of their own.
    pub aggregated: u64,
    /// Times a flow could not be queued for its report (the queue was full).
    pub flow_queue_full: u64,
    /// DNS questions that left, and those denied for their name.
    pub dns_queries_allowed: u64,
    pub dns_queries_denied: u64,
    /// DNS answers whose addresses a domain rule let the kernel learn.
    pub dns_answers_learned: u64,
    /// DNS answers for an allowed name that taught nothing: not from a trusted resolver, not
    /// to a socket of a trusted namespace, or answering no question the socket asked.
    pub dns_answers_untrusted: u64,
    /// Packets denied because they name further destinations (source routes, routing headers).
    pub source_routed: u64,
    /// Guarded socket options refused (enforce) or reported (observe).
    pub raw_guard_hits: u64,
    /// Packets allowed because their socket opened to a learned address while it was allowed.
    pub learned_socket_passes: u64,
    /// Denied packets TC left uncounted and unreported in observe mode: the cgroup hook had
    /// judged and reported them (both hooks attached).
    pub judged_by_cgroup: u64,
}

impl Datapath {
    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let counters: PerCpuArray<MapData, Counter> = open_map(&self.target, names::COUNTERS)?;
        let read = |hook_code: u8, result: u32| -> Result<Totals, DatapathError> {
            let values = counters
                .get(&counter_index(hook_code, result), 0)
                .map_err(DatapathError::map(names::COUNTERS, "read"))?;
            Ok(values.iter().fold(Totals::default(), |sum, c| Totals {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            }))
        };
        let per_hook = |hook_code: u8| -> Result<HookCounters, DatapathError> {
            Ok(HookCounters {
                allowed: read(hook_code, outcome::ALLOWED)?,
                denied_observed: read(hook_code, outcome::DENIED_OBSERVED)?,
                denied_dropped: read(hook_code, outcome::DENIED_DROPPED)?,
            })
        };
        let stats = self.per_cpu_sums(names::STATS)?;
        let stat_at = |slot: u32| stats.get(slot as usize).copied().unwrap_or(0);
        Ok(Counters {
            cgroup: per_hook(hook::CGROUP)?,
            tc: per_hook(hook::TC)?,
            events_lost: stat_at(stat::EVENTS_LOST),
            malformed: stat_at(stat::MALFORMED),
            not_ip: stat_at(stat::NOT_IP),
            arp: stat_at(stat::ARP),
            aggregated: stat_at(stat::AGGREGATED),
            flow_queue_full: stat_at(stat::FLOW_QUEUE_FULL),
            dns_queries_allowed: stat_at(stat::DNS_QUERIES_ALLOWED),
            dns_queries_denied: stat_at(stat::DNS_QUERIES_DENIED),
            dns_answers_learned: stat_at(stat::DNS_ANSWERS_LEARNED),
            dns_answers_untrusted: stat_at(stat::DNS_ANSWERS_UNTRUSTED),
            source_routed: stat_at(stat::SOURCE_ROUTED),
            raw_guard_hits: stat_at(stat::RAW_GUARD_HITS),
            learned_socket_passes: stat_at(stat::LEARNED_SOCKET_PASSES),
            judged_by_cgroup: stat_at(stat::JUDGED_BY_CGROUP),
        })
    }

    /// Hits per rule id, summed over CPUs.
    pub fn rule_hits(&self) -> Result<Vec<u64>, DatapathError> {
        self.per_cpu_sums(names::RULE_HITS)
    }

    fn per_cpu_sums(&self, name: &'static str) -> Result<Vec<u64>, DatapathError> {
        let array: PerCpuArray<MapData, u64> = open_map(&self.target, name)?;
        array
            .iter()
            .map(|values| {
                values
                    .map(|values| values.iter().sum())
                    .map_err(DatapathError::map(name, "read"))
            })
            .collect()
    }
}
