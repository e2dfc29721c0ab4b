//! Register codec: Modbus registers ⇄ typed values, for every data type
//! and byte/word order.
//!
//! A value of N bytes `A B C D …` (A most significant, as in big-endian)
//! occupies N/2 registers. The order names how the bytes sit in them:
//!
//! | order | 32-bit registers | 64-bit registers | meaning |
//! |---|---|---|---|
//! | `ABCD` | `AB CD` | `AB CD EF GH` | big-endian (the Modbus default) |
//! | `CDAB` | `CD AB` | `GH EF CD AB` | words swapped (little-endian word order) |
//! | `BADC` | `BA DC` | `BA DC FE HG` | bytes swapped within each word |
//! | `DCBA` | `DC BA` | `HG FE DC BA` | little-endian |
//!
//! 16-bit types follow the byte half of the order (`BADC`/`DCBA` swap the
//! two bytes). Strings hold two characters per register, the first in the
//! high byte (`ABCD`, `CDAB`) or the low byte (`BADC`, `DCBA`); trailing
//! NULs and spaces are trimmed. A `bit` is bit 0–15 (0 = least
//! significant) of one register's value.

use serde::Deserialize;

use crate::RawValue;

/// How a point's registers or bits are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    /// One bit of a register (`bit = 0..15`).
    Bit,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// `length` registers of text (two bytes each).
    String,
}

/// Byte and word order of multi-byte values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum Order {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

impl Order {
    fn words_swapped(self) -> bool {
        matches!(self, Order::CDAB | Order::DCBA)
    }
    fn bytes_swapped(self) -> bool {
        matches!(self, Order::BADC | Order::DCBA)
    }
}

impl DataType {
    /// Registers (or bits, for `bool`) one value occupies; `length` is a
    /// string's register count.
    pub fn width(self, length: u16) -> u16 {
        match self {
            DataType::Bool | DataType::Bit | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => length,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Bit => "bit",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        }
    }
}

/// Why a value cannot be written to a point.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("{value:?} does not fit a {ty} register value")]
    OutOfRange { value: RawValue, ty: &'static str },
    #[error("a {given} value cannot be written to a {ty} point")]
    WrongKind {
        given: &'static str,
        ty: &'static str,
    },
    #[error("text of {len} bytes does not fit {registers} registers ({max} bytes)")]
    TextTooLong {
        len: usize,
        registers: u16,
        max: usize,
    },
    #[error(
        "a single bit of a register is written by reading and rewriting the register, not by encoding"
    )]
    BitPoint,
}

/// Big-endian bytes of the value's registers, in the order the device uses.
fn to_bytes(regs: &[u16], order: Order) -> Vec<u8> {
    let mut words: Vec<u16> = regs.to_vec();
    if order.words_swapped() {
        words.reverse();
    }
    let mut bytes = Vec::with_capacity(words.len() * 2);
    for w in words {
        let [hi, lo] = w.to_be_bytes();
        if order.bytes_swapped() {
            bytes.extend([lo, hi]);
        } else {
            bytes.extend([hi, lo]);
        }
    }
    bytes
}

