//! The CoAP message format (RFC 7252 §3) for the server and the Observe
//! client: a strict, zero-copy parser, an encoder, and what each option
//! number is (RFC 7252 §5.10, RFC 7641, RFC 7959 and later registrations).
//!
//! It replaces coap-lite's codec on our side, because that one is lenient
//! exactly where the RFC says "MUST be processed as a message format
//! error" (a payload marker with no payload, bytes after the header of an
//! Empty message), parses messages of every version as if they were
//! version 1, and encodes an Empty message (a Reset, an Empty ACK) with
//! code 0.01 unless told otherwise. Parsing here borrows from the datagram
//! and allocates nothing; options are walked again when asked for.

use std::fmt;

/// The message type (RFC 7252 §3, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Con,
    Non,
    Ack,
    Rst,
}

impl Kind {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Con,
            1 => Self::Non,
            2 => Self::Ack,
            _ => Self::Rst,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::Con => 0,
            Self::Non => 1,
            Self::Ack => 2,
            Self::Rst => 3,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Con => "CON",
            Self::Non => "NON",
            Self::Ack => "ACK",
            Self::Rst => "RST",
        })
    }
}

/// A code `c.dd` (RFC 7252 §3, §12.1): class in the top 3 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u8);

impl Code {
    pub const EMPTY: Self = Self(0x00);
    pub const GET: Self = Self(0x01);
    pub const POST: Self = Self(0x02);
    pub const PUT: Self = Self(0x03);
    pub const DELETE: Self = Self(0x04);
    /// RFC 8132: FETCH, PATCH and iPATCH are the last methods registered.
    pub const IPATCH: Self = Self(0x07);
    pub const CHANGED: Self = Self(0x44);
    pub const CONTENT: Self = Self(0x45);
    pub const CONTINUE: Self = Self(0x5F);
    pub const BAD_REQUEST: Self = Self(0x80);
    pub const UNAUTHORIZED: Self = Self(0x81);
    pub const BAD_OPTION: Self = Self(0x82);
    pub const NOT_FOUND: Self = Self(0x84);
    pub const METHOD_NOT_ALLOWED: Self = Self(0x85);
    pub const NOT_ACCEPTABLE: Self = Self(0x86);
    pub const REQUEST_ENTITY_INCOMPLETE: Self = Self(0x88);
    pub const REQUEST_ENTITY_TOO_LARGE: Self = Self(0x8D);
    pub const UNSUPPORTED_CONTENT_FORMAT: Self = Self(0x8F);
    pub const SERVICE_UNAVAILABLE: Self = Self(0xA3);
    pub const PROXYING_NOT_SUPPORTED: Self = Self(0xA5);

    pub fn class(self) -> u8 {
        self.0 >> 5
    }

    /// Class 0 and not Empty: a method code, registered or not.
    pub fn is_request(self) -> bool {
        self.class() == 0 && self != Self::EMPTY
    }

    /// Classes 2, 4 and 5 (1, 3, 6 and 7 are reserved; 3 is signaling
    /// in CoAP over TCP only, RFC 8323).
    pub fn is_response(self) -> bool {
        matches!(self.class(), 2 | 4 | 5)
    }

    /// A method this codec knows (0.01 to 0.07); the rest of class 0 is
    /// unassigned.
    pub fn is_known_method(self) -> bool {
        (Self::GET.0..=Self::IPATCH.0).contains(&self.0)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.0 & 31)
    }
}

/// Option numbers (RFC 7252 §12.2 and the registrations after it).
pub mod option {
    pub const IF_MATCH: u16 = 1;
    pub const URI_HOST: u16 = 3;
    pub const ETAG: u16 = 4;
    pub const IF_NONE_MATCH: u16 = 5;
    pub const OBSERVE: u16 = 6;
    pub const URI_PORT: u16 = 7;
    pub const LOCATION_PATH: u16 = 8;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const MAX_AGE: u16 = 14;
    pub const URI_QUERY: u16 = 15;
    pub const HOP_LIMIT: u16 = 16;
    pub const ACCEPT: u16 = 17;
    pub const LOCATION_QUERY: u16 = 20;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE2: u16 = 28;
    pub const PROXY_URI: u16 = 35;
    pub const PROXY_SCHEME: u16 = 39;
    pub const SIZE1: u16 = 60;
    pub const ECHO: u16 = 252;
    pub const NO_RESPONSE: u16 = 258;
    pub const REQUEST_TAG: u16 = 292;

    /// RFC 7252 §5.4.6: odd numbers are critical.
    pub fn is_critical(number: u16) -> bool {
        number & 1 == 1
    }

