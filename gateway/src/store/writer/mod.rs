//! The one writer: it owns the write connection, assigns `seq`, commits
//! readings in groups (by count or by a short maximum delay), keeps the
//! `latest` table current and enforces retention.
//!
//! - this module: [`StoreWriter`], the write connection — opening,
//!   group commits with gapless seqs, the `latest` table, the series
//!   index passes, the WAL bound;
//! - [`retention`]: deleting the oldest readings by age and by size, a
//!   chunk at a time between commits;
//! - [`service`]: [`WriterService`], the writer's thread and loop (what
//!   is due next: a commit, an index pass, a retention step), and the
//!   WAL checkpointer beside it.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use biota_common::channel::Batch;
use biota_common::time::now_ns;
use biota_drivers::CommitNotice;

use super::series_index::{INDEX_CHUNK, SeriesIndex};
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::config::{RetentionConfig, StoreConfig};
use super::{StoreError, schema, sql_err};
use crate::cdm::{Reading, Value};
use crate::live::LiveFeed;
use crate::metrics::Metrics;

mod retention;
mod service;

pub use service::WriterService;

/// How often a checkpoint row (seq ↔ commit time) is written for
/// age-based retention; it is the granularity of `max_age`.
const CHECKPOINT_INTERVAL_NS: i64 = 10 * 1_000_000_000;
/// A wall-clock step larger than this between two checkpoints (compared
/// with the monotonic clock) is a clock being set, not time passing.
const CLOCK_STEP_NS: i64 = 60 * 1_000_000_000;

/// (device, point).
type SeriesKey = (Arc<str>, Arc<str>);

#[derive(Debug)]
struct SeriesEntry {
    id: i64,
    /// (ts, seq) of the series' latest committed reading; `None` until
    /// looked up in the database.
    latest: Option<Option<(i64, u64)>>,
    /// The newest reading of the commit in progress, if it beats `latest`.
    pending: Option<(i64, u64)>,
}

/// A label: (unit, source), interned in the `labels` table.
#[derive(Debug)]
struct LabelEntry {
    unit: Option<Arc<str>>,
    id: i64,
}

/// Owner of the database's write connection.
pub struct StoreWriter {
    conn: Connection,
    path: PathBuf,
    next_seq: u64,
    /// device → point → series.
    series: FxHashMap<Arc<str>, FxHashMap<Arc<str>, SeriesEntry>>,
    /// source → its labels (a source has few units).
    labels: FxHashMap<Arc<str>, Vec<LabelEntry>>,
    retention: RetentionConfig,
    /// Readings below this seq are due for deletion, a step at a time.
    retention_bound: Option<i64>,
    /// Deleted since the current bound was planned (for the log line).
    retention_pass_deleted: u64,
    /// Wall-clock time of the last checkpoint row.
    last_checkpoint_at: i64,
    /// Monotonic time of the last checkpoint row written by this process.
    last_checkpoint_mono: Option<std::time::Instant>,
    /// Fold the WAL back into the database once it is larger than this.
    wal_max_bytes: u64,
    wal_path: PathBuf,
    metrics: Arc<Metrics>,
    /// Where committed readings go to live subscribers, if anyone listens.
    live: Option<LiveFeed>,
    /// The series index's entries not yet in `series_ts`.
    index: SeriesIndex,
}

/// What the writer thread did, returned when it ends.
#[derive(Debug, Clone, Default)]
pub struct WriterReport {
    pub committed: u64,
    pub next_seq: u64,
    /// Readings still uncommitted when it ended (only after a failure).
    pub lost: u64,
}

