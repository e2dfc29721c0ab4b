//! The writer's thread: [`WriterService`] gathers readings from its
//! channel and decides what is due next — a group commit (by count, by
//! age, or at once when a driver waits for its acknowledgement), a pass
//! of the series index, a retention step — and the WAL checkpointer that
//! copies the log back into the database on its own connection.
//!
//! SQLite calls block, so the service runs on a thread of its own with a
//! small runtime to wait on the channel and timers. While a commit fails
//! (disk full, I/O error, lock held by another process) it keeps the
//! readings, retries with backoff and stops reading its channel, so
//! backpressure reaches the drivers and nothing accepted is dropped; its
//! heartbeat stops too, so the systemd watchdog can fire.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use biota_common::channel::BatchReceiver;
use biota_drivers::{CommitNotice, CommitOutcome};
use rusqlite::Connection;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ReadingBatch, StoreWriter, WriterReport};
use crate::cdm::Reading;
use crate::live::Commit;
use crate::service::ThreadService;
use crate::store::config::StoreConfig;

/// Longest pause between retries of a failing commit.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The writer as a service: it ends once its channel closes and
/// everything received is committed, and then reports what it did.
pub struct WriterService {
    writer: StoreWriter,
    input: BatchReceiver<ReadingBatch>,
    max_readings: usize,
    max_delay: Duration,
    retention_interval: Duration,
    checkpointer: Checkpointer,
    report: oneshot::Sender<WriterReport>,
}

impl WriterService {
    /// Takes over the writer: from now on the checkpointer copies the
    /// WAL into the database. The receiver gets the report at the end.
    pub fn new(
        writer: StoreWriter,
        input: BatchReceiver<ReadingBatch>,
        config: &StoreConfig,
    ) -> std::io::Result<(Self, oneshot::Receiver<WriterReport>)> {
        let checkpointer = Checkpointer::spawn(&writer.path)?;
        writer
            .conn
            .execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(std::io::Error::other)?;
        let (report, reported) = oneshot::channel();
        Ok((
            Self {
                writer,
                input,
                max_readings: config.commit_max_readings,
                max_delay: config.commit_max_delay,
                retention_interval: config.retention.check_interval,
                checkpointer,
                report,
            },
            reported,
        ))
    }
}

impl ThreadService for WriterService {
    const NAME: &'static str = "store-writer";

    /// Ends when its input closes, not at the token: what was received is
    /// committed first.
    async fn run(self, _shutdown: CancellationToken) {
        let report = self
            .writer
            .run(
                self.input,
                self.max_readings,
                self.max_delay,
                self.retention_interval,
            )
            .await;
        self.checkpointer.stop();
        let _ = self.report.send(report);
    }
}