    /// How an option this codec knows may occur (RFC 7252 §5.4.3,
    /// §5.4.5): an occurrence outside this (a length out of range, a
    /// repetition of a non-repeatable option) is treated like an
    /// unrecognized option.
    #[derive(Debug, Clone, Copy)]
    pub struct Definition {
        pub repeatable: bool,
        pub min: usize,
        pub max: usize,
    }

    /// The options this codec knows. OSCORE (9), EDHOC (21) and
    /// Q-Block1/2 (19, 31) are left out on purpose: nothing here
    /// implements them, and as critical options they must be refused.
    pub fn definition(number: u16) -> Option<Definition> {
        let (repeatable, min, max) = match number {
            IF_MATCH => (true, 0, 8),
            URI_HOST => (false, 1, 255),
            ETAG => (true, 1, 8),
            IF_NONE_MATCH => (false, 0, 0),
            OBSERVE => (false, 0, 3),
            URI_PORT => (false, 0, 2),
            LOCATION_PATH | URI_PATH | URI_QUERY | LOCATION_QUERY => (true, 0, 255),
            CONTENT_FORMAT | ACCEPT => (false, 0, 2),
            MAX_AGE | SIZE2 | SIZE1 => (false, 0, 4),
            HOP_LIMIT => (false, 1, 1),
            BLOCK2 | BLOCK1 => (false, 0, 3),
            PROXY_URI => (false, 1, 1034),
            PROXY_SCHEME => (false, 1, 255),
            ECHO => (false, 1, 40),
            NO_RESPONSE => (false, 0, 1),
            REQUEST_TAG => (true, 0, 8),
            _ => return None,
        };
        Some(Definition {
            repeatable,
            min,
            max,
        })
    }
}

/// Content-Format numbers the drivers read or write.
pub mod format {
    pub const TEXT_PLAIN: u16 = 0;
    pub const LINK_FORMAT: u16 = 40;
    pub const JSON: u16 = 50;
    pub const SENML_JSON: u16 = 110;
    pub const SENML_CBOR: u16 = 112;
}

const PAYLOAD_MARKER: u8 = 0xFF;

/// Why a datagram is not a message to process.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ParseError {
    /// Too short to hold a header: nothing to answer (no message id).
    #[error("{len} bytes: shorter than the 4-byte header")]
    TooShort { len: usize },
    /// RFC 7252 §3: "Messages with unknown version numbers MUST be
    /// silently ignored."
    #[error("version {version}: only version 1 is known")]
    Version { version: u8 },
    /// A message format error; the header was read, so a confirmable or
    /// non-confirmable one can be rejected with a Reset.
    #[error("{kind} {mid:#06x}: {problem}")]
    Format {
        kind: Kind,
        mid: u16,
        problem: FormatProblem,
    },
}

/// What RFC 7252 calls a message format error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatProblem {
    #[error("token length {0} (9 to 15 are reserved)")]
    TokenLength(u8),
    #[error("the token is cut short")]
    TokenCut,
    #[error("option nibble 15 that is not the payload marker, at byte {at}")]
    Nibble15 { at: usize },
    #[error("the option at byte {at} is cut short")]
    OptionCut { at: usize },
    #[error("an option number beyond 65535 at byte {at}")]
    OptionNumber { at: usize },
    #[error("a payload marker followed by no payload")]
    EmptyPayload,
    #[error("an Empty message (code 0.00) with {extra} bytes after the message id")]
    NotEmpty { extra: usize },
}

/// A parsed message, borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub kind: Kind,
    pub code: Code,
    pub mid: u16,
    pub token: &'a [u8],
    /// The options' bytes, validated by `parse`.
    options: &'a [u8],
    pub payload: &'a [u8],
}

