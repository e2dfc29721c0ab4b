//! Sparkplug B ingest: the `spBv1.0/...` topic namespace, the Eclipse Tahu
//! protobuf payload, and the per-edge-node session state that the payloads
//! only make sense with (aliases declared in births, sequence numbers,
//! last values to mark bad when a node or device dies).
//!
//! - Topics: `spBv1.0/{group}/{TYPE}/{edge_node}[/{device}]`. NBIRTH,
//!   NDATA, NDEATH, DBIRTH, DDATA and DDEATH are read; NCMD, DCMD and STATE
//!   (commands and host state, not measurements) are ignored silently.
//! - Devices: `{group}:{edge_node}` for node metrics and
//!   `{group}:{edge_node}:{device}` for device metrics, every character
//!   outside `[A-Za-z0-9_.-]` of an id replaced by `_` (`:` separates the
//!   parts). Points: the metric name, with characters a point may not hold
//!   (outside `[A-Za-z0-9_.:/-]`, e.g. spaces) replaced by `_`.
//! - State is bounded ([`MAX_NODES`], [`MAX_TRACKED`]); what does not fit
//!   is still stored when the metric carries its name, and counted as
//!   `too_many_metrics`.
//!
//! The message structs below are the subset of Tahu's `sparkplug_b.proto`
//! the gateway reads, written by hand for prost's derive (no protoc in the
//! build). Fields not declared here (metadata, nested property sets) are
//! skipped by prost as unknown fields; DataSet, Template and extension
//! values are kept as raw bytes only to tell that they were there.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message as _;

use crate::payload::decode::DecodeError;
use crate::{RawValue, Sample, SampleQuality};

/// Edge nodes tracked at most; a message of a further node is rejected
/// (`too_many_metrics`).
pub const MAX_NODES: usize = 10_000;
/// Metric names, aliases and devices tracked at most, over every node.
pub const MAX_TRACKED: usize = 100_000;
/// Text and bytes values longer than this are not kept as a metric's last
/// value (so a death stores no sample for them): bounded memory.
const MAX_LAST_VALUE: usize = 1024;

/// Tahu's `Payload` (the fields the gateway reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch (UTC).
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0–255, per edge node; NBIRTH resets it.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// Tahu's `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the Unix epoch (UTC).
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`datatype`] code.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
    pub value: Option<MetricValue>,
}

/// `Metric.value`. Small integers travel in `int_value`, 64-bit ones and
/// DateTime in `long_value`, both unsigned: negative numbers arrive as
/// two's complement.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
    /// A DataSet message, not decoded (wire-compatible with bytes).
    #[prost(bytes = "vec", tag = "17")]
    DatasetValue(Vec<u8>),
    /// A Template message, not decoded.
    #[prost(bytes = "vec", tag = "18")]
    TemplateValue(Vec<u8>),
    /// An extension, not decoded.
    #[prost(bytes = "vec", tag = "19")]
    ExtensionValue(Vec<u8>),
}

/// Tahu's `Payload.PropertySet`: `keys[i]` names `values[i]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// Tahu's `Payload.PropertyValue` (scalar values only; nested property
/// sets are skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyValueKind", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyValueKind>,
}

/// `PropertyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueKind {
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    #[prost(float, tag = "5")]
    FloatValue(f32),
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    #[prost(string, tag = "8")]
    StringValue(String),
}

/// Sparkplug B datatype codes (Tahu's `DataType` enum).
pub mod datatype {
    pub const UNKNOWN: u32 = 0;
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
    pub const UUID: u32 = 15;
    pub const DATASET: u32 = 16;
    pub const BYTES: u32 = 17;
    pub const FILE: u32 = 18;
    pub const TEMPLATE: u32 = 19;
}

/// The message types the gateway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NBirth,
    NData,
    NDeath,
    DBirth,
    DData,
    DDeath,
}

/// A topic of the namespace, split.
struct Topic<'t> {
    group: &'t str,
    kind: Kind,
    node: &'t str,
    device: Option<&'t str>,
}

fn err(reason: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError {
        reason,
        detail: detail.into(),
    }
}

/// Splits a topic; `Ok(None)` for the messages the gateway ignores
/// (commands and host state).
fn parse_topic(topic: &str) -> Result<Option<Topic<'_>>, DecodeError> {
    let bad = |why: &str| err("bad_topic", format!("not a Sparkplug B topic: {why}"));
    let levels: Vec<&str> = topic.split('/').collect();
    if levels.first() != Some(&"spBv1.0") {
        return Err(bad("the namespace is not spBv1.0"));
    }
    // Sparkplug 3.0's host state is `spBv1.0/STATE/{host_id}`.
    if levels.get(1) == Some(&"STATE") {
        return Ok(None);
    }
    let (Some(&group), Some(&kind), Some(&node)) = (levels.get(1), levels.get(2), levels.get(3))
    else {
        return Err(bad(
            "spBv1.0/{group}/{type}/{edge_node}[/{device}] expected",
        ));
    };
    let kind = match kind {
        "NBIRTH" => Kind::NBirth,
        "NDATA" => Kind::NData,
        "NDEATH" => Kind::NDeath,
        "DBIRTH" => Kind::DBirth,
        "DDATA" => Kind::DData,
        "DDEATH" => Kind::DDeath,
        "NCMD" | "DCMD" | "STATE" => return Ok(None),
        other => return Err(bad(&format!("unknown message type {other}"))),
    };
    let device_level = matches!(kind, Kind::DBirth | Kind::DData | Kind::DDeath);
    let device = levels.get(4).copied();
    if levels.len() != 4 + usize::from(device_level) {
        return Err(bad(if device_level {
            "a device message has 5 levels"
        } else {
            "a node message has 4 levels"
        }));
    }
    if group.is_empty() || node.is_empty() || device == Some("") {
        return Err(bad("an empty group, edge node or device id"));
    }
    Ok(Some(Topic {
        group,
        kind,
        node,
        device,
    }))
}

