//! The Observe client (RFC 7641): the gateway registers as an observer of
//! a device's resource and turns its notifications into samples.
//!
//! - Registration: a confirmable GET with Observe 0, retransmitted with the
//!   RFC 7252 back-off (2 s, doubling, 4 retransmissions); after that the
//!   registration is tried again later (`retry`).
//! - Notifications: decoded by their Content-Format like posted payloads;
//!   confirmable ones are acknowledged. Observe sequence numbers order them
//!   (RFC 7641 §3.4): an older notification is dropped.
//! - Freshness: a notification is fresh for its Max-Age (default 60 s).
//!   When none came for Max-Age plus a grace period — the device restarted
//!   and forgot us, or the network dropped them — the gateway registers
//!   again with a new token. A Reset from the device also triggers it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use coap_lite::{
    CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType,
};
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::{CoapStats, decode_by_format};
use biota_common::time::now_ns;
use crate::{Sample, SampleBatch, SampleQuality, SampleSink};

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

/// RFC 7252 defaults.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

fn registration(path: &str, mid: u16, token: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Get);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    p.add_option(CoapOption::Observe, Vec::new()); // 0: register
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    p.to_bytes_unlimited().unwrap_or_default()
}

fn empty(kind: MessageType, mid: u16) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.message_id = mid;
    p.to_bytes_unlimited().unwrap_or_default()
}

fn uint(raw: Option<&Vec<u8>>) -> Option<u32> {
    let raw = raw?;
    (raw.len() <= 4).then(|| raw.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
}

/// RFC 7641 §3.4: whether notification `v2` (at `t2`) is newer than `v1` (at `t1`).
fn newer(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    (v1 < v2 && v2 - v1 < 1 << 23)
        || (v1 > v2 && v1 - v2 > 1 << 23)
        || t2.duration_since(t1) > Duration::from_secs(128)
}

/// Observes one resource until `shutdown`.
pub async fn run(
    config: ObserveConfig,
    sink: SampleSink,
    stats: Arc<CoapStats>,
    shutdown: CancellationToken,
) {
    let bind: SocketAddr = if config.address.is_ipv6() {
        "[::]:0".parse().unwrap_or(config.address)
    } else {
        "0.0.0.0:0".parse().unwrap_or(config.address)
    };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, device = %config.device, "CoAP observe: no socket");
            return;
        }
    };
    let source: Arc<str> = format!("coap://{}{}", config.address, config.path).into();
    let profile = config.profile.as_deref().map(Arc::from);
    let mut mid = now_ns() as u16;
    let mut buf = vec![0u8; 65_536];
    'register: loop {
        mid = mid.wrapping_add(1);
        let token = (now_ns() as u64).to_be_bytes()[4..].to_vec();
        let request = registration(&config.path, mid, &token);
        let mut timeout = ACK_TIMEOUT;
        let mut tries = 0;
        let mut registered = false;
        let mut last: Option<(u32, Instant)> = None;
        let mut fresh_until = Instant::now() + timeout;
        if socket.send_to(&request, config.address).await.is_err() {
            tracing::debug!(device = %config.device, "CoAP observe: send failed");
        }
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout_at(fresh_until.into(), socket.recv_from(&mut buf)) => r,
            };
            let (n, peer) = match received {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => continue,
                Err(_) if !registered && tries < MAX_RETRANSMIT => {
                    // No answer yet: retransmit the registration.
                    tries += 1;
                    timeout *= 2;
                    fresh_until = Instant::now() + timeout;
                    let _ = socket.send_to(&request, config.address).await;
                    continue;
                }
                Err(_) => {
                    let wait = if registered {
                        tracing::info!(device = %config.device, path = %config.path, "CoAP observe: notifications stopped; registering again");
                        Duration::ZERO
                    } else {
                        tracing::warn!(device = %config.device, address = %config.address, retry_in = ?config.retry, "CoAP observe: the device does not answer");
                        config.retry
                    };
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => continue 'register,
                    }
                }
            };
            if peer != config.address {
                continue;
            }
            let Ok(packet) = Packet::from_bytes(&buf[..n]) else {
                stats.reject("malformed", peer, "a notification that is not CoAP");
                continue;
            };
            let kind = packet.header.get_type();
            if kind == MessageType::Reset && packet.header.message_id == mid {
                continue 'register;
            }
            if packet.get_token() != token.as_slice() {
                // Not ours (an old registration): tell the device to stop.
                if kind == MessageType::Confirmable || kind == MessageType::NonConfirmable {
                    let _ = socket
                        .send_to(&empty(MessageType::Reset, packet.header.message_id), peer)
                        .await;
                }
                continue;
            }
            if kind == MessageType::Confirmable {
                let _ = socket
                    .send_to(
                        &empty(MessageType::Acknowledgement, packet.header.message_id),
                        peer,
                    )
                    .await;
            }
            let MessageClass::Response(code) = packet.header.code else {
                continue;
            };
            if code != ResponseType::Content {
                tracing::warn!(device = %config.device, path = %config.path, ?code, "CoAP observe: the device refused");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(config.retry) => continue 'register,
                }
            }
            let observe = uint(packet.get_first_option(CoapOption::Observe));
            if observe.is_none() && !registered {
                // A plain answer: the resource is not observable. Keep its value.
                tracing::warn!(device = %config.device, path = %config.path, "CoAP observe: the resource is not observable; polling it every retry interval");
            }
            registered = true;
            let now = Instant::now();
            if let (Some((v1, t1)), Some(v2)) = (last, observe)
                && !newer(v1, t1, v2, now)
            {
                continue; // reordered: an older state
            }
            if let Some(v) = observe {
                last = Some((v, now));
            }
            let max_age = uint(packet.get_first_option(CoapOption::MaxAge))
                .map_or(DEFAULT_MAX_AGE, |s| Duration::from_secs(u64::from(s)));
            fresh_until = now
                + if observe.is_some() {
                    max_age + config.grace
                } else {
                    config.retry
                };
            let format = packet
                .get_content_format()
                .or(Some(ContentFormat::TextPlain));
            let received_at = now_ns();
            match decode_by_format(&packet.payload, format, received_at) {
                Ok((values, errors)) => {
                    for e in &errors {
                        stats.reject(e.reason, peer, &e.detail);
                    }
                    let samples: Vec<Sample> = values
                        .into_iter()
                        .filter_map(|d| {
                            Some(Sample {
                                device: config.device.as_str().into(),
                                point: d.point.or_else(|| config.point.clone())?.into(),
                                value: d.value,
                                device_time: d.time,
                                quality: SampleQuality::Good,
                                unit: d.unit.map(Arc::from),
                            })
                        })
                        .collect();
                    if samples.is_empty() {
                        continue;
                    }
                    stats.notifications.fetch_add(1, Relaxed);
                    let batch = SampleBatch {
                        source: source.clone(),
                        received_at,
                        samples,
                        profile: profile.clone(),
                        notice: None,
                    };
                    let sent = sink.send_unless(batch, &shutdown).await;
                    if !sent {
                        return;
                    }
                }
                Err((_, reason, detail)) => stats.reject(reason, peer, &detail),
            }
            if observe.is_none() {
                // Not observable: ask again after `retry`.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(config.retry) => continue 'register,
                }
            }
        }
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
}
