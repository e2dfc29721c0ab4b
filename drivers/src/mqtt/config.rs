//! Configuration of the MQTT driver: the embedded broker devices publish
//! to, and the rules that map topics and payloads to devices and points.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::payload::decode::{JsonLayout, TimeUnit};
use crate::payload::topic::TopicPattern;
use biota_common::config::{ConfigError, HostPort, Parsed, Validate};

use crate::DeviceBinding;

/// `[drivers.mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `[drivers.mqtt.broker]`: the embedded broker. Default: listening
    /// on 127.0.0.1:1883.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// `[[drivers.mqtt.rules]]`: topic → device/point mappings.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// `[[drivers.mqtt.upstream]]`: subscriptions to external brokers,
    /// mapped by the same rules. Default: none.
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
}

/// A subscription to an external broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port`.
    pub broker: Parsed<HostPort>,
    /// MQTT client id. Default: `biota-gateway-upstream-<n>` (n: its index).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Topic filters to subscribe to. Default: `#`.
    #[serde(default = "default_upstream_topics")]
    pub topics: Vec<String>,
    /// 0 or 1. Default: 1.
    #[serde(default = "default_upstream_qos")]
    pub qos: u8,
    /// TLS to the broker (`ca`, optionally `cert` and `key`). Default: plain.
    #[serde(default)]
    pub tls: Option<biota_common::tls::ClientTls>,
    /// First reconnect delay, doubling up to `reconnect_max`. Default: `1s`.
    #[serde(
        default = "default_reconnect_min",
        with = "biota_common::time::serde_duration"
    )]
    pub reconnect_min: std::time::Duration,
    /// Default: `60s`.
    #[serde(
        default = "default_reconnect_max",
        with = "biota_common::time::serde_duration"
    )]
    pub reconnect_max: std::time::Duration,
}

fn default_upstream_topics() -> Vec<String> {
    vec!["#".into()]
}
fn default_upstream_qos() -> u8 {
    1
}
fn default_reconnect_min() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}
fn default_reconnect_max() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

/// The embedded broker (rumqttd).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run the embedded broker. Default: true (false: upstream
    /// subscriptions only).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Plain MQTT listener. Default: `127.0.0.1:1883` (this host only).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted message payload, in bytes. Default: 65536.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Most clients connected at once. Default: 1000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `[drivers.mqtt.broker.tls]`: a TLS listener too. Default: none.
    #[serde(default)]
    pub tls: Option<super::tls::ServerTls>,
    /// Username → password. When set, every client must log in. Default:
    /// none (anyone who can reach the listener may publish).
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            max_payload: default_max_payload(),
            max_connections: default_max_connections(),
            tls: None,
            users: BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_max_connections() -> usize {
    1000
}

/// How a rule's payloads are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One value: a number, true/false, or text.
    Plain,
    /// A JSON object.
    Json,
    /// A SenML JSON pack (RFC 8428).
    Senml,
    /// Sparkplug B (`spBv1.0/...` topics, protobuf payloads): the topic
    /// names the devices.
    Sparkplug,
}

/// `[[drivers.mqtt.rules]]`: messages on matching topics become samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Topic pattern: MQTT levels, `+`, a final `#`, and captures
    /// `{device}` and `{point}` (one level each).
    pub topic: String,
    /// `plain`, `json`, `senml` or `sparkplug`.
    pub format: Format,
    /// The device, when the topic does not capture `{device}` (and, for
    /// SenML, the pack's base name does not name it).
    #[serde(default)]
    pub device: Option<String>,
    /// The point of a `plain` payload, when the topic does not capture
    /// `{point}`.
    #[serde(default)]
    pub point: Option<String>,
    /// The profile for this rule's devices (a profile bound to the device
    /// elsewhere wins).
    #[serde(default)]
    pub profile: Option<String>,
    /// `json`: point → JSON pointer (`/sensors/0/temp`). Default: every
    /// member of a flat object is a point.
    #[serde(default)]
    pub points: BTreeMap<String, String>,
    /// `json`: JSON pointer of the timestamp (`/ts`). Default: none (the
    /// ingest time).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// `json`: unit of a numeric timestamp: `s`, `ms` (default), `us`, `ns`.
    #[serde(default)]
    pub timestamp_unit: TimeUnit,
}