fn from_bytes(bytes: &[u8], order: Order) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            if order.bytes_swapped() {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if order.words_swapped() {
        words.reverse();
    }
    words
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// Decodes one value from its registers (`regs.len() == width`). `bit`
/// is the bit index of a `Bit` point. Numbers decode without allocating.
pub fn decode(ty: DataType, order: Order, bit: u8, regs: &[u16]) -> RawValue {
    if ty == DataType::Bit {
        return RawValue::Bool(regs.first().is_some_and(|r| r >> (bit & 15) & 1 == 1));
    }
    if ty == DataType::Bool {
        return RawValue::Bool(regs.first().is_some_and(|r| *r != 0));
    }
    if ty == DataType::String {
        // Strings keep their words in order; only the byte half applies.
        let byte_order = if order.bytes_swapped() {
            Order::BADC
        } else {
            Order::ABCD
        };
        let bytes = to_bytes(regs, byte_order);
        let text = String::from_utf8_lossy(&bytes);
        return RawValue::Text(text.trim_end_matches(['\0', ' ']).to_owned());
    }
    // Big-endian bytes of up to 4 registers, on the stack.
    let n = regs.len().min(4);
    let mut bytes = [0u8; 8];
    for i in 0..n {
        let word = if order.words_swapped() {
            regs[n - 1 - i]
        } else {
            regs[i]
        };
        let [hi, lo] = word.to_be_bytes();
        let pair = if order.bytes_swapped() {
            [lo, hi]
        } else {
            [hi, lo]
        };
        bytes[2 * i..2 * i + 2].copy_from_slice(&pair);
    }
    match ty {
        DataType::U16 => RawValue::U64(u64::from(u16::from_be_bytes(array(&bytes)))),
        DataType::I16 => RawValue::I64(i64::from(i16::from_be_bytes(array(&bytes)))),
        DataType::U32 => RawValue::U64(u64::from(u32::from_be_bytes(array(&bytes)))),
        DataType::I32 => RawValue::I64(i64::from(i32::from_be_bytes(array(&bytes)))),
        DataType::U64 => RawValue::U64(u64::from_be_bytes(array(&bytes))),
        DataType::I64 => RawValue::I64(i64::from_be_bytes(array(&bytes))),
        DataType::F32 => RawValue::F64(f64::from(f32::from_be_bytes(array(&bytes)))),
        DataType::F64 => RawValue::F64(f64::from_be_bytes(array(&bytes))),
        DataType::Bool | DataType::Bit | DataType::String => unreachable!("handled above"),
    }
}

/// Encodes a value into the registers of a point of type `ty` (`length`
/// registers for strings). Numbers must fit the type exactly: a write
/// never silently truncates.
pub fn encode(
    ty: DataType,
    order: Order,
    length: u16,
    value: &RawValue,
) -> Result<Vec<u16>, EncodeError> {
    let out_of_range = || EncodeError::OutOfRange {
        value: value.clone(),
        ty: ty.as_str(),
    };
    let wrong = || EncodeError::WrongKind {
        given: value.kind_name(),
        ty: ty.as_str(),
    };
    // Text is what an operator typed: it is parsed by the point's type,
    // so integers stay exact and a string point keeps "007" as it is.
    let int = || -> Result<i128, EncodeError> {
        match value {
            RawValue::I64(i) => Ok(i128::from(*i)),
            RawValue::U64(u) => Ok(i128::from(*u)),
            RawValue::Bool(b) => Ok(i128::from(*b)),
            RawValue::F64(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 1.9e19 => {
                Ok(*f as i128)
            }
            RawValue::F64(_) => Err(out_of_range()),
            RawValue::Text(t) => match (t.trim().parse::<i128>(), t.trim().parse::<f64>()) {
                (Ok(i), _) => Ok(i),
                (_, Ok(_)) => Err(out_of_range()),
                _ => Err(wrong()),
            },
            RawValue::Bytes(_) => Err(wrong()),
        }
    };
    let float = || -> Result<f64, EncodeError> {
        match value {
            RawValue::F64(f) => Ok(*f),
            RawValue::I64(i) => Ok(*i as f64),
            RawValue::U64(u) => Ok(*u as f64),
            RawValue::Text(t) => match t.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(f),
                _ => Err(wrong()),
            },
            _ => Err(wrong()),
        }
    };
    let bytes: Vec<u8> = match ty {
        DataType::Bool => {
            let bit = match value {
                RawValue::Bool(b) => *b,
                RawValue::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                    "true" | "on" | "1" => true,
                    "false" | "off" | "0" => false,
                    _ => return Err(wrong()),
                },
                _ => match int()? {
                    0 => false,
                    1 => true,
                    _ => return Err(out_of_range()),
                },
            };
            return Ok(vec![u16::from(bit)]);
        }
        DataType::Bit => return Err(EncodeError::BitPoint),
        DataType::U16 => u16::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::I16 => i16::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => u32::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => i32::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => u64::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::I64 => i64::try_from(int()?)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::F32 => {
            let f = float()?;
            let narrowed = f as f32;
            if f.is_finite() && !narrowed.is_finite() {
                return Err(out_of_range());
            }
            narrowed.to_be_bytes().to_vec()
        }
        DataType::F64 => float()?.to_be_bytes().to_vec(),
        DataType::String => {
            let text = match value {
                RawValue::Text(text) => text.clone(),
                RawValue::I64(i) => i.to_string(),
                RawValue::U64(u) => u.to_string(),
                _ => return Err(wrong()),
            };
            let max = usize::from(length) * 2;
            if text.len() > max {
                return Err(EncodeError::TextTooLong {
                    len: text.len(),
                    registers: length,
                    max,
                });
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(max, 0);
            let byte_order = if order.bytes_swapped() {
                Order::BADC
            } else {
                Order::ABCD
            };
            return Ok(from_bytes(&bytes, byte_order));
        }
    };
    Ok(from_bytes(&bytes, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];

    #[test]
    fn thirty_two_bits_in_every_order() {
        // 0x11223344: A=11 B=22 C=33 D=44.
        let v = RawValue::U64(0x1122_3344);
        let expected = [
            (Order::ABCD, [0x1122, 0x3344]),
            (Order::CDAB, [0x3344, 0x1122]),
            (Order::BADC, [0x2211, 0x4433]),
            (Order::DCBA, [0x4433, 0x2211]),
        ];
        for (order, regs) in expected {
            assert_eq!(
                encode(DataType::U32, order, 0, &v).expect("fits"),
                regs,
                "{order:?}"
            );
            assert_eq!(decode(DataType::U32, order, 0, &regs), v, "{order:?}");
        }
    }

    #[test]
    fn sixty_four_bits_in_every_order() {
        let v = RawValue::U64(0x1122_3344_5566_7788);
        let expected = [
            (Order::ABCD, [0x1122, 0x3344, 0x5566, 0x7788]),
            (Order::CDAB, [0x7788, 0x5566, 0x3344, 0x1122]),
            (Order::BADC, [0x2211, 0x4433, 0x6655, 0x8877]),
            (Order::DCBA, [0x8877, 0x6655, 0x4433, 0x2211]),
        ];
        for (order, regs) in expected {
            assert_eq!(
                encode(DataType::U64, order, 0, &v).expect("fits"),
                regs,
                "{order:?}"
            );
            assert_eq!(decode(DataType::U64, order, 0, &regs), v, "{order:?}");
        }
    }

    #[test]
    fn every_type_round_trips_in_every_order() {
        let cases = [
            (DataType::U16, RawValue::U64(65_535)),
            (DataType::I16, RawValue::I64(-12_345)),
            (DataType::U32, RawValue::U64(4_000_000_000)),
            (DataType::I32, RawValue::I64(-2_000_000_000)),
            (DataType::U64, RawValue::U64(u64::MAX)),
            (DataType::I64, RawValue::I64(i64::MIN)),
            (DataType::F32, RawValue::F64(-1.5)),
            (DataType::F64, RawValue::F64(std::f64::consts::PI)),
        ];
        for (ty, value) in cases {
            for order in ORDERS {
                let regs = encode(ty, order, 0, &value).expect("fits");
                assert_eq!(regs.len(), usize::from(ty.width(0)));
                assert_eq!(decode(ty, order, 0, &regs), value, "{ty:?} {order:?}");
            }
        }
    }

    #[test]
    fn known_float_bit_patterns() {
        // 123.456f32 = 0x42F6E979.
        assert_eq!(
            decode(DataType::F32, Order::ABCD, 0, &[0x42F6, 0xE979]),
            RawValue::F64(f64::from(123.456f32))
        );
        assert_eq!(
            decode(DataType::F32, Order::CDAB, 0, &[0xE979, 0x42F6]),
            RawValue::F64(f64::from(123.456f32))
        );
        // A NaN from a device is passed on; the normalizer rejects it.
        let RawValue::F64(nan) = decode(DataType::F32, Order::ABCD, 0, &[0x7FC0, 0]) else {
            panic!("f32 decodes to f64")
        };
        assert!(nan.is_nan());
    }

    #[test]
    fn strings_and_bits() {
        let regs = encode(
            DataType::String,
            Order::ABCD,
            4,
            &RawValue::Text("PRESS7".into()),
        )
        .expect("fits");
        assert_eq!(regs, [0x5052, 0x4553, 0x5337, 0x0000]);
        assert_eq!(
            decode(DataType::String, Order::ABCD, 0, &regs),
            RawValue::Text("PRESS7".into())
        );
        let swapped = encode(
            DataType::String,
            Order::BADC,
            4,
            &RawValue::Text("PRESS7".into()),
        )
        .expect("fits");
        assert_eq!(swapped, [0x5250, 0x5345, 0x3753, 0x0000]);
        assert_eq!(
            decode(DataType::String, Order::DCBA, 0, &swapped),
            RawValue::Text("PRESS7".into())
        );
        assert_eq!(
            encode(
                DataType::String,
                Order::ABCD,
                2,
                &RawValue::Text("TOO LONG".into())
            ),
            Err(EncodeError::TextTooLong {
                len: 8,
                registers: 2,
                max: 4
            })
        );
        assert_eq!(
            decode(DataType::Bit, Order::ABCD, 3, &[0b1000]),
            RawValue::Bool(true)
        );
        assert_eq!(
            decode(DataType::Bit, Order::ABCD, 2, &[0b1000]),
            RawValue::Bool(false)
        );
        assert_eq!(
            decode(DataType::Bit, Order::ABCD, 15, &[0x8000]),
            RawValue::Bool(true)
        );
    }

    #[test]
    fn writes_never_truncate() {
        assert!(matches!(
            encode(DataType::U16, Order::ABCD, 0, &RawValue::I64(70_000)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(DataType::U16, Order::ABCD, 0, &RawValue::I64(-1)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(DataType::I16, Order::ABCD, 0, &RawValue::F64(1.5)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(DataType::F32, Order::ABCD, 0, &RawValue::F64(1e300)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(DataType::U32, Order::ABCD, 0, &RawValue::Text("one".into())),
            Err(EncodeError::WrongKind { .. })
        ));
        assert!(matches!(
            encode(DataType::U32, Order::ABCD, 0, &RawValue::Text("1.5".into())),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(DataType::Bool, Order::ABCD, 0, &RawValue::I64(2)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert_eq!(
            encode(DataType::I16, Order::ABCD, 0, &RawValue::F64(-2.0)),
            Ok(vec![0xFFFE])
        );
        assert_eq!(
            encode(DataType::Bool, Order::ABCD, 0, &RawValue::Bool(true)),
            Ok(vec![1])
        );
        assert_eq!(
            encode(DataType::Bit, Order::ABCD, 0, &RawValue::Bool(true)),
            Err(EncodeError::BitPoint)
        );
    }

    #[test]
    fn typed_text_is_parsed_by_the_point_type() {
        let text = |t: &str| RawValue::Text(t.into());
        assert_eq!(
            encode(DataType::U64, Order::ABCD, 0, &text("18446744073709551615")),
            Ok(vec![0xFFFF; 4])
        );
        assert_eq!(
            encode(DataType::I16, Order::ABCD, 0, &text(" -2 ")),
            Ok(vec![0xFFFE])
        );
        assert_eq!(
            encode(DataType::F32, Order::ABCD, 0, &text("1.5")),
            Ok(vec![0x3FC0, 0x0000])
        );
        assert!(matches!(
            encode(DataType::F32, Order::ABCD, 0, &text("nan")),
            Err(EncodeError::WrongKind { .. })
        ));
        for (t, bit) in [("on", 1), ("TRUE", 1), ("1", 1), ("off", 0), ("false", 0)] {
            assert_eq!(
                encode(DataType::Bool, Order::ABCD, 0, &text(t)),
                Ok(vec![bit])
            );
        }
        // A string point keeps exactly what was typed.
        assert_eq!(
            encode(DataType::String, Order::ABCD, 2, &text("007")),
            Ok(vec![0x3030, 0x3700])
        );
    }
}
