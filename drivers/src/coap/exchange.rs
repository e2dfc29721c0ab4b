//! Exchanges (RFC 7252 §4.4, §4.5): the deduplication of messages seen
//! again within EXCHANGE_LIFETIME, and what an answer needs of its
//! request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::{Kind, Message};

/// RFC 7252 §4.8.2.
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// An exchange: the endpoint and the message id it chose.
pub(super) type ExchangeKey = (SocketAddr, u16);

/// Recently seen exchanges and their answers.
#[derive(Default)]
pub(super) struct Dedup {
    answers: HashMap<ExchangeKey, Option<Vec<u8>>>,
    order: VecDeque<(ExchangeKey, Instant)>,
}

pub(super) enum Seen {
    New,
    Pending,
    Answered(Vec<u8>),
}

impl Dedup {
    pub(super) fn check(&mut self, key: ExchangeKey, capacity: usize) -> Seen {
        let now = Instant::now();
        while let Some((old, at)) = self.order.front() {
            if now.duration_since(*at) < EXCHANGE_LIFETIME && self.order.len() < capacity {
                break;
            }
            self.answers.remove(old);
            self.order.pop_front();
        }
        match self.answers.get(&key) {
            Some(Some(answer)) => Seen::Answered(answer.clone()),
            Some(None) => Seen::Pending,
            None => {
                self.answers.insert(key, None);
                self.order.push_back((key, now));
                Seen::New
            }
        }
    }

    pub(super) fn answer(&mut self, key: ExchangeKey, bytes: Vec<u8>) {
        if let Some(slot) = self.answers.get_mut(&key) {
            *slot = Some(bytes);
        }
    }
}

/// Enough of a request to answer it, now or after its commit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reply {
    pub(super) kind: Kind,
    pub(super) mid: u16,
    token: [u8; 8],
    token_len: usize,
}

impl Reply {
    pub(super) fn of(request: &Message<'_>) -> Self {
        let mut token = [0u8; 8];
        let token_len = request.token.len().min(8);
        token[..token_len].copy_from_slice(&request.token[..token_len]);
        Self {
            kind: request.kind,
            mid: request.mid,
            token,
            token_len,
        }
    }

    pub(super) fn token(&self) -> &[u8] {
        &self.token[..self.token_len]
    }
}
