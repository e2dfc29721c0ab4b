//! `[api]` and `[api.tls]`: the HTTP API's listener, TLS, tokens and
//! limits (`docs/api.md`). Owned by the API; `crate::config` composes it.

use std::path::PathBuf;

use biota_common::config::{ConfigError, Problems, Validate};
use serde::Deserialize;

/// `[api]`: see `docs/api.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on. Default: `127.0.0.1:8080` (this host only).
    #[serde(default = "default_api_listen")]
    pub listen: std::net::SocketAddr,
    /// `tls = { cert = "...", key = "...", client_ca = "..." }`: HTTPS with
    /// rustls. Default: none (plain HTTP, accepted on loopback only unless
    /// `insecure_listen = true`).
    #[serde(default)]
    pub tls: Option<ApiTls>,
    /// Serve plain HTTP on a non-loopback address (tokens then cross the
    /// network in clear text). Default: false.
    #[serde(default)]
    pub insecure_listen: bool,
    /// Tokens given in the configuration itself, stored hashed:
    /// `tokens = [{ name = "scada", scopes = ["read"], sha256 = "<hex>" }]`.
    /// Default: none.
    #[serde(default)]
    pub tokens: Vec<super::auth::TokenEntry>,
    /// The token file `biota-gateway token` manages. A relative path is
    /// taken relative to the state directory. Default: `tokens.json`.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Serve `/metrics` without a token (Prometheus scrapers on the same
    /// host). When false it needs a `read` token. Default: true.
    #[serde(default = "default_true")]
    pub metrics_public: bool,
    /// Largest request body. Default: `64KiB`.
    #[serde(
        default = "default_api_max_body",
        deserialize_with = "biota_common::size::deserialize"
    )]
    pub max_body: u64,
    /// Connections served at once; more wait in the listen backlog. Default: 256.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: usize,
    /// Live streams (`/v1/stream`) open at once; one more gets 503. Default: 32.
    #[serde(default = "default_sse_max_subscribers")]
    pub sse_max_subscribers: usize,
    /// Committed batches a live stream may fall behind before it is
    /// dropped (and told so). Default: 256.
    #[serde(default = "default_sse_buffer")]
    pub sse_buffer: usize,
    /// Most readings one range page returns (`limit`). Default: 10000.
    #[serde(default = "default_api_max_page")]
    pub max_page: usize,
}

/// `[api.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// PEM CA: when set, clients must also present a certificate it signed.
    /// Default: none.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            tls: None,
            insecure_listen: false,
            tokens: Vec::new(),
            token_file: default_token_file(),
            metrics_public: true,
            max_body: default_api_max_body(),
            max_connections: default_api_max_connections(),
            sse_max_subscribers: default_sse_max_subscribers(),
            sse_buffer: default_sse_buffer(),
            max_page: default_api_max_page(),
        }
    }
}

fn default_api_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_token_file() -> PathBuf {
    PathBuf::from("tokens.json")
}
fn default_true() -> bool {
    true
}
/// Committed batches a live stream may fall behind: `sse_buffer`'s
/// default, also the live feed's depth when no `[api]` is configured.
pub const DEFAULT_SSE_BUFFER: usize = 256;
fn default_api_max_body() -> u64 {
    64 * 1024
}
fn default_api_max_connections() -> usize {
    256
}
fn default_sse_max_subscribers() -> usize {
    32
}
fn default_sse_buffer() -> usize {
    DEFAULT_SSE_BUFFER
}
fn default_api_max_page() -> usize {
    10_000
}

impl Validate for ApiConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut p = Problems::new(path, errors);
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure_listen {
            p.add(
                "listen",
                format!(
                    "{} is not a loopback address and [api] has no tls: tokens would cross the \
                     network in clear text (configure api.tls, or set api.insecure_listen = true)",
                    self.listen
                ),
            );
        }
        for (i, token) in self.tokens.iter().enumerate() {
            if let Err(e) = token.validate() {
                p.add(&format!("tokens[{i}]"), e);
            }
        }
        p.range("max_connections", self.max_connections, 1, 65_536);
        p.range("sse_max_subscribers", self.sse_max_subscribers, 0, 10_000);
        p.range("sse_buffer", self.sse_buffer, 1, 65_536);
        p.range("max_page", self.max_page, 1, 1_000_000);
        if !(1024..=64 << 20).contains(&self.max_body) {
            p.add(
                "max_body",
                format!(
                    "must be between 1KiB and 64MiB, got {} bytes",
                    self.max_body
                ),
            );
        }
    }
}
