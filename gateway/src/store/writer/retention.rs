//! Retention: what is deleted, oldest first — readings committed longer
//! ago than `max_age` (found through the checkpoint rows) and, while the
//! data exceeds `max_size`, the oldest by seq. A pass is planned, then
//! deleted a chunk at a time, with commits in between, so a large
//! deletion never holds ingest up for more than one chunk.

use std::sync::atomic::Ordering::Relaxed;

use biota_common::time::now_ns;

use super::StoreWriter;
use crate::store::{StoreError, sql_err};

/// Rows deleted per retention step.
const RETENTION_CHUNK: i64 = 10_000;

impl StoreWriter {
    /// Decides what retention deletes next: readings committed before
    /// `max_age`, and the oldest readings while the data is over
    /// `max_size`. The deletion itself happens in [`Self::retention_step`]s.
    pub fn plan_retention(&mut self) -> Result<(), StoreError> {
        let mut bound: Option<i64> = None;
        if let Some(max_age) = self.retention.max_age {
            let age = i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX);
            let cutoff = now_ns().saturating_sub(age);
            let by_age: Option<i64> = self
                .conn
                .query_row(
                    "SELECT max(seq) FROM checkpoints WHERE committed_at <= ?1",
                    [cutoff],
                    |r| r.get(0),
                )
                .map_err(sql_err(&self.path, "reading checkpoints"))?;
            if let Some(by_age) = by_age {
                self.conn
                    .execute("DELETE FROM checkpoints WHERE seq < ?1", [by_age])
                    .map_err(sql_err(&self.path, "deleting old checkpoints"))?;
            }
            bound = bound.max(by_age);
        }
        if let Some(max_size) = self.retention.max_size {
            let used = self.used_bytes()?;
            if used > max_size
                && let Some(oldest) = self.oldest_seq()?
            {
                let rows = self.next_seq as i64 - oldest;
                // Rows are about the same size: delete the share that is
                // over the limit, plus 2% so the next commits fit.
                let share = (used - max_size) as f64 / used as f64 + 0.02;
                let n = ((rows as f64 * share).ceil() as i64).clamp(1, rows.max(1));
                bound = bound.max(Some(oldest + n));
            }
        }
        if bound > self.retention_bound {
            self.retention_bound = bound;
        }
        Ok(())
    }

    /// Deletes at most one chunk of what [`Self::plan_retention`] decided;
    /// returns how many readings (0 once the plan is done).
    pub fn retention_step(&mut self) -> Result<u64, StoreError> {
        let Some(bound) = self.retention_bound else {
            return Ok(0);
        };
        let upto = match self.oldest_seq()? {
            Some(oldest) if oldest < bound => bound.min(oldest + RETENTION_CHUNK),
            _ => {
                self.retention_bound = None;
                if self.retention_pass_deleted > 0 {
                    tracing::info!(
                        deleted = self.retention_pass_deleted,
                        below_seq = bound,
                        "retention deleted the oldest readings"
                    );
                }
                self.retention_pass_deleted = 0;
                return Ok(0);
            }
        };
        // The floor tells an audit that readings below it went by
        // retention, not by tampering.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_err(&self.path, "starting a retention step"))?;
        let deleted = tx
            .execute("DELETE FROM readings WHERE seq < ?1", [upto])
            .map_err(sql_err(&self.path, "deleting old readings"))? as u64;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('retention_floor', ?1)
             ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            [upto],
        )
        .map_err(sql_err(&self.path, "recording the retention floor"))?;
        tx.commit()
            .map_err(sql_err(&self.path, "committing a retention step"))?;
        // A cached latest value may point at a deleted row: look it up again.
        for points in self.series.values_mut() {
            for entry in points.values_mut() {
                if entry
                    .latest
                    .is_some_and(|l| l.is_some_and(|(_, seq)| (seq as i64) < upto))
                {
                    entry.latest = None;
                }
            }
        }
        self.retention_pass_deleted += deleted;
        // Deleted readings need no index entry any more.
        self.index.forget_below(upto);
        self.metrics.retention_deleted.fetch_add(deleted, Relaxed);
        Ok(deleted)
    }

    /// A whole retention pass at once (for tools and tests; the writer
    /// thread interleaves steps with commits instead).
    pub fn enforce_retention(&mut self) -> Result<u64, StoreError> {
        let mut deleted = 0;
        let mut used = self.used_bytes()?;
        for _ in 0..64 {
            self.plan_retention()?;
            let before = deleted;
            loop {
                let n = self.retention_step()?;
                if n == 0 {
                    break;
                }
                deleted += n;
            }
            let now_used = self.used_bytes()?;
            if deleted == before || self.retention.max_size.is_none_or(|max| now_used <= max) {
                break;
            }
            if now_used >= used {
                tracing::warn!(
                    used_bytes = now_used,
                    "deleting readings does not shrink the database below max_size: \
                     series, labels and indexes alone exceed it; raise [store.retention] max_size"
                );
                break;
            }
            used = now_used;
        }
        Ok(deleted)
    }

    fn oldest_seq(&self) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row("SELECT min(seq) FROM readings", [], |r| r.get(0))
            .map_err(sql_err(&self.path, "finding the oldest reading"))
    }

    /// Bytes of the database's pages that hold data (free pages excluded).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT (page_count - freelist_count) * page_size
                 FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|b| b.max(0) as u64)
            .map_err(sql_err(&self.path, "measuring the database size"))
    }
}