impl StoreWriter {
    /// Opens the database for writing (see [`schema::open_for_write`]).
    pub fn open(
        path: &Path,
        config: &StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let conn = schema::open_for_write(path, config.synchronous, config.cache_mib)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_size_limit = {}",
            config.wal_max_size
        ))
        .map_err(sql_err(path, "limiting the WAL size"))?;
        let next_seq: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                r.get(0)
            })
            .map_err(sql_err(path, "reading next_seq"))?;
        let max_seq: Option<i64> = conn
            .query_row("SELECT max(seq) FROM readings", [], |r| r.get(0))
            .map_err(sql_err(path, "reading the last seq"))?;
        if next_seq < 1 || max_seq.is_some_and(|max| max >= next_seq) {
            // Going on would reuse seqs: refuse, with what was found.
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                seq: next_seq,
                reason: format!(
                    "meta.next_seq is {next_seq} but readings hold seq up to {}",
                    max_seq.unwrap_or(0)
                ),
            });
        }
        let next_seq = next_seq as u64;
        metrics.last_seq.store(next_seq - 1, Relaxed);
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        // Committed before the last stop but not yet in the series index.
        let index =
            SeriesIndex::load(&conn).map_err(sql_err(path, "reading readings not yet indexed"))?;
        let last_checkpoint_at = conn
            .query_row("SELECT max(committed_at) FROM checkpoints", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map_err(sql_err(path, "reading checkpoints"))?
            .unwrap_or(0);
        Ok(Self {
            conn,
            path: path.to_owned(),
            next_seq,
            series: FxHashMap::default(),
            labels: FxHashMap::default(),
            retention: config.retention.clone(),
            retention_bound: None,
            retention_pass_deleted: 0,
            last_checkpoint_at,
            last_checkpoint_mono: None,
            wal_max_bytes: config.wal_max_size,
            wal_path: PathBuf::from(wal_path),
            metrics,
            live: None,
            index,
        })
    }

    /// Publishes every group commit, once durable, on `live`.
    pub fn with_live(mut self, live: LiveFeed) -> Self {
        self.live = Some(live);
        self
    }

    /// The seq the next committed reading gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Commits `readings` in one transaction, assigning consecutive seqs.
    /// On error nothing is written, no seq is used and `readings` are
    /// unchanged, so the same call can be retried.
    pub fn commit(&mut self, readings: &mut [Reading]) -> Result<(), StoreError> {
        if readings.is_empty() {
            return Ok(());
        }
        let now = now_ns();
        let mut created: Vec<SeriesKey> = Vec::new();
        let mut touched: Vec<SeriesKey> = Vec::new();
        let labels_before = self.labels.values().map(Vec::len).sum::<usize>();
        self.index.start(self.next_seq - 1, false);
        let index_mark = self.index.mark();
        let result = self.write_batch(readings, now, &mut created, &mut touched);
        for (device, point) in &touched {
            if let Some(entry) = self.series.get_mut(device).and_then(|p| p.get_mut(point)) {
                let pending = entry.pending.take();
                if result.is_ok() {
                    entry.latest = Some(pending);
                }
            }
        }
        let indexed_to = match result {
            Ok(to) => to,
            Err(e) => {
                // The transaction rolled back: forget the ids it created and
                // the index entries of its readings.
                self.index.rollback(index_mark);
                for (device, point) in created {
                    if let Some(points) = self.series.get_mut(&device) {
                        points.remove(&point);
                    }
                }
                if self.labels.values().map(Vec::len).sum::<usize>() != labels_before {
                    self.labels.clear();
                }
                return Err(e);
            }
        };
        self.index.committed();
        self.index.stepped(indexed_to);
        for (i, r) in readings.iter_mut().enumerate() {
            r.seq = self.next_seq + i as u64;
        }
        let n = readings.len() as u64;
        self.next_seq += n;
        let mut per_device: HashMap<Arc<str>, u64> = HashMap::new();
        let mut last_device: Option<&Arc<str>> = None;
        let mut run = 0u64;
        for r in readings.iter() {
            if last_device.is_some_and(|d| Arc::ptr_eq(d, &r.device) || **d == *r.device) {
                run += 1;
            } else {
                if let Some(d) = last_device {
                    *per_device.entry(d.clone()).or_default() += run;
                }
                last_device = Some(&r.device);
                run = 1;
            }
        }
        if let Some(d) = last_device {
            *per_device.entry(d.clone()).or_default() += run;
        }
        self.metrics.add_device_counts(per_device);
        self.metrics.committed.fetch_add(n, Relaxed);
        self.metrics.commits.fetch_add(1, Relaxed);
        self.metrics.last_seq.store(self.next_seq - 1, Relaxed);
        self.bound_wal();
        Ok(())
    }

    fn write_batch(
        &mut self,
        readings: &mut [Reading],
        now: i64,
        created: &mut Vec<SeriesKey>,
        touched: &mut Vec<SeriesKey>,
    ) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let checkpoint = self.checkpoint_plan(now);
        // IMMEDIATE: take the write lock (waiting for the anchorer's short
        // transactions) before reading, so the commit cannot fail later
        // on a snapshot another connection has moved past.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_err(&path, "starting a commit"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO readings (seq, series, ts, label, flags, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql_err(&path, "preparing the insert"))?;
            // Pass 1, in arrival order: series and label ids (registering
            // new ones in this transaction).
            let mut order: Vec<(i64, usize)> = Vec::with_capacity(readings.len());
            let mut label_of: Vec<i64> = Vec::with_capacity(readings.len());
            // Consecutive readings mostly share unit and source.
            let mut last_label: Option<(Option<Arc<str>>, Arc<str>, i64)> = None;
            for (i, r) in readings.iter().enumerate() {
                let entry =
                    series_entry(&tx, &path, &mut self.series, created, &r.device, &r.point)?;
                order.push((entry.id, i));
                let label = match &last_label {
                    Some((unit, source, id)) if same(unit, &r.unit) && *source == r.source => *id,
                    _ => {
                        let id = label_entry(&tx, &path, &mut self.labels, &r.unit, &r.source)?;
                        last_label = Some((r.unit.clone(), r.source.clone(), id));
                        id
                    }
                };
                label_of.push(label);
            }
            // Within one commit, readings are grouped by series (keeping
            // each series' arrival order) before they get their seq: the
            // (series, ts) index then takes each series' readings on one
            // leaf in a row instead of visiting every series' leaf once per
            // reading. Seq stays gapless and increasing, and per series it
            // follows arrival.
            order.sort_unstable();
            let labels: Vec<i64> = order.iter().map(|&(_, i)| label_of[i]).collect();
            permute(readings, order.iter().map(|&(_, i)| i).collect());
            // Pass 2: insert in seq order, tracking each series' newest reading.
            let mut seq = self.next_seq;
            let mut group_start = 0;
            while group_start < readings.len() {
                let first = &readings[group_start];
                let group_len = readings[group_start..]
                    .iter()
                    .take_while(|r| {
                        Arc::ptr_eq(&r.device, &first.device) && Arc::ptr_eq(&r.point, &first.point)
                            || (r.device == first.device && r.point == first.point)
                    })
                    .count();
                let group = &readings[group_start..group_start + group_len];
                let entry = self
                    .series
                    .get_mut(&first.device)
                    .and_then(|p| p.get_mut(&first.point))
                    .expect("registered in pass 1");
                let series_id = entry.id;
                let committed = match entry.latest {
                    Some(known) => known,
                    None => {
                        let known = load_latest(&tx, &path, series_id)?;
                        entry.latest = Some(known);
                        known
                    }
                };
                let mut newest = entry.pending.or(committed);
                let mut changed = false;
                for (k, r) in group.iter().enumerate() {
                    let this_seq = seq + k as u64;
                    if newest.is_none_or(|(ts, _)| r.ts >= ts) {
                        newest = Some((r.ts, this_seq));
                        changed = true;
                    }
                    self.index.push((series_id, r.ts, this_seq as i64));
                    let flags = i64::from(r.value.kind().code()) << 2 | i64::from(r.quality.code());
                    insert
                        .execute(rusqlite::params![
                            this_seq as i64,
                            series_id,
                            r.ts,
                            labels[group_start + k],
                            flags,
                            value_sql(&r.value)
                        ])
                        .map_err(sql_err(&path, "inserting readings"))?;
                }
                if changed {
                    if entry.pending.is_none() {
                        touched.push((first.device.clone(), first.point.clone()));
                    }
                    entry.pending = newest;
                }
                seq += group_len as u64;
                group_start += group_len;
            }
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO latest (series, seq) VALUES (?1, ?2)
                     ON CONFLICT (series) DO UPDATE SET seq = excluded.seq",
                )
                .map_err(sql_err(&path, "preparing the latest update"))?;
            for (device, point) in touched.iter() {
                let Some(entry) = self.series.get(device).and_then(|p| p.get(point)) else {
                    continue;
                };
                if let Some((_, latest_seq)) = entry.pending {
                    upsert
                        .execute([entry.id, latest_seq as i64])
                        .map_err(sql_err(&path, "updating latest values"))?;
                }
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [seq as i64],
            )
            .map_err(sql_err(&path, "updating next_seq"))?;
            if let Some(shift) = checkpoint {
                if shift != 0 {
                    tracing::warn!(
                        step_s = shift / 1_000_000_000,
                        "the wall clock was set; moving retention checkpoints with it"
                    );
                    tx.execute(
                        "UPDATE checkpoints SET committed_at = committed_at + ?1",
                        [shift],
                    )
                    .map_err(sql_err(&path, "moving retention checkpoints"))?;
                }
                tx.execute(
                    "INSERT OR REPLACE INTO checkpoints (seq, committed_at) VALUES (?1, ?2)",
                    [seq as i64, now],
                )
                .map_err(sql_err(&path, "writing a retention checkpoint"))?;
            }
        }
        // A chunk of the series index's pass rides along (twice this
        // commit's size, so the pass outruns ingest).
        let indexed_to = self
            .index
            .step(&tx, INDEX_CHUNK.max(2 * readings.len()))
            .map_err(sql_err(&path, "updating the series index"))?;
        tx.commit().map_err(sql_err(&path, "committing"))?;
        if checkpoint.is_some() {
            self.last_checkpoint_at = now;
            self.last_checkpoint_mono = Some(std::time::Instant::now());
        }
        Ok(indexed_to)
    }

    /// One step of the series index in a transaction of its own, for when
    /// nothing is being committed (`now`: start a pass even if not yet
    /// due). Queries are right before and after: what is not in the index
    /// they read by seq.
    fn index_step(&mut self, now: bool) -> Result<(), StoreError> {
        self.index.start(self.next_seq - 1, now);
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_err(&path, "starting to update the series index"))?;
        let to = self
            .index
            .step(&tx, 8 * INDEX_CHUNK)
            .map_err(sql_err(&path, "updating the series index"))?;
        tx.commit()
            .map_err(sql_err(&path, "committing the series index"))?;
        self.index.stepped(to);
        Ok(())
    }

    /// Brings the series index fully up to date (at shutdown).
    pub fn index_all(&mut self) -> Result<(), StoreError> {
        while !self.index.is_current() {
            self.index_step(true)?;
        }
        Ok(())
    }

    /// Whether this commit writes a retention checkpoint, and by how much
    /// the earlier ones move: `Some(shift)`. Age retention measures time
    /// since commit, so a wall clock that is stepped (NTP on a board
    /// without RTC) must not make fresh readings look old, or old ones new.
    /// While the clock is before 2000 it is not set: no checkpoint then.
    fn checkpoint_plan(&self, now: i64) -> Option<i64> {
        if now < crate::cdm::EARLIEST_TS_NS {
            return None;
        }
        let Some(mono) = self.last_checkpoint_mono else {
            return Some(0);
        };
        let elapsed = i64::try_from(mono.elapsed().as_nanos()).unwrap_or(i64::MAX);
        if elapsed < CHECKPOINT_INTERVAL_NS {
            return None;
        }
        let step = (now - self.last_checkpoint_at) - elapsed;
        Some(if step.abs() > CLOCK_STEP_NS { step } else { 0 })
    }

    /// Lets the WAL start over once it is larger than `wal_max_size`. The
    /// checkpoint thread copies pages continuously, but only a checkpoint
    /// that the writer runs between its transactions can make the log
    /// restart from its beginning; most of the copying is already done by
    /// then. `journal_size_limit` (= `wal_max_size`) trims the file when
    /// the log restarts, so the next check sees real growth only.
    fn bound_wal(&mut self) {
        let size = std::fs::metadata(&self.wal_path)
            .map(|m| m.len())
            .unwrap_or(0);
        if size <= self.wal_max_bytes {
            return;
        }
        match self
            .conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
        {
            Ok(0) => {}
            // A reader held an old snapshot past the busy timeout: next commit.
            Ok(_) => tracing::debug!(
                wal_bytes = size,
                "WAL not restarted yet: a reader is active"
            ),
            Err(e) => tracing::warn!(error = %e, wal_bytes = size, "cannot restart the WAL"),
        }
    }
}

