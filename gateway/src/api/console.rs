//! The web console: hand-written HTML, CSS and JavaScript from
//! `gateway/console/`, embedded in the binary and served at `/`. No
//! framework, no CDN, no request leaves the gateway; the console calls
//! the same `/v1` API with the token the user typed, which it keeps in
//! `sessionStorage` only. See `docs/console.md`.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::ApiState;

const INDEX: &[u8] = include_bytes!("../../console/index.html");
const SCRIPT: &[u8] = include_bytes!("../../console/console.js");
const STYLE: &[u8] = include_bytes!("../../console/console.css");

/// Headers every console asset carries: nothing may be loaded from
/// elsewhere, and the page may not be framed.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static [u8]) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
