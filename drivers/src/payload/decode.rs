//! Payload decoders: a message's bytes → values of points.
//!
//! - `plain`: one value — `true`/`false`, an integer, a decimal number, or
//!   text (bytes that are not UTF-8 stay bytes).
//! - `json`: a flat object of point → value, or, with `points`, a JSON
//!   pointer per point; optionally a timestamp at a JSON pointer.
//! - `senml`: a SenML JSON pack (RFC 8428): base name, base time, base
//!   unit, base value and base sum, records with `v`/`vb`/`vs`/`vd`/`s`,
//!   times in seconds (values under 2^28 are relative to now). SenML CBOR
//!   (`crate::coap::cbor`) reads its records into the same [`SenmlRecord`]
//!   and shares the resolution ([`senml_records`]).
//!
//! A decoder never panics on input: what it cannot use is an error with a
//! reason the driver counts per topic.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::{DeviceTime, RawValue};

/// One value found in a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The value's name: a JSON member, or SenML's resolved name (base
    /// name + name); `None` for a plain payload (the rule names it).
    pub point: Option<String>,
    /// SenML: how many bytes at the start of `point` are the base name,
    /// when the record has a name of its own after it; 0 otherwise. See
    /// [`Decoded::names`].
    pub base_len: usize,
    pub value: RawValue,
    /// The payload's own timestamp.
    pub time: DeviceTime,
    /// The payload's own unit (SenML).
    pub unit: Option<String>,
}

/// What may end a SenML base name that names a device (`urn:dev:x:`,
/// `room-1/`): not part of the device id.
const BASE_NAME_SEPARATORS: [char; 5] = [':', '/', '.', '-', '_'];

impl Decoded {
    /// The device and the point of this value. `named` is the device the
    /// topic, the path or the configuration names, if any: then the point
    /// is the whole name — for SenML the resolved name, base name + name,
    /// which identifies the sensor (RFC 8428 §4.5.1), so records whose
    /// resolved names differ never share a series. Otherwise a SenML record
    /// with a base name and a name of its own belongs to the device its
    /// base name names (without its trailing separator), and the point is
    /// its own name. `(None, _)`: nothing names a device.
    pub fn names<'a>(&'a self, named: Option<&'a str>) -> (Option<&'a str>, Option<&'a str>) {
        let point = self.point.as_deref();
        match (named, point) {
            (Some(_), _) | (None, None) => (named, point),
            (None, Some(name)) if self.base_len > 0 && self.base_len < name.len() => {
                let (base, own) = name.split_at(self.base_len);
                (Some(base.trim_end_matches(BASE_NAME_SEPARATORS)), Some(own))
            }
            (None, Some(_)) => (None, point),
        }
    }
}

/// Why (part of) a payload was rejected; `reason` is what is counted.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub reason: &'static str,
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The unit of numeric JSON timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    S,
    #[default]
    Ms,
    Us,
    Ns,
}

impl TimeUnit {
    fn ns_per_unit(self) -> i64 {
        match self {
            TimeUnit::S => 1_000_000_000,
            TimeUnit::Ms => 1_000_000,
            TimeUnit::Us => 1_000,
            TimeUnit::Ns => 1,
        }
    }

    /// A timestamp in this unit, exact for integers; `None` if it is not
    /// a number at all. A number that is no instant (beyond i64
    /// nanoseconds) is [`DeviceTime::Invalid`].
    fn to_ns(self, t: &Json) -> Option<DeviceTime> {
        let text = t.as_str().map(str::trim);
        if let Some(i) = t.as_i64().or_else(|| text?.parse().ok()) {
            return Some(DeviceTime::sent(i.checked_mul(self.ns_per_unit())));
        }
        let f = t.as_f64().or_else(|| text?.parse().ok())?;
        Some(DeviceTime::sent(ns_of(f * self.ns_per_unit() as f64)))
    }
}

/// A number of nanoseconds as i64, if it is finite and fits.
fn ns_of(ns: f64) -> Option<i64> {
    // 2^63 is exact in f64; `as` would saturate instead of failing.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (ns.is_finite() && (-LIMIT..LIMIT).contains(&ns)).then_some(ns as i64)
}

