//! Batches, anchors and proof bundles over HTTP: `/v1/batches`,
//! `/v1/batches/{index}`, `/v1/proofs/{seq}`.
//!
//! The anchoring itself (issue #6) is being built beside this; until it
//! lands these routes check their parameters and the token like every
//! other route, then answer 503 `anchoring_disabled`. The paths and
//! answers are fixed in `docs/openapi.json`, which is what the console's
//! anchoring page and the tests already use.
//!
//! TODO(#6): the lead's anchoring module provides, on `ApiState` (through
//! `Wiring`), something shaped like
//!
//! ```ignore
//! pub trait AnchorView: Send + Sync {
//!     /// Newest first, at most `limit`, before batch `before` if given.
//!     fn batches(&self, before: Option<u64>, limit: usize) -> Result<Vec<BatchSummary>, AnchorError>;
//!     fn batch(&self, index: u64) -> Result<Option<BatchDetail>, AnchorError>;
//!     /// The reading, its leaf hash, the Merkle path, the batch and its anchor
//!     /// (`docs/anchoring.md`); `None` while the reading is not sealed yet.
//!     fn proof(&self, seq: u64) -> Result<Option<ProofBundle>, AnchorError>;
//!     /// Seq and seconds between the last committed and the last anchored reading.
//!     fn lag(&self) -> Option<(u64, f64)>;
//! }
//! ```
//!
//! with serde-serialisable results; then `batches`, `batch` and `proof`
//! below answer from it (404 `not_found` for an unknown batch or an
//! unsealed/deleted seq), `status` reports the lag, and
//! `prometheus::metrics` fills the `biota_anchoring_lag_*` gauges.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value as Json, json};

use super::routes::Params;
use super::{ApiState, Authorized, HttpError, Read};

fn disabled() -> HttpError {
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "anchoring_disabled",
        "anchoring is not enabled on this gateway",
    )
}

fn index_param(name: &str, value: &str) -> Result<u64, HttpError> {
    value.parse().map_err(|_| {
        HttpError::bad_parameter(name, format!("`{value}` is not a non-negative integer"))
    })
}

/// `GET /v1/batches?limit&before`.
pub async fn batches(
    _: Authorized<Read>,
    State(_state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&["limit", "before"])?;
    params.number("limit", 50, 1000)?;
    if let Some(before) = params.get("before") {
        index_param("before", before)?;
    }
    // TODO(#6): `state.anchors.batches(before, limit)` as `{"batches": [...]}`.
    Err(disabled())
}

/// `GET /v1/batches/{index}`.
pub async fn batch(
    _: Authorized<Read>,
    State(_state): State<Arc<ApiState>>,
    Path(index): Path<String>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    index_param("index", &index)?;
    // TODO(#6): `state.anchors.batch(index)`, 404 `not_found` when absent.
    Err(disabled())
}

/// `GET /v1/proofs/{seq}`: the proof bundle `biota-gateway verify` checks.
pub async fn proof(
    _: Authorized<Read>,
    State(_state): State<Arc<ApiState>>,
    Path(seq): Path<String>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    index_param("seq", &seq)?;
    // TODO(#6): `state.anchors.proof(seq)`, 404 `not_found` when not sealed.
    Err(disabled())
}

/// Anchoring in `/v1/status`: `null` until #6.
pub fn status(_state: &ApiState) -> Json {
    // TODO(#6): `{"last_batch": .., "lag_seq": .., "lag_seconds": ..}` from `state.anchors.lag()`.
    json!(null)
}

/// (lag in seq, lag in seconds) for `/metrics`; absent until #6.
pub fn lag(_state: &ApiState) -> Option<(u64, f64)> {
    // TODO(#6): `state.anchors.lag()`.
    None
}
