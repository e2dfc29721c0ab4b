//! Modbus TCP and RTU: devices described by register maps, polled with
//! coalesced requests, decoded by data type and byte/word order.
//!
//! - [`config`]: connections, buses, devices, register maps, validation.
//! - [`codec`]: registers ⇄ typed values.
//! - [`plan`]: coalescing reads, splitting rejected ones.
//! - `poll`: polling one device (reads, splits, decoding, quality).
//! - `tcp`: one task per TCP connection; `rtu`: one task per serial bus.
//!
//! Writes arrive on each link's command queue ([`crate::command`]) and run
//! between polls, so a bus never sees two transactions at once.

pub mod codec;
pub mod config;
pub mod plan;
mod poll;
mod rtu;
mod tcp;

pub use config::ModbusConfig;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::component::{BoxError, BuildContext, Component, DriverConfig};
use crate::{DeviceBinding, SampleSink};
use crate::command::{CommandReceiver, CommandSender, command_channel};
use crate::stats::DeviceStats;

impl DriverConfig for ModbusConfig {
    fn devices(&self, path: &str) -> Vec<DeviceBinding> {
        self.device_bindings(path)
    }

    fn build(&self, context: BuildContext) -> Result<Component, BoxError> {
        let driver = ModbusDriver::new(self.clone(), context.sink);
        let (devices, writers) = (driver.stats(), driver.command_senders());
        Ok(Component {
            devices,
            writers,
            ..Component::task(driver.run(context.shutdown))
        })
    }
}

/// The Modbus driver: one task per TCP connection and per serial bus.
pub struct ModbusDriver {
    sink: SampleSink,
    links: Vec<(Link, CommandSender, CommandReceiver)>,
}

enum Link {
    Tcp(tcp::TcpConnection),
    Rtu(rtu::RtuBus),
}

impl Link {
    fn devices(&self) -> &[poll::DeviceRt] {
        match self {
            Link::Tcp(c) => &c.devices,
            Link::Rtu(b) => &b.devices,
        }
    }
}

impl ModbusDriver {
    pub fn new(config: ModbusConfig, sink: SampleSink) -> Self {
        let tcp = config
            .tcp
            .iter()
            .map(|c| Link::Tcp(tcp::TcpConnection::new(c, &config)));
        let rtu = config
            .rtu
            .iter()
            .map(|b| Link::Rtu(rtu::RtuBus::new(b, &config)));
        let links = tcp
            .chain(rtu)
            .map(|link| {
                let (tx, rx) = command_channel();
                (link, tx, rx)
            })
            .collect();
        Self { sink, links }
    }

    /// Where each device's writes go (devices of one link share its queue).
    pub fn command_senders(&self) -> Vec<(Arc<str>, CommandSender)> {
        self.links
            .iter()
            .flat_map(|(link, tx, _)| link.devices().iter().map(|d| (d.id.clone(), tx.clone())))
            .collect()
    }

    /// Every device's transaction counters.
    pub fn stats(&self) -> Vec<Arc<DeviceStats>> {
        self.links
            .iter()
            .flat_map(|(link, _, _)| link.devices().iter().map(|d| d.stats.clone()))
            .collect()
    }

    /// Polls every configured device, and writes what is asked, until
    /// `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        for (link, _, commands) in self.links {
            let (sink, shutdown) = (self.sink.clone(), shutdown.clone());
            match link {
                Link::Tcp(task) => tracker.spawn(task.run(sink, commands, shutdown)),
                Link::Rtu(task) => tracker.spawn(task.run(sink, commands, shutdown)),
            };
        }
        tracker.close();
        tracker.wait().await;
    }
}
