//! The gateway's one TOML configuration file: its types (every field
//! documented with its default; `config/gateway.toml` is the commented
//! sample), loading, and validation. Every error names the file, the key
//! path, the line and the reason; the binary exits with
//! [`EXIT_CONFIG`] on any of them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use biota_drivers::DriversConfig;
use serde::Deserialize;

use crate::cdm::{self, ValueKind};
use crate::time::serde_duration;

/// Exit code for a configuration error (sysexits' EX_CONFIG). The unit
/// file lists it in `RestartPreventExitStatus=` so a bad config is not
/// restarted in a loop.
pub const EXIT_CONFIG: i32 = 78;

/// The largest batch: 4 Mi readings (128 MiB of leaves).
pub const MAX_BATCH_READINGS: usize = 4 << 20;

/// The sample configuration, also printed by `print-default-config`.
pub const SAMPLE_CONFIG: &str = include_str!("../../config/gateway.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[store]`: the SQLite database. Defaults: see [`StoreConfig`].
    #[serde(default)]
    pub store: StoreConfig,
    /// `[pipeline]`: channels and shutdown. Defaults: see [`PipelineConfig`].
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `[log]`: logging. Defaults: see [`LogConfig`].
    #[serde(default)]
    pub log: LogConfig,
    /// `[profiles.<name>]`: device profiles that normalize raw samples.
    /// Default: none.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// `[drivers.<protocol>]`: southbound drivers. Default: none.
    #[serde(default)]
    pub drivers: DriversConfig,
    /// `[uplink]`: readings published to a northbound MQTT broker with
    /// store-and-forward. Default: none.
    #[serde(default)]
    pub uplink: Option<UplinkConfig>,
    /// `[api]`: the local HTTP API, Prometheus metrics and the web console
    /// (`docs/api.md`). Default: none (no HTTP listener); with an `[api]`
    /// section it listens on localhost unless told otherwise.
    /// `[anchor]`: sealing readings into Merkle batches and anchoring them
    /// on an EVM chain. Default: sealing on, no chain (`backend = "none"`).
    #[serde(default)]
    pub anchor: AnchorConfig,
    #[serde(default)]
    pub api: Option<ApiConfig>,
}

/// `[api]`: see `docs/api.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on. Default: `127.0.0.1:8080` (this host only).
    #[serde(default = "default_api_listen")]
    pub listen: std::net::SocketAddr,
    /// `tls = { cert = "...", key = "...", client_ca = "..." }`: HTTPS with
    /// rustls. Default: none (plain HTTP, accepted on loopback only unless
    /// `insecure_listen = true`).
    #[serde(default)]
    pub tls: Option<ApiTls>,
    /// Serve plain HTTP on a non-loopback address (tokens then cross the
    /// network in clear text). Default: false.
    #[serde(default)]
    pub insecure_listen: bool,
    /// Tokens given in the configuration itself, stored hashed:
    /// `tokens = [{ name = "scada", scopes = ["read"], sha256 = "<hex>" }]`.
    /// Default: none.
    #[serde(default)]
    pub tokens: Vec<crate::api::auth::TokenEntry>,
    /// The token file `biota-gateway token` manages. A relative path is
    /// taken relative to the state directory. Default: `tokens.json`.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Serve `/metrics` without a token (Prometheus scrapers on the same
    /// host). When false it needs a `read` token. Default: true.
    #[serde(default = "default_true")]
    pub metrics_public: bool,
    /// Largest request body. Default: `64KiB`.
    #[serde(
        default = "default_api_max_body",
        deserialize_with = "deserialize_size_required"
    )]
    pub max_body: u64,
    /// Connections served at once; more wait in the listen backlog. Default: 256.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: usize,
    /// Live streams (`/v1/stream`) open at once; one more gets 503. Default: 32.
    #[serde(default = "default_sse_max_subscribers")]
    pub sse_max_subscribers: usize,
    /// Committed batches a live stream may fall behind before it is
    /// dropped (and told so). Default: 256.
    #[serde(default = "default_sse_buffer")]
    pub sse_buffer: usize,
    /// Most readings one range page returns (`limit`). Default: 10000.
    #[serde(default = "default_api_max_page")]
    pub max_page: usize,
}

