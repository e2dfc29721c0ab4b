//! Batches, anchors and proof bundles over HTTP: `/v1/batches`,
//! `/v1/batches/{index}`, `/v1/proofs/{seq}` (docs/anchoring.md), and the
//! anchoring part of `/v1/status` and `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::routes::{Params, encode, json_response};
use super::{ApiState, Authorized, HttpError, Read};
use crate::anchor::batch::Batches;
use crate::anchor::proof::{self, ProofError};

fn disabled() -> HttpError {
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "anchoring_disabled",
        "anchoring is not enabled on this gateway ([anchor] enabled = false)",
    )
}

fn enabled(state: &ApiState) -> Result<(), HttpError> {
    if state.anchoring {
        Ok(())
    } else {
        Err(disabled())
    }
}

fn index_param(name: &str, value: &str) -> Result<u64, HttpError> {
    value.parse().map_err(|_| {
        HttpError::bad_parameter(name, format!("`{value}` is not a non-negative integer"))
    })
}

/// `GET /v1/batches?limit&before`: newest first.
pub async fn batches(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&["limit", "before"])?;
    let limit = params.number("limit", 50, 1000)?;
    let before = match params.get("before") {
        Some(before) => index_param("before", before)?,
        None => u64::MAX,
    };
    enabled(&state)?;
    let body = state
        .query(move |r| {
            let batches = Batches::new(r.connection(), r.path()).newest(before, limit)?;
            encode(&json!({ "batches": batches }))
        })
        .await?;
    Ok(json_response(body))
}

/// `GET /v1/batches/{index}`.
pub async fn batch(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    Path(index): Path<String>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    let index = index_param("index", &index)?;
    enabled(&state)?;
    let body = state
        .query(
            move |r| match Batches::new(r.connection(), r.path()).by_index(index)? {
                Some(b) => encode(&b),
                None => Err(HttpError::not_found(format!("no batch {index}"))),
            },
        )
        .await?;
    Ok(json_response(body))
}

/// `GET /v1/proofs/{seq}`: the proof bundle `biota-gateway verify` checks.
pub async fn proof(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    Path(seq): Path<String>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    let seq = index_param("seq", &seq)?;
    enabled(&state)?;
    let cache = state.clone();
    let body = state
        .query(move |r| {
            let mut trees = cache.proof_trees.lock().unwrap_or_else(|e| e.into_inner());
            match proof::bundle(r, &mut trees, seq) {
                Ok((bundle, true)) => encode(&bundle),
                Ok((bundle, false)) => Err(HttpError::new(
                    StatusCode::CONFLICT,
                    "altered",
                    format!(
                        "reading seq {seq} differs from the one sealed in batch {}: it was altered \
                         after sealing, so no valid proof exists (run `biota-gateway audit`)",
                        bundle.batch.index
                    ),
                )),
                Err(e @ (ProofError::NoReading(_) | ProofError::NotSealed(_))) => {
                    Err(HttpError::not_found(e.to_string()))
                }
                Err(ProofError::NoLeaves(index)) => Err(HttpError::new(
                    StatusCode::GONE,
                    "retired",
                    format!("retention deleted batch {index}'s readings and leaves"),
                )),
                Err(e @ ProofError::LeafCount { .. }) => Err(HttpError::new(
                    StatusCode::CONFLICT,
                    "altered",
                    e.to_string(),
                )),
                Err(ProofError::Store(e)) => Err(e.into()),
            }
        })
        .await?;
    Ok(json_response(body))
}
