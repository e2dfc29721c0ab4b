//! CoAP (RFC 7252) for constrained devices: a server on UDP that takes
//! readings by POST or PUT, with our own message codec ([`wire`]),
//! transport, deduplication and Block1 assembly.
//!
//! - [`config`]: listeners, resource paths, limits.
//! - [`wire`]: the message format: strict parsing, encoding, options.
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
//! (RFC 6690), in Block2 blocks when asked.
//!
//! **The message layer (RFC 7252 §4).** A message of another version is
//! silently ignored. A confirmable or non-confirmable message the server
//! cannot process — a format error, an Empty NON, a reserved code class, a
//! response — is rejected with an Empty Reset; a CoAP ping (an Empty CON)
//! gets its Reset too, and is no rejection. ACKs and Resets need nothing.
//!
//! **Requests.** Unrecognized critical options, and conditional requests
//! (If-Match, If-None-Match: this server keeps no ETags), get 4.02 in a
//! CON and a Reset in a NON (§5.4.1); Proxy-Uri and Proxy-Scheme 5.05
//! (§5.10.2); an unknown method or one the resource does not take 4.05;
//! an Accept the answer cannot meet 4.06.
//!
//! **Limits and bad input.** Payload and pack size, a token bucket per
//! endpoint address (a flood from one endpoint is answered 5.03 and does
//! not starve the others), a bounded deduplication cache, bounded Block1
//! assemblies. A bad payload gets 4.00 / 4.13 / 4.15 and a diagnostic.
//! Every rejection is counted by reason ([`CoapStats`]).
//!
//! **Security.** There is no DTLS here: today CoAP belongs on a segmented
//! plant network (or behind a VPN). Every request passes `authorize`
//! (`Shared::authorize`) — the place for OSCORE or DTLS identities later.

mod blocks;
pub mod cbor;
pub mod config;
mod exchange;
pub mod observe;
mod request;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub use config::CoapConfig;
use config::ResourceConfig;
use blocks::Assemblies;
use exchange::{Dedup, ExchangeKey, Reply, Seen};
use request::{OptionRefusal, Refusal, RequestOptions, read_options};
use wire::{Block, Code, Encoder, Kind, Message, ParseError, format, option};

use crate::payload::decode::{self, DecodeError, Decoded, JsonLayout};
use crate::payload::topic::TopicPattern;
use biota_common::telemetry::{MetricKind, MetricSet, Telemetry};
use biota_common::time::now_ns;

use crate::component::{BoxError, BuildContext, Component, DriverConfig};
use crate::{
    CommitNotice, CommitOutcome, DeviceBinding, Sample, SampleBatch, SampleQuality, SampleSink,
};

/// Requests waiting for their commit at once.
const MAX_PENDING: usize = 8192;
/// Endpoints the rate limiter remembers.
const MAX_ENDPOINTS: usize = 100_000;
/// How long a request waits for its commit before it is answered 5.03.
const COMMIT_WAIT: Duration = Duration::from_secs(30);
/// The largest `/.well-known/core` answer sent whole; a larger one goes
/// in Block2 blocks of this size (RFC 7959 §2.4; RFC 7252 §4.6 asks for
/// messages that fit 1152 bytes).
const LINK_FORMAT_BLOCK: Block = Block {
    num: 0,
    more: false,
    szx: 6,
};

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

struct Shared {
    config: CoapConfig,
    resources: Vec<(TopicPattern, ResourceConfig)>,
    /// `/.well-known/core`, made once.
    link_format: String,
    sink: SampleSink,
    stats: Arc<CoapStats>,
    dedup: Mutex<Dedup>,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    blocks: Assemblies,
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
            let socket = bind_udp(address, config.recv_buffer)
                .map_err(|source| CoapError { address, source })?;
            sockets.push(socket);
        }
        let resources: Vec<_> = config
            .resources
            .iter()
            .filter_map(|r| Some((r.pattern().ok()?, r.clone())))
            .collect();
        let link_format = link_format(&resources);
        tracing::info!(listen = ?config.listen, "CoAP server listening");
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                resources,
                link_format,
                sink,
                stats: Arc::default(),
                dedup: Mutex::default(),
                buckets: Mutex::default(),
                blocks: Assemblies::default(),
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

