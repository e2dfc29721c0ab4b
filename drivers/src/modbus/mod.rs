//! Modbus TCP (and, next, RTU): devices described by register maps,
//! polled with coalesced requests, decoded by data type and byte/word
//! order.
//!
//! - [`config`]: connections, buses, devices, register maps, validation.
//! - [`codec`]: registers ⇄ typed values.
//! - [`plan`]: coalescing reads, splitting rejected ones.
//! - `tcp`: the per-connection polling task.
//!
//! Work in progress (issue #3): RTU buses, writes and per-slave counters
//! follow. Until RTU polling exists, a configuration with
//! `[[drivers.modbus.rtu]]` is refused instead of silently polling nothing.

pub mod codec;
pub mod config;
pub mod plan;
mod poll;
pub mod simulator;
mod tcp;

pub use config::ModbusConfig;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SampleSink;

/// The Modbus driver: one task per TCP connection.
pub struct ModbusDriver {
    config: ModbusConfig,
    sink: SampleSink,
}

impl ModbusDriver {
    pub fn new(config: ModbusConfig, sink: SampleSink) -> Self {
        Self { config, sink }
    }

    /// Polls every configured device until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        for connection in &self.config.tcp {
            let task = tcp::TcpConnection::new(connection, &self.config);
            tracker.spawn(task.run(self.sink.clone(), shutdown.clone()));
        }
        tracker.close();
        tracker.wait().await;
    }
}
