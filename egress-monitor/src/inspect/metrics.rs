//! `run --metrics ADDR`: Prometheus (OpenMetrics text) at `/metrics`. Every value is read from
//! the pinned maps at scrape time, so the metrics are the kernel's counters, not a copy that
//! could drift; what only the daemon knows (events written) comes from [`DaemonCounts`].
//!
//! | metric | labels |
//! |---|---|
//! | `egress_monitor_packets_total`, `egress_monitor_bytes_total` | `hook`, `verdict` (allowed, denied), `action` (pass, observed, dropped) |
//! | `egress_monitor_rule_hits_total` | `rule`, `cidr` |
//! | `egress_monitor_events_written_total`, `_unwritten_total`, `_lost_total` | |
//! | `egress_monitor_packets_aggregated_total`, `_flow_updates_total`, `_flows_evicted_total`, `_flow_queue_full_total`, `_packets_judged_by_cgroup_total` | |
//! | `egress_monitor_dns_queries_total` | `verdict` (allowed, denied) |
//! | `egress_monitor_dns_answers_learned_total`, `egress_monitor_dns_allowed_addresses` | |
//! | `egress_monitor_malformed_packets_total`, `_non_ip_denied_total`, `_arp_frames_total` | |
//! | `egress_monitor_dns_answers_untrusted_total`, `_source_routed_total`, `_raw_guard_hits_total`, `_learned_socket_passes_total` | |
//! | `egress_monitor_enforcing` (1 enforce, 0 observe), `egress_monitor_policy_info{version}`, `egress_monitor_up` | |
//! | `egress_monitor_reports_delivered_total`, `_reports_rejected_total`, `_reports_dropped_total`, `egress_monitor_reports_pending` | |

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use axum::{Router, http::header::CONTENT_TYPE, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use egress_monitor_policy::Mode;

use crate::{
    datapath::pins::PinLayout,
    datapath::{Counters, Totals},
    events::counts::DaemonCounts,
    inspect::status,
};

#[derive(Debug)]
struct DatapathCollector {
    layout: PinLayout,
    counts: Arc<DaemonCounts>,
}

impl DatapathCollector {
    /// The counters without labels: name, help, value.
    fn plain_counters(&self, counters: &Counters) -> Vec<(&'static str, &'static str, u64)> {
        vec![
            (
                "egress_monitor_events_written",
                "Events written to the event output",
                self.counts.events_written.load(Ordering::Relaxed),
            ),
            (
                "egress_monitor_events_unwritten",
                "Events the event output did not accept",
                self.counts.events_unwritten.load(Ordering::Relaxed),
            ),
            (
                "egress_monitor_events_lost",
                "Events the kernel could not queue (ring buffer full)",
                counters.events_lost,
            ),
            (
                "egress_monitor_packets_aggregated",
                "Denied packets counted in their flow instead of getting an event of their own",
                counters.aggregated,
            ),
            (
                "egress_monitor_flow_updates",
                "Flow updates written (events of kind update)",
                self.counts.flow_updates.load(Ordering::Relaxed),
            ),
            (
                "egress_monitor_flows_evicted",
                "Flows forgotten by the kernel before their last packets were reported",
                self.counts.flows_evicted.load(Ordering::Relaxed),
            ),
            (
                "egress_monitor_reports_delivered",
                "Reports the controller acknowledged",
                self.counts.reports_delivered.load(Ordering::Relaxed),
            ),
            (
                "egress_monitor_reports_rejected",
                "Reports the controller refused as invalid (kept aside in the spool's rejected/)",
                self.counts.reports_rejected.load(Ordering::Relaxed),
            ),
            (
                "egress_monitor_reports_dropped",
                "Reports the full spool dropped, oldest first",
                self.counts.reports_dropped.load(Ordering::Relaxed),
            ),
            (
                "egress_monitor_flow_queue_full",
                "Times a flow could not be queued for its report (retried at its next packet)",
                counters.flow_queue_full,
            ),
            (
                "egress_monitor_dns_answers_learned",
                "DNS answers whose addresses a domain rule allowed (until their TTL runs out)",
                counters.dns_answers_learned,
            ),
            (
                "egress_monitor_dns_answers_untrusted",
                "DNS answers for an allowed name that taught nothing: not from the node's resolvers, to an untrusted network namespace, forged over loopback, or answering no question asked",
                counters.dns_answers_untrusted,
            ),
            (
                "egress_monitor_source_routed",
                "Packets denied for naming further destinations (IPv4 source routes, IPv6 routing headers)",
                counters.source_routed,
            ),
            (
                "egress_monitor_raw_guard_hits",
                "Socket options that would skip the TC hook (PACKET_QDISC_BYPASS, AF_XDP TX rings): refused in enforce mode, reported in observe mode",
                counters.raw_guard_hits,
            ),
            (
                "egress_monitor_learned_socket_passes",
                "Packets allowed because their socket opened to a DNS-learned address while it was allowed",
                counters.learned_socket_passes,
            ),
            (
                "egress_monitor_packets_judged_by_cgroup",
                "Denied packets the TC hook left to the cgroup hook, which had counted and reported them (both hooks, observe mode)",
                counters.judged_by_cgroup,
            ),
            (
                "egress_monitor_malformed_packets",
                "IP packets whose header could not be read (denied)",
                counters.malformed,
            ),
            (
                "egress_monitor_non_ip_denied",
                "Non-IP frames other than ARP on the TC hook (denied)",
                counters.not_ip,
            ),
            (
                "egress_monitor_arp_frames",
                "ARP frames on the TC hook (passed)",
                counters.arp,
            ),
        ]
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let up = |encoder: &mut DescriptorEncoder, value: i64| -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                "egress_monitor_up",
                "Whether the pinned datapath could be read",
                None,
                gauge.metric_type(),
            )?)
        };
        // A scrape that cannot read the maps says so rather than failing.
        let Ok(status) = status::status(&self.layout) else {
            return up(&mut encoder, 0);
        };
        up(&mut encoder, 1)?;
        // status read the counters already: one pass over the maps per scrape.
        let counters = &status.counters;
        for (name, help, value) in [
            (
                "egress_monitor_packets",
                "IP packets judged, by hook, verdict and action",
                (|t: &Totals| t.packets) as fn(&Totals) -> u64,
            ),
            (
                "egress_monitor_bytes",
                "Bytes of IP packets judged, by hook, verdict and action",
                |t: &Totals| t.bytes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (hook, by_outcome) in [("cgroup", &counters.cgroup), ("tc", &counters.tc)] {
                for (verdict, action, totals) in [
                    ("allowed", "pass", &by_outcome.allowed),
                    ("denied", "observed", &by_outcome.denied_observed),
                    ("denied", "dropped", &by_outcome.denied_dropped),
                ] {
                    let labels = [("hook", hook), ("verdict", verdict), ("action", action)];
                    ConstCounter::new(value(totals)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut hits = encoder.encode_descriptor(
            "egress_monitor_rule_hits",
            "Packets that matched each rule",
            None,
            MetricType::Counter,
        )?;
        for rule in &status.rule_hits {
            let labels = [("rule", rule.name.as_str()), ("cidr", rule.cidr.as_str())];
            ConstCounter::new(rule.hits).encode(hits.encode_family(&labels)?)?;
        }
        for (name, help, value) in self.plain_counters(counters) {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let pending = ConstGauge::new(self.counts.reports_pending.load(Ordering::Relaxed) as i64);
        pending.encode(encoder.encode_descriptor(
            "egress_monitor_reports_pending",
            "Reports waiting in the spool for the controller",
            None,
            pending.metric_type(),
        )?)?;
        let mut queries = encoder.encode_descriptor(
            "egress_monitor_dns_queries",
            "DNS questions read on their way out, by verdict on their name",
            None,
            MetricType::Counter,
        )?;
        for (verdict, value) in [
            ("allowed", counters.dns_queries_allowed),
            ("denied", counters.dns_queries_denied),
        ] {
            ConstCounter::new(value).encode(queries.encode_family(&[("verdict", verdict)])?)?;
        }
        let learned = ConstGauge::new(status.dns_allowed.len() as i64);
        learned.encode(encoder.encode_descriptor(
            "egress_monitor_dns_allowed_addresses",
            "Addresses domain rules allow now (learned from DNS answers, not yet expired)",
            None,
            learned.metric_type(),
        )?)?;
        let enforcing = ConstGauge::new(i64::from(status.mode == Mode::Enforce));
        enforcing.encode(encoder.encode_descriptor(
            "egress_monitor_enforcing",
            "1 in enforce mode, 0 in observe mode",
            None,
            enforcing.metric_type(),
        )?)?;
        let mut info = encoder.encode_descriptor(
            "egress_monitor_policy_info",
            "The applied policy's version",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(info.encode_family(&[("version", status.policy_version.as_str())])?)?;
        Ok(())
    }
}

/// Binds the metrics listener (done before anything is pinned, so a bad address stops the
/// daemon early).
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Serves `/metrics` on `listener` until the runtime stops.
pub fn spawn(listener: tokio::net::TcpListener, layout: PinLayout, counts: Arc<DaemonCounts>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DatapathCollector { layout, counts }));
    let registry = Arc::new(registry);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move {
                let mut body = String::new();
                if let Err(err) = prometheus_client::encoding::text::encode(&mut body, &registry) {
                    log::error!("cannot encode metrics: {err}");
                }
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            log::error!("the metrics server stopped: {err}");
        }
    });
}