/// One part of a device id: what a device id may not hold becomes `_`
/// (`:` too: it separates the parts).
fn id_part(out: &mut String, part: &str) {
    out.extend(part.chars().map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            c
        } else {
            '_'
        }
    }));
}

fn device_id(parts: &[&str]) -> Arc<str> {
    let mut id = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            id.push(':');
        }
        id_part(&mut id, part);
    }
    id.into()
}

/// A metric name as a point: what a point may not hold becomes `_`.
fn point_name(name: &str) -> Arc<str> {
    let point: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    point.into()
}

/// What is known of one metric of a node or device.
#[derive(Debug)]
struct Tracked {
    point: Arc<str>,
    /// From the birth (data messages may leave it out).
    datatype: Option<u32>,
    /// The `engUnit` property.
    unit: Option<Arc<str>>,
    /// The last live value: what a death marks bad.
    last: Option<RawValue>,
}

/// The metrics of a node (its own) or of one of its devices.
#[derive(Debug)]
struct Scope {
    device: Arc<str>,
    /// Alias → metric name, from the birth.
    aliases: HashMap<u64, Arc<str>>,
    /// Metric name → what is known of it.
    metrics: HashMap<Arc<str>, Tracked>,
}

impl Scope {
    fn new(device: Arc<str>) -> Self {
        Self {
            device,
            aliases: HashMap::new(),
            metrics: HashMap::new(),
        }
    }

    /// Entries counted against [`MAX_TRACKED`].
    fn size(&self) -> usize {
        self.aliases.len() + self.metrics.len()
    }

    /// Forgets the metrics (a new birth); returns how many entries went.
    fn clear(&mut self) -> usize {
        let size = self.size();
        self.aliases.clear();
        self.metrics.clear();
        size
    }

    /// One bad sample per metric with a last value, which is then
    /// forgotten (a second death marks nothing again).
    fn die(&mut self, out: &mut Vec<Sample>) {
        for tracked in self.metrics.values_mut() {
            if let Some(value) = tracked.last.take() {
                out.push(Sample {
                    device: self.device.clone(),
                    point: tracked.point.clone(),
                    value,
                    // The death is seen now; a will message's timestamp
                    // is when the node connected.
                    device_time: None,
                    quality: SampleQuality::Bad,
                    unit: tracked.unit.clone(),
                });
            }
        }
    }
}

/// One edge node's session.
#[derive(Debug)]
struct Node {
    /// The node's own metrics.
    scope: Scope,
    devices: HashMap<String, Scope>,
    /// The last sequence number seen.
    seq: Option<u8>,
    /// The NBIRTH's `bdSeq` metric: an NDEATH with another one is stale.
    bd_seq: Option<u64>,
}

/// The Sparkplug B state of every edge node seen, and the decoder.
#[derive(Debug, Default)]
pub struct Sparkplug {
    /// Group id → edge node id → session.
    groups: HashMap<String, HashMap<String, Node>>,
    nodes: usize,
    /// Metric names, aliases and devices held, over every node.
    tracked: usize,
}

/// The budget of tracked entries, shared by every scope.
struct Budget<'a> {
    used: &'a mut usize,
}

impl Budget<'_> {
    fn take(&mut self) -> bool {
        if *self.used < MAX_TRACKED {
            *self.used += 1;
            true
        } else {
            false
        }
    }
}

