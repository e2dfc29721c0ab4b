//! A small CBOR (RFC 8949) reader for SenML CBOR packs (RFC 8428 §6):
//! one data item into an [`Item`] tree, whose records become the
//! [`SenmlRecord`]s the SenML JSON reader makes too, with SenML's integer
//! labels turned into their JSON names, so one resolution (names, base
//! fields, times) serves both. Every number CBOR can carry gets through
//! to SenML as it is — NaN and infinities, integers below −2^63 — so that
//! the SenML rules, not the reader, decide what a time or a value is
//! worth. Bounded: nesting depth and item counts are checked against the
//! input, and every malformed input is an error, never a panic.

use crate::payload::decode::{DecodeError, Decoded, SenmlField, SenmlRecord, senml_records};

/// Deepest nesting accepted (a SenML pack needs 2).
const MAX_DEPTH: usize = 16;

/// SenML CBOR labels (RFC 8428 table 4) → JSON names.
fn senml_label(label: i128) -> Option<&'static str> {
    Some(match label {
        -1 => "bver",
        -2 => "bn",
        -3 => "bt",
        -4 => "bu",
        -5 => "bv",
        -6 => "bs",
        0 => "n",
        1 => "u",
        2 => "v",
        3 => "vs",
        4 => "vb",
        5 => "s",
        6 => "t",
        7 => "ut",
        8 => "vd",
        _ => return None,
    })
}

/// A CBOR data item (tags are dropped: the tagged item stands for itself).
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Major types 0 and 1: −2^64 ..= 2^64 − 1.
    Integer(i128),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
    /// `null` and `undefined`.
    Null,
    Array(Vec<Item>),
    Map(Vec<(Item, Item)>),
}

impl From<Item> for SenmlField {
    fn from(item: Item) -> Self {
        match item {
            Item::Integer(i) => SenmlField::Number(i as f64),
            Item::Float(f) => SenmlField::Number(f),
            Item::Text(t) => SenmlField::Text(t),
            Item::Bytes(b) => SenmlField::Bytes(b),
            Item::Bool(b) => SenmlField::Bool(b),
            Item::Null | Item::Array(_) | Item::Map(_) => SenmlField::Other,
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn err(what: &str, at: usize) -> String {
    format!("CBOR: {what} at byte {at}")
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| err("unexpected end", self.at))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| err("length past the end", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// The argument of an initial byte; `None` for indefinite length.
    fn argument(&mut self, info: u8) -> Result<Option<u64>, String> {
        Ok(Some(match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().unwrap_or_default(),
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().unwrap_or_default(),
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()),
            31 => return Ok(None),
            _ => return Err(err("reserved additional information", self.at - 1)),
        }))
    }

    /// A count of items that must each take at least one byte.
    fn count(&self, n: u64) -> Result<usize, String> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len() - self.at)
            .ok_or_else(|| err("more items than bytes left", self.at))
    }

    fn is_break(&mut self) -> Result<bool, String> {
        if self.bytes.get(self.at) == Some(&0xFF) {
            self.at += 1;
            return Ok(true);
        }
        if self.at >= self.bytes.len() {
            return Err(err("missing break", self.at));
        }
        Ok(false)
    }

    fn item(&mut self, depth: usize) -> Result<Item, String> {
        if depth > MAX_DEPTH {
            return Err(err("nested too deep", self.at));
        }
        let start = self.at;
        let initial = self.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1F);
        match major {
            0 | 1 => {
                let n = self
                    .argument(info)?
                    .ok_or_else(|| err("indefinite integer", start))?;
                // Major type 1 is −1 − n: down to −2^64, which i128 holds.
                Ok(Item::Integer(if major == 0 {
                    i128::from(n)
                } else {
                    -1 - i128::from(n)
                }))
            }
            2 | 3 => {
                let n = self
                    .argument(info)?
                    .ok_or_else(|| err("indefinite-length string (not supported)", start))?;
                let n = usize::try_from(n).map_err(|_| err("string too long", start))?;
                let raw = self.take(n)?;
                if major == 3 {
                    let text =
                        std::str::from_utf8(raw).map_err(|_| err("text is not UTF-8", start))?;
                    Ok(Item::Text(text.to_owned()))
                } else {
                    Ok(Item::Bytes(raw.to_vec()))
                }
            }
            4 => {
                let mut items = Vec::new();
                match self.argument(info)? {
                    Some(n) => {
                        for _ in 0..self.count(n)? {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                    None => {
                        while !self.is_break()? {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                }
                Ok(Item::Array(items))
            }
            5 => {
                let mut entries = Vec::new();
                let mut entry = |r: &mut Self| -> Result<(), String> {
                    let key = r.item(depth + 1)?;
                    let value = r.item(depth + 1)?;
                    entries.push((key, value));
                    Ok(())
                };
                match self.argument(info)? {
                    Some(n) => {
                        for _ in 0..self.count(n)? {
                            entry(self)?;
                        }
                    }
                    None => {
                        while !self.is_break()? {
                            entry(self)?;
                        }
                    }
                }
                Ok(Item::Map(entries))
            }
            // A tag: the tagged item as it is.
            6 => {
                self.argument(info)?
                    .ok_or_else(|| err("indefinite tag", start))?;
                self.item(depth + 1)
            }
            _ => match info {
                20 => Ok(Item::Bool(false)),
                21 => Ok(Item::Bool(true)),
                22 | 23 => Ok(Item::Null),
                25 => {
                    let bits = u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default());
                    Ok(Item::Float(half(bits)))
                }
                26 => {
                    let bits = u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default());
                    Ok(Item::Float(f64::from(f32::from_bits(bits))))
                }
                27 => {
                    let bits = u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default());
                    Ok(Item::Float(f64::from_bits(bits)))
                }
                _ => Err(err("unsupported simple value", start)),
            },
        }
    }
}

