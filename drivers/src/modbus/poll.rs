//! Polling one Modbus device, whatever the link: its compiled register
//! map, reading a poll group with coalesced requests (splitting those the
//! device rejects, and planning again from what the rejections proved),
//! decoding, retries, and the quality transitions. The links (`tcp.rs`,
//! `rtu/`) carry one transaction at a time through [`Link`] and own the
//! schedule and the policy on failures.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;

use super::codec::{self, DataType, Order};
use super::config::{ModbusDeviceConfig, RegisterMap};
use super::pdu::{Answer, Request};
use super::plan::{self, Area, Attempt, Break, Limits, Probe, ReadRequest, Span};
use crate::command::{CommandReceiver, Sent, WriteError, WriteReport, WriteRequest};
use crate::stats::{DeviceState, DeviceStats};
use biota_common::time::now_ns;
use crate::{DeviceTime, RawValue, Sample, SampleBatch, SampleQuality, SampleSink};

/// A link to devices that carries one transaction at a time: a TCP
/// connection or a serial bus's master.
pub(crate) trait Link {
    /// Waits until a request may be sent (a serial line's silence after
    /// the last frame); round trips are timed from here. Nothing to wait
    /// for by default.
    async fn ready(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    /// Sends `request` to `unit` and waits for its answer. What the link
    /// sees besides the result (frames from other slaves, late answers) it
    /// counts in `stats`; the caller counts the result.
    async fn call(
        &mut self,
        unit: u8,
        request: &Request<'_>,
        stats: &Arc<DeviceStats>,
    ) -> Result<Answer, Failure>;

    /// How long an answer may take.
    fn timeout(&self) -> Duration;

    /// Extra attempts of a request that got no valid answer, before a
    /// device that answered so far is given up as offline.
    fn retries(&self) -> u8;
}

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
    /// The group's points (indexes into `DeviceRt::points`).
    points: std::ops::Range<usize>,
    /// The read plan: requests whose `points` index `DeviceRt::points`.
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
    limits: Limits,
    /// Ranges the plan must not span, proven by the device's rejections.
    breaks: Vec<Break>,
    /// Points the device rejects on their own: no longer polled.
    unreadable: Vec<bool>,
    online: bool,
    pub(crate) stats: Arc<DeviceStats>,
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
            let requests = plan::plan(&spans, first..spans.len(), &limits, &[]);
            groups.push(GroupRt {
                interval: group.interval,
                next_due: now,
                points: first..spans.len(),
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
            unreadable: vec![false; points.len()],
            points,
            spans,
            groups,
            limits,
            breaks: Vec::new(),
            online: true,
        }
    }

    /// Extra attempts of a request after a failed one: none for a device
    /// already offline (one attempt tells whether it is back).
    fn retries(&self, link: &impl Link) -> u8 {
        if self.online { link.retries() } else { 0 }
    }

    /// Takes in what a poll proved about the device's map, and plans every
    /// group again: the fewest requests that span no proven hole.
    fn learn(&mut self, breaks: Vec<Break>, dropped: Vec<usize>) {
        for p in dropped {
            self.unreadable[p] = true;
            tracing::warn!(
                device = %self.id,
                point = %self.points[p].name,
                "device rejects this point's address; it is no longer polled this session"
            );
        }
        self.breaks.extend(breaks);
        for group in &mut self.groups {
            let live = group.points.clone().filter(|&p| !self.unreadable[p]);
            group.requests = plan::plan(&self.spans, live, &self.limits, &self.breaks);
        }
        let plan: Vec<String> = self
            .groups
            .iter()
            .flat_map(|g| &g.requests)
            .map(|r| {
                let last = u32::from(r.start) + u32::from(r.count) - 1;
                format!("{} {}..{last}", r.area.as_str(), r.start)
            })
            .collect();
        tracing::info!(device = %self.id, requests = plan.len(), plan = %plan.join(", "), "read plan made again after the device rejected a read");
    }

