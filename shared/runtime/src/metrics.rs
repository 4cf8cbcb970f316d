//! The two places the engine's measurements go: Prometheus text for
//! `crmbridge serve` (scraped at `/metrics`), and CloudWatch
//! embedded-metric-format lines on Lambda (one JSON line per measurement
//! on stdout, which CloudWatch Logs turns into metrics without an API
//! call). Names, labels and units come from [`Metric`].

use std::collections::BTreeMap;

use crmbridge_engine::metrics::{Metric, MetricKind, Metrics, Sample};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What `/metrics` answers with.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;
type Counters = Family<Labels, Counter>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// 5 ms to about 80 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(5.0, 2.0, 15))
}

/// 1 s to about 2.3 h.
fn lag_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Every metric, kept in process for a scrape. Counters are exposed with
/// Prometheus's `_total` suffix (`crmbridge_runs_total`).
pub struct PrometheusMetrics {
    registry: Registry,
    counters: BTreeMap<Metric, Counters>,
    histograms: BTreeMap<Metric, Histograms>,
}

impl std::fmt::Debug for PrometheusMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusMetrics").finish_non_exhaustive()
    }
}

impl Default for PrometheusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PrometheusMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut counters = BTreeMap::new();
        let mut histograms = BTreeMap::new();
        for metric in Metric::ALL {
            match metric.kind() {
                MetricKind::Counter => {
                    let family = Counters::default();
                    registry.register(metric.name(), metric.help(), family.clone());
                    counters.insert(metric, family);
                }
                MetricKind::Histogram => {
                    let buckets: fn() -> Histogram = if metric == Metric::PollLag {
                        lag_buckets
                    } else {
                        latency_buckets
                    };
                    let family = Histograms::new_with_constructor(buckets);
                    registry.register(metric.name(), metric.help(), family.clone());
                    histograms.insert(metric, family);
                }
            }
        }
        Self {
            registry,
            counters,
            histograms,
        }
    }

    /// The OpenMetrics text format (Prometheus scrapes it).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn labels(sample: &Sample<'_>) -> Labels {
    sample
        .metric
        .labels()
        .iter()
        .zip(sample.labels)
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

impl Metrics for PrometheusMetrics {
    fn record(&self, sample: Sample<'_>) {
        let labels = labels(&sample);
        if let Some(family) = self.counters.get(&sample.metric) {
            // Counts are whole numbers.
            family
                .get_or_create(&labels)
                .inc_by(sample.value.max(0.0) as u64);
        } else if let Some(family) = self.histograms.get(&sample.metric) {
            family.get_or_create(&labels).observe(sample.value);
        }
    }
}

/// CloudWatch embedded metric format: each measurement one JSON line on
/// stdout, namespace `crmbridge`, its labels as dimensions (and its
/// [`Metric::rollup`], a second dimension set, where it has one).
#[derive(Debug, Default)]
pub struct EmfMetrics;

/// CloudWatch's namespace for crmbridge's metrics.
pub const EMF_NAMESPACE: &str = "crmbridge";

/// One measurement as an EMF log line, stamped `at_ms` (Unix ms).
pub fn emf_line(sample: &Sample<'_>, at_ms: i64) -> String {
    let metric = sample.metric;
    let mut dimensions = vec![metric.labels().to_vec()];
    if let Some(rollup) = metric.rollup() {
        dimensions.push(rollup.to_vec());
    }
    let mut line = serde_json::json!({
        "_aws": {
            "Timestamp": at_ms,
            "CloudWatchMetrics": [{
                "Namespace": EMF_NAMESPACE,
                "Dimensions": dimensions,
                "Metrics": [{"Name": metric.name(), "Unit": metric.unit()}],
            }],
        },
    });
    for (name, value) in metric.labels().iter().zip(sample.labels) {
        line[*name] = serde_json::Value::String((*value).to_owned());
    }
    line[metric.name()] = serde_json::json!(sample.value);
    line.to_string()
}

impl Metrics for EmfMetrics {
    fn record(&self, sample: Sample<'_>) {
        println!(
            "{}",
            emf_line(&sample, chrono::Utc::now().timestamp_millis())
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counters_and_histograms_render_with_their_labels() {
        let metrics = PrometheusMetrics::new();
        for _ in 0..3 {
            metrics.record(Sample {
                metric: Metric::Runs,
                labels: &["ten_1", "orders", "succeeded"],
                value: 1.0,
            });
        }
        metrics.record(Sample {
            metric: Metric::DispatchLatency,
            labels: &["ten_1", "orders"],
            value: 42.0,
        });
        let text = metrics.render();
        assert!(
            text.contains(
                r#"crmbridge_runs_total{tenant="ten_1",automation="orders",status="succeeded"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"crmbridge_dispatch_latency_ms_count{tenant="ten_1",automation="orders"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("# HELP crmbridge_runs "), "{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    }

    #[test]
    fn an_emf_line_names_its_metric_unit_and_dimensions() {
        let line = emf_line(
            &Sample {
                metric: Metric::VendorCalls,
                labels: &["ten_1", "moysklad", "5xx"],
                value: 2.0,
            },
            1_700_000_000_000,
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        let directive = &parsed["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(parsed["_aws"]["Timestamp"], 1_700_000_000_000_i64);
        assert_eq!(directive["Namespace"], "crmbridge");
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([["tenant", "vendor", "class"], ["vendor", "class"]])
        );
        assert_eq!(
            directive["Metrics"],
            serde_json::json!([{"Name": "crmbridge_vendor_calls", "Unit": "Count"}])
        );
        assert_eq!(parsed["vendor"], "moysklad");
        assert_eq!(parsed["crmbridge_vendor_calls"], 2.0);
        assert!(!line.contains('\n'));
    }
}
