//! Polling one Modbus device, whatever the link: its compiled register
//! map, reading a poll group with coalesced requests (splitting those the
//! device rejects, keeping the working layout), decoding, and the quality
//! transitions. The links (`tcp.rs`, `rtu.rs`) own the schedule and the
//! policy on failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

use super::codec::{self, DataType, Order};
use super::config::{ModbusDeviceConfig, RegisterMap};
use super::plan::{self, Area, Limits, ReadRequest, Span, Split};
use crate::command::{CommandReceiver, Sent, WriteError, WriteReport, WriteRequest};
use crate::stats::{DeviceState, DeviceStats};
use biota_common::time::now_ns;
use crate::{RawValue, Sample, SampleBatch, SampleQuality, SampleSink};

/// One point, ready to decode.
struct PointRt {
    name: Arc<str>,
    ty: DataType,
    order: Order,
    bit: u8,
    /// Registers of a string.
    length: u16,
    writable: bool,
    verify: bool,
    write_multiple: bool,
    last: Option<RawValue>,
}

pub(crate) struct GroupRt {
    pub(crate) interval: Duration,
    pub(crate) next_due: Instant,
    /// Indexes of the group's points (into `DeviceRt::points`).
    requests: Vec<ReadRequest>,
}

/// A device on a connection, with its compiled register map.
pub(crate) struct DeviceRt {
    pub(crate) id: Arc<str>,
    pub(crate) unit: u8,
    pub(crate) source: Arc<str>,
    points: Vec<PointRt>,
    spans: Vec<Span>,
    pub(crate) groups: Vec<GroupRt>,
    online: bool,
    pub(crate) stats: Arc<DeviceStats>,
}

/// How transactions on a link are bounded and watched.
pub(crate) struct Wire<'a> {
    pub(crate) timeout: Duration,
    /// Silence between two transactions of one operation (a write and its
    /// read-back) on a serial line; zero on TCP.
    pub(crate) pause: Duration,
    /// Bytes received on the link so far (serial lines): bytes without a
    /// valid answer are a garbled frame, not silence.
    pub(crate) rx_bytes: Option<&'a AtomicU64>,
}

impl DeviceRt {
    /// The devices of one link, each with its compiled map (validation has
    /// made sure every map exists); `source` names a device's link address.
    pub(crate) fn for_link(
        devices: &[ModbusDeviceConfig],
        maps: &std::collections::BTreeMap<String, RegisterMap>,
        source: impl Fn(&ModbusDeviceConfig) -> String,
    ) -> Vec<Self> {
        devices
            .iter()
            .filter_map(|d| Some(Self::new(d, maps.get(&d.map)?, source(d))))
            .collect()
    }

    pub(crate) fn new(device: &ModbusDeviceConfig, map: &RegisterMap, source: String) -> Self {
        let limits = Limits {
            register_gap: map.max_gap,
            bit_gap: map.max_bit_gap,
            ..Limits::default()
        };
        let mut points = Vec::new();
        let mut spans = Vec::new();
        let mut groups = Vec::new();
        let now = Instant::now();
        for group in &map.groups {
            let first = points.len();
            for p in &group.points {
                points.push(PointRt {
                    name: p.name.as_str().into(),
                    ty: p.ty,
                    order: p.order,
                    bit: p.bit.unwrap_or(0),
                    length: p.length.unwrap_or(0),
                    writable: p.writable,
                    verify: p.verify,
                    write_multiple: p.write_multiple,
                    last: None,
                });
                spans.push(Span {
                    area: p.area,
                    address: p.address,
                    width: p.width().max(1),
                });
            }
            let mut requests = plan::coalesce(&spans[first..], &limits);
            for r in &mut requests {
                for p in &mut r.points {
                    *p += first;
                }
            }
            groups.push(GroupRt {
                interval: group.interval,
                next_due: now,
                requests,
            });
        }
        let id: Arc<str> = device.id.as_str().into();
        let source: Arc<str> = source.into();
        Self {
            stats: Arc::new(DeviceStats::new(id.clone(), source.clone())),
            id,
            unit: device.unit,
            source,
            points,
            spans,
            groups,
            online: true,
        }
    }

