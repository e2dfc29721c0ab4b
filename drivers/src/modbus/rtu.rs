//! The Modbus RTU poller: one task owns each serial bus, so requests to
//! its slaves never overlap. Between transactions it keeps the
//! 3.5-character silence that delimits RTU frames, plus the configured
//! turnaround delay. A slave that does not answer costs one timeout, is
//! reported offline once, and is skipped for `backoff` before it is tried
//! again, so a silent or unplugged slave never stalls the others. A CRC or
//! framing error (or a late answer read as the next one) means the bytes
//! on the line cannot be trusted: the port is reopened, which drops them.

use std::time::Duration;

use tokio::time::Instant;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use super::config::{ModbusConfig, Parity, RtuBusConfig};
use super::poll::{DeviceRt, Outcome, link_down, next_due, send, wait_until};
use crate::SampleSink;

/// Longest wait between attempts to open a serial port.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(30);

/// Polls one serial bus until shutdown.
pub(crate) struct RtuBus {
    config: RtuBusConfig,
    devices: Vec<DeviceRt>,
    /// A slave that timed out is not asked again before this time.
    backoff_until: Vec<Option<Instant>>,
}

impl RtuBus {
    pub(crate) fn new(config: &RtuBusConfig, modbus: &ModbusConfig) -> Self {
        let devices = DeviceRt::for_link(&config.devices, &modbus.maps, |d| {
            format!("modbus-rtu://{}/{}", config.path.display(), d.unit)
        });
        Self {
            backoff_until: vec![None; devices.len()],
            config: config.clone(),
            devices,
        }
    }

    /// The silence between frames: 3.5 characters (fixed at 1.75 ms above
    /// 19,200 baud, as the specification says), plus the turnaround delay.
    fn silence(&self) -> Duration {
        let bits = 1
            + u32::from(self.config.data_bits)
            + u32::from(self.config.parity != Parity::None)
            + u32::from(self.config.stop_bits);
        let frame_gap = if self.config.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            Duration::from_secs_f64(3.5 * f64::from(bits) / f64::from(self.config.baud))
        };
        frame_gap + self.config.turnaround_delay
    }

    fn open(&self) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
        let parity = match self.config.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let data_bits = if self.config.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        };
        let stop_bits = if self.config.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        tokio_serial::new(self.config.path.to_string_lossy(), self.config.baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .open_native_async()
    }

    pub(crate) async fn run(mut self, sink: SampleSink, shutdown: CancellationToken) {
        let silence = self.silence();
        let mut reopen_delay = Duration::from_millis(500);
        loop {
            let port = match self.open() {
                Ok(port) => {
                    reopen_delay = Duration::from_millis(500);
                    port
                }
                Err(e) => {
                    tracing::warn!(path = %self.config.path.display(), error = %e, retry_in = ?reopen_delay, "cannot open the serial bus");
                    if !link_down(&mut self.devices, &sink, reopen_delay, &shutdown).await {
                        return;
                    }
                    reopen_delay = (reopen_delay * 2).min(MAX_REOPEN_DELAY);
                    continue;
                }
            };
            let mut ctx = tokio_modbus::client::rtu::attach(port);
            loop {
                let backoff = &self.backoff_until;
                let Some((d, g, due)) = next_due(&self.devices, |d| backoff[d]) else {
                    return;
                };
                if !wait_until(due, &shutdown).await {
                    return;
                }
                let (mut out, outcome) =
                    self.devices[d].poll(&mut ctx, g, self.config.timeout).await;
                let device = &mut self.devices[d];
                match outcome {
                    Outcome::Answered => self.backoff_until[d] = None,
                    Outcome::TimedOut => {
                        device.went_offline(&mut out);
                        self.backoff_until[d] = Some(Instant::now() + self.config.backoff);
                    }
                    Outcome::Broken => {}
                }
                if !send(&sink, &self.devices, out, &shutdown).await {
                    return;
                }
                if outcome == Outcome::Broken {
                    tracing::debug!(path = %self.config.path.display(), "garbled answer on the bus; reopening the port");
                    break;
                }
                tokio::time::sleep(silence).await;
            }
        }
    }
}
