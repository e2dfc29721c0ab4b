//! Southbound protocol drivers of the BIOTA Edge gateway.
//!
//! A driver speaks one protocol to devices and emits raw [`Sample`]s, in
//! [`SampleBatch`]es, into a bounded channel ([`SampleSink`]). It knows
//! nothing of the Common Data Model, the store or the gateway: turning
//! samples into typed, validated readings is the gateway's normalizer's job.
//!
//! Layout: one folder per protocol (`sim/`, `modbus/`, `mqtt/`, `coap/`),
//! each with a `config.rs` holding its `<Proto>Config` (which implements
//! [`DriverConfig`]: validation, the devices it knows, and `build`, which
//! returns the running [`Component`]) and the task `<Proto>Driver`. The
//! `drivers!` list below is the one place a protocol is registered: one
//! line makes its module, its `[drivers.<name>]` section and its place in
//! [`DriversConfig`]'s iteration.
//! Payload formats several drivers read (JSON, SenML, topic patterns) are
//! in [`payload`], so no protocol imports another.
//!
//! *Architecture invariant:* this crate never depends on `biota-gateway`
//! or `biota-node`; what it shares with them comes from `biota-common`.

pub mod command;
pub mod component;
pub mod payload;
pub mod stats;

pub use component::{BuildContext, Component, DriverConfig, DriverError};

component::drivers! {
    /// Simulated devices (`[drivers.sim]`): dry runs and the demo. Default: none.
    sim: sim::SimConfig,
    /// Modbus TCP and RTU devices (`[drivers.modbus]`). Default: none.
    modbus: modbus::ModbusConfig,
    /// The embedded MQTT broker, topic rules and upstream brokers (`[drivers.mqtt]`). Default: none.
    mqtt: mqtt::MqttConfig,
    /// The CoAP server and observed resources (`[drivers.coap]`). Default: none.
    coap: coap::CoapConfig,
}

use std::sync::Arc;

use biota_common::channel::{Batch, BatchReceiver, BatchSender, batch_channel};

/// Log targets of third-party crates the drivers use whose routine
/// messages are noise (rumqttd logs a client that disconnects early as an
/// error); the binary silences them unless asked (`BIOTA_LOG`). The
/// drivers log what matters themselves.
pub const QUIET_LOG_TARGETS: &[&str] = &["rumqttd"];

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

impl Batch for SampleBatch {
    fn items(&self) -> usize {
        self.samples.len()
    }
}

/// What every driver gets to hand its samples to the gateway.
pub type SampleSink = BatchSender<SampleBatch>;
/// Where the gateway's normalizer takes samples from.
pub type SampleSource = BatchReceiver<SampleBatch>;

/// A bounded sample channel holding at most `capacity` batches.
pub fn sample_channel(capacity: usize) -> (SampleSink, SampleSource) {
    batch_channel(capacity)
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
