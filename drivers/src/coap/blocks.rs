//! Block-wise transfers (RFC 7959) on the server: Block1 uploads
//! assembled per endpoint and path, and the Block2 block of an answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::request::Refusal;
use super::wire::{Block, Code};

/// How long a Block1 transfer may pause between blocks.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Block1 transfers in progress at once.
const MAX_ASSEMBLIES: usize = 1000;

/// A block's size; SZX 7 is reserved and "MUST lead to a 4.00 Bad
/// Request" (RFC 7959 §2.2). `which` names the option.
pub(super) fn block_size(block: Block, which: &str) -> Result<usize, Refusal> {
    block.size().ok_or_else(|| {
        (
            Code::BAD_REQUEST,
            "bad_block",
            format!("{which} SZX 7 is reserved"),
        )
    })
}

/// A request's whole payload and its Content-Format.
pub(super) type Body = (Vec<u8>, Option<u16>);

/// A Block1 transfer in progress.
struct Assembly {
    data: Vec<u8>,
    next: u32,
    format: Option<u16>,
    touched: Instant,
}

/// Block1 transfers in progress, by endpoint and path; bounded in number,
/// each in size and in how long it may pause.
#[derive(Default)]
pub(super) struct Assemblies(Mutex<HashMap<(SocketAddr, String), Assembly>>);

impl Assemblies {
    /// Adds one block (`format` is the request's Content-Format): the whole
    /// payload and its format once the last block is in, `None` while more
    /// are due.
    pub(super) fn add(
        &self,
        block: Block,
        payload: &[u8],
        format: Option<u16>,
        (peer, path): (SocketAddr, &str),
        max_payload: usize,
    ) -> Result<Option<Body>, Refusal> {
        let size = block_size(block, "Block1")?;
        if block.more && payload.len() != size {
            return Err((
                Code::BAD_REQUEST,
                "bad_block",
                "a block that is not the last must have the block size".into(),
            ));
        }
        let key = (peer, path.to_owned());
        let mut blocks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        blocks.retain(|_, a| now.duration_since(a.touched) < BLOCK_TIMEOUT);
        if block.num == 0 {
            if blocks.len() >= MAX_ASSEMBLIES {
                return Err((
                    Code::SERVICE_UNAVAILABLE,
                    "too_many_transfers",
                    "too many block transfers".into(),
                ));
            }
            blocks.insert(
                key.clone(),
                Assembly {
                    data: Vec::new(),
                    next: 0,
                    format,
                    touched: now,
                },
            );
        }
        let Some(assembly) = blocks.get_mut(&key) else {
            return Err((
                Code::REQUEST_ENTITY_INCOMPLETE,
                "bad_block",
                "no transfer in progress: start at block 0".into(),
            ));
        };
        if block.num != assembly.next || assembly.data.len() != block.num as usize * size {
            blocks.remove(&key);
            return Err((
                Code::REQUEST_ENTITY_INCOMPLETE,
                "bad_block",
                "blocks out of order".into(),
            ));
        }
        assembly.data.extend_from_slice(payload);
        assembly.next += 1;
        assembly.touched = now;
        if assembly.data.len() > max_payload {
            blocks.remove(&key);
            return Err((
                Code::REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                "payload over max_payload".into(),
            ));
        }
        if block.more {
            return Ok(None);
        }
        Ok(blocks.remove(&key).map(|a| (a.data, format.or(a.format))))
    }
}

/// The part of `body` an answer carries and its Block2 option: the block
/// asked for, or (none asked for) the whole body when it fits `default`'s
/// size (`None`: no Block2 option) and else the first block of that size
/// (RFC 7959 §2.4).
pub(super) fn block2(
    body: &[u8],
    asked: Option<Block>,
    default: Block,
) -> Result<(&[u8], Option<Block>), Refusal> {
    let block = match asked {
        Some(block) => block,
        None if body.len() <= default.size().unwrap_or(1024) => return Ok((body, None)),
        None => default,
    };
    let size = block_size(block, "Block2")?;
    let start = block.num as usize * size;
    if start >= body.len() && block.num > 0 {
        return Err((
            Code::BAD_OPTION,
            "bad_option",
            format!(
                "Block2 block {} is beyond the {}-byte representation",
                block.num,
                body.len()
            ),
        ));
    }
    let end = (start + size).min(body.len());
    let answer = Block {
        more: end < body.len(),
        ..block
    };
    Ok((&body[start.min(end)..end], Some(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    fn block(num: u32, more: bool, szx: u8) -> Block {
        Block { num, more, szx }
    }

    #[test]
    fn block1_assembles_in_order_and_refuses_gaps() {
        let a = Assemblies::default();
        let add = |b, p: &[u8]| a.add(b, p, Some(110), (PEER, "x"), 100);
        assert_eq!(add(block(0, true, 0), &[1; 16]), Ok(None));
        assert_eq!(add(block(1, true, 0), &[2; 16]), Ok(None));
        let (data, format) = add(block(2, false, 0), &[3; 5]).expect("ok").expect("complete");
        assert_eq!((data.len(), format), (37, Some(110)));
        assert_eq!(add(block(3, false, 0), b"x").map_err(|e| e.0), Err(Code::REQUEST_ENTITY_INCOMPLETE));
        assert_eq!(add(block(0, true, 7), &[0; 16]).map_err(|e| e.1), Err("bad_block"));
        assert_eq!(add(block(0, true, 0), &[0; 15]).map_err(|e| e.0), Err(Code::BAD_REQUEST));
        for n in 0..6 {
            let _ = add(block(n, true, 0), &[0; 16]);
        }
        assert_eq!(add(block(6, true, 0), &[0; 16]).map_err(|e| e.1), Err("too_large"));
    }

    #[test]
    fn block2_slices_a_body() {
        let body: Vec<u8> = (0..40).collect();
        let default = block(0, false, 6);
        assert_eq!(block2(&body, None, default), Ok((&body[..], None)));
        let (part, b) = block2(&body, Some(block(0, false, 0)), default).expect("block 0");
        assert_eq!((part, b), (&body[..16], Some(block(0, true, 0))));
        let (part, b) = block2(&body, Some(block(2, false, 0)), default).expect("block 2");
        assert_eq!((part, b), (&body[32..], Some(block(2, false, 0))));
        assert_eq!(block2(&body, Some(block(3, false, 0)), default).map_err(|e| e.0), Err(Code::BAD_OPTION));
        let (part, b) = block2(&body, None, block(0, false, 1)).expect("over the default");
        assert_eq!((part.len(), b), (32, Some(block(0, true, 1))));
    }
}
