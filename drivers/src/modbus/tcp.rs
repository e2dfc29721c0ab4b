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
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

use super::codec::{self, DataType, Order};
use super::config::{ModbusConfig, ModbusDeviceConfig, RegisterMap, TcpConnectionConfig};
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

struct GroupRt {
    interval: Duration,
    next_due: Instant,
    /// Indexes of the group's points (into `DeviceRt::points`).
    requests: Vec<ReadRequest>,
}

/// A device on a connection, with its compiled register map.
pub(crate) struct DeviceRt {
    id: Arc<str>,
    unit: u8,
    source: Arc<str>,
    points: Vec<PointRt>,
    spans: Vec<Span>,
    groups: Vec<GroupRt>,
    online: bool,
}

impl DeviceRt {
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
    fn went_offline(&mut self, out: &mut Vec<Sample>) {
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
}

/// Why a request did not produce data.
enum Failure {
    /// The device answered with an exception.
    Exception(ExceptionCode),
    /// Timeout, I/O or protocol error: the connection is not trustworthy.
    Link(String),
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
        Err(_) => Err(Failure::Link(format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => Err(Failure::Link(e.to_string())),
        Ok(Ok(Err(code))) => Err(Failure::Exception(code)),
        Ok(Ok(Ok(data))) => Ok(data),
    }
}

/// Polls one TCP connection until shutdown.
pub(crate) struct TcpConnection {
    config: TcpConnectionConfig,
    devices: Vec<DeviceRt>,
}

impl TcpConnection {
    pub(crate) fn new(config: &TcpConnectionConfig, modbus: &ModbusConfig) -> Self {
        let devices = config
            .devices
            .iter()
            .filter_map(|d| {
                let map = modbus.maps.get(&d.map)?;
                Some(DeviceRt::new(
                    d,
                    map,
                    format!("modbus-tcp://{}/{}", config.address, d.unit),
                ))
            })
            .collect();
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
                    let mut out = Vec::new();
                    for d in &mut self.devices {
                        d.went_offline(&mut out);
                    }
                    if !send(&sink, &self.devices, out, &shutdown).await {
                        return;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(jitter(delay)) => {}
                    }
                    delay = (delay * 2).min(self.config.reconnect_max);
                    continue;
                }
            };
            // Poll until the link fails or we stop.
            loop {
                let Some((d, g, due)) = self.next_due() else {
                    return;
                };
                // An overdue group is polled at once: a timer, even one
                // already expired, would wait for the next millisecond tick.
                if due > Instant::now() {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(due) => {}
                    }
                } else if shutdown.is_cancelled() {
                    return;
                }
                let (out, link_ok) = self.poll_group(&mut ctx, d, g).await;
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

    /// The (device, group) due first.
    fn next_due(&self) -> Option<(usize, usize, Instant)> {
        self.devices
            .iter()
            .enumerate()
            .flat_map(|(d, dev)| {
                dev.groups
                    .iter()
                    .enumerate()
                    .map(move |(g, group)| (d, g, group.next_due))
            })
            .min_by_key(|&(_, _, due)| due)
    }

    /// Reads one group of one device. Returns its samples and whether the
    /// connection is still trustworthy.
    async fn poll_group(&mut self, ctx: &mut Context, d: usize, g: usize) -> (Vec<Sample>, bool) {
        let timeout = self.config.timeout;
        let device = &mut self.devices[d];
        ctx.set_slave(Slave(device.unit));
        let mut out = Vec::new();
        let mut queue: Vec<ReadRequest> = std::mem::take(&mut device.groups[g].requests);
        let mut working: Vec<ReadRequest> = Vec::with_capacity(queue.len());
        let mut link_ok = true;
        let mut answered = false;
        while let Some(request) = queue.pop() {
            if !link_ok {
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
                Err(Failure::Link(e)) => {
                    tracing::debug!(device = %device.id, error = %e, "Modbus request failed; reconnecting");
                    link_ok = false;
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
        } else if !link_ok {
            device.went_offline(&mut out);
        }
        (out, link_ok)
    }
}

fn jitter(delay: Duration) -> Duration {
    // ±20% from the clock's low bits: enough to spread reconnects of many gateways.
    let nanos = u64::try_from(now_ns()).unwrap_or(0);
    let factor = 0.8 + (nanos % 400) as f64 / 1000.0;
    delay.mul_f64(factor)
}

/// Sends samples grouped by device (each batch has one source).
async fn send(
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
