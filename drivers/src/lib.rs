//! Southbound protocol drivers of the BIOTA Edge gateway.
//!
//! A driver speaks one protocol to devices and emits raw [`Sample`]s, in
//! [`SampleBatch`]es, into a bounded channel ([`SampleSink`]). It knows
//! nothing of the Common Data Model, the store or the gateway: turning
//! samples into typed, validated readings is the gateway's normalizer's job.
//!
//! Layout: one folder per protocol (`sim/`, later `modbus/`, `mqtt/`,
//! `coap/`), each with a `config.rs` holding its `<Proto>Config` and the
//! task `<Proto>Driver` with `new()` and `async fn run(self, shutdown)`.
//! [`DriversConfig`] is the one place a protocol is registered.
//!
//! *Architecture invariant:* this crate never depends on `biota-gateway`
//! or `biota-node`.

pub mod base64url;
pub mod coap;
pub mod command;
pub mod duration;
pub mod modbus;
pub mod mqtt;
pub mod sim;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// A value as the device delivered it, before profiles give it a type.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl RawValue {
    /// The type's name, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            RawValue::Bool(_) => "bool",
            RawValue::I64(_) => "i64",
            RawValue::U64(_) => "u64",
            RawValue::F64(_) => "f64",
            RawValue::Text(_) => "text",
            RawValue::Bytes(_) => "bytes",
        }
    }
}

/// What the driver knows about a sample's trustworthiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleQuality {
    Good,
    /// The device flagged the value (e.g. a sensor out of range).
    Uncertain,
    /// The device stopped answering or reported a fault; the value is the
    /// last known one or meaningless.
    Bad,
}

/// One raw value of one point of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Device id as the driver knows it (config or protocol address).
    pub device: Arc<str>,
    /// Point name as the driver knows it (before renaming by profiles).
    pub point: Arc<str>,
    pub value: RawValue,
    /// The device's own timestamp (UTC ns since the Unix epoch), if it sent one.
    pub device_time: Option<i64>,
    pub quality: SampleQuality,
    /// The unit the device stated (SenML `u`); a profile's unit wins.
    pub unit: Option<Arc<str>>,
}

/// Samples that arrived together from one source.
#[derive(Debug, Clone)]
pub struct SampleBatch {
    /// Protocol and address they came from, e.g. `sim://line-1` or
    /// `modbus-tcp://10.0.0.5:502/1`.
    pub source: Arc<str>,
    /// When the gateway received them (UTC ns); the ingest time.
    pub received_at: i64,
    pub samples: Vec<Sample>,
    /// The profile the driver's configuration names for these samples'
    /// devices when they are only known at run time (MQTT topic
    /// captures); a profile bound to the device itself wins.
    pub profile: Option<Arc<str>>,
    /// Tells the driver when these samples' readings are durably stored
    /// (a CoAP confirmable request is answered only then). Default: none.
    pub notice: Option<CommitNotice>,
}

/// What became of a batch the driver asked to hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// `stored` readings are committed (durable, with seq up to
    /// `last_seq`); `dropped` samples were rejected or filtered.
    Committed {
        stored: usize,
        dropped: usize,
        last_seq: u64,
    },
    /// Not one sample could be stored (each rejection is counted by the
    /// gateway with its reason).
    NothingStored { dropped: usize },
}

/// A one-shot "your batch is stored" callback that travels with a batch
/// through the normalizer to the store writer. Clonable so batches stay
/// clonable; the first `fire` wins.
#[derive(Debug, Clone)]
pub struct CommitNotice(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<CommitOutcome>>>>);

