//! The local HTTP API (`/v1`, described by `docs/openapi.json`), the
//! Prometheus endpoint (`/metrics`) and the web console (`/`), served by
//! axum on a thread and runtime of their own until shutdown.
//!
//! - [`config`]: `[api]` — listener, TLS, tokens, limits.
//! - [`auth`]: bearer tokens, scopes, the token file.
//! - [`routes`]: devices, latest values, ranges, aggregates, writes, the stream.
//! - [`prometheus`]: `/metrics` in the Prometheus text format.
//! - [`anchoring`]: batches, anchors and proof bundles.
//! - [`console`]: the embedded web console.
//! - [`server`]: the accept loop (plain HTTP or rustls), connection limit,
//!   graceful shutdown.
//! - here: [`ApiService`] (bind, then serve until shutdown), the shared
//!   [`ApiState`], the route table and token checks.
//!
//! Queries run on the blocking pool, each on a pooled [`StoreReader`];
//! writes go through the one command path, [`CommandBus`]. See `docs/api.md`.

pub mod anchoring;
pub mod auth;
pub mod config;
pub mod console;
pub mod error;
pub mod prometheus;
pub mod routes;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};
use tokio_util::sync::CancellationToken;

use biota_drivers::DeviceBinding;

use crate::command::CommandBus;
use crate::live::LiveFeed;
use crate::service::ThreadService;
use crate::status::Status;
use crate::store::StoreReader;
use auth::{Denied, Scope, Tokens};
use config::ApiConfig;
pub use error::HttpError;

/// The OpenAPI 3 document, kept in the repository.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API: cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("API {0}")]
    Tls(#[from] biota_common::tls::TlsError),
}

/// What the API needs from the running gateway.
pub struct Wiring {
    pub db: PathBuf,
    pub token_file: PathBuf,
    /// Every configured device with its profile (for `/v1/devices`).
    pub bindings: Vec<DeviceBinding>,
    /// Whether batches are sealed (`[anchor] enabled`).
    pub anchoring: bool,
    pub commands: CommandBus,
    pub status: Status,
    pub live: LiveFeed,
}

/// Shared by every request.
pub struct ApiState {
    pub api: ApiConfig,
    pub db: PathBuf,
    pub bindings: Vec<DeviceBinding>,
    pub anchoring: bool,
    pub commands: CommandBus,
    pub status: Status,
    pub live: LiveFeed,
    pub tokens: Tokens,
    pub shutdown: CancellationToken,
    readers: Mutex<Vec<StoreReader>>,
    /// The tree of the batch proofs were last asked for.
    pub proof_trees: Mutex<crate::anchor::proof::TreeCache>,
}

/// Readers kept open between requests.
const IDLE_READERS: usize = 8;

impl ApiState {
    pub fn new(api: ApiConfig, wiring: Wiring, shutdown: CancellationToken) -> Self {
        Self {
            tokens: Tokens::new(&api.tokens, wiring.token_file),
            api,
            db: wiring.db,
            bindings: wiring.bindings,
            anchoring: wiring.anchoring,
            commands: wiring.commands,
            status: wiring.status,
            live: wiring.live,
            shutdown,
            readers: Mutex::new(Vec::new()),
            proof_trees: Mutex::default(),
        }
    }

    /// Runs `query` on the blocking pool with a pooled reader.
    pub async fn query<T, F>(self: &Arc<Self>, query: F) -> Result<T, HttpError>
    where
        T: Send + 'static,
        F: FnOnce(&StoreReader) -> Result<T, HttpError> + Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let idle = state
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            let reader = match idle {
                Some(r) => r,
                None => StoreReader::open(&state.db)?,
            };
            let result = query(&reader);
            let mut idle = state.readers.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(reader);
            }
            result
        })
        .await
        .map_err(|e| HttpError::internal("a query", &e))?
    }
}

/// The API as a service: the bound listener and the router.
pub struct ApiService {
    listener: std::net::TcpListener,
    address: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<ApiState>,
    max_connections: usize,
}

