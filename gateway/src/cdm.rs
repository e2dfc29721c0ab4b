//! The Common Data Model: one typed, timestamped, quality-flagged
//! [`Reading`] per value, whatever protocol it came from, with its
//! validation rules and its versioned canonical encoding and keccak256
//! leaf hash. `docs/cdm.md` is the specification; the tests below check
//! every test vector written there.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tiny_keccak::{Hasher, Keccak};

/// Version byte that starts every canonical encoding.
pub const ENCODING_VERSION: u8 = 1;
/// Domain tag hashed before a leaf's encoding.
pub const LEAF_TAG: u8 = 0x00;
/// Domain tag hashed before an inner node's two children.
pub const NODE_TAG: u8 = 0x01;

/// Longest device id, in bytes.
pub const MAX_DEVICE_LEN: usize = 64;
/// Longest point name, in bytes.
pub const MAX_POINT_LEN: usize = 128;
/// Longest unit code, in bytes.
pub const MAX_UNIT_LEN: usize = 32;
/// Longest source, in bytes.
pub const MAX_SOURCE_LEN: usize = 256;
/// Largest text or bytes value, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;

/// How far a device's timestamp may be ahead of the gateway's clock.
pub const MAX_FUTURE_SKEW_NS: i64 = 24 * 3600 * 1_000_000_000;
/// Earliest plausible device timestamp: 2000-01-01T00:00:00Z.
pub const EARLIEST_TS_NS: i64 = 946_684_800 * 1_000_000_000;

/// How much a reading can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good = 0,
    Uncertain = 1,
    Bad = 2,
}

impl Quality {
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Good),
            1 => Some(Self::Uncertain),
            2 => Some(Self::Bad),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Uncertain => "uncertain",
            Self::Bad => "bad",
        }
    }
}

/// The kinds of value a reading can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    Bool = 1,
    I64 = 2,
    F64 = 3,
    Text = 4,
    Bytes = 5,
}

impl ValueKind {
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Bool),
            2 => Some(Self::I64),
            3 => Some(Self::F64),
            4 => Some(Self::Text),
            5 => Some(Self::Bytes),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::I64 => "i64",
            Self::F64 => "f64",
            Self::Text => "text",
            Self::Bytes => "bytes",
        }
    }
}

/// A typed value. `F64` is always finite and never negative zero once
/// validated (see [`Value::f64`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    Bool(bool),
    I64(i64),
    F64(f64),
    Text(String),
    Bytes(#[serde(with = "hex_serde")] Vec<u8>),
}

impl Value {
    /// A float value: NaN and ±infinity are not representable in the CDM
    /// (a device's "no value" is quality bad, not a NaN); -0.0 becomes 0.0
    /// so that equal numbers always encode and hash alike.
    pub fn f64(v: f64) -> Result<Self, CdmError> {
        if !v.is_finite() {
            return Err(CdmError::NonFinite { value: v });
        }
        Ok(Self::F64(if v == 0.0 { 0.0 } else { v }))
    }

    pub fn kind(&self) -> ValueKind {
        match self {
            Self::Bool(_) => ValueKind::Bool,
            Self::I64(_) => ValueKind::I64,
            Self::F64(_) => ValueKind::F64,
            Self::Text(_) => ValueKind::Text,
            Self::Bytes(_) => ValueKind::Bytes,
        }
    }

    /// The value as a number, for aggregates and deadbands (bool is 0/1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Bool(b) => Some(f64::from(u8::from(*b))),
            Self::I64(i) => Some(*i as f64),
            Self::F64(f) => Some(*f),
            Self::Text(_) | Self::Bytes(_) => None,
        }
    }

    fn validate(&self) -> Result<(), CdmError> {
        match self {
            Self::F64(v) if !v.is_finite() => Err(CdmError::NonFinite { value: *v }),
            Self::F64(v) if *v == 0.0 && v.is_sign_negative() => Err(CdmError::NegativeZero),
            Self::Text(t) if t.len() > MAX_VALUE_LEN => Err(CdmError::TooLong {
                field: "value",
                len: t.len(),
                max: MAX_VALUE_LEN,
            }),
            Self::Bytes(b) if b.len() > MAX_VALUE_LEN => Err(CdmError::TooLong {
                field: "value",
                len: b.len(),
                max: MAX_VALUE_LEN,
            }),
            _ => Ok(()),
        }
    }
}

/// A reading's JSON form; see [`Reading::json_view`].
#[derive(Debug, serde::Serialize)]
pub struct ReadingJson<'a> {
    device: &'a str,
    point: &'a str,
    ts: i64,
    time: String,
    value: JsonValue<'a>,
    kind: &'static str,
    unit: Option<&'a str>,
    quality: &'static str,
    seq: u64,
    source: &'a str,
}

