//! The binary's subcommands beyond `run`: `query` (output formats),
//! `write` and `devices` (requests to the running gateway), `token` (API tokens),
//! `demo` (live terminal view) and `bench` (the benchmark command).

pub mod anchor;
pub mod bench;
mod bench_anchor;
mod bench_api;
pub mod bench_coap;
mod bench_mqtt;
pub mod control;
pub mod demo;
mod demo_chain;
pub mod query;
pub mod token;

use tokio_util::sync::CancellationToken;

/// Failures that map to dedicated exit codes.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] biota_gateway::config::ConfigError),
    #[error(transparent)]
    Store(#[from] biota_gateway::store::StoreError),
    /// The running gateway cannot be reached (sysexits' EX_UNAVAILABLE).
    #[error(transparent)]
    Unavailable(biota_gateway::control::ClientError),
}

/// Exit code when the running gateway cannot be reached.
pub const EXIT_UNAVAILABLE: i32 = 69;

/// Installs SIGTERM/SIGINT handlers now (so a signal during start-up is
/// not lost) and returns the future that, once spawned, cancels `shutdown`
/// on the first of them, telling systemd we stop. Call it inside the runtime.
pub fn stop_on_signal(shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            () = shutdown.cancelled() => return,
        };
        tracing::info!(
            signal = name,
            "shutting down: stopping drivers, committing what is in flight"
        );
        biota_gateway::systemd::stopping();
        shutdown.cancel();
    }
}

/// `12,345,678`
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