impl RuleConfig {
    pub(crate) fn json_layout(&self) -> JsonLayout {
        JsonLayout {
            points: self.points.clone(),
            timestamp: self.timestamp.clone(),
            time_unit: self.timestamp_unit,
        }
    }
}

impl Validate for MqttConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err =
            |key_path: String, reason: String| errors.push(ConfigError { key_path, reason });
        let broker = &self.broker;
        if broker.max_payload == 0 || broker.max_payload > 256 * 1024 * 1024 {
            err(
                format!("{path}.broker.max_payload"),
                format!("must be 1..=268435456 bytes, got {}", broker.max_payload),
            );
        }
        if let Some(tls) = &broker.tls
            && tls.listen == broker.listen
        {
            err(
                format!("{path}.broker.tls.listen"),
                "the TLS listener needs its own address (the plain one is listen)".into(),
            );
        }
        if broker.max_connections == 0 || broker.max_connections > 100_000 {
            err(
                format!("{path}.broker.max_connections"),
                format!("must be 1..=100000, got {}", broker.max_connections),
            );
        }
        for (i, up) in self.upstream.iter().enumerate() {
            let key = format!("{path}.upstream[{i}]");
            if up.broker.value().is_none() {
                err(
                    format!("{key}.broker"),
                    format!("`{}` is not host:port", up.broker),
                );
            }
            if let Some(Err(e)) = up.tls.as_ref().map(biota_common::tls::ClientTls::validate) {
                err(format!("{key}.tls"), e);
            }
            if up.qos > 1 {
                err(
                    format!("{key}.qos"),
                    format!("must be 0 or 1, got {}", up.qos),
                );
            }
            if up.topics.is_empty() {
                err(
                    format!("{key}.topics"),
                    "subscribe to at least one filter".into(),
                );
            }
            for (t, topic) in up.topics.iter().enumerate() {
                if let Err(e) = TopicPattern::parse(topic) {
                    err(format!("{key}.topics[{t}]"), e.0);
                }
            }
            if up.reconnect_min.is_zero() || up.reconnect_min > up.reconnect_max {
                err(
                    format!("{key}.reconnect_min"),
                    "must be positive and at most reconnect_max".into(),
                );
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let key = format!("{path}.rules[{i}]");
            let pattern = match TopicPattern::parse(&rule.topic) {
                Ok(p) => p,
                Err(e) => {
                    err(format!("{key}.topic"), e.0);
                    continue;
                }
            };
            if rule.format == Format::Sparkplug {
                // The Sparkplug namespace names group, edge node and
                // device; a rule cannot name them otherwise.
                for (name, set) in [
                    ("device", rule.device.is_some()),
                    ("point", rule.point.is_some()),
                ] {
                    if set || pattern.captures(name) {
                        err(
                            format!("{key}.{name}"),
                            format!(
                                "a sparkplug rule takes devices and points from the Sparkplug topic and payload: no {name} or {{{name}}}"
                            ),
                        );
                    }
                }
            }
            let has_device = pattern.captures("device") || rule.device.is_some();
            if pattern.captures("device")
                && rule.device.is_some()
                && rule.format != Format::Sparkplug
            {
                err(
                    format!("{key}.device"),
                    "the topic captures {device}; a fixed device would contradict it".into(),
                );
            }
            if !has_device && !matches!(rule.format, Format::Senml | Format::Sparkplug) {
                err(
                    format!("{key}.device"),
                    format!(
                        "`{}` names no device: capture {{device}} in the topic or set device",
                        rule.topic
                    ),
                );
            }
            let has_point = pattern.captures("point") || rule.point.is_some();
            match rule.format {
                Format::Plain if !has_point => err(
                    format!("{key}.point"),
                    "a plain payload holds one value: capture {point} in the topic or set point"
                        .into(),
                ),
                Format::Json | Format::Senml if rule.point.is_some() => err(
                    format!("{key}.point"),
                    "point applies to plain payloads; json and senml name their points".into(),
                ),
                _ => {}
            }
            if rule.format != Format::Json && (!rule.points.is_empty() || rule.timestamp.is_some())
            {
                err(
                    format!("{key}.format"),
                    "points and timestamp apply to json payloads".into(),
                );
            }
            for (point, pointer) in &rule.points {
                if !pointer.starts_with('/') {
                    err(
                        format!("{key}.points.{point}"),
                        format!("`{pointer}` is not a JSON pointer (it starts with /)"),
                    );
                }
            }
            if let Some(ts) = &rule.timestamp
                && !ts.starts_with('/')
            {
                err(
                    format!("{key}.timestamp"),
                    format!("`{ts}` is not a JSON pointer (it starts with /)"),
                );
            }
        }
    }
}

