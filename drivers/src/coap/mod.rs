//! CoAP (RFC 7252) for constrained devices: a server on UDP that takes
//! readings by POST or PUT, built on coap-lite's message codec with our
//! own transport, deduplication and Block1 assembly.
//!
//! - [`config`]: listeners, resource paths, limits.
//! - [`cbor`]: SenML CBOR packs.
//! - [`observe`]: the Observe client (RFC 7641) for devices serving
//!   their own resources.
//!
//! **Durable acknowledgement.** A request's readings go into the pipeline
//! with a [`crate::CommitNotice`]; the answer (2.04 Changed) is sent only
//! once the store writer has committed them, so an acknowledged reading
//! survives a power cut. Content formats: SenML JSON (110), SenML CBOR
//! (112), JSON (50, a flat object) and text/plain (0, one value).
//!
//! **Exchanges.** A confirmable or non-confirmable message seen again from
//! the same endpoint with the same message id within EXCHANGE_LIFETIME is
//! answered from the deduplication cache (or ignored while its answer is
//! pending) and never stored twice. Block1 (RFC 7959) assembles packs
//! larger than a datagram. `/.well-known/core` lists the resources
//! (RFC 6690).
//!
//! **Limits and bad input.** Payload and pack size, a token bucket per
//! endpoint address (a flood from one endpoint is answered 5.03 and does
//! not starve the others), a bounded deduplication cache, bounded Block1
//! assemblies. A malformed confirmable datagram is answered with a Reset,
//! a bad payload with 4.00 / 4.13 / 4.15 and a diagnostic; every
//! rejection is counted by reason.
//!
//! **Security.** coap-lite has no DTLS: today CoAP belongs on a segmented
//! plant network (or behind a VPN). Every request passes `authorize`
//! (`Shared::authorize`) — the place for OSCORE or DTLS identities later.

pub mod cbor;
pub mod config;
pub mod observe;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{
    CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub use config::CoapConfig;
use config::ResourceConfig;

use crate::payload::decode::{self, DecodeError, Decoded, JsonLayout};
use crate::payload::topic::TopicPattern;
use biota_common::time::now_ns;
use biota_common::telemetry::{MetricKind, MetricSet, Telemetry};

use crate::component::{BoxError, BuildContext, Component, DriverConfig};
use crate::{
    CommitNotice, CommitOutcome, DeviceBinding, Sample, SampleBatch, SampleQuality, SampleSink,
};

/// RFC 7252 §4.8.2.
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// How long a Block1 transfer may pause between blocks.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Block1 transfers in progress at once.
const MAX_ASSEMBLIES: usize = 1000;
/// Requests waiting for their commit at once.
const MAX_PENDING: usize = 8192;
/// Endpoints the rate limiter remembers.
const MAX_ENDPOINTS: usize = 100_000;
/// How long a request waits for its commit before it is answered 5.03.
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("the CoAP server cannot listen on {address}: {source}")]
pub struct CoapError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct CoapStats {
    pub datagrams: AtomicU64,
    /// Requests answered 2.04 after their readings were committed.
    pub stored: AtomicU64,
    pub readings: AtomicU64,
    /// Retransmissions answered from the deduplication cache.
    pub duplicates: AtomicU64,
    /// Notifications received from observed resources.
    pub notifications: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl CoapStats {
    fn reject(&self, reason: &'static str, peer: SocketAddr, detail: &str) {
        let first = {
            let mut r = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
            let n = r.entry(reason).or_default();
            *n += 1;
            *n == 1 || n.is_power_of_two()
        };
        // Logged the first time and then at 2, 4, 8, ... per reason.
        if first {
            tracing::warn!(%peer, reason, "CoAP request rejected: {detail}");
        }
    }

    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "datagrams": self.datagrams.load(Relaxed),
            "stored": self.stored.load(Relaxed),
            "readings": self.readings.load(Relaxed),
            "duplicates": self.duplicates.load(Relaxed),
            "notifications": self.notifications.load(Relaxed),
            "rejected": self.rejected(),
        })
    }
}

impl Telemetry for CoapStats {
    fn status(&self) -> serde_json::Value {
        self.to_json()
    }