/// A listener socket as the server binds it: non-blocking, bound to
/// `address` (an IPv6 one for IPv6 only, so that IPv4 and IPv6 listeners
/// can share a port number), with a receive buffer of `recv_buffer` bytes
/// as far as the kernel grants it. Public for `bench coap`, whose bare
/// loop runs over the same kind of socket.
pub fn bind_udp(address: SocketAddr, recv_buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Bursts of requests wait in the kernel while the server is busy; a
    // small buffer drops them (and devices retransmit 2 s later). The
    // kernel caps it at net.core.rmem_max.
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(%address, error = %e, "cannot size the CoAP receive buffer");
    }
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < recv_buffer {
        tracing::info!(%address, asked = recv_buffer, granted, "CoAP receive buffer capped by net.core.rmem_max");
    }
    socket.bind(&address.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
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

    /// The answer to `reply`'s request: piggybacked on the ACK of a CON,
    /// a NON of its own for a NON. `options` are unsigned ones, in order.
    fn answer(&self, reply: &Reply, code: Code, options: &[(u16, u32)], payload: &[u8]) -> Vec<u8> {
        let (kind, mid) = match reply.kind {
            Kind::Con => (Kind::Ack, reply.mid),
            _ => (Kind::Non, self.next_mid.fetch_add(1, Relaxed)),
        };
        options
            .iter()
            .fold(Encoder::new(kind, code, mid, reply.token()), |e, &(n, v)| {
                e.uint_option(n, v)
            })
            .payload(payload)
    }

    /// Counts a refusal and answers it with its diagnostic.
    fn refuse(&self, reply: &Reply, peer: SocketAddr, (code, reason, detail): Refusal) -> Vec<u8> {
        self.stats.reject(reason, peer, &detail);
        self.answer(reply, code, &[], detail.as_bytes())
    }

    /// Remembers the answer to exchange `key` for its retransmissions.
    fn remember(&self, key: ExchangeKey, bytes: Vec<u8>) -> Option<Vec<u8>> {
        self.dedup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answer(key, bytes.clone());
        Some(bytes)
    }

    /// Handles one datagram: the answer to send at once, if any (answers
    /// that wait for a commit are sent by their own task).
    fn datagram(
        self: Arc<Self>,
        bytes: &[u8],
        peer: SocketAddr,
        socket: &Arc<UdpSocket>,
    ) -> Option<Vec<u8>> {
        let message = match wire::parse(bytes) {
            Ok(m) => m,
            Err(e) => return self.unparsable(&e, peer),
        };
        let reset = || Some(wire::empty(Kind::Rst, message.mid).to_vec());
        match (message.kind, message.code) {
            // This server sends no CON, and a Reset to one of its NON
            // answers needs nothing; RFC 7252 §4.2 has a wrong ACK or
            // Reset silently ignored.
            (Kind::Ack | Kind::Rst, Code::EMPTY) => None,
            (Kind::Ack | Kind::Rst, code) => {
                self.stats.reject(
                    "unexpected_message",
                    peer,
                    &format!("a {} with code {code}: ignored", message.kind),
                );
                None
            }
            // A CoAP ping (§4.3): its Reset is the pong.
            (Kind::Con, Code::EMPTY) => reset(),
            (Kind::Non, Code::EMPTY) => {
                self.stats.reject(
                    "unexpected_message",
                    peer,
                    "an Empty NON (RFC 7252 §4.3: a NON is never Empty)",
                );
                reset()
            }
            (_, code) if code.is_request() => self.request(message, peer, socket),
            (kind, code) => {
                self.stats.reject(
                    "unexpected_message",
                    peer,
                    &format!("a {kind} with code {code}: this server takes requests only"),
                );
                reset()
            }
        }
    }

    /// A datagram that is no message to process: counted; a CON or NON
    /// with a format error is rejected with an Empty Reset (RFC 7252 §4.2,
    /// §4.3), anything else silently ignored (§3: another version; §4.2:
    /// an ACK or a Reset).
    fn unparsable(&self, error: &ParseError, peer: SocketAddr) -> Option<Vec<u8>> {
        let detail = error.to_string();
        match *error {
            ParseError::TooShort { .. } => {
                self.stats.reject("malformed", peer, &detail);
                None
            }
            ParseError::Version { .. } => {
                self.stats.reject("bad_version", peer, &detail);
                None
            }
            ParseError::Format { kind, mid, .. } => {
                self.stats.reject("malformed", peer, &detail);
                matches!(kind, Kind::Con | Kind::Non).then(|| wire::empty(Kind::Rst, mid).to_vec())
            }
        }
    }

    /// A CON or NON request.
    fn request(
        self: Arc<Self>,
        request: Message<'_>,
        peer: SocketAddr,
        socket: &Arc<UdpSocket>,
    ) -> Option<Vec<u8>> {
        let reply = Reply::of(&request);
        let key = (peer, request.mid);
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
        if !self.allow(peer) {
            self.stats
                .reject("rate_limited", peer, "over the endpoint's rate limit");
            let p = self.answer(
                &reply,
                Code::SERVICE_UNAVAILABLE,
                &[(option::MAX_AGE, 1)],
                b"rate limit",
            );
            return self.remember(key, p);
        }
        let refused = |this: &Self, refusal: Refusal| {
            let answer = this.refuse(&reply, peer, refusal);
            this.remember(key, answer)
        };
        if !request.code.is_known_method() {
            // RFC 7252 §5.8.
            return refused(
                &self,
                (
                    Code::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("method code {} is not one this server knows", request.code),
                ),
            );
        }
        let options = match read_options(&request) {
            Ok(options) => options,
            Err(OptionRefusal::Bad { number, why }) => {
                let detail = format!("option {number}: {why}");
                if reply.kind == Kind::Con {
                    return refused(&self, (Code::BAD_OPTION, "bad_option", detail));
                }
                // §5.4.1: a NON with it is rejected (§4.3), never answered.
                self.stats.reject("bad_option", peer, &detail);
                return self.remember(key, wire::empty(Kind::Rst, request.mid).to_vec());
            }
            Err(OptionRefusal::Proxy { number }) => {
                return refused(
                    &self,
                    (
                        Code::PROXYING_NOT_SUPPORTED,
                        "proxying_not_supported",
                        format!("option {number}: this server is no proxy"),
                    ),
                );
            }
        };
        let path = options.path.as_str();
        if path == ".well-known/core" {
            return match self.well_known_core(&request, &reply, &options) {
                Ok(answer) => self.remember(key, answer),
                Err(refusal) => refused(&self, refusal),
            };
        }
        let Some((r, captures)) = self
            .resources
            .iter()
            .enumerate()
            .find_map(|(i, (pattern, _))| Some((i, pattern.matches(path)?)))
        else {
            return refused(
                &self,
                (Code::NOT_FOUND, "not_found", format!("no resource /{path}")),
            );
        };
        if !self.authorize(peer, path) {
            return refused(
                &self,
                (
                    Code::UNAUTHORIZED,
                    "unauthorized",
                    format!("this endpoint may not post to /{path}"),
                ),
            );
        }
        if !matches!(request.code, Code::POST | Code::PUT) {
            return refused(
                &self,
                (
                    Code::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} on /{path}: POST or PUT readings", request.code),
                ),
            );
        }
        // §5.10.4: answers to POST and PUT are text/plain.
        if let Some(accept) = options.accept.filter(|a| *a != format::TEXT_PLAIN) {
            return refused(
                &self,
                (
                    Code::NOT_ACCEPTABLE,
                    "not_acceptable",
                    format!("Accept {accept}: the answer is text/plain (0)"),
                ),
            );
        }
        // Block2 in a request asks for answers no larger than its size
        // (RFC 7959 §2.4): a diagnostic that does not fit is left out.
        let answer_limit = match options.block2.map(|b| blocks::block_size(b, "Block2")) {
            None => usize::MAX,
            Some(Ok(size)) => size,
            Some(Err(refusal)) => return refused(&self, refusal),
        };
        let captured = |name: &str| {
            captures
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let device = captured("device");
        let point = captured("point");
        // Block1: gather the pack first.
        let assembled = match options.block1 {
            None => Ok(Some((request.payload.to_vec(), options.content_format))),
            Some(block) => self.blocks.add(
                block,
                request.payload,
                options.content_format,
                (peer, path),
                self.config.max_payload,
            ),
        };
        let (payload, format) = match assembled {
            Ok(Some(full)) => full,
            Ok(None) => {
                // A block in the middle: 2.31 Continue, echoing Block1.
                let block = options.block1.map_or(0, Block::value);
                let p = self.answer(&reply, Code::CONTINUE, &[(option::BLOCK1, block)], b"");
                return self.remember(key, p);
            }
            Err(refusal) => return refused(&self, refusal),
        };
        if payload.len() > self.config.max_payload {
            self.stats
                .reject("too_large", peer, "payload over max_payload");
            let p = self.answer(
                &reply,
                Code::REQUEST_ENTITY_TOO_LARGE,
                &[(option::SIZE1, self.config.max_payload as u32)],
                b"payload too large",
            );
            return self.remember(key, p);
        }
        let resource = &self.resources[r].1;
        let samples = match self.samples(&payload, format, device, point, resource, peer) {
            Ok(samples) => samples,
            Err(refusal) => return refused(&self, refusal),
        };
        // Store, then answer: in a task of its own, so that the receive
        // loop goes on while the group commit happens.
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            self.stats.reject(
                "overloaded",
                peer,
                "too many requests waiting for their commit",
            );
            let p = self.answer(
                &reply,
                Code::SERVICE_UNAVAILABLE,
                &[(option::MAX_AGE, 1)],
                b"busy",
            );
            return self.remember(key, p);
        };
        // RFC 7959 §2.3: the answer to the last block carries its Block1.
        let last_block = options.block1.map(|b| Block { more: false, ..b });
        let profile = resource.profile.as_deref().map(Arc::from);
        let source: Arc<str> = format!("coap://{}/{path}", peer.ip()).into();
        let socket = socket.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let answer = match this.store(samples, source, profile).await {
                Ok(text) => {
                    let block1 = last_block.map(|b| (option::BLOCK1, b.value()));
                    let format = (!text.is_empty() && text.len() <= answer_limit)
                        .then_some((option::CONTENT_FORMAT, u32::from(format::TEXT_PLAIN)));
                    let options: Vec<_> = format.into_iter().chain(block1).collect();
                    let text = if text.len() <= answer_limit { text.as_bytes() } else { b"" };
                    this.answer(&reply, Code::CHANGED, &options, text)
                }
                Err(refusal) => this.refuse(&reply, peer, refusal),
            };
            if let Some(bytes) = this.remember(key, answer) {
                let _ = socket.send_to(&bytes, peer).await;
            }
        });
        None
    }

    /// `GET /.well-known/core` (RFC 6690) in link-format, whole or in the
    /// Block2 block asked for.
    fn well_known_core(
        &self,
        request: &Message<'_>,
        reply: &Reply,
        options: &RequestOptions,
    ) -> Result<Vec<u8>, Refusal> {
        if request.code != Code::GET {
            return Err((
                Code::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} on /.well-known/core: GET only", request.code),
            ));
        }
        if let Some(accept) = options.accept.filter(|a| *a != format::LINK_FORMAT) {
            return Err((
                Code::NOT_ACCEPTABLE,
                "not_acceptable",
                format!("Accept {accept}: /.well-known/core is link-format (40)"),
            ));
        }
        let link_format = (option::CONTENT_FORMAT, u32::from(format::LINK_FORMAT));
        Ok(
            match blocks::block2(self.link_format.as_bytes(), options.block2, LINK_FORMAT_BLOCK)? {
                (body, None) => self.answer(reply, Code::CONTENT, &[link_format], body),
                (body, Some(block)) => self.answer(
                    reply,
                    Code::CONTENT,
                    &[link_format, (option::BLOCK2, block.value())],
                    body,
                ),
            },
        )
    }

    /// Decodes a payload into samples by its content format.
    fn samples(
        &self,
        payload: &[u8],
        format: Option<u16>,
        device: Option<String>,
        point: Option<String>,
        resource: &ResourceConfig,
        peer: SocketAddr,
    ) -> Result<Vec<Sample>, Refusal> {
        let (values, errors) = decode_by_format(payload, format, now_ns())?;
        if values.len() + errors.len() > self.config.max_records {
            return Err((
                Code::REQUEST_ENTITY_TOO_LARGE,
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
        let named = device.as_deref().or(resource.device.as_deref());
        for d in values {
            let (device, own_point) = d.names(named);
            let point = own_point
                .or(point.as_deref())
                .or(resource.point.as_deref());
            let (Some(device), Some(point)) = (device, point) else {
                return Err((
                    Code::BAD_REQUEST,
                    "no_device_or_point",
                    "the path, the resource and the payload name no device or no point".into(),
                ));
            };
            let (device, point): (Arc<str>, Arc<str>) = (device.into(), point.into());
            samples.push(Sample {
                device,
                point,
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
            return Err((Code::BAD_REQUEST, "no_readings", detail));
        }
        Ok(samples)
    }

    /// Sends the samples with a commit notice and waits for the commit:
    /// the 2.04's text, or the refusal when nothing was stored.
    async fn store(
        &self,
        samples: Vec<Sample>,
        source: Arc<str>,
        profile: Option<Arc<str>>,
    ) -> Result<String, Refusal> {
        let (notice, outcome) = CommitNotice::new();
        let count = samples.len();
        let batch = SampleBatch {
            source,
            received_at: now_ns(),
            samples,
            profile,
            notice: Some(notice),
            died: Vec::new(),
        };
        if self.sink.send(batch).await.is_err() {
            return Err((
                Code::SERVICE_UNAVAILABLE,
                "stopping",
                "the gateway is stopping".into(),
            ));
        }
        match tokio::time::timeout(COMMIT_WAIT, outcome).await {
            Ok(Ok(CommitOutcome::Committed {
                stored,
                dropped,
                last_seq,
            })) => {
                self.stats.stored.fetch_add(1, Relaxed);
                self.stats.readings.fetch_add(stored as u64, Relaxed);
                Ok(if dropped == 0 {
                    format!("stored {stored} (seq <= {last_seq})")
                } else {
                    format!("stored {stored}, rejected {dropped} (seq <= {last_seq})")
                })
            }
            Ok(Ok(CommitOutcome::NothingStored { dropped })) => Err((
                Code::BAD_REQUEST,
                "nothing_stored",
                format!(
                    "none of the {dropped} readings could be stored (invalid names, types or values)"
                ),
            )),
            _ => {
                tracing::warn!(count, "CoAP request not committed in time");
                Err((
                    Code::SERVICE_UNAVAILABLE,
                    "commit_timeout",
                    "not stored in time; retry".into(),
                ))
            }
        }
    }
}

/// `/.well-known/core` (RFC 6690): each resource path, its accepted
/// content formats.
fn link_format(resources: &[(TopicPattern, ResourceConfig)]) -> String {
    resources
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

/// A payload's values by its Content-Format: 110 SenML JSON, 112 SenML
/// CBOR, 50 JSON (a flat object), 0 text (one value, no point).
pub(crate) fn decode_by_format(
    payload: &[u8],
    content_format: Option<u16>,
    now: i64,
) -> Result<(Vec<Decoded>, Vec<DecodeError>), Refusal> {
    let bad = |e: DecodeError| (Code::BAD_REQUEST, e.reason, e.detail);
    match content_format {
        Some(format::SENML_JSON) => decode::senml(payload, now).map_err(bad),
        Some(format::SENML_CBOR) => cbor::senml(payload, now).map_err(bad),
        Some(format::JSON) => decode::json(payload, &JsonLayout::default()).map_err(bad),
        Some(format::TEXT_PLAIN) => Ok((vec![decode::plain(payload).map_err(bad)?], Vec::new())),
        Some(other) => Err((
            Code::UNSUPPORTED_CONTENT_FORMAT,
            "unsupported_format",
            format!("content format {other} is not taken: use 110, 112, 50 or 0"),
        )),
        None => Err((
            Code::UNSUPPORTED_CONTENT_FORMAT,
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
