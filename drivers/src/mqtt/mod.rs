//! MQTT: an embedded broker (rumqttd) that devices publish to, and rules
//! that turn messages on matching topics into samples.
//!
//! - [`config`]: the broker's listener and limits, the rules.
//! - payloads (plain, JSON, SenML) and topic patterns: [`crate::payload`].
//! - [`sparkplug`]: Sparkplug B topics, payloads and edge-node sessions.
//! - [`upstream`]: subscriptions to external brokers, same rules.
//! - [`tls`]: the broker's TLS listener (certificates: `biota_common::tls`).
//!
//! The broker runs on its own thread (`mqtt-broker`, with rumqttd's own
//! runtimes); the driver reads from it through an in-process link, no
//! socket; it subscribes to every topic. A message goes to the first
//! rule whose pattern matches its topic; one that no rule matches is
//! counted as `no_rule`. What cannot become a sample is counted per topic and reason
//! ([`MqttStats`]) and logged at most once a second per reason; the
//! broker and the gateway carry on.

pub mod config;
pub mod sparkplug;
pub mod tls;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use config::MqttConfig;
use config::{Format, RuleConfig};
use crate::payload::decode::{self, DecodeError, Decoded, JsonLayout};
use sparkplug::Sparkplug;
use crate::payload::topic::TopicPattern;

use biota_common::time::now_ns;
use biota_common::telemetry::{MetricKind, MetricSet, Telemetry};

use crate::component::{BoxError, BuildContext, Component, DriverConfig};
use crate::{DeviceBinding, Sample, SampleBatch, SampleQuality, SampleSink};

/// Distinct (topic, reason) pairs counted before further topics are
/// counted together, so that a flood of random topics cannot grow memory.
const MAX_REJECT_KEYS: usize = 1000;
/// Samples sent in one batch at most.
const MAX_BATCH: usize = 4096;

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("the MQTT broker cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the MQTT broker cannot start: {0}")]
    Broker(String),
    #[error(transparent)]
    Tls(#[from] biota_common::tls::TlsError),
}