impl ApiConfig {
    fn validate(&self, err: &mut impl FnMut(String, String)) {
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure_listen {
            err(
                "api.listen".into(),
                format!(
                    "{} is not a loopback address and [api] has no tls: tokens would cross the \
                     network in clear text (configure api.tls, or set api.insecure_listen = true)",
                    self.listen
                ),
            );
        }
        for (i, token) in self.tokens.iter().enumerate() {
            if let Err(e) = token.validate() {
                err(format!("api.tokens[{i}]"), e);
            }
        }
        let limits = [
            ("max_connections", self.max_connections, 1, 65_536),
            ("sse_max_subscribers", self.sse_max_subscribers, 0, 10_000),
            ("sse_buffer", self.sse_buffer, 1, 65_536),
            ("max_page", self.max_page, 1, 1_000_000),
        ];
        for (key, value, min, max) in limits {
            if !(min..=max).contains(&value) {
                err(
                    format!("api.{key}"),
                    format!("must be {min}..={max}, got {value}"),
                );
            }
        }
        if !(1024..=64 << 20).contains(&self.max_body) {
            err(
                "api.max_body".into(),
                format!(
                    "must be between 1KiB and 64MiB, got {} bytes",
                    self.max_body
                ),
            );
        }
    }
}

/// `[api.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// PEM CA: when set, clients must also present a certificate it signed.
    /// Default: none.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            tls: None,
            insecure_listen: false,
            tokens: Vec::new(),
            token_file: default_token_file(),
            metrics_public: true,
            max_body: default_api_max_body(),
            max_connections: default_api_max_connections(),
            sse_max_subscribers: default_sse_max_subscribers(),
            sse_buffer: default_sse_buffer(),
            max_page: default_api_max_page(),
        }
    }
}

fn default_api_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_token_file() -> PathBuf {
    PathBuf::from("tokens.json")
}
fn default_true() -> bool {
    true
}
fn default_api_max_body() -> u64 {
    64 * 1024
}
fn default_api_max_connections() -> usize {
    256
}
fn default_sse_max_subscribers() -> usize {
    32
}
fn default_sse_buffer() -> usize {
    256
}
fn default_api_max_page() -> usize {
    10_000
}

/// `[anchor]`: see `docs/anchoring.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorConfig {
    /// Seal batches at all. Default: true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A batch is sealed when it holds this many readings. Default: 10000.
    #[serde(default = "default_batch_max_readings")]
    pub batch_max_readings: usize,
    /// …or when its oldest reading has waited this long. Default: `60s`.
    #[serde(default = "default_batch_max_age", with = "serde_duration")]
    pub batch_max_age: Duration,
    /// `none` (the local hash chain only, default) or `evm`.
    #[serde(default)]
    pub backend: AnchorBackend,
    /// `[anchor.evm]`: the chain, required with `backend = "evm"`.
    #[serde(default)]
    pub evm: Option<EvmConfig>,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_max_readings: default_batch_max_readings(),
            batch_max_age: default_batch_max_age(),
            backend: AnchorBackend::None,
            evm: None,
        }
    }
}

/// Where batch roots go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorBackend {
    /// Only the local hash chain.
    #[default]
    None,
    /// An EVM chain through JSON-RPC and the anchor contract.
    Evm,
}

/// `[anchor.evm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmConfig {
    /// JSON-RPC endpoint, `http://` or `https://`.
    pub rpc: String,
    /// The anchor contract's address, `0x` and 40 hex digits.
    pub contract: String,
    /// The chain id the endpoint must report; checked before anything is
    /// sent. Default: whatever the endpoint reports.
    #[serde(default)]
    pub chain_id: Option<u64>,
    /// The gateway's secp256k1 key (hex), created by `biota-gateway
    /// keygen`; must be mode 0600. Relative to the state directory.
    /// Default: `anchor.key`.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Blocks on top of (and including) the anchor's block before it
    /// counts as final. Default: 2.
    #[serde(default = "default_confirmations")]
    pub confirmations: u64,
    /// Cap on the fee per gas, in gwei. Default: 200.
    #[serde(default = "default_max_fee_gwei")]
    pub max_fee_gwei: f64,
    /// Cap on the priority fee (tip) per gas, in gwei. Default: 2.
    #[serde(default = "default_max_priority_fee_gwei")]
    pub max_priority_fee_gwei: f64,
    /// A transaction not mined after this long is sent again with higher
    /// fees (same nonce). Default: `60s`.
    #[serde(default = "default_resubmit_after", with = "serde_duration")]
    pub resubmit_after: Duration,
    /// Most batches in one transaction (catching up after an outage). Default: 16.
    #[serde(default = "default_max_batches_per_tx")]
    pub max_batches_per_tx: usize,
    /// How often the chain is asked for news. Default: `2s`.
    #[serde(default = "default_poll_interval", with = "serde_duration")]
    pub poll_interval: Duration,
}

