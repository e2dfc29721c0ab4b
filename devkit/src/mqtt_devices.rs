//! A simulated MQTT device fleet for the demo: a rumqttc client (not our
//! broker's code) publishing to a broker the way field devices do — plain
//! values per topic, a JSON meter with its own timestamps, a SenML pack.
//!
//! Topics (every `interval`):
//! - `plant/boiler-1/telemetry/steam_pressure` (plain number, bar) and
//!   `plant/boiler-1/telemetry/burner_on` (plain true/false);
//! - `plant/meter-1/json`: `{"ts": <ms>, "power_w": .., "energy_wh": ..}`;
//! - `senml/env-1`: a SenML pack with base name `env-1:`, `temperature`
//!   (Cel) and `humidity` (%RH).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use biota_common::time::now_ns;

/// Publishes until `shutdown`; returns at once (the work runs in tasks of
/// the current runtime).
pub fn start(broker: SocketAddr, interval: Duration, shutdown: CancellationToken) {
    let mut options =
        MqttOptions::new("biota-demo-devices", broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = eventloop.poll() => if let Err(e) = event {
                    tracing::debug!(error = %e, "simulated MQTT devices: connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                },
            }
        }
    });
    tokio::spawn(async move {
        let started = Instant::now();
        let mut energy = 0.0_f64;
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let t = started.elapsed().as_secs_f64();
            let power = 32_000.0 + 6_000.0 * (t / 15.0).sin();
            energy += power * interval.as_secs_f64() / 3600.0;
            let ms = now_ns() / 1_000_000;
            let messages = [
                (
                    "plant/boiler-1/telemetry/steam_pressure",
                    format!("{:.3}", 10.0 + 0.8 * (t / 7.0).sin()),
                ),
                (
                    "plant/boiler-1/telemetry/burner_on",
                    (t as u64 / 10).is_multiple_of(2).to_string(),
                ),
                (
                    "plant/meter-1/json",
                    format!(r#"{{"ts": {ms}, "power_w": {power:.1}, "energy_wh": {energy:.2}}}"#),
                ),
                (
                    "senml/env-1",
                    format!(
                        r#"[{{"bn": "env-1:", "n": "temperature", "u": "Cel", "v": {:.2}}}, {{"n": "humidity", "u": "%RH", "v": {:.1}}}]"#,
                        21.0 + 1.5 * (t / 30.0).sin(),
                        45.0 + 5.0 * (t / 40.0).cos()
                    ),
                ),
            ];
            for (topic, payload) in messages {
                if client
                    .publish(topic, QoS::AtMostOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
}
