//! Modbus TCP and RTU: devices described by register maps, polled with
//! coalesced requests, decoded by data type and byte/word order.
//!
//! - [`config`]: connections, buses, devices, register maps, validation.
//! - [`codec`]: registers ⇄ typed values.
//! - [`plan`]: coalescing reads, splitting rejected ones.
//! - `poll`: polling one device (reads, splits, decoding, quality).
//! - `tcp`: one task per TCP connection; `rtu`: one task per serial bus.
//! - [`simulator`]: a simulated PLC for the demo and the benchmark.
//!
//! Work in progress (issue #3): writes and exported per-slave counters.

pub mod codec;
pub mod config;
pub mod plan;
mod poll;
mod rtu;
pub mod simulator;
mod tcp;

pub use config::ModbusConfig;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SampleSink;

/// The Modbus driver: one task per TCP connection and per serial bus.
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
        for bus in &self.config.rtu {
            let task = rtu::RtuBus::new(bus, &self.config);
            tracker.spawn(task.run(self.sink.clone(), shutdown.clone()));
        }
        tracker.close();
        tracker.wait().await;
    }
}
