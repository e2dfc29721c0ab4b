//! Bounded channels of batches between the stages of the data path.
//!
//! When a channel is full the sender waits (backpressure) instead of
//! memory growing; each channel also counts the items queued in it, for
//! the queue-depth metric.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Something sent through a [`batch_channel`]: it knows how many items it holds.
pub trait Batch {
    fn items(&self) -> usize;
}

impl<T> Batch for Vec<T> {
    fn items(&self) -> usize {
        self.len()
    }
}

/// The sending end of a bounded channel of batches.
#[derive(Debug)]
pub struct BatchSender<T> {
    tx: tokio::sync::mpsc::Sender<T>,
    queued: Arc<AtomicU64>,
}

impl<T> Clone for BatchSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
        }
    }
}

/// The receiving end of a [`BatchSender`].
#[derive(Debug)]
pub struct BatchReceiver<T> {
    rx: tokio::sync::mpsc::Receiver<T>,
    queued: Arc<AtomicU64>,
}

/// The pipeline has shut down; nobody receives batches any more.
#[derive(Debug, thiserror::Error)]
#[error("the channel is closed (the gateway is shutting down)")]
pub struct SinkClosed;

/// A bounded channel holding at most `capacity` batches.
pub fn batch_channel<T: Batch>(capacity: usize) -> (BatchSender<T>, BatchReceiver<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    let queued = Arc::new(AtomicU64::new(0));
    (
        BatchSender {
            tx,
            queued: queued.clone(),
        },
        BatchReceiver { rx, queued },
    )
}

impl<T: Batch> BatchSender<T> {
    /// Sends a batch unless `shutdown` comes first: false if the gateway
    /// stops or the pipeline is gone. A batch not yet accepted when
    /// shutdown comes was never ingested, so dropping it loses nothing
    /// accepted.
    pub async fn send_unless(
        &self,
        batch: T,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> bool {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            sent = self.send(batch) => sent.is_ok(),
        }
    }

    /// Sends a batch, waiting while the channel is full (backpressure).
    /// Cancel-safe: a send dropped while waiting leaves no trace.
    pub async fn send(&self, batch: T) -> Result<(), SinkClosed> {
        let permit = self.tx.reserve().await.map_err(|_| SinkClosed)?;
        self.queued
            .fetch_add(batch.items() as u64, Ordering::Relaxed);
        permit.send(batch);
        Ok(())
    }
}

impl<T: Batch> BatchReceiver<T> {
    /// The next batch, or `None` once every sender is dropped and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        let batch = self.rx.recv().await?;
        self.queued
            .fetch_sub(batch.items() as u64, Ordering::Relaxed);
        Some(batch)
    }

    /// Whether nothing is queued right now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The next batch if one is queued right now.
    pub fn try_recv(&mut self) -> Option<T> {
        let batch = self.rx.try_recv().ok()?;
        self.queued
            .fetch_sub(batch.items() as u64, Ordering::Relaxed);
        Some(batch)
    }

    /// A handle that reads how many items are queued.
    pub fn depth_gauge(&self) -> Arc<AtomicU64> {
        self.queued.clone()
    }
}
