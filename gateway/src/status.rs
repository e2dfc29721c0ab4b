//! What the gateway reports about itself, in one place for the control
//! socket (`biota-gateway devices`), the API (`/v1/status`, `/metrics`)
//! and the console: the pipeline's counters, every device's transaction
//! counters, and each running component's [`Telemetry`] section under
//! its name (a driver's or a service's). Nothing here
//! knows what a component is: adding one adds no code here.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use biota_common::telemetry::{MetricKind, MetricSet, Telemetry};
use biota_drivers::stats::{DeviceState, DeviceStats, DeviceStatsSnapshot};
use serde_json::{Value as Json, json};

use crate::metrics::{Metrics, RejectReason};

/// The gateway's status sources. Cheap to clone.
#[derive(Clone)]
pub struct Status {
    pub metrics: Arc<Metrics>,
    /// Transaction counters of every device whose driver keeps them.
    pub devices: Arc<[Arc<DeviceStats>]>,
    /// Each component's telemetry, by name, in start order.
    pub sections: Arc<[(&'static str, Arc<dyn Telemetry>)]>,
}

impl Status {
    /// The status the control socket's `devices` request and the API's
    /// `/v1/status` answer: every device's counters and each component's
    /// section.
    pub fn json(&self) -> Json {
        let devices: Vec<_> = self.devices.iter().map(|s| s.snapshot()).collect();
        let mut status = json!({ "devices": devices });
        for (name, telemetry) in self.sections.iter() {
            status[*name] = telemetry.status();
        }
        status
    }

    /// The pipeline's counters as JSON (`/v1/status`'s `pipeline`).
    pub fn pipeline_json(&self) -> Json {
        let s = self.metrics.snapshot();
        json!({
            "uptime_ms": s.at_ms,
            "received": s.received,
            "accepted": s.accepted,
            "filtered": s.filtered,
            "rejected": s.rejected,
            "committed": s.committed,
            "commits": s.commits,
            "last_seq": s.last_seq,
            "write_errors": s.write_errors,
            "ingest_queue": s.ingest_queue,
            "writer_queue": s.writer_queue,
            "writer_pending": s.writer_pending,
        })
    }

    /// Every metric family: the pipeline's, the devices', each component's.
    pub fn metrics(&self, out: &mut MetricSet) {
        pipeline_metrics(&self.metrics, out);
        device_metrics(&self.devices, out);
        for (_, telemetry) in self.sections.iter() {
            telemetry.metrics(out);
        }
    }
}

fn pipeline_metrics(m: &Metrics, out: &mut MetricSet) {
    let s = m.snapshot();
    out.gauge(
        "uptime_seconds",
        "Seconds since the gateway started.",
        s.at_ms as f64 / 1000.0,
    );
    out.counter(
        "samples_received_total",
        "Samples handed over by drivers.",
        s.received,
    );
    out.counter(
        "readings_accepted_total",
        "Readings the normalizer produced.",
        s.accepted,
    );
    out.counter(
        "samples_filtered_total",
        "Samples dropped by a deadband.",
        s.filtered,
    );
    let rejected = out.family(
        "samples_rejected_total",
        MetricKind::Counter,
        "Samples rejected by the normalizer, by reason.",
    );
    for reason in RejectReason::ALL {
        rejected.sample(
            &[("source", "normalizer"), ("reason", reason.as_str())],
            m.rejected(reason),
        );
    }
    out.counter(
        "readings_committed_total",
        "Readings durably committed.",
        s.committed,
    );
    let per_device = out.family(
        "device_readings_committed_total",
        MetricKind::Counter,
        "Readings committed, by device.",
    );
    for (device, n) in m.device_counts() {
        per_device.sample(&[("device", &device)], n);
    }
    out.counter("commits_total", "Group commits.", s.commits);
    out.counter(
        "commit_errors_total",
        "Failed commit attempts.",
        s.write_errors,
    );
    out.gauge("last_seq", "Highest committed seq.", s.last_seq);
    let latency = out.family(
        "commit_duration_seconds",
        MetricKind::Histogram,
        "Duration of a group commit (transaction and fsync).",
    );
    let (buckets, count, sum) = m.commit_latency.cumulative();
    for (bound, n) in buckets {
        latency.sample_named("_bucket", &[("le", &bound.to_string())], n);
    }
    latency.sample_named("_bucket", &[("le", "+Inf")], count);
    latency.sample_named("_sum", &[], sum);
    latency.sample_named("_count", &[], count);
    let queues = out.family(
        "queue_depth",
        MetricKind::Gauge,
        "Items waiting between stages.",
    );
    queues.sample(&[("queue", "ingest")], s.ingest_queue);
    queues.sample(&[("queue", "writer")], s.writer_queue);
    queues.sample(&[("queue", "writer_pending")], s.writer_pending);
    out.counter(
        "device_writes_ok_total",
        "Writes to devices that succeeded.",
        m.writes_ok.load(Relaxed),
    );
    out.counter(
        "device_writes_failed_total",
        "Writes to devices that failed.",
        m.writes_failed.load(Relaxed),
    );
}

/// A counter of a device's snapshot.
type Field = fn(&DeviceStatsSnapshot) -> u64;

fn device_metrics(devices: &[Arc<DeviceStats>], out: &mut MetricSet) {
    let devices: Vec<_> = devices.iter().map(|d| d.snapshot()).collect();
    if devices.is_empty() {
        return;
    }
    let online = out.family(
        "device_online",
        MetricKind::Gauge,
        "1 while the device answers.",
    );
    for d in &devices {
        let up = u64::from(matches!(d.state, DeviceState::Online));
        online.sample(&[("device", &d.device)], up);
    }
    let counters: [(&str, &str, Field); 6] = [
        ("requests", "Poll requests sent.", |d| d.requests),
        ("timeouts", "Polls without an answer in time.", |d| {
            d.timeouts
        }),
        ("crc_errors", "Frames with a bad CRC.", |d| d.crc_errors),
        ("exceptions", "Exception answers.", |d| d.exceptions),
        ("link_errors", "Connection or line errors.", |d| {
            d.link_errors
        }),
        ("write_errors", "Failed writes.", |d| d.write_errors),
    ];
    for (field, help, get) in counters {
        let family = out.family(&format!("device_{field}_total"), MetricKind::Counter, help);
        for d in &devices {
            family.sample(&[("device", &d.device)], get(d));
        }
    }
    let latency = out.family(
        "device_poll_latency_seconds",
        MetricKind::Gauge,
        "Mean time from request to answer.",
    );
    for d in &devices {
        latency.sample(&[("device", &d.device)], d.latency_us as f64 / 1e6);
    }
}
