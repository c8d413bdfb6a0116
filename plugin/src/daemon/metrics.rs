//! Prometheus metrics, rendered in the text exposition format (version 0.0.4). A handful of
//! counters and histograms behind one mutex each: the daemon updates them a few times per
//! pull, far from any hot path that would need more.

use std::{collections::BTreeMap, fmt::Write as _, sync::Mutex, time::Duration};

use kcache_core::api::Decision;

/// Latency buckets in seconds: 100 µs to 30 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// Every metric kcached exports.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
    gauges: Mutex<BTreeMap<(&'static str, Labels), f64>>,
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "kcache_verifications_total",
        "counter",
        "Image verifications by result (allow, deny, allow-with-warning, unchecked) and deciding rule.",
    ),
    (
        "kcache_verification_seconds",
        "histogram",
        "Time to a verdict, cache hits included.",
    ),
    (
        "kcache_verdict_cache_hits_total",
        "counter",
        "Verdicts served from the verdict cache.",
    ),
    (
        "kcache_denied_pulls_total",
        "counter",
        "Snapshot Prepare calls refused by the verification gate, by reason.",
    ),
    (
        "kcache_snapshot_operation_seconds",
        "histogram",
        "Snapshots API latency by operation.",
    ),
    (
        "kcache_snapshot_operation_errors_total",
        "counter",
        "Snapshots API errors by operation and gRPC code.",
    ),
    (
        "kcache_policy_generation",
        "gauge",
        "Generation (content hash, low 52 bits) of the policy in force.",
    ),
    (
        "kcache_policy_reload_errors_total",
        "counter",
        "Policy reloads that failed; the previous policy stayed in force.",
    ),
    (
        "kcache_api_requests_total",
        "counter",
        "kcache API requests by path and status.",
    ),
];

impl Metrics {
    /// Adds `n` to a counter.
    pub fn inc(&self, name: &'static str, labels: Labels, n: u64) {
        *self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((name, labels))
            .or_default() += n;
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &'static str, labels: Labels, d: Duration) {
        self.histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((name, labels))
            .or_default()
            .observe(d.as_secs_f64());
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, labels: Labels, v: f64) {
        self.gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name, labels), v);
    }

    /// Drops every series of a gauge (before setting the current ones).
    pub fn clear_gauge(&self, name: &'static str) {
        self.gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _), _| *n != name);
    }

    /// Records a verdict.
    pub fn verdict(&self, decision: Decision, rule: Option<&str>, cached: bool, elapsed: Duration) {
        let rule = rule.unwrap_or("<default>").to_owned();
        self.inc(
            "kcache_verifications_total",
            vec![("result", decision.to_string()), ("rule", rule)],
            1,
        );
        self.observe("kcache_verification_seconds", vec![], elapsed);
        if cached {
            self.inc("kcache_verdict_cache_hits_total", vec![], 1);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let histograms = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match *kind {
                "counter" => {
                    let mut any = false;
                    for ((_, labels), v) in counters.iter().filter(|((n, _), _)| n == name) {
                        let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
                        any = true;
                    }
                    if !any && counters_without_labels(name) {
                        let _ = writeln!(out, "{name} 0");
                    }
                }
                "gauge" => {
                    for ((_, labels), v) in gauges.iter().filter(|((n, _), _)| n == name) {
                        let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
                    }
                }
                _ => {
                    for ((_, labels), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                        for (le, c) in BUCKETS.iter().zip(h.counts) {
                            let _ = writeln!(out, "{name}_bucket{} {c}", fmt_labels(labels, Some(&le.to_string())));
                        }
                        let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(labels, Some("+Inf")), h.count);
                        let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(labels, None), h.sum);
                        let _ = writeln!(out, "{name}_count{} {}", fmt_labels(labels, None), h.count);
                    }
                }
            }
        }
        out
    }
}

fn counters_without_labels(name: &str) -> bool {
    matches!(
        name,
        "kcache_verdict_cache_hits_total" | "kcache_policy_reload_errors_total"
    )
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.verdict(Decision::Deny, Some("prod \"images\""), false, Duration::from_millis(3));
        m.verdict(Decision::Allow, None, true, Duration::from_micros(1));
        m.observe(
            "kcache_snapshot_operation_seconds",
            vec![("op", "prepare".into())],
            Duration::from_millis(1),
        );
        let text = m.render();
        assert!(
            text.contains("kcache_verifications_total{result=\"deny\",rule=\"prod \\\"images\\\"\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("kcache_verifications_total{result=\"allow\",rule=\"<default>\"} 1\n"));
        assert!(text.contains("kcache_verdict_cache_hits_total 1\n"));
        assert!(
            text.contains("kcache_verification_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("kcache_verification_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("kcache_verification_seconds_count 2\n"));
        assert!(text.contains("kcache_snapshot_operation_seconds_bucket{op=\"prepare\",le=\"+Inf\"} 1\n"));
        assert!(text.contains("kcache_policy_reload_errors_total 0\n"));
    }
}
