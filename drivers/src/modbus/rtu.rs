//! The Modbus RTU poller: one task owns each serial bus, so requests to
//! its slaves never overlap. Between transactions it keeps the
//! 3.5-character silence that delimits RTU frames, plus the configured
//! turnaround delay. A slave that does not answer costs one timeout, is
//! reported offline once, and is skipped for `backoff` before it is tried
//! again, so a silent or unplugged slave never stalls the others. A CRC or
//! framing error (or a late answer read as the next one) means the bytes
//! on the line cannot be trusted: the port is reopened, which drops them.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::time::Instant;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use super::config::{ModbusConfig, Parity, RtuBusConfig};
use super::poll::{Commands, DeviceRt, Outcome, Wire, link_down, send, step};
use crate::SampleSink;
use crate::command::CommandReceiver;

/// Longest wait between attempts to open a serial port.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(30);

/// Polls one serial bus until shutdown.
pub(crate) struct RtuBus {
    config: RtuBusConfig,
    pub(crate) devices: Vec<DeviceRt>,
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

    pub(crate) async fn run(
        mut self,
        sink: SampleSink,
        commands: CommandReceiver,
        shutdown: CancellationToken,
    ) {
        let mut commands = Commands(Some(commands));
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
                    let why = format!("cannot open {}: {e}", self.config.path.display());
                    let (devices, wait) = (&mut self.devices, reopen_delay);
                    if !link_down(devices, &sink, wait, &why, &shutdown, &mut commands).await {
                        return;
                    }
                    reopen_delay = (reopen_delay * 2).min(MAX_REOPEN_DELAY);
                    continue;
                }
            };
            let rx_bytes = Arc::new(AtomicU64::new(0));
            let mut ctx = tokio_modbus::client::rtu::attach(Metered {
                inner: port,
                rx_bytes: rx_bytes.clone(),
            });
            loop {
                let wire = Wire {
                    timeout: self.config.timeout,
                    pause: silence,
                    rx_bytes: Some(&rx_bytes),
                };
                let backoff = &self.backoff_until;
                let ready_at = |d| backoff[d];
                let (devices, ctx) = (&mut self.devices, &mut ctx);
                let Some((d, mut out, outcome)) =
                    step(devices, ctx, ready_at, &wire, &shutdown, &mut commands).await
                else {
                    return;
                };
                if let Some(d) = d {
                    match outcome {
                        Outcome::Answered => self.backoff_until[d] = None,
                        Outcome::TimedOut => {
                            self.devices[d].went_offline(&mut out);
                            self.backoff_until[d] = Some(Instant::now() + self.config.backoff);
                        }
                        Outcome::Broken => {}
                    }
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

/// A serial port that counts the bytes it receives, so a transaction that
/// times out after bytes arrived is told apart as garbled (the RTU decoder
/// drops frames with a bad CRC and keeps waiting).
#[derive(Debug)]
pub(crate) struct Metered<S> {
    pub(crate) inner: S,
    pub(crate) rx_bytes: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        if got > 0 {
            self.rx_bytes.fetch_add(got as u64, Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::poll::{DeviceRt, Outcome, Wire};
    use crate::stats::DeviceState;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CONFIG: &str = r#"
[[rtu]]
path = "/dev/null"
devices = [{ id = "meter", unit = 7, map = "m" }]

[maps.m]
[[maps.m.groups]]
name = "g"
points = [{ name = "power", area = "holding_register", address = 0, type = "u16" }]
[[maps.m.groups]]
name = "setpoints"
interval = "1h"
points = [{ name = "limit", area = "holding_register", address = 1, type = "u16", writable = true }]
"#;

    /// A device on an in-memory line; `answer` is what the "slave" sends
    /// back to the first request (nothing if empty).
    async fn poll_once(answer: Vec<u8>) -> (Outcome, DeviceRt) {
        let config: ModbusConfig = toml::from_str(CONFIG).expect("parses");
        let bus = RtuBus::new(&config.rtu[0], &config);
        let mut device = bus.devices.into_iter().next().expect("one device");
        let (master, mut slave) = tokio::io::duplex(256);
        let rx_bytes = Arc::new(AtomicU64::new(0));
        let mut ctx = tokio_modbus::client::rtu::attach(Metered {
            inner: master,
            rx_bytes: rx_bytes.clone(),
        });
        let slave = tokio::spawn(async move {
            let mut request = [0u8; 8];
            slave.read_exact(&mut request).await.expect("a request");
            assert_eq!(&request[..2], &[7, 3], "read holding registers of unit 7");
            slave.write_all(&answer).await.expect("answer sent");
            slave // keep the line open
        });
        let wire = Wire {
            timeout: Duration::from_millis(200),
            pause: Duration::ZERO,
            rx_bytes: Some(&rx_bytes),
        };
        let (_, outcome) = device.poll(&mut ctx, 0, &wire).await;
        drop(slave.await);
        (outcome, device)
    }

    #[tokio::test]
    async fn a_garbled_answer_counts_as_a_crc_error_and_breaks_the_link() {
        // Unit 7, function 3, 2 bytes, value 42, then a wrong CRC.
        let (outcome, device) = poll_once(vec![7, 3, 2, 0, 42, 0xDE, 0xAD]).await;
        assert_eq!(outcome, Outcome::Broken, "the port is reopened");
        let s = device.stats.snapshot();
        assert_eq!(
            (s.requests, s.crc_errors, s.timeouts, s.answers),
            (1, 1, 0, 0)
        );
    }

    #[tokio::test]
    async fn silence_counts_as_a_timeout() {
        let (outcome, device) = poll_once(Vec::new()).await;
        assert_eq!(outcome, Outcome::TimedOut);
        let s = device.stats.snapshot();
        assert_eq!(
            (s.requests, s.crc_errors, s.timeouts, s.answers),
            (1, 0, 1, 0)
        );
    }

    #[tokio::test]
    async fn a_good_answer_counts_as_answered_with_its_latency() {
        // The same frame with its real CRC-16/MODBUS (low byte first).
        let mut answer = vec![7, 3, 2, 0, 42];
        let mut crc: u16 = 0xFFFF;
        for &b in &answer {
            crc ^= u16::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xA001
                } else {
                    crc >> 1
                };
            }
        }
        answer.extend(crc.to_le_bytes());
        let (outcome, device) = poll_once(answer).await;
        assert_eq!(outcome, Outcome::Answered);
        let s = device.stats.snapshot();
        assert_eq!(
            (s.requests, s.crc_errors, s.timeouts, s.answers),
            (1, 0, 0, 1)
        );
        assert_eq!(s.state, DeviceState::Online);
    }

    /// Runs one link step with `request` queued and nothing due yet.
    async fn step_with(request: crate::command::WriteRequest) -> (Option<usize>, u64) {
        use crate::modbus::poll::{Commands, step};
        let config: ModbusConfig = toml::from_str(CONFIG).expect("parses");
        let bus = RtuBus::new(&config.rtu[0], &config);
        let mut devices = bus.devices;
        let (master, _slave) = tokio::io::duplex(256);
        let mut ctx = tokio_modbus::client::rtu::attach(master);
        let (tx, rx) = crate::command::command_channel();
        tx.try_send(request).expect("queued");
        let wire = Wire {
            timeout: Duration::from_millis(100),
            pause: Duration::ZERO,
            rx_bytes: None,
        };
        let shutdown = CancellationToken::new();
        let (d, _, outcome) = step(
            &mut devices,
            &mut ctx,
            |_| None,
            &wire,
            &shutdown,
            &mut Commands(Some(rx)),
        )
        .await
        .expect("a step");
        assert_eq!(outcome, Outcome::Answered);
        (d, devices[0].stats.snapshot().requests)
    }

    fn request(
        point: &str,
    ) -> (
        crate::command::WriteRequest,
        tokio::sync::oneshot::Receiver<
            Result<crate::command::WriteReport, crate::command::WriteError>,
        >,
    ) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = crate::command::WriteRequest {
            device: "meter".into(),
            point: point.into(),
            value: crate::RawValue::Text("1".into()),
            verify: false,
            reply,
        };
        (request, answer)
    }

    #[tokio::test]
    async fn a_write_whose_caller_gave_up_is_not_carried_out() {
        let (request, answer) = request("limit");
        drop(answer);
        assert_eq!(step_with(request).await, (None, 0), "no transaction");
    }

    #[tokio::test]
    async fn a_write_refused_before_any_io_says_nothing_about_the_device() {
        // Not writable: refused without a transaction, and no device is
        // named, so a slave's back-off is left as it is.
        let (request, answer) = request("power");
        assert_eq!(step_with(request).await, (None, 0));
        let refused = answer.await.expect("answered").expect_err("refused");
        assert_eq!(refused.kind(), "not_writable");
    }
}