impl CommitNotice {
    pub fn new() -> (Self, tokio::sync::oneshot::Receiver<CommitOutcome>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self(Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    pub fn fire(&self, outcome: CommitOutcome) {
        let sender = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(sender) = sender {
            let _ = sender.send(outcome);
        }
    }
}

/// Something sent through a [`batch_channel`]: it knows how many items it holds.
pub trait Batch {
    fn items(&self) -> usize;
}

impl Batch for SampleBatch {
    fn items(&self) -> usize {
        self.samples.len()
    }
}

impl<T> Batch for Vec<T> {
    fn items(&self) -> usize {
        self.len()
    }
}

/// The sending end of a bounded channel of batches: when it is full the
/// sender waits (backpressure) instead of memory growing. It also counts
/// the items queued in it, for the queue-depth metric.
#[derive(Debug)]
pub struct BatchSender<T> {
    tx: tokio::sync::mpsc::Sender<T>,
    queued: Arc<AtomicU64>,
}

impl<T> Clone for BatchSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
        }
    }
}

/// The receiving end of a [`BatchSender`].
#[derive(Debug)]
pub struct BatchReceiver<T> {
    rx: tokio::sync::mpsc::Receiver<T>,
    queued: Arc<AtomicU64>,
}

/// What every driver gets to hand its samples to the gateway.
pub type SampleSink = BatchSender<SampleBatch>;
/// Where the gateway's normalizer takes samples from.
pub type SampleSource = BatchReceiver<SampleBatch>;

/// The pipeline has shut down; nobody receives batches any more.
#[derive(Debug, thiserror::Error)]
#[error("the channel is closed (the gateway is shutting down)")]
pub struct SinkClosed;

/// A bounded channel holding at most `capacity` batches.
pub fn batch_channel<T: Batch>(capacity: usize) -> (BatchSender<T>, BatchReceiver<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    let queued = Arc::new(AtomicU64::new(0));
    (
        BatchSender {
            tx,
            queued: queued.clone(),
        },
        BatchReceiver { rx, queued },
    )
}

/// A bounded sample channel holding at most `capacity` batches.
pub fn sample_channel(capacity: usize) -> (SampleSink, SampleSource) {
    batch_channel(capacity)
}

impl<T: Batch> BatchSender<T> {
    /// Sends a batch unless `shutdown` comes first: false if the gateway
    /// stops or the pipeline is gone. A batch not yet accepted when
    /// shutdown comes was never ingested, so dropping it loses nothing
    /// accepted.
    pub async fn send_unless(
        &self,
        batch: T,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> bool {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            sent = self.send(batch) => sent.is_ok(),
        }
    }

    /// Sends a batch, waiting while the channel is full (backpressure).
    /// Cancel-safe: a send dropped while waiting leaves no trace.
    pub async fn send(&self, batch: T) -> Result<(), SinkClosed> {
        let permit = self.tx.reserve().await.map_err(|_| SinkClosed)?;
        self.queued
            .fetch_add(batch.items() as u64, Ordering::Relaxed);
        permit.send(batch);
        Ok(())
    }
}

impl<T: Batch> BatchReceiver<T> {
    /// The next batch, or `None` once every sender is dropped and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        let batch = self.rx.recv().await?;
        self.queued
            .fetch_sub(batch.items() as u64, Ordering::Relaxed);
        Some(batch)
    }

    /// The next batch if one is queued right now.
    /// Whether nothing is queued right now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    pub fn try_recv(&mut self) -> Option<T> {
        let batch = self.rx.try_recv().ok()?;
        self.queued
            .fetch_sub(batch.items() as u64, Ordering::Relaxed);
        Some(batch)
    }

    /// A handle that reads how many items are queued.
    pub fn depth_gauge(&self) -> Arc<AtomicU64> {
        self.queued.clone()
    }
}

/// Every southbound driver's configuration; the one registration point of
/// a protocol. Each protocol is a table in the gateway's TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriversConfig {
    /// Simulated devices (`[sim]`). Default: none.
    #[serde(default)]
    pub sim: Option<sim::SimConfig>,
    /// Modbus devices (`[modbus]`). Default: none.
    #[serde(default)]
    pub modbus: Option<modbus::ModbusConfig>,
    /// The MQTT broker and topic rules (`[mqtt]`). Default: none.
    #[serde(default)]
    pub mqtt: Option<mqtt::MqttConfig>,
    /// The CoAP server (`[coap]`). Default: none.
    #[serde(default)]
    pub coap: Option<coap::CoapConfig>,
}

