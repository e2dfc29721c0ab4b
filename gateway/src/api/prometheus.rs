//! `GET /metrics`: the gateway's counters in the Prometheus text format
//! (version 0.0.4), written by hand — a handful of families does not
//! need a metrics crate.
//!
//! Public by default (`[api] metrics_public`): the figures say how the
//! gateway runs, not what the devices measure, and a scraper on the same
//! host then needs no token. Per-device series carry the device id.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::auth::Scope;
use super::{ApiState, HttpError};
use crate::metrics::RejectReason;

/// Database, WAL and shared-memory files together, in bytes.
pub fn db_size(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(name).map_or(0, |m| m.len())
        })
        .sum()
}

/// A counter of a device's snapshot.
type Field = fn(&biota_drivers::stats::DeviceStatsSnapshot) -> u64;

/// Builds the exposition text, one family at a time.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn metrics(
    State(state): State<Arc<ApiState>>,
    parts: Parts,
) -> Result<Response, HttpError> {
    if !state.api.metrics_public {
        super::authorize(&parts, &state, Scope::Read)?;
    }
    let text = render(&state);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

pub fn render(state: &ApiState) -> String {
    let observed = &state.observed;
    let m = &observed.metrics;
    let s = m.snapshot();
    let mut out = Exposition(String::with_capacity(8 * 1024));

    out.single(
        "biota_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
        s.at_ms as f64 / 1000.0,
    );
    out.single(
        "biota_samples_received_total",
        "counter",
        "Samples handed over by drivers.",
        s.received,
    );
    out.single(
        "biota_readings_accepted_total",
        "counter",
        "Readings the normalizer produced.",
        s.accepted,
    );
    out.single(
        "biota_samples_filtered_total",
        "counter",
        "Samples dropped by a deadband.",
        s.filtered,
    );
    out.family(
        "biota_samples_rejected_total",
        "counter",
        "Samples rejected by the normalizer, by reason.",
    );
    for reason in RejectReason::ALL {
        out.sample(
            "biota_samples_rejected_total",
            &[("source", "normalizer"), ("reason", reason.as_str())],
            m.rejected(reason),
        );
    }
    if let Some(mqtt) = &observed.mqtt {
        out.family(
            "biota_mqtt_rejected_total",
            "counter",
            "MQTT messages rejected, by topic and reason.",
        );
        for ((topic, reason), count) in mqtt.rejected() {
            out.sample(
                "biota_mqtt_rejected_total",
                &[("topic", &topic), ("reason", reason)],
                count,
            );
        }
        let status = mqtt.to_json();
        for field in ["messages", "unmatched", "samples"] {
            let name = format!("biota_mqtt_{field}_total");
            out.single(
                &name,
                "counter",
                &format!("MQTT {field}."),
                status[field].as_u64().unwrap_or(0),
            );
        }
    }
    if let Some(coap) = &observed.coap {
        out.family(
            "biota_coap_rejected_total",
            "counter",
            "CoAP requests rejected, by reason.",
        );
        for (reason, count) in coap.rejected() {
            out.sample("biota_coap_rejected_total", &[("reason", reason)], count);
        }
        let status = coap.to_json();
        for field in [
            "datagrams",
            "stored",
            "readings",
            "duplicates",
            "notifications",
        ] {
            let name = format!("biota_coap_{field}_total");
            out.single(
                &name,
                "counter",
                &format!("CoAP {field}."),
                status[field].as_u64().unwrap_or(0),
            );
        }
    }
    out.single(
        "biota_readings_committed_total",
        "counter",
        "Readings durably committed.",
        s.committed,
    );
    out.family(
        "biota_device_readings_committed_total",
        "counter",
        "Readings committed, by device.",
    );
    for (device, n) in m.device_counts() {
        out.sample(
            "biota_device_readings_committed_total",
            &[("device", &device)],
            n,
        );
    }
    out.single(
        "biota_commits_total",
        "counter",
        "Group commits.",
        s.commits,
    );
    out.single(
        "biota_commit_errors_total",
        "counter",
        "Failed commit attempts.",
        s.write_errors,
    );
    out.single(
        "biota_last_seq",
        "gauge",
        "Highest committed seq.",
        s.last_seq,
    );
    let name = "biota_commit_duration_seconds";
    out.family(
        name,
        "histogram",
        "Duration of a group commit (transaction and fsync).",
    );
    let (buckets, count, sum) = m.commit_latency.cumulative();
    for (bound, n) in buckets {
        out.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], n);
    }
    out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
    out.sample(&format!("{name}_sum"), &[], sum);
    out.sample(&format!("{name}_count"), &[], count);

    out.family(
        "biota_queue_depth",
        "gauge",
        "Items waiting between stages.",
    );
    out.sample("biota_queue_depth", &[("queue", "ingest")], s.ingest_queue);
    out.sample("biota_queue_depth", &[("queue", "writer")], s.writer_queue);
    out.sample(
        "biota_queue_depth",
        &[("queue", "writer_pending")],
        s.writer_pending,
    );
    out.single(
        "biota_device_writes_ok_total",
        "counter",
        "Writes to devices that succeeded.",
        m.writes_ok.load(Relaxed),
    );
    out.single(
        "biota_device_writes_failed_total",
        "counter",
        "Writes to devices that failed.",
        m.writes_failed.load(Relaxed),
    );

    let devices: Vec<_> = observed.devices.iter().map(|d| d.snapshot()).collect();
    if !devices.is_empty() {
        out.family(
            "biota_device_online",
            "gauge",
            "1 while the device answers.",
        );
        for d in &devices {
            let online = u8::from(matches!(d.state, biota_drivers::stats::DeviceState::Online));
            out.sample("biota_device_online", &[("device", &d.device)], online);
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
            let name = format!("biota_device_{field}_total");
            out.family(&name, "counter", help);
            for d in &devices {
                out.sample(&name, &[("device", &d.device)], get(d));
            }
        }
        out.family(
            "biota_device_poll_latency_seconds",
            "gauge",
            "Mean time from request to answer.",
        );
        for d in &devices {
            out.sample(
                "biota_device_poll_latency_seconds",
                &[("device", &d.device)],
                d.latency_us as f64 / 1e6,
            );
        }
    }
    if let Some(uplink) = &observed.uplink {
        let status = uplink.to_json(s.last_seq);
        out.single(
            "biota_uplink_acked_seq",
            "gauge",
            "Highest seq the northbound broker acknowledged.",
            status["acked_seq"].as_u64().unwrap_or(0),
        );
        out.single(
            "biota_uplink_backlog",
            "gauge",
            "Committed readings not yet acknowledged northbound.",
            status["backlog"].as_u64().unwrap_or(0),
        );
        out.single(
            "biota_uplink_connected",
            "gauge",
            "1 while connected to the northbound broker.",
            u8::from(status["connected"] == true),
        );
    }
    if let Some((seq, seconds)) = super::anchoring::lag(state) {
        out.single(
            "biota_anchoring_lag_seq",
            "gauge",
            "Committed readings not yet anchored.",
            seq,
        );
        out.single(
            "biota_anchoring_lag_seconds",
            "gauge",
            "Age of the oldest reading not yet anchored.",
            seconds,
        );
    }
    out.single(
        "biota_store_size_bytes",
        "gauge",
        "Database, WAL and shared-memory files.",
        db_size(&state.db),
    );
    out.single(
        "biota_stream_subscribers",
        "gauge",
        "Open live streams (/v1/stream).",
        state.live.subscribers(),
    );
    out.single(
        "biota_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the gateway.",
        crate::metrics::rss_bytes(),
    );
    out.0
}