impl StoreWriter {
    async fn run(
        mut self,
        mut input: BatchReceiver<ReadingBatch>,
        max_readings: usize,
        max_delay: Duration,
        retention_interval: Duration,
    ) -> WriterReport {
        let metrics = self.metrics.clone();
        let heartbeat = || {
            metrics
                .writer_heartbeat_ms
                .store(metrics.uptime_ms(), Relaxed)
        };
        let mut buffer: Vec<Reading> = Vec::with_capacity(max_readings.min(65_536));
        // Drivers waiting to hear that their readings in `buffer` are stored.
        let mut notices: Vec<(CommitNotice, usize, usize)> = Vec::new();
        let mut oldest: Option<Instant> = None;
        let mut closed = false;
        let mut retry_delay = Duration::from_millis(100);
        // First retention pass shortly after start, not before readiness.
        let mut next_retention = Instant::now() + Duration::from_secs(1);
        let mut committed = 0u64;
        heartbeat();
        loop {
            // A driver waits for an acknowledgement and nothing more
            // is queued: commit now rather than after `max_delay`. Under
            // load, batches gather while the previous commit runs anyway.
            let waited_for = !notices.is_empty() && input.is_empty();
            let due = !buffer.is_empty()
                && (closed
                    || waited_for
                    || buffer.len() >= max_readings
                    || oldest.is_some_and(|t| t.elapsed() >= max_delay));
            if due {
                let started = std::time::Instant::now();
                match self.commit(&mut buffer) {
                    Ok(()) => {
                        metrics.commit_latency.record(started.elapsed());
                        committed += buffer.len() as u64;
                        match &self.live {
                            // Hand the readings over instead of copying them.
                            Some(live) if live.has_subscribers() => {
                                let fresh = Vec::with_capacity(buffer.capacity());
                                live.publish(Arc::new(Commit::new(std::mem::replace(
                                    &mut buffer,
                                    fresh,
                                ))));
                            }
                            _ => buffer.clear(),
                        }
                        let last_seq = self.next_seq - 1;
                        for (notice, stored, dropped) in notices.drain(..) {
                            notice.fire(CommitOutcome::Committed {
                                stored,
                                dropped,
                                last_seq,
                            });
                        }
                        oldest = None;
                        retry_delay = Duration::from_millis(100);
                        metrics.writer_pending.store(0, Relaxed);
                        heartbeat();
                    }
                    Err(e) => {
                        metrics.write_errors.fetch_add(1, Relaxed);
                        tracing::error!(
                            error = %e,
                            pending = buffer.len(),
                            retry_in = ?retry_delay,
                            "commit failed; keeping the readings and retrying"
                        );
                        // A full disk may be relieved by retention.
                        if e.is_disk_full()
                            && let Err(e) =
                                self.plan_retention().and_then(|()| self.retention_step())
                        {
                            tracing::warn!(error = %e, "retention could not free space");
                        }
                        tokio::time::sleep(retry_delay).await;
                        retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                    }
                }
                continue;
            }
            // The series index, when nothing waits for a commit.
            if self
                .index
                .due()
                .is_some_and(|at| at <= std::time::Instant::now())
            {
                if let Err(e) = self.index_step(false) {
                    // Queries stay right (they read what is not indexed
                    // by seq); the step is tried again later.
                    tracing::warn!(error = %e, "the series index could not be updated; will try again");
                    self.index.failed();
                }
                heartbeat();
                continue;
            }
            if closed {
                if let Err(e) = self.index_all() {
                    tracing::warn!(error = %e, "the series index could not be completed; the next start does it");
                }
                break;
            }
            if Instant::now() >= next_retention {
                if let Err(e) = self.plan_retention() {
                    tracing::warn!(error = %e, "retention failed; will try again");
                }
                next_retention = Instant::now() + retention_interval;
                heartbeat();
                continue;
            }
            // One retention step per turn; between steps take what arrived,
            // so ingest keeps flowing and commits fall due as usual.
            if self.retention_bound.is_some() {
                if let Err(e) = self.retention_step() {
                    tracing::warn!(error = %e, "retention failed; will try again");
                    self.retention_bound = None;
                }
                while buffer.len() < max_readings {
                    let Some(batch) = input.try_recv() else { break };
                    oldest.get_or_insert_with(Instant::now);
                    take(&mut buffer, &mut notices, batch);
                }
                metrics.writer_pending.store(buffer.len() as u64, Relaxed);
                heartbeat();
                continue;
            }
            let commit_at = oldest.map(|t| t + max_delay);
            let index_at = self.index.due().map(Instant::from_std);
            tokio::select! {
                batch = input.recv() => match batch {
                    Some(batch) => {
                        oldest.get_or_insert_with(Instant::now);
                        take(&mut buffer, &mut notices, batch);
                        // Take what else is already queued, up to a commit's worth.
                        while buffer.len() < max_readings {
                            match input.try_recv() {
                                Some(more) => take(&mut buffer, &mut notices, more),
                                None => break,
                            }
                        }
                        metrics.writer_pending.store(buffer.len() as u64, Relaxed);
                    }
                    None => closed = true,
                },
                () = sleep_until_opt(commit_at) => {}
                () = sleep_until_opt(index_at) => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => heartbeat(),
                () = tokio::time::sleep_until(next_retention) => {}
            }
        }
        WriterReport {
            committed,
            next_seq: self.next_seq,
            lost: buffer.len() as u64,
        }
    }
}

/// Adds a batch to the commit being gathered.
fn take(
    buffer: &mut Vec<Reading>,
    notices: &mut Vec<(CommitNotice, usize, usize)>,
    batch: ReadingBatch,
) {
    if let Some((notice, dropped)) = batch.notice {
        notices.push((notice, batch.readings.len(), dropped));
    }
    buffer.extend(batch.readings);
}

/// Copies the WAL back into the database on its own thread and
/// connection, so the writer spends its time inserting. Passive
/// checkpoints never block the writer or readers; the last one, on stop,
/// truncates the WAL so the next start has nothing to recover.
struct Checkpointer {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: std::thread::JoinHandle<()>,
}

/// Time between passive checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

impl Checkpointer {
    fn spawn(path: &Path) -> std::io::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(std::io::Error::other)?;
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let flag = stop.clone();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                let (lock, wake) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    stopped = wake
                        .wait_timeout(stopped, CHECKPOINT_EVERY)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    let mode = if *stopped { "TRUNCATE" } else { "PASSIVE" };
                    if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
                        tracing::warn!(path = %path.display(), error = %e, "WAL checkpoint failed; will retry");
                    }
                }
            })?;
        Ok(Self { stop, thread })
    }

    /// Runs a last, truncating checkpoint and ends the thread.
    fn stop(self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_one();
        if self.thread.join().is_err() {
            tracing::error!("the WAL checkpoint thread panicked");
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