impl Sparkplug {
    /// The samples of one message on `topic`, and the errors of the parts
    /// of it that could not be used (counted by the caller); `Err` when
    /// nothing of it could be used.
    pub fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
    ) -> Result<(Vec<Sample>, Vec<DecodeError>), DecodeError> {
        let Some(t) = parse_topic(topic)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let payload = Payload::decode(payload).map_err(|e| {
            err(
                "malformed_sparkplug",
                format!("not a Sparkplug B payload: {e}"),
            )
        })?;
        let mut samples = Vec::new();
        let mut errors = Vec::new();
        let Self {
            groups,
            nodes,
            tracked,
        } = self;
        let mut budget = Budget { used: tracked };

        // A death of a node or device never seen has nothing to mark.
        let known = groups.get(t.group).and_then(|g| g.get(t.node)).is_some();
        if !known && matches!(t.kind, Kind::NDeath | Kind::DDeath) {
            return Ok((samples, errors));
        }
        if !known && *nodes >= MAX_NODES {
            return Err(err(
                "too_many_metrics",
                format!(
                    "more than {MAX_NODES} edge nodes; {} is not tracked",
                    t.node
                ),
            ));
        }
        if !known {
            *nodes += 1;
            groups.entry(t.group.to_owned()).or_default().insert(
                t.node.to_owned(),
                Node {
                    scope: Scope::new(device_id(&[t.group, t.node])),
                    devices: HashMap::new(),
                    seq: None,
                    bd_seq: None,
                },
            );
        }
        // Looked up again rather than kept from the insert: the common
        // case (a known node) then allocates nothing.
        let Some(node) = groups.get_mut(t.group).and_then(|g| g.get_mut(t.node)) else {
            return Ok((samples, errors));
        };

        let seq = payload.seq.and_then(|s| u8::try_from(s).ok());
        match t.kind {
            // A new session: the sequence starts again (at 0).
            Kind::NBirth => node.seq = seq,
            // A death is the broker's will: no sequence number.
            Kind::NDeath => {}
            _ => {
                if let (Some(prev), Some(s)) = (node.seq, seq)
                    && s != prev.wrapping_add(1)
                {
                    errors.push(err(
                        "seq_gap",
                        format!(
                            "edge node {}: seq {s} after {prev} (messages lost or reordered); data kept",
                            t.node
                        ),
                    ));
                }
                if seq.is_some() {
                    node.seq = seq;
                }
            }
        }

        match t.kind {
            Kind::NDeath => {
                let bd_seq = bd_seq(&payload);
                if let (Some(born), Some(died)) = (node.bd_seq, bd_seq)
                    && born != died
                {
                    return Err(err(
                        "stale_death",
                        format!(
                            "edge node {}: NDEATH bdSeq {died} is not the NBIRTH's {born} (an earlier session's will)",
                            t.node
                        ),
                    ));
                }
                node.scope.die(&mut samples);
                for device in node.devices.values_mut() {
                    device.die(&mut samples);
                }
                node.seq = None;
                return Ok((samples, errors));
            }
            Kind::NBirth => {
                // The node's devices are born again after it.
                *budget.used -= node.scope.clear();
                for (_, device) in node.devices.drain() {
                    *budget.used -= device.size() + 1;
                }
                node.bd_seq = bd_seq(&payload);
            }
            _ => {}
        }

        let scope = match t.device {
            None => &mut node.scope,
            Some(device) => {
                if !node.devices.contains_key(device) {
                    if t.kind == Kind::DDeath {
                        return Ok((samples, errors));
                    }
                    if !budget.take() {
                        return Err(err(
                            "too_many_metrics",
                            format!(
                                "more than {MAX_TRACKED} metrics, aliases and devices; device {device} is not tracked"
                            ),
                        ));
                    }
                    node.devices.insert(
                        device.to_owned(),
                        Scope::new(device_id(&[t.group, t.node, device])),
                    );
                }
                node.devices
                    .get_mut(device)
                    .expect("the device was just inserted")
            }
        };
        match t.kind {
            Kind::DDeath => scope.die(&mut samples),
            Kind::NBirth | Kind::DBirth => {
                if t.kind == Kind::DBirth {
                    *budget.used -= scope.clear();
                }
                for metric in &payload.metrics {
                    ingest(
                        scope,
                        metric,
                        payload.timestamp,
                        true,
                        &mut budget,
                        &mut samples,
                        &mut errors,
                    );
                }
            }
            Kind::NData | Kind::DData => {
                for metric in &payload.metrics {
                    ingest(
                        scope,
                        metric,
                        payload.timestamp,
                        false,
                        &mut budget,
                        &mut samples,
                        &mut errors,
                    );
                }
            }
            Kind::NDeath => {}
        }
        Ok((samples, errors))
    }
}

