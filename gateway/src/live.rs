//! Committed readings fanned out to live subscribers (the API's
//! `/v1/stream`, the web console).
//!
//! The store writer publishes each group commit, after it is durable, on
//! a bounded broadcast channel. Publishing never waits: a subscriber that
//! falls more than the channel's capacity behind loses its place, is told
//! how many commits it missed ([`Next::Lagged`]) and is expected to drop
//! out. With no subscriber the writer does not even build the message.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;

use crate::cdm::Reading;

/// One group commit's readings, in seq order within each series, and
/// their JSON, encoded once by the first subscriber that asks and then
/// shared by all (100 subscribers must not encode every reading 100 times).
#[derive(Debug)]
pub struct Commit {
    pub readings: Vec<Reading>,
    json: OnceLock<Vec<String>>,
}

impl Commit {
    pub fn new(readings: Vec<Reading>) -> Self {
        Self {
            readings,
            json: OnceLock::new(),
        }
    }

    /// `Reading::to_json` of each reading, as text, in the same order.
    pub fn json(&self) -> &[String] {
        self.json.get_or_init(|| {
            self.readings
                .iter()
                .map(|r| serde_json::to_string(&r.json_view()).unwrap_or_default())
                .collect()
        })
    }
}

pub type Committed = Arc<Commit>;

/// The writer's end, and where subscriptions start. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveFeed {
    tx: broadcast::Sender<Committed>,
    subscribers: Arc<AtomicUsize>,
}

impl LiveFeed {
    /// A feed that keeps up to `capacity` commits for the slowest subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            subscribers: Arc::default(),
        }
    }

    /// Whether anyone listens (so the writer can skip building a message).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes a commit; never blocks.
    pub fn publish(&self, readings: Committed) {
        let _ = self.tx.send(readings);
    }

    /// Subscribers currently open.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Relaxed)
    }

    /// A new subscription, unless `max` are already open.
    pub fn subscribe(&self, max: usize) -> Option<Subscription> {
        let taken = self
            .subscribers
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1));
        taken.ok().map(|_| Subscription {
            rx: self.tx.subscribe(),
            subscribers: self.subscribers.clone(),
        })
    }
}

/// What a subscriber gets next.
#[derive(Debug)]
pub enum Next {
    Readings(Committed),
    /// It fell behind and `missed` commits were dropped for it.
    Lagged {
        missed: u64,
    },
    /// The gateway is stopping.
    Closed,
}

/// One subscriber; frees its slot when dropped.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Committed>,
    subscribers: Arc<AtomicUsize>,
}

impl Subscription {
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(readings) => Next::Readings(readings),
            Err(broadcast::error::RecvError::Lagged(missed)) => Next::Lagged { missed },
            Err(broadcast::error::RecvError::Closed) => Next::Closed,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged_and_the_limit_holds() {
        let feed = LiveFeed::new(2);
        assert!(!feed.has_subscribers());
        let mut slow = feed.subscribe(1).expect("first subscriber");
        assert!(feed.subscribe(1).is_none(), "limit of one");
        for _ in 0..5 {
            feed.publish(Arc::new(Commit::new(Vec::new())));
        }
        assert!(matches!(slow.next().await, Next::Lagged { missed: 3 }));
        assert!(matches!(slow.next().await, Next::Readings(_)));
        drop(slow);
        assert_eq!(feed.subscribers(), 0);
        assert!(feed.subscribe(1).is_some());
    }
}
