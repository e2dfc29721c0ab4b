//! Upstream subscriptions: the gateway as a client of external brokers,
//! their messages mapped by the same rules as the embedded broker's.
//!
//! Each subscription is one rumqttc connection with a clean session: on
//! every (re)connect it subscribes again, and reconnects back off from
//! `reconnect_min` to `reconnect_max`. Messages published while the
//! connection is down are the broker's to keep (QoS 1 with a persistent
//! session is the broker's business, not ours).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use super::config::{RuleConfig, UpstreamConfig};
use super::{Mapper, MqttStats, tls};
use biota_common::time::now_ns;
use crate::SampleSink;

/// Subscribes to `config`'s broker and maps its messages until `shutdown`.
pub async fn run(
    index: usize,
    config: UpstreamConfig,
    rules: Vec<RuleConfig>,
    stats: Arc<MqttStats>,
    sink: SampleSink,
    shutdown: CancellationToken,
) {
    // Validation refuses a configuration whose broker does not parse.
    let Some(broker) = config.broker.value() else {
        tracing::error!(broker = %config.broker, "upstream MQTT disabled: not host:port");
        return;
    };
    let (host, port) = (broker.host.clone(), broker.port);
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("biota-gateway-upstream-{index}"));
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(user) = &config.username {
        options.set_credentials(user, config.password.as_deref().unwrap_or(""));
    }
    if let Some(tls) = &config.tls {
        match tls::transport(tls) {
            Ok(transport) => {
                options.set_transport(transport);
            }
            Err(e) => {
                // A certificate that cannot be read will not get better by retrying.
                tracing::error!(broker = %config.broker, "upstream MQTT disabled: {e}");
                return;
            }
        }
    }
    let qos = if config.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut mapper = Mapper::new(&rules, stats, format!("mqtt://{}/", config.broker));
    let mut delay = config.reconnect_min;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                delay = config.reconnect_min;
                tracing::info!(broker = %config.broker, "upstream MQTT connected; subscribing");
                for topic in &config.topics {
                    if let Err(e) = client.try_subscribe(topic.as_str(), qos) {
                        tracing::warn!(broker = %config.broker, topic, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(batch) = mapper.map(&publish.topic, &publish.payload, now_ns()) {
                    let sent = sink.send_unless(batch, &shutdown).await;
                    if !sent {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(broker = %config.broker, error = %e, retry_in = ?delay, "upstream MQTT connection failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(config.reconnect_max);
            }
        }
    }
}
