//! Internal counters of the pipeline: accepted, rejected (per reason),
//! committed, queue depths and writer progress. Lock-free atomics on the
//! hot path; later issues expose them as Prometheus metrics, today the
//! demo, `STATUS=` and the benchmark read them.
//!
//! A rejection is one call, [`Metrics::reject`], that bumps the counter
//! and writes a rate-limited log line together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Why a sample did not become a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidDevice,
    InvalidPoint,
    InvalidSource,
    InvalidUnit,
    UnmappedPoint,
    TypeMismatch,
    OutOfRange,
    NonFinite,
    ValueTooLarge,
}

impl RejectReason {
    pub const ALL: [Self; 9] = [
        Self::InvalidDevice,
        Self::InvalidPoint,
        Self::InvalidSource,
        Self::InvalidUnit,
        Self::UnmappedPoint,
        Self::TypeMismatch,
        Self::OutOfRange,
        Self::NonFinite,
        Self::ValueTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidDevice => "invalid_device",
            Self::InvalidPoint => "invalid_point",
            Self::InvalidSource => "invalid_source",
            Self::InvalidUnit => "invalid_unit",
            Self::UnmappedPoint => "unmapped_point",
            Self::TypeMismatch => "type_mismatch",
            Self::OutOfRange => "out_of_range",
            Self::NonFinite => "non_finite",
            Self::ValueTooLarge => "value_too_large",
        }
    }
}

/// Counters shared by every stage.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Samples handed over by drivers.
    pub received: AtomicU64,
    /// Readings the normalizer produced (sent towards the writer).
    pub accepted: AtomicU64,
    /// Samples dropped by a deadband (not an error).
    pub filtered: AtomicU64,
    /// Device timestamps replaced by the ingest time (implausible clock).
    pub clock_fallbacks: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    last_reject_log_ms: [AtomicU64; RejectReason::ALL.len()],
    suppressed_rejects: [AtomicU64; RejectReason::ALL.len()],
    /// Readings durably committed.
    pub committed: AtomicU64,
    /// Group commits (transactions).
    pub commits: AtomicU64,
    /// Highest committed seq (0 before the first).
    pub last_seq: AtomicU64,
    /// Failed commit attempts (disk full, I/O error, lock timeout).
    pub write_errors: AtomicU64,
    /// Readings deleted by retention.
    pub retention_deleted: AtomicU64,
    /// Readings buffered in the writer, not yet committed.
    pub writer_pending: AtomicU64,
    /// When the writer last proved it is alive and not stuck (ms since
    /// start): after each successful commit and each idle wake-up.
    pub writer_heartbeat_ms: AtomicU64,
    /// Samples queued between drivers and the normalizer.
    pub ingest_queue: Arc<AtomicU64>,
    /// Readings queued between the normalizer and the writer.
    pub writer_queue: Arc<AtomicU64>,
    /// Device writes that succeeded / failed (any reason).
    pub writes_ok: AtomicU64,
    pub writes_failed: AtomicU64,
    per_device: Mutex<HashMap<Arc<str>, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_queues(Arc::default(), Arc::default())
    }

    /// Metrics whose queue depths read the given channel counters.
    pub fn with_queues(ingest_queue: Arc<AtomicU64>, writer_queue: Arc<AtomicU64>) -> Self {
        Self {
            started: Instant::now(),
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            clock_fallbacks: AtomicU64::new(0),
            rejected: Default::default(),
            last_reject_log_ms: Default::default(),
            suppressed_rejects: Default::default(),
            committed: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            retention_deleted: AtomicU64::new(0),
            writer_pending: AtomicU64::new(0),
            writer_heartbeat_ms: AtomicU64::new(0),
            ingest_queue,
            writer_queue,
            writes_ok: AtomicU64::new(0),
            writes_failed: AtomicU64::new(0),
            per_device: Mutex::default(),
        }
    }

    /// Milliseconds since the gateway started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Counts a rejection and logs it, at most once per second per reason
    /// (with how many were not logged since), so a flood of bad input
    /// cannot flood the journal.
    pub fn reject(
        &self,
        reason: RejectReason,
        device: &str,
        point: &str,
        detail: &dyn std::fmt::Display,
    ) {
        let i = reason as usize;
        self.rejected[i].fetch_add(1, Relaxed);
        let now = self.uptime_ms() + 1_000;
        let last = self.last_reject_log_ms[i].load(Relaxed);
        if now.saturating_sub(last) >= 1_000
            && self.last_reject_log_ms[i]
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed_rejects[i].swap(0, Relaxed);
            tracing::warn!(
                reason = reason.as_str(),
                device,
                point,
                suppressed,
                "sample rejected: {detail}"
            );
        } else {
            self.suppressed_rejects[i].fetch_add(1, Relaxed);
        }
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize].load(Relaxed)
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Adds committed counts per device (called by the writer per commit).
    pub fn add_device_counts(&self, counts: impl IntoIterator<Item = (Arc<str>, u64)>) {
        let mut map = self.per_device.lock().unwrap_or_else(|e| e.into_inner());
        for (device, n) in counts {
            *map.entry(device).or_default() += n;
        }
    }

    /// Committed readings per device, sorted by device.
    pub fn device_counts(&self) -> Vec<(Arc<str>, u64)> {
        let map = self.per_device.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map.iter().map(|(d, n)| (d.clone(), *n)).collect();
        out.sort();
        out
    }

    /// A point-in-time copy of the counters.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at_ms: self.uptime_ms(),
            received: self.received.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            rejected: self.rejected_total(),
            committed: self.committed.load(Relaxed),
            commits: self.commits.load(Relaxed),
            last_seq: self.last_seq.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            ingest_queue: self.ingest_queue.load(Relaxed),
            writer_queue: self.writer_queue.load(Relaxed),
            writer_pending: self.writer_pending.load(Relaxed),
        }
    }
}

/// Counter values at one moment; differences of two give rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub at_ms: u64,
    pub received: u64,
    pub accepted: u64,
    pub filtered: u64,
    pub rejected: u64,
    pub committed: u64,
    pub commits: u64,
    pub last_seq: u64,
    pub write_errors: u64,
    pub ingest_queue: u64,
    pub writer_queue: u64,
    pub writer_pending: u64,
}

impl Snapshot {
    /// Committed readings per second between `earlier` and `self`.
    pub fn commit_rate(&self, earlier: &Snapshot) -> f64 {
        let dt = self.at_ms.saturating_sub(earlier.at_ms).max(1) as f64 / 1000.0;
        self.committed.saturating_sub(earlier.committed) as f64 / dt
    }

    /// Everything still moving through the pipeline.
    pub fn in_flight(&self) -> u64 {
        self.ingest_queue + self.writer_queue + self.writer_pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_counted_per_reason() {
        let m = Metrics::new();
        for _ in 0..5 {
            m.reject(RejectReason::NonFinite, "d", "p", &"NaN");
        }
        m.reject(RejectReason::TypeMismatch, "d", "p", &"text for f64");
        assert_eq!(m.rejected(RejectReason::NonFinite), 5);
        assert_eq!(m.rejected(RejectReason::TypeMismatch), 1);
        assert_eq!(m.rejected_total(), 6);
        // Four of the five were within the same second: not logged, counted.
        assert_eq!(
            m.suppressed_rejects[RejectReason::NonFinite as usize].load(Relaxed),
            4
        );
    }
}
