//! A small CBOR (RFC 8949) reader for SenML CBOR packs (RFC 8428 §6):
//! one data item into a `serde_json::Value`, with SenML's integer labels
//! turned into their JSON names so one SenML decoder serves both. Bounded:
//! nesting depth and item counts are checked against the input, and every
//! malformed input is an error, never a panic.

use serde_json::{Map, Number, Value};

/// Deepest nesting accepted (a SenML pack needs 2).
const MAX_DEPTH: usize = 16;

/// SenML CBOR labels (RFC 8428 table 4) → JSON names.
fn senml_label(label: i64) -> Option<&'static str> {
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

    fn item(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(err("nested too deep", self.at));
        }
        let start = self.at;
        let initial = self.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1F);
        match major {
            0 => {
                let n = self
                    .argument(info)?
                    .ok_or_else(|| err("indefinite integer", start))?;
                Ok(Value::Number(n.into()))
            }
            1 => {
                let n = self
                    .argument(info)?
                    .ok_or_else(|| err("indefinite integer", start))?;
                let v = i64::try_from(n)
                    .map(|n| -1 - n)
                    .map_err(|_| err("negative integer out of range", start))?;
                Ok(Value::Number(v.into()))
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
                    Ok(Value::String(text.to_owned()))
                } else {
                    Ok(Value::String(crate::payload::decode::base64url_encode(raw)))
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
                Ok(Value::Array(items))
            }
            5 => {
                let mut map = Map::new();
                let mut entry = |r: &mut Self| -> Result<(), String> {
                    let key = match r.item(depth + 1)? {
                        Value::String(s) => s,
                        Value::Number(n) => match n.as_i64().and_then(senml_label) {
                            Some(name) => name.to_owned(),
                            None => n.to_string(),
                        },
                        _ => return Err(err("a map key that is not text or an integer", r.at)),
                    };
                    let value = r.item(depth + 1)?;
                    map.insert(key, value);
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
                Ok(Value::Object(map))
            }
            // A tag: the tagged item as it is.
            6 => {
                self.argument(info)?
                    .ok_or_else(|| err("indefinite tag", start))?;
                self.item(depth + 1)
            }
            _ => match info {
                20 => Ok(Value::Bool(false)),
                21 => Ok(Value::Bool(true)),
                22 | 23 => Ok(Value::Null),
                25 => {
                    let bits = u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default());
                    float(half(bits), start)
                }
                26 => {
                    let bits = u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default());
                    float(f64::from(f32::from_bits(bits)), start)
                }
                27 => {
                    let bits = u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default());
                    float(f64::from_bits(bits), start)
                }
                _ => Err(err("unsupported simple value", start)),
            },
        }
    }
}

fn float(f: f64, at: usize) -> Result<Value, String> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| err("NaN or infinity", at))
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
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = Reader { bytes, at: 0 };
    let value = reader.item(0)?;
    if reader.at != bytes.len() {
        return Err(err("trailing bytes after the item", reader.at));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc8428_cbor_example() {
        // RFC 8428 section 6 example: [{-2: "urn:dev:ow:10e2073a0108006:", -3: 1276020076.001,
        // -4: "A", -1: 5, 0: "voltage", 1: "V", 2: 120.1}, {0: "current", 6: -5, 2: 1.2}]
        // (encoded by Python's cbor2)
        let hex = "82a721781b75726e3a6465763a6f773a3130653230373361303130383030363a22fb41d303a15b00106223614120050067766f6c7461676501615602fb405e066666666666a3006763757272656e74062402fb3ff3333333333333";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let v = decode(&bytes).unwrap();
        assert_eq!(v[0]["bn"], "urn:dev:ow:10e2073a0108006:");
        assert_eq!(v[0]["bver"], 5);
        assert_eq!(v[0]["bt"], 1276020076.001);
        assert_eq!(v[0]["n"], "voltage");
        assert_eq!(v[0]["v"], 120.1);
        assert_eq!(v[1]["t"], -5);
        assert_eq!(v[1]["v"], 1.2);
    }

    #[test]
    fn every_kind_and_indefinite_lengths() {
        // [_ {0: "b", 4: true}, {0: "d", 8: h'010203'}, {0: "h", 2: 1.5 (half)} ] with an indefinite array
        let bytes = [
            0x9F, 0xA2, 0x00, 0x61, b'b', 0x04, 0xF5, 0xA2, 0x00, 0x61, b'd', 0x08, 0x43, 1, 2, 3,
            0xA2, 0x00, 0x61, b'h', 0x02, 0xF9, 0x3E, 0x00, 0xFF,
        ];
        assert_eq!(
            decode(&bytes).unwrap(),
            json!([{"n": "b", "vb": true}, {"n": "d", "vd": "AQID"}, {"n": "h", "v": 1.5}])
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
            &[0xFB, 0x7F, 0xF8, 0, 0, 0, 0, 0, 0], // NaN
        ] {
            assert!(decode(bad).is_err(), "{bad:02x?}");
        }
        // Deep nesting is bounded.
        let deep = vec![0x81; 100];
        assert!(decode(&deep).unwrap_err().contains("deep"));
    }
}
