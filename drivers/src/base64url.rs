//! base64url (RFC 4648 §5): SenML's `vd` values, in and out.

/// Encodes as base64url without padding (RFC 4648 §5), as SenML's `vd` wants.
pub fn encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Decodes base64url (RFC 4648 §5), with or without padding (`+` and
/// `/` of plain base64 are accepted too); `None` if it is not base64.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_encodes_without_padding() {
        assert_eq!(encode(b""), "");
        assert_eq!(encode(&[1, 2, 3]), "AQID");
        assert_eq!(encode(b"hi"), "aGk");
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn decodes_what_it_encodes_and_refuses_the_rest() {
        for bytes in [&b""[..], b"a", b"ab", b"abc", &[0xfb, 0xff, 0x00, 0x10]] {
            assert_eq!(decode(&encode(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(decode("AQID=="), Some(vec![1, 2, 3]));
        assert_eq!(decode("A*"), None);
    }
}
