//! kcached's Prometheus metrics, typed (prometheus-client, as kube-rs's controller-rs does): one
//! field per metric, one label struct per label set, so a metric that is set is also exported
//! (the registry renders what was registered, not a hand-kept list). `/metrics` serves the
//! OpenMetrics text format, which Prometheus scrapes natively.

use std::time::Duration;

use kcache_core::{api::Decision, cache::store::CacheState};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds: 100 µs to 30 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

fn latency() -> Histogram {
    Histogram::new(BUCKETS)
}

/// `kcache_verifications_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerificationLabels {
    /// `allow`, `deny`, `allow-with-warning`, `unchecked`.
    pub result: String,
    /// The deciding rule, `<default>` for the policy default.
    pub rule: String,
}

/// `kcache_denied_pulls_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// [`kcache_core::snapshot::gate::Denied::kind`].
    pub reason: String,
}

/// `kcache_snapshot_operation_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The Snapshots API operation (`prepare`, `commit`, ...).
    pub op: String,
}

/// `kcache_snapshot_operation_errors_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpErrorLabels {
    /// The operation.
    pub op: String,
    /// The gRPC code, as tonic names it (`PermissionDenied`, `NotFound`, ...).
    pub code: String,
}

/// `kcache_api_requests_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The endpoint, `other` for unknown paths.
    pub path: String,
    /// The HTTP status.
    pub code: String,
}

/// `kcache_caches` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// The approved cache's name.
    pub name: String,
    /// Its state (`pending`, `ready`, `denied`, `failed`).
    pub state: String,
}

/// Every metric kcached exports.
pub struct Metrics {
    /// Image verifications by result and deciding rule.
    pub verifications: Family<VerificationLabels, Counter>,
    /// Time to a verdict, cache hits included.
    pub verification_seconds: Histogram,
    /// Verdicts served from the verdict cache.
    pub verdict_cache_hits: Counter,
    /// Snapshot Prepare/View/Update calls the gate refused, by reason.
    pub denied_pulls: Family<ReasonLabels, Counter>,
    /// Snapshots API latency by operation.
    pub snapshot_operation_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// Snapshots API errors by operation and gRPC code.
    pub snapshot_operation_errors: Family<OpErrorLabels, Counter>,
    /// The policy in force's generation (content hash, low 52 bits).
    pub policy_generation: Gauge,
    /// Policy reloads that failed.
    pub policy_reload_errors: Counter,
    /// kcache API requests by path and status.
    pub api_requests: Family<ApiLabels, Counter>,
    /// Approved caches: 1 per cache in its current state.
    pub caches: Family<CacheLabels, Gauge>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            verifications: Family::default(),
            verification_seconds: latency(),
            verdict_cache_hits: Counter::default(),
            denied_pulls: Family::default(),
            snapshot_operation_seconds: Family::new_with_constructor(latency),
            snapshot_operation_errors: Family::default(),
            policy_generation: Gauge::default(),
            policy_reload_errors: Counter::default(),
            api_requests: Family::default(),
            caches: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut m.registry;
        // Counters are registered without `_total`: the encoder adds it.
        r.register(
            "kcache_verifications",
            "Image verifications by result (allow, deny, allow-with-warning, unchecked) and deciding rule",
            m.verifications.clone(),
        );
        r.register(
            "kcache_verification_seconds",
            "Time to a verdict, cache hits included",
            m.verification_seconds.clone(),
        );
        r.register(
            "kcache_verdict_cache_hits",
            "Verdicts served from the verdict cache",
            m.verdict_cache_hits.clone(),
        );
        r.register(
            "kcache_denied_pulls",
            "Snapshot Prepare, View and Update calls refused by the verification gate, by reason",
            m.denied_pulls.clone(),
        );
        r.register(
            "kcache_snapshot_operation_seconds",
            "Snapshots API latency by operation",
            m.snapshot_operation_seconds.clone(),
        );
        r.register(
            "kcache_snapshot_operation_errors",
            "Snapshots API errors by operation and gRPC code",
            m.snapshot_operation_errors.clone(),
        );
        r.register(
            "kcache_policy_generation",
            "Generation (content hash, low 52 bits) of the policy in force",
            m.policy_generation.clone(),
        );
        r.register(
            "kcache_policy_reload_errors",
            "Policy reloads that failed; the previous policy stayed in force",
            m.policy_reload_errors.clone(),
        );
        r.register(
            "kcache_api_requests",
            "kcache API requests by path and status",
            m.api_requests.clone(),
        );
        r.register(
            "kcache_caches",
            "Approved kernel caches, 1 per cache in its current state",
            m.caches.clone(),
        );
        m
    }
}

