//! The RTU master of one serial bus: it sends a request, waits for the
//! slave's answer and keeps the line discipline of Modbus over Serial Line
//! V1.02 (§2.4.1, §2.5.1) on every path:
//!
//! - **Silence.** Nothing is sent before the line has been quiet for 3.5
//!   characters (1.75 ms above 19,200 baud) plus the bus's turnaround
//!   delay, counted from the last byte received; whatever arrives in the
//!   meantime is read and discarded, so the input is empty when a request
//!   goes out.
//! - **Framing.** An answer is cut by the length its function code and
//!   byte count announce and checked by its CRC. A frame whose CRC fails is
//!   known bad as soon as its bytes are in: the master waits for the line
//!   to fall quiet and gives up the transaction at once (the caller may
//!   retry) instead of waiting out the timeout.
//! - **Another slave's frame** (or a valid frame that does not answer this
//!   request) does not end the transaction: it is counted as a link error
//!   of the device asked, and the response timeout keeps running (§2.4.1).
//! - **Late answers.** After a timeout the master keeps listening for one
//!   more timeout, as libmodbus does before it flushes: a late answer is
//!   read to its end and discarded (and counted), never decoded as the
//!   answer to the next request, and no request is sent while it is on the
//!   wire.
//!
//! Everything a transaction sees besides its result is counted on the
//! device that was asked (`link_errors`, `late_answers`); the result itself
//! is counted by the caller. Warnings name the bus and the device, at most
//! one a second per device and kind.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::frame::{self, FrameLen};
use crate::modbus::pdu::{Answer, Request};
use crate::modbus::poll::{Failure, Link};
use crate::stats::DeviceStats;

/// How the line is timed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How long a slave may take to answer, from the end of the request.
    pub(crate) timeout: Duration,
    /// 3.5 characters, the silence that ends a frame.
    pub(crate) frame_gap: Duration,
    /// The bus's extra pause before each request (slow slaves).
    pub(crate) turnaround: Duration,
    /// One character on the wire (start, data, parity and stop bits).
    pub(crate) char_time: Duration,
    /// Extra attempts of a request that got no valid answer.
    pub(crate) retries: u8,
}

/// Warnings about one device's frames are at most this frequent.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// What went wrong on the line, for the rate-limited warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    Garbled,
    Stray,
    Late,
}

/// The master of one serial bus over `port`.
pub(crate) struct RtuMaster<P> {
    port: P,
    /// The bus, for logs.
    path: Arc<str>,
    timing: Timing,
    /// When the last byte came in (or the port was opened): silences count
    /// from here.
    last_rx: Instant,
    /// Bytes received and not yet made sense of.
    buf: Vec<u8>,
    /// The unit and device of the last transaction: what arrives between
    /// transactions is its late answer.
    last_device: Option<(u8, Arc<DeviceStats>)>,
    /// (unit, kind) → when last warned, and how many were not logged since.
    warned: Vec<(u8, Trouble, Instant, u64)>,
}

impl<P: AsyncRead + AsyncWrite + Unpin> RtuMaster<P> {
    /// A master over a port opened just now (or at `last_rx`, the last byte
    /// received before the port was reopened: the silence still counts
    /// from there).
    pub(crate) fn new(port: P, path: Arc<str>, timing: Timing, last_rx: Instant) -> Self {
        Self {
            port,
            path,
            timing,
            last_rx,
            buf: Vec::with_capacity(256),
            last_device: None,
            warned: Vec::new(),
        }
    }

    /// When the last byte came in.
    pub(crate) fn last_rx(&self) -> Instant {
        self.last_rx
    }

    /// A bad frame: wait for the line to fall quiet (its tail, if its
    /// length was wrong, goes with it), then give the transaction up.
    async fn garbled(
        &mut self,
        unit: u8,
        stats: &DeviceStats,
        why: &'static str,
    ) -> Result<Answer, Failure> {
        self.quiet(self.timing.frame_gap)
            .await
            .map_err(io_failure)?;
        self.buf.clear();
        if let Some(suppressed) = self.may_warn(unit, Trouble::Garbled) {
            tracing::warn!(bus = %self.path, device = %stats.device, unit, why, suppressed, "garbled answer (bad CRC or framing) discarded");
        }
        Err(Failure::Garbled)
    }

