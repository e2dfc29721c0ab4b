//! The Modbus requests the driver sends and the answers it accepts, as
//! protocol data units (function code and data; Modbus Application
//! Protocol V1.1b3, §6), whatever the link: the TCP link hands them to
//! tokio-modbus, the RTU master (`rtu/`) frames them itself and uses
//! [`Request::answer`] to tell its slave's answer from anything else on
//! the line.

use tokio_modbus::ExceptionCode;

use super::plan::Area;

/// One request the driver makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read `count` coils (1), discrete inputs (2), holding (3) or input
    /// registers (4) from `start`.
    Read { area: Area, start: u16, count: u16 },
    /// Write single coil (5).
    WriteCoil { address: u16, on: bool },
    /// Write multiple coils (15).
    WriteCoils { address: u16, values: &'a [bool] },
    /// Write single register (6).
    WriteRegister { address: u16, value: u16 },
    /// Write multiple registers (16).
    WriteRegisters { address: u16, values: &'a [u16] },
}

/// What a device answered with, when it was not an exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Coils or discrete inputs, exactly as many as were asked for.
    Bits(Vec<bool>),
    /// Registers, exactly as many as were asked for.
    Registers(Vec<u16>),
    /// A write acknowledged (its echo matched the request).
    Written,
}

/// The value of a coil that is on in function 5 (Application Protocol §6.5).
const COIL_ON: u16 = 0xFF00;

impl Request<'_> {
    /// The function code.
    pub fn function(&self) -> u8 {
        match self {
            Request::Read { area, .. } => match area {
                Area::Coil => 1,
                Area::DiscreteInput => 2,
                Area::HoldingRegister => 3,
                Area::InputRegister => 4,
            },
            Request::WriteCoil { .. } => 5,
            Request::WriteRegister { .. } => 6,
            Request::WriteCoils { .. } => 15,
            Request::WriteRegisters { .. } => 16,
        }
    }

    /// Appends the PDU (function code, then its data, big-endian) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.function());
        match *self {
            Request::Read { start, count, .. } => {
                out.extend(start.to_be_bytes());
                out.extend(count.to_be_bytes());
            }
            Request::WriteCoil { address, on } => {
                out.extend(address.to_be_bytes());
                out.extend((if on { COIL_ON } else { 0 }).to_be_bytes());
            }
            Request::WriteRegister { address, value } => {
                out.extend(address.to_be_bytes());
                out.extend(value.to_be_bytes());
            }
            Request::WriteCoils { address, values } => {
                out.extend(address.to_be_bytes());
                out.extend(quantity(values.len()).to_be_bytes());
                let packed = pack_bits(values);
                out.push(byte_count(packed.len()));
                out.extend(packed);
            }
            Request::WriteRegisters { address, values } => {
                out.extend(address.to_be_bytes());
                out.extend(quantity(values.len()).to_be_bytes());
                out.push(byte_count(2 * values.len()));
                for v in values {
                    out.extend(v.to_be_bytes());
                }
            }
        }
    }

    /// The data bytes a valid answer's byte count announces (reads only).
    pub fn answer_data_len(&self) -> Option<usize> {
        match *self {
            Request::Read { area, count, .. } if area.is_bits() => {
                Some(usize::from(count).div_ceil(8))
            }
            Request::Read { count, .. } => Some(2 * usize::from(count)),
            _ => None,
        }
    }

    /// Reads `pdu` (function code first) as the answer to this request:
    /// its data, or the exception it reports; `None` when it is not an
    /// answer to this request (another function, another byte count, a
    /// write echo that does not match) — on a serial line that is a frame
    /// meant for someone else, or a stale one.
    pub fn answer(&self, pdu: &[u8]) -> Option<Result<Answer, ExceptionCode>> {
        let (&function, data) = pdu.split_first()?;
        if function == self.function() | 0x80 {
            return match data {
                [code] => Some(Err(ExceptionCode::new(*code))),
                _ => None,
            };
        }
        if function != self.function() {
            return None;
        }
        let word = |i: usize| Some(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
        match *self {
            Request::Read { area, count, .. } => {
                let (&announced, values) = data.split_first()?;
                if usize::from(announced) != values.len()
                    || Some(values.len()) != self.answer_data_len()
                {
                    return None;
                }
                let count = usize::from(count);
                if area.is_bits() {
                    let bits = (0..count).map(|i| values[i / 8] & (1 << (i % 8)) != 0);
                    Some(Ok(Answer::Bits(bits.collect())))
                } else {
                    let words = values.chunks_exact(2);
                    let words = words.map(|w| u16::from_be_bytes([w[0], w[1]]));
                    Some(Ok(Answer::Registers(words.collect())))
                }
            }
            Request::WriteCoil { address, on } => {
                let value = if on { COIL_ON } else { 0 };
                echoes(data, word, address, value)
            }
            Request::WriteRegister { address, value } => echoes(data, word, address, value),
            Request::WriteCoils { address, values } => {
                echoes(data, word, address, quantity(values.len()))
            }
            Request::WriteRegisters { address, values } => {
                echoes(data, word, address, quantity(values.len()))
            }
        }
    }
}

