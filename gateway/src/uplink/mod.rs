//! The uplink: committed readings published to a northbound MQTT broker
//! (QoS 1), in seq order, straight from the store.
//!
//! Store-and-forward: the highest seq the broker acknowledged (every
//! message up to it PUBACKed) is persisted next to the database
//! (`<db>.uplink-acked`, written atomically). After an outage or a
//! restart, publishing resumes at the next seq. A reading is published
//! at least once: messages sent but not yet acknowledged when the link
//! broke are sent again. Readings that retention deleted before they were
//! sent are counted and logged, never skipped silently.
//!
//! It runs on its own thread with a small runtime, because it reads the
//! store synchronously; rumqttc's event loop runs in a task of that
//! runtime and hands its events over a channel. Its section,
//! `[uplink]`, is [`config`].

pub mod config;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use biota_common::telemetry::{MetricSet, Telemetry};

use crate::cdm::{Reading, Value};
use crate::metrics::Metrics;
use crate::service::ThreadService;
use crate::store::StoreReader;
use config::{UplinkConfig, UplinkFormat};

/// Largest payload the uplink builds; a message ends before it.
const MAX_PAYLOAD: usize = 256 * 1024;

/// The uplink's counters.
#[derive(Debug, Default)]
pub struct UplinkStats {
    /// Every reading up to this seq is acknowledged by the broker.
    pub acked_seq: AtomicU64,
    pub connected: AtomicBool,
    /// Waiting for the data budget's window to reset.
    pub over_budget: AtomicBool,
    pub messages: AtomicU64,
    pub readings: AtomicU64,
    pub bytes: AtomicU64,
    /// Readings retention deleted before they were sent.
    pub lost_to_retention: AtomicU64,
}

impl UplinkStats {
    pub fn to_json(&self, last_seq: u64) -> serde_json::Value {
        let acked = self.acked_seq.load(Relaxed);
        json!({
            "acked_seq": acked,
            "backlog": last_seq.saturating_sub(acked),
            "connected": self.connected.load(Relaxed),
            "over_budget": self.over_budget.load(Relaxed),
            "messages": self.messages.load(Relaxed),
            "readings": self.readings.load(Relaxed),
            "bytes": self.bytes.load(Relaxed),
            "lost_to_retention": self.lost_to_retention.load(Relaxed),
        })
    }
}

/// Where the acknowledged seq is kept for a database.
pub fn acked_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".uplink-acked");
    db.with_file_name(name)
}

fn load_acked(path: &Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::error!(path = %path.display(), "the uplink's acknowledged seq is unreadable; starting from the beginning of the store");
            0
        }),
        Err(_) => 0,
    }
}