/// A value in JSON: bool, number or text as itself; bytes as `0x`-hex text.
#[derive(Debug)]
struct JsonValue<'a>(&'a Value);

impl serde::Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::I64(i) => s.serialize_i64(*i),
            Value::F64(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(_) => s.collect_str(self.0),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::I64(i) => write!(f, "{i}"),
            Self::F64(v) => write!(f, "{v}"),
            Self::Text(t) => f.write_str(t),
            Self::Bytes(b) => write!(f, "{}", alloy::hex::encode_prefixed(b)),
        }
    }
}

/// One value of one point of one device at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Device id (see [`validate_device`]).
    pub device: Arc<str>,
    /// Point name (see [`validate_point`]).
    pub point: Arc<str>,
    /// UTC nanoseconds since the Unix epoch: the device's timestamp when
    /// it sent one, else the ingest time.
    pub ts: i64,
    pub value: Value,
    /// SenML / UCUM unit code, if the point has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Arc<str>>,
    pub quality: Quality,
    /// Gateway-wide, gapless, strictly increasing; assigned by the store's
    /// writer when the reading is committed. 0 means "not yet committed".
    pub seq: u64,
    /// Protocol and address it came from, e.g. `sim://line-1` or a driver's
    /// `<protocol>://<address>/<unit>`.
    pub source: Arc<str>,
}

/// Why a reading (or a piece of one) is not valid CDM.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CdmError {
    #[error("{field} `{value}` is empty or longer than {max} bytes")]
    BadLength {
        field: &'static str,
        value: String,
        max: usize,
    },
    #[error("{field} `{value}` contains `{ch}`; allowed are {allowed}")]
    BadChar {
        field: &'static str,
        value: String,
        ch: char,
        allowed: &'static str,
    },
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("float value {value} is not finite; NaN and infinity are not representable")]
    NonFinite { value: f64 },
    #[error("float value is negative zero; it must be canonicalized to 0.0")]
    NegativeZero,
}

const ID_CHARS: &str = "ASCII letters, digits and `_ - . :`, starting with a letter or digit";
const POINT_CHARS: &str = "ASCII letters, digits and `_ - . : /`, starting with a letter or digit";
const UNIT_CHARS: &str = "printable ASCII without spaces";
const SOURCE_CHARS: &str = "printable ASCII";

fn check(
    field: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(usize, u8) -> bool,
) -> Result<(), CdmError> {
    if value.is_empty() || value.len() > max {
        return Err(CdmError::BadLength {
            field,
            value: truncate(value),
            max,
        });
    }
    if let Some((_, ch)) = value
        .char_indices()
        .find(|&(i, c)| !c.is_ascii() || !ok(i, c as u8))
    {
        return Err(CdmError::BadChar {
            field,
            value: truncate(value),
            ch,
            allowed,
        });
    }
    Ok(())
}

fn truncate(value: &str) -> String {
    match value.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &value[..i]),
        None => value.to_owned(),
    }
}

fn id_byte(i: usize, b: u8, extra: &[u8]) -> bool {
    b.is_ascii_alphanumeric()
        || (i > 0 && (matches!(b, b'_' | b'-' | b'.' | b':') || extra.contains(&b)))
}

/// A device id: 1–64 bytes of `[A-Za-z0-9_.:-]`, starting alphanumeric.
pub fn validate_device(device: &str) -> Result<(), CdmError> {
    check("device id", device, MAX_DEVICE_LEN, ID_CHARS, |i, b| {
        id_byte(i, b, &[])
    })
}

/// A point name: 1–128 bytes of `[A-Za-z0-9_.:/-]`, starting alphanumeric.
pub fn validate_point(point: &str) -> Result<(), CdmError> {
    check("point name", point, MAX_POINT_LEN, POINT_CHARS, |i, b| {
        id_byte(i, b, b"/")
    })
}

/// A unit: 1–32 bytes of printable ASCII without spaces (UCUM / SenML codes).
pub fn validate_unit(unit: &str) -> Result<(), CdmError> {
    check("unit", unit, MAX_UNIT_LEN, UNIT_CHARS, |_, b| {
        b.is_ascii_graphic()
    })
}

/// A source: 1–256 bytes of printable ASCII (spaces allowed).
pub fn validate_source(source: &str) -> Result<(), CdmError> {
    check("source", source, MAX_SOURCE_LEN, SOURCE_CHARS, |_, b| {
        b.is_ascii_graphic() || b == b' '
    })
}