/// Parses one datagram strictly (RFC 7252 §3, §3.1, §4.1).
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, ParseError> {
    let [first, code, mid_hi, mid_lo, rest @ ..] = bytes else {
        return Err(ParseError::TooShort { len: bytes.len() });
    };
    let version = first >> 6;
    if version != 1 {
        return Err(ParseError::Version { version });
    }
    let kind = Kind::from_bits(first >> 4);
    let mid = u16::from_be_bytes([*mid_hi, *mid_lo]);
    let code = Code(*code);
    let format = |problem| ParseError::Format { kind, mid, problem };
    let tkl = first & 15;
    if code == Code::EMPTY && (tkl != 0 || !rest.is_empty()) {
        // §4.1: TKL 0 and nothing after the message id, else a format error.
        return Err(format(FormatProblem::NotEmpty {
            extra: usize::from(tkl).max(rest.len()),
        }));
    }
    if tkl > 8 {
        return Err(format(FormatProblem::TokenLength(tkl)));
    }
    let (token, after) = rest
        .split_at_checked(usize::from(tkl))
        .ok_or(format(FormatProblem::TokenCut))?;
    let mut walk = Walk {
        bytes: after,
        at: 0,
        number: 0,
    };
    loop {
        match walk.next_option() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(problem) => return Err(format(problem)),
        }
    }
    let options = &after[..walk.at];
    let payload = match after.get(walk.at..) {
        Some([PAYLOAD_MARKER]) => return Err(format(FormatProblem::EmptyPayload)),
        Some([PAYLOAD_MARKER, payload @ ..]) => payload,
        _ => &[],
    };
    Ok(Message {
        kind,
        code,
        mid,
        token,
        options,
        payload,
    })
}

/// A walk over option bytes: delta and length nibbles with their
/// extensions (RFC 7252 §3.1).
struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
    number: u16,
}

impl<'a> Walk<'a> {
    /// The next option, `None` at the end or at the payload marker (where
    /// `at` stops).
    fn next_option(&mut self) -> Result<Option<(u16, &'a [u8])>, FormatProblem> {
        let start = self.at;
        let Some(&head) = self.bytes.get(start) else {
            return Ok(None);
        };
        if head == PAYLOAD_MARKER {
            return Ok(None);
        }
        let mut i = start + 1;
        let mut extended = |nibble: u8| -> Result<usize, FormatProblem> {
            let cut = FormatProblem::OptionCut { at: start };
            Ok(match nibble {
                15 => return Err(FormatProblem::Nibble15 { at: start }),
                13 => {
                    let b = *self.bytes.get(i).ok_or(cut)?;
                    i += 1;
                    usize::from(b) + 13
                }
                14 => {
                    let b = self.bytes.get(i..i + 2).ok_or(cut)?;
                    i += 2;
                    usize::from(u16::from_be_bytes([b[0], b[1]])) + 269
                }
                n => usize::from(n),
            })
        };
        let delta = extended(head >> 4)?;
        let length = extended(head & 15)?;
        let number = u16::try_from(usize::from(self.number) + delta)
            .map_err(|_| FormatProblem::OptionNumber { at: start })?;
        let value = self
            .bytes
            .get(i..i + length)
            .ok_or(FormatProblem::OptionCut { at: start })?;
        self.number = number;
        self.at = i + length;
        Ok(Some((number, value)))
    }
}

impl<'a> Message<'a> {
    /// The options in order, repeated ones in the order they came.
    pub fn options(&self) -> impl Iterator<Item = (u16, &'a [u8])> + use<'a> {
        let mut walk = Walk {
            bytes: self.options,
            at: 0,
            number: 0,
        };
        // `parse` validated these bytes, so the walk cannot fail here.
        std::iter::from_fn(move || walk.next_option().ok().flatten())
    }

    /// The options in order, each with whether this codec recognizes that
    /// occurrence (RFC 7252 §5.4): `Err` names why not — an unknown
    /// number, a repetition of an option that does not repeat (§5.4.5), a
    /// length out of its range (§5.4.3). Such an occurrence is ignored if
    /// elective and refuses the message if critical.
    pub fn checked_options(
        &self,
    ) -> impl Iterator<Item = (u16, &'a [u8], Result<(), &'static str>)> + use<'a> {
        let mut last = None;
        self.options().map(move |(number, value)| {
            let repeated = last == Some(number);
            last = Some(number);
            let recognized = match option::definition(number) {
                None => Err("an unrecognized option"),
                Some(d) if repeated && !d.repeatable => Err("repeated, and it does not repeat"),
                Some(d) if !(d.min..=d.max).contains(&value.len()) => {
                    Err("its length is out of range")
                }
                Some(_) => Ok(()),
            };
            (number, value, recognized)
        })
    }

    /// The first value of option `number`.
    pub fn option(&self, number: u16) -> Option<&'a [u8]> {
        self.options().find(|(n, _)| *n == number).map(|(_, v)| v)
    }

    /// The first value of option `number` as an unsigned integer
    /// (`None` if absent or longer than 4 bytes).
    pub fn uint_option(&self, number: u16) -> Option<u32> {
        self.option(number).and_then(uint)
    }
}