    fn decode(
        &mut self,
        request: &ReadRequest,
        regs: Option<&[u16]>,
        bits: Option<&[bool]>,
        out: &mut Vec<Sample>,
    ) {
        for &p in &request.points {
            let span = self.spans[p];
            let offset = usize::from(span.address - request.start);
            let point = &mut self.points[p];
            let value = match (regs, bits) {
                (Some(regs), _) => {
                    let Some(slice) = regs.get(offset..offset + usize::from(span.width)) else {
                        continue;
                    };
                    codec::decode(point.ty, point.order, point.bit, slice)
                }
                (None, Some(bits)) => match bits.get(offset) {
                    Some(b) => RawValue::Bool(*b),
                    None => continue,
                },
                (None, None) => continue,
            };
            point.last = Some(value.clone());
            out.push(Sample {
                device: self.id.clone(),
                point: point.name.clone(),
                value,
                device_time: None,
                quality: SampleQuality::Good,
                unit: None,
            });
        }
    }

    /// One sample of quality bad per point with a known value: the
    /// transition to "not answering", reported once.
    pub(crate) fn went_offline(&mut self, out: &mut Vec<Sample>) {
        self.stats.set_state(DeviceState::Offline);
        if !self.online {
            return;
        }
        self.online = false;
        tracing::warn!(device = %self.id, unit = self.unit, "Modbus device stopped answering; its points are bad");
        for point in &self.points {
            if let Some(value) = &point.last {
                out.push(Sample {
                    device: self.id.clone(),
                    point: point.name.clone(),
                    value: value.clone(),
                    device_time: None,
                    quality: SampleQuality::Bad,
                    unit: None,
                });
            }
        }
    }