fn yes() -> bool {
    true
}
fn default_batch_max_readings() -> usize {
    10_000
}
fn default_batch_max_age() -> Duration {
    Duration::from_secs(60)
}
fn default_key_file() -> PathBuf {
    "anchor.key".into()
}
fn default_confirmations() -> u64 {
    2
}
fn default_max_fee_gwei() -> f64 {
    200.0
}
fn default_max_priority_fee_gwei() -> f64 {
    2.0
}
fn default_resubmit_after() -> Duration {
    Duration::from_secs(60)
}
fn default_max_batches_per_tx() -> usize {
    16
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(2)
}

/// `[uplink]`: see `docs/drivers/mqtt.md` (Uplink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The broker, `host:port`.
    pub broker: String,
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
    #[serde(default, deserialize_with = "deserialize_size")]
    pub budget_per_hour: Option<u64>,
    #[serde(default, deserialize_with = "deserialize_size")]
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
    pub tls: Option<biota_drivers::mqtt::tls::ClientTls>,
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

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Database file. A relative path is taken relative to the state
    /// directory (`--state-dir`, else `$STATE_DIRECTORY`, else
    /// `/var/lib/biota`). Default: `gateway.db`.
    #[serde(default = "default_db_path")]
    pub path: PathBuf,
    /// `full`: a committed reading survives a power cut (an fsync per
    /// group commit). `normal`: it survives a crash of the gateway but the
    /// last commits may be lost on power loss. Default: `full`.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// A group commit happens once this many readings wait. Default: 20000.
    #[serde(default = "default_commit_max_readings")]
    pub commit_max_readings: usize,
    /// ... or once the oldest waiting reading is this old. Default: `50ms`.
    #[serde(default = "default_commit_max_delay", with = "serde_duration")]
    pub commit_max_delay: Duration,
    /// SQLite page cache of the writer, in MiB. Default: 8.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u32,
    /// The write-ahead log is folded back into the database and truncated
    /// once it is larger than this. Default: `32MiB`.
    #[serde(
        default = "default_wal_max_size",
        deserialize_with = "deserialize_size_required"
    )]
    pub wal_max_size: u64,
    /// `[store.retention]`. Defaults: see [`RetentionConfig`].
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// `[store.retention]`: what is deleted, oldest first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delete readings committed longer ago than this (e.g. `90d`).
    /// Default: unset (no age limit).
    #[serde(default, with = "serde_duration::option")]
    pub max_age: Option<Duration>,
    /// Delete the oldest readings while the data in the database exceeds
    /// this size (e.g. `2GiB`, `500MB`). Default: `1GiB`.
    #[serde(default = "default_max_size", deserialize_with = "deserialize_size")]
    pub max_size: Option<u64>,
    /// How often retention runs. Default: `60s`.
    #[serde(default = "default_retention_interval", with = "serde_duration")]
    pub check_interval: Duration,
}

/// SQLite's `synchronous` setting for the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Batches each bounded channel holds (driver → normalizer →
    /// writer). A full channel makes the stage before it wait. Default: 64.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Longest wait for the pipeline to drain on shutdown. Default: `30s`.
    #[serde(default = "default_shutdown_timeout", with = "serde_duration")]
    pub shutdown_timeout: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, optionally with
    /// per-module levels (`info,biota_gateway::store=debug`). The
    /// `BIOTA_LOG` environment variable overrides it. Default: `info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

