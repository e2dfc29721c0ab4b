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
//! a crash loses nothing.
//!
//! **What a previous run left.** Readings above `indexed_upto` at start (a
//! crash, a stop) are not loaded into memory: the writer adds them back by
//! seq range, straight from `readings` (`INSERT OR IGNORE ... SELECT`,
//! skipping what a broken pass had already added), a chunk at a time,
//! moving `indexed_upto` with every chunk — the *backlog*. Until it has
//! caught up with the last committed seq, this run's commits only extend
//! it; then their entries are kept in memory as above. So a start reads
//! one number, and neither its time nor its memory depends on how the
//! last run ended (a crash loop cannot grow a backlog it must load), and a
//! stop need not finish a pass.

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
    /// Every reading above this seq (up to the last committed) is not in
    /// `series_ts` and not in memory: the backlog, added by seq range.
    /// `None` once caught up.
    backlog: Option<i64>,
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
    /// Where the index stands on `conn`: readings above `indexed_upto`
    /// become the backlog (two lookups, nothing loaded).
    pub fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let upto: i64 = conn.query_row(
            "SELECT value FROM meta WHERE key = 'indexed_upto'",
            [],
            |r| r.get(0),
        )?;
        let last: Option<i64> =
            conn.query_row("SELECT max(seq) FROM readings", [], |r| r.get(0))?;
        Ok(Self {
            backlog: last.filter(|&last| last > upto).map(|_| upto),
            ..Self::default()
        })
    }

    /// Readings a previous run left unindexed are still being added.
    pub fn has_backlog(&self) -> bool {
        self.backlog.is_some()
    }

    /// How many entries a commit holds now, to take back if it fails.
    pub fn mark(&self) -> usize {
        self.fresh.len()
    }

    /// A commit adds the entry of a reading it inserts (while a backlog is
    /// added by seq range, the reading is part of it instead).
    pub fn push(&mut self, entry: Entry) {
        if self.backlog.is_none() {
            self.fresh.push(entry);
        }
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
        let due = if self.backlog.is_some() || !self.pass.is_empty() {
            self.moved_at.unwrap_or_else(Instant::now)
        } else {
            self.start_due()?
        } + INDEX_IDLE;
        Some(self.retry_at.map_or(due, |retry| retry.max(due)))
    }

    /// Starts a pass if one is due (or `now`) and none is under way.
    /// `last_seq`: the last committed seq (every entry up to it waits).
    pub fn start(&mut self, last_seq: u64, now: bool) {
        if self.backlog.is_some() || !self.pass.is_empty() {
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

    /// Adds up to `budget` entries of the backlog or of the pass in
    /// `conn`'s open transaction (moving `indexed_upto` with each backlog
    /// chunk and with the pass's last chunk); `last_seq` is the last seq
    /// that transaction holds. Returns where the index will stand once
    /// that transaction commits.
    pub fn step(&self, conn: &Connection, budget: usize, last_seq: u64) -> rusqlite::Result<Step> {
        if let Some(after) = self.backlog {
            let last_seq = i64::try_from(last_seq).unwrap_or(i64::MAX);
            let budget = i64::try_from(budget.max(1)).unwrap_or(i64::MAX);
            let upto = last_seq.min(after.saturating_add(budget));
            // Sorted, so each series' page is written once per chunk.
            conn.prepare_cached(
                "INSERT OR IGNORE INTO series_ts (series, ts, seq) \
                 SELECT series, ts, seq FROM readings WHERE seq > ?1 AND seq <= ?2 \
                 ORDER BY series, ts",
            )?
            .execute([after, upto])?;
            conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'indexed_upto'",
                [upto],
            )?;
            return Ok(Step::Backlog {
                upto,
                caught_up: upto >= last_seq,
            });
        }
        if self.done >= self.pass.len() {
            return Ok(Step::Pass(self.done));
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
        Ok(Step::Pass(end))
    }

    /// The transaction of a [`Self::step`] committed.
    pub fn stepped(&mut self, step: Step) {
        let to = match step {
            Step::Backlog { upto, caught_up } => {
                if self.backlog.is_some() {
                    self.backlog = (!caught_up).then_some(upto);
                    self.moved_at = Some(Instant::now());
                    self.retry_at = None;
                }
                return;
            }
            Step::Pass(to) => to,
        };
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
        if let Some(after) = &mut self.backlog {
            *after = (*after).max(seq - 1);
        }
        self.fresh.retain(|e| e.2 >= seq);
        self.forget_time_if_empty();
        self.pass.drain(..self.done);
        self.done = 0;
        self.pass.retain(|e| e.2 >= seq);
    }

    /// Nothing waits, no pass is under way, no backlog is left.
    pub fn is_current(&self) -> bool {
        self.backlog.is_none() && self.fresh.is_empty() && self.pass.is_empty()
    }
}

/// Where a [`SeriesIndex::step`] leaves the index once its transaction
/// commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The backlog is indexed up to `upto`; `caught_up` when that is the
    /// last committed seq.
    Backlog { upto: i64, caught_up: bool },
    /// The pass's first entries up to this position are added.
    Pass(usize),
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