    fn came_online(&mut self) {
        self.stats.set_state(DeviceState::Online);
        if !self.online {
            tracing::info!(device = %self.id, unit = self.unit, "Modbus device answers again");
            self.online = true;
        }
    }
    /// Writes one point between polls. Returns the caller's answer and,
    /// when a transaction took place, how the link fared (for its policy).
    pub(crate) async fn write(
        &mut self,
        ctx: &mut Context,
        request: &WriteRequest,
        wire: &Wire<'_>,
    ) -> (Result<WriteReport, WriteError>, Option<Outcome>) {
        let Some(p) = self.points.iter().position(|p| *p.name == *request.point) else {
            let error = WriteError::UnknownPoint {
                device: self.id.to_string(),
                point: request.point.clone(),
            };
            return (Err(error), None);
        };
        let (point, span) = (&self.points[p], self.spans[p]);
        if !point.writable {
            let error = WriteError::NotWritable {
                device: self.id.to_string(),
                point: request.point.clone(),
                why: if span.area.is_writable() {
                    "it is not marked writable in the register map".into()
                } else {
                    format!("{} points are read-only", span.area.as_str())
                },
            };
            return (Err(error), None);
        }
        // A coil is one bit, whatever the map calls its type.
        let ty = if span.area == Area::Coil {
            DataType::Bool
        } else {
            point.ty
        };
        let words = match codec::encode(ty, point.order, point.length, &request.value) {
            Ok(words) => words,
            Err(e) => {
                let error = WriteError::BadValue {
                    point: request.point.clone(),
                    value: format!("{:?}", request.value),
                    why: e.to_string(),
                };
                return (Err(error), None);
            }
        };
        let verify = request.verify || point.verify;
        let multiple = point.write_multiple || words.len() > 1;
        let address = span.address;
        ctx.set_slave(Slave(self.unit));
        let (operation, sent) = match (span.area, multiple) {
            (Area::Coil, false) => (
                "write_single_coil (5)",
                exchange(
                    &self.stats,
                    wire,
                    ctx.write_single_coil(address, words[0] != 0),
                )
                .await,
            ),
            (Area::Coil, true) => (
                "write_multiple_coils (15)",
                exchange(
                    &self.stats,
                    wire,
                    ctx.write_multiple_coils(address, &[words[0] != 0]),
                )
                .await,
            ),
            (_, false) => (
                "write_single_register (6)",
                exchange(
                    &self.stats,
                    wire,
                    ctx.write_single_register(address, words[0]),
                )
                .await,
            ),
            (_, true) => (
                "write_multiple_registers (16)",
                exchange(
                    &self.stats,
                    wire,
                    ctx.write_multiple_registers(address, &words),
                )
                .await,
            ),
        };
        let mut report = WriteReport {
            operation: operation.to_owned(),
            target: if words.len() > 1 {
                format!(
                    "{} {}..{}",
                    span.area.as_str(),
                    address,
                    usize::from(address) + words.len() - 1
                )
            } else {
                format!("{} {address}", span.area.as_str())
            },
            sent: sent_as(span.area, &words),
            verified: false,
        };
        if let Err(failure) = sent {
            return self.write_failed(failure, wire.timeout);
        }
        self.came_online();
        if verify {
            // The inter-frame silence of a serial line (zero on TCP).
            if !wire.pause.is_zero() {
                tokio::time::sleep(wire.pause).await;
            }
            let back = ReadRequest {
                area: span.area,
                start: address,
                count: span.width,
                points: Vec::new(),
            };
            let read = match read(ctx, &back, &self.stats, wire).await {
                Ok((Some(regs), _)) => regs,
                Ok((None, bits)) => bits
                    .unwrap_or_default()
                    .into_iter()
                    .take(1)
                    .map(u16::from)
                    .collect(),
                Err(failure) => {
                    let (outcome, why) = match failure {
                        Failure::Exception(code) => (
                            Outcome::Answered,
                            format!("Modbus exception {code:?} ({})", u8::from(code)),
                        ),
                        Failure::Timeout => (
                            Outcome::TimedOut,
                            format!("no answer within {:?}", wire.timeout),
                        ),
                        Failure::Garbled => (Outcome::Broken, "a garbled answer".into()),
                        Failure::Link(why) => (Outcome::Broken, why),
                    };
                    let error = WriteError::VerifyFailed {
                        point: request.point.clone(),
                        why,
                    };
                    return (Err(error), Some(outcome));
                }
            };
            if read != words {
                let error = WriteError::Mismatch {
                    point: request.point.clone(),
                    wrote: sent_as(span.area, &words),
                    read: sent_as(span.area, &read),
                };
                return (Err(error), Some(Outcome::Answered));
            }
            report.verified = true;
        }
        // Show the new value soon: the point's groups are due now.
        let now = Instant::now();
        for group in &mut self.groups {
            if group.requests.iter().any(|r| r.points.contains(&p)) {
                group.next_due = now;
            }
        }
        tracing::info!(device = %self.id, point = %request.point, operation, target = %report.target, verified = report.verified, "point written");
        (Ok(report), Some(Outcome::Answered))
    }

    fn write_failed(
        &self,
        failure: Failure,
        timeout: Duration,
    ) -> (Result<WriteReport, WriteError>, Option<Outcome>) {
        let device = self.id.to_string();
        match failure {
            Failure::Exception(code) => (
                Err(WriteError::Refused {
                    device,
                    why: format!("Modbus exception {code:?} ({})", u8::from(code)),
                }),
                Some(Outcome::Answered),
            ),
            Failure::Timeout => (
                Err(WriteError::Timeout { device, timeout }),
                Some(Outcome::TimedOut),
            ),
            Failure::Garbled => (
                Err(WriteError::Link {
                    device,
                    why: "garbled answer (bad CRC or framing)".into(),
                }),
                Some(Outcome::Broken),
            ),
            Failure::Link(why) => (Err(WriteError::Link { device, why }), Some(Outcome::Broken)),
        }
    }

