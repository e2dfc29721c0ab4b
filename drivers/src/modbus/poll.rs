//! Polling one Modbus device, whatever the link: its compiled register
//! map, reading a poll group with coalesced requests (splitting those the
//! device rejects, keeping the working layout), decoding, and the quality
//! transitions. The links (`tcp.rs`, `rtu.rs`) own the schedule and the
//! policy on failures.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

use super::codec::{self, DataType, Order};
use super::config::{ModbusDeviceConfig, RegisterMap};
use super::plan::{self, Area, Limits, ReadRequest, Span, Split};
use crate::{RawValue, Sample, SampleBatch, SampleQuality, SampleSink, now_ns};

/// One point, ready to decode.
struct PointRt {
    name: Arc<str>,
    ty: DataType,
    order: Order,
    bit: u8,
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
        Self {
            id: device.id.as_str().into(),
            unit: device.unit,
            source: source.into(),
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
            });
        }
    }

    /// One sample of quality bad per point with a known value: the
    /// transition to "not answering", reported once.
    pub(crate) fn went_offline(&mut self, out: &mut Vec<Sample>) {
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
                });
            }
        }
    }

    fn came_online(&mut self) {
        if !self.online {
            tracing::info!(device = %self.id, unit = self.unit, "Modbus device answers again");
            self.online = true;
        }
    }
    /// Reads group `g`: its samples, and how it ended. The caller applies
    /// its link's policy (reconnect, back off) and reports the device
    /// offline with [`DeviceRt::went_offline`] when it decides so.
    pub(crate) async fn poll(
        &mut self,
        ctx: &mut Context,
        g: usize,
        timeout: Duration,
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
            match read(ctx, &request, timeout).await {
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
                    tracing::debug!(device = %device.id, ?timeout, "Modbus request timed out");
                    failed = Some(Outcome::TimedOut);
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
    timeout: Duration,
) -> Result<(Option<Vec<u16>>, Option<Vec<bool>>), Failure> {
    let call = async {
        match request.area {
            Area::Coil => ctx
                .read_coils(request.start, request.count)
                .await
                .map(|r| r.map(|b| (None, Some(b)))),
            Area::DiscreteInput => ctx
                .read_discrete_inputs(request.start, request.count)
                .await
                .map(|r| r.map(|b| (None, Some(b)))),
            Area::InputRegister => ctx
                .read_input_registers(request.start, request.count)
                .await
                .map(|r| r.map(|w| (Some(w), None))),
            Area::HoldingRegister => ctx
                .read_holding_registers(request.start, request.count)
                .await
                .map(|r| r.map(|w| (Some(w), None))),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) => Err(Failure::Link(e.to_string())),
        Ok(Ok(Err(code))) => Err(Failure::Exception(code)),
        Ok(Ok(Ok(data))) => Ok(data),
    }
}

/// Waits until `due`; false if the gateway stops first. An overdue group
/// is polled at once: a timer, even an expired one, would wait for the
/// next millisecond tick.
pub(crate) async fn wait_until(due: Instant, shutdown: &CancellationToken) -> bool {
    if due > Instant::now() {
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep_until(due) => true,
        }
    } else {
        !shutdown.is_cancelled()
    }
}

/// The link is down: every device on it goes offline (once), then wait
/// `delay` before the next attempt. False if the gateway stops meanwhile.
pub(crate) async fn link_down(
    devices: &mut [DeviceRt],
    sink: &SampleSink,
    delay: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let mut out = Vec::new();
    for d in devices.iter_mut() {
        d.went_offline(&mut out);
    }
    if !send(sink, devices, out, shutdown).await {
        return false;
    }
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// The (device, group) due first; `ready_at` may hold a device back (a
/// slave in back-off).
pub(crate) fn next_due(
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
        };
        let sent = tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            sent = sink.send(batch) => sent.is_ok(),
        };
        if !sent {
            return false;
        }
    }
    true
}