/// Readings for the writer, with the notice of the driver batch they came
/// from (and how many of its samples were dropped), if it asked for one.
#[derive(Debug, Default)]
pub struct ReadingBatch {
    pub readings: Vec<Reading>,
    pub notice: Option<(CommitNotice, usize)>,
}

impl Batch for ReadingBatch {
    fn items(&self) -> usize {
        self.readings.len()
    }
}

fn series_entry<'a>(
    tx: &Connection,
    path: &Path,
    series: &'a mut FxHashMap<Arc<str>, FxHashMap<Arc<str>, SeriesEntry>>,
    created: &mut Vec<SeriesKey>,
    device: &Arc<str>,
    point: &Arc<str>,
) -> Result<&'a mut SeriesEntry, StoreError> {
    if !series.contains_key(device) {
        series.insert(device.clone(), FxHashMap::default());
    }
    let points = series.get_mut(device).expect("inserted above");
    if !points.contains_key(point) {
        let id: i64 = tx
            .query_row(
                "INSERT INTO series (device, point) VALUES (?1, ?2)
                 ON CONFLICT (device, point) DO UPDATE SET device = excluded.device
                 RETURNING id",
                [&**device, &**point],
                |r| r.get(0),
            )
            .map_err(sql_err(path, "registering a series"))?;
        points.insert(
            point.clone(),
            SeriesEntry {
                id,
                latest: None,
                pending: None,
            },
        );
        created.push((device.clone(), point.clone()));
    }
    Ok(points.get_mut(point).expect("inserted above"))
}

