//! What the engine counts, and the one capability it counts through: a
//! [`Metrics`] sink per deployment (Prometheus text on `crmbridge serve`,
//! CloudWatch embedded-metric-format lines on Lambda). The names, labels
//! and units are the same everywhere; README "Metrics" says what each
//! means. Labels are ids the tenant configured (connections, automations)
//! or closed sets (apps, statuses), so their number stays bounded.

use std::fmt::Debug;

/// Everything the engine measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Events recorded for the first time (labels: tenant, app).
    EventsAccepted,
    /// Deliveries of an event already recorded (labels: tenant, app).
    EventsDuplicate,
    /// Runs that ended, or stopped for now (labels: tenant, automation,
    /// status).
    Runs,
    /// Vendor calls made by run steps (labels: tenant, vendor, class:
    /// `2xx`, `3xx`, `4xx`, `5xx`, `unreachable`).
    VendorCalls,
    /// From an event's arrival to its run's end, in milliseconds (labels:
    /// tenant, automation).
    DispatchLatency,
    /// How old the newest change a poll found was when it was found, in
    /// seconds (labels: tenant, app).
    PollLag,
}

/// How a metric aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::EventsAccepted,
        Metric::EventsDuplicate,
        Metric::Runs,
        Metric::VendorCalls,
        Metric::DispatchLatency,
        Metric::PollLag,
    ];

    /// The name, as Prometheus and CloudWatch show it.
    pub fn name(self) -> &'static str {
        match self {
            Metric::EventsAccepted => "crmbridge_events_accepted",
            Metric::EventsDuplicate => "crmbridge_events_duplicate",
            Metric::Runs => "crmbridge_runs",
            Metric::VendorCalls => "crmbridge_vendor_calls",
            Metric::DispatchLatency => "crmbridge_dispatch_latency_ms",
            Metric::PollLag => "crmbridge_poll_lag_seconds",
        }
    }

    pub fn kind(self) -> MetricKind {
        match self {
            Metric::DispatchLatency | Metric::PollLag => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }

    /// The CloudWatch unit.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::DispatchLatency => "Milliseconds",
            Metric::PollLag => "Seconds",
            _ => "Count",
        }
    }

    /// One line for `# HELP` and the README.
    pub fn help(self) -> &'static str {
        match self {
            Metric::EventsAccepted => "Events recorded for the first time",
            Metric::EventsDuplicate => "Deliveries of an event already recorded",
            Metric::Runs => "Runs that ended or stopped for now, by status",
            Metric::VendorCalls => "Vendor calls made by run steps, by status class",
            Metric::DispatchLatency => "Milliseconds from an event's arrival to its run's end",
            Metric::PollLag => "Age in seconds of the newest change a poll found",
        }
    }

    /// A coarser view worth its own series where metrics are stored by
    /// label set (CloudWatch): failed runs across every tenant and
    /// automation, for one alarm.
    pub fn rollup(self) -> Option<&'static [&'static str]> {
        match self {
            Metric::Runs => Some(&["status"]),
            Metric::VendorCalls => Some(&["vendor", "class"]),
            _ => None,
        }
    }

    /// The label names, in order.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Metric::EventsAccepted | Metric::EventsDuplicate | Metric::PollLag => {
                &["tenant", "app"]
            }
            Metric::Runs => &["tenant", "automation", "status"],
            Metric::VendorCalls => &["tenant", "vendor", "class"],
            Metric::DispatchLatency => &["tenant", "automation"],
        }
    }
}

/// One measurement: label values in [`Metric::labels`] order.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub metric: Metric,
    pub labels: &'a [&'a str],
    pub value: f64,
}

/// Where the engine's measurements go. Recording never fails and never
/// waits on the network: a sink buffers or writes a log line.
pub trait Metrics: Send + Sync + Debug {
    fn record(&self, sample: Sample<'_>);
}

/// For an engine whose measurements nobody reads (tests, one-off
/// commands).
#[derive(Debug, Default)]
pub struct Unrecorded;

impl Metrics for Unrecorded {
    fn record(&self, _sample: Sample<'_>) {}
}

/// A vendor's answer as a bounded label.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(_) => "5xx",
        None => "unreachable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_a_distinct_name_labels_and_help() {
        let mut names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
        for metric in Metric::ALL {
            assert!(metric.name().starts_with("crmbridge_"));
            assert!(!metric.labels().is_empty() && metric.labels()[0] == "tenant");
            assert!(!metric.help().is_empty());
        }
        assert_eq!(status_class(Some(201)), "2xx");
        assert_eq!(status_class(Some(404)), "4xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "unreachable");
    }
}