/// IEEE 754 half precision → f64.
fn half(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1F);
    let mantissa = f64::from(bits & 0x3FF);
    sign * match exponent {
        0 => mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + mantissa / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Reads exactly one CBOR data item.
pub fn decode(bytes: &[u8]) -> Result<Item, String> {
    let mut reader = Reader { bytes, at: 0 };
    let value = reader.item(0)?;
    if reader.at != bytes.len() {
        return Err(err("trailing bytes after the item", reader.at));
    }
    Ok(value)
}

/// A SenML CBOR pack's values, resolved like SenML JSON's
/// ([`senml_records`]); `now` (UTC ns) resolves relative times.
/// Input that is no CBOR is `malformed_cbor`; CBOR that is no pack, or a
/// record that is no map, `malformed_senml`.
pub fn senml(bytes: &[u8], now: i64) -> Result<(Vec<Decoded>, Vec<DecodeError>), DecodeError> {
    let pack = decode(bytes).map_err(|e| DecodeError::new("malformed_cbor", e))?;
    let Item::Array(records) = pack else {
        return Err(DecodeError::new(
            "malformed_senml",
            "a SenML pack is a CBOR array of records",
        ));
    };
    let records = records.into_iter().enumerate().map(|(i, record)| {
        let malformed = |why: String| DecodeError::new("malformed_senml", format!("record {i}{why}"));
        let Item::Map(fields) = record else {
            return Err(malformed(" is not a map".into()));
        };
        let mut r = SenmlRecord::default();
        for (key, value) in fields {
            let set = match key {
                Item::Integer(label) => match senml_label(label) {
                    Some(name) => r.set(name, value.into()),
                    // A label this gateway does not read, by its number.
                    None => r.set(&label.to_string(), value.into()),
                },
                Item::Text(label) => r.set(&label, value.into()),
                _ => Err("a label that is not text or an integer".into()),
            };
            set.map_err(|why| malformed(format!(": {why}")))?;
        }
        Ok(r)
    });
    Ok(senml_records(records, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceTime, RawValue};

    const NOW: i64 = 1_800_000_000_000_000_000;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn rfc8428_cbor_example() {
        // RFC 8428 section 6 example: [{-2: "urn:dev:ow:10e2073a0108006:", -3: 1276020076.001,
        // -4: "A", -1: 5, 0: "voltage", 1: "V", 2: 120.1}, {0: "current", 6: -5, 2: 1.2}]
        // (encoded by Python's cbor2)
        let bytes = hex(
            "82a721781b75726e3a6465763a6f773a3130653230373361303130383030363a22fb41d303a15b00106223614120050067766f6c7461676501615602fb405e066666666666a3006763757272656e74062402fb3ff3333333333333",
        );
        let Item::Array(records) = decode(&bytes).unwrap() else {
            panic!("an array")
        };
        assert_eq!(
            records[1],
            Item::Map(vec![
                (Item::Integer(0), Item::Text("current".into())),
                (Item::Integer(6), Item::Integer(-5)),
                (Item::Integer(2), Item::Float(1.2)),
            ])
        );
        let (values, errors) = senml(&bytes, NOW).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let bt = (1_276_020_076.001f64 * 1e9) as i64;
        let v = &values[0];
        assert_eq!(
            v.point.as_deref(),
            Some("urn:dev:ow:10e2073a0108006:voltage")
        );
        assert_eq!(
            (v.value.clone(), v.unit.as_deref(), v.time),
            (RawValue::F64(120.1), Some("V"), DeviceTime::At(bt))
        );
        let v = &values[1];
        assert_eq!(
            v.names(None),
            (Some("urn:dev:ow:10e2073a0108006"), Some("current"))
        );
        assert_eq!(
            (v.value.clone(), v.unit.as_deref()),
            (RawValue::F64(1.2), Some("A"))
        );
        assert_eq!(
            v.time,
            DeviceTime::At(((1_276_020_076.001f64 - 5.0) * 1e9) as i64)
        );
    }

    #[test]
    fn every_kind_and_indefinite_lengths() {
        // [_ {0: "b", 4: true}, {0: "d", 8: h'010203'}, {0: "h", 2: 1.5 (half)} ] with an indefinite array
        let bytes = [
            0x9F, 0xA2, 0x00, 0x61, b'b', 0x04, 0xF5, 0xA2, 0x00, 0x61, b'd', 0x08, 0x43, 1, 2, 3,
            0xA2, 0x00, 0x61, b'h', 0x02, 0xF9, 0x3E, 0x00, 0xFF,
        ];
        let (values, errors) = senml(&bytes, NOW).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<_> = values
            .iter()
            .map(|d| (d.point.as_deref(), &d.value))
            .collect();
        assert_eq!(
            got,
            [
                (Some("b"), &RawValue::Bool(true)),
                (Some("d"), &RawValue::Bytes(vec![1, 2, 3])),
                (Some("h"), &RawValue::F64(1.5)),
            ]
        );
    }

    #[test]
    fn numbers_json_cannot_hold_reach_senml_as_they_are() {
        // [{0: "nan", 2: 1, 6: NaN}, {0: "inf", 2: 1, 6: Infinity},
        //  {0: "neg", 2: 1, 6: -2^64}, {0: "vnan", 2: NaN (double)},
        //  {[]: 1}, 1]
        let bytes = hex(concat!(
            "86",
            "a3", "00", "636e616e", "02", "01", "06", "f97e00",
            "a3", "00", "63696e66", "02", "01", "06", "f97c00",
            "a3", "00", "636e6567", "02", "01", "06", "3bffffffffffffffff",
            "a2", "00", "64766e616e", "02", "fb7ff8000000000000",
            "a1", "80", "01",
            "01",
        ));
        let (values, errors) = senml(&bytes, NOW).unwrap();
        let times: Vec<_> = values
            .iter()
            .map(|d| (d.point.as_deref().unwrap_or(""), d.time))
            .collect();
        // A time that is no instant is invalid, not absent.
        assert_eq!(
            times,
            [
                ("nan", DeviceTime::Invalid),
                ("inf", DeviceTime::Invalid),
                ("neg", DeviceTime::Invalid),
                ("vnan", DeviceTime::At(NOW)),
            ]
        );
        // A NaN value reaches the gateway, which rejects it as non_finite.
        assert!(matches!(values[3].value, RawValue::F64(v) if v.is_nan()));
        let details: Vec<_> = errors.iter().map(|e| (e.reason, e.detail.as_str())).collect();
        assert_eq!(
            details,
            [
                (
                    "malformed_senml",
                    "record 4: a label that is not text or an integer"
                ),
                ("malformed_senml", "record 5 is not a map"),
            ]
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &[][..],
            &[0x82, 0x01],                   // array of 2, one item
            &[0x9F, 0x01],                   // indefinite array without break
            &[0x5A, 0xFF, 0xFF, 0xFF, 0xFF], // byte string longer than the input
            &[0x9B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], // huge count
            &[0x63, 0xFF, 0xFE, 0xFD],       // text that is not UTF-8
            &[0x01, 0x02],                   // trailing bytes
            &[0x1C],                         // reserved
            &[0xFB, 0x7F, 0xF8],             // a double cut short
        ] {
            assert!(decode(bad).is_err(), "{bad:02x?}");
            assert_eq!(senml(bad, NOW).unwrap_err().reason, "malformed_cbor");
        }
        // Deep nesting is bounded.
        let deep = vec![0x81; 100];
        assert!(decode(&deep).unwrap_err().contains("deep"));
        // Well-formed CBOR that is no pack.
        assert_eq!(senml(&[0xA0], NOW).unwrap_err().reason, "malformed_senml");
    }
}
