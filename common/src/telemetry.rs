//! What a running component reports about itself, in one shape for every
//! driver and service: a status section (JSON, for `biota-gateway
//! devices`, `/v1/status` and the console) and metric families (for
//! `/metrics`). The gateway iterates over components' [`Telemetry`]
//! without knowing what they are; a new component adds no code there.

/// A running component's telemetry.
pub trait Telemetry: Send + Sync {
    /// Its section of the status: a JSON object of counters and state.
    fn status(&self) -> serde_json::Value;
    /// Appends its metric families (names without the `biota_` prefix).
    fn metrics(&self, out: &mut MetricSet);
}

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (until the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets (`_bucket{le=..}`), `_sum` and `_count`.
    Histogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A sample's value: integers stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricValue {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for MetricValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricValue::Int(n) => write!(f, "{n}"),
            MetricValue::Float(x) => write!(f, "{x}"),
        }
    }
}

impl From<u64> for MetricValue {
    fn from(n: u64) -> Self {
        MetricValue::Int(n)
    }
}

impl From<f64> for MetricValue {
    fn from(x: f64) -> Self {
        MetricValue::Float(x)
    }
}

/// One metric family: a name, its help text and its labelled samples.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// Without the `biota_` prefix, e.g. `mqtt_messages_total`.
    pub name: String,
    pub kind: MetricKind,
    pub help: String,
    pub samples: Vec<MetricSample>,
}

/// One sample of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// Appended to the family's name: empty, or a histogram's `_bucket`,
    /// `_sum`, `_count`.
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: MetricValue,
}

impl MetricFamily {
    /// Adds a sample with `labels`.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: impl Into<MetricValue>) {
        self.sample_named("", labels, value);
    }

    /// Adds a sample whose name is the family's with `suffix` (histograms).
    pub fn sample_named(
        &mut self,
        suffix: &'static str,
        labels: &[(&'static str, &str)],
        value: impl Into<MetricValue>,
    ) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.samples.push(MetricSample {
            suffix,
            labels,
            value: value.into(),
        });
    }
}

/// The metric families of every component, in the order they were added.
#[derive(Debug, Default)]
pub struct MetricSet {
    pub families: Vec<MetricFamily>,
}

impl MetricSet {
    /// Starts a family; add its samples to what this returns.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) -> &mut MetricFamily {
        self.families.push(MetricFamily {
            name: name.to_owned(),
            kind,
            help: help.to_owned(),
            samples: Vec::new(),
        });
        let last = self.families.len() - 1;
        &mut self.families[last]
    }

    /// A family of one unlabelled counter.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, MetricKind::Counter, help)
            .sample(&[], value);
    }

    /// A family of one unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Into<MetricValue>) {
        self.family(name, MetricKind::Gauge, help)
            .sample(&[], value);
    }
}
