//! Modbus RTU framing (Modbus over Serial Line V1.02, §2.5.1): a frame is
//! the slave address, a PDU and a CRC-16/MODBUS (low byte first). A master
//! cannot rely on the 3.5-character silences to cut frames (a USB serial
//! adapter hands bytes over in bursts), so frames are cut by the length
//! their function code and byte count announce, and checked by their CRC.
//!
//! Used by the RTU master (`master.rs`) and by the modelled RTU line of
//! `biota-dev bench modbus-rtu`.

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF).
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Appends the CRC of `frame` to it.
pub fn push_crc(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend(crc.to_le_bytes());
}

/// Whether `frame` ends with the CRC of what precedes it (and holds at
/// least an address and a function code).
pub fn crc_ok(frame: &[u8]) -> bool {
    match frame.len().checked_sub(2) {
        Some(n) if n >= 2 => crc16(&frame[..n]).to_le_bytes() == frame[n..],
        _ => false,
    }
}

/// The length of a frame as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLen {
    /// Too few bytes to tell yet.
    NeedMore,
    /// The whole frame, CRC included.
    Known(usize),
    /// A function code whose frame length this driver does not know.
    Unknown,
}

/// The length of an answer (slave to master) that starts with `head`.
pub fn answer_len(head: &[u8]) -> FrameLen {
    let Some(&function) = head.get(1) else {
        return FrameLen::NeedMore;
    };
    match function {
        // Address, function, exception code, CRC.
        f if f & 0x80 != 0 => FrameLen::Known(5),
        // Address, function, byte count, data, CRC.
        1..=4 => head
            .get(2)
            .map_or(FrameLen::NeedMore, |&n| FrameLen::Known(5 + usize::from(n))),
        // The echo of address and value (or quantity).
        5 | 6 | 15 | 16 => FrameLen::Known(8),
        _ => FrameLen::Unknown,
    }
}

/// The length of a request (master to slave) that starts with `head`.
pub fn request_len(head: &[u8]) -> FrameLen {
    let Some(&function) = head.get(1) else {
        return FrameLen::NeedMore;
    };
    match function {
        // Address, function, two 16-bit fields, CRC.
        1..=6 => FrameLen::Known(8),
        // Address, function, start, quantity, byte count, data, CRC.
        15 | 16 => head
            .get(6)
            .map_or(FrameLen::NeedMore, |&n| FrameLen::Known(9 + usize::from(n))),
        _ => FrameLen::Unknown,
    }
}

/// How many frames `bytes` hold, cut by their lengths; trailing bytes
/// that make no whole frame count as one.
pub fn count_answers(bytes: &[u8]) -> u64 {
    let (mut frames, mut rest) = (0, bytes);
    while !rest.is_empty() {
        frames += 1;
        match answer_len(rest) {
            FrameLen::Known(n) if n <= rest.len() => rest = &rest[n..],
            _ => break,
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_of_the_specification_example() {
        // Modbus over Serial Line V1.02, §6.2.2: 02 07 → CRC 0x1241, sent 41 12.
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        let mut frame = vec![0x02, 0x07];
        push_crc(&mut frame);
        assert_eq!(frame, [0x02, 0x07, 0x41, 0x12]);
        assert!(crc_ok(&frame));
        frame[1] ^= 1;
        assert!(!crc_ok(&frame));
        assert!(!crc_ok(&[0x41, 0x12]), "no address and function");
    }

    #[test]
    fn lengths_follow_the_function_and_byte_count() {
        assert_eq!(answer_len(&[1]), FrameLen::NeedMore);
        assert_eq!(answer_len(&[1, 3]), FrameLen::NeedMore);
        assert_eq!(answer_len(&[1, 3, 4]), FrameLen::Known(9));
        assert_eq!(answer_len(&[1, 0x83]), FrameLen::Known(5));
        assert_eq!(answer_len(&[1, 16]), FrameLen::Known(8));
        assert_eq!(answer_len(&[1, 0x2B]), FrameLen::Unknown);
        assert_eq!(request_len(&[1, 3]), FrameLen::Known(8));
        assert_eq!(request_len(&[1, 16, 0, 0, 0, 2]), FrameLen::NeedMore);
        assert_eq!(request_len(&[1, 16, 0, 0, 0, 2, 4]), FrameLen::Known(13));
    }

    #[test]
    fn frames_are_counted_by_length() {
        let mut a = vec![1, 3, 2, 0, 7];
        push_crc(&mut a);
        let mut two = a.clone();
        two.extend(&a);
        assert_eq!(count_answers(&two), 2);
        two.push(0x55);
        assert_eq!(count_answers(&two), 3, "a stray byte counts as one");
        assert_eq!(count_answers(&[]), 0);
    }
}