/// `[profiles.<name>]`: how a kind of device's raw samples become readings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// `device`: use the device's timestamp when it sent one, else the
    /// ingest time. `ingest`: always the ingest time. Default: `device`.
    #[serde(default)]
    pub timestamp: TimestampRule,
    /// What happens to points the profile does not list: `accept` (kept
    /// under their raw name and type) or `reject` (counted as
    /// `unmapped_point`). Default: `accept`.
    #[serde(default)]
    pub unmapped: Unmapped,
    /// `[profiles.<name>.points.<raw point>]`: per-point rules. Default: none.
    #[serde(default)]
    pub points: BTreeMap<String, PointProfile>,
}

/// Where a reading's timestamp comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampRule {
    #[default]
    Device,
    Ingest,
}

/// What to do with points a profile does not list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmapped {
    #[default]
    Accept,
    Reject,
}

/// `[profiles.<name>.points.<raw point>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointProfile {
    /// The point's name in the CDM. Default: the raw name.
    #[serde(default)]
    pub name: Option<String>,
    /// `bool`, `i64`, `f64`, `text` or `bytes`. Default: the raw value's
    /// own type (unsigned integers become i64).
    #[serde(default, rename = "type")]
    pub kind: Option<ValueKind>,
    /// Multiplier applied to numeric values (`value * scale + offset`).
    /// Default: 1.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling. Default: 0.
    #[serde(default)]
    pub offset: f64,
    /// SenML / UCUM unit code, e.g. `Cel`, `kW`, `m3/h`. Default: none.
    #[serde(default)]
    pub unit: Option<String>,
    /// A numeric reading within this absolute distance of the last stored
    /// one (same quality) is dropped. Default: 0 (store every change).
    #[serde(default)]
    pub deadband: f64,
}

fn default_db_path() -> PathBuf {
    PathBuf::from("gateway.db")
}
fn default_commit_max_readings() -> usize {
    20_000
}
fn default_commit_max_delay() -> Duration {
    Duration::from_millis(50)
}
fn default_cache_mib() -> u32 {
    8
}
fn default_wal_max_size() -> u64 {
    32 << 20
}
fn default_max_size() -> Option<u64> {
    Some(1 << 30)
}
fn default_retention_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_queue_capacity() -> usize {
    64
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_log_level() -> String {
    "info".into()
}
fn one() -> f64 {
    1.0
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_db_path(),
            synchronous: Synchronous::Full,
            commit_max_readings: default_commit_max_readings(),
            commit_max_delay: default_commit_max_delay(),
            cache_mib: default_cache_mib(),
            wal_max_size: default_wal_max_size(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            max_size: default_max_size(),
            check_interval: default_retention_interval(),
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: default_queue_capacity(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
        }
    }
}

/// `"2GiB"`, `"500MB"`, `"64KiB"`, a plain integer of bytes, or `"off"`.
fn deserialize_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct SizeVisitor;
    impl serde::de::Visitor<'_> for SizeVisitor {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size like \"2GiB\" or \"500MB\", a number of bytes, or \"off\"")
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            u64::try_from(n)
                .map(Some)
                .map_err(|_| E::custom(format!("a size cannot be negative, got {n}")))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            if s == "off" {
                Ok(None)
            } else {
                parse_size(s).map(Some).map_err(E::custom)
            }
        }
    }
    d.deserialize_any(SizeVisitor)
}

/// A size that cannot be "off".
fn deserialize_size_required<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    deserialize_size(d)?.ok_or_else(|| serde::de::Error::custom("must be a size, not off"))
}

/// Parses a size like `2GiB`, `500MB`, `64KiB` or `1024`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split]
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 2GiB, 500MB or 1048576"))?;
    let mult: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "`{s}`: unknown size unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `drivers.sim.devices[0].points[1].rate`; empty for
    /// the whole file.
    pub key: String,
    /// 1-based line of the key in the file, when it is there.
    pub line: Option<usize>,
    pub reason: String,
}

