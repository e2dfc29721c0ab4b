//! Configuration of the CoAP server: where it listens, which resource
//! paths take readings, and its limits.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::payload::topic::TopicPattern;
use biota_common::config::{ConfigError, Validate};

use crate::DeviceBinding;

/// `[drivers.coap]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapConfig {
    /// UDP addresses (IPv4 and IPv6). Default: `["127.0.0.1:5683"]`.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// `[[drivers.coap.resources]]`: paths devices POST or PUT readings
    /// to. Default: one, `/v1/devices/{device}`.
    #[serde(default = "default_resources")]
    pub resources: Vec<ResourceConfig>,
    /// Largest payload of a request, after Block1 assembly, in bytes.
    /// Default: 65536.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Most records in one pack. Default: 10000.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Requests per second one endpoint (IP address) may send; more are
    /// answered 5.03 with Max-Age. Default: 1000.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: f64,
    /// Exchanges remembered for deduplication (RFC 7252 §4.5), each for
    /// EXCHANGE_LIFETIME (247 s). Default: 10000.
    #[serde(default = "default_dedup_entries")]
    pub dedup_entries: usize,
    /// The server sockets' receive buffer, in bytes: room for bursts of
    /// requests while the server is busy (the kernel caps it at
    /// `net.core.rmem_max`). Default: 4 MiB.
    #[serde(default = "default_recv_buffer")]
    pub recv_buffer: usize,
    /// `[[drivers.coap.observe]]`: device resources the gateway observes
    /// (RFC 7641). Default: none.
    #[serde(default)]
    pub observe: Vec<super::observe::ObserveConfig>,
}

/// One resource path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// Path with captures: `/v1/devices/{device}`, `/v1/devices/{device}/{point}`.
    pub path: String,
    /// The device, when the path does not capture `{device}`. A SenML
    /// pack's points are then the records' resolved names (base name +
    /// name); without a device here or in the path, the pack's base name
    /// names it. Default: none.
    #[serde(default)]
    pub device: Option<String>,
    /// The point of a text/plain payload, when the path does not capture `{point}`.
    #[serde(default)]
    pub point: Option<String>,
    /// The profile for this resource's devices.
    #[serde(default)]
    pub profile: Option<String>,
}

impl ResourceConfig {
    /// The path as a pattern over its segments.
    pub(crate) fn pattern(&self) -> Result<TopicPattern, String> {
        let path = self
            .path
            .strip_prefix('/')
            .ok_or_else(|| format!("`{}` does not start with /", self.path))?;
        TopicPattern::parse(path).map_err(|e| e.0)
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 5683))]
}
fn default_resources() -> Vec<ResourceConfig> {
    vec![ResourceConfig {
        path: "/v1/devices/{device}".into(),
        device: None,
        point: None,
        profile: None,
    }]
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_max_records() -> usize {
    10_000
}
fn default_rate_limit() -> f64 {
    1000.0
}
/// `recv_buffer`'s default: room for a burst from thousands of devices.
pub const DEFAULT_RECV_BUFFER: usize = 4 * 1024 * 1024;

fn default_recv_buffer() -> usize {
    DEFAULT_RECV_BUFFER
}
fn default_dedup_entries() -> usize {
    10_000
}

impl Validate for CoapConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err =
            |key_path: String, reason: String| errors.push(ConfigError { key_path, reason });
        if self.listen.is_empty() {
            err(format!("{path}.listen"), "at least one address".into());
        }
        if !(64..=16 * 1024 * 1024).contains(&self.max_payload) {
            err(
                format!("{path}.max_payload"),
                format!("must be 64..=16777216 bytes, got {}", self.max_payload),
            );
        }
        if self.max_records == 0 {
            err(format!("{path}.max_records"), "must be at least 1".into());
        }
        if !self.rate_limit.is_finite() || self.rate_limit <= 0.0 {
            err(
                format!("{path}.rate_limit"),
                format!("must be positive, got {}", self.rate_limit),
            );
        }
        if !(16..=10_000_000).contains(&self.dedup_entries) {
            err(
                format!("{path}.dedup_entries"),
                format!("must be 16..=10000000, got {}", self.dedup_entries),
            );
        }
        for (i, o) in self.observe.iter().enumerate() {
            let key = format!("{path}.observe[{i}]");
            if !o.path.starts_with('/') {
                err(
                    format!("{key}.path"),
                    format!("`{}` does not start with /", o.path),
                );
            }
            if let Err(e) = crate::payload::topic::TopicPattern::parse(o.path.trim_start_matches('/'))
            {
                err(format!("{key}.path"), e.0);
            }
            if o.retry.is_zero() {
                err(format!("{key}.retry"), "must be positive".into());
            }
        }
        for (i, r) in self.resources.iter().enumerate() {
            let key = format!("{path}.resources[{i}]");
            match r.pattern() {
                Err(e) => err(format!("{key}.path"), e),
                Ok(p) => {
                    if p.captures("device") && r.device.is_some() {
                        err(
                            format!("{key}.device"),
                            "the path captures {device}; a fixed device would contradict it".into(),
                        );
                    }
                    if p.captures("point") && r.point.is_some() {
                        err(
                            format!("{key}.point"),
                            "the path captures {point}; a fixed point would contradict it".into(),
                        );
                    }
                    if r.path.contains(['+', '#']) {
                        err(
                            format!("{key}.path"),
                            "a path has segments and {captures}, no MQTT wildcards".into(),
                        );
                    }
                }
            }
        }
    }
}

impl CoapConfig {

    pub(crate) fn bindings(&self, path: &str) -> (Vec<DeviceBinding>, Vec<(String, String)>) {
        let entries = self
            .resources
            .iter()
            .map(|r| (r.device.as_ref(), r.profile.as_ref()));
        let (mut devices, profiles) = crate::entry_bindings(path, "resources", entries);
        let observed = self
            .observe
            .iter()
            .map(|o| (Some(&o.device), o.profile.as_ref()));
        devices.extend(crate::entry_bindings(path, "observe", observed).0);
        (devices, profiles)
    }

}