    /// Reads group `g`: its samples, and how it ended. The caller applies
    /// its link's policy (reconnect, back off) and reports the device
    /// offline with [`DeviceRt::went_offline`] when it decides so.
    pub(crate) async fn poll(
        &mut self,
        ctx: &mut Context,
        g: usize,
        wire: &Wire<'_>,
    ) -> (Vec<Sample>, Outcome) {
        let device = self;
        ctx.set_slave(Slave(device.unit));
        let mut out = Vec::new();
        let mut queue: Vec<ReadRequest> = std::mem::take(&mut device.groups[g].requests);
        let mut working: Vec<ReadRequest> = Vec::with_capacity(queue.len());
        let mut failed: Option<Outcome> = None;
        let mut answered = false;
        while let Some(request) = queue.pop() {
            if failed.is_some() {
                working.push(request);
                continue;
            }
            match read(ctx, &request, &device.stats, wire).await {
                Ok((regs, bits)) => {
                    answered = true;
                    device.decode(&request, regs.as_deref(), bits.as_deref(), &mut out);
                    working.push(request);
                }
                Err(Failure::Exception(ExceptionCode::IllegalDataAddress)) => {
                    answered = true;
                    match plan::split(&request, &device.spans) {
                        Split::Halves(a, b) => {
                            tracing::info!(
                                device = %device.id,
                                area = request.area.as_str(),
                                start = request.start,
                                count = request.count,
                                "device rejected a merged read; splitting it"
                            );
                            queue.push(a);
                            queue.push(b);
                        }
                        Split::Unreadable(p) => {
                            tracing::warn!(
                                device = %device.id,
                                point = %device.points.get(p).map_or("?", |p| &*p.name),
                                "device rejects this point's address; it is no longer polled this session"
                            );
                        }
                    }
                }
                Err(Failure::Exception(code)) => {
                    answered = true;
                    tracing::debug!(device = %device.id, ?code, "Modbus exception");
                    working.push(request);
                }
                Err(Failure::Timeout) => {
                    tracing::debug!(device = %device.id, timeout = ?wire.timeout, "Modbus request timed out");
                    failed = Some(Outcome::TimedOut);
                    working.push(request);
                }
                Err(Failure::Garbled) => {
                    tracing::debug!(device = %device.id, "garbled Modbus answer (bad CRC or framing)");
                    failed = Some(Outcome::Broken);
                    working.push(request);
                }
                Err(Failure::Link(e)) => {
                    tracing::debug!(device = %device.id, error = %e, "Modbus request failed");
                    failed = Some(Outcome::Broken);
                    working.push(request);
                }
            }
        }
        working.sort_by_key(|r| (r.area, r.start));
        let group = &mut device.groups[g];
        group.requests = working;
        // Keep the schedule; if we fell behind, do not burst to catch up.
        group.next_due = (group.next_due + group.interval).max(Instant::now());
        if answered {
            device.came_online();
        }
        let outcome = match failed {
            Some(Outcome::Broken) => Outcome::Broken,
            _ if answered => Outcome::Answered,
            Some(failure) => failure,
            None => Outcome::Answered,
        };
        (out, outcome)
    }
}

/// Why a request did not produce data.
enum Failure {
    /// The device answered with an exception.
    Exception(ExceptionCode),
    /// No answer in time.
    Timeout,
    /// Bytes came, but no valid answer (bad CRC or framing) in time.
    Garbled,
    /// I/O or protocol error (a CRC error, a stale or mismatched answer).
    Link(String),
}

/// How a poll of one group ended, for the link's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The device answered (data or exceptions).
    Answered,
    /// The device did not answer in time.
    TimedOut,
    /// The link returned garbage or failed: do not trust it any more.
    Broken,
}

async fn read(
    ctx: &mut Context,
    request: &ReadRequest,
    stats: &DeviceStats,
    wire: &Wire<'_>,
) -> Result<(Option<Vec<u16>>, Option<Vec<bool>>), Failure> {
    let (start, count) = (request.start, request.count);
    match request.area {
        Area::Coil => exchange(stats, wire, ctx.read_coils(start, count))
            .await
            .map(|b| (None, Some(b))),
        Area::DiscreteInput => exchange(stats, wire, ctx.read_discrete_inputs(start, count))
            .await
            .map(|b| (None, Some(b))),
        Area::InputRegister => exchange(stats, wire, ctx.read_input_registers(start, count))
            .await
            .map(|w| (Some(w), None)),
        Area::HoldingRegister => exchange(stats, wire, ctx.read_holding_registers(start, count))
            .await
            .map(|w| (Some(w), None)),
    }
}

/// Bytes of the shortest RTU frame: address, function, exception code, CRC.
const MIN_FRAME: u64 = 5;

