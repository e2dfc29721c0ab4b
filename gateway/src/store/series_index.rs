//! The series index (`series_ts`), kept by the writer in bulk.
//!
//! An index on `readings (series, ts)` maintained by SQLite costs every
//! commit one written page per series it touches: a commit of 3,000
//! readings from 2,000 sensors wrote 2,000 index pages (8 MB of WAL) and
//! took most of the writer's time. Instead, a commit only appends rows;
//! their (series, ts, seq) entries wait here and go into `series_ts`
//! sorted, so each series' page is written once per pass, not once per
//! commit:
//!
//! - a pass starts when the oldest waiting entry is [`INDEX_MAX_AGE`] old
//!   or [`INDEX_TAIL_MAX`] entries wait;
//! - a pass is added a chunk at a time inside the following commits'
//!   transactions (no transaction or fsync of its own, no long stall of
//!   the acknowledgements that wait for those commits), or on its own when
//!   nothing is being committed;
//! - the chunk that completes a pass moves `meta.indexed_upto` to the
//!   pass's last seq.
//!
//! Queries read `series_ts` up to `indexed_upto` and the readings above it
//! by seq (see `query::RANGE_SQL`), so they are right at every moment, and
//! a crash loses nothing: at start the writer takes the readings above
//! `indexed_upto` again (`INSERT OR IGNORE` skips what a broken pass had
//! already added).

use std::time::{Duration, Instant};

use rusqlite::Connection;

/// A pass starts once this many committed readings are not in the index
/// (it bounds what a range query reads by seq during heavy ingest)...
pub const INDEX_TAIL_MAX: usize = 262_144;
/// ...or once the oldest of them is this old.
pub const INDEX_MAX_AGE: Duration = Duration::from_secs(1);
/// A pass that commits have not started or moved for this long (ingest
/// paused) goes on in transactions of its own.
pub const INDEX_IDLE: Duration = Duration::from_millis(50);
/// Entries a commit adds at least (it adds twice its own readings when
/// that is more, so a pass always outruns ingest).
pub const INDEX_CHUNK: usize = 2_048;

/// (series, ts, seq), the key of `series_ts`.
pub type Entry = (i64, i64, i64);

#[derive(Debug, Default)]
pub struct SeriesIndex {
    /// Committed readings not in the current pass.
    fresh: Vec<Entry>,
    /// When the oldest of `fresh` was committed.
    fresh_since: Option<Instant>,
    /// The current pass, sorted; its first `done` entries are added.
    pass: Vec<Entry>,
    done: usize,
    /// `indexed_upto` once the pass is complete.
    pass_upto: i64,
    /// When the pass last moved (commits move it while ingest runs).
    moved_at: Option<Instant>,
    /// After a failed standalone step, not before this.
    retry_at: Option<Instant>,
}