impl Reading {
    /// The JSON form the CLI, the uplink and the API share: `device`,
    /// `point`, `ts` (ns), `time` (RFC 3339), `value` (bytes as hex),
    /// `kind`, `unit`, `quality`, `seq`, `source`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.json_view()).unwrap_or_default()
    }

    /// The same JSON form as [`Reading::to_json`], serialized straight to
    /// text without building a `serde_json::Value` (the API writes 10,000
    /// of them per latest-values answer).
    pub fn json_view(&self) -> ReadingJson<'_> {
        ReadingJson {
            device: &self.device,
            point: &self.point,
            ts: self.ts,
            time: biota_common::time::format_rfc3339(self.ts),
            value: JsonValue(&self.value),
            kind: self.value.kind().as_str(),
            unit: self.unit.as_deref(),
            quality: self.quality.as_str(),
            seq: self.seq,
            source: &self.source,
        }
    }

    /// Checks every rule of `docs/cdm.md` §Validation.
    pub fn validate(&self) -> Result<(), CdmError> {
        validate_device(&self.device)?;
        validate_point(&self.point)?;
        if let Some(unit) = &self.unit {
            validate_unit(unit)?;
        }
        validate_source(&self.source)?;
        self.value.validate()
    }

    /// Appends the canonical encoding (version 1) to `out`. The reading
    /// must be valid; lengths are then known to fit their prefixes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.push(self.quality.code());
        push_str8(out, &self.device);
        push_str8(out, &self.point);
        push_str8(out, self.unit.as_deref().unwrap_or(""));
        let source = self.source.as_bytes();
        out.extend_from_slice(&(source.len() as u16).to_be_bytes());
        out.extend_from_slice(source);
        out.push(self.value.kind().code());
        match &self.value {
            Value::Bool(b) => out.push(u8::from(*b)),
            Value::I64(i) => out.extend_from_slice(&i.to_be_bytes()),
            Value::F64(f) => out.extend_from_slice(&f.to_bits().to_be_bytes()),
            Value::Text(t) => push_bytes32(out, t.as_bytes()),
            Value::Bytes(b) => push_bytes32(out, b),
        }
    }

    /// The canonical encoding (version 1), see `docs/cdm.md`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.source.len());
        self.encode_into(&mut out);
        out
    }

    /// keccak256(0x00 ‖ canonical encoding): the Merkle leaf of this reading.
    pub fn leaf_hash(&self) -> [u8; 32] {
        let mut buf = Vec::with_capacity(96);
        buf.push(LEAF_TAG);
        self.encode_into(&mut buf);
        keccak256(&buf)
    }
}

fn push_str8(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn push_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// keccak256(0x01 ‖ left ‖ right): an inner Merkle node.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut k = Keccak::v256();
    k.update(&[NODE_TAG]);
    k.update(left);
    k.update(right);
    let mut out = [0; 32];
    k.finalize(&mut out);
    out
}

/// Ethereum's keccak256 (not SHA3-256: the original Keccak padding).
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    let mut k = Keccak::v256();
    k.update(data);
    let mut out = [0; 32];
    k.finalize(&mut out);
    out
}