    fn metrics(&self, out: &mut MetricSet) {
        let rejected = out.family(
            "coap_rejected_total",
            MetricKind::Counter,
            "CoAP requests rejected, by reason.",
        );
        for (reason, count) in self.rejected() {
            rejected.sample(&[("reason", reason)], count);
        }
        for (field, counter) in [
            ("datagrams", &self.datagrams),
            ("stored", &self.stored),
            ("readings", &self.readings),
            ("duplicates", &self.duplicates),
            ("notifications", &self.notifications),
        ] {
            out.counter(
                &format!("coap_{field}_total"),
                &format!("CoAP {field}."),
                counter.load(Relaxed),
            );
        }
    }
}

impl DriverConfig for CoapConfig {
    fn devices(&self, path: &str) -> Vec<DeviceBinding> {
        self.bindings(path).0
    }

    fn dynamic_profiles(&self, path: &str) -> Vec<(String, String)> {
        self.bindings(path).1
    }

    fn build(&self, context: BuildContext) -> Result<Component, BoxError> {
        let driver = CoapDriver::start(self.clone(), context.sink)?;
        let telemetry = driver.stats();
        Ok(Component {
            telemetry: Some(telemetry),
            ..Component::task(driver.run(context.shutdown))
        })
    }
}

type ExchangeKey = (SocketAddr, u16);

/// Recently seen exchanges and their answers.
#[derive(Default)]
struct Dedup {
    answers: HashMap<ExchangeKey, Option<Vec<u8>>>,
    order: VecDeque<(ExchangeKey, Instant)>,
}

enum Seen {
    New,
    Pending,
    Answered(Vec<u8>),
}

impl Dedup {
    fn check(&mut self, key: ExchangeKey, capacity: usize) -> Seen {
        let now = Instant::now();
        while let Some((old, at)) = self.order.front() {
            if now.duration_since(*at) < EXCHANGE_LIFETIME && self.order.len() < capacity {
                break;
            }
            self.answers.remove(old);
            self.order.pop_front();
        }
        match self.answers.get(&key) {
            Some(Some(answer)) => Seen::Answered(answer.clone()),
            Some(None) => Seen::Pending,
            None => {
                self.answers.insert(key, None);
                self.order.push_back((key, now));
                Seen::New
            }
        }
    }

    fn answer(&mut self, key: ExchangeKey, bytes: Vec<u8>) {
        if let Some(slot) = self.answers.get_mut(&key) {
            *slot = Some(bytes);
        }
    }
}

/// A Block1 transfer in progress.
struct Assembly {
    data: Vec<u8>,
    next: u32,
    format: Option<ContentFormat>,
    touched: Instant,
}

struct Shared {
    config: CoapConfig,
    resources: Vec<(TopicPattern, ResourceConfig)>,
    sink: SampleSink,
    stats: Arc<CoapStats>,
    dedup: Mutex<Dedup>,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    blocks: Mutex<HashMap<(SocketAddr, String), Assembly>>,
    pending: Arc<tokio::sync::Semaphore>,
    next_mid: AtomicU16,
}

/// The CoAP server.
pub struct CoapDriver {
    shared: Arc<Shared>,
    sockets: Vec<std::net::UdpSocket>,
}