/// A write's answer echoes its address and value (or quantity).
fn echoes(
    data: &[u8],
    word: impl Fn(usize) -> Option<u16>,
    address: u16,
    value: u16,
) -> Option<Result<Answer, ExceptionCode>> {
    (data.len() == 4 && word(0)? == address && word(2)? == value).then_some(Ok(Answer::Written))
}

/// Coils packed 8 to a byte, the first in the least significant bit.
fn pack_bits(values: &[bool]) -> Vec<u8> {
    let mut packed = vec![0u8; values.len().div_ceil(8)];
    for (i, _) in values.iter().enumerate().filter(|(_, on)| **on) {
        packed[i / 8] |= 1 << (i % 8);
    }
    packed
}

// Callers stay within the protocol's limits (123 registers, 1968 coils per
// write; validation and the encoder see to it), so these never saturate.
fn quantity(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn byte_count(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(request: Request<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        request.encode(&mut out);
        out
    }

    #[test]
    fn requests_encode_as_the_specification_shows() {
        // The examples of the Application Protocol specification, §6.
        let read = Request::Read {
            area: Area::HoldingRegister,
            start: 0x6B,
            count: 3,
        };
        assert_eq!(encoded(read), [0x03, 0x00, 0x6B, 0x00, 0x03]);
        let coil = Request::WriteCoil {
            address: 0xAC,
            on: true,
        };
        assert_eq!(encoded(coil), [0x05, 0x00, 0xAC, 0xFF, 0x00]);
        let coils = [true, false, true, true, false, false, true, true, true, false];
        let coils = Request::WriteCoils {
            address: 0x13,
            values: &coils,
        };
        assert_eq!(
            encoded(coils),
            [0x0F, 0x00, 0x13, 0x00, 0x0A, 0x02, 0xCD, 0x01]
        );
        let registers = Request::WriteRegisters {
            address: 0x01,
            values: &[0x000A, 0x0102],
        };
        assert_eq!(
            encoded(registers),
            [0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02]
        );
    }

    #[test]
    fn answers_are_checked_against_their_request() {
        let read = Request::Read {
            area: Area::HoldingRegister,
            start: 0x6B,
            count: 3,
        };
        let good = [0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64];
        assert_eq!(
            read.answer(&good),
            Some(Ok(Answer::Registers(vec![0x022B, 0, 0x64])))
        );
        // Another byte count (an answer to another read), another function.
        assert_eq!(read.answer(&[0x03, 0x02, 0x00, 0x01]), None);
        assert_eq!(read.answer(&[0x04, 0x06, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(
            read.answer(&[0x83, 0x02]),
            Some(Err(ExceptionCode::IllegalDataAddress))
        );
        assert_eq!(read.answer(&[0x84, 0x02]), None);
        let coils = Request::Read {
            area: Area::Coil,
            start: 0x13,
            count: 10,
        };
        let bits = coils.answer(&[0x01, 0x02, 0xCD, 0x01]);
        let want = [true, false, true, true, false, false, true, true, true, false];
        assert_eq!(bits, Some(Ok(Answer::Bits(want.to_vec()))));
        let write = Request::WriteRegister {
            address: 1,
            value: 3,
        };
        assert_eq!(
            write.answer(&[0x06, 0, 1, 0, 3]),
            Some(Ok(Answer::Written))
        );
        assert_eq!(write.answer(&[0x06, 0, 1, 0, 4]), None, "another value");
    }
}
