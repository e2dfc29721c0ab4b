//! The Modbus RTU poller: one task owns each serial bus, so requests to
//! its slaves never overlap.
//!
//! - [`frame`]: RTU framing (CRC, frame lengths);
//! - `master`: one transaction at a time on the line, with its silences,
//!   resynchronisation after a bad frame and late-answer drain.
//!
//! The port is opened with the configured settings, which are read back:
//! a setting the port did not take (a pseudo-terminal refuses parity and 7
//! data bits) is an error naming the port and the setting, and the bus is
//! treated as unopenable (its devices offline, retried with back-off). A
//! request that gets no valid answer is tried `retries` more times; a
//! slave that still does not answer is reported offline once and skipped
//! for `backoff`, so a silent or unplugged slave never stalls the others.
//! Only an I/O error on the port reopens it (after a back-off, the bus's
//! devices offline meanwhile).

pub mod frame;
mod master;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialPortBuilderExt};
use tokio_util::sync::CancellationToken;

use super::config::{ModbusConfig, Parity, RtuBusConfig};
use super::poll::{Commands, DeviceRt, Outcome, link_down, send, step};
use crate::SampleSink;
use crate::command::CommandReceiver;
use master::{RtuMaster, Timing};

/// Longest wait between attempts to open a serial port.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(30);

/// How far the baud rate a port reports may be from the one asked for:
/// UART clocks round it by a few per mille, a wrong rate is off by a third
/// or more.
const BAUD_TOLERANCE: f64 = 0.05;

/// Why a serial bus cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RtuError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: tokio_serial::Error,
    },
    #[error("cannot read the settings of {} back: {source}", path.display())]
    ReadBack {
        path: PathBuf,
        #[source]
        source: tokio_serial::Error,
    },
    #[error("{} does not take the setting {setting} = {wanted} (the port reports {actual})", path.display())]
    Refused {
        path: PathBuf,
        /// `parity`, `data bits`, `stop bits` or `baud`.
        setting: &'static str,
        wanted: String,
        actual: String,
    },
}

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

    /// The line's timing: a character is a start bit, the data bits, the
    /// parity bit and the stop bits; frames end with 3.5 characters of
    /// silence, fixed at 1.75 ms above 19,200 baud (Modbus over Serial
    /// Line V1.02, §2.5.1.1).
    fn timing(&self) -> Timing {
        let bits = 1
            + u32::from(self.config.data_bits)
            + u32::from(self.config.parity != Parity::None)
            + u32::from(self.config.stop_bits);
        let char_time = Duration::from_secs_f64(f64::from(bits) / f64::from(self.config.baud));
        let frame_gap = if self.config.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            char_time.mul_f64(3.5)
        };
        Timing {
            timeout: self.config.timeout,
            frame_gap,
            turnaround: self.config.turnaround_delay,
            char_time,
            retries: self.config.retries,
        }
    }

    /// Opens the port and checks that it took every setting.
    fn open(&self) -> Result<tokio_serial::SerialStream, RtuError> {
        let path = &self.config.path;
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
        let port = tokio_serial::new(path.to_string_lossy(), self.config.baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .open_native_async()
            .map_err(|source| RtuError::Open {
                path: path.clone(),
                source,
            })?;
        check_settings(&port, path, self.config.baud, parity, data_bits, stop_bits)?;
        Ok(port)
    }

    pub(crate) async fn run(
        mut self,
        sink: SampleSink,
        commands: CommandReceiver,
        shutdown: CancellationToken,
    ) {
        let mut commands = Commands(Some(commands));
        let timing = self.timing();
        let path: Arc<str> = self.config.path.display().to_string().into();
        let mut reopen_delay = Duration::from_millis(500);
        // The silence before the first request counts from the opening.
        let mut last_rx = None;
        loop {
            let port = match self.open() {
                Ok(port) => port,
                Err(e) => {
                    if matches!(e, RtuError::Refused { .. }) {
                        tracing::error!(path = %path, error = %e, retry_in = ?reopen_delay, "serial bus not used: the port does not take its settings");
                    } else {
                        tracing::warn!(path = %path, error = %e, retry_in = ?reopen_delay, "cannot open the serial bus");
                    }
                    let why = e.to_string();
                    let (devices, wait) = (&mut self.devices, reopen_delay);
                    if !link_down(devices, &sink, wait, &why, &shutdown, &mut commands).await {
                        return;
                    }
                    reopen_delay = (reopen_delay * 2).min(MAX_REOPEN_DELAY);
                    continue;
                }
            };
            let opened = *last_rx.get_or_insert_with(Instant::now);
            let mut master = RtuMaster::new(port, path.clone(), timing, opened);
            loop {
                let backoff = &self.backoff_until;
                let ready_at = |d| backoff[d];
                let (devices, link) = (&mut self.devices, &mut master);
                let Some((d, mut out, outcome)) =
                    step(devices, link, ready_at, &shutdown, &mut commands).await
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
                        // The slave is there; the line is noisy.
                        Outcome::Garbled | Outcome::Broken => {}
                    }
                }
                if !send(&sink, &self.devices, out, &shutdown).await {
                    return;
                }
                if outcome == Outcome::Broken {
                    // The port itself failed (a USB adapter unplugged): the
                    // whole bus is down until it opens again.
                    tracing::warn!(path = %path, retry_in = ?reopen_delay, "the serial port failed; reopening it");
                    last_rx = Some(master.last_rx());
                    drop(master);
                    let why = format!("{} failed", path);
                    let (devices, wait) = (&mut self.devices, reopen_delay);
                    if !link_down(devices, &sink, wait, &why, &shutdown, &mut commands).await {
                        return;
                    }
                    reopen_delay = (reopen_delay * 2).min(MAX_REOPEN_DELAY);
                    break;
                }
                if outcome == Outcome::Answered {
                    reopen_delay = Duration::from_millis(500);
                }
            }
        }
    }
}