/// An unsigned option value (RFC 7252 §3.2), at most 4 bytes.
pub fn uint(raw: &[u8]) -> Option<u32> {
    (raw.len() <= 4).then(|| raw.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
}

/// An Empty message (code 0.00, no token, nothing after the message id):
/// a Reset, an Empty ACK, a CoAP ping.
pub fn empty(kind: Kind, mid: u16) -> [u8; 4] {
    let [hi, lo] = mid.to_be_bytes();
    [0x40 | kind.bits() << 4, Code::EMPTY.0, hi, lo]
}

/// Builds one message: the header and token, then options in ascending
/// order of their numbers, then the payload.
#[derive(Debug)]
pub struct Encoder {
    buf: Vec<u8>,
    last: u16,
}

impl Encoder {
    /// A message with `token` (at most 8 bytes: a longer one is cut, which
    /// cannot happen with tokens read by `parse` or made here).
    pub fn new(kind: Kind, code: Code, mid: u16, token: &[u8]) -> Self {
        let token = &token[..token.len().min(8)];
        let mut buf = Vec::with_capacity(32);
        let [hi, lo] = mid.to_be_bytes();
        buf.extend_from_slice(&[0x40 | kind.bits() << 4 | token.len() as u8, code.0, hi, lo]);
        buf.extend_from_slice(token);
        Self { buf, last: 0 }
    }

    /// Adds option `number`; numbers must not decrease.
    pub fn option(mut self, number: u16, value: &[u8]) -> Self {
        debug_assert!(number >= self.last, "options out of order");
        let delta = number.saturating_sub(self.last);
        self.last = number;
        let (dn, dext) = nibble(usize::from(delta));
        let (ln, lext) = nibble(value.len());
        self.buf.push(dn << 4 | ln);
        self.buf.extend_from_slice(dext.as_bytes());
        self.buf.extend_from_slice(lext.as_bytes());
        self.buf.extend_from_slice(value);
        self
    }

    /// Adds an unsigned option in the fewest bytes (0 is empty).
    pub fn uint_option(self, number: u16, value: u32) -> Self {
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        self.option(number, &bytes[skip..])
    }

    /// The message with `payload` (the marker only if there is one).
    pub fn payload(mut self, payload: &[u8]) -> Vec<u8> {
        if !payload.is_empty() {
            self.buf.push(PAYLOAD_MARKER);
            self.buf.extend_from_slice(payload);
        }
        self.buf
    }
}

/// The extension bytes of a delta or length nibble.
enum Ext {
    None,
    One([u8; 1]),
    Two([u8; 2]),
}

impl Ext {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::None => &[],
            Self::One(b) => b,
            Self::Two(b) => b,
        }
    }
}

fn nibble(n: usize) -> (u8, Ext) {
    match n {
        0..13 => (n as u8, Ext::None),
        13..269 => (13, Ext::One([(n - 13) as u8])),
        _ => (
            14,
            Ext::Two(u16::try_from(n - 269).unwrap_or(u16::MAX).to_be_bytes()),
        ),
    }
}

