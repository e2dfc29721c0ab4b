//! `GET /metrics`: the gateway's counters in the Prometheus text format
//! (version 0.0.4), written by hand — a handful of families does not
//! need a metrics crate.
//!
//! Public by default (`[api] metrics_public`): the figures say how the
//! gateway runs, not what the devices measure, and a scraper on the same
//! host then needs no token. Per-device series carry the device id.
//!
//! Every family comes from the gateway's status (`crate::status`: the
//! pipeline, the devices, and each component's telemetry) plus the few
//! the API itself knows (store size, live streams, memory); this module
//! only writes them out.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use biota_common::telemetry::MetricSet;

use super::auth::Scope;
use super::{ApiState, HttpError};

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
    let mut set = MetricSet::default();
    state.status.metrics(&mut set);
    set.gauge(
        "store_size_bytes",
        "Database, WAL and shared-memory files.",
        db_size(&state.db),
    );
    set.gauge(
        "stream_subscribers",
        "Open live streams (/v1/stream).",
        state.live.subscribers() as u64,
    );
    set.gauge(
        "process_resident_memory_bytes",
        "Resident memory of the gateway.",
        crate::metrics::rss_bytes(),
    );
    let mut out = String::with_capacity(8 * 1024);
    for family in &set.families {
        let name = format!("biota_{}", family.name);
        let _ = writeln!(
            out,
            "# HELP {name} {}\n# TYPE {name} {}",
            family.help,
            family.kind.as_str()
        );
        for sample in &family.samples {
            out.push_str(&name);
            out.push_str(sample.suffix);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", sample.value);
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