/// Counters of the MQTT driver.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Messages the broker handed to the driver.
    pub messages: AtomicU64,
    /// Messages no rule matched.
    pub unmatched: AtomicU64,
    /// Samples produced.
    pub samples: AtomicU64,
    /// Rejections by (topic, reason); topics past the first
    /// `MAX_REJECT_KEYS` are counted as `*`.
    rejected: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Per reason: when it was last logged, and how many since.
    logged: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl MqttStats {
    /// Counts a rejection, and logs it unless this reason was logged less
    /// than a second ago.
    pub fn reject(&self, topic: &str, error: &DecodeError) {
        {
            let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
            let key = (topic.to_owned(), error.reason);
            let key = if rejected.contains_key(&key) || rejected.len() < MAX_REJECT_KEYS {
                key
            } else {
                ("*".to_owned(), error.reason)
            };
            *rejected.entry(key).or_default() += 1;
        }
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = logged
            .entry(error.reason)
            .or_insert((now - Duration::from_secs(2), 0));
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            tracing::warn!(
                topic,
                reason = error.reason,
                suppressed = entry.1,
                "MQTT message rejected: {}",
                error.detail
            );
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }

    /// The counters as JSON (for the control socket).
    pub fn to_json(&self) -> serde_json::Value {
        let rejected: Vec<serde_json::Value> = self
            .rejected()
            .into_iter()
            .map(|((topic, reason), count)| {
                serde_json::json!({ "topic": topic, "reason": reason, "count": count })
            })
            .collect();
        serde_json::json!({
            "messages": self.messages.load(Relaxed),
            "unmatched": self.unmatched.load(Relaxed),
            "samples": self.samples.load(Relaxed),
            "rejected": rejected,
        })
    }

    /// Rejections so far, by (topic, reason).
    pub fn rejected(&self) -> BTreeMap<(String, &'static str), u64> {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Telemetry for MqttStats {
    fn status(&self) -> serde_json::Value {
        self.to_json()
    }

    fn metrics(&self, out: &mut MetricSet) {
        let rejected = out.family(
            "mqtt_rejected_total",
            MetricKind::Counter,
            "MQTT messages rejected, by topic and reason.",
        );
        for ((topic, reason), count) in self.rejected() {
            rejected.sample(&[("topic", &topic), ("reason", reason)], count);
        }
        for (field, counter) in [
            ("messages", &self.messages),
            ("unmatched", &self.unmatched),
            ("samples", &self.samples),
        ] {
            out.counter(
                &format!("mqtt_{field}_total"),
                &format!("MQTT {field}."),
                counter.load(Relaxed),
            );
        }
    }
}

impl DriverConfig for MqttConfig {
    fn devices(&self, path: &str) -> Vec<DeviceBinding> {
        self.bindings(path).0
    }

    fn dynamic_profiles(&self, path: &str) -> Vec<(String, String)> {
        self.bindings(path).1
    }

    fn build(&self, context: BuildContext) -> Result<Component, BoxError> {
        let driver = MqttDriver::start(self.clone(), context.sink)?;
        let telemetry = driver.stats();
        Ok(Component {
            telemetry: Some(telemetry),
            ..Component::task(driver.run(context.shutdown))
        })
    }
}

/// A compiled rule.
struct Rule {
    pattern: TopicPattern,
    format: Format,
    device: Option<Arc<str>>,
    point: Option<Arc<str>>,
    profile: Option<Arc<str>>,
    json: JsonLayout,
}

impl Rule {
    fn compile(config: &RuleConfig) -> Option<Self> {
        Some(Self {
            pattern: TopicPattern::parse(&config.topic).ok()?,
            format: config.format,
            device: config.device.as_deref().map(Arc::from),
            point: config.point.as_deref().map(Arc::from),
            profile: config.profile.as_deref().map(Arc::from),
            json: config.json_layout(),
        })
    }
}

/// Turns messages into samples by the rules; reusable by the upstream
/// subscriptions (same rules over another broker).
pub struct Mapper {
    rules: Vec<Rule>,
    stats: Arc<MqttStats>,
    /// Interned device and point names: most messages repeat them.
    names: HashMap<String, Arc<str>>,
    /// Prefix of every sample's source, e.g. `mqtt://127.0.0.1:1883/`.
    source_prefix: String,
    /// Sparkplug B edge-node sessions (aliases, sequence numbers, last
    /// values), for every `sparkplug` rule.
    sparkplug: Sparkplug,
}

impl Mapper {
    pub fn new(rules: &[RuleConfig], stats: Arc<MqttStats>, source_prefix: String) -> Self {
        Self {
            rules: rules.iter().filter_map(Rule::compile).collect(),
            stats,
            names: HashMap::new(),
            source_prefix,
            sparkplug: Sparkplug::default(),
        }
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        // Bounded like the rejection counters: names come from the network.
        if self.names.len() < 100_000 {
            self.names.insert(name.to_owned(), n.clone());
        }
        n
    }

    /// What a decoder found; its rejections (of the whole payload, or of
    /// parts of it) counted against `topic`.
    fn counted<T>(
        &self,
        topic: &str,
        decoded: Result<(Vec<T>, Vec<DecodeError>), DecodeError>,
    ) -> Option<Vec<T>> {
        match decoded {
            Ok((found, errors)) => {
                for e in &errors {
                    self.stats.reject(topic, e);
                }
                Some(found)
            }
            Err(e) => {
                self.stats.reject(topic, &e);
                None
            }
        }
    }

    /// A message's samples as a batch from `mqtt://<broker>/<topic>`
    /// (`None` if it had none), counted.
    fn batch(
        &self,
        topic: &str,
        samples: Vec<Sample>,
        received_at: i64,
        profile: Option<Arc<str>>,
    ) -> Option<SampleBatch> {
        if samples.is_empty() {
            return None;
        }
        self.stats.samples.fetch_add(samples.len() as u64, Relaxed);
        Some(SampleBatch {
            source: format!("{}{topic}", self.source_prefix).into(),
            received_at,
            samples,
            profile,
            notice: None,
        })
    }

    /// The samples of one message, as a batch (`None` if it had none).
    pub fn map(&mut self, topic: &str, payload: &[u8], received_at: i64) -> Option<SampleBatch> {
        self.stats.messages.fetch_add(1, Relaxed);
        let Some((r, captures)) = self
            .rules
            .iter()
            .enumerate()
            .find_map(|(i, rule)| Some((i, rule.pattern.matches(topic)?)))
        else {
            self.stats.unmatched.fetch_add(1, Relaxed);
            let e = DecodeError {
                reason: "no_rule",
                detail: "no rule's topic pattern matches".into(),
            };
            self.stats.reject(topic, &e);
            return None;
        };
        let captured = |name: &str| {
            captures
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, value)| *value)
        };
        let rule = &self.rules[r];
        let topic_device = captured("device")
            .map(str::to_owned)
            .or_else(|| rule.device.as_deref().map(str::to_owned));
        let topic_point = captured("point")
            .map(str::to_owned)
            .or_else(|| rule.point.as_deref().map(str::to_owned));
        let (format, profile) = (rule.format, rule.profile.clone());
        let decoded: Result<(Vec<Decoded>, Vec<DecodeError>), DecodeError> = match format {
            Format::Plain => decode::plain(payload).map(|d| (vec![d], Vec::new())),
            Format::Json => decode::json(payload, &rule.json),
            Format::Senml => decode::senml(payload, received_at),
            Format::Sparkplug => return self.map_sparkplug(topic, payload, received_at, profile),
        };
        let values = self.counted(topic, decoded)?;
        let mut samples = Vec::with_capacity(values.len());
        for d in values {
            let device = match (topic_device.as_deref(), d.device.as_deref()) {
                (Some(device), _) | (None, Some(device)) => self.intern(device),
                (None, None) => {
                    let e = DecodeError {
                        reason: "no_device",
                        detail: "neither the topic, the rule nor the payload names a device".into(),
                    };
                    self.stats.reject(topic, &e);
                    continue;
                }
            };
            let point = match (d.point.as_deref(), topic_point.as_deref()) {
                (Some(p), _) | (None, Some(p)) => self.intern(p),
                (None, None) => continue,
            };
            samples.push(Sample {
                device,
                point,
                value: d.value,
                device_time: d.time,
                quality: SampleQuality::Good,
                unit: d.unit.map(Arc::from),
            });
        }
        self.batch(topic, samples, received_at, profile)
    }
}