/// `plain`: the whole payload is one value.
pub fn plain(payload: &[u8]) -> Result<Decoded, DecodeError> {
    let value = match std::str::from_utf8(payload) {
        Err(_) => RawValue::Bytes(payload.to_vec()),
        Ok(text) => {
            let t = text.trim();
            if t.is_empty() {
                return Err(DecodeError::new("empty", "the payload is empty"));
            }
            match t {
                "true" => RawValue::Bool(true),
                "false" => RawValue::Bool(false),
                _ => number(t).unwrap_or_else(|| RawValue::Text(t.to_owned())),
            }
        }
    };
    Ok(Decoded {
        point: None,
        base_len: 0,
        value,
        time: DeviceTime::Absent,
        unit: None,
    })
}

fn number(t: &str) -> Option<RawValue> {
    if let Ok(i) = t.parse::<i64>() {
        return Some(RawValue::I64(i));
    }
    if let Ok(u) = t.parse::<u64>() {
        return Some(RawValue::U64(u));
    }
    // "nan"/"inf" parse as f64 but are no measurement: text, which the
    // gateway then rejects for a numeric point.
    t.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && t.bytes().any(|b| b.is_ascii_digit()))
        .map(RawValue::F64)
}

/// How a `json` rule reads its payloads.
#[derive(Debug, Clone, Default)]
pub struct JsonLayout {
    /// Point → JSON pointer; empty: every member of a flat object.
    pub points: BTreeMap<String, String>,
    /// JSON pointer of the timestamp, if the payload has one.
    pub timestamp: Option<String>,
    pub time_unit: TimeUnit,
}

fn json_value(v: &Json) -> Result<RawValue, &'static str> {
    match v {
        Json::Bool(b) => Ok(RawValue::Bool(*b)),
        Json::Number(n) => Ok(if let Some(i) = n.as_i64() {
            RawValue::I64(i)
        } else if let Some(u) = n.as_u64() {
            RawValue::U64(u)
        } else {
            RawValue::F64(n.as_f64().unwrap_or(f64::NAN))
        }),
        Json::String(s) => Ok(RawValue::Text(s.clone())),
        Json::Null => Err("null"),
        Json::Array(_) | Json::Object(_) => Err("nested"),
    }
}

/// `json`: values (and errors for members it cannot use).
pub fn json(
    payload: &[u8],
    layout: &JsonLayout,
) -> Result<(Vec<Decoded>, Vec<DecodeError>), DecodeError> {
    let doc: Json = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::new("malformed_json", e.to_string()))?;
    let time = match &layout.timestamp {
        None => DeviceTime::Absent,
        Some(pointer) => {
            let t = doc.pointer(pointer).ok_or_else(|| {
                DecodeError::new("no_timestamp", format!("no timestamp at {pointer}"))
            })?;
            layout.time_unit.to_ns(t).ok_or_else(|| {
                DecodeError::new(
                    "bad_timestamp",
                    format!("timestamp at {pointer} is not a number: {t}"),
                )
            })?
        }
    };
    let mut values = Vec::new();
    let mut errors = Vec::new();
    let mut missing = Vec::new();
    let mut push = |point: &str, v: &Json| match json_value(v) {
        Ok(value) => values.push(Decoded {
            point: Some(point.to_owned()),
            base_len: 0,
            value,
            time,
            unit: None,
        }),
        Err(kind) => errors.push(DecodeError::new(
            "unsupported_value",
            format!("{point}: a {kind} value is not a reading"),
        )),
    };
    if layout.points.is_empty() {
        let Json::Object(members) = &doc else {
            return Err(DecodeError::new(
                "not_an_object",
                "a json payload without `points` must be a flat object",
            ));
        };
        let skip = layout
            .timestamp
            .as_deref()
            .and_then(|p| p.strip_prefix('/'))
            .filter(|p| !p.contains('/'));
        for (key, v) in members {
            if Some(key.as_str()) != skip {
                push(key, v);
            }
        }
    } else {
        for (point, pointer) in &layout.points {
            match doc.pointer(pointer) {
                Some(v) => push(point, v),
                None => missing.push(DecodeError::new(
                    "missing_point",
                    format!("{point}: nothing at {pointer}"),
                )),
            }
        }
    }
    errors.append(&mut missing);
    Ok((values, errors))
}