impl MqttConfig {

    pub(crate) fn bindings(&self, path: &str) -> (Vec<DeviceBinding>, Vec<(String, String)>) {
        let entries = self
            .rules
            .iter()
            .map(|r| (r.device.as_ref(), r.profile.as_ref()));
        crate::entry_bindings(path, "rules", entries)
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_that_cannot_name_a_device_or_point_are_rejected() {
        let config: MqttConfig = toml::from_str(
            r#"
[[rules]]
topic = "plant/{device}/telemetry/{point}"
format = "plain"

[[rules]]
topic = "plant/+/json"
format = "json"

[[rules]]
topic = "plant/{device}/value"
format = "plain"

[[rules]]
topic = "a/#/b"
format = "plain"

[[rules]]
topic = "lab/{device}/json"
format = "json"
timestamp = "ts"
points = { t = "temp" }

[[rules]]
topic = "senml/#"
format = "senml"
"#,
        )
        .expect("parses");
        let mut errors = Vec::new();
        config.validate("drivers.mqtt", &mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key_path.as_str()).collect();
        assert_eq!(
            keys,
            [
                "drivers.mqtt.rules[1].device",
                "drivers.mqtt.rules[2].point",
                "drivers.mqtt.rules[3].topic",
                "drivers.mqtt.rules[4].points.t",
                "drivers.mqtt.rules[4].timestamp",
            ]
        );
    }

    #[test]
    fn sparkplug_rules_take_devices_from_the_namespace() {
        let config: MqttConfig = toml::from_str(
            r#"
[[rules]]
topic = "spBv1.0/#"
format = "sparkplug"
profile = "meter"

[[rules]]
topic = "spBv1.0/fixed/#"
format = "sparkplug"
device = "press-1"

[[rules]]
topic = "spBv1.0/{device}/#"
format = "sparkplug"
point = "p"
"#,
        )
        .expect("parses");
        let mut errors = Vec::new();
        config.validate("drivers.mqtt", &mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key_path.as_str()).collect();
        assert_eq!(
            keys,
            [
                "drivers.mqtt.rules[1].device",
                "drivers.mqtt.rules[2].device",
                "drivers.mqtt.rules[2].point",
            ]
        );
        assert!(
            errors[0].reason.contains("Sparkplug"),
            "{}",
            errors[0].reason
        );
    }

    #[test]
    fn unknown_formats_and_keys_are_named() {
        let e = toml::from_str::<MqttConfig>("[[rules]]\ntopic = \"a\"\nformat = \"xml\"\n")
            .expect_err("unknown format")
            .to_string();
        assert!(e.contains("xml") && e.contains("senml"), "{e}");
    }
}
