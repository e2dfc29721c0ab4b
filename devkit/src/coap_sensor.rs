//! A simulated CoAP sensor for the demo: every `interval` it POSTs a
//! confirmable SenML JSON pack (temperature, battery voltage) to
//! `/v1/devices/<device>` and waits for the 2.04 that says it is stored,
//! retransmitting as RFC 7252 asks when no answer comes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// A confirmable POST of a SenML JSON pack to `/v1/devices/<device>`,
/// with message id `mid` (also its token), encoded.
pub fn post_senml(mid: u16, device: &str, pack: Vec<u8>) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    for segment in ["v1", "devices", device] {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    p.set_content_format(ContentFormat::ApplicationSenmlJSON);
    p.payload = pack;
    p.to_bytes_unlimited().unwrap_or_default()
}

/// Posts until `shutdown`; returns at once (the work runs in a task).
pub fn start(server: SocketAddr, device: &str, interval: Duration, shutdown: CancellationToken) {
    let device = device.to_owned();
    tokio::spawn(async move {
        let Ok(socket) = UdpSocket::bind(("127.0.0.1", 0)).await else {
            return;
        };
        let started = Instant::now();
        let mut mid: u16 = 1;
        let mut tick = tokio::time::interval(interval);
        let mut buf = [0u8; 1500];
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let t = started.elapsed().as_secs_f64();
            let pack = format!(
                r#"[{{"n": "temperature", "u": "Cel", "v": {:.2}}}, {{"n": "battery", "u": "V", "v": {:.3}}}]"#,
                18.0 + 2.0 * (t / 25.0).sin(),
                3.3 - t / 36_000.0
            );
            mid = mid.wrapping_add(1);
            let bytes = post_senml(mid, &device, pack.into_bytes());
            // Confirmable: retransmit until the ACK (2 s, doubling, 4 times).
            let mut wait = Duration::from_secs(2);
            for _ in 0..5 {
                if socket.send_to(&bytes, server).await.is_err() {
                    break;
                }
                match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
                    Ok(Ok(_)) => break,
                    _ => wait *= 2,
                }
            }
        }
    });
}