impl ApiService {
    /// Reads the TLS files and binds the listener, so a bad certificate or
    /// a taken port is an error here, before the gateway is ready.
    /// `shutdown` is the token the service will run with: requests see
    /// it (`/v1/ready` turns 503, streams end).
    pub fn new(
        api: &ApiConfig,
        wiring: Wiring,
        shutdown: CancellationToken,
    ) -> Result<Self, ApiError> {
        let tls = match &api.tls {
            Some(t) => Some(Arc::new(biota_common::tls::server_config(
                &t.cert,
                &t.key,
                t.client_ca.as_deref(),
            )?)),
            None => None,
        };
        let listen_err = |source| ApiError::Listen {
            address: api.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(api.listen).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let address = listener.local_addr().map_err(listen_err)?;
        Ok(Self {
            listener,
            address,
            tls,
            state: Arc::new(ApiState::new(api.clone(), wiring, shutdown)),
            max_connections: api.max_connections,
        })
    }

    /// The address it listens on (the port, when `listen` asked for 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl ThreadService for ApiService {
    const NAME: &'static str = "api";
    // Two workers, so answers are encoded and written on both cores of a
    // gateway while queries run on the runtime's blocking pool.
    const WORKERS: usize = 2;

    async fn run(self, shutdown: CancellationToken) {
        tracing::info!(address = %self.address, tls = self.tls.is_some(), "API listening");
        let router = router(self.state);
        match tokio::net::TcpListener::from_std(self.listener) {
            Ok(listener) => {
                server::serve(listener, self.tls, router, self.max_connections, shutdown).await;
            }
            Err(e) => tracing::error!(error = %e, "API: cannot use its listener"),
        }
    }
}

/// One route: method, path as the OpenAPI document writes it, handler.
type Route = (&'static str, &'static str, MethodRouter<Arc<ApiState>>);

/// Every route of the API; the router is built from this list and a test
/// compares it with `docs/openapi.json`.
pub fn routes() -> Vec<Route> {
    vec![
        ("GET", "/v1/health", get(routes::health)),
        ("GET", "/v1/ready", get(routes::ready)),
        ("GET", "/v1/status", get(routes::status)),
        ("GET", "/v1/devices", get(routes::devices)),
        ("GET", "/v1/devices/{device}", get(routes::device)),
        ("GET", "/v1/latest", get(routes::latest)),
        (
            "GET",
            "/v1/devices/{device}/points/{point}/range",
            get(routes::range),
        ),
        (
            "GET",
            "/v1/devices/{device}/points/{point}/aggregate",
            get(routes::aggregate),
        ),
        (
            "POST",
            "/v1/devices/{device}/points/{point}/write",
            post(routes::write),
        ),
        ("GET", "/v1/stream", get(routes::stream)),
        ("GET", "/v1/batches", get(anchoring::batches)),
        ("GET", "/v1/batches/{index}", get(anchoring::batch)),
        ("GET", "/v1/proofs/{seq}", get(anchoring::proof)),
        ("GET", "/v1/openapi.json", get(openapi)),
        ("GET", "/metrics", get(prometheus::metrics)),
    ]
}

pub fn router(state: Arc<ApiState>) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        // axum 0.7 writes path parameters as `:name`, OpenAPI as `{name}`.
        router = router.route(&path.replace('{', ":").replace('}', ""), handler);
    }
    router
        .merge(console::routes())
        .fallback(|| async {
            HttpError::not_found("no such resource (the API is described at /v1/openapi.json)")
        })
        .layer(DefaultBodyLimit::max(
            usize::try_from(state.api.max_body).unwrap_or(usize::MAX),
        ))
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// A request whose token grants scope `S`; holds the token's name.
pub struct Authorized<S>(pub String, std::marker::PhantomData<S>);

/// Scopes as types, for [`Authorized`].
pub trait ScopeMarker {
    const SCOPE: Scope;
}
pub struct Read;
pub struct Write;
impl ScopeMarker for Read {
    const SCOPE: Scope = Scope::Read;
}
impl ScopeMarker for Write {
    const SCOPE: Scope = Scope::Write;
}

#[axum::async_trait]
impl<S: ScopeMarker> FromRequestParts<Arc<ApiState>> for Authorized<S> {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, HttpError> {
        authorize(parts, state, S::SCOPE).map(|name| Self(name, std::marker::PhantomData))
    }
}

/// Checks the request's bearer token for `scope`.
pub fn authorize(parts: &Parts, state: &ApiState, scope: Scope) -> Result<String, HttpError> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state
        .tokens
        .authorize(header, scope)
        .map_err(|denied| match denied {
            Denied::Unauthenticated(why) => {
                HttpError::new(StatusCode::UNAUTHORIZED, "unauthorized", why)
            }
            Denied::Forbidden { name, scope } => HttpError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token `{name}` lacks the `{}` scope", scope.as_str()),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route is in the OpenAPI document and every path of the
    /// document is a route, with the same methods.
    #[test]
    fn routes_and_the_openapi_document_agree() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut routed: Vec<(String, String)> = routes()
            .into_iter()
            .map(|(m, p, _)| (m.to_owned(), p.to_owned()))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(routed, documented);
    }
}
