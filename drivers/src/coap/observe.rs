//! The Observe client (RFC 7641): the gateway registers as an observer of
//! a device's resource and turns its notifications into samples.
//!
//! - **Registering.** A confirmable GET with Observe 0 and a fresh token,
//!   retransmitted with the RFC 7252 back-off (2 s, doubling, 4
//!   retransmissions, same message id and token) until an ACK or a
//!   response comes. An Empty ACK (the device answers separately, §5.2.2)
//!   stops the retransmissions; the response is then awaited until
//!   MAX_TRANSMIT_WAIT (93 s) after the first transmission.
//! - **Ending.** A registration that got no answer, that the device
//!   rejected with a Reset, or an error response or notification (4.04
//!   when the resource is gone, 4.06 when its format changed, ...) ends
//!   the observation: its token is forgotten and the gateway registers
//!   again after `retry`.
//! - **Notifications.** Decoded by their Content-Format like posted
//!   payloads; confirmable ones get an Empty ACK (again when the device
//!   retransmits one, which is stored once). Observe sequence numbers
//!   order them (RFC 7641 §3.4): an older notification is dropped.
//! - **Freshness.** A notification is fresh for its Max-Age (default 60
//!   s). When none came for Max-Age plus a grace period — the device
//!   restarted and forgot us, or the network dropped them — the gateway
//!   registers again with a new token.
//! - **Everything else.** A message for a token not (or no longer) in use
//!   gets an Empty Reset, so that the device forgets that observer (RFC
//!   7641 §3.6). A Reset or ACK that is not what it must be (a Reset that
//!   is not Empty, one for another message) is silently ignored (RFC 7252
//!   §4.2); a malformed confirmable message is rejected with a Reset.
//!   Every Reset and ACK this client sends is an Empty message.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Code, Encoder, Kind, Message, ParseError, format, option};
use super::{CoapStats, decode_by_format};
use crate::{Sample, SampleBatch, SampleQuality, SampleSink};
use biota_common::time::now_ns;

/// `[[drivers.coap.observe]]`: a device resource to observe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveConfig {
    /// The device's address, `host:port` (IPv6 in brackets).
    pub address: SocketAddr,
    /// The resource path, e.g. `/sensors/temperature`.
    pub path: String,
    /// The device these readings belong to.
    pub device: String,
    /// The point of a single-value (text, JSON number) notification;
    /// SenML and JSON objects name their own points.
    #[serde(default)]
    pub point: Option<String>,
    /// The profile for this device's readings. Default: none.
    #[serde(default)]
    pub profile: Option<String>,
    /// Added to Max-Age before a silent resource is registered again.
    /// Default: `5s`.
    #[serde(default = "default_grace", with = "biota_common::time::serde_duration")]
    pub grace: Duration,
    /// Wait before registering again after a registration got no answer.
    /// Default: `10s`.
    #[serde(default = "default_retry", with = "biota_common::time::serde_duration")]
    pub retry: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_retry() -> Duration {
    Duration::from_secs(10)
}

/// RFC 7252 §4.8 defaults.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;
/// §4.8.2: from the first transmission of a CON to giving up on it.
const MAX_TRANSMIT_WAIT: Duration = Duration::from_secs(93);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Confirmable messages from the device remembered, so that a
/// retransmitted one is acknowledged again and not processed twice.
const RECENT_CON: usize = 32;

fn registration(path: &str, mid: u16, token: &[u8]) -> Vec<u8> {
    // Observe 0 (register) is the empty value.
    let request = Encoder::new(Kind::Con, Code::GET, mid, token).option(option::OBSERVE, &[]);
    path.split('/')
        .filter(|s| !s.is_empty())
        .fold(request, |r, segment| {
            r.option(option::URI_PATH, segment.as_bytes())
        })
        .payload(&[])
}

/// RFC 7641 §3.4: whether notification `v2` (at `t2`) is newer than `v1` (at `t1`).
fn newer(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    (v1 < v2 && v2 - v1 < 1 << 23)
        || (v1 > v2 && v1 - v2 > 1 << 23)
        || t2.duration_since(t1) > Duration::from_secs(128)
}