    /// A valid frame that is not the answer of `unit` to this request.
    fn stray(&mut self, unit: u8, stats: &DeviceStats, frame: &[u8]) {
        stats.link_errors.fetch_add(1, Relaxed);
        if let Some(suppressed) = self.may_warn(unit, Trouble::Stray) {
            let from = frame.first().copied().unwrap_or(0);
            let function = frame.get(1).copied().unwrap_or(0);
            tracing::warn!(bus = %self.path, device = %stats.device, unit, from_unit = from, function, suppressed, "frame that does not answer the request discarded; still waiting for the answer");
        }
    }

    /// The frames in `self.buf`, which came after their transaction
    /// ended, are counted on its device, then dropped.
    fn late(&mut self) {
        let frames = frame::count_answers(&self.buf);
        self.buf.clear();
        let Some((unit, stats)) = self.last_device.clone() else {
            return;
        };
        stats.late_answers.fetch_add(frames, Relaxed);
        if let Some(suppressed) = self.may_warn(unit, Trouble::Late) {
            tracing::warn!(bus = %self.path, device = %stats.device, unit, frames, suppressed, "late answer discarded");
        }
    }

    /// Reads until the line has been quiet for `gap` since the last byte;
    /// returns how many bytes came (they are left in `self.buf`). A line
    /// that does not fall quiet within a timeout is an error (noise, a
    /// babbling slave): the bus is reopened rather than stalled.
    async fn quiet(&mut self, gap: Duration) -> std::io::Result<usize> {
        let give_up = Instant::now() + gap + self.timing.timeout;
        let mut got = 0;
        loop {
            if got > 0 && Instant::now() >= give_up {
                return Err(std::io::Error::other(format!(
                    "the line did not fall quiet for {gap:?} within {:?}",
                    self.timing.timeout
                )));
            }
            let until = self.last_rx + gap;
            let n = if Instant::now() >= until {
                // Quiet long enough: only what is already buffered. (A
                // timer, even an expired one, waits for the next tick.)
                match self.read_now()? {
                    0 => return Ok(got),
                    n => n,
                }
            } else {
                self.read_until(until).await?
            };
            got += n;
        }
    }

    /// Reads what comes before `at` into `self.buf`; 0 when nothing did.
    async fn read_until(&mut self, at: Instant) -> std::io::Result<usize> {
        let mut chunk = [0u8; 256];
        let n = tokio::select! {
            biased;
            read = self.port.read(&mut chunk) => read?,
            () = tokio::time::sleep_until(at) => return Ok(0),
        };
        self.received(&chunk[..n])
    }

    /// Reads what is already buffered, without waiting.
    fn read_now(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 256];
        let mut buf = ReadBuf::new(&mut chunk);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.port).poll_read(&mut cx, &mut buf) {
            Poll::Pending => Ok(0),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                self.received(&chunk[..n])
            }
        }
    }

    fn received(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if bytes.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the serial port was closed",
            ));
        }
        self.last_rx = Instant::now();
        // A line that never falls quiet must not grow memory: keep the
        // newest bytes of at most one maximal frame more than it holds.
        if self.buf.len() + bytes.len() > 2 * MAX_FRAME {
            self.buf.drain(..MAX_FRAME);
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Whether to warn now about `unit`'s trouble; with the count of
    /// warnings skipped since the last.
    fn may_warn(&mut self, unit: u8, trouble: Trouble) -> Option<u64> {
        let now = Instant::now();
        let entry = match self
            .warned
            .iter_mut()
            .position(|(u, t, _, _)| (*u, *t) == (unit, trouble))
        {
            Some(i) => &mut self.warned[i],
            None => {
                self.warned.push((unit, trouble, now, 0));
                return Some(0);
            }
        };
        if now.duration_since(entry.2) < WARN_EVERY {
            entry.3 += 1;
            return None;
        }
        let suppressed = entry.3;
        (entry.2, entry.3) = (now, 0);
        Some(suppressed)
    }
}

/// The largest RTU frame (Modbus over Serial Line §2.5.1).
const MAX_FRAME: usize = 256;

