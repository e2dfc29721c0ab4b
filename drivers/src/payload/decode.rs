//! Payload decoders: a message's bytes → values of points.
//!
//! - `plain`: one value — `true`/`false`, an integer, a decimal number, or
//!   text (bytes that are not UTF-8 stay bytes).
//! - `json`: a flat object of point → value, or, with `points`, a JSON
//!   pointer per point; optionally a timestamp at a JSON pointer.
//! - `senml`: a SenML JSON pack (RFC 8428): base name, base time, base
//!   unit, base value and base sum, records with `v`/`vb`/`vs`/`vd`/`s`,
//!   times in seconds (values under 2^28 are relative to now).
//!
//! A decoder never panics on input: what it cannot use is an error with a
//! reason the driver counts per topic.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::RawValue;

/// One value found in a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The device the payload names (SenML base name), if any.
    pub device: Option<String>,
    /// The point; `None` for a plain payload (the rule names it).
    pub point: Option<String>,
    pub value: RawValue,
    /// The payload's own timestamp, UTC ns.
    pub time: Option<i64>,
    /// The payload's own unit (SenML).
    pub unit: Option<String>,
}

/// Why (part of) a payload was rejected; `reason` is what is counted.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub reason: &'static str,
    pub detail: String,
}

impl DecodeError {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
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

    /// A timestamp in this unit, exact for integers.
    fn to_ns(self, t: &Json) -> Option<i64> {
        let text = t.as_str().map(str::trim);
        if let Some(i) = t.as_i64().or_else(|| text?.parse().ok()) {
            return i.checked_mul(self.ns_per_unit());
        }
        let f = t.as_f64().or_else(|| text?.parse().ok())?;
        finite_ns(f * self.ns_per_unit() as f64)
    }
}

fn finite_ns(ns: f64) -> Option<i64> {
    (ns.is_finite() && ns.abs() < 9.2e18).then_some(ns as i64)
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
        device: None,
        point: None,
        value,
        time: None,
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
        None => None,
        Some(pointer) => {
            let t = doc.pointer(pointer).ok_or_else(|| {
                DecodeError::new("no_timestamp", format!("no timestamp at {pointer}"))
            })?;
            Some(layout.time_unit.to_ns(t).ok_or_else(|| {
                DecodeError::new(
                    "bad_timestamp",
                    format!("timestamp at {pointer} is not a number: {t}"),
                )
            })?)
        }
    };
    let mut values = Vec::new();
    let mut errors = Vec::new();
    let mut missing = Vec::new();
    let mut push = |point: &str, v: &Json| match json_value(v) {
        Ok(value) => values.push(Decoded {
            device: None,
            point: Some(point.to_owned()),
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

/// Times below this are relative to now (RFC 8428, section 4.5.3).
const SENML_RELATIVE: f64 = 268_435_456.0;

/// `senml`: a SenML JSON pack. `now` (UTC ns) resolves relative times.
pub fn senml(payload: &[u8], now: i64) -> Result<(Vec<Decoded>, Vec<DecodeError>), DecodeError> {
    let doc: Json = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::new("malformed_json", e.to_string()))?;
    senml_pack(doc, now)
}

/// A SenML pack already parsed (from JSON, or from CBOR with its labels
/// turned into the JSON names).
pub fn senml_pack(doc: Json, now: i64) -> Result<(Vec<Decoded>, Vec<DecodeError>), DecodeError> {
    let Json::Array(records) = doc else {
        return Err(DecodeError::new(
            "malformed_senml",
            "a SenML pack is a JSON array of records",
        ));
    };
    let mut base_name = String::new();
    let mut base_time = 0.0;
    let mut base_unit: Option<String> = None;
    let mut base_value = 0.0;
    let mut base_sum = 0.0;
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let Json::Object(r) = record else {
            errors.push(DecodeError::new(
                "malformed_senml",
                format!("record {i} is not an object"),
            ));
            continue;
        };
        let text = |k: &str| r.get(k).and_then(Json::as_str);
        let num = |k: &str| r.get(k).and_then(Json::as_f64);
        if let Some(bn) = text("bn") {
            base_name = bn.to_owned();
        }
        if let Some(bt) = num("bt") {
            base_time = bt;
        }
        if let Some(bu) = text("bu") {
            base_unit = Some(bu.to_owned());
        }
        if let Some(bv) = num("bv") {
            base_value = bv;
        }
        if let Some(bs) = num("bs") {
            base_sum = bs;
        }
        let name = format!("{base_name}{}", text("n").unwrap_or(""));
        if name.is_empty() {
            errors.push(DecodeError::new(
                "malformed_senml",
                format!("record {i} has no name (n or bn)"),
            ));
            continue;
        }
        let value = if let Some(v) = num("v") {
            RawValue::F64(base_value + v)
        } else if let Some(vb) = r.get("vb").and_then(Json::as_bool) {
            RawValue::Bool(vb)
        } else if let Some(vs) = text("vs") {
            RawValue::Text(vs.to_owned())
        } else if let Some(vd) = text("vd") {
            match base64url_decode(vd) {
                Some(bytes) => RawValue::Bytes(bytes),
                None => {
                    errors.push(DecodeError::new(
                        "malformed_senml",
                        format!("{name}: vd is not base64url"),
                    ));
                    continue;
                }
            }
        } else if let Some(s) = num("s") {
            RawValue::F64(base_sum + s)
        } else if r.keys().all(|k| k.starts_with('b')) {
            // A record of base fields only.
            continue;
        } else {
            errors.push(DecodeError::new(
                "malformed_senml",
                format!("{name}: a record needs v, vb, vs, vd or s"),
            ));
            continue;
        };
        let t = base_time + num("t").unwrap_or(0.0);
        let time = if t.abs() < SENML_RELATIVE {
            // Relative to now (0: "now").
            finite_ns(t * 1e9).map(|dt| now.saturating_add(dt))
        } else {
            finite_ns(t * 1e9)
        };
        let unit = text("u").map(str::to_owned).or_else(|| base_unit.clone());
        // The device is the base name without its separator, the point
        // the record's own name (a rule that names the device wins).
        let (device, point) = match (base_name.is_empty(), text("n")) {
            (false, Some(n)) if !n.is_empty() => (
                Some(
                    base_name
                        .trim_end_matches([':', '/', '.', '-', '_'])
                        .to_owned(),
                ),
                n.to_owned(),
            ),
            _ => (None, name.clone()),
        };
        values.push(Decoded {
            device,
            point: Some(point),
            value,
            time,
            unit,
        });
    }
    Ok((values, errors))
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
                .all(|d| d.time == Some(1_700_000_000_123_000_000))
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
        assert_eq!(values[0].time, Some(1_700_000_000_500_000_000));
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
        assert_eq!(v0.device.as_deref(), Some("urn:dev:ow:10e2073a01080063"));
        assert_eq!(v0.point.as_deref(), Some("voltage"));
        assert_eq!(v0.unit.as_deref(), Some("V"));
        assert_eq!(v0.time, Some(1_320_067_464_000_000_000));
        assert_eq!(values[1].unit.as_deref(), Some("A"));
        assert_eq!(values[1].time, Some(1_320_067_459_000_000_000));
        assert_eq!(values[3].value, RawValue::Bool(true));
        assert_eq!(values[4].value, RawValue::Text("door".into()));
        assert_eq!(values[5].value, RawValue::Bytes(vec![1, 2, 3]));
        assert_eq!(values[6].value, RawValue::F64(42.0));
        assert_eq!(values[7].time, Some(now - 2_000_000_000));
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
