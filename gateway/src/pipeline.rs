//! The data path's own pieces: `[pipeline]` (the bounded channels'
//! capacity and the shutdown bound) and the normalizer stage, which takes
//! driver samples from one bounded channel and hands readings to the
//! store writer on another.
//!
//! ```text
//! drivers ─► SampleBatch ─► normalizer ─► ReadingBatch ─► store writer
//! ```
//!
//! Every channel is bounded (`biota_common::channel`), so a slow writer
//! makes the normalizer wait and the normalizer makes drivers wait.

use std::time::Duration;

use biota_common::channel::BatchSender;
use biota_common::config::{ConfigError, Problems, Validate};
use biota_common::time::serde_duration;
use biota_drivers::{CommitOutcome, SampleSource};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::normalize::Normalizer;
use crate::service::ThreadService;
use crate::store::writer::ReadingBatch;

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Batches each bounded channel holds (driver → normalizer →
    /// writer). A full channel makes the stage before it wait. Default: 64.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Longest wait for the pipeline to drain on shutdown. Default: `30s`.
    #[serde(default = "default_shutdown_timeout", with = "serde_duration")]
    pub shutdown_timeout: Duration,
}

fn default_queue_capacity() -> usize {
    64
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: default_queue_capacity(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

impl Validate for PipelineConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut p = Problems::new(path, errors);
        if self.shutdown_timeout < Duration::from_secs(1) {
            p.add("shutdown_timeout", "must be at least 1s");
        }
        p.range("queue_capacity", self.queue_capacity, 1, 65_536);
    }
}

/// The normalizer stage: samples in, readings out, until every driver has
/// dropped its sender and the queue is empty.
pub struct NormalizerStage {
    normalizer: Normalizer,
    input: SampleSource,
    output: BatchSender<ReadingBatch>,
}

impl NormalizerStage {
    pub fn new(
        normalizer: Normalizer,
        input: SampleSource,
        output: BatchSender<ReadingBatch>,
    ) -> Self {
        Self {
            normalizer,
            input,
            output,
        }
    }
}

impl ThreadService for NormalizerStage {
    const NAME: &'static str = "normalizer";
    // Its own thread: on the shared runtime it would queue behind every
    // driver and API task at each wake-up, and every durable
    // acknowledgement a driver sends waits for it.

    /// Ends when its input closes (the drivers stopped), not at the
    /// token: what was queued is normalized and handed on.
    async fn run(self, _shutdown: CancellationToken) {
        run_normalizer(self.normalizer, self.input, self.output).await;
    }
}

async fn run_normalizer(
    mut normalizer: Normalizer,
    mut input: SampleSource,
    output: BatchSender<ReadingBatch>,
) {
    while let Some(mut batch) = input.recv().await {
        let samples = batch.samples.len();
        let notice = batch.notice.take();
        let mut readings = Vec::with_capacity(samples);
        normalizer.normalize(batch, &mut readings);
        let dropped = samples - readings.len();
        if readings.is_empty() {
            // Nothing to wait for: tell the driver now.
            if let Some(notice) = notice {
                notice.fire(CommitOutcome::NothingStored { dropped });
            }
            continue;
        }
        let batch = ReadingBatch {
            readings,
            notice: notice.map(|n| (n, dropped)),
        };
        if output.send(batch).await.is_err() {
            tracing::error!("the store writer stopped; the normalizer stops too");
            return;
        }
    }
}
