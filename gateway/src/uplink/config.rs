//! `[uplink]`: readings published to a northbound MQTT broker with
//! store-and-forward (`docs/drivers/mqtt.md`, Uplink). Owned by the
//! uplink; `crate::config` composes it.

use std::time::Duration;

use biota_common::config::{ConfigError, HostPort, Parsed, Problems, Validate};
use biota_common::time::serde_duration;
use biota_common::tls::ClientTls;
use serde::Deserialize;

/// `[uplink]`: see `docs/drivers/mqtt.md` (Uplink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The broker, `host:port`.
    pub broker: Parsed<HostPort>,
    /// MQTT client id; also `{gateway}` in the topic. Default: `biota-gateway`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Login, if the broker wants one. Default: none.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Topic template: `{gateway}`, `{device}`, `{point}`. Default:
    /// `biota/{gateway}/readings`.
    #[serde(default = "default_uplink_topic")]
    pub topic: String,
    /// `json` (default) or `senml`.
    #[serde(default)]
    pub format: UplinkFormat,
    /// Most readings in one message. Default: 500.
    #[serde(default = "default_uplink_batch")]
    pub batch: usize,
    /// Messages sent but not yet acknowledged (QoS 1). Default: 8.
    #[serde(default = "default_uplink_inflight")]
    pub inflight: usize,
    /// Most readings published per second. Default: no limit.
    #[serde(default)]
    pub max_rate: Option<f64>,
    /// Most payload bytes per hour / per day (cellular links). Default: no limit.
    #[serde(default, deserialize_with = "biota_common::size::deserialize_optional")]
    pub budget_per_hour: Option<u64>,
    #[serde(default, deserialize_with = "biota_common::size::deserialize_optional")]
    pub budget_per_day: Option<u64>,
    /// First reconnect delay, doubling up to `reconnect_max`. Default: `1s`.
    #[serde(default = "default_uplink_reconnect_min", with = "serde_duration")]
    pub reconnect_min: Duration,
    /// Default: `60s`.
    #[serde(default = "default_uplink_reconnect_max", with = "serde_duration")]
    pub reconnect_max: Duration,
    /// TLS to the broker: `ca`, and `cert` + `key` for a client
    /// certificate. Default: plain MQTT.
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// The uplink's payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkFormat {
    /// `{"gateway": .., "readings": [<reading as the CLI prints it>, ..]}`.
    #[default]
    Json,
    /// A SenML pack; each record also carries `seq`.
    Senml,
}

fn default_client_id() -> String {
    "biota-gateway".into()
}
fn default_uplink_topic() -> String {
    "biota/{gateway}/readings".into()
}
fn default_uplink_batch() -> usize {
    500
}
fn default_uplink_inflight() -> usize {
    8
}
fn default_uplink_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
fn default_uplink_reconnect_max() -> Duration {
    Duration::from_secs(60)
}

impl Validate for UplinkConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut p = Problems::new(path, errors);
        p.parsed("broker", &self.broker);
        if let Some(Err(e)) = self.tls.as_ref().map(ClientTls::validate) {
            p.add("tls", e);
        }
        if self.client_id.is_empty() || self.client_id.len() > 64 {
            p.add("client_id", "must be 1..=64 characters");
        }
        let mut rest = self.topic.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                p.add("topic", "an unclosed `{`");
                break;
            };
            let name = &rest[open + 1..open + close];
            if !["gateway", "device", "point"].contains(&name) {
                p.add(
                    "topic",
                    format!("unknown placeholder `{{{name}}}` (known: gateway, device, point)"),
                );
            }
            rest = &rest[open + close + 1..];
        }
        if self.topic.is_empty() || self.topic.contains(['+', '#']) {
            p.add("topic", "a topic to publish to: not empty, no wildcards");
        }
        p.range("batch", self.batch, 1, 10_000);
        p.range("inflight", self.inflight, 1, 1000);
        if let Some(rate) = self.max_rate
            && (!rate.is_finite() || rate <= 0.0)
        {
            p.add("max_rate", format!("must be positive, got {rate}"));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            p.add(
                "reconnect_min",
                "must be positive and at most reconnect_max",
            );
        }
    }
}