/// Times below this, 2^28 s, are relative to now (RFC 8428 §4.5.3).
const SENML_RELATIVE: f64 = 268_435_456.0;

/// A SenML field's value as either encoding carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum SenmlField {
    Text(String),
    /// Any number: SenML's are floating point (an integer beyond 2^53
    /// loses its low bits, as in JSON).
    Number(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    /// Anything else (null, an array, a map): no field's type.
    Other,
}

impl SenmlField {
    fn kind(&self) -> &'static str {
        match self {
            SenmlField::Text(_) => "text",
            SenmlField::Number(_) => "a number",
            SenmlField::Bool(_) => "a boolean",
            SenmlField::Bytes(_) => "bytes",
            SenmlField::Other => "null, an array or a map",
        }
    }
}

impl From<Json> for SenmlField {
    fn from(value: Json) -> Self {
        match value {
            Json::String(s) => SenmlField::Text(s),
            // Always a number without serde_json's `arbitrary_precision`.
            Json::Number(n) => SenmlField::Number(n.as_f64().unwrap_or(f64::NAN)),
            Json::Bool(b) => SenmlField::Bool(b),
            Json::Null | Json::Array(_) | Json::Object(_) => SenmlField::Other,
        }
    }
}

/// `vd` as the encoding carries it.
#[derive(Debug, Clone, PartialEq)]
enum DataValue {
    /// SenML JSON: base64url text.
    Base64(String),
    /// SenML CBOR: a byte string.
    Bytes(Vec<u8>),
}

/// One record of a SenML pack (RFC 8428 §4) with the fields the gateway
/// reads, from either encoding ([`SenmlRecord::set`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenmlRecord {
    base_name: Option<String>,
    base_time: Option<f64>,
    base_unit: Option<String>,
    base_value: Option<f64>,
    base_sum: Option<f64>,
    name: Option<String>,
    unit: Option<String>,
    value: Option<f64>,
    bool_value: Option<bool>,
    string_value: Option<String>,
    data_value: Option<DataValue>,
    sum: Option<f64>,
    time: Option<f64>,
    /// It has a field that is not a base field: a record of base fields
    /// only carries no value and is no error.
    not_only_base: bool,
}

impl SenmlRecord {
    /// Sets the field whose SenML JSON label is `label` (RFC 8428 table 4;
    /// SenML CBOR's integer labels map to these). Fields the gateway does
    /// not read (`bver`, `ut`, extensions) are ignored; a field of the
    /// wrong type is an error naming it (the record is malformed: its time
    /// must not silently become "now", nor its name another sensor's).
    pub fn set(&mut self, label: &str, field: SenmlField) -> Result<(), String> {
        use SenmlField as F;
        if !label.starts_with('b') {
            self.not_only_base = true;
        }
        match (label, field) {
            ("bn", F::Text(t)) => self.base_name = Some(t),
            ("bu", F::Text(t)) => self.base_unit = Some(t),
            ("n", F::Text(t)) => self.name = Some(t),
            ("u", F::Text(t)) => self.unit = Some(t),
            ("vs", F::Text(t)) => self.string_value = Some(t),
            ("bt", F::Number(x)) => self.base_time = Some(x),
            ("bv", F::Number(x)) => self.base_value = Some(x),
            ("bs", F::Number(x)) => self.base_sum = Some(x),
            ("v", F::Number(x)) => self.value = Some(x),
            ("s", F::Number(x)) => self.sum = Some(x),
            ("t", F::Number(x)) => self.time = Some(x),
            ("vb", F::Bool(b)) => self.bool_value = Some(b),
            ("vd", F::Text(t)) => self.data_value = Some(DataValue::Base64(t)),
            ("vd", F::Bytes(b)) => self.data_value = Some(DataValue::Bytes(b)),
            (label @ ("bn" | "bu" | "n" | "u" | "vs"), f) => {
                return Err(format!("{label} must be text, not {}", f.kind()));
            }
            (label @ ("bt" | "bv" | "bs" | "v" | "s" | "t"), f) => {
                return Err(format!("{label} must be a number, not {}", f.kind()));
            }
            ("vb", f) => return Err(format!("vb must be a boolean, not {}", f.kind())),
            ("vd", f) => return Err(format!("vd must be base64url text, not {}", f.kind())),
            _ => {}
        }
        Ok(())
    }
}

