//! The operator's commands beyond `run`: `query` (output formats),
//! `write` and `devices` (requests to the running gateway), `token` (API
//! tokens), and the anchoring commands (`keygen`, `proof`, `verify`,
//! `audit`, `contract`).

pub mod anchor;
pub mod control;
pub mod query;
pub mod token;

/// Failures that map to dedicated exit codes.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] biota_gateway::config::ConfigError),
    #[error(transparent)]
    Store(#[from] biota_gateway::store::StoreError),
    /// The running gateway cannot be reached (sysexits' EX_UNAVAILABLE).
    #[error(transparent)]
    Unavailable(biota_gateway::control::client::ClientError),
}

/// Exit code when the running gateway cannot be reached.
pub const EXIT_UNAVAILABLE: i32 = 69;
