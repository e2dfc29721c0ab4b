//! On-chain anchoring (`docs/anchoring.md`).
//!
//! - [`config`]: `[anchor]` and `[anchor.evm]`.
//! - [`merkle`]: the batch tree, proofs and their check.
//! - [`batch`]: batches, their table and the [`batch::Sealer`].
//! - [`proof`]: proof bundles and their offline check.
//! - [`audit`]: recomputing every batch from the database.
//! - [`chain`]: the EVM backend (alloy): anchoring, confirmations, and
//!   the on-chain half of `verify`.
//! - here: [`Anchoring`], the two services (the sealer, the anchorer)
//!   built from the configuration, and their telemetry.
//!
//! Sealing and anchoring run beside ingest on their own threads: they
//! read committed readings through a reader and write only their own
//! tables, so a slow chain never holds up the store writer.

pub mod audit;
pub mod batch;
pub mod chain;
pub mod config;
pub mod merkle;
pub mod proof;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use biota_common::telemetry::{MetricSet, Telemetry};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::service::ThreadService;
use crate::store::config::Synchronous;
use config::{AnchorBackend, AnchorConfig};

/// How often the sealer looks for newly committed readings.
const SEAL_POLL: Duration = Duration::from_millis(200);
/// How often leaves of batches retention emptied are dropped.
const RETIRE_EVERY: Duration = Duration::from_secs(600);

/// Why anchoring could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnchorStartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
}

/// Sealing and, with `backend = "evm"`, anchoring: built, not yet running.
pub struct Anchoring {
    /// What status and `/metrics` show of both.
    pub telemetry: Arc<AnchoringTelemetry>,
    pub sealer: SealerService,
    pub anchorer: Option<chain::Anchorer>,
}

impl Anchoring {
    /// Opens the sealer (and the anchorer, which checks its key) on a
    /// database the writer has opened and migrated.
    pub fn new(
        config: &AnchorConfig,
        db: &Path,
        synchronous: Synchronous,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AnchorStartError> {
        let sealer = batch::Sealer::open(db, config, synchronous)?;
        let anchorer = match (&config.backend, &config.evm) {
            (AnchorBackend::Evm, Some(evm)) => Some(chain::Anchorer::new(
                evm.clone(),
                &evm.key_file,
                db,
                synchronous,
            )?),
            _ => None,
        };
        let telemetry = Arc::new(AnchoringTelemetry {
            seal: sealer.stats(),
            chain: anchorer.as_ref().map(chain::Anchorer::stats),
            started_at: biota_common::time::now_ns(),
            metrics,
        });
        Ok(Self {
            telemetry,
            sealer: SealerService { sealer },
            anchorer,
        })
    }
}

/// The sealer as a service: seals what the writer committed until shutdown.
pub struct SealerService {
    sealer: batch::Sealer,
}

impl ThreadService for SealerService {
    const NAME: &'static str = "sealer";

    async fn run(mut self, shutdown: CancellationToken) {
        let mut retired_at = Instant::now();
        let mut last_error: Option<(String, Instant)> = None;
        while !shutdown.is_cancelled() {
            if let Err(e) = self.sealer.step(Instant::now()) {
                let msg = e.to_string();
                if last_error
                    .as_ref()
                    .is_none_or(|(m, at)| *m != msg || at.elapsed() > Duration::from_secs(60))
                {
                    tracing::warn!(error = %msg, "sealing waits; will try again");
                    last_error = Some((msg, Instant::now()));
                }
            }
            if retired_at.elapsed() >= RETIRE_EVERY {
                retired_at = Instant::now();
                if let Err(e) = self.sealer.drop_retired_leaves() {
                    tracing::warn!(error = %e, "dropping retired leaves failed");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(SEAL_POLL) => {}
            }
        }
    }
}

impl ThreadService for chain::Anchorer {
    const NAME: &'static str = "anchorer";

    async fn run(self, shutdown: CancellationToken) {
        self.rounds(shutdown).await;
    }
}

/// The sealer's and the chain's counters, and how far anchoring lags.
pub struct AnchoringTelemetry {
    pub seal: Arc<batch::SealStats>,
    pub chain: Option<Arc<chain::ChainStats>>,
    /// UTC ns.
    started_at: i64,
    metrics: Arc<Metrics>,
}

impl AnchoringTelemetry {
    /// How far anchoring is behind the last committed reading: readings
    /// not yet anchored on-chain (not yet sealed, with no chain), and the
    /// seconds since anchoring last made progress (0 when caught up).
    pub fn lag(&self) -> (u64, f64) {
        let last_seq = self.metrics.last_seq.load(Relaxed);
        let (done, at) = match &self.chain {
            Some(c) => (
                c.anchored_seq.load(Relaxed),
                c.last_anchored_at.load(Relaxed),
            ),
            None => (
                self.seal.sealed_seq.load(Relaxed),
                self.seal.last_sealed_at.load(Relaxed),
            ),
        };
        let behind = last_seq.saturating_sub(done);
        let seconds = if behind == 0 {
            0.0
        } else {
            let since = if at > 0 { at } else { self.started_at };
            (biota_common::time::now_ns() - since).max(0) as f64 / 1e9
        };
        (behind, seconds)
    }
}

impl Telemetry for AnchoringTelemetry {
    fn status(&self) -> serde_json::Value {
        let (lag_seq, lag_seconds) = self.lag();
        let mut v = serde_json::json!({
            "batches": self.seal.batches.load(Relaxed),
            "sealed_seq": self.seal.sealed_seq.load(Relaxed),
            "lost_to_retention": self.seal.lost_to_retention.load(Relaxed),
            "lag_seq": lag_seq,
            "lag_seconds": lag_seconds,
        });
        if let Some(c) = &self.chain {
            v["chain"] = c.to_json();
        }
        v
    }

    fn metrics(&self, out: &mut MetricSet) {
        let (seq, seconds) = self.lag();
        out.gauge(
            "anchoring_lag_seq",
            "Committed readings not yet anchored.",
            seq,
        );
        out.gauge(
            "anchoring_lag_seconds",
            "Age of the oldest reading not yet anchored.",
            seconds,
        );
    }
}