/// A SenML time (RFC 8428 §4.5.3): seconds since the Unix epoch from 2^28
/// on; below 2^28, negative values included, seconds relative to `now`
/// (UTC ns). A time that is no instant (not finite, beyond i64 ns) is
/// [`DeviceTime::Invalid`], never "no time".
fn senml_time(t: f64, now: i64) -> DeviceTime {
    let ns = ns_of(t * 1e9);
    // NaN compares false: it takes the absolute branch and fails there.
    DeviceTime::sent(if t < SENML_RELATIVE {
        ns.and_then(|dt| now.checked_add(dt))
    } else {
        ns
    })
}

/// `senml`: a SenML JSON pack. `now` (UTC ns) resolves relative times.
pub fn senml(payload: &[u8], now: i64) -> Result<(Vec<Decoded>, Vec<DecodeError>), DecodeError> {
    let doc: Json = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::new("malformed_json", e.to_string()))?;
    let Json::Array(records) = doc else {
        return Err(DecodeError::new(
            "malformed_senml",
            "a SenML pack is a JSON array of records",
        ));
    };
    let records = records.into_iter().enumerate().map(|(i, record)| {
        let Json::Object(fields) = record else {
            return Err(DecodeError::new(
                "malformed_senml",
                format!("record {i} is not an object"),
            ));
        };
        let mut r = SenmlRecord::default();
        for (label, value) in fields {
            r.set(&label, value.into())
                .map_err(|why| DecodeError::new("malformed_senml", format!("record {i}: {why}")))?;
        }
        Ok(r)
    });
    Ok(senml_records(records, now))
}

/// Resolves a SenML pack's records in order (RFC 8428 §4.6): base fields
/// apply to their own record and every later one until set again; a
/// record's name is the base name followed by its name; its time is base
/// time + time ([`senml_time`]); its unit is `u`, else the base unit. A
/// record that could not be read (`Err`) is counted and contributes
/// nothing, not even its base fields. `now` (UTC ns, when the pack
/// arrived) resolves relative times.
pub fn senml_records(
    records: impl IntoIterator<Item = Result<SenmlRecord, DecodeError>>,
    now: i64,
) -> (Vec<Decoded>, Vec<DecodeError>) {
    let mut base_name = String::new();
    let mut base_time = 0.0;
    let mut base_unit: Option<String> = None;
    let mut base_value = 0.0;
    let mut base_sum = 0.0;
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for (i, record) in records.into_iter().enumerate() {
        let r = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Some(bn) = r.base_name {
            base_name = bn;
        }
        if let Some(bt) = r.base_time {
            base_time = bt;
        }
        if let Some(bu) = r.base_unit {
            base_unit = Some(bu);
        }
        if let Some(bv) = r.base_value {
            base_value = bv;
        }
        if let Some(bs) = r.base_sum {
            base_sum = bs;
        }
        let own = r.name.as_deref().unwrap_or("");
        let name = format!("{base_name}{own}");
        if name.is_empty() {
            errors.push(DecodeError::new(
                "malformed_senml",
                format!("record {i} has no name (n or bn)"),
            ));
            continue;
        }
        let value = if let Some(v) = r.value {
            RawValue::F64(base_value + v)
        } else if let Some(vb) = r.bool_value {
            RawValue::Bool(vb)
        } else if let Some(vs) = r.string_value {
            RawValue::Text(vs)
        } else if let Some(vd) = r.data_value {
            match vd {
                DataValue::Bytes(bytes) => RawValue::Bytes(bytes),
                DataValue::Base64(text) => match base64url_decode(&text) {
                    Some(bytes) => RawValue::Bytes(bytes),
                    None => {
                        errors.push(DecodeError::new(
                            "malformed_senml",
                            format!("{name}: vd is not base64url"),
                        ));
                        continue;
                    }
                },
            }
        } else if let Some(s) = r.sum {
            RawValue::F64(base_sum + s)
        } else if !r.not_only_base {
            // A record of base fields only.
            continue;
        } else {
            errors.push(DecodeError::new(
                "malformed_senml",
                format!("{name}: a record needs v, vb, vs, vd or s"),
            ));
            continue;
        };
        let base_len = if own.is_empty() { 0 } else { base_name.len() };
        values.push(Decoded {
            point: Some(name),
            base_len,
            value,
            time: senml_time(base_time + r.time.unwrap_or(0.0), now),
            unit: r.unit.or_else(|| base_unit.clone()),
        });
    }
    (values, errors)
}