impl SeriesIndex {
    /// The readings above `indexed_upto` on `conn`, waiting again.
    pub fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let upto: i64 = conn.query_row(
            "SELECT value FROM meta WHERE key = 'indexed_upto'",
            [],
            |r| r.get(0),
        )?;
        let fresh = conn
            .prepare("SELECT series, ts, seq FROM readings WHERE seq > ?1")?
            .query_map([upto], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Self {
            fresh_since: (!fresh.is_empty()).then(Instant::now),
            fresh,
            ..Self::default()
        })
    }

    /// How many entries a commit holds now, to take back if it fails.
    pub fn mark(&self) -> usize {
        self.fresh.len()
    }

    /// A commit adds the entry of a reading it inserts.
    pub fn push(&mut self, entry: Entry) {
        self.fresh.push(entry);
    }

    /// The commit that pushed since `mark` rolled back.
    pub fn rollback(&mut self, mark: usize) {
        self.fresh.truncate(mark);
        self.forget_time_if_empty();
    }

    /// Nothing waits any more: no pass is due for it.
    fn forget_time_if_empty(&mut self) {
        if self.fresh.is_empty() {
            self.fresh_since = None;
        }
    }

    /// When the next pass should start: `None` while nothing waits.
    fn start_due(&self) -> Option<Instant> {
        let since = self.fresh_since.filter(|_| !self.fresh.is_empty())?;
        Some(if self.fresh.len() >= INDEX_TAIL_MAX {
            since
        } else {
            since + INDEX_MAX_AGE
        })
    }

    /// The commit succeeded: its entries wait from now.
    pub fn committed(&mut self) {
        if !self.fresh.is_empty() {
            self.fresh_since.get_or_insert_with(Instant::now);
        }
    }

    /// When a standalone step is due: once commits have neither started
    /// a due pass nor moved the one under way for [`INDEX_IDLE`] (ingest
    /// paused); `None` with nothing waiting.
    pub fn due(&self) -> Option<Instant> {
        let due = if !self.pass.is_empty() {
            self.moved_at.unwrap_or_else(Instant::now)
        } else {
            self.start_due()?
        } + INDEX_IDLE;
        Some(self.retry_at.map_or(due, |retry| retry.max(due)))
    }

    /// Starts a pass if one is due (or `now`) and none is under way.
    /// `last_seq`: the last committed seq (every entry up to it waits).
    pub fn start(&mut self, last_seq: u64, now: bool) {
        if !self.pass.is_empty() {
            return;
        }
        let Some(due) = self.start_due() else {
            return;
        };
        if !now && due > Instant::now() {
            return;
        }
        self.pass = std::mem::take(&mut self.fresh);
        self.pass.sort_unstable();
        self.done = 0;
        self.pass_upto = last_seq as i64;
        self.fresh_since = None;
        self.moved_at = Some(Instant::now());
    }

    /// Adds up to `budget` entries of the pass in `conn`'s open
    /// transaction (moving `indexed_upto` with the pass's last chunk).
    /// Returns where the pass will stand once that transaction commits.
    pub fn step(&self, conn: &Connection, budget: usize) -> rusqlite::Result<usize> {
        if self.done >= self.pass.len() {
            return Ok(self.done);
        }
        let end = self.pass.len().min(self.done + budget.max(1));
        let mut insert = conn.prepare_cached(
            "INSERT OR IGNORE INTO series_ts (series, ts, seq) VALUES (?1, ?2, ?3)",
        )?;
        for &(series, ts, seq) in &self.pass[self.done..end] {
            insert.execute([series, ts, seq])?;
        }
        if end == self.pass.len() {
            conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'indexed_upto'",
                [self.pass_upto],
            )?;
        }
        Ok(end)
    }

    /// The transaction of a [`Self::step`] committed.
    pub fn stepped(&mut self, to: usize) {
        if to != self.done {
            self.moved_at = Some(Instant::now());
        }
        self.done = to;
        self.retry_at = None;
        if self.done >= self.pass.len() {
            self.pass.clear();
            self.done = 0;
        }
    }

    /// A standalone step failed: wait a little before the next.
    pub fn failed(&mut self) {
        self.retry_at = Some(Instant::now() + INDEX_MAX_AGE);
    }

    /// Retention deleted every reading below `seq`: their entries are
    /// not needed any more.
    pub fn forget_below(&mut self, seq: i64) {
        self.fresh.retain(|e| e.2 >= seq);
        self.forget_time_if_empty();
        self.pass.drain(..self.done);
        self.done = 0;
        self.pass.retain(|e| e.2 >= seq);
    }

    /// Nothing waits and no pass is under way.
    pub fn is_current(&self) -> bool {
        self.fresh.is_empty() && self.pass.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_due_once_what_waited_is_gone() {
        let mut index = SeriesIndex::default();
        assert_eq!(index.due(), None);
        index.push((1, 10, 1));
        index.push((1, 11, 2));
        index.committed();
        assert!(index.due().is_some());
        // Retention deleted both readings before any pass: no pass (and
        // no empty transaction in a loop) is due.
        index.forget_below(3);
        assert_eq!(index.due(), None);
        assert!(index.is_current());
        // A commit that rolls back its only entries leaves nothing due.
        let mark = index.mark();
        index.push((2, 12, 3));
        index.rollback(mark);
        assert_eq!(index.due(), None);
    }

    #[test]
    fn a_pass_starts_when_due_or_when_asked_and_keeps_its_order() {
        let mut index = SeriesIndex::default();
        for (series, ts, seq) in [(2, 5, 1), (1, 9, 2), (1, 3, 3)] {
            index.push((series, ts, seq));
        }
        index.committed();
        index.start(3, false);
        assert!(index.pass.is_empty(), "not due before INDEX_MAX_AGE");
        index.start(3, true);
        assert_eq!(index.pass, [(1, 3, 3), (1, 9, 2), (2, 5, 1)]);
        assert_eq!(index.pass_upto, 3);
        assert!(index.fresh.is_empty() && index.fresh_since.is_none());
    }
}