/// Compares what the port reports with what was asked. A pseudo-terminal
/// (and some drivers) report no speed (0): the baud rate is compared only
/// when one is reported.
fn check_settings(
    port: &impl SerialPort,
    path: &Path,
    baud: u32,
    parity: tokio_serial::Parity,
    data_bits: tokio_serial::DataBits,
    stop_bits: tokio_serial::StopBits,
) -> Result<(), RtuError> {
    let read_back = |source| RtuError::ReadBack {
        path: path.to_owned(),
        source,
    };
    let refused = |setting, wanted: &dyn std::fmt::Display, actual: &dyn std::fmt::Display| {
        Err(RtuError::Refused {
            path: path.to_owned(),
            setting,
            wanted: wanted.to_string(),
            actual: actual.to_string(),
        })
    };
    // Named as in the configuration: `even`, `7`, `2`.
    let lower = |p: tokio_serial::Parity| p.to_string().to_lowercase();
    let actual = port.parity().map_err(read_back)?;
    if actual != parity {
        return refused("parity", &lower(parity), &lower(actual));
    }
    let actual = port.data_bits().map_err(read_back)?;
    if actual != data_bits {
        return refused("data bits", &u8::from(data_bits), &u8::from(actual));
    }
    let actual = port.stop_bits().map_err(read_back)?;
    if actual != stop_bits {
        return refused("stop bits", &u8::from(stop_bits), &u8::from(actual));
    }
    let actual = port.baud_rate().map_err(read_back)?;
    if actual != 0 && (f64::from(actual) / f64::from(baud) - 1.0).abs() > BAUD_TOLERANCE {
        return refused("baud", &baud, &actual);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{WriteError, WriteReport, WriteRequest};
    use crate::modbus::poll::{Commands, step};
    use crate::stats::{DeviceState, DeviceStatsSnapshot};
    use frame::{FrameLen, push_crc, request_len};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    // These tests run on tokio's paused clock: timeouts and silences take
    // no real time, and the times they check are exact.

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

    const TIMEOUT: Duration = Duration::from_millis(200);
    const GAP: Duration = Duration::from_millis(2);

    /// What the slave end does after it read one request: after each
    /// delay, send those bytes.
    type Reply = Vec<(Duration, Vec<u8>)>;

    /// An answer of unit `unit` to a read of one register: `value`.
    fn register(unit: u8, value: u16) -> Vec<u8> {
        let [hi, lo] = value.to_be_bytes();
        let mut frame = vec![unit, 3, 2, hi, lo];
        push_crc(&mut frame);
        frame
    }

    fn now(bytes: Vec<u8>) -> Reply {
        vec![(Duration::ZERO, bytes)]
    }

    /// Plays `replies` (one per request read) on the slave end; returns
    /// when each request was read.
    async fn slave(mut line: DuplexStream, replies: Vec<Reply>) -> Vec<Instant> {
        let mut seen = Vec::new();
        for reply in replies {
            let mut request = Vec::new();
            loop {
                let mut byte = [0u8];
                if line.read_exact(&mut byte).await.is_err() {
                    return seen;
                }
                request.push(byte[0]);
                if let FrameLen::Known(n) = request_len(&request)
                    && request.len() >= n
                {
                    break;
                }
            }
            assert!(frame::crc_ok(&request), "a valid request: {request:02x?}");
            seen.push(Instant::now());
            for (delay, bytes) in reply {
                tokio::time::sleep(delay).await;
                line.write_all(&bytes).await.expect("sent");
            }
        }
        // Keep the line open until the master is done.
        let mut rest = Vec::new();
        let _ = line.read_to_end(&mut rest).await;
        seen
    }

    fn device() -> DeviceRt {
        let config: ModbusConfig = toml::from_str(CONFIG).expect("parses");
        let bus = RtuBus::new(&config.rtu[0], &config);
        bus.devices.into_iter().next().expect("one device")
    }

    fn master(line: DuplexStream, retries: u8) -> RtuMaster<DuplexStream> {
        let timing = Timing {
            timeout: TIMEOUT,
            frame_gap: GAP,
            turnaround: Duration::ZERO,
            char_time: Duration::from_micros(500),
            retries,
        };
        RtuMaster::new(line, "/dev/test".into(), timing, Instant::now())
    }

    /// Polls the device's first group `polls` times against `replies`:
    /// the outcomes, the device, when the slave read each request, and
    /// when the polls began.
    async fn poll(
        retries: u8,
        polls: usize,
        replies: Vec<Reply>,
    ) -> (Vec<Outcome>, DeviceRt, Vec<Instant>, Vec<Sample>, Instant) {
        let mut device = device();
        let (ours, theirs) = tokio::io::duplex(512);
        let mut master = master(ours, retries);
        let slave = tokio::spawn(slave(theirs, replies));
        let start = Instant::now();
        let mut outcomes = Vec::new();
        let mut samples = Vec::new();
        for _ in 0..polls {
            let (out, outcome) = device.poll(&mut master, 0).await;
            outcomes.push(outcome);
            samples.extend(out);
        }
        drop(master);
        let seen = slave.await.expect("the slave ran");
        (outcomes, device, seen, samples, start)
    }

    fn counts(s: &DeviceStatsSnapshot) -> [u64; 7] {
        [
            s.requests,
            s.answers,
            s.timeouts,
            s.crc_errors,
            s.link_errors,
            s.late_answers,
            s.exceptions,
        ]
    }

    fn values(samples: &[Sample]) -> Vec<RawValue> {
        samples.iter().map(|s| s.value.clone()).collect()
    }

    use crate::{RawValue, Sample};

    #[tokio::test(start_paused = true)]
    async fn a_good_answer_counts_as_answered_with_its_latency() {
        let (outcomes, device, _, samples, _) = poll(1, 1, vec![now(register(7, 42))]).await;
        assert_eq!(outcomes, [Outcome::Answered]);
        let s = device.stats.snapshot();
        assert_eq!(counts(&s), [1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(s.state, DeviceState::Online);
        assert_eq!(values(&samples), [RawValue::U64(42)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_crc_is_known_at_once_and_retried_after_the_silence() {
        let mut bad = register(7, 42);
        bad[3] ^= 0x5A;
        let replies = vec![now(bad), now(register(7, 43))];
        let (outcomes, device, seen, samples, _) = poll(1, 1, replies).await;
        assert_eq!(outcomes, [Outcome::Answered], "the retry was answered");
        let s = device.stats.snapshot();
        assert_eq!(counts(&s), [2, 1, 0, 1, 0, 0, 0]);
        assert_eq!(values(&samples), [RawValue::U64(43)]);
        // The retry went out once the line had been quiet for the frame
        // gap after the bad frame, long before the timeout.
        let between = seen[1] - seen[0];
        assert!(between >= GAP && between < TIMEOUT / 2, "{between:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_garbled_answer_without_retries_leaves_the_slave_online() {
        let mut bad = register(7, 42);
        bad[5] ^= 1;
        let (outcomes, device, _, _, start) = poll(0, 1, vec![now(bad)]).await;
        assert_eq!(outcomes, [Outcome::Garbled]);
        assert!(Instant::now() - start < TIMEOUT, "no timeout was waited out");
        assert_eq!(counts(&device.stats.snapshot()), [1, 0, 0, 1, 0, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_count_that_cannot_be_right_ends_with_the_silence() {
        // The byte count, hit by noise, says 200 bytes follow: not this
        // read's answer, and its end is where the line falls quiet, not at
        // the timeout.
        let mut bad = register(7, 42);
        bad[2] = 200;
        let (outcomes, device, _, _, start) = poll(0, 1, vec![now(bad)]).await;
        assert_eq!(outcomes, [Outcome::Garbled]);
        assert!(Instant::now() - start < TIMEOUT);
        assert_eq!(counts(&device.stats.snapshot()), [1, 0, 0, 1, 0, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_retried_then_the_slave_is_offline_and_asked_once() {
        let (outcomes, device, seen, _, _) = poll(1, 1, vec![vec![], vec![]]).await;
        assert_eq!(outcomes, [Outcome::TimedOut]);
        assert_eq!(counts(&device.stats.snapshot()), [2, 0, 2, 0, 0, 0, 0]);
        // Each attempt waits its timeout, then listens one more for a late
        // answer before the line is used again.
        assert!(seen[1] - seen[0] >= 2 * TIMEOUT, "{:?}", seen[1] - seen[0]);
        let mut device = device;
        let mut out = Vec::new();
        device.went_offline(&mut out);
        // Offline: one attempt per poll.
        let (ours, theirs) = tokio::io::duplex(512);
        let mut master = master(ours, 1);
        let slave = tokio::spawn(slave(theirs, vec![vec![], vec![]]));
        let (_, outcome) = device.poll(&mut master, 0).await;
        drop(master);
        assert_eq!(outcome, Outcome::TimedOut);
        assert_eq!(slave.await.expect("ran").len(), 1, "asked once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_is_counted_and_never_taken_for_the_next() {
        let late = Duration::from_millis(300);
        let replies = vec![
            vec![(late, register(7, 1))],
            now(register(7, 2)),
            now(register(7, 3)),
        ];
        let (outcomes, device, seen, samples, _) = poll(1, 2, replies).await;
        assert_eq!(outcomes, [Outcome::Answered, Outcome::Answered]);
        assert_eq!(values(&samples), [RawValue::U64(2), RawValue::U64(3)]);
        assert_eq!(counts(&device.stats.snapshot()), [3, 2, 1, 0, 0, 1, 0]);
        // The retry waited for the late frame and the silence after it.
        assert!(seen[1] - seen[0] >= late + GAP, "{:?}", seen[1] - seen[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn another_slaves_frame_is_skipped_and_charged_to_the_device_asked() {
        let replies = vec![vec![
            (Duration::ZERO, register(9, 900)),
            (Duration::from_millis(50), register(7, 42)),
        ]];
        let (outcomes, device, _, samples, _) = poll(1, 1, replies).await;
        assert_eq!(outcomes, [Outcome::Answered]);
        assert_eq!(values(&samples), [RawValue::U64(42)]);
        assert_eq!(counts(&device.stats.snapshot()), [1, 1, 0, 0, 1, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_between_transactions_are_late_and_delay_the_next_request() {
        let junk = Duration::from_millis(30);
        let replies = vec![
            vec![
                (Duration::ZERO, register(7, 1)),
                (junk, register(7, 99)),
            ],
            now(register(7, 2)),
        ];
        let (_, device, seen, samples, _) = {
            let mut device = device();
            let (ours, theirs) = tokio::io::duplex(512);
            let mut master = master(ours, 1);
            let slave = tokio::spawn(slave(theirs, replies));
            let start = Instant::now();
            let mut samples = Vec::new();
            samples.extend(device.poll(&mut master, 0).await.0);
            // The next poll is due just after the stray frame came (the
            // first request went out after the silence that follows the
            // port's opening).
            tokio::time::sleep_until(start + GAP + junk + GAP / 2).await;
            samples.extend(device.poll(&mut master, 0).await.0);
            drop(master);
            ((), device, slave.await.expect("ran"), samples, start)
        };
        assert_eq!(values(&samples), [RawValue::U64(1), RawValue::U64(2)]);
        assert_eq!(device.stats.snapshot().late_answers, 1);
        assert!(seen[1] - seen[0] >= junk + GAP, "{:?}", seen[1] - seen[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exception_is_an_answer() {
        let mut exception = vec![7, 0x83, 0x04];
        push_crc(&mut exception);
        let (outcomes, device, _, samples, _) = poll(1, 1, vec![now(exception)]).await;
        assert_eq!(outcomes, [Outcome::Answered]);
        assert!(samples.is_empty());
        assert_eq!(counts(&device.stats.snapshot()), [1, 0, 0, 0, 0, 0, 1]);
    }

    /// Runs one link step with `request` queued and nothing due yet; the
    /// slave answers with `reply`.
    async fn step_with(request: WriteRequest, reply: Vec<Reply>) -> (Option<usize>, u64) {
        let config: ModbusConfig = toml::from_str(CONFIG).expect("parses");
        let bus = RtuBus::new(&config.rtu[0], &config);
        let mut devices = bus.devices;
        for g in &mut devices[0].groups {
            g.next_due = Instant::now() + Duration::from_secs(3600);
        }
        let (ours, theirs) = tokio::io::duplex(512);
        let mut master = master(ours, 1);
        let slave = tokio::spawn(slave(theirs, reply));
        let (tx, rx) = crate::command::command_channel();
        tx.try_send(request).expect("queued");
        let shutdown = CancellationToken::new();
        let (d, _, outcome) = step(
            &mut devices,
            &mut master,
            |_| None,
            &shutdown,
            &mut Commands(Some(rx)),
        )
        .await
        .expect("a step");
        drop(master);
        drop(slave.await);
        assert_eq!(outcome, Outcome::Answered);
        (d, devices[0].stats.snapshot().requests)
    }

    fn request(
        point: &str,
    ) -> (
        WriteRequest,
        tokio::sync::oneshot::Receiver<Result<WriteReport, WriteError>>,
    ) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = WriteRequest {
            device: "meter".into(),
            point: point.into(),
            value: RawValue::Text("513".into()),
            verify: false,
            reply,
        };
        (request, answer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_is_acknowledged_by_its_echo() {
        let (request, answer) = request("limit");
        // Function 6, register 1, value 513, echoed.
        let mut echo = vec![7, 6, 0, 1, 2, 1];
        push_crc(&mut echo);
        assert_eq!(step_with(request, vec![now(echo)]).await, (Some(0), 1));
        let report = answer.await.expect("answered").expect("written");
        assert_eq!(report.operation, "write_single_register (6)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_whose_caller_gave_up_is_not_carried_out() {
        let (request, answer) = request("limit");
        drop(answer);
        assert_eq!(step_with(request, vec![]).await, (None, 0), "no transaction");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_refused_before_any_io_says_nothing_about_the_device() {
        // Not writable: refused without a transaction, and no device is
        // named, so a slave's back-off is left as it is.
        let (request, answer) = request("power");
        assert_eq!(step_with(request, vec![]).await, (None, 0));
        let refused = answer.await.expect("answered").expect_err("refused");
        assert_eq!(refused.kind(), "not_writable");
    }

    #[test]
    fn the_silence_is_three_and_a_half_characters_or_fixed_above_19200_baud() {
        let config: ModbusConfig = toml::from_str(CONFIG).expect("parses");
        let mut bus = RtuBus::new(&config.rtu[0], &config);
        // 19,200 baud 8E1: 11 bits a character.
        let timing = bus.timing();
        assert_eq!(timing.char_time, Duration::from_secs_f64(11.0 / 19_200.0));
        assert_eq!(timing.frame_gap, timing.char_time.mul_f64(3.5));
        assert_eq!(timing.retries, 1);
        bus.config.baud = 38_400;
        assert_eq!(bus.timing().frame_gap, Duration::from_micros(1750));
    }
}