impl Mapper {
    /// A message of a `sparkplug` rule: the topic and payload name the
    /// devices and points; the samples carry their own quality (a death
    /// marks the last values bad).
    fn map_sparkplug(
        &mut self,
        topic: &str,
        payload: &[u8],
        received_at: i64,
        profile: Option<Arc<str>>,
    ) -> Option<SampleBatch> {
        let decoded = self.sparkplug.decode(topic, payload);
        let samples = self.counted(topic, decoded)?;
        self.batch(topic, samples, received_at, profile)
    }
}

/// The MQTT driver: the embedded broker and the mapping of its messages.
pub struct MqttDriver {
    config: MqttConfig,
    sink: SampleSink,
    stats: Arc<MqttStats>,
    link: Option<(rumqttd::local::LinkTx, rumqttd::local::LinkRx)>,
    /// The TLS listener, bound, with its configuration.
    tls: Option<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
}

impl MqttDriver {
    /// Starts the broker (on its own thread) and subscribes the driver's
    /// link to every rule's topic. Fails if the listener's address is
    /// taken.
    pub fn start(config: MqttConfig, sink: SampleSink) -> Result<Self, MqttError> {
        if !config.broker.enabled {
            return Ok(Self {
                config,
                sink,
                stats: Arc::default(),
                link: None,
                tls: None,
            });
        }
        for up in &config.upstream {
            if let Some(tls) = &up.tls {
                tls.client_config()?;
            }
        }
        // TLS first: a bad certificate fails the start before anything runs.
        let tls = match &config.broker.tls {
            Some(t) => {
                let server = Arc::new(t.server_config()?);
                let listener =
                    std::net::TcpListener::bind(t.listen).map_err(|source| MqttError::Listen {
                        address: t.listen,
                        source,
                    })?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| MqttError::Broker(e.to_string()))?;
                Some((listener, server))
            }
            None => None,
        };
        let listen = config.broker.listen;
        // rumqttd reports a bind failure only in its log: check first.
        std::net::TcpListener::bind(listen).map_err(|source| MqttError::Listen {
            address: listen,
            source,
        })?;
        let mut broker = rumqttd::Broker::new(broker_config(&config));
        let (mut tx, rx) = broker
            .link("biota-gateway")
            .map_err(|e| MqttError::Broker(e.to_string()))?;
        // Every topic, not just the rules' filters: a device publishing
        // where no rule listens is counted (`no_rule`), which is what an
        // installer needs to see while commissioning.
        tx.subscribe("#")
            .map_err(|e| MqttError::Broker(e.to_string()))?;
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                // No shutdown call exists: the broker ends with the process.
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "the MQTT broker stopped");
                }
            })
            .map_err(|e| MqttError::Broker(e.to_string()))?;
        wait_listening(&config)?;
        tracing::info!(%listen, tls = ?config.broker.tls.as_ref().map(|t| t.listen), "MQTT broker listening");
        Ok(Self {
            config,
            sink,
            stats: Arc::default(),
            link: Some((tx, rx)),
            tls,
        })
    }

    pub fn stats(&self) -> Arc<MqttStats> {
        self.stats.clone()
    }

    /// Maps the embedded broker's and the upstream brokers' messages to
    /// samples until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tracker = tokio_util::task::TaskTracker::new();
        for (i, up) in self.config.upstream.iter().enumerate() {
            tracker.spawn(upstream::run(
                i,
                up.clone(),
                self.config.rules.clone(),
                self.stats.clone(),
                self.sink.clone(),
                shutdown.clone(),
            ));
        }
        if let Some((listener, server)) = self.tls.take() {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let plain = loopback(self.config.broker.listen);
                    tracker.spawn(tls::serve(listener, server, plain, shutdown.clone()));
                }
                Err(e) => tracing::error!(error = %e, "the MQTT TLS listener cannot run"),
            }
        }
        tracker.close();
        self.embedded(shutdown).await;
        tracker.wait().await;
    }

    /// Maps the embedded broker's messages until `shutdown`.
    async fn embedded(&mut self, shutdown: CancellationToken) {
        let Some((_tx, mut rx)) = self.link.take() else {
            return;
        };
        let prefix = format!("mqtt://{}/", self.config.broker.listen);
        let mut mapper = Mapper::new(&self.config.rules, self.stats.clone(), prefix);
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return,
                n = rx.next() => n,
            };
            let mut notification = match first {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "the MQTT broker's link closed; MQTT ingest stops");
                    return;
                }
            };
            // Everything already delivered goes out in few batches.
            let received_at = now_ns();
            let mut pending: Vec<SampleBatch> = Vec::new();
            let mut queued = 0;
            loop {
                match notification {
                    Some(rumqttd::Notification::Forward(forward)) => {
                        let topic = String::from_utf8_lossy(&forward.publish.topic);
                        if let Some(batch) =
                            mapper.map(&topic, &forward.publish.payload, received_at)
                        {
                            queued += batch.samples.len();
                            pending.push(batch);
                        }
                    }
                    // The router stops forwarding to a link whose buffer
                    // filled up (200 notifications, e.g. after a burst)
                    // until the link says it is ready again: without this,
                    // ingest would stall for good.
                    Some(rumqttd::Notification::Unschedule) => {
                        if let Err(e) = rx.wake().await {
                            tracing::error!(error = %e, "the MQTT broker's link closed; MQTT ingest stops");
                            return;
                        }
                    }
                    _ => {}
                }
                if queued >= MAX_BATCH {
                    break;
                }
                // Whatever is already buffered comes without waiting.
                notification = match tokio::time::timeout(Duration::ZERO, rx.next()).await {
                    Ok(Ok(n)) => n,
                    _ => break,
                };
            }
            for batch in pending {
                let sent = self.sink.send_unless(batch, &shutdown).await;
                if !sent {
                    return;
                }
            }
        }
    }
}