impl Metrics {
    /// Records a verdict.
    pub fn verdict(&self, decision: Decision, rule: Option<&str>, cached: bool, elapsed: Duration) {
        self.verifications
            .get_or_create(&VerificationLabels {
                result: decision.as_str().to_owned(),
                rule: rule.unwrap_or("<default>").to_owned(),
            })
            .inc();
        self.verification_seconds.observe(elapsed.as_secs_f64());
        if cached {
            self.verdict_cache_hits.inc();
        }
    }

    /// Counts a refusal of the gate.
    pub fn denied(&self, reason: &str) {
        self.denied_pulls
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records one Snapshots API operation; `error` is the gRPC code it failed with.
    pub fn snapshot_operation(&self, op: &str, elapsed: Duration, error: Option<tonic::Code>) {
        self.snapshot_operation_seconds
            .get_or_create(&OpLabels { op: op.to_owned() })
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error {
            self.snapshot_operation_errors
                .get_or_create(&OpErrorLabels {
                    op: op.to_owned(),
                    code: format!("{code:?}"),
                })
                .inc();
        }
    }

    /// Counts one API request.
    pub fn api_request(&self, path: &str, status: u16) {
        self.api_requests
            .get_or_create(&ApiLabels {
                path: path.to_owned(),
                code: status.to_string(),
            })
            .inc();
    }

    /// Sets the policy generation gauge (low 52 bits, as the API reports it).
    pub fn set_policy_generation(&self, generation: u64) {
        self.policy_generation.set((generation & ((1 << 52) - 1)) as i64);
    }

    /// Replaces the caches gauge with the caches in `state`.
    pub fn set_caches<'a>(&self, caches: impl IntoIterator<Item = (&'a str, CacheState)>) {
        self.caches.clear();
        for (name, state) in caches {
            self.caches
                .get_or_create(&CacheLabels {
                    name: name.to_owned(),
                    state: state.as_str().to_owned(),
                })
                .set(1);
        }
    }

    /// The OpenMetrics text exposition of every metric ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.verdict(Decision::Deny, Some("prod \"images\""), false, Duration::from_millis(3));
        m.verdict(Decision::Allow, None, true, Duration::from_micros(1));
        m.snapshot_operation("prepare", Duration::from_millis(1), None);
        m.snapshot_operation("prepare", Duration::from_millis(1), Some(tonic::Code::PermissionDenied));
        m.denied("revoked");
        m.set_caches([("triton-a", CacheState::Ready)]);
        m.set_caches([("triton-b", CacheState::Failed)]);
        m.set_policy_generation(u64::MAX);
        let text = m.render();
        for line in [
            "kcache_verifications_total{result=\"deny\",rule=\"prod \\\"images\\\"\"} 1\n",
            "kcache_verifications_total{result=\"allow\",rule=\"<default>\"} 1\n",
            "kcache_verdict_cache_hits_total 1\n",
            "kcache_verification_seconds_bucket{le=\"0.005\"} 2\n",
            "kcache_verification_seconds_bucket{le=\"0.001\"} 1\n",
            "kcache_verification_seconds_count 2\n",
            "kcache_snapshot_operation_seconds_bucket{le=\"+Inf\",op=\"prepare\"} 2\n",
            "kcache_snapshot_operation_errors_total{op=\"prepare\",code=\"PermissionDenied\"} 1\n",
            "kcache_denied_pulls_total{reason=\"revoked\"} 1\n",
            "kcache_policy_reload_errors_total 0\n",
            "kcache_caches{name=\"triton-b\",state=\"failed\"} 1\n",
            "kcache_policy_generation 4503599627370495\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("triton-a"),
            "a cache no longer approved stays exported:\n{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