/// One Modbus transaction, bounded by the wire's timeout and counted in
/// the device's stats.
async fn exchange<T>(
    stats: &DeviceStats,
    wire: &Wire<'_>,
    call: impl Future<Output = tokio_modbus::Result<T>>,
) -> Result<T, Failure> {
    let received = || wire.rx_bytes.map_or(0, |b| b.load(Relaxed));
    let before = received();
    let started = Instant::now();
    stats.requests.fetch_add(1, Relaxed);
    let result = match tokio::time::timeout(wire.timeout, call).await {
        // At least the shortest frame (an exception: 5 bytes) came, but no
        // valid one: garbled. Fewer bytes are a slow or cut-off answer.
        Err(_) if received() - before >= MIN_FRAME => Err(Failure::Garbled),
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) => Err(Failure::Link(e.to_string())),
        Ok(Ok(Err(code))) => Err(Failure::Exception(code)),
        Ok(Ok(Ok(data))) => Ok(data),
    };
    let counter = match &result {
        Ok(_) => {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.latency_us_total.fetch_add(micros, Relaxed);
            &stats.answers
        }
        Err(Failure::Exception(_)) => &stats.exceptions,
        Err(Failure::Timeout) => &stats.timeouts,
        Err(Failure::Garbled) => &stats.crc_errors,
        Err(Failure::Link(_)) => &stats.link_errors,
    };
    counter.fetch_add(1, Relaxed);
    result
}

/// A link's queue of writes; pending forever once nobody can send.
pub(crate) struct Commands(pub(crate) Option<CommandReceiver>);

impl Commands {
    pub(crate) async fn next(&mut self) -> WriteRequest {
        if let Some(rx) = &mut self.0 {
            if let Some(request) = rx.recv().await {
                return request;
            }
            self.0 = None;
        }
        std::future::pending().await
    }

    fn try_next(&mut self) -> Option<WriteRequest> {
        self.0.as_mut()?.try_recv().ok()
    }
}

/// What ended a wait.
enum Wake {
    /// A poll is due.
    Due,
    /// A write arrived: writes go before polls, even overdue ones.
    Write(WriteRequest),
    /// The gateway stops.
    Stop,
}

/// Waits until `due` or a write. An overdue group is polled at once: a
/// timer, even an expired one, would wait for the next millisecond tick.
async fn wait_until(due: Instant, shutdown: &CancellationToken, commands: &mut Commands) -> Wake {
    if shutdown.is_cancelled() {
        return Wake::Stop;
    }
    if let Some(request) = commands.try_next() {
        return Wake::Write(request);
    }
    if due <= Instant::now() {
        return Wake::Due;
    }
    tokio::select! {
        () = shutdown.cancelled() => Wake::Stop,
        request = commands.next() => Wake::Write(request),
        () = tokio::time::sleep_until(due) => Wake::Due,
    }
}

/// One step of a link: waits for the first due poll (or a write, which
/// goes first, even to a slave in back-off: an operator asked) and carries
/// it out. Returns the device concerned, its samples and how the link
/// fared, for the link's policy; `None` when the gateway stops.
pub(crate) async fn step(
    devices: &mut [DeviceRt],
    ctx: &mut Context,
    ready_at: impl Fn(usize) -> Option<Instant>,
    wire: &Wire<'_>,
    shutdown: &CancellationToken,
    commands: &mut Commands,
) -> Option<(Option<usize>, Vec<Sample>, Outcome)> {
    let (d, g, due) = next_due(devices, ready_at)?;
    match wait_until(due, shutdown, commands).await {
        Wake::Stop => None,
        Wake::Due => {
            let (out, outcome) = devices[d].poll(ctx, g, wire).await;
            Some((Some(d), out, outcome))
        }
        Wake::Write(request) => {
            let (d, outcome) = serve_write(devices, ctx, request, wire).await;
            Some((d, Vec::new(), outcome))
        }
    }
}