    fn decode(&mut self, request: &ReadRequest, answer: &Answer, out: &mut Vec<Sample>) {
        for &p in &request.points {
            let span = self.spans[p];
            let offset = usize::from(span.address - request.start);
            let point = &mut self.points[p];
            let value = match answer {
                Answer::Registers(regs) => {
                    let Some(slice) = regs.get(offset..offset + usize::from(span.width)) else {
                        continue;
                    };
                    codec::decode(point.ty, point.order, point.bit, slice)
                }
                Answer::Bits(bits) => match bits.get(offset) {
                    Some(b) => RawValue::Bool(*b),
                    None => continue,
                },
                Answer::Written => continue,
            };
            point.last = Some(value.clone());
            out.push(Sample {
                device: self.id.clone(),
                point: point.name.clone(),
                value,
                device_time: DeviceTime::Absent,
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
                    device_time: DeviceTime::Absent,
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
        link: &mut impl Link,
        request: &WriteRequest,
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
        let coils = [words[0] != 0];
        let (operation, pdu) = match (span.area, multiple) {
            (Area::Coil, false) => (
                "write_single_coil (5)",
                Request::WriteCoil {
                    address,
                    on: coils[0],
                },
            ),
            (Area::Coil, true) => (
                "write_multiple_coils (15)",
                Request::WriteCoils {
                    address,
                    values: &coils,
                },
            ),
            (_, false) => (
                "write_single_register (6)",
                Request::WriteRegister {
                    address,
                    value: words[0],
                },
            ),
            (_, true) => (
                "write_multiple_registers (16)",
                Request::WriteRegisters {
                    address,
                    values: &words,
                },
            ),
        };
        let retries = self.retries(link);
        let sent = exchange(link, self.unit, &pdu, &self.stats, retries).await;
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
            return self.write_failed(failure, link.timeout());
        }
        self.came_online();
        if verify {
            let back = Request::Read {
                area: span.area,
                start: address,
                count: span.width,
            };
            let read = match exchange(link, self.unit, &back, &self.stats, retries).await {
                Ok(Answer::Registers(regs)) => regs,
                Ok(Answer::Bits(bits)) => bits.into_iter().take(1).map(u16::from).collect(),
                Ok(Answer::Written) => Vec::new(),
                Err(failure) => {
                    let outcome = failure.outcome();
                    let why = match failure {
                        Failure::Exception(code) => {
                            format!("Modbus exception {code:?} ({})", u8::from(code))
                        }
                        Failure::Timeout => format!("no answer within {:?}", link.timeout()),
                        Failure::Garbled => "a garbled answer".into(),
                        Failure::Link(why) => why,
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
            if group.points.contains(&p) {
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
        let outcome = Some(failure.outcome());
        let error = match failure {
            Failure::Exception(code) => WriteError::Refused {
                device,
                why: format!("Modbus exception {code:?} ({})", u8::from(code)),
            },
            Failure::Timeout => WriteError::Timeout { device, timeout },
            Failure::Garbled => WriteError::Link {
                device,
                why: "garbled answer (bad CRC or framing)".into(),
            },
            Failure::Link(why) => WriteError::Link { device, why },
        };
        (Err(error), outcome)
    }

    /// Reads group `g`: its samples, and how it ended. The caller applies
    /// its link's policy (reconnect, back off) and reports the device
    /// offline with [`DeviceRt::went_offline`] when it decides so.
    pub(crate) async fn poll(&mut self, link: &mut impl Link, g: usize) -> (Vec<Sample>, Outcome) {
        let device = self;
        let retries = device.retries(link);
        let mut out = Vec::new();
        let plan = std::mem::take(&mut device.groups[g].requests);
        let mut probe = Probe::default();
        let mut failed: Option<Outcome> = None;
        let mut answered = false;
        'plan: for request in &plan {
            // The request, then the halves of rejected ones, depth first.
            let mut attempts = vec![Attempt::planned(request)];
            while let Some(attempt) = attempts.pop() {
                let request = &*attempt.request;
                let pdu = Request::Read {
                    area: request.area,
                    start: request.start,
                    count: request.count,
                };
                match exchange(link, device.unit, &pdu, &device.stats, retries).await {
                    Ok(answer) => {
                        answered = true;
                        probe.answered(&attempt);
                        device.decode(request, &answer, &mut out);
                    }
                    Err(Failure::Exception(ExceptionCode::IllegalDataAddress)) => {
                        answered = true;
                        tracing::info!(
                            device = %device.id,
                            area = request.area.as_str(),
                            start = request.start,
                            count = request.count,
                            "device rejected a read (illegal data address); splitting it"
                        );
                        attempts.extend(probe.rejected(&attempt, &device.spans).into_iter().flatten());
                    }
                    Err(Failure::Exception(code)) => {
                        answered = true;
                        tracing::debug!(device = %device.id, ?code, "Modbus exception");
                    }
                    Err(failure) => {
                        tracing::debug!(device = %device.id, ?failure, "Modbus request failed");
                        failed = Some(failure.outcome());
                        break 'plan;
                    }
                }
            }
        }
        let group = &mut device.groups[g];
        group.requests = plan;
        // Keep the schedule; if we fell behind, do not burst to catch up.
        group.next_due = (group.next_due + group.interval).max(Instant::now());
        let (breaks, dropped) = probe.learnt();
        if !breaks.is_empty() || !dropped.is_empty() {
            device.learn(breaks, dropped);
        }
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
#[derive(Debug)]
pub(crate) enum Failure {
    /// The device answered with an exception.
    Exception(ExceptionCode),
    /// No answer in time.
    Timeout,
    /// A frame came, but it was not valid (bad CRC or framing).
    Garbled,
    /// I/O or protocol error (connection lost, a stale or mismatched
    /// answer on TCP, the serial port failing).
    Link(String),
}

impl Failure {
    /// How the link fared.
    fn outcome(&self) -> Outcome {
        match self {
            Failure::Exception(_) => Outcome::Answered,
            Failure::Timeout => Outcome::TimedOut,
            Failure::Garbled => Outcome::Garbled,
            Failure::Link(_) => Outcome::Broken,
        }
    }
}

/// How a poll of one group ended, for the link's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The device answered (data or exceptions).
    Answered,
    /// The device did not answer in time.
    TimedOut,
    /// The device's answer came garbled (a serial line): it is there, the
    /// line is noisy.
    Garbled,
    /// The link failed: do not trust it any more.
    Broken,
}

/// One request, attempted up to `1 + retries` times while it gets no
/// valid answer (timeouts and garbled answers), each attempt counted in
/// the device's stats.
async fn exchange(
    link: &mut impl Link,
    unit: u8,
    request: &Request<'_>,
    stats: &Arc<DeviceStats>,
    retries: u8,
) -> Result<Answer, Failure> {
    let mut attempt = 0;
    loop {
        stats.requests.fetch_add(1, Relaxed);
        let result = match link.ready().await {
            Ok(()) => {
                let started = Instant::now();
                link.call(unit, request, stats).await.map(|a| (a, started))
            }
            Err(failure) => Err(failure),
        };
        let counter = match &result {
            Ok((_, started)) => {
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
        match result {
            Err(Failure::Timeout | Failure::Garbled) if attempt < retries => {
                attempt += 1;
                tracing::debug!(device = %stats.device, unit, attempt, "no valid answer; asking again");
            }
            result => return result.map(|(answer, _)| answer),
        }
    }
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
    link: &mut impl Link,
    ready_at: impl Fn(usize) -> Option<Instant>,
    shutdown: &CancellationToken,
    commands: &mut Commands,
) -> Option<(Option<usize>, Vec<Sample>, Outcome)> {
    let (d, g, due) = next_due(devices, ready_at)?;
    match wait_until(due, shutdown, commands).await {
        Wake::Stop => None,
        Wake::Due => {
            let (out, outcome) = devices[d].poll(link, g).await;
            Some((Some(d), out, outcome))
        }
        Wake::Write(request) => {
            let (d, outcome) = serve_write(devices, link, request).await;
            Some((d, Vec::new(), outcome))
        }
    }
}

/// Runs a write on its device of a link, answers its caller, and returns
/// how the link fared, for the link's policy (as after a poll).
async fn serve_write(
    devices: &mut [DeviceRt],
    link: &mut impl Link,
    request: WriteRequest,
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
    let (result, outcome) = devices[d].write(link, &request).await;
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
            died: Vec::new(),
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