/// Waits until the broker answers an MQTT CONNECT, so that the gateway is
/// not reported ready before devices can publish. (A bare TCP probe would
/// make the broker log an error for the aborted connection.)
fn wait_listening(config: &MqttConfig) -> Result<(), MqttError> {
    use std::io::{Read, Write};
    let listen = config.broker.listen;
    let probe = loopback(listen);
    let connect = connect_packet("biota-gateway-probe", config.broker.users.iter().next());
    let attempt = || -> std::io::Result<()> {
        let mut stream = std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(&connect)?;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack)?;
        // DISCONNECT: a clean goodbye.
        stream.write_all(&[0xE0, 0x00])
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match attempt() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(MqttError::Listen {
                    address: listen,
                    source: e,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The address to reach a listener from this host (a wildcard listener
/// is reached on loopback).
fn loopback(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut local = listen;
    if local.ip().is_unspecified() {
        local.set_ip(match listen {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    local
}

/// An MQTT 3.1.1 CONNECT packet (clean session, keep-alive 10 s).
fn connect_packet(client_id: &str, login: Option<(&String, &String)>) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend((s.len() as u16).to_be_bytes());
        out.extend(s);
    }
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(if login.is_some() { 0xC2 } else { 0x02 });
    body.extend(10u16.to_be_bytes());
    string(&mut body, client_id.as_bytes());
    if let Some((user, password)) = login {
        string(&mut body, user.as_bytes());
        string(&mut body, password.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

fn broker_config(config: &MqttConfig) -> rumqttd::Config {
    let b = &config.broker;
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: b.max_payload,
        max_inflight_count: 100,
        auth: (!b.users.is_empty()).then(|| {
            b.users
                .iter()
                .map(|(u, p)| (u.clone(), p.clone()))
                .collect()
        }),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen: b.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: b.max_connections + 1,
            max_outgoing_packet_count: 200,
            // What the router keeps per filter for a slow reader.
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some([("v4".to_owned(), server)].into_iter().collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst larger than the router's buffer for the driver's link
    /// (200 notifications) makes the router unschedule the link; the
    /// driver must wake it, or ingest stops after ~200 messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_beyond_the_link_buffer_is_all_ingested() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config: MqttConfig = toml::from_str(&format!(
            "[broker]\nlisten = \"127.0.0.1:{port}\"\n[[rules]]\ntopic = \"t/{{device}}/{{point}}\"\nformat = \"plain\"\n"
        ))
        .expect("parses");
        let (sink, mut source) = crate::sample_channel(4096);
        let driver = MqttDriver::start(config, sink).expect("starts");
        let shutdown = CancellationToken::new();
        tokio::spawn(driver.run(shutdown.clone()));

        let mut options = rumqttc::MqttOptions::new("burst", "127.0.0.1", port);
        options.set_inflight(1000);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 4096);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        const N: usize = 5000;
        for i in 0..N {
            client
                .publish(
                    format!("t/d{}/p", i % 10),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    "1",
                )
                .await
                .expect("queued");
        }
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got < N {
            match tokio::time::timeout_at(deadline, source.recv()).await {
                Ok(Some(batch)) => got += batch.samples.len(),
                _ => break,
            }
        }
        shutdown.cancel();
        assert_eq!(got, N, "samples ingested of a burst of {N} messages");
    }
}