/// The `bdSeq` metric of a birth or death payload.
fn bd_seq(payload: &Payload) -> Option<u64> {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| match m.value {
            Some(MetricValue::LongValue(v)) => Some(v),
            Some(MetricValue::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// Milliseconds since the epoch → nanoseconds (`None` past i64).
fn ms_to_ns(ms: u64) -> Option<i64> {
    i64::try_from(ms).ok()?.checked_mul(1_000_000)
}

/// The `engUnit` property, if it is a string.
fn eng_unit(metric: &Metric) -> Option<&str> {
    let props = metric.properties.as_ref()?;
    let i = props.keys.iter().position(|k| k == "engUnit")?;
    match props.values.get(i)?.value.as_ref()? {
        PropertyValueKind::StringValue(unit) if !unit.is_empty() => Some(unit),
        _ => None,
    }
}

/// One metric of a birth or data message: remembered (births declare
/// names, aliases, types and units) and turned into a sample.
fn ingest(
    scope: &mut Scope,
    metric: &Metric,
    payload_time: Option<u64>,
    birth: bool,
    budget: &mut Budget<'_>,
    samples: &mut Vec<Sample>,
    errors: &mut Vec<DecodeError>,
) {
    let name: Arc<str> = match (&metric.name, metric.alias) {
        (Some(name), _) if !name.is_empty() => name.as_str().into(),
        (_, Some(alias)) if !birth => match scope.aliases.get(&alias) {
            Some(name) => name.clone(),
            None => {
                errors.push(err(
                    "unknown_alias",
                    format!(
                        "{}: alias {alias} was not declared by a birth",
                        scope.device
                    ),
                ));
                return;
            }
        },
        _ => {
            errors.push(err(
                "malformed_sparkplug",
                format!(
                    "{}: a {} metric without a name",
                    scope.device,
                    if birth { "birth" } else { "data" }
                ),
            ));
            return;
        }
    };
    let unit = eng_unit(metric);
    if !scope.metrics.contains_key(&name) {
        if budget.take() {
            scope.metrics.insert(
                name.clone(),
                Tracked {
                    point: point_name(&name),
                    datatype: None,
                    unit: None,
                    last: None,
                },
            );
        } else {
            errors.push(err(
                "too_many_metrics",
                format!(
                    "more than {MAX_TRACKED} metrics, aliases and devices; {}/{name} is stored but not tracked",
                    scope.device
                ),
            ));
        }
    }
    if birth
        && let Some(alias) = metric.alias
        && scope.metrics.contains_key(&name)
    {
        if let Some(old) = scope.aliases.get_mut(&alias) {
            *old = name.clone();
        } else if budget.take() {
            scope.aliases.insert(alias, name.clone());
        } else {
            errors.push(err(
                "too_many_metrics",
                format!(
                    "more than {MAX_TRACKED} metrics, aliases and devices; alias {alias} of {}/{name} is not tracked",
                    scope.device
                ),
            ));
        }
    }
    let tracked = scope.metrics.get_mut(&name);
    let (point, datatype, unit) = match tracked {
        Some(t) => {
            if metric.datatype.is_some() {
                t.datatype = metric.datatype;
            }
            if let Some(unit) = unit
                && t.unit.as_deref() != Some(unit)
            {
                t.unit = Some(unit.into());
            }
            (t.point.clone(), t.datatype, t.unit.clone())
        }
        None => (point_name(&name), metric.datatype, unit.map(Arc::from)),
    };
    if metric.is_null == Some(true) || metric.value.is_none() {
        // Null: no reading; the last value stays what it was.
        return;
    }
    let value = match value(datatype, metric.value.as_ref()) {
        Ok(v) => v,
        Err((reason, why)) => {
            errors.push(err(reason, format!("{}/{name}: {why}", scope.device)));
            return;
        }
    };
    let live = metric.is_historical != Some(true);
    if live && let Some(t) = scope.metrics.get_mut(&name) {
        let small = match &value {
            RawValue::Text(s) => s.len() <= MAX_LAST_VALUE,
            RawValue::Bytes(b) => b.len() <= MAX_LAST_VALUE,
            _ => true,
        };
        t.last = small.then(|| value.clone());
    }
    samples.push(Sample {
        device: scope.device.clone(),
        point,
        value,
        device_time: metric.timestamp.or(payload_time).and_then(ms_to_ns),
        quality: SampleQuality::Good,
        unit,
    });
}

/// A float as the decimal the device meant: `0.1f32` is 0.1, not
/// 0.10000000149011612.
fn float(f: f32) -> f64 {
    if f.is_finite() {
        f.to_string().parse().unwrap_or(f64::from(f))
    } else {
        f64::from(f)
    }
}

/// A metric's value by its datatype (`None`: the birth did not say; the
/// value field decides). Errors are (reason, why).
fn value(
    code: Option<u32>,
    value: Option<&MetricValue>,
) -> Result<RawValue, (&'static str, String)> {
    use MetricValue as V;
    use datatype as dt;
    let Some(v) = value else {
        return Err(("malformed_sparkplug", "no value".into()));
    };
    let unsupported = |what: &str| Err(("unsupported_datatype", format!("{what} is not stored")));
    // Integers in either field: Tahu's Python puts UInt32 in int_value,
    // its Java in long_value.
    let int = match v {
        V::IntValue(i) => Some(u64::from(*i)),
        V::LongValue(l) => Some(*l),
        _ => None,
    };
    let mismatch = |name: &str| {
        Err((
            "malformed_sparkplug",
            format!("a {name} metric with a {} value", field_name(v)),
        ))
    };
    let unsigned = |name: &str, max: u64| match int {
        Some(u) if u <= max => Ok(RawValue::I64(u as i64)),
        Some(u) => Err((
            "malformed_sparkplug",
            format!("{u} is out of range for {name}"),
        )),
        None => mismatch(name),
    };
    match (code.unwrap_or(dt::UNKNOWN), v) {
        // Signed integers are two's complement in an unsigned field,
        // sign-extended to 32 or 64 bits (Java: Int8 -1 is 4294967295)
        // or not (Python: 255): the low bits are the value either way.
        (dt::INT8, _) => int.map_or_else(
            || mismatch("Int8"),
            |u| Ok(RawValue::I64(i64::from(u as u8 as i8))),
        ),
        (dt::INT16, _) => int.map_or_else(
            || mismatch("Int16"),
            |u| Ok(RawValue::I64(i64::from(u as u16 as i16))),
        ),
        (dt::INT32, _) => int.map_or_else(
            || mismatch("Int32"),
            |u| Ok(RawValue::I64(i64::from(u as u32 as i32))),
        ),
        (dt::INT64, _) => int.map_or_else(|| mismatch("Int64"), |u| Ok(RawValue::I64(u as i64))),
        (dt::UINT8, _) => unsigned("UInt8", u8::MAX.into()),
        (dt::UINT16, _) => unsigned("UInt16", u16::MAX.into()),
        (dt::UINT32, _) => unsigned("UInt32", u32::MAX.into()),
        (dt::UINT64, _) => int.map_or_else(|| mismatch("UInt64"), |u| Ok(RawValue::U64(u))),
        // DateTime: milliseconds since the epoch, kept as that number.
        (dt::DATETIME, _) => {
            int.map_or_else(|| mismatch("DateTime"), |u| Ok(RawValue::I64(u as i64)))
        }
        (dt::FLOAT | dt::DOUBLE | dt::UNKNOWN, V::FloatValue(f)) => Ok(RawValue::F64(float(*f))),
        (dt::FLOAT | dt::DOUBLE | dt::UNKNOWN, V::DoubleValue(d)) => Ok(RawValue::F64(*d)),
        (dt::BOOLEAN | dt::UNKNOWN, V::BooleanValue(b)) => Ok(RawValue::Bool(*b)),
        (dt::STRING | dt::TEXT | dt::UUID | dt::UNKNOWN, V::StringValue(s)) => {
            Ok(RawValue::Text(s.clone()))
        }
        (dt::BYTES | dt::FILE | dt::UNKNOWN, V::BytesValue(b)) => Ok(RawValue::Bytes(b.clone())),
        // Without a datatype, a plain integer field is what it says.
        (dt::UNKNOWN, V::IntValue(i)) => Ok(RawValue::I64(i64::from(*i))),
        (dt::UNKNOWN, V::LongValue(l)) => Ok(RawValue::U64(*l)),
        (dt::DATASET, _) | (dt::UNKNOWN, V::DatasetValue(_)) => unsupported("a DataSet"),
        (dt::TEMPLATE, _) | (dt::UNKNOWN, V::TemplateValue(_)) => unsupported("a Template"),
        (dt::UNKNOWN, V::ExtensionValue(_)) => unsupported("an extension value"),
        (20 | 21, _) => unsupported("a PropertySet"),
        (22..=34, _) => unsupported("an array"),
        (dt::FLOAT, _) => mismatch("Float"),
        (dt::DOUBLE, _) => mismatch("Double"),
        (dt::BOOLEAN, _) => mismatch("Boolean"),
        (dt::STRING | dt::TEXT | dt::UUID, _) => mismatch("String"),
        (dt::BYTES | dt::FILE, _) => mismatch("Bytes"),
        (other, _) => unsupported(&format!("datatype {other}")),
    }
}

fn field_name(v: &MetricValue) -> &'static str {
    match v {
        MetricValue::IntValue(_) => "int_value",
        MetricValue::LongValue(_) => "long_value",
        MetricValue::FloatValue(_) => "float_value",
        MetricValue::DoubleValue(_) => "double_value",
        MetricValue::BooleanValue(_) => "boolean_value",
        MetricValue::StringValue(_) => "string_value",
        MetricValue::BytesValue(_) => "bytes_value",
        MetricValue::DatasetValue(_) => "dataset_value",
        MetricValue::TemplateValue(_) => "template_value",
        MetricValue::ExtensionValue(_) => "extension_value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetricValue as V;
    use datatype as dt;

    fn metric(name: &str, alias: Option<u64>, datatype: u32, value: MetricValue) -> Metric {
        Metric {
            name: (!name.is_empty()).then(|| name.to_owned()),
            alias,
            datatype: Some(datatype),
            value: Some(value),
            ..Metric::default()
        }
    }

    /// A data metric: alias only, no name and no datatype (as births
    /// declared them).
    fn by_alias(alias: u64, value: MetricValue) -> Metric {
        Metric {
            alias: Some(alias),
            value: Some(value),
            ..Metric::default()
        }
    }

    fn payload(seq: Option<u64>, timestamp: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp,
            metrics,
            seq,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    type Got = (Vec<Sample>, Vec<DecodeError>);

    fn decode(sp: &mut Sparkplug, topic: &str, bytes: &[u8]) -> Got {
        sp.decode(topic, bytes).expect(topic)
    }

    fn values(samples: &[Sample]) -> Vec<(&str, &str, &RawValue, SampleQuality)> {
        let mut v: Vec<_> = samples
            .iter()
            .map(|s| (&*s.device, &*s.point, &s.value, s.quality))
            .collect();
        v.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        v
    }

    fn reasons(errors: &[DecodeError]) -> Vec<&'static str> {
        errors.iter().map(|e| e.reason).collect()
    }

    const T0: u64 = 1_700_000_000_123;

    #[test]
    fn every_datatype_decodes_including_negative_small_ints() {
        let mut sp = Sparkplug::default();
        let mut unit = metric("temp", None, dt::FLOAT, V::FloatValue(0.1));
        unit.properties = Some(PropertySet {
            keys: vec!["engUnit".into()],
            values: vec![PropertyValue {
                r#type: Some(dt::STRING),
                value: Some(PropertyValueKind::StringValue("Cel".into())),
                ..PropertyValue::default()
            }],
        });
        unit.timestamp = Some(T0 + 5);
        let metrics = vec![
            // Java's encoding (sign-extended to 32 bits) and Python's (not).
            metric("i8_java", None, dt::INT8, V::IntValue(4_294_967_295)),
            metric("i8_python", None, dt::INT8, V::IntValue(255)),
            metric("i8_max", None, dt::INT8, V::IntValue(127)),
            metric("i16", None, dt::INT16, V::IntValue(4_294_934_528)), // -32768
            metric("i16_python", None, dt::INT16, V::IntValue(65_534)),
            metric("i32", None, dt::INT32, V::IntValue(u32::MAX - 2)),
            // Int32 in long_value, sign-extended to 64 bits.
            metric("i32_long", None, dt::INT32, V::LongValue(u64::MAX)),
            metric("i64", None, dt::INT64, V::LongValue(u64::MAX - 3)),
            metric("u8", None, dt::UINT8, V::IntValue(200)),
            metric("u16", None, dt::UINT16, V::IntValue(65_535)),
            metric("u32_int", None, dt::UINT32, V::IntValue(u32::MAX)),
            metric(
                "u32_long",
                None,
                dt::UINT32,
                V::LongValue(u64::from(u32::MAX)),
            ),
            metric("u64", None, dt::UINT64, V::LongValue(u64::MAX)),
            unit,
            metric("double", None, dt::DOUBLE, V::DoubleValue(-1.5e300)),
            metric("on", None, dt::BOOLEAN, V::BooleanValue(true)),
            metric("mode", None, dt::STRING, V::StringValue("AUTO".into())),
            metric("note", None, dt::TEXT, V::StringValue("long text".into())),
            metric("id", None, dt::UUID, V::StringValue("2f1c-uuid".into())),
            metric("at", None, dt::DATETIME, V::LongValue(T0)),
            metric("raw", None, dt::BYTES, V::BytesValue(vec![0, 1, 255])),
            metric("file", None, dt::FILE, V::BytesValue(b"PK".to_vec())),
            metric("table", None, dt::DATASET, V::DatasetValue(vec![8, 1])),
            metric("udt", None, dt::TEMPLATE, V::TemplateValue(vec![])),
            metric("u8_big", None, dt::UINT8, V::IntValue(256)),
            metric("f_as_text", None, dt::FLOAT, V::StringValue("1.0".into())),
            metric("array", None, 22, V::BytesValue(vec![1, 2])),
        ];
        let (samples, errors) = decode(
            &mut sp,
            "spBv1.0/plant A/NBIRTH/edge:1",
            &payload(Some(0), Some(T0), metrics),
        );
        let got: HashMap<&str, &Sample> = samples.iter().map(|s| (&*s.point, s)).collect();
        let v = |p: &str| &got.get(p).unwrap_or_else(|| panic!("{p}")).value;
        assert_eq!(v("i8_java"), &RawValue::I64(-1));
        assert_eq!(v("i8_python"), &RawValue::I64(-1));
        assert_eq!(v("i8_max"), &RawValue::I64(127));
        assert_eq!(v("i16"), &RawValue::I64(-32768));
        assert_eq!(v("i16_python"), &RawValue::I64(-2));
        assert_eq!(v("i32"), &RawValue::I64(-3));
        assert_eq!(v("i32_long"), &RawValue::I64(-1));
        assert_eq!(v("i64"), &RawValue::I64(-4));
        assert_eq!(v("u8"), &RawValue::I64(200));
        assert_eq!(v("u16"), &RawValue::I64(65_535));
        assert_eq!(v("u32_int"), &RawValue::I64(4_294_967_295));
        assert_eq!(v("u32_long"), &RawValue::I64(4_294_967_295));
        assert_eq!(v("u64"), &RawValue::U64(u64::MAX));
        assert_eq!(v("temp"), &RawValue::F64(0.1));
        assert_eq!(v("double"), &RawValue::F64(-1.5e300));
        assert_eq!(v("on"), &RawValue::Bool(true));
        assert_eq!(v("mode"), &RawValue::Text("AUTO".into()));
        assert_eq!(v("note"), &RawValue::Text("long text".into()));
        assert_eq!(v("id"), &RawValue::Text("2f1c-uuid".into()));
        assert_eq!(v("at"), &RawValue::I64(T0 as i64));
        assert_eq!(v("raw"), &RawValue::Bytes(vec![0, 1, 255]));
        assert_eq!(v("file"), &RawValue::Bytes(b"PK".to_vec()));
        assert_eq!(samples.len(), 22);
        assert_eq!(
            reasons(&errors),
            [
                "unsupported_datatype",
                "unsupported_datatype",
                "malformed_sparkplug",
                "malformed_sparkplug",
                "unsupported_datatype",
            ]
        );
        // Device id: group and edge node, sanitized; the payload's time
        // unless the metric has its own; engUnit as the unit.
        let temp = got["temp"];
        assert_eq!(&*temp.device, "plant_A:edge_1");
        assert_eq!(temp.device_time, Some((T0 as i64 + 5) * 1_000_000));
        assert_eq!(temp.unit.as_deref(), Some("Cel"));
        assert_eq!(temp.quality, SampleQuality::Good);
        assert_eq!(got["on"].device_time, Some(T0 as i64 * 1_000_000));
        assert_eq!(got["on"].unit, None);
    }

    /// NBIRTH (with bdSeq), DBIRTH, both with aliases.
    fn born(sp: &mut Sparkplug) {
        let (s, e) = decode(
            sp,
            "spBv1.0/g/NBIRTH/n",
            &payload(
                Some(0),
                Some(T0),
                vec![
                    metric("bdSeq", None, dt::INT64, V::LongValue(7)),
                    metric(
                        "Node Control/Rebirth",
                        Some(1),
                        dt::BOOLEAN,
                        V::BooleanValue(false),
                    ),
                    metric("cpu", Some(2), dt::FLOAT, V::FloatValue(12.5)),
                ],
            ),
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.len(), 3);
        let (s, e) = decode(
            sp,
            "spBv1.0/g/DBIRTH/n/pump 1",
            &payload(
                Some(1),
                Some(T0),
                vec![
                    metric("speed", Some(1), dt::INT16, V::IntValue(10)),
                    metric("state", Some(2), dt::STRING, V::StringValue("RUN".into())),
                    metric("silent", Some(3), dt::DOUBLE, V::DoubleValue(0.0)),
                ],
            ),
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn aliases_resolve_per_node_and_device_and_unknown_ones_are_counted() {
        let mut sp = Sparkplug::default();
        born(&mut sp);
        let (s, e) = decode(
            &mut sp,
            "spBv1.0/g/NDATA/n",
            &payload(Some(2), Some(T0), vec![by_alias(2, V::FloatValue(13.0))]),
        );
        assert!(e.is_empty());
        assert_eq!(
            values(&s),
            [("g:n", "cpu", &RawValue::F64(13.0), SampleQuality::Good)]
        );
        // Alias 1 is `speed` on the device, `Node Control/Rebirth` on the
        // node; the birth's Int16 reads 65535 as -1; alias 9 is unknown.
        let mut null = by_alias(3, V::DoubleValue(0.0));
        null.is_null = Some(true);
        null.value = None;
        let (s, e) = decode(
            &mut sp,
            "spBv1.0/g/DDATA/n/pump 1",
            &payload(
                Some(3),
                Some(T0),
                vec![
                    by_alias(1, V::IntValue(65_535)),
                    by_alias(9, V::IntValue(1)),
                    by_alias(2, V::StringValue("STOP".into())),
                    null,
                ],
            ),
        );
        assert_eq!(reasons(&e), ["unknown_alias"]);
        assert_eq!(
            values(&s),
            [
                (
                    "g:n:pump_1",
                    "speed",
                    &RawValue::I64(-1),
                    SampleQuality::Good
                ),
                (
                    "g:n:pump_1",
                    "state",
                    &RawValue::Text("STOP".into()),
                    SampleQuality::Good
                ),
            ]
        );
        // A node metric's name is sanitized into a point.
        let (s, _) = decode(
            &mut sp,
            "spBv1.0/g/NDATA/n",
            &payload(Some(4), None, vec![by_alias(1, V::BooleanValue(true))]),
        );
        assert_eq!(&*s[0].point, "Node_Control/Rebirth");
        assert_eq!(s[0].device_time, None);
        // Data before any birth: names work, aliases cannot.
        let (s, e) = decode(
            &mut sp,
            "spBv1.0/g/NDATA/other",
            &payload(
                None,
                None,
                vec![
                    metric("x", None, dt::UINT8, V::IntValue(3)),
                    by_alias(1, V::IntValue(1)),
                ],
            ),
        );
        assert_eq!(reasons(&e), ["unknown_alias"]);
        assert_eq!(
            values(&s),
            [("g:other", "x", &RawValue::I64(3), SampleQuality::Good)]
        );
    }

    #[test]
    fn deaths_mark_last_values_bad() {
        let mut sp = Sparkplug::default();
        born(&mut sp);
        decode(
            &mut sp,
            "spBv1.0/g/DDATA/n/pump 1",
            &payload(Some(2), None, vec![by_alias(1, V::IntValue(42))]),
        );
        // DDEATH: the device's metrics only, with their last values.
        let (s, e) = decode(
            &mut sp,
            "spBv1.0/g/DDEATH/n/pump 1",
            &payload(Some(3), None, vec![]),
        );
        assert!(e.is_empty());
        assert_eq!(
            values(&s),
            [
                (
                    "g:n:pump_1",
                    "silent",
                    &RawValue::F64(0.0),
                    SampleQuality::Bad
                ),
                (
                    "g:n:pump_1",
                    "speed",
                    &RawValue::I64(42),
                    SampleQuality::Bad
                ),
                (
                    "g:n:pump_1",
                    "state",
                    &RawValue::Text("RUN".into()),
                    SampleQuality::Bad
                ),
            ]
        );
        assert!(s.iter().all(|s| s.device_time.is_none()));
        // The device is born again; an NDEATH of an earlier session
        // (another bdSeq) is stale and marks nothing.
        decode(
            &mut sp,
            "spBv1.0/g/DBIRTH/n/pump 1",
            &payload(
                Some(4),
                None,
                vec![metric("speed", Some(1), dt::INT16, V::IntValue(5))],
            ),
        );
        let death = |bd| {
            payload(
                None,
                None,
                vec![metric("bdSeq", None, dt::INT64, V::LongValue(bd))],
            )
        };
        let e = sp.decode("spBv1.0/g/NDEATH/n", &death(6)).unwrap_err();
        assert_eq!(e.reason, "stale_death");
        // NDEATH: the node's metrics and every device's.
        let (s, e) = decode(&mut sp, "spBv1.0/g/NDEATH/n", &death(7));
        assert!(e.is_empty());
        assert_eq!(
            values(&s),
            [
                (
                    "g:n",
                    "Node_Control/Rebirth",
                    &RawValue::Bool(false),
                    SampleQuality::Bad
                ),
                ("g:n", "bdSeq", &RawValue::I64(7), SampleQuality::Bad),
                ("g:n", "cpu", &RawValue::F64(12.5), SampleQuality::Bad),
                ("g:n:pump_1", "speed", &RawValue::I64(5), SampleQuality::Bad),
            ]
        );
        // Dead already: nothing more to mark; unknown nodes neither.
        assert!(
            decode(&mut sp, "spBv1.0/g/NDEATH/n", &death(7))
                .0
                .is_empty()
        );
        assert!(
            decode(&mut sp, "spBv1.0/g/NDEATH/nobody", &death(1))
                .0
                .is_empty()
        );
        assert!(
            decode(&mut sp, "spBv1.0/g/DDEATH/n/nobody", &death(1))
                .0
                .is_empty()
        );
    }

    #[test]
    fn seq_gaps_are_counted_and_the_data_kept() {
        let mut sp = Sparkplug::default();
        born(&mut sp); // seq 0, 1
        let data = |seq| payload(Some(seq), None, vec![by_alias(2, V::FloatValue(1.0))]);
        for seq in 2..=255 {
            let (s, e) = decode(&mut sp, "spBv1.0/g/NDATA/n", &data(seq));
            assert!(e.is_empty(), "seq {seq}: {e:?}");
            assert_eq!(s.len(), 1);
        }
        // 255 wraps to 0.
        assert!(decode(&mut sp, "spBv1.0/g/NDATA/n", &data(0)).1.is_empty());
        let (s, e) = decode(&mut sp, "spBv1.0/g/NDATA/n", &data(5));
        assert_eq!(reasons(&e), ["seq_gap"]);
        assert_eq!(s.len(), 1);
        assert!(decode(&mut sp, "spBv1.0/g/NDATA/n", &data(6)).1.is_empty());
        // A new birth restarts the sequence.
        born(&mut sp);
        assert!(decode(&mut sp, "spBv1.0/g/NDATA/n", &data(2)).1.is_empty());
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let mut sp = Sparkplug::default();
        let reason = |sp: &mut Sparkplug, topic: &str, bytes: &[u8]| {
            sp.decode(topic, bytes).map(|_| ()).unwrap_err().reason
        };
        assert_eq!(
            reason(&mut sp, "spBv1.0/g/NDATA/n", &[0xff, 0xff, 0xff]),
            "malformed_sparkplug"
        );
        // A length running past the end.
        assert_eq!(
            reason(&mut sp, "spBv1.0/g/NDATA/n", &[0x12, 0x40, 0x0a]),
            "malformed_sparkplug"
        );
        let good = payload(Some(0), None, vec![]);
        for topic in [
            "spAv1.0/g/NDATA/n",
            "spBv1.0/g/NDATA",
            "spBv1.0/g/NDATA/n/d",
            "spBv1.0/g/DDATA/n",
            "spBv1.0/g/XDATA/n",
            "spBv1.0//NDATA/n",
            "spBv1.0/g/DDATA/n/",
        ] {
            assert_eq!(reason(&mut sp, topic, &good), "bad_topic", "{topic}");
        }
        // Commands and host state are not measurements: ignored, not errors.
        for topic in [
            "spBv1.0/STATE/scada-1",
            "spBv1.0/g/NCMD/n",
            "spBv1.0/g/DCMD/n/d",
            "spBv1.0/g/STATE/n",
        ] {
            let (s, e) = decode(&mut sp, topic, b"\xff garbage");
            assert!(s.is_empty() && e.is_empty(), "{topic}");
        }
        // A metric without name or alias, and a birth's metric without a name.
        let nameless = Metric {
            value: Some(V::IntValue(1)),
            ..Metric::default()
        };
        let (_, e) = decode(
            &mut sp,
            "spBv1.0/g/NBIRTH/n",
            &payload(Some(0), None, vec![by_alias(1, V::IntValue(1))]),
        );
        assert_eq!(reasons(&e), ["malformed_sparkplug"]);
        let (_, e) = decode(
            &mut sp,
            "spBv1.0/g/NDATA/n",
            &payload(Some(1), None, vec![nameless]),
        );
        assert_eq!(reasons(&e), ["malformed_sparkplug"]);
    }

    #[test]
    fn tracked_metrics_are_bounded() {
        let mut sp = Sparkplug::default();
        let metrics = (0..MAX_TRACKED + 3)
            .map(|i| metric(&format!("m{i}"), None, dt::INT32, V::IntValue(1)))
            .collect();
        let (s, e) = decode(
            &mut sp,
            "spBv1.0/g/NBIRTH/n",
            &payload(Some(0), None, metrics),
        );
        // Still stored (they have names), but not tracked.
        assert_eq!(s.len(), MAX_TRACKED + 3);
        assert_eq!(reasons(&e), ["too_many_metrics"; 3]);
        assert_eq!(sp.tracked, MAX_TRACKED);
        // A new birth of the node gives the budget back.
        decode(
            &mut sp,
            "spBv1.0/g/NBIRTH/n",
            &payload(
                Some(0),
                None,
                vec![metric("a", Some(1), dt::INT32, V::IntValue(1))],
            ),
        );
        assert_eq!(sp.tracked, 2);
    }
}
