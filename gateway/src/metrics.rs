//! Internal counters of the pipeline: accepted, rejected (per reason),
//! committed, queue depths, writer progress and commit latency. Lock-free
//! atomics on the hot path; the API serves them as Prometheus metrics
//! (`api::prometheus`), the demo, `STATUS=` and the benchmark read them.
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
    /// Duration of each group commit (the transaction and its fsync).
    pub commit_latency: Histogram,
    per_device: Mutex<HashMap<Arc<str>, u64>>,
}

/// Upper bounds (seconds) of [`Metrics::commit_latency`]'s buckets.
pub const COMMIT_LATENCY_BOUNDS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A histogram of durations with fixed bucket bounds, lock-free: the
/// shape Prometheus scrapes (`_bucket{le=..}`, `_sum`, `_count`).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, plus one for larger values (not cumulative).
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn record(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Cumulative counts per bound (`le`), the total count and the sum in seconds.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            total += count.load(Relaxed);
            out.push((*bound, total));
        }
        total += self.counts[self.bounds.len()].load(Relaxed);
        (out, total, self.sum_ns.load(Relaxed) as f64 / 1e9)
    }
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
            commit_latency: Histogram::new(COMMIT_LATENCY_BOUNDS),
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

/// Resident memory of this process in bytes (`VmRSS` of
/// `/proc/self/status`, which is `statm`'s resident pages already
/// multiplied by the page size); 0 where there is no procfs.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
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
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.record(std::time::Duration::from_micros(500));
        h.record(std::time::Duration::from_millis(5));
        h.record(std::time::Duration::from_millis(50));
        let (buckets, count, sum) = h.cumulative();
        assert_eq!(buckets, vec![(0.001, 1), (0.01, 2)]);
        assert_eq!(count, 3);
        assert!((sum - 0.0555).abs() < 1e-9);
    }

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
