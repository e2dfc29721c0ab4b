//! What the server reads from a request's options (RFC 7252 §5.4,
//! §5.10), and how it refuses one.

use super::wire::{self, Block, Code, Message, option};

/// A refusal: the answer's code, the reason it is counted under and a
/// diagnostic (the answer's payload, RFC 7252 §5.5.2).
pub(super) type Refusal = (Code, &'static str, String);

/// What the server reads from a request's options.
#[derive(Debug, Default)]
pub(super) struct RequestOptions {
    /// The Uri-Path segments joined by `/`, without a leading one.
    pub(super) path: String,
    pub(super) content_format: Option<u16>,
    pub(super) accept: Option<u16>,
    pub(super) block1: Option<Block>,
    pub(super) block2: Option<Block>,
}

/// Why a request's options refuse it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OptionRefusal {
    /// RFC 7252 §5.4.1: 4.02 in a CON, a rejection in a NON.
    Bad { number: u16, why: &'static str },
    /// RFC 7252 §5.10.2: 5.05, this is no forward-proxy.
    Proxy { number: u16 },
}

/// Reads a request's options by RFC 7252 §5.4: an elective option this
/// server does not know, or one whose occurrence is out of its definition
/// (length, repetition), is ignored; a critical one refuses the request.
/// Of those it knows, If-Match and If-None-Match refuse too (no ETags
/// here, so no conditional requests) and Proxy-Uri/Proxy-Scheme ask for a
/// proxy. Uri-Host, Uri-Port and Uri-Query are taken and not used: the
/// host and port name this server, and no resource takes a query.
pub(super) fn read_options(request: &Message<'_>) -> Result<RequestOptions, OptionRefusal> {
    let mut out = RequestOptions::default();
    let mut segments = 0usize;
    for (number, value, recognized) in request.checked_options() {
        if let Err(why) = recognized {
            if !option::is_critical(number) {
                continue;
            }
            return Err(OptionRefusal::Bad { number, why });
        }
        let uint = || wire::uint(value).unwrap_or(0);
        match number {
            option::IF_MATCH | option::IF_NONE_MATCH => {
                return Err(OptionRefusal::Bad {
                    number,
                    why: "conditional requests are not supported",
                });
            }
            option::PROXY_URI | option::PROXY_SCHEME => {
                return Err(OptionRefusal::Proxy { number });
            }
            option::URI_PATH => {
                if segments > 0 {
                    out.path.push('/');
                }
                segments += 1;
                out.path.push_str(&String::from_utf8_lossy(value));
            }
            // Both at most 2 bytes by their definitions.
            option::CONTENT_FORMAT => out.content_format = Some(uint() as u16),
            option::ACCEPT => out.accept = Some(uint() as u16),
            option::BLOCK1 => out.block1 = Some(Block::from_value(uint())),
            option::BLOCK2 => out.block2 = Some(Block::from_value(uint())),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::wire::{Encoder, Kind, parse};

    fn read(options: &[(u16, &[u8])]) -> Result<RequestOptions, OptionRefusal> {
        let bytes = options
            .iter()
            .fold(Encoder::new(Kind::Con, Code::POST, 1, b""), |e, (n, v)| {
                e.option(*n, v)
            })
            .payload(b"1");
        read_options(&parse(&bytes).expect("parses"))
    }

    #[test]
    fn the_options_the_server_uses() {
        let o = read(&[
            (option::URI_HOST, b"gw"),
            (option::URI_PORT, &[0x16, 0x33]),
            (option::URI_PATH, b"v1"),
            (option::URI_PATH, b"devices"),
            (option::URI_PATH, b"m-7"),
            (option::CONTENT_FORMAT, &[110]),
            (option::URI_QUERY, b"x=1"),
            (option::ACCEPT, &[]),
            (option::BLOCK2, &[0x02]),
            (option::BLOCK1, &[0x1A]),
            (65000, b"elective"),
        ])
        .expect("taken");
        assert_eq!(o.path, "v1/devices/m-7");
        assert_eq!((o.content_format, o.accept), (Some(110), Some(0)));
        assert_eq!(o.block1.map(|b| (b.num, b.more, b.szx)), Some((1, true, 2)));
        assert_eq!(o.block2.map(|b| (b.num, b.szx)), Some((0, 2)));
    }

    #[test]
    fn critical_options_refuse_and_elective_ones_are_ignored() {
        let bad = |options: &[(u16, &[u8])]| match read(options) {
            Err(OptionRefusal::Bad { number, .. }) => number,
            other => panic!("{options:?}: {other:?}"),
        };
        assert_eq!(bad(&[(65001, b"x")]), 65001);
        assert_eq!(bad(&[(2049, b"")]), 2049);
        assert_eq!(bad(&[(9, b"")]), 9, "OSCORE is not implemented");
        assert_eq!(bad(&[(option::IF_MATCH, b"")]), option::IF_MATCH);
        assert_eq!(bad(&[(option::IF_NONE_MATCH, b"")]), option::IF_NONE_MATCH);
        // §5.4.3, §5.4.5: out of its definition, a critical option is unrecognized.
        assert_eq!(bad(&[(option::ACCEPT, &[0, 0, 50])]), option::ACCEPT);
        assert_eq!(bad(&[(option::BLOCK1, &[1]), (option::BLOCK1, &[2])]), option::BLOCK1);
        assert_eq!(bad(&[(option::URI_HOST, b"")]), option::URI_HOST);
        assert_eq!(
            read(&[(option::PROXY_SCHEME, b"coap")]).err(),
            Some(OptionRefusal::Proxy { number: option::PROXY_SCHEME })
        );
        // An elective one out of its definition is ignored: the second
        // Content-Format, a 3-byte one.
        let o = read(&[(option::CONTENT_FORMAT, &[50]), (option::CONTENT_FORMAT, &[0])]).expect("taken");
        assert_eq!(o.content_format, Some(50));
        let o = read(&[(option::CONTENT_FORMAT, &[0, 0, 50]), (65000, b"")]).expect("taken");
        assert_eq!(o.content_format, None);
    }
}