/// Reorders `items` so that position `k` holds what was at `perm[k]`
/// (`perm` is a permutation of the indexes), by swaps along its cycles.
fn permute<T>(items: &mut [T], mut perm: Vec<usize>) {
    const DONE: usize = usize::MAX;
    for start in 0..items.len() {
        let mut k = start;
        while perm[k] != DONE {
            let src = perm[k];
            perm[k] = DONE;
            if src == start {
                break;
            }
            items.swap(k, src);
            k = src;
        }
    }
}

fn same(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

fn label_entry(
    tx: &Connection,
    path: &Path,
    labels: &mut FxHashMap<Arc<str>, Vec<LabelEntry>>,
    unit: &Option<Arc<str>>,
    source: &Arc<str>,
) -> Result<i64, StoreError> {
    if let Some(entry) = labels
        .get(source)
        .and_then(|l| l.iter().find(|e| same(&e.unit, unit)))
    {
        return Ok(entry.id);
    }
    let id = tx
        .query_row(
            "INSERT INTO labels (unit, source) VALUES (?1, ?2)
             ON CONFLICT (unit, source) DO UPDATE SET unit = excluded.unit
             RETURNING id",
            [unit.as_deref().unwrap_or(""), &**source],
            |r| r.get(0),
        )
        .map_err(sql_err(path, "registering a label"))?;
    labels.entry(source.clone()).or_default().push(LabelEntry {
        unit: unit.clone(),
        id,
    });
    Ok(id)
}

fn load_latest(
    tx: &Connection,
    path: &Path,
    series_id: i64,
) -> Result<Option<(i64, u64)>, StoreError> {
    use rusqlite::OptionalExtension;
    tx.query_row(
        "SELECT r.ts, r.seq FROM latest l JOIN readings r ON r.seq = l.seq WHERE l.series = ?1",
        [series_id],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)),
    )
    .optional()
    .map_err(sql_err(path, "reading a latest value"))
}

fn value_sql(value: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match value {
        Value::Bool(b) => ValueRef::Integer(i64::from(*b)),
        Value::I64(i) => ValueRef::Integer(*i),
        Value::F64(f) => ValueRef::Real(*f),
        Value::Text(t) => ValueRef::Text(t.as_bytes()),
        Value::Bytes(b) => ValueRef::Blob(b),
    })
}