/// Where an observation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The registration is out, retransmitted at the deadline.
    Registering { tries: u32, timeout: Duration },
    /// The device acknowledged it with an Empty ACK; its response comes
    /// separately, by the deadline.
    Acknowledged,
    /// Notifications come; fresh until the deadline.
    Observing,
    /// Over, with no token: register again at the deadline.
    Waiting,
}

/// One observed resource: its socket and where the observation stands.
struct Observer {
    config: ObserveConfig,
    socket: UdpSocket,
    sink: SampleSink,
    stats: Arc<CoapStats>,
    source: Arc<str>,
    profile: Option<Arc<str>>,
    phase: Phase,
    deadline: Instant,
    /// The registration's message id, token (none while `Waiting`) and
    /// bytes, and when it was first sent.
    mid: u16,
    token: Option<[u8; 4]>,
    request: Vec<u8>,
    sent_at: Instant,
    /// The last notification's Observe number and when it came.
    last: Option<(u32, Instant)>,
    /// Message ids of confirmable messages acknowledged lately.
    recent: VecDeque<u16>,
}

/// Observes one resource until `shutdown`.
pub async fn run(
    config: ObserveConfig,
    sink: SampleSink,
    stats: Arc<CoapStats>,
    shutdown: CancellationToken,
) {
    let bind: SocketAddr = if config.address.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, device = %config.device, "CoAP observe: no socket");
            return;
        }
    };
    let now = Instant::now();
    let mut observer = Observer {
        source: format!("coap://{}{}", config.address, config.path).into(),
        profile: config.profile.as_deref().map(Arc::from),
        config,
        socket,
        sink,
        stats,
        phase: Phase::Waiting,
        deadline: now,
        mid: now_ns() as u16,
        token: None,
        request: Vec::new(),
        sent_at: now,
        last: None,
        recent: VecDeque::with_capacity(RECENT_CON),
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tokio::time::timeout_at(observer.deadline.into(), observer.socket.recv_from(&mut buf)) => r,
        };
        match received {
            Err(_) => observer.deadline_passed().await,
            Ok(Err(e)) => tracing::debug!(error = %e, "CoAP observe: receive failed"),
            Ok(Ok((n, peer))) if peer == observer.config.address => {
                if !observer.datagram(&buf[..n], &shutdown).await {
                    return;
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}

impl Observer {
    async fn send(&self, bytes: &[u8]) {
        if let Err(e) = self.socket.send_to(bytes, self.config.address).await {
            tracing::debug!(device = %self.config.device, error = %e, "CoAP observe: send failed");
        }
    }

    /// A new registration: a new message id and token.
    async fn register(&mut self) {
        self.mid = self.mid.wrapping_add(1);
        let token = (now_ns() as u64).to_be_bytes();
        let token = [token[4], token[5], token[6], token[7]];
        self.token = Some(token);
        self.request = registration(&self.config.path, self.mid, &token);
        self.last = None;
        self.sent_at = Instant::now();
        self.phase = Phase::Registering {
            tries: 0,
            timeout: ACK_TIMEOUT,
        };
        self.deadline = self.sent_at + ACK_TIMEOUT;
        self.send(&self.request).await;
    }

    /// Ends the observation: its token is forgotten, and the gateway
    /// registers again after `retry`.
    fn wait_retry(&mut self) {
        self.token = None;
        self.phase = Phase::Waiting;
        self.deadline = Instant::now() + self.config.retry;
    }

    async fn deadline_passed(&mut self) {
        let device = &self.config.device;
        match self.phase {
            Phase::Registering { tries, timeout } if tries < MAX_RETRANSMIT => {
                self.phase = Phase::Registering {
                    tries: tries + 1,
                    timeout: timeout * 2,
                };
                self.deadline = Instant::now() + timeout * 2;
                self.send(&self.request).await;
            }
            Phase::Registering { .. } | Phase::Acknowledged => {
                tracing::warn!(%device, address = %self.config.address, retry_in = ?self.config.retry, "CoAP observe: the device does not answer");
                self.wait_retry();
            }
            Phase::Observing => {
                tracing::info!(%device, path = %self.config.path, "CoAP observe: notifications stopped; registering again");
                self.register().await;
            }
            Phase::Waiting => self.register().await,
        }
    }

    /// One datagram from the device; false when the gateway is stopping.
    async fn datagram(&mut self, bytes: &[u8], shutdown: &CancellationToken) -> bool {
        let peer = self.config.address;
        let message = match wire::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                let reason = match e {
                    ParseError::Version { .. } => "bad_version",
                    _ => "malformed",
                };
                self.stats.reject(reason, peer, &e.to_string());
                if let ParseError::Format {
                    kind: Kind::Con,
                    mid,
                    ..
                } = e
                {
                    self.send(&wire::empty(Kind::Rst, mid)).await;
                }
                return true;
            }
        };
        let ours = message.mid == self.mid;
        match (message.kind, message.code) {
            (Kind::Rst, Code::EMPTY) if ours && self.registering() => {
                tracing::warn!(device = %self.config.device, path = %self.config.path, retry_in = ?self.config.retry, "CoAP observe: the device rejected the registration with a Reset");
                self.wait_retry();
            }
            (Kind::Ack, Code::EMPTY) if ours && matches!(self.phase, Phase::Registering { .. }) => {
                // §5.2.2: the response comes separately; no more retransmissions.
                self.phase = Phase::Acknowledged;
                self.deadline = self.sent_at + MAX_TRANSMIT_WAIT;
            }
            (Kind::Ack, code)
                if ours
                    && code.is_response()
                    && self.registering()
                    && Some(message.token) == self.token.as_ref().map(|t| &t[..]) =>
            {
                match self.unsupported_option(&message) {
                    None => return self.response(&message, shutdown).await,
                    // §5.4.1: rejected; an ACK cannot be Reset, so ignored.
                    Some(detail) => self.stats.reject("bad_option", peer, &detail),
                }
            }
            // §4.2: any other ACK or Reset is silently ignored.
            (Kind::Ack | Kind::Rst, _) => {}
            // A CoAP ping: the Reset is the answer.
            (Kind::Con, Code::EMPTY) => self.send(&wire::empty(Kind::Rst, message.mid)).await,
            (Kind::Con | Kind::Non, code) if code.is_response() => {
                return self.separate(&message, shutdown).await;
            }
            (kind, code) => {
                self.stats.reject(
                    "unexpected_message",
                    peer,
                    &format!("a {kind} with code {code} on an Observe socket"),
                );
                if kind == Kind::Con {
                    self.send(&wire::empty(Kind::Rst, message.mid)).await;
                }
            }
        }
        true
    }

    fn registering(&self) -> bool {
        matches!(
            self.phase,
            Phase::Registering { .. } | Phase::Acknowledged
        )
    }

    /// A CON or NON response: a separate response to the registration or
    /// a notification.
    async fn separate(&mut self, message: &Message<'_>, shutdown: &CancellationToken) -> bool {
        let peer = self.config.address;
        let con = message.kind == Kind::Con;
        if con && self.recent.contains(&message.mid) {
            // A retransmission: our ACK was lost.
            self.send(&wire::empty(Kind::Ack, message.mid)).await;
            return true;
        }
        let current = self.token.is_some_and(|t| t[..] == *message.token)
            && self.phase != Phase::Waiting;
        if !current {
            // RFC 7641 §3.6: not (or no longer) ours; the device forgets us.
            self.send(&wire::empty(Kind::Rst, message.mid)).await;
            return true;
        }
        if let Some(detail) = self.unsupported_option(message) {
            self.stats.reject("bad_option", peer, &detail);
            // §5.4.1: rejected; a NON silently.
            if con {
                self.send(&wire::empty(Kind::Rst, message.mid)).await;
            }
            return true;
        }
        if con {
            if self.recent.len() == RECENT_CON {
                self.recent.pop_front();
            }
            self.recent.push_back(message.mid);
            self.send(&wire::empty(Kind::Ack, message.mid)).await;
        }
        self.response(message, shutdown).await
    }

    /// RFC 7252 §5.4.1: an unrecognized critical option in a response (or
    /// one out of its definition) rejects it.
    fn unsupported_option(&self, message: &Message<'_>) -> Option<String> {
        message
            .checked_options()
            .find_map(|(number, _, recognized)| match recognized {
                Err(why) if option::is_critical(number) => {
                    Some(format!("option {number} in a response: {why}"))
                }
                _ => None,
            })
    }

    /// The response to the registration, or a notification, with our
    /// token; false when the gateway is stopping.
    async fn response(&mut self, message: &Message<'_>, shutdown: &CancellationToken) -> bool {
        let config = &self.config;
        let peer = config.address;
        if message.code != Code::CONTENT {
            tracing::warn!(device = %config.device, path = %config.path, code = %message.code, retry_in = ?config.retry, "CoAP observe: the device refused or ended the observation");
            self.wait_retry();
            return true;
        }
        let observe = message.uint_option(option::OBSERVE);
        let now = Instant::now();
        if observe.is_none() && self.registering() {
            // A plain answer: the resource is not observable. Keep its value.
            tracing::warn!(device = %config.device, path = %config.path, "CoAP observe: the resource is not observable; polling it every retry interval");
        }
        if let (Some((v1, t1)), Some(v2)) = (self.last, observe)
            && !newer(v1, t1, v2, now)
        {
            return true; // reordered: an older state
        }
        if let Some(v) = observe {
            self.last = Some((v, now));
        }
        let max_age = message
            .uint_option(option::MAX_AGE)
            .map_or(DEFAULT_MAX_AGE, |s| Duration::from_secs(u64::from(s)));
        let format = message
            .uint_option(option::CONTENT_FORMAT)
            .and_then(|f| u16::try_from(f).ok())
            .or(Some(format::TEXT_PLAIN));
        let received_at = now_ns();
        let samples = match decode_by_format(message.payload, format, received_at) {
            Ok((values, errors)) => {
                for e in &errors {
                    self.stats.reject(e.reason, peer, &e.detail);
                }
                values
                    .into_iter()
                    .filter_map(|d| {
                        // The configuration names the device: a SenML
                        // point is the record's resolved name.
                        let point: Arc<str> = d
                            .names(Some(&config.device))
                            .1
                            .or(config.point.as_deref())?
                            .into();
                        Some(Sample {
                            device: config.device.as_str().into(),
                            point,
                            value: d.value,
                            device_time: d.time,
                            quality: SampleQuality::Good,
                            unit: d.unit.map(Arc::from),
                        })
                    })
                    .collect()
            }
            Err((_, reason, detail)) => {
                self.stats.reject(reason, peer, &detail);
                Vec::new()
            }
        };
        if observe.is_some() {
            self.phase = Phase::Observing;
            self.deadline = now + max_age + config.grace;
        } else {
            // Not observable: ask again after `retry`.
            self.wait_retry();
        }
        if samples.is_empty() {
            return true;
        }
        self.stats.notifications.fetch_add(1, Relaxed);
        let batch = SampleBatch {
            source: self.source.clone(),
            received_at,
            samples,
            profile: self.profile.clone(),
            notice: None,
            died: Vec::new(),
        };
        self.sink.send_unless(batch, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_numbers_order_notifications() {
        let t = Instant::now();
        assert!(newer(5, t, 6, t));
        assert!(!newer(6, t, 5, t));
        assert!(newer((1 << 24) - 1, t, 2, t), "wraps around");
        assert!(
            newer(6, t, 5, t + Duration::from_secs(129)),
            "stale after 128 s"
        );
    }

    #[test]
    fn the_registration_is_a_con_get_with_observe_0() {
        let bytes = registration("/sensors/temp", 0x1234, b"\x01\x02\x03\x04");
        let m = wire::parse(&bytes).expect("parses");
        assert_eq!((m.kind, m.code, m.mid, m.token), (Kind::Con, Code::GET, 0x1234, &b"\x01\x02\x03\x04"[..]));
        let options: Vec<_> = m.options().collect();
        assert_eq!(
            options,
            [
                (option::OBSERVE, &b""[..]),
                (option::URI_PATH, &b"sensors"[..]),
                (option::URI_PATH, &b"temp"[..])
            ]
        );
        assert!(m.payload.is_empty());
    }
}
