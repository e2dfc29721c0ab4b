//! On-chain anchoring (`docs/anchoring.md`).
//!
//! - [`merkle`]: the batch tree, proofs and their check.
//! - [`batch`]: batches, their table and the [`batch::Sealer`].
//! - [`proof`]: proof bundles and their offline check.
//! - [`audit`]: recomputing every batch from the database.
//! - [`chain`]: the EVM backend (alloy): anchoring, confirmations, and
//!   the on-chain half of `verify`.
//!
//! Sealing and anchoring run beside ingest on their own threads: they
//! read committed readings through a reader and write only their own
//! tables, so a slow chain never holds up the store writer.

pub mod audit;
pub mod batch;
pub mod chain;
pub mod merkle;
pub mod proof;

/// Parses `0x` and 40 hex digits.
pub fn parse_address(s: &str) -> Option<[u8; 20]> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if digits.len() != 40 {
        return None;
    }
    crate::cdm::unhex(digits)?.try_into().ok()
}

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{AnchorBackend, AnchorConfig, Synchronous};

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
    #[error("cannot start the anchoring threads: {0}")]
    Thread(#[from] std::io::Error),
}

/// The running sealer and, with `backend = "evm"`, the chain thread.
pub struct Anchoring {
    pub seal: Arc<batch::SealStats>,
    pub chain: Option<Arc<chain::ChainStats>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// UTC ns.
    started_at: i64,
}

impl Anchoring {
    /// Starts sealing (and anchoring) beside the writer, which must have
    /// opened the database. `key_file` is the resolved `[anchor.evm]
    /// key_file`. Both threads end at `shutdown`.
    pub fn start(
        config: &AnchorConfig,
        db: &Path,
        key_file: Option<PathBuf>,
        synchronous: Synchronous,
        shutdown: CancellationToken,
    ) -> Result<Self, AnchorStartError> {
        let mut sealer = batch::Sealer::open(db, config, synchronous)?;
        let seal = sealer.stats();
        let chain = match (&config.backend, &config.evm) {
            (AnchorBackend::Evm, Some(evm)) => {
                let key = key_file.unwrap_or_else(|| evm.key_file.clone());
                Some(chain::Anchorer::new(evm.clone(), &key, db, synchronous)?)
            }
            _ => None,
        };
        let mut threads = Vec::new();
        let stop = shutdown.clone();
        threads.push(
            std::thread::Builder::new()
                .name("sealer".into())
                .spawn(move || {
                    let mut retired_at = Instant::now();
                    let mut last_error: Option<(String, Instant)> = None;
                    while !stop.is_cancelled() {
                        if let Err(e) = sealer.step(Instant::now()) {
                            let msg = e.to_string();
                            if last_error.as_ref().is_none_or(|(m, at)| {
                                *m != msg || at.elapsed() > Duration::from_secs(60)
                            }) {
                                tracing::warn!(error = %msg, "sealing waits; will try again");
                                last_error = Some((msg, Instant::now()));
                            }
                        }
                        if retired_at.elapsed() >= RETIRE_EVERY {
                            retired_at = Instant::now();
                            if let Err(e) = sealer.drop_retired_leaves() {
                                tracing::warn!(error = %e, "dropping retired leaves failed");
                            }
                        }
                        std::thread::sleep(SEAL_POLL);
                    }
                })?,
        );
        let chain_stats = chain.as_ref().map(chain::Anchorer::stats);
        if let Some(anchorer) = chain {
            threads.push(
                std::thread::Builder::new()
                    .name("anchorer".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt.block_on(anchorer.run(shutdown)),
                            Err(e) => tracing::error!(error = %e, "cannot start the anchorer"),
                        }
                    })?,
            );
        }
        Ok(Self {
            seal,
            chain: chain_stats,
            threads: std::sync::Mutex::new(threads),
            started_at: crate::time::now_ns(),
        })
    }

    /// Status for `biota-gateway devices` and the API.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "batches": self.seal.batches.load(Relaxed),
            "sealed_seq": self.seal.sealed_seq.load(Relaxed),
            "lost_to_retention": self.seal.lost_to_retention.load(Relaxed),
        });
        if let Some(c) = &self.chain {
            v["chain"] = c.to_json();
        }
        v
    }

    /// How far anchoring is behind `last_seq` (the last committed reading):
    /// readings not yet anchored on-chain (not yet sealed, with no chain),
    /// and the seconds since anchoring last made progress (0 when caught up).
    pub fn lag(&self, last_seq: u64) -> (u64, f64) {
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
            (crate::time::now_ns() - since).max(0) as f64 / 1e9
        };
        (behind, seconds)
    }

    /// Waits for the threads (after shutdown); the status handles others
    /// hold do not keep it from it.
    pub fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}