/// Writes the acknowledged seq atomically (a crash leaves the old or the
/// new value, never a torn one).
fn save_acked(path: &Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(file, "{seq}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The uplink as a service: publishes until shutdown.
pub struct Uplink {
    config: UplinkConfig,
    transport: Option<rumqttc::Transport>,
    db: PathBuf,
    acked_file: PathBuf,
    metrics: Arc<Metrics>,
    stats: Arc<UplinkStats>,
}

impl Uplink {
    /// Checks what can fail before the start: a certificate that cannot
    /// be read fails here, not at every connect.
    pub fn new(
        config: UplinkConfig,
        db: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Self, biota_common::tls::TlsError> {
        let transport = match &config.tls {
            Some(tls) => Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls.client_config()?)),
            )),
            None => None,
        };
        Ok(Self {
            acked_file: acked_path(&db),
            db,
            config,
            transport,
            metrics,
            stats: Arc::default(),
        })
    }

    /// Its status and metrics, to be read while it runs.
    pub fn telemetry(&self) -> Arc<UplinkTelemetry> {
        Arc::new(UplinkTelemetry {
            stats: self.stats.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

impl ThreadService for Uplink {
    const NAME: &'static str = "uplink";
    // It reads the store synchronously.

    async fn run(self, shutdown: CancellationToken) {
        self.publish(shutdown).await;
    }
}

/// The uplink's counters with the last committed seq its backlog is
/// measured against.
pub struct UplinkTelemetry {
    stats: Arc<UplinkStats>,
    metrics: Arc<Metrics>,
}

impl Telemetry for UplinkTelemetry {
    fn status(&self) -> serde_json::Value {
        self.stats.to_json(self.metrics.last_seq.load(Relaxed))
    }

    fn metrics(&self, out: &mut MetricSet) {
        let status = self.status();
        out.gauge(
            "uplink_acked_seq",
            "Highest seq the northbound broker acknowledged.",
            status["acked_seq"].as_u64().unwrap_or(0),
        );
        out.gauge(
            "uplink_backlog",
            "Committed readings not yet acknowledged northbound.",
            status["backlog"].as_u64().unwrap_or(0),
        );
        out.gauge(
            "uplink_connected",
            "1 while connected to the northbound broker.",
            u64::from(self.stats.connected.load(Relaxed)),
        );
    }
}

/// A message ready to publish: a run of consecutive readings.
struct Message {
    topic: String,
    payload: Vec<u8>,
    readings: usize,
    last_seq: u64,
}

/// A message sent and not yet acknowledged.
struct InFlight {
    pkid: Option<u16>,
    acked: bool,
    last_seq: u64,
}

/// Byte budgets over fixed windows, and a readings-per-second pace.
struct Limits {
    hour: Option<(u64, Instant, u64)>,
    day: Option<(u64, Instant, u64)>,
    rate: Option<f64>,
    paced_from: Instant,
    paced_readings: f64,
}

impl Limits {
    fn new(config: &UplinkConfig) -> Self {
        let now = Instant::now();
        Self {
            hour: config.budget_per_hour.map(|b| (b, now, 0)),
            day: config.budget_per_day.map(|b| (b, now, 0)),
            rate: config.max_rate,
            paced_from: now,
            paced_readings: 0.0,
        }
    }

    /// Whether a message of `bytes` and `readings` may go now.
    fn allows(&mut self, bytes: u64, readings: usize) -> bool {
        let now = Instant::now();
        for (window, slot) in [(3600, &mut self.hour), (86_400, &mut self.day)] {
            if let Some((budget, start, used)) = slot {
                if now.duration_since(*start) >= Duration::from_secs(window) {
                    *start = now;
                    *used = 0;
                }
                if *used + bytes > *budget && *used > 0 {
                    return false;
                }
            }
        }
        if let Some(rate) = self.rate {
            let allowed = now.duration_since(self.paced_from).as_secs_f64() * rate + rate.max(1.0);
            if self.paced_readings + readings as f64 > allowed {
                return false;
            }
        }
        true
    }

    fn spend(&mut self, bytes: u64, readings: usize) {
        for (_, _, used) in [&mut self.hour, &mut self.day].into_iter().flatten() {
            *used += bytes;
        }
        self.paced_readings += readings as f64;
    }
}

impl Uplink {
    async fn publish(self, shutdown: CancellationToken) {
        let mut acked = load_acked(&self.acked_file);
        self.stats.acked_seq.store(acked, Relaxed);
        let mut limits = Limits::new(&self.config);
        let mut delay = self.config.reconnect_min;
        let mut reader: Option<StoreReader> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let reader = match &reader {
                Some(r) => r,
                None => match StoreReader::open(&self.db) {
                    Ok(r) => reader.insert(r),
                    Err(e) => {
                        tracing::error!(error = %e, "uplink: cannot open the store");
                        if sleep_or_stop(delay, &shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self
                .connection(reader, &mut acked, &mut limits, &shutdown)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    self.stats.connected.store(false, Relaxed);
                    tracing::warn!(broker = %self.config.broker, retry_in = ?delay, "uplink: {e}");
                }
            }
            if sleep_or_stop(delay, &shutdown).await {
                return;
            }
            delay = (delay * 2).min(self.config.reconnect_max);
        }
    }

    fn options(&self) -> MqttOptions {
        // Validation refuses a configuration whose broker does not parse;
        // an empty host then fails every connect, loudly.
        let (host, port) = self
            .config
            .broker
            .value()
            .map_or((String::new(), 0), |b| (b.host.clone(), b.port));
        let mut options = MqttOptions::new(&self.config.client_id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_inflight(u16::try_from(self.config.inflight).unwrap_or(u16::MAX));
        options.set_max_packet_size(MAX_PAYLOAD * 2, MAX_PAYLOAD * 2);
        if let Some(user) = &self.config.username {
            options.set_credentials(user, self.config.password.as_deref().unwrap_or(""));
        }
        if let Some(transport) = &self.transport {
            options.set_transport(transport.clone());
        }
        options
    }

    /// One connection: publish from `acked` on until it fails (Err) or
    /// the gateway stops (Ok).
    async fn connection(
        &self,
        reader: &StoreReader,
        acked: &mut u64,
        limits: &mut Limits,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let (client, mut eventloop) = AsyncClient::new(self.options(), self.config.inflight + 16);
        let (events_tx, mut events) = mpsc::channel(64);
        let stop = shutdown.child_token();
        let _stop_loop = stop.clone().drop_guard();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    event = eventloop.poll() => event,
                };
                let failed = event.is_err();
                if events_tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        });
        // Connected once the broker's CONNACK arrives.
        let connack = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("cannot connect: {e}")),
                    None => return Err("the connection ended".to_owned()),
                }
            }
        });
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            result = connack => result.map_err(|_| "no CONNACK within 10 s".to_owned())??,
        }
        self.stats.connected.store(true, Relaxed);
        tracing::info!(broker = %self.config.broker, from_seq = *acked + 1, "uplink connected");
        let mut next = *acked;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut pending: VecDeque<Message> = VecDeque::new();
        loop {
            // Fill the window.
            while inflight.len() < self.config.inflight {
                if pending.is_empty() {
                    pending = self.next_messages(reader, next)?;
                }
                let Some(message) = pending.front() else {
                    break;
                };
                let bytes = message.payload.len() as u64;
                if !limits.allows(bytes, message.readings) {
                    if !self.stats.over_budget.swap(true, Relaxed) {
                        tracing::warn!("uplink: data budget or rate limit reached; waiting");
                    }
                    break;
                }
                self.stats.over_budget.store(false, Relaxed);
                let Some(Message {
                    topic,
                    payload,
                    readings: count,
                    last_seq,
                }) = pending.pop_front()
                else {
                    break;
                };
                client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .map_err(|e| format!("cannot queue a message: {e}"))?;
                limits.spend(bytes, count);
                inflight.push_back(InFlight {
                    pkid: None,
                    acked: false,
                    last_seq,
                });
                next = last_seq;
                self.stats.messages.fetch_add(1, Relaxed);
                self.stats.readings.fetch_add(count as u64, Relaxed);
                self.stats.bytes.fetch_add(bytes, Relaxed);
            }
            // Wait for acknowledgements, or new data.
            let event = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = events.recv() => event,
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            match event {
                Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(m) = inflight.iter_mut().find(|m| m.pkid.is_none()) {
                        m.pkid = Some(pkid);
                    }
                }
                Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(m) = inflight.iter_mut().find(|m| m.pkid == Some(ack.pkid)) {
                        m.acked = true;
                    }
                    let before = *acked;
                    while inflight.front().is_some_and(|m| m.acked) {
                        if let Some(m) = inflight.pop_front() {
                            *acked = m.last_seq;
                        }
                    }
                    if *acked != before {
                        self.stats.acked_seq.store(*acked, Relaxed);
                        if let Err(e) = save_acked(&self.acked_file, *acked) {
                            tracing::error!(path = %self.acked_file.display(), error = %e, "uplink: cannot persist the acknowledged seq");
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("connection lost: {e}")),
                None => return Err("the connection ended".to_owned()),
            }
        }
    }

    /// The next messages after seq `after`, each a run of consecutive
    /// readings for one topic; counts readings retention took first.
    fn next_messages(&self, reader: &StoreReader, after: u64) -> Result<VecDeque<Message>, String> {
        if self.metrics.last_seq.load(Relaxed) <= after {
            return Ok(VecDeque::new());
        }
        let readings = reader
            .after_seq(after, self.config.batch * self.config.inflight.min(4))
            .map_err(|e| format!("reading the store: {e}"))?;
        if let Some(first) = readings.first()
            && first.seq > after + 1
        {
            let lost = first.seq - after - 1;
            self.stats.lost_to_retention.fetch_add(lost, Relaxed);
            tracing::warn!(
                lost,
                from_seq = after + 1,
                to_seq = first.seq - 1,
                "uplink: retention deleted readings before they were sent"
            );
        }
        let mut messages = VecDeque::new();
        let mut start = 0;
        while start < readings.len() {
            let topic = self.topic(&readings[start]);
            let mut end = start + 1;
            let mut size = 0;
            while end < readings.len()
                && end - start < self.config.batch
                && size < MAX_PAYLOAD / 2
                && self.topic(&readings[end]) == topic
            {
                size += readings[end].point.len() + readings[end].device.len() + 160;
                end += 1;
            }
            let chunk = &readings[start..end];
            let payload = self.payload(chunk);
            messages.push_back(Message {
                topic,
                payload,
                readings: chunk.len(),
                last_seq: chunk[chunk.len() - 1].seq,
            });
            start = end;
        }
        Ok(messages)
    }

    fn topic(&self, r: &Reading) -> String {
        self.config
            .topic
            .replace("{gateway}", &self.config.client_id)
            .replace("{device}", &r.device)
            .replace("{point}", &r.point)
    }

    fn payload(&self, readings: &[Reading]) -> Vec<u8> {
        let doc = match self.config.format {
            UplinkFormat::Json => json!({
                "gateway": self.config.client_id,
                "readings": readings.iter().map(Reading::to_json).collect::<Vec<_>>(),
            }),
            UplinkFormat::Senml => {
                let mut records = Vec::with_capacity(readings.len());
                let mut base: Option<&str> = None;
                for r in readings {
                    let mut record = json!({
                        "n": &*r.point,
                        "t": r.ts as f64 / 1e9,
                        "seq": r.seq,
                    });
                    if base != Some(&*r.device) {
                        record["bn"] = json!(format!("{}:", r.device));
                        base = Some(&*r.device);
                    }
                    match &r.value {
                        Value::Bool(b) => record["vb"] = json!(b),
                        Value::I64(i) => record["v"] = json!(i),
                        Value::F64(f) => record["v"] = json!(f),
                        Value::Text(t) => record["vs"] = json!(t),
                        Value::Bytes(b) => {
                            record["vd"] =
                                json!(biota_drivers::payload::decode::base64url_encode(b))
                        }
                    }
                    if let Some(u) = &r.unit {
                        record["u"] = json!(&**u);
                    }
                    records.push(record);
                }
                serde_json::Value::Array(records)
            }
        };
        doc.to_string().into_bytes()
    }
}