/// SenML's `vd` (RFC 8428: base64url without padding), read leniently:
/// padding may be there or not, and plain base64's `+` and `/` are
/// accepted too; `None` if it is not base64 at all.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const URL: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    URL.decode(text).or_else(|_| STANDARD.decode(text)).ok()
}

/// SenML's `vd`: base64url without padding (RFC 8428 §4.3).
pub fn base64url_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values() {
        let v = |p: &[u8]| plain(p).map(|d| d.value);
        assert_eq!(v(b"21.5"), Ok(RawValue::F64(21.5)));
        assert_eq!(v(b" -7\n"), Ok(RawValue::I64(-7)));
        assert_eq!(v(b"18446744073709551615"), Ok(RawValue::U64(u64::MAX)));
        assert_eq!(v(b"true"), Ok(RawValue::Bool(true)));
        assert_eq!(v(b"RUNNING"), Ok(RawValue::Text("RUNNING".into())));
        assert_eq!(v(b"nan"), Ok(RawValue::Text("nan".into())));
        assert_eq!(v(&[0xff, 0x00]), Ok(RawValue::Bytes(vec![0xff, 0])));
        assert_eq!(v(b"  ").unwrap_err().reason, "empty");
    }

    #[test]
    fn json_flat_and_by_pointer() {
        let flat = JsonLayout {
            timestamp: Some("/ts".into()),
            time_unit: TimeUnit::Ms,
            ..JsonLayout::default()
        };
        let (values, errors) = json(
            br#"{"ts": 1700000000123, "temp": 21.5, "on": true, "mode": "auto", "n": null, "x": [1]}"#,
            &flat,
        )
        .unwrap();
        let got: Vec<(&str, &RawValue)> = values
            .iter()
            .map(|d| (d.point.as_deref().unwrap(), &d.value))
            .collect();
        assert_eq!(
            got,
            [
                ("mode", &RawValue::Text("auto".into())),
                ("on", &RawValue::Bool(true)),
                ("temp", &RawValue::F64(21.5)),
            ]
        );
        assert!(
            values
                .iter()
                .all(|d| d.time == DeviceTime::At(1_700_000_000_123_000_000))
        );
        assert_eq!(errors.len(), 2);
        assert!(errors.iter().all(|e| e.reason == "unsupported_value"));

        let nested = JsonLayout {
            points: [
                ("temp".to_owned(), "/sensors/0/t".to_owned()),
                ("gone".to_owned(), "/nope".to_owned()),
            ]
            .into(),
            timestamp: Some("/meta/time".into()),
            time_unit: TimeUnit::S,
        };
        let (values, errors) = json(
            br#"{"meta": {"time": 1700000000.5}, "sensors": [{"t": 3}]}"#,
            &nested,
        )
        .unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].value, RawValue::I64(3));
        assert_eq!(values[0].time, DeviceTime::At(1_700_000_000_500_000_000));
        assert_eq!(errors[0].reason, "missing_point");

        assert_eq!(json(b"{", &flat).unwrap_err().reason, "malformed_json");
        assert_eq!(
            json(br#"{"temp": 1}"#, &flat).unwrap_err().reason,
            "no_timestamp"
        );
        assert_eq!(
            json(b"[1]", &JsonLayout::default()).unwrap_err().reason,
            "not_an_object"
        );
    }

    #[test]
    fn json_timestamps_that_are_no_instant_are_invalid_not_absent() {
        let layout = JsonLayout {
            timestamp: Some("/ts".into()),
            time_unit: TimeUnit::Ms,
            ..JsonLayout::default()
        };
        let time = |payload: &str| json(payload.as_bytes(), &layout).map(|(v, _)| v[0].time);
        // A number, but past i64 nanoseconds: a time the gateway must
        // distrust, as it distrusts 1990.
        assert_eq!(time(r#"{"ts": 1e300, "x": 1}"#), Ok(DeviceTime::Invalid));
        assert_eq!(
            time(r#"{"ts": 9223372036855, "x": 1}"#),
            Ok(DeviceTime::Invalid)
        );
        assert_eq!(time(r#"{"ts": "-1e300", "x": 1}"#), Ok(DeviceTime::Invalid));
        assert_eq!(
            time(r#"{"ts": 9223372036854, "x": 1}"#),
            Ok(DeviceTime::At(9_223_372_036_854_000_000))
        );
        // Not a number at all: the payload is rejected.
        assert_eq!(
            time(r#"{"ts": "yesterday", "x": 1}"#).unwrap_err().reason,
            "bad_timestamp"
        );
    }

    #[test]
    fn senml_pack_with_base_fields_and_relative_time() {
        // RFC 8428 section 5.1.2 style, plus every value kind.
        let pack = br#"[
          {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1320067464, "bu": "A", "bver": 5,
           "n": "voltage", "u": "V", "v": 120.1},
          {"n": "current", "t": -5, "v": 1.2},
          {"n": "current", "t": -4, "v": 1.3},
          {"n": "open", "vb": true},
          {"n": "label", "vs": "door"},
          {"n": "raw", "vd": "AQID"},
          {"n": "energy", "s": 42},
          {"bt": 0, "n": "rel", "t": -2, "v": 1}
        ]"#;
        let now = 1_800_000_000_000_000_000;
        let (values, errors) = senml(pack, now).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(values.len(), 8);
        let v0 = &values[0];
        assert_eq!(
            v0.point.as_deref(),
            Some("urn:dev:ow:10e2073a01080063:voltage")
        );
        assert_eq!(
            v0.names(None),
            (Some("urn:dev:ow:10e2073a01080063"), Some("voltage"))
        );
        assert_eq!(v0.unit.as_deref(), Some("V"));
        assert_eq!(v0.time, DeviceTime::At(1_320_067_464_000_000_000));
        assert_eq!(values[1].unit.as_deref(), Some("A"));
        assert_eq!(values[1].time, DeviceTime::At(1_320_067_459_000_000_000));
        assert_eq!(values[3].value, RawValue::Bool(true));
        assert_eq!(values[4].value, RawValue::Text("door".into()));
        assert_eq!(values[5].value, RawValue::Bytes(vec![1, 2, 3]));
        assert_eq!(values[6].value, RawValue::F64(42.0));
        assert_eq!(values[7].time, DeviceTime::At(now - 2_000_000_000));
    }

    #[test]
    fn senml_points_are_resolved_names_when_the_device_is_named_elsewhere() {
        let pack = br#"[
          {"bn": "s1:", "n": "temp", "v": 1},
          {"bn": "s2:", "n": "temp", "v": 2},
          {"bn": "a:", "n": "b:c", "v": 3},
          {"bn": "a:b:", "n": "c", "v": 4},
          {"bn": "", "n": "plain", "v": 5},
          {"bn": "whole/name", "vb": true},
          {"bn": ":", "n": "x", "v": 6}
        ]"#;
        let (values, errors) = senml(pack, 0).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let named: Vec<_> = values.iter().map(|d| d.names(Some("room-1"))).collect();
        let room = Some("room-1");
        assert_eq!(
            named,
            [
                (room, Some("s1:temp")),
                (room, Some("s2:temp")),
                (room, Some("a:b:c")),
                (room, Some("a:b:c")),
                (room, Some("plain")),
                (room, Some("whole/name")),
                (room, Some(":x")),
            ]
        );
        // Only the pack names the device: the base name does (without its
        // separator), and the point is the record's own name. A record
        // without one of them names no device.
        let own: Vec<_> = values.iter().map(|d| d.names(None)).collect();
        assert_eq!(
            own,
            [
                (Some("s1"), Some("temp")),
                (Some("s2"), Some("temp")),
                (Some("a"), Some("b:c")),
                (Some("a:b"), Some("c")),
                (None, Some("plain")),
                (None, Some("whole/name")),
                (Some(""), Some("x")),
            ]
        );
    }

    #[test]
    fn senml_times_below_2_28_are_relative_and_no_instant_is_invalid() {
        let now: i64 = 1_800_000_000_000_000_000;
        let time = |fields: &str| {
            let pack = format!(r#"[{{"n": "x", "v": 1{fields}}}]"#);
            let (values, errors) = senml(pack.as_bytes(), now).expect("a pack");
            assert!(errors.is_empty(), "{fields}: {errors:?}");
            values[0].time
        };
        assert_eq!(time(""), DeviceTime::At(now));
        assert_eq!(time(r#", "t": -60"#), DeviceTime::At(now - 60_000_000_000));
        // Every value below 2^28 is relative, however negative.
        assert_eq!(
            time(r#", "t": -268435456"#),
            DeviceTime::At(now - 268_435_456_000_000_000)
        );
        assert_eq!(
            time(r#", "t": 268435455"#),
            DeviceTime::At(now + 268_435_455_000_000_000)
        );
        assert_eq!(
            time(r#", "t": 268435456"#),
            DeviceTime::At(268_435_456_000_000_000)
        );
        assert_eq!(
            time(r#", "bt": 1700000000, "t": 0.5"#),
            DeviceTime::At(1_700_000_000_500_000_000)
        );
        for no_instant in [
            r#", "t": 1e300"#,
            r#", "t": -1e300"#,
            r#", "t": 9223372037"#,
            r#", "t": 18446744073709551615"#,
            r#", "t": -9223372036854775808"#,
            r#", "t": -18446744073709551616"#,
            r#", "bt": 9000000000, "t": 300000000"#,
        ] {
            assert_eq!(time(no_instant), DeviceTime::Invalid, "{no_instant}");
        }
    }

    #[test]
    fn senml_errors_are_per_record() {
        let (values, errors) =
            senml(br#"[{"n": "a", "v": 1}, 7, {"v": 2}, {"n": "b"}]"#, 0).unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(errors.len(), 3);
        assert_eq!(senml(b"{}", 0).unwrap_err().reason, "malformed_senml");
    }

    #[test]
    fn senml_fields_of_the_wrong_type_make_the_record_malformed() {
        // A text time is not "now", a numeric name is not "no name": the
        // record is rejected (base fields and all), the others kept.
        let (values, errors) = senml(
            br#"[{"n": "a", "v": 1, "t": "yesterday"}, {"bn": 7, "n": "b", "v": 2},
                {"n": "c", "v": "3"}, {"n": "d", "vb": 1}, {"bn": "x:", "n": "e", "v": 5}]"#,
            0,
        )
        .unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].point.as_deref(), Some("x:e"));
        let details: Vec<&str> = errors.iter().map(|e| e.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "record 0: t must be a number, not text",
                "record 1: bn must be text, not a number",
                "record 2: v must be a number, not text",
                "record 3: vb must be a boolean, not a number",
            ]
        );
        assert!(errors.iter().all(|e| e.reason == "malformed_senml"));
    }

    #[test]
    fn base64url_reads_leniently_and_writes_without_padding() {
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_encode(b"hi"), "aGk");
        for bytes in [&b""[..], b"a", b"ab", b"abc", &[0xfb, 0xff, 0x00, 0x10]] {
            assert_eq!(
                base64url_decode(&base64url_encode(bytes)).as_deref(),
                Some(bytes)
            );
        }
        assert_eq!(base64url_decode("-_8=").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64url_decode("+/8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64url_decode("a*b"), None);
    }
}