/// Runs a write on its device of a link, answers its caller, and returns
/// how the link fared, for the link's policy (as after a poll).
async fn serve_write(
    devices: &mut [DeviceRt],
    ctx: &mut Context,
    request: WriteRequest,
    wire: &Wire<'_>,
) -> (Option<usize>, Outcome) {
    if request.reply.is_closed() {
        // The caller gave up (timed out or went away): a write nobody
        // waits for any more must not change the device later.
        tracing::warn!(device = %request.device, point = %request.point, "write dropped: its caller stopped waiting");
        return (None, Outcome::Answered);
    }
    let Some(d) = devices.iter().position(|d| d.id == request.device) else {
        let _ = request.reply.send(Err(WriteError::Offline {
            device: request.device.to_string(),
            why: "not on this link".into(),
        }));
        return (None, Outcome::Answered);
    };
    let (result, outcome) = devices[d].write(ctx, &request, wire).await;
    let stats = &devices[d].stats;
    match &result {
        Ok(_) => {
            stats.writes.fetch_add(1, Relaxed);
        }
        Err(e) => {
            tracing::warn!(device = %request.device, point = %request.point, "write failed: {e}");
            // Only what the device (or the link) failed; refusals before
            // any I/O are the caller's business.
            if outcome.is_some() {
                stats.write_errors.fetch_add(1, Relaxed);
            }
        }
    }
    let _ = request.reply.send(result);
    match outcome {
        Some(outcome) => (Some(d), outcome),
        // Refused before any I/O: nothing about the device or the link.
        None => (None, Outcome::Answered),
    }
}

/// Answers a write the link cannot carry out now.
pub(crate) fn refuse_offline(request: WriteRequest, why: String) {
    let device = request.device.to_string();
    let _ = request.reply.send(Err(WriteError::Offline { device, why }));
}

/// The link is down: every device on it goes offline (once), then wait
/// `delay` before the next attempt, refusing writes meanwhile. False if the
/// gateway stops first.
pub(crate) async fn link_down(
    devices: &mut [DeviceRt],
    sink: &SampleSink,
    delay: Duration,
    why: &str,
    shutdown: &CancellationToken,
    commands: &mut Commands,
) -> bool {
    let mut out = Vec::new();
    for d in devices.iter_mut() {
        d.stats.link_errors.fetch_add(1, Relaxed);
        d.went_offline(&mut out);
    }
    if !send(sink, devices, out, shutdown).await {
        return false;
    }
    let retry = tokio::time::sleep(delay);
    tokio::pin!(retry);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = &mut retry => return true,
            request = commands.next() => refuse_offline(request, why.to_owned()),
        }
    }
}

/// The (device, group) due first; `ready_at` may hold a device back (a
/// slave in back-off).
fn next_due(
    devices: &[DeviceRt],
    ready_at: impl Fn(usize) -> Option<Instant>,
) -> Option<(usize, usize, Instant)> {
    devices
        .iter()
        .enumerate()
        .flat_map(|(d, dev)| {
            let hold = ready_at(d);
            dev.groups.iter().enumerate().map(move |(g, group)| {
                (d, g, hold.map_or(group.next_due, |h| h.max(group.next_due)))
            })
        })
        .min_by_key(|&(_, _, due)| due)
}

/// Sends samples grouped by device (each batch has one source).
pub(crate) async fn send(
    sink: &SampleSink,
    devices: &[DeviceRt],
    samples: Vec<Sample>,
    shutdown: &CancellationToken,
) -> bool {
    if samples.is_empty() {
        return true;
    }
    let received_at = now_ns();
    let mut by_device: Vec<(Arc<str>, Vec<Sample>)> = Vec::new();
    for s in samples {
        match by_device
            .iter_mut()
            .find(|(d, _)| Arc::ptr_eq(d, &s.device))
        {
            Some((_, v)) => v.push(s),
            None => by_device.push((s.device.clone(), vec![s])),
        }
    }
    for (device, samples) in by_device {
        let source = devices
            .iter()
            .find(|d| Arc::ptr_eq(&d.id, &device))
            .map_or_else(|| Arc::from("modbus-tcp://"), |d| d.source.clone());
        let batch = SampleBatch {
            source,
            received_at,
            samples,
            profile: None,
            notice: None,
        };
        let sent = sink.send_unless(batch, shutdown).await;
        if !sent {
            return false;
        }
    }
    true
}
/// Words of an area as they went on the wire: coils as bits.
fn sent_as(area: Area, words: &[u16]) -> Sent {
    if area == Area::Coil {
        Sent::Bits(words.iter().map(|w| *w != 0).collect())
    } else {
        Sent::Registers(words.to_vec())
    }
}

