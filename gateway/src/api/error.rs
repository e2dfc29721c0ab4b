//! The API's error answer: an HTTP status and
//! `{"error": "<kind>", "message": "...", "parameter": "<name>"}`.
//!
//! `kind` is stable and machine-readable; `message` says what to change.
//! Neither carries a token, a hash or another device's data: messages are
//! built from the request's own parameters and the gateway's names.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::command::CommandError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// The query or path parameter (or body field) at fault, for 400s.
    pub parameter: Option<String>,
}

impl HttpError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            parameter: None,
        }
    }

    /// 400 naming the parameter.
    pub fn bad_parameter(parameter: &str, message: impl Into<String>) -> Self {
        Self {
            parameter: Some(parameter.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure inside the gateway: logged in full, answered in general.
    pub fn internal(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "API: {what} failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what} failed; the gateway's log has the details"),
        )
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        Self::internal("reading the store", &e)
    }
}

/// Write failures by kind: the caller's mistake (4xx) or the device's
/// state (409/502/503/504), never a 500 for a device that says no.
impl From<CommandError> for HttpError {
    fn from(e: CommandError) -> Self {
        let status = match e.kind() {
            "unknown_device" | "unknown_point" => StatusCode::NOT_FOUND,
            "read_only_device" | "not_writable" => StatusCode::CONFLICT,
            "bad_value" => StatusCode::UNPROCESSABLE_ENTITY,
            "busy" | "stopped" | "offline" => StatusCode::SERVICE_UNAVAILABLE,
            "no_answer" | "timeout" => StatusCode::GATEWAY_TIMEOUT,
            // refused, link, mismatch, verify_failed: the device failed.
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::new(status, e.kind(), e.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.kind, "message": self.message });
        if let Some(p) = self.parameter {
            body["parameter"] = p.into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"biota-gateway\""),
            );
        }
        response
    }
}