/// True if the gateway stops during the wait.
async fn sleep_or_stop(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acked_seq_survives_a_rewrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("gateway.db");
        let path = acked_path(&db);
        assert_eq!(path.file_name().unwrap(), "gateway.db.uplink-acked");
        assert_eq!(load_acked(&path), 0);
        save_acked(&path, 41).unwrap();
        save_acked(&path, 42).unwrap();
        assert_eq!(load_acked(&path), 42);
    }

    #[test]
    fn budgets_hold_messages_back_until_their_window_resets() {
        let config: UplinkConfig =
            toml::from_str("broker = \"h:1\"\nbudget_per_hour = 1000\n").unwrap();
        let mut limits = Limits::new(&config);
        assert!(limits.allows(600, 1));
        limits.spend(600, 1);
        assert!(!limits.allows(600, 1), "1200 B > 1000 B per hour");
        assert!(limits.allows(400, 1));
        // A message larger than the whole budget still goes, alone, in a
        // fresh window (else it would block the uplink for ever).
        let mut fresh = Limits::new(&config);
        assert!(fresh.allows(5000, 1));
    }

    fn uplink(format: &str, topic: &str) -> Uplink {
        let text = format!(
            "broker = \"h:1\"\nclient_id = \"gw\"\nformat = \"{format}\"\ntopic = \"{topic}\"\n"
        );
        Uplink {
            config: toml::from_str(&text).unwrap(),
            transport: None,
            db: PathBuf::new(),
            acked_file: PathBuf::new(),
            metrics: Arc::default(),
            stats: Arc::default(),
        }
    }

    fn reading(device: &str, point: &str, seq: u64, value: Value) -> Reading {
        Reading {
            device: device.into(),
            point: point.into(),
            ts: 1_700_000_000_500_000_000,
            value,
            unit: Some("Cel".into()),
            quality: crate::cdm::Quality::Good,
            seq,
            source: "sim://t".into(),
        }
    }

    #[test]
    fn topics_and_payloads() {
        let up = uplink("senml", "site/{gateway}/{device}/{point}");
        let r = [
            reading("d1", "t", 7, Value::F64(21.5)),
            reading("d1", "on", 8, Value::Bool(true)),
            reading("d2", "raw", 9, Value::Bytes(vec![1, 2, 3])),
        ];
        assert_eq!(up.topic(&r[0]), "site/gw/d1/t");
        let pack: serde_json::Value = serde_json::from_slice(&up.payload(&r)).unwrap();
        assert_eq!(
            pack,
            json!([
                {"bn": "d1:", "n": "t", "t": 1_700_000_000.5, "v": 21.5, "u": "Cel", "seq": 7},
                {"n": "on", "t": 1_700_000_000.5, "vb": true, "u": "Cel", "seq": 8},
                {"bn": "d2:", "n": "raw", "t": 1_700_000_000.5, "vd": "AQID", "u": "Cel", "seq": 9},
            ])
        );
        let up = uplink("json", "biota/{gateway}/readings");
        let doc: serde_json::Value = serde_json::from_slice(&up.payload(&r[..1])).unwrap();
        assert_eq!(doc["gateway"], "gw");
        assert_eq!(doc["readings"][0]["seq"], 7);
        assert_eq!(doc["readings"][0]["value"], 21.5);
    }

    #[test]
    fn readings_retention_took_before_they_were_sent_are_counted() {
        use crate::store::StoreWriter;
        use crate::store::config::StoreConfig;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("gateway.db");
        let metrics = Arc::new(Metrics::new());
        let mut writer =
            StoreWriter::open(&db, &StoreConfig::default(), metrics.clone()).expect("writer");
        let mut batch: Vec<Reading> = (0..100)
            .map(|i| reading("d1", "t", 0, Value::I64(i)))
            .collect();
        writer.commit(&mut batch).expect("commit");
        drop(writer);
        // What retention does: the oldest readings go.
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute("DELETE FROM readings WHERE seq <= 30", [])
            .unwrap();
        let mut up = uplink("json", "t/{device}");
        up.metrics = metrics;
        let reader = StoreReader::open(&db).expect("reader");
        // Acknowledged up to 10: 11..=30 were never sent and are gone.
        let messages = up.next_messages(&reader, 10).expect("messages");
        assert_eq!(up.stats.lost_to_retention.load(Relaxed), 20);
        let first: serde_json::Value = serde_json::from_slice(&messages[0].payload).unwrap();
        assert_eq!(first["readings"][0]["seq"], 31);
        assert_eq!(messages.iter().map(|m| m.readings).sum::<usize>(), 70);
        assert_eq!(messages.back().unwrap().last_seq, 100);
    }
}
