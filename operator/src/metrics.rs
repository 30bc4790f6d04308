//! Prometheus metrics of the operator, served on `/metrics`.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub endpoint: &'static str,
    pub method: &'static str,
    /// HTTP status, or "error" when no response arrived.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_failures: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub api_requests: Family<ApiLabels, Counter>,
    pub api_duration: Family<EndpointLabels, Histogram>,
    pub share_calls: Counter,
    pub waves: Counter,
    pub wave_requests: Histogram,
    pub wave_duration: Histogram,
    pub leader: Gauge<i64, AtomicI64>,
    pub sweeps: Family<ResultLabels, Counter>,
    pub swept: Counter,
    pub ledger_pairs: Gauge<i64, AtomicI64>,
    pub ledger_write_failures: Counter,
    pub service_reconciles: Family<ResultLabels, Counter>,
    pub service_refusals: Family<ReasonLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    // A flat registration list, one entry per exported metric with its help text: splitting it
    // would only scatter the list.
    #[allow(clippy::too_many_lines)]
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sharedip");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let reconcile_failures = Family::<ReasonLabels, Counter>::default();
        let reconcile_duration = duration_histogram();
        let api_requests = Family::<ApiLabels, Counter>::default();
        let api_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let share_calls = Counter::default();
        let waves = Counter::default();
        let wave_requests = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let wave_duration = duration_histogram();
        let leader = Gauge::<i64, AtomicI64>::default();
        let sweeps = Family::<ResultLabels, Counter>::default();
        let swept = Counter::default();
        let ledger_pairs = Gauge::<i64, AtomicI64>::default();
        let ledger_write_failures = Counter::default();
        let service_reconciles = Family::<ResultLabels, Counter>::default();
        let service_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconciles",
            "SharedIP reconciles by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed SharedIP reconciles by reason",
            reconcile_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one SharedIP, including its share wave",
            reconcile_duration.clone(),
        );
        registry.register(
            "linode_api_requests",
            "Linode API requests (each HTTP attempt) by endpoint, method and status",
            api_requests.clone(),
        );
        registry.register(
            "linode_api_request_duration_seconds",
            "Linode API request latency by endpoint",
            api_duration.clone(),
        );
        registry.register(
            "share_calls",
            "Successful Linode share calls (POST /networking/ips/share)",
            share_calls.clone(),
        );
        registry.register(
            "share_waves",
            "Share waves processed (each makes at most one share call per affected Linode)",
            waves.clone(),
        );
        registry.register(
            "share_wave_requests",
            "SharedIP requests coalesced into one share wave",
            wave_requests.clone(),
        );
        registry.register(
            "share_wave_duration_seconds",
            "Time to apply one share wave to the Linode API",
            wave_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "sweeps",
            "Sweeps for shares no SharedIP wants (ledger Linodes only), by result",
            sweeps.clone(),
        );
        registry.register(
            "swept_addresses",
            "Addresses the sweep unshared from a Linode (one per Linode and address)",
            swept.clone(),
        );
        registry.register(
            "ledger_entries",
            "Linode and address pairs the ledger records as shared by this cluster",
            ledger_pairs.clone(),
        );
        registry.register(
            "ledger_write_failures",
            "Failed writes of the ledger ConfigMap (a share whose record fails is not made)",
            ledger_write_failures.clone(),
        );
        registry.register(
            "service_reconciles",
            "LoadBalancer Service reconciles by result",
            service_reconciles.clone(),
        );
        registry.register(
            "service_refusals",
            "LoadBalancer Services refused an address (bad annotation, address in use, sharing refused...), by reason",
            service_refusals.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_failures,
            reconcile_duration,
            api_requests,
            api_duration,
            share_calls,
            waves,
            wave_requests,
            wave_duration,
            leader,
            sweeps,
            swept,
            ledger_pairs,
            ledger_write_failures,
            service_reconciles,
            service_refusals,
        }
    }
}

impl Metrics {
    /// The metrics as OpenMetrics text.
    pub fn encode(&self) -> String {
        sharedip_process::metrics::encode(&self.registry)
    }

    pub fn observe_reconcile(&self, ok: bool, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    pub fn observe_service(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.service_reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn observe_service_refusal(&self, reason: &str) {
        self.service_refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn observe_failure(&self, reason: &str) {
        self.reconcile_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn observe_api(
        &self,
        endpoint: &'static str,
        method: &'static str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        self.api_requests
            .get_or_create(&ApiLabels {
                endpoint,
                method,
                status: status.map_or_else(|| "error".to_string(), |s| s.to_string()),
            })
            .inc();
        self.api_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_sweep(&self, ok: bool) {
        self.sweeps
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub fn observe_wave(&self, requests: usize, elapsed: Duration) {
        self.waves.inc();
        self.wave_requests.observe(requests as f64);
        self.wave_duration.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_named_metrics() {
        let m = Metrics::default();
        m.observe_reconcile(true, Duration::from_millis(3));
        m.observe_api(
            "/networking/ips/share",
            "POST",
            Some(429),
            Duration::from_millis(1),
        );
        m.share_calls.inc();
        let text = m.encode();
        assert!(
            text.contains("sharedip_reconciles_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "sharedip_linode_api_requests_total{endpoint=\"/networking/ips/share\",method=\"POST\",status=\"429\"} 1"
        ), "{text}");
        assert!(text.contains("sharedip_share_calls_total 1"), "{text}");
    }
}