/// A Block1/Block2 option value (RFC 7959 §2.2): NUM, M, SZX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl Block {
    pub fn from_value(value: u32) -> Self {
        Self {
            num: value >> 4,
            more: value & 8 != 0,
            szx: (value & 7) as u8,
        }
    }

    pub fn value(self) -> u32 {
        self.num << 4 | u32::from(self.more) << 3 | u32::from(self.szx)
    }

    /// The block size; SZX 7 is reserved (RFC 7959 §2.2) and has none.
    pub fn size(self) -> Option<usize> {
        (self.szx < 7).then(|| 16usize << self.szx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_error(bytes: &[u8]) -> FormatProblem {
        match parse(bytes) {
            Err(ParseError::Format { problem, .. }) => problem,
            other => panic!("{bytes:02x?}: {other:?}"),
        }
    }

    #[test]
    fn empty_messages_are_four_bytes_with_code_0_00() {
        assert_eq!(empty(Kind::Rst, 0x1234), [0x70, 0x00, 0x12, 0x34]);
        assert_eq!(empty(Kind::Ack, 0xBEEF), [0x60, 0x00, 0xBE, 0xEF]);
        assert_eq!(empty(Kind::Con, 1), [0x40, 0x00, 0x00, 0x01]);
        let reset = empty(Kind::Rst, 7);
        let m = parse(&reset).expect("an Empty Reset parses");
        assert_eq!((m.kind, m.code, m.mid), (Kind::Rst, Code::EMPTY, 7));
    }

    #[test]
    fn a_request_round_trips() {
        let bytes = Encoder::new(Kind::Con, Code::POST, 0x0102, b"\xaa\xbb")
            .option(option::URI_PATH, b"v1")
            .option(option::URI_PATH, b"devices")
            .uint_option(option::CONTENT_FORMAT, 110)
            .option(option::PROXY_URI, &[b'x'; 300])
            .option(65001, b"z")
            .payload(b"[1]");
        let m = parse(&bytes).expect("parses");
        assert_eq!((m.kind, m.code, m.mid, m.token), (Kind::Con, Code::POST, 0x0102, &b"\xaa\xbb"[..]));
        let options: Vec<_> = m.options().collect();
        assert_eq!(options.len(), 5);
        assert_eq!(options[1], (option::URI_PATH, &b"devices"[..]));
        assert_eq!(m.uint_option(option::CONTENT_FORMAT), Some(110));
        assert_eq!(m.option(option::PROXY_URI).map(<[u8]>::len), Some(300));
        assert_eq!(m.option(65001), Some(&b"z"[..]));
        assert_eq!(m.payload, b"[1]");
    }

    #[test]
    fn other_versions_and_short_datagrams_are_not_messages() {
        for first in [0x00u8, 0x80, 0xC0] {
            assert!(matches!(
                parse(&[first, 0x02, 0, 1]),
                Err(ParseError::Version { .. })
            ));
        }
        // Even a malformed one is refused for its version first.
        assert!(matches!(
            parse(&[0x89, 0x02, 0, 1]),
            Err(ParseError::Version { version: 2 })
        ));
        assert!(matches!(parse(&[0x40, 0x02, 0]), Err(ParseError::TooShort { len: 3 })));
    }

    #[test]
    fn format_errors() {
        assert_eq!(format_error(&[0x49, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), FormatProblem::TokenLength(9));
        assert_eq!(format_error(&[0x44, 2, 0, 1, 0]), FormatProblem::TokenCut);
        assert_eq!(format_error(&[0x40, 2, 0, 1, 0xF1, b'x']), FormatProblem::Nibble15 { at: 0 });
        assert_eq!(format_error(&[0x40, 2, 0, 1, 0xBF]), FormatProblem::Nibble15 { at: 0 });
        assert_eq!(format_error(&[0x40, 2, 0, 1, 0xB8, b'v']), FormatProblem::OptionCut { at: 0 });
        assert_eq!(format_error(&[0x40, 2, 0, 1, 0xD1]), FormatProblem::OptionCut { at: 0 });
        assert_eq!(format_error(&[0x40, 2, 0, 1, 0xE0, 0xFF]), FormatProblem::OptionCut { at: 0 });
        assert_eq!(format_error(&[0x40, 2, 0, 1, 0xFF]), FormatProblem::EmptyPayload);
        // 65535 + 1 overflows the option number.
        assert_eq!(
            format_error(&[0x40, 2, 0, 1, 0xE0, 0xFE, 0xF2, 0xE0, 0x00, 0x00]),
            FormatProblem::OptionNumber { at: 3 }
        );
        assert_eq!(format_error(&[0x41, 0, 0, 1, 9]), FormatProblem::NotEmpty { extra: 1 });
        assert_eq!(format_error(&[0x40, 0, 0, 1, 0xFF, 1]), FormatProblem::NotEmpty { extra: 2 });
        assert_eq!(format_error(&[0x70, 0, 0, 1, 0xB1, b'x']), FormatProblem::NotEmpty { extra: 2 });
        // The kind and message id of a malformed message are known.
        assert!(matches!(
            parse(&[0x50, 2, 0x12, 0x34, 0xFF]),
            Err(ParseError::Format { kind: Kind::Non, mid: 0x1234, .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic generator: every datagram either parses
        // (and its options walk to the end) or is refused.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (x.rotate_left(i as u32 * 7) as u8) | if i == 0 { 0x40 } else { 0 })
                .collect();
            if let Ok(m) = parse(&bytes) {
                let _ = m.options().count();
            }
        }
    }

    #[test]
    fn codes_and_blocks() {
        assert_eq!(Code(0x1F).to_string(), "0.31");
        assert!(Code(0x08).is_request() && !Code(0x08).is_known_method());
        assert!(Code::CONTENT.is_response() && !Code(0x20).is_response());
        let b = Block::from_value(0x2E);
        assert_eq!((b.num, b.more, b.szx, b.size()), (2, true, 6, Some(1024)));
        assert_eq!(b.value(), 0x2E);
        assert_eq!(Block::from_value(7).size(), None);
        let delta_13 = Encoder::new(Kind::Ack, Code::CONTENT, 1, b"").option(60, &[1]).payload(b"");
        assert_eq!(delta_13, [0x60, 0x45, 0, 1, 0xD1, 60 - 13, 1]);
    }
}