/// Whether `head` may be the start of `unit`'s answer to `request`.
fn could_answer(head: &[u8], unit: u8, request: &Request<'_>) -> bool {
    let function = request.function();
    head[0] == unit
        && head.get(1).is_none_or(|&f| f == function || f == function | 0x80)
        && match (head.get(1), head.get(2), request.answer_data_len()) {
            (Some(&f), Some(&n), Some(len)) if f == function => usize::from(n) == len,
            _ => true,
        }
}

fn io_failure(e: std::io::Error) -> Failure {
    Failure::Link(format!("serial port: {e}"))
}

impl<P: AsyncRead + AsyncWrite + Unpin + Send> Link for RtuMaster<P> {
    /// Waits for the silence before a request: 3.5 characters and the
    /// turnaround delay since the last byte received. What arrives
    /// meantime is a late answer of the last transaction.
    async fn ready(&mut self) -> Result<(), Failure> {
        let quiet = self.timing.frame_gap + self.timing.turnaround;
        if self.quiet(quiet).await.map_err(io_failure)? > 0 {
            self.late();
        }
        self.buf.clear();
        Ok(())
    }

    /// One transaction: the request, and the answer of `unit` to it.
    async fn call(
        &mut self,
        unit: u8,
        request: &Request<'_>,
        stats: &Arc<DeviceStats>,
    ) -> Result<Answer, Failure> {
        self.ready().await?;
        self.last_device = Some((unit, stats.clone()));
        let mut adu = Vec::with_capacity(16);
        adu.push(unit);
        request.encode(&mut adu);
        frame::push_crc(&mut adu);
        self.port.write_all(&adu).await.map_err(io_failure)?;
        self.port.flush().await.map_err(io_failure)?;
        // The kernel takes the bytes at once; the slave has them only once
        // they are on the wire.
        let on_wire = self.timing.char_time * u32::try_from(adu.len()).unwrap_or(u32::MAX);
        let deadline = Instant::now() + on_wire + self.timing.timeout;
        loop {
            if let FrameLen::Known(n) = frame::answer_len(&self.buf)
                && self.buf.len() >= n
            {
                let answer: Vec<u8> = self.buf.drain(..n).collect();
                if !frame::crc_ok(&answer) {
                    return self.garbled(unit, stats, "bad CRC").await;
                }
                match request.answer(&answer[1..n - 2]) {
                    Some(result) if answer[0] == unit => {
                        return result.map_err(Failure::Exception);
                    }
                    _ => self.stray(unit, stats, &answer),
                }
                continue;
            }
            // A frame that cannot be this slave's answer (or whose length
            // is unknown) ends with the line's silence; the answer itself is
            // awaited until the deadline, however its bytes trickle in.
            let expected = self.buf.is_empty() || could_answer(&self.buf, unit, request);
            let wake = if expected {
                deadline
            } else {
                deadline.min(self.last_rx + self.timing.frame_gap)
            };
            if self.read_until(wake).await.map_err(io_failure)? > 0 {
                continue;
            }
            if Instant::now() >= deadline {
                break;
            }
            if !expected {
                // The line fell quiet on bytes that make no answer: a whole
                // frame of someone else's, or garbage.
                let chunk = std::mem::take(&mut self.buf);
                if frame::crc_ok(&chunk) && frame::answer_len(&chunk) == FrameLen::Known(chunk.len()) {
                    self.stray(unit, stats, &chunk);
                    continue;
                }
                return self.garbled(unit, stats, "no valid frame").await;
            }
        }
        // Keep listening: an answer that comes now is late, and must be
        // neither taken for the next request's nor talked over.
        let until = deadline + self.timing.timeout;
        while self.buf.is_empty() {
            if self.read_until(until).await.map_err(io_failure)? == 0 && Instant::now() >= until {
                return Err(Failure::Timeout);
            }
        }
        self.quiet(self.timing.frame_gap)
            .await
            .map_err(io_failure)?;
        self.late();
        Err(Failure::Timeout)
    }

    fn timeout(&self) -> Duration {
        self.timing.timeout
    }

    fn retries(&self) -> u8 {
        self.timing.retries
    }
}