/// Everything wrong with a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = issue.line {
                write!(f, ":{line}")?;
            }
            if !issue.key.is_empty() {
                write!(f, ": {}", issue.key)?;
            }
            write!(f, ": {}", issue.reason)?;
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// Reads, parses and validates `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            issues: vec![ConfigIssue {
                key: String::new(),
                line: None,
                reason: format!("cannot read the configuration file: {e}"),
            }],
        })?;
        Self::from_toml(file, &text)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn from_toml(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let fail = |issues| ConfigError {
            file: file.to_owned(),
            issues,
        };
        let located = toml::de::DeTable::parse(text).map_err(|e| {
            fail(vec![ConfigIssue {
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                reason: format!("invalid TOML: {}", e.message().trim()),
            }])
        })?;
        let deserializer = toml::de::Deserializer::parse(text).map_err(|e| {
            fail(vec![ConfigIssue {
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                reason: format!("invalid TOML: {}", e.message().trim()),
            }])
        })?;
        let config: Self = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." => String::new(),
                p => p,
            };
            let line = e
                .inner()
                .span()
                .map(|s| line_of(text, s.start))
                .or_else(|| find_line(text, located.get_ref(), &key));
            fail(vec![ConfigIssue {
                key,
                line,
                reason: e.inner().message().trim().to_owned(),
            }])
        })?;
        let issues: Vec<ConfigIssue> = config
            .validate()
            .into_iter()
            .map(|(key, reason)| ConfigIssue {
                line: find_line(text, located.get_ref(), &key),
                key,
                reason,
            })
            .collect();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(fail(issues))
        }
    }

    /// Cross-field rules serde's types cannot express, as (key path, reason).
    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut err = |key: String, reason: String| errors.push((key, reason));

        if let Some(up) = &self.uplink {
            if up
                .broker
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                err(
                    "uplink.broker".into(),
                    format!("`{}` is not host:port", up.broker),
                );
            }
            if let Some(Err(e)) = up.tls.as_ref().map(|t| t.validate()) {
                err("uplink.tls".into(), e);
            }
            if up.client_id.is_empty() || up.client_id.len() > 64 {
                err(
                    "uplink.client_id".into(),
                    "must be 1..=64 characters".into(),
                );
            }
            let mut rest = up.topic.as_str();
            while let Some(open) = rest.find('{') {
                let Some(close) = rest[open..].find('}') else {
                    err("uplink.topic".into(), "an unclosed `{`".into());
                    break;
                };
                let name = &rest[open + 1..open + close];
                if !["gateway", "device", "point"].contains(&name) {
                    err(
                        "uplink.topic".into(),
                        format!("unknown placeholder `{{{name}}}` (known: gateway, device, point)"),
                    );
                }
                rest = &rest[open + close + 1..];
            }
            if up.topic.is_empty() || up.topic.contains(['+', '#']) {
                err(
                    "uplink.topic".into(),
                    "a topic to publish to: not empty, no wildcards".into(),
                );
            }
            if !(1..=10_000).contains(&up.batch) {
                err(
                    "uplink.batch".into(),
                    format!("must be 1..=10000, got {}", up.batch),
                );
            }
            if !(1..=1000).contains(&up.inflight) {
                err(
                    "uplink.inflight".into(),
                    format!("must be 1..=1000, got {}", up.inflight),
                );
            }
            if let Some(rate) = up.max_rate
                && (!rate.is_finite() || rate <= 0.0)
            {
                err(
                    "uplink.max_rate".into(),
                    format!("must be positive, got {rate}"),
                );
            }
            if up.reconnect_min.is_zero() || up.reconnect_min > up.reconnect_max {
                err(
                    "uplink.reconnect_min".into(),
                    "must be positive and at most reconnect_max".into(),
                );
            }
        }

        if let Some(api) = &self.api {
            api.validate(&mut err);
        }

        let anchor = &self.anchor;
        if !(1..=MAX_BATCH_READINGS).contains(&anchor.batch_max_readings) {
            err(
                "anchor.batch_max_readings".into(),
                format!(
                    "must be 1..={MAX_BATCH_READINGS}, got {}",
                    anchor.batch_max_readings
                ),
            );
        }
        if anchor.batch_max_age < Duration::from_millis(100) {
            err(
                "anchor.batch_max_age".into(),
                "must be at least 100ms".into(),
            );
        }
        match (&anchor.backend, &anchor.evm) {
            (AnchorBackend::Evm, None) => err(
                "anchor.evm".into(),
                "backend = \"evm\" needs an [anchor.evm] section (rpc, contract)".into(),
            ),
            (AnchorBackend::Evm, Some(_)) if !anchor.enabled => err(
                "anchor.enabled".into(),
                "backend = \"evm\" anchors sealed batches: sealing must be enabled".into(),
            ),
            _ => {}
        }
        if let Some(evm) = &anchor.evm {
            if !(evm.rpc.starts_with("http://") || evm.rpc.starts_with("https://")) {
                err(
                    "anchor.evm.rpc".into(),
                    format!("`{}` is not an http:// or https:// URL", evm.rpc),
                );
            }
            if crate::anchor::parse_address(&evm.contract).is_none() {
                err(
                    "anchor.evm.contract".into(),
                    format!(
                        "`{}` is not an address (0x and 40 hex digits)",
                        evm.contract
                    ),
                );
            }
            if !(1..=10_000).contains(&evm.confirmations) {
                err(
                    "anchor.evm.confirmations".into(),
                    format!("must be 1..=10000, got {}", evm.confirmations),
                );
            }
            for (key, v) in [
                ("max_fee_gwei", evm.max_fee_gwei),
                ("max_priority_fee_gwei", evm.max_priority_fee_gwei),
            ] {
                if !v.is_finite() || v <= 0.0 || v > 1e9 {
                    err(
                        format!("anchor.evm.{key}"),
                        format!("must be a positive number of gwei, got {v}"),
                    );
                }
            }
            if evm.max_priority_fee_gwei > evm.max_fee_gwei {
                err(
                    "anchor.evm.max_priority_fee_gwei".into(),
                    "must not exceed max_fee_gwei".into(),
                );
            }
            if !(1..=256).contains(&evm.max_batches_per_tx) {
                err(
                    "anchor.evm.max_batches_per_tx".into(),
                    format!("must be 1..=256, got {}", evm.max_batches_per_tx),
                );
            }
            if evm.poll_interval < Duration::from_millis(50) || evm.resubmit_after.is_zero() {
                err(
                    "anchor.evm.poll_interval".into(),
                    "poll_interval must be at least 50ms and resubmit_after positive".into(),
                );
            }
        }

        let store = &self.store;
        if !(1..=1_000_000).contains(&store.commit_max_readings) {
            err(
                "store.commit_max_readings".into(),
                format!("must be 1..=1000000, got {}", store.commit_max_readings),
            );
        }
        if store.commit_max_delay < Duration::from_millis(1)
            || store.commit_max_delay > Duration::from_secs(10)
        {
            err(
                "store.commit_max_delay".into(),
                "must be between 1ms and 10s".into(),
            );
        }
        if !(1..=4096).contains(&store.cache_mib) {
            err(
                "store.cache_mib".into(),
                format!("must be 1..=4096, got {}", store.cache_mib),
            );
        }
        if store.path.as_os_str().is_empty() {
            err("store.path".into(), "must not be empty".into());
        }
        if let Some(size) = store.retention.max_size
            && size < 1 << 20
        {
            err(
                "store.retention.max_size".into(),
                format!("must be at least 1MiB, got {size} bytes"),
            );
        }
        if store
            .retention
            .max_age
            .is_some_and(|a| a < Duration::from_secs(60))
        {
            err(
                "store.retention.max_age".into(),
                "must be at least 1m".into(),
            );
        }
        if store.retention.check_interval < Duration::from_secs(1) {
            err(
                "store.retention.check_interval".into(),
                "must be at least 1s".into(),
            );
        }
        if store.wal_max_size < 1 << 20 {
            err(
                "store.wal_max_size".into(),
                format!("must be at least 1MiB, got {} bytes", store.wal_max_size),
            );
        }
        if self.pipeline.shutdown_timeout < Duration::from_secs(1) {
            err(
                "pipeline.shutdown_timeout".into(),
                "must be at least 1s".into(),
            );
        }
        if !(1..=65_536).contains(&self.pipeline.queue_capacity) {
            err(
                "pipeline.queue_capacity".into(),
                format!("must be 1..=65536, got {}", self.pipeline.queue_capacity),
            );
        }
        if let Err(e) = self
            .log
            .level
            .parse::<tracing_subscriber::filter::Targets>()
        {
            err(
                "log.level".into(),
                format!("`{}` is not a log filter: {e}", self.log.level),
            );
        }

        for (name, profile) in &self.profiles {
            let mut renamed: HashMap<&str, &str> = HashMap::new();
            for (raw, point) in &profile.points {
                let key = format!("profiles.{name}.points.{raw}");
                let cdm_name = point.name.as_deref().unwrap_or(raw);
                if let Err(e) = cdm::validate_point(cdm_name) {
                    let field = if point.name.is_some() { ".name" } else { "" };
                    err(format!("{key}{field}"), e.to_string());
                }
                if let Some(other) = renamed.insert(cdm_name, raw) {
                    err(
                        format!("{key}.name"),
                        format!("raw points `{other}` and `{raw}` both map to point `{cdm_name}`"),
                    );
                }
                if let Some(unit) = &point.unit
                    && let Err(e) = cdm::validate_unit(unit)
                {
                    err(format!("{key}.unit"), e.to_string());
                }
                if !point.scale.is_finite() || point.scale == 0.0 {
                    err(
                        format!("{key}.scale"),
                        format!("must be finite and non-zero, got {}", point.scale),
                    );
                }
                if !point.offset.is_finite() {
                    err(
                        format!("{key}.offset"),
                        format!("must be finite, got {}", point.offset),
                    );
                }
                if !point.deadband.is_finite() || point.deadband < 0.0 {
                    err(
                        format!("{key}.deadband"),
                        format!("must be 0 or positive, got {}", point.deadband),
                    );
                }
                let numeric = !matches!(point.kind, Some(ValueKind::Text | ValueKind::Bytes));
                if !numeric && (point.scale != 1.0 || point.offset != 0.0 || point.deadband != 0.0)
                {
                    err(
                        format!("{key}.type"),
                        "scale, offset and deadband apply to numbers only, not to text or bytes"
                            .into(),
                    );
                }
            }
        }

        if let Err(driver_errors) = self.drivers.validate("drivers") {
            for e in driver_errors {
                err(e.key_path, e.reason);
            }
        }
        let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        let undefined = |profile: &str| {
            (!self.profiles.contains_key(profile)).then(|| {
                format!(
                    "profile `{profile}` is not defined (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            })
        };
        for binding in self.drivers.devices("drivers") {
            if let Err(e) = cdm::validate_device(&binding.device) {
                err(format!("{}.id", binding.key_path), e.to_string());
            }
            if let Some(reason) = binding.profile.as_deref().and_then(undefined) {
                err(format!("{}.profile", binding.key_path), reason);
            }
        }
        // Profiles for devices only known at run time (MQTT rules).
        for (key_path, profile) in self.drivers.dynamic_profiles("drivers") {
            if let Some(reason) = undefined(&profile) {
                err(format!("{key_path}.profile"), reason);
            }
        }
        // Copies of one device entry repeat the same error: report it once.
        errors.dedup();
        errors
    }

    /// The token file of the API for a state directory.
    pub fn token_path(&self, state_dir: &Path) -> PathBuf {
        let file = self
            .api
            .as_ref()
            .map_or_else(default_token_file, |a| a.token_file.clone());
        state_dir.join(file)
    }

    /// The database file for a state directory.
    /// Makes `[anchor.evm] key_file` absolute (relative to the state directory).
    pub fn resolve_key_file(&mut self, state_dir: &Path) {
        if let Some(evm) = self.anchor.evm.as_mut() {
            evm.key_file = state_dir.join(&evm.key_file);
        }
    }

    pub fn db_path(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(&self.store.path)
    }
}

/// The state directory: `--state-dir`, else systemd's `$STATE_DIRECTORY`,
/// else `/var/lib/biota`.
pub fn state_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(dir) = cli {
        return dir.to_owned();
    }
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; ours is the first.
        Some(dirs) if !dirs.is_empty() => {
            PathBuf::from(dirs.to_string_lossy().split(':').next().unwrap_or_default())
        }
        _ => PathBuf::from("/var/lib/biota"),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of a key path like `drivers.sim.devices[1].points[0].rate`,
/// or of its closest ancestor that is in the file.
fn find_line(text: &str, root: &toml::de::DeTable<'_>, key: &str) -> Option<usize> {
    use toml::de::DeValue;
    let mut table = Some(root);
    let mut best = None;
    for segment in key.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        let Some((k, mut value)) = table?.iter().find(|(k, _)| k.get_ref() == name) else {
            break;
        };
        best = Some(line_of(text, k.span().start));
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            let item = match (value.get_ref(), index.parse::<usize>()) {
                (DeValue::Array(items), Ok(i)) => items.get(i),
                _ => None,
            };
            let Some(item) = item else { return best };
            value = item;
            best = Some(line_of(text, value.span().start));
        }
        table = match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_toml(Path::new("test.toml"), text)
    }

    fn issues(text: &str) -> Vec<(String, Option<usize>, String)> {
        load(text)
            .expect_err("invalid config")
            .issues
            .into_iter()
            .map(|i| (i.key, i.line, i.reason))
            .collect()
    }

    #[test]
    fn the_sample_config_is_valid_and_documents_defaults() {
        let config = load(SAMPLE_CONFIG).expect("config/gateway.toml is valid");
        assert_eq!(config.store.commit_max_readings, 20_000);
        assert_eq!(config.store.commit_max_delay, Duration::from_millis(50));
        assert!(
            config.drivers.sim.is_none(),
            "no simulated devices unless asked for"
        );
        // Its commented-out dry-run section ("#key", "##" for comments) is
        // valid once uncommented.
        let uncommented: String = SAMPLE_CONFIG
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.starts_with([' ', '#']) && !rest.is_empty() => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let dry_run = load(&uncommented).expect("the uncommented dry run is valid");
        let sim = dry_run
            .drivers
            .sim
            .expect("the dry run has simulated devices");
        assert_eq!(sim.devices[0].profile.as_deref(), Some("press"));
        // An empty file is a valid configuration too: every field has a default.
        let empty = load("").expect("empty config is valid");
        assert_eq!(empty.store.retention.max_size, Some(1 << 30));
        assert_eq!(empty.store.synchronous, Synchronous::Full);
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let found = issues("[store]\ncommit_max_delay = \"10ms\"\ncomit_max_readings = 5\n");
        assert_eq!(found.len(), 1);
        let (key, line, reason) = &found[0];
        assert_eq!(key, "store.comit_max_readings");
        assert_eq!(*line, Some(3));
        assert!(reason.contains("comit_max_readings"), "{reason}");
    }

    #[test]
    fn bad_value_names_path_and_line() {
        let found = issues("[store]\n\ncommit_max_delay = \"soon\"\n");
        assert_eq!(found[0].0, "store.commit_max_delay");
        assert_eq!(found[0].1, Some(3));
        assert!(found[0].2.contains("`soon`"), "{}", found[0].2);

        let found = issues("[store.retention]\nmax_size = \"12 parsecs\"\n");
        assert_eq!(found[0].0, "store.retention.max_size");
        assert_eq!(found[0].1, Some(2));
        let found = issues("[store.retention]\nmax_size = true\n");
        assert!(found[0].2.contains("a size like"), "{}", found[0].2);
    }

    #[test]
    fn invalid_toml_names_the_line() {
        let found = issues("[store]\npath = \"x.db\"\ncache_mib = = 3\n");
        assert_eq!(found[0].1, Some(3));
        assert!(found[0].2.starts_with("invalid TOML"));
    }

    #[test]
    fn cross_field_rules_name_path_and_line() {
        let text = r#"
[profiles.press.points.temp_raw]
name = "bad name"
scale = 0

[[drivers.sim.devices]]
id = "press-1"
profile = "pres"
points = [{ name = "temp_raw", waveform = "sine" }]

[[drivers.sim.devices]]
id = "press 2"
points = [
  { name = "a", waveform = "sine" },
  { name = "b", waveform = "sine", rate = -1 },
]
"#;
        let found = issues(text);
        let keys: Vec<(&str, Option<usize>)> =
            found.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
        assert_eq!(
            keys,
            [
                ("profiles.press.points.temp_raw.name", Some(3)),
                ("profiles.press.points.temp_raw.scale", Some(4)),
                ("drivers.sim.devices[1].points[1].rate", Some(15)),
                ("drivers.sim.devices[0].profile", Some(8)),
                ("drivers.sim.devices[1].id", Some(12)),
            ]
        );
        assert!(
            found[3]
                .2
                .contains("`pres` is not defined (defined: press)")
        );
    }

    #[test]
    fn error_display_is_file_line_key_reason() {
        let e = load("[pipeline]\nqueue_capacity = 0\n").expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.toml:2: pipeline.queue_capacity: must be 1..=65536, got 0"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }
}