impl CoapDriver {
    /// Binds every listener (so a taken port fails the start).
    pub fn start(config: CoapConfig, sink: SampleSink) -> Result<Self, CoapError> {
        let mut sockets = Vec::new();
        for &address in &config.listen {
            let socket = bind_udp(address).map_err(|source| CoapError { address, source })?;
            // Bursts of requests wait in the kernel while the server is
            // busy; a small buffer drops them (and devices retransmit 2 s
            // later). The kernel caps it at net.core.rmem_max.
            let sock = socket2::SockRef::from(&socket);
            if let Err(e) = sock.set_recv_buffer_size(config.recv_buffer) {
                tracing::warn!(%address, error = %e, "cannot size the CoAP receive buffer");
            }
            let granted = sock.recv_buffer_size().unwrap_or(0);
            if granted < config.recv_buffer {
                tracing::info!(%address, asked = config.recv_buffer, granted, "CoAP receive buffer capped by net.core.rmem_max");
            }
            sockets.push(socket);
        }
        let resources = config
            .resources
            .iter()
            .filter_map(|r| Some((r.pattern().ok()?, r.clone())))
            .collect();
        tracing::info!(listen = ?config.listen, "CoAP server listening");
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                resources,
                sink,
                stats: Arc::default(),
                dedup: Mutex::default(),
                buckets: Mutex::default(),
                blocks: Mutex::default(),
                pending: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING)),
                next_mid: AtomicU16::new(now_ns() as u16),
            }),
            sockets,
        })
    }

    pub fn stats(&self) -> Arc<CoapStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = tokio_util::task::TaskTracker::new();
        for socket in self.sockets {
            match UdpSocket::from_std(socket) {
                Ok(socket) => {
                    tracker.spawn(serve(
                        Arc::new(socket),
                        self.shared.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => tracing::error!(error = %e, "a CoAP listener cannot run"),
            }
        }
        for observe in &self.shared.config.observe {
            tracker.spawn(observe::run(
                observe.clone(),
                self.shared.sink.clone(),
                self.shared.stats.clone(),
                shutdown.clone(),
            ));
        }
        tracker.close();
        tracker.wait().await;
    }
}

async fn serve(socket: Arc<UdpSocket>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "CoAP receive failed");
                    continue;
                }
            },
        };
        shared.stats.datagrams.fetch_add(1, Relaxed);
        if let Some(answer) = shared.clone().datagram(&buf[..n], peer, &socket) {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

/// A non-blocking UDP socket bound to `address` (an IPv6 one for IPv6
/// only, so that IPv4 and IPv6 listeners can share a port number).
fn bind_udp(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// An answer to `request` (piggybacked on the ACK of a confirmable one).
fn answer(request: &Packet, code: ResponseType, payload: &[u8], next_mid: &AtomicU16) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    if request.header.get_type() == MessageType::Confirmable {
        p.header.set_type(MessageType::Acknowledgement);
        p.header.message_id = request.header.message_id;
    } else {
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = next_mid.fetch_add(1, Relaxed);
    }
    p.header.code = MessageClass::Response(code);
    p.set_token(request.get_token().to_vec());
    if !payload.is_empty() {
        p.set_content_format(ContentFormat::TextPlain);
        p.payload = payload.to_vec();
    }
    p
}

fn encode(p: &Packet) -> Vec<u8> {
    p.to_bytes_unlimited().unwrap_or_default()
}

/// An unsigned option value in the fewest bytes.
fn uint_option(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

fn option_uint(raw: &[u8]) -> Option<u32> {
    (raw.len() <= 4).then(|| raw.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
}

impl Shared {
    /// Every request passes here: today every endpoint may post (CoAP is
    /// for segmented plant networks); an OSCORE or DTLS identity check goes here.
    fn authorize(&self, _peer: SocketAddr, _path: &str) -> bool {
        true
    }

    fn allow(&self, peer: SocketAddr) -> bool {
        let rate = self.config.rate_limit;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_ENDPOINTS && !buckets.contains_key(&peer.ip()) {
            buckets.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(10));
        }
        let (tokens, at) = buckets.entry(peer.ip()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate.max(1.0));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Handles one datagram: the answer to send at once, if any (answers
    /// that wait for a commit are sent by their own task).
    fn datagram(
        self: Arc<Self>,
        bytes: &[u8],
        peer: SocketAddr,
        socket: &Arc<UdpSocket>,
    ) -> Option<Vec<u8>> {
        let request = match Packet::from_bytes(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.reject("malformed", peer, &e.to_string());
                // A confirmable message we cannot process is rejected with a Reset.
                if bytes.len() >= 4 && bytes[0] >> 6 == 1 && (bytes[0] >> 4) & 3 == 0 {
                    let mut reset = Packet::new();
                    reset.header.set_version(1);
                    reset.header.set_type(MessageType::Reset);
                    reset.header.message_id = u16::from_be_bytes([bytes[2], bytes[3]]);
                    return Some(encode(&reset));
                }
                return None;
            }
        };
        let kind = request.header.get_type();
        if matches!(kind, MessageType::Acknowledgement | MessageType::Reset) {
            return None;
        }
        if !matches!(request.header.code, MessageClass::Request(_)) {
            return None;
        }
        let key = (peer, request.header.message_id);
        let capacity = self.config.dedup_entries;
        match self
            .dedup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(key, capacity)
        {
            Seen::Answered(bytes) => {
                self.stats.duplicates.fetch_add(1, Relaxed);
                return Some(bytes);
            }
            Seen::Pending => {
                self.stats.duplicates.fetch_add(1, Relaxed);
                return None;
            }
            Seen::New => {}
        }
        let done = move |this: &Self, p: Packet| {
            let bytes = encode(&p);
            this.dedup
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .answer(key, bytes.clone());
            Some(bytes)
        };
        if !self.allow(peer) {
            self.stats
                .reject("rate_limited", peer, "over the endpoint's rate limit");
            let mut p = answer(
                &request,
                ResponseType::ServiceUnavailable,
                b"rate limit",
                &self.next_mid,
            );
            p.add_option(CoapOption::MaxAge, uint_option(1));
            return done(&self, p);
        }
        let path = request
            .get_option(CoapOption::UriPath)
            .map(|segments| {
                segments
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        let method = match request.header.code {
            MessageClass::Request(m) => m,
            _ => return None,
        };
        if path == ".well-known/core" {
            if method != RequestType::Get {
                return done(
                    &self,
                    answer(
                        &request,
                        ResponseType::MethodNotAllowed,
                        b"",
                        &self.next_mid,
                    ),
                );
            }
            let mut p = answer(&request, ResponseType::Content, b"", &self.next_mid);
            p.set_content_format(ContentFormat::ApplicationLinkFormat);
            p.payload = self.link_format().into_bytes();
            return done(&self, p);
        }
        let Some((r, captures)) = self
            .resources
            .iter()
            .enumerate()
            .find_map(|(i, (pattern, _))| Some((i, pattern.matches(&path)?)))
        else {
            self.stats
                .reject("not_found", peer, &format!("no resource /{path}"));
            return done(
                &self,
                answer(
                    &request,
                    ResponseType::NotFound,
                    b"no such resource",
                    &self.next_mid,
                ),
            );
        };
        if !self.authorize(peer, &path) {
            return done(
                &self,
                answer(&request, ResponseType::Unauthorized, b"", &self.next_mid),
            );
        }
        if !matches!(method, RequestType::Post | RequestType::Put) {
            return done(
                &self,
                answer(
                    &request,
                    ResponseType::MethodNotAllowed,
                    b"POST or PUT readings",
                    &self.next_mid,
                ),
            );
        }
        let captured = |name: &str| {
            captures
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let device = captured("device");
        let point = captured("point");
        // Block1: gather the pack first.
        let (payload, format) = match self.block1(&request, peer, &path) {
            Ok(Some(full)) => full,
            Ok(None) => {
                // A block in the middle: 2.31 Continue, echoing Block1.
                let mut p = answer(&request, ResponseType::Continue, b"", &self.next_mid);
                if let Some(b) = request.get_first_option(CoapOption::Block1) {
                    p.add_option(CoapOption::Block1, b.clone());
                }
                return done(&self, p);
            }
            Err((code, reason, detail)) => {
                self.stats.reject(reason, peer, &detail);
                return done(
                    &self,
                    answer(&request, code, detail.as_bytes(), &self.next_mid),
                );
            }
        };
        if payload.len() > self.config.max_payload {
            self.stats
                .reject("too_large", peer, "payload over max_payload");
            let mut p = answer(
                &request,
                ResponseType::RequestEntityTooLarge,
                b"payload too large",
                &self.next_mid,
            );
            p.add_option(
                CoapOption::Size1,
                uint_option(self.config.max_payload as u32),
            );
            return done(&self, p);
        }
        let resource = &self.resources[r].1;
        let samples = match self.samples(&payload, format, device, point, resource, peer) {
            Ok(samples) => samples,
            Err((code, reason, detail)) => {
                self.stats.reject(reason, peer, &detail);
                return done(
                    &self,
                    answer(&request, code, detail.as_bytes(), &self.next_mid),
                );
            }
        };
        // Store, then answer: in a task of its own, so that the receive
        // loop goes on while the group commit happens.
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            self.stats.reject(
                "overloaded",
                peer,
                "too many requests waiting for their commit",
            );
            let mut p = answer(
                &request,
                ResponseType::ServiceUnavailable,
                b"busy",
                &self.next_mid,
            );
            p.add_option(CoapOption::MaxAge, uint_option(1));
            return done(&self, p);
        };
        let profile = resource.profile.as_deref().map(Arc::from);
        let source: Arc<str> = format!("coap://{}/{path}", peer.ip()).into();
        let socket = socket.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let code_payload = this.store(samples, source, profile).await;
            let (code, text) = code_payload;
            if let Some(bytes) = done(
                &this,
                answer(&request, code, text.as_bytes(), &this.next_mid),
            ) {
                let _ = socket.send_to(&bytes, peer).await;
            }
        });
        None
    }

    /// Collects Block1 blocks: the whole payload (and its format) once the
    /// last block is in, `None` while more are due.
    #[allow(clippy::type_complexity)]
    fn block1(
        &self,
        request: &Packet,
        peer: SocketAddr,
        path: &str,
    ) -> Result<Option<(Vec<u8>, Option<ContentFormat>)>, (ResponseType, &'static str, String)>
    {
        let format = request.get_content_format();
        let Some(raw) = request.get_first_option(CoapOption::Block1) else {
            return Ok(Some((request.payload.clone(), format)));
        };
        let bad = |detail: &str| (ResponseType::BadRequest, "bad_block", detail.to_owned());
        let value = option_uint(raw).ok_or_else(|| bad("Block1 longer than 3 bytes"))?;
        let (num, more, szx) = (value >> 4, value & 8 != 0, value & 7);
        if szx == 7 {
            return Err(bad("Block1 size exponent 7 is reserved"));
        }
        let size = 16usize << szx;
        if more && request.payload.len() != size {
            return Err(bad("a block that is not the last must have the block size"));
        }
        let key = (peer, path.to_owned());
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        blocks.retain(|_, a| now.duration_since(a.touched) < BLOCK_TIMEOUT);
        if num == 0 {
            if blocks.len() >= MAX_ASSEMBLIES {
                return Err((
                    ResponseType::ServiceUnavailable,
                    "too_many_transfers",
                    "too many block transfers".into(),
                ));
            }
            blocks.insert(
                key.clone(),
                Assembly {
                    data: Vec::new(),
                    next: 0,
                    format,
                    touched: now,
                },
            );
        }
        let Some(assembly) = blocks.get_mut(&key) else {
            return Err((
                ResponseType::RequestEntityIncomplete,
                "bad_block",
                "no transfer in progress: start at block 0".into(),
            ));
        };
        if num != assembly.next || assembly.data.len() != num as usize * size {
            blocks.remove(&key);
            return Err((
                ResponseType::RequestEntityIncomplete,
                "bad_block",
                "blocks out of order".into(),
            ));
        }
        assembly.data.extend_from_slice(&request.payload);
        assembly.next += 1;
        assembly.touched = now;
        if assembly.data.len() > self.config.max_payload {
            blocks.remove(&key);
            return Err((
                ResponseType::RequestEntityTooLarge,
                "too_large",
                "payload over max_payload".into(),
            ));
        }
        if more {
            return Ok(None);
        }
        let done = blocks.remove(&key).map(|a| (a.data, format.or(a.format)));
        Ok(done)
    }

    /// Decodes a payload into samples by its content format.
    #[allow(clippy::type_complexity)]
    fn samples(
        &self,
        payload: &[u8],
        format: Option<ContentFormat>,
        device: Option<String>,
        point: Option<String>,
        resource: &ResourceConfig,
        peer: SocketAddr,
    ) -> Result<Vec<Sample>, (ResponseType, &'static str, String)> {
        let (values, errors) = decode_by_format(payload, format, now_ns())?;
        if values.len() + errors.len() > self.config.max_records {
            return Err((
                ResponseType::RequestEntityTooLarge,
                "too_many_records",
                format!(
                    "{} records; at most {}",
                    values.len() + errors.len(),
                    self.config.max_records
                ),
            ));
        }
        for e in &errors {
            self.stats.reject(e.reason, peer, &e.detail);
        }
        let mut samples = Vec::with_capacity(values.len());
        for d in values {
            let device = device
                .clone()
                .or_else(|| resource.device.clone())
                .or(d.device);
            let point = d
                .point
                .or_else(|| point.clone())
                .or_else(|| resource.point.clone());
            let (Some(device), Some(point)) = (device, point) else {
                return Err((
                    ResponseType::BadRequest,
                    "no_device_or_point",
                    "the path, the resource and the payload name no device or no point".into(),
                ));
            };
            samples.push(Sample {
                device: device.into(),
                point: point.into(),
                value: d.value,
                device_time: d.time,
                quality: SampleQuality::Good,
                unit: d.unit.map(Arc::from),
            });
        }
        if samples.is_empty() {
            let detail = errors
                .first()
                .map_or("no readings in the payload".to_owned(), |e| {
                    e.detail.clone()
                });
            return Err((ResponseType::BadRequest, "no_readings", detail));
        }
        Ok(samples)
    }

    /// Sends the samples with a commit notice and waits for the commit.
    async fn store(
        &self,
        samples: Vec<Sample>,
        source: Arc<str>,
        profile: Option<Arc<str>>,
    ) -> (ResponseType, String) {
        let (notice, outcome) = CommitNotice::new();
        let count = samples.len();
        let batch = SampleBatch {
            source,
            received_at: now_ns(),
            samples,
            profile,
            notice: Some(notice),
        };
        if self.sink.send(batch).await.is_err() {
            return (
                ResponseType::ServiceUnavailable,
                "the gateway is stopping".into(),
            );
        }
        match tokio::time::timeout(COMMIT_WAIT, outcome).await {
            Ok(Ok(CommitOutcome::Committed {
                stored,
                dropped,
                last_seq,
            })) => {
                self.stats.stored.fetch_add(1, Relaxed);
                self.stats.readings.fetch_add(stored as u64, Relaxed);
                let text = if dropped == 0 {
                    format!("stored {stored} (seq <= {last_seq})")
                } else {
                    format!("stored {stored}, rejected {dropped} (seq <= {last_seq})")
                };
                (ResponseType::Changed, text)
            }
            Ok(Ok(CommitOutcome::NothingStored { dropped })) => (
                ResponseType::BadRequest,
                format!(
                    "none of the {dropped} readings could be stored (invalid names, types or values)"
                ),
            ),
            _ => {
                tracing::warn!(count, "CoAP request not committed in time");
                (
                    ResponseType::ServiceUnavailable,
                    "not stored in time; retry".into(),
                )
            }
        }
    }

    /// `/.well-known/core` (RFC 6690): each resource path, its accepted
    /// content formats.
    fn link_format(&self) -> String {
        self.resources
            .iter()
            .map(|(_, r)| {
                format!(
                    "<{}>;rt=\"biota.readings\";ct=\"110 112 50 0\";title=\"POST or PUT readings\"",
                    r.path
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A payload's values by its Content-Format: 110 SenML JSON, 112 SenML
/// CBOR, 50 JSON (a flat object), 0 text (one value, no point).
#[allow(clippy::type_complexity)]
pub(crate) fn decode_by_format(
    payload: &[u8],
    format: Option<ContentFormat>,
    now: i64,
) -> Result<(Vec<Decoded>, Vec<DecodeError>), (ResponseType, &'static str, String)> {
    let bad = |e: DecodeError| (ResponseType::BadRequest, e.reason, e.detail);
    match format {
        Some(ContentFormat::ApplicationSenmlJSON) => decode::senml(payload, now).map_err(bad),
        Some(ContentFormat::ApplicationSenmlCBOR) => {
            let doc = cbor::decode(payload)
                .map_err(|e| (ResponseType::BadRequest, "malformed_cbor", e))?;
            decode::senml_pack(doc, now).map_err(bad)
        }
        Some(ContentFormat::ApplicationJSON) => {
            decode::json(payload, &JsonLayout::default()).map_err(bad)
        }
        Some(ContentFormat::TextPlain) => {
            Ok((vec![decode::plain(payload).map_err(bad)?], Vec::new()))
        }
        Some(other) => Err((
            ResponseType::UnsupportedContentFormat,
            "unsupported_format",
            format!(
                "content format {} is not taken: use 110, 112, 50 or 0",
                usize::from(other)
            ),
        )),
        None => Err((
            ResponseType::UnsupportedContentFormat,
            "unsupported_format",
            "no Content-Format: use 110 (SenML JSON), 112 (SenML CBOR), 50 (JSON) or 0 (text)"
                .into(),
        )),
    }
}

impl std::fmt::Debug for CoapDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoapDriver")
            .field("listen", &self.shared.config.listen)
            .finish()
    }
}
