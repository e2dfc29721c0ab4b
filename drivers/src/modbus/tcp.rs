//! The Modbus TCP poller: one task per connection, serving every unit id
//! behind it (a device, or a TCP-to-RTU gateway) from one socket.
//!
//! Each poll group of each device is due at its own interval; its points
//! are read with the coalesced requests of [`super::plan`]. A request the
//! device rejects with "illegal data address" is split and the working
//! layout kept for the session. A timeout or a protocol error (which is
//! how a late response with a stale transaction id shows up) drops the
//! connection, so no stale answer is ever decoded; reconnects back off
//! exponentially with jitter. When a device stops answering, its points get
//! one sample of quality bad (their last value); readings resume as good
//! when it answers again.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_modbus::client::Context;
use tokio_util::sync::CancellationToken;

use super::config::{ModbusConfig, TcpConnectionConfig};
use super::poll::{DeviceRt, Outcome, link_down, next_due, send, wait_until};
use crate::{SampleSink, now_ns};

/// Polls one TCP connection until shutdown.
pub(crate) struct TcpConnection {
    config: TcpConnectionConfig,
    devices: Vec<DeviceRt>,
}

impl TcpConnection {
    pub(crate) fn new(config: &TcpConnectionConfig, modbus: &ModbusConfig) -> Self {
        let devices = DeviceRt::for_link(&config.devices, &modbus.maps, |d| {
            format!("modbus-tcp://{}/{}", config.address, d.unit)
        });
        Self {
            config: config.clone(),
            devices,
        }
    }

    pub(crate) async fn run(mut self, sink: SampleSink, shutdown: CancellationToken) {
        let mut delay = self.config.reconnect_min;
        loop {
            let ctx = tokio::select! {
                () = shutdown.cancelled() => return,
                ctx = self.connect() => ctx,
            };
            let mut ctx = match ctx {
                Ok(ctx) => {
                    delay = self.config.reconnect_min;
                    ctx
                }
                Err(e) => {
                    tracing::warn!(address = %self.config.address, error = %e, retry_in = ?delay, "cannot connect to Modbus TCP device");
                    if !link_down(&mut self.devices, &sink, jitter(delay), &shutdown).await {
                        return;
                    }
                    delay = (delay * 2).min(self.config.reconnect_max);
                    continue;
                }
            };
            // Poll until the link fails or we stop.
            loop {
                let Some((d, g, due)) = next_due(&self.devices, |_| None) else {
                    return;
                };
                if !wait_until(due, &shutdown).await {
                    return;
                }
                let (mut out, outcome) =
                    self.devices[d].poll(&mut ctx, g, self.config.timeout).await;
                // On TCP any failure drops the connection: a late answer
                // would otherwise be read as the next request's.
                let link_ok = outcome == Outcome::Answered;
                if !link_ok {
                    self.devices[d].went_offline(&mut out);
                }
                if !send(&sink, &self.devices, out, &shutdown).await {
                    return;
                }
                if !link_ok {
                    break;
                }
            }
        }
    }

    async fn connect(&self) -> std::io::Result<Context> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.config.address)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::other(format!("{} resolves to no address", self.config.address))
            })?;
        tokio::time::timeout(
            self.config.timeout,
            tokio_modbus::client::tcp::connect(addr),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

fn jitter(delay: Duration) -> Duration {
    // ±20% from the clock's low bits: enough to spread reconnects of many gateways.
    let nanos = u64::try_from(now_ns()).unwrap_or(0);
    let factor = 0.8 + (nanos % 400) as f64 / 1000.0;
    delay.mul_f64(factor)
}
