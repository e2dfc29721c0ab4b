//! Per-device transaction counters, kept by the drivers and read by the
//! gateway (control socket, metrics) without locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Whether a device answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Not asked yet.
    Unknown,
    Online,
    Offline,
}

/// Counters of one device. Every field only grows, except `state`.
#[derive(Debug)]
pub struct DeviceStats {
    pub device: Arc<str>,
    /// Protocol and address, e.g. `modbus-rtu:///dev/ttyS1/3`.
    pub source: Arc<str>,
    state: AtomicU8,
    /// Transactions sent (reads and writes).
    pub requests: AtomicU64,
    /// Transactions answered with data or an acknowledgement.
    pub answers: AtomicU64,
    /// No answer in time.
    pub timeouts: AtomicU64,
    /// Answers that arrived garbled (bad CRC or framing): bytes came, no
    /// valid frame did.
    pub crc_errors: AtomicU64,
    /// Exception responses (illegal address, device busy, ...).
    pub exceptions: AtomicU64,
    /// Other link failures (connection lost, mismatched answers, frames
    /// from another slave while this one was asked).
    pub link_errors: AtomicU64,
    /// Answers that came after their request had timed out, discarded
    /// (serial lines).
    pub late_answers: AtomicU64,
    /// Writes carried out / refused or failed.
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    /// Sum of round-trip times of answered transactions, in µs.
    pub latency_us_total: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStatsSnapshot {
    pub device: String,
    pub source: String,
    pub state: DeviceState,
    pub requests: u64,
    pub answers: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    pub exceptions: u64,
    pub link_errors: u64,
    pub late_answers: u64,
    pub writes: u64,
    pub write_errors: u64,
    /// Mean round trip of answered transactions, in µs.
    pub latency_us: u64,
}

impl DeviceStats {
    pub fn new(device: Arc<str>, source: Arc<str>) -> Self {
        Self {
            device,
            source,
            state: AtomicU8::new(0),
            requests: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            crc_errors: AtomicU64::new(0),
            exceptions: AtomicU64::new(0),
            link_errors: AtomicU64::new(0),
            late_answers: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            latency_us_total: AtomicU64::new(0),
        }
    }

    pub fn set_state(&self, state: DeviceState) {
        self.state.store(state as u8, Relaxed);
    }

    pub fn state(&self) -> DeviceState {
        match self.state.load(Relaxed) {
            1 => DeviceState::Online,
            2 => DeviceState::Offline,
            _ => DeviceState::Unknown,
        }
    }

    pub fn snapshot(&self) -> DeviceStatsSnapshot {
        let answers = self.answers.load(Relaxed);
        DeviceStatsSnapshot {
            device: self.device.to_string(),
            source: self.source.to_string(),
            state: self.state(),
            requests: self.requests.load(Relaxed),
            answers,
            timeouts: self.timeouts.load(Relaxed),
            crc_errors: self.crc_errors.load(Relaxed),
            exceptions: self.exceptions.load(Relaxed),
            link_errors: self.link_errors.load(Relaxed),
            late_answers: self.late_answers.load(Relaxed),
            writes: self.writes.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            latency_us: self
                .latency_us_total
                .load(Relaxed)
                .checked_div(answers)
                .unwrap_or(0),
        }
    }
}
