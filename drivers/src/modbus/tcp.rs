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
use super::poll::{Commands, DeviceRt, Outcome, Wire, link_down, refuse_offline, send, step};
use crate::command::CommandReceiver;
use biota_common::config::HostPort;
use biota_common::time::now_ns;
use crate::SampleSink;

/// Polls one TCP connection until shutdown.
pub(crate) struct TcpConnection {
    config: TcpConnectionConfig,
    pub(crate) devices: Vec<DeviceRt>,
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

    pub(crate) async fn run(
        mut self,
        sink: SampleSink,
        commands: CommandReceiver,
        shutdown: CancellationToken,
    ) {
        let mut commands = Commands(Some(commands));
        let mut delay = self.config.reconnect_min;
        loop {
            let ctx = {
                let connect = connect(self.config.address.value(), self.config.timeout);
                tokio::pin!(connect);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        ctx = &mut connect => break ctx,
                        // Writes are answered at once, not after the connect.
                        request = commands.next() => refuse_offline(
                            request,
                            format!("connecting to {}", self.config.address),
                        ),
                    }
                }
            };
            let mut ctx = match ctx {
                Ok(ctx) => {
                    delay = self.config.reconnect_min;
                    ctx
                }
                Err(e) => {
                    tracing::warn!(address = %self.config.address, error = %e, retry_in = ?delay, "cannot connect to Modbus TCP device");
                    let why = format!("cannot connect to {}: {e}", self.config.address);
                    let (devices, wait) = (&mut self.devices, jitter(delay));
                    if !link_down(devices, &sink, wait, &why, &shutdown, &mut commands).await {
                        return;
                    }
                    delay = (delay * 2).min(self.config.reconnect_max);
                    continue;
                }
            };
            // Poll (and write) until the link fails or we stop.
            loop {
                let wire = Wire {
                    timeout: self.config.timeout,
                    pause: Duration::ZERO,
                    rx_bytes: None,
                };
                let ready_at = |_| None;
                let (devices, ctx) = (&mut self.devices, &mut ctx);
                let Some((d, mut out, outcome)) =
                    step(devices, ctx, ready_at, &wire, &shutdown, &mut commands).await
                else {
                    return;
                };
                // On TCP any failure drops the connection: a late answer
                // would otherwise be read as the next request's.
                let link_ok = outcome == Outcome::Answered;
                if let (false, Some(d)) = (link_ok, d) {
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
}

/// Resolves and connects, both within the request timeout.
async fn connect(address: Option<&HostPort>, timeout: Duration) -> std::io::Result<Context> {
    // Validation refuses a configuration whose address does not parse.
    let address = address.ok_or_else(|| std::io::Error::other("the address is not host:port"))?;
    let attempt = async {
        let addr: SocketAddr = tokio::net::lookup_host((address.host.as_str(), address.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{address} resolves to no address")))?;
        tokio_modbus::client::tcp::connect(addr).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

fn jitter(delay: Duration) -> Duration {
    // ±20% from the clock's low bits: enough to spread reconnects of many gateways.
    let nanos = u64::try_from(now_ns()).unwrap_or(0);
    let factor = 0.8 + (nanos % 400) as f64 / 1000.0;
    delay.mul_f64(factor)
}