mod hex_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&alloy::hex::encode_prefixed(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        alloy::hex::decode(&s).map_err(|_| serde::de::Error::custom(format!("`{s}` is not hex")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(value: Value) -> Reading {
        Reading {
            device: "press-1".into(),
            point: "temperature".into(),
            ts: 1_767_225_600_000_000_000,
            value,
            unit: Some("Cel".into()),
            quality: Quality::Good,
            seq: 1,
            source: "sim://press-1".into(),
        }
    }

    /// The vectors are the `vector` blocks of docs/cdm.md: a JSON reading,
    /// then its encoding and leaf hash. The document is the source of truth;
    /// this test fails when code and document disagree.
    #[test]
    fn every_test_vector_in_cdm_md_holds() {
        let doc = include_str!("../../docs/cdm.md");
        let mut checked = std::collections::HashSet::new();
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            if line.trim() != "```vector" {
                continue;
            }
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let field = |name: &str| {
                block
                    .iter()
                    .find_map(|l| l.strip_prefix(name).map(str::trim))
                    .unwrap_or_else(|| panic!("vector without `{name}`: {block:?}"))
            };
            let reading: Reading =
                serde_json::from_str(field("reading:")).expect("vector reading is JSON");
            reading.validate().expect("vector readings are valid");
            assert_eq!(
                alloy::hex::encode_prefixed(reading.encode()),
                field("encoding:"),
                "encoding of {reading:?}"
            );
            assert_eq!(
                alloy::hex::encode_prefixed(reading.leaf_hash()),
                field("leaf:"),
                "leaf of {reading:?}"
            );
            checked.insert(reading.value.kind());
        }
        for kind in [
            ValueKind::Bool,
            ValueKind::I64,
            ValueKind::F64,
            ValueKind::Text,
            ValueKind::Bytes,
        ] {
            assert!(
                checked.contains(&kind),
                "docs/cdm.md has no vector of kind {kind:?}"
            );
        }
    }

    #[test]
    fn node_vector_in_cdm_md_holds() {
        let doc = include_str!("../../docs/cdm.md");
        let block: Vec<&str> = doc
            .split("```node")
            .nth(1)
            .expect("docs/cdm.md has a node vector")
            .lines()
            .take_while(|l| l.trim() != "```")
            .collect();
        let field = |name: &str| {
            let v = block
                .iter()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
                .expect("field");
            let b: [u8; 32] = alloy::hex::decode(v)
                .expect("hex")
                .try_into()
                .expect("32 bytes");
            b
        };
        assert_eq!(node_hash(&field("left:"), &field("right:")), field("node:"));
    }

    #[test]
    fn keccak_is_ethereum_keccak() {
        // keccak256("") as every EVM computes it.
        assert_eq!(
            alloy::hex::encode(keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    #[test]
    fn ids_follow_the_charset_and_length_rules() {
        assert!(validate_device("press-1").is_ok());
        assert!(validate_device("a").is_ok());
        assert!(validate_device(&"a".repeat(64)).is_ok());
        assert!(validate_device(&"a".repeat(65)).is_err());
        assert!(validate_device("").is_err());
        assert!(validate_device("-press").is_err());
        assert!(validate_device("press 1").is_err());
        assert!(validate_device("pumpe/1").is_err());
        assert!(validate_device("prüfstand").is_err());
        assert!(validate_point("motor/temp").is_ok());
        assert!(validate_point(&"p".repeat(129)).is_err());
        assert!(validate_unit("m/s").is_ok());
        assert!(validate_unit("kW h").is_err());
        assert!(validate_source("fieldbus-tcp://10.0.0.5:502/1").is_ok());
        assert!(validate_source("bad\nsource").is_err());
    }

    #[test]
    fn floats_are_finite_and_zero_is_positive() {
        assert!(matches!(
            Value::f64(f64::NAN),
            Err(CdmError::NonFinite { .. })
        ));
        assert!(matches!(
            Value::f64(f64::INFINITY),
            Err(CdmError::NonFinite { .. })
        ));
        let zero = Value::f64(-0.0).expect("finite");
        assert_eq!(reading(zero).encode(), reading(Value::F64(0.0)).encode());
        assert_eq!(
            reading(Value::F64(-0.0)).validate(),
            Err(CdmError::NegativeZero)
        );
    }

    #[test]
    fn sizes_are_bounded() {
        let big = Value::Text("x".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(
            reading(big).validate(),
            Err(CdmError::TooLong { .. })
        ));
        assert!(
            reading(Value::Bytes(vec![0; MAX_VALUE_LEN]))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn every_field_changes_the_leaf() {
        let base = reading(Value::I64(5));
        let leaf = base.leaf_hash();
        let variants = [
            Reading {
                seq: 2,
                ..base.clone()
            },
            Reading {
                ts: base.ts + 1,
                ..base.clone()
            },
            Reading {
                device: "press-2".into(),
                ..base.clone()
            },
            Reading {
                point: "temperaturf".into(),
                ..base.clone()
            },
            Reading {
                unit: None,
                ..base.clone()
            },
            Reading {
                quality: Quality::Bad,
                ..base.clone()
            },
            Reading {
                source: "sim://x".into(),
                ..base.clone()
            },
            Reading {
                value: Value::I64(6),
                ..base.clone()
            },
            Reading {
                value: Value::F64(5.0),
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.leaf_hash(), leaf, "{v:?}");
        }
        // Shifting bytes between adjacent strings changes the encoding:
        // lengths are part of it.
        let a = Reading {
            device: "ab".into(),
            point: "c".into(),
            ..base.clone()
        };
        let b = Reading {
            device: "a".into(),
            point: "bc".into(),
            ..base
        };
        assert_ne!(a.encode(), b.encode());
    }

    #[test]
    fn leaf_and_node_domains_differ() {
        // A leaf whose encoding happened to be 64 bytes can never collide
        // with a node over the same bytes: the first hashed byte differs.
        let r = reading(Value::Bool(true));
        let enc = r.encode();
        let mut as_node = vec![NODE_TAG];
        as_node.extend_from_slice(&enc);
        assert_ne!(keccak256(&as_node), r.leaf_hash());
    }
}