/// A device a driver will produce samples for, with the profile its
/// configuration names (profiles themselves are the gateway's business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBinding {
    pub device: String,
    pub profile: Option<String>,
    /// Key path of the device in the configuration, for error messages.
    pub key_path: String,
}

/// A configuration error found by a driver's own validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key_path}: {reason}")]
pub struct ConfigError {
    /// Where in the TOML file, e.g. `sim.devices[2].points[0].rate`.
    pub key_path: String,
    pub reason: String,
}

impl DriversConfig {
    /// Checks everything serde's types cannot express.
    /// `prefix` is where this table sits in the file (e.g. `drivers`).
    pub fn validate(&self, prefix: &str) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if let Some(sim) = &self.sim {
            sim.validate(&key_path(prefix, "sim"), &mut errors);
        }
        if let Some(modbus) = &self.modbus {
            modbus.validate(&key_path(prefix, "modbus"), &mut errors);
        }
        if let Some(mqtt) = &self.mqtt {
            mqtt.validate(&key_path(prefix, "mqtt"), &mut errors);
        }
        if let Some(coap) = &self.coap {
            coap.validate(&key_path(prefix, "coap"), &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every statically configured device, for profile binding.
    pub fn devices(&self, prefix: &str) -> Vec<DeviceBinding> {
        let mut out = Vec::new();
        if let Some(sim) = &self.sim {
            out.extend(sim.devices(&key_path(prefix, "sim")));
        }
        if let Some(modbus) = &self.modbus {
            out.extend(modbus.devices(&key_path(prefix, "modbus")));
        }
        if let Some(mqtt) = &self.mqtt {
            out.extend(mqtt.devices(&key_path(prefix, "mqtt")));
        }
        if let Some(coap) = &self.coap {
            out.extend(coap.devices(&key_path(prefix, "coap")));
        }
        out
    }

    /// Profiles named for devices only known at run time (MQTT rules, CoAP resources),
    /// with their key paths, so the gateway can check they exist.
    pub fn dynamic_profiles(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = self
            .mqtt
            .as_ref()
            .map(|m| m.profiles(&key_path(prefix, "mqtt")))
            .unwrap_or_default();
        if let Some(coap) = &self.coap {
            out.extend(coap.profiles(&key_path(prefix, "coap")));
        }
        out
    }
}

/// For entries (MQTT rules, CoAP resources) that may fix a device and
/// name a profile: the bindings of the fixed devices, and the profiles of
/// the entries whose devices are only known at run time, each with its
/// key path `path.list[i]`.
pub(crate) fn entry_bindings<'a>(
    path: &str,
    list: &str,
    entries: impl Iterator<Item = (Option<&'a String>, Option<&'a String>)>,
) -> (Vec<DeviceBinding>, Vec<(String, String)>) {
    let mut devices = Vec::new();
    let mut profiles = Vec::new();
    for (i, (device, profile)) in entries.enumerate() {
        let key_path = format!("{path}.{list}[{i}]");
        match device {
            Some(device) => devices.push(DeviceBinding {
                device: device.clone(),
                profile: profile.cloned(),
                key_path,
            }),
            None => profiles.extend(profile.map(|p| (key_path, p.clone()))),
        }
    }
    (devices, profiles)
}

/// `prefix.name`, or `name` at the top level.
fn key_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Runs the future `make` returns on a thread of its own, named `name`,
/// with a single-threaded tokio runtime: for work that blocks (SQLite) or
/// whose CPU time must be told apart (simulators).
pub fn spawn_on_own_runtime<F, Fut>(
    name: &str,
    make: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = name.to_owned();
    std::thread::Builder::new()
        .name(thread.clone())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(make()),
                Err(e) => tracing::error!(thread, error = %e, "cannot start a runtime"),
            }
        })
}

/// Current UTC time in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        // A clock before 1970 is a broken clock; 0 makes that visible.
        Err(_) => 0,
    }
}
