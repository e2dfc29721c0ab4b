//! Queries, each on a reader's own connection and each answered from an
//! index (the tests check the query plans):
//! - latest value per series (the `latest` table, maintained by the writer),
//! - a time range of one series with a limit and a cursor,
//! - bucketed aggregates (min, max, avg, count, first, last) of one series.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{StoreError, schema, sql_err};
use crate::cdm::{Quality, Reading, Value, ValueKind};

/// Latest readings, optionally of one device.
pub const LATEST_SQL: &str =
    "SELECT s.device, s.point, r.seq, r.ts, r.flags, r.value, l.unit, l.source
     FROM series s
     JOIN latest x ON x.series = s.id
     JOIN readings r ON r.seq = x.seq
     JOIN labels l ON l.id = r.label
     WHERE ?1 IS NULL OR s.device = ?1
     ORDER BY s.device, s.point";

/// One page of a series' readings after a cursor, in (ts, seq) order:
/// from the series index up to `indexed_upto`, and the readings above it
/// (committed since, about a second's worth; see
/// [`series_index`](super::series_index)) by seq, merged.
pub const RANGE_SQL: &str = "SELECT r.seq, r.ts, r.flags, r.value, l.unit, l.source
     FROM (SELECT ts, seq FROM series_ts
           WHERE series = ?1 AND (ts, seq) > (?2, ?3) AND ts < ?4
             AND seq <= (SELECT value FROM meta WHERE key = 'indexed_upto')
           UNION ALL
           SELECT ts, seq FROM readings
           WHERE seq > (SELECT value FROM meta WHERE key = 'indexed_upto')
             AND series = ?1 AND (ts, seq) > (?2, ?3) AND ts < ?4
           ORDER BY 1, 2
           LIMIT ?5) x
     JOIN readings r ON r.seq = x.seq
     JOIN labels l ON l.id = r.label
     ORDER BY x.ts, x.seq";

/// A series' values in a time range, in time order, for aggregation (the
/// index and the readings not in it yet, as [`RANGE_SQL`]; the `LIMIT -1`
/// keeps SQLite from dropping the inner order and sorting the whole range).
pub const AGGREGATE_SQL: &str = "SELECT x.ts, r.value
     FROM (SELECT ts, seq FROM series_ts
           WHERE series = ?1 AND ts >= ?2 AND ts < ?3
             AND seq <= (SELECT value FROM meta WHERE key = 'indexed_upto')
           UNION ALL
           SELECT ts, seq FROM readings
           WHERE seq > (SELECT value FROM meta WHERE key = 'indexed_upto')
             AND series = ?1 AND ts >= ?2 AND ts < ?3
           ORDER BY 1, 2
           LIMIT -1) x
     JOIN readings r ON r.seq = x.seq
     ORDER BY x.ts, x.seq";

/// Readings after a seq, in seq order (the uplink's store-and-forward).
pub const AFTER_SEQ_SQL: &str =
    "SELECT s.device, s.point, r.seq, r.ts, r.flags, r.value, l.unit, l.source
     FROM readings r
     JOIN series s ON s.id = r.series
     JOIN labels l ON l.id = r.label
     WHERE r.seq > ?1
     ORDER BY r.seq
     LIMIT ?2";

/// Devices and their number of series.
pub const DEVICES_SQL: &str = "SELECT device, count(*) FROM series GROUP BY device ORDER BY device";

const SERIES_SQL: &str = "SELECT id FROM series WHERE device = ?1 AND point = ?2";

/// A row of [`StoreReader::after_seq_checked`]: a reading, or its seq and
/// why it is not a valid one.
pub type CheckedRow = Result<Reading, (u64, String)>;

/// Where a range query continues: after (ts, seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: i64,
    pub seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ts, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a cursor (it looks like 1767225600000000000.42)");
        let (ts, seq) = s.rsplit_once('.').ok_or_else(bad)?;
        Ok(Self {
            ts: ts.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// One page of a range query.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub readings: Vec<Reading>,
    /// Set when more readings may follow.
    pub next: Option<Cursor>,
}

/// Aggregates of one time bucket. Buckets with no readings are omitted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Start of the bucket (UTC ns), a multiple of the bucket width.
    pub start: i64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub first: f64,
    pub last: f64,
}

/// A read-only view of the store on its own connection.
pub struct StoreReader {
    conn: Connection,
    path: PathBuf,
}

impl StoreReader {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: schema::open_for_read(path)?,
            path: path.to_owned(),
        })
    }

    /// The connection, for queries of other modules' tables (batches).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A meta value (`next_seq`, `retention_floor`, …), if set.
    pub fn meta(&self, key: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql_err(&self.path, "reading a meta value"))
    }

    /// The latest reading of every series (of `device`, if given).
    pub fn latest(&self, device: Option<&str>) -> Result<Vec<Reading>, StoreError> {
        latest(&self.conn, &self.path, device)
    }

    /// Every device with stored readings and its number of series
    /// (points), by device name.
    pub fn devices(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let what = "listing devices";
        let mut stmt = self
            .conn
            .prepare_cached(DEVICES_SQL)
            .map_err(sql_err(&self.path, what))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(sql_err(&self.path, what))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, what))
    }

    /// At most `limit` readings with seq greater than `seq`, in seq order.
    pub fn after_seq(&self, seq: u64, limit: usize) -> Result<Vec<Reading>, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        named_readings(
            &self.conn,
            &self.path,
            AFTER_SEQ_SQL,
            [seq, limit],
            "querying readings by seq",
        )
    }

    /// Like [`Self::after_seq`], but a row that is not a valid reading
    /// comes back as its seq and why, instead of failing the query (audits).
    pub fn after_seq_checked(&self, seq: u64, limit: usize) -> Result<Vec<CheckedRow>, StoreError> {
        let what = "querying readings by seq";
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(AFTER_SEQ_SQL)
            .map_err(sql_err(&self.path, what))?;
        let mut rows = stmt
            .query([seq, limit])
            .map_err(sql_err(&self.path, what))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_err(&self.path, what))? {
            let named = row_str(row, 0, &self.path).and_then(|device| {
                let point = row_str(row, 1, &self.path)?;
                reading(&self.path, row, 2, Arc::from(device), Arc::from(point))
            });
            out.push(match named {
                Ok(r) => Ok(r),
                Err(StoreError::Corrupt { seq, reason, .. }) if seq >= 0 => {
                    Err((seq as u64, reason))
                }
                Err(e) => {
                    let seq: i64 = row.get(2).map_err(sql_err(&self.path, what))?;
                    Err((seq as u64, e.to_string()))
                }
            });
        }
        Ok(out)
    }

    /// The oldest stored seq (retention deletes from the start), if any.
    pub fn oldest_seq(&self) -> Result<Option<u64>, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT min(seq) FROM readings", [], |r| r.get(0))
            .map_err(sql_err(&self.path, "finding the oldest reading"))?;
        Ok(seq.map(|s| s as u64))
    }

    fn series_id(&self, device: &str, point: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached(SERIES_SQL)
            .and_then(|mut s| s.query_row([device, point], |r| r.get(0)).optional())
            .map_err(sql_err(&self.path, "looking up a series"))
    }

    /// Readings of one series with `from <= ts < to`, after `cursor`, at
    /// most `limit` of them.
    pub fn range(
        &self,
        device: &str,
        point: &str,
        from: i64,
        to: i64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<Page, StoreError> {
        let Some(series) = self.series_id(device, point)? else {
            return Ok(Page {
                readings: Vec::new(),
                next: None,
            });
        };
        // (from, -1) < (ts, seq) for every ts >= from: the first page.
        let (after_ts, after_seq) = match cursor {
            Some(c) if c.ts >= from => (c.ts, c.seq as i64),
            _ => (from, -1),
        };
        let limit = limit.max(1);
        let mut stmt = self
            .conn
            .prepare_cached(RANGE_SQL)
            .map_err(sql_err(&self.path, "preparing the range query"))?;
        let mut rows = stmt
            .query(rusqlite::params![
                series,
                after_ts,
                after_seq,
                to,
                limit as i64
            ])
            .map_err(sql_err(&self.path, "querying a range"))?;
        let device: Arc<str> = Arc::from(device);
        let point: Arc<str> = Arc::from(point);
        let mut readings = Vec::new();
        while let Some(row) = rows
            .next()
            .map_err(sql_err(&self.path, "reading a range"))?
        {
            readings.push(reading(&self.path, row, 0, device.clone(), point.clone())?);
        }
        let next = (readings.len() == limit)
            .then(|| {
                readings.last().map(|r| Cursor {
                    ts: r.ts,
                    seq: r.seq,
                })
            })
            .flatten();
        Ok(Page { readings, next })
    }

    /// Aggregates of one numeric series in buckets of `bucket_ns`.
    pub fn aggregate(
        &self,
        device: &str,
        point: &str,
        from: i64,
        to: i64,
        bucket_ns: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        let bucket_ns = bucket_ns.max(1);
        let Some(series) = self.series_id(device, point)? else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(AGGREGATE_SQL)
            .map_err(sql_err(&self.path, "preparing the aggregate query"))?;
        let mut rows = stmt
            .query([series, from, to])
            .map_err(sql_err(&self.path, "querying aggregates"))?;
        let mut out: Vec<Bucket> = Vec::new();
        let mut sum = 0.0;
        while let Some(row) = rows
            .next()
            .map_err(sql_err(&self.path, "reading aggregates"))?
        {
            let ts: i64 = row
                .get(0)
                .map_err(sql_err(&self.path, "reading aggregates"))?;
            let v = match row
                .get_ref(1)
                .map_err(sql_err(&self.path, "reading aggregates"))?
            {
                ValueRef::Integer(i) => i as f64,
                ValueRef::Real(f) => f,
                // Text and bytes have no numeric aggregates: skip them.
                _ => continue,
            };
            let start = ts - ts.rem_euclid(bucket_ns);
            match out.last_mut() {
                Some(b) if b.start == start => {
                    b.count += 1;
                    b.min = b.min.min(v);
                    b.max = b.max.max(v);
                    b.last = v;
                    sum += v;
                }
                _ => {
                    if let Some(b) = out.last_mut() {
                        b.avg = sum / b.count as f64;
                    }
                    sum = v;
                    out.push(Bucket {
                        start,
                        count: 1,
                        min: v,
                        max: v,
                        avg: v,
                        first: v,
                        last: v,
                    });
                }
            }
        }
        if let Some(b) = out.last_mut() {
            b.avg = sum / b.count as f64;
        }
        Ok(out)
    }

    /// `EXPLAIN QUERY PLAN` of a query, one line per step (for tests and
    /// for operators checking a slow query).
    pub fn plan(&self, sql: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .map_err(sql_err(&self.path, "explaining a query"))?;
        // The plan does not depend on the values: bind NULL to every parameter.
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .map_err(sql_err(&self.path, "explaining a query"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, "explaining a query"))
    }
}

/// The latest reading of every series (of `device`, if given), on
/// `conn`: a reader's, or the writer's (a death re-stamps these).
pub(super) fn latest(
    conn: &Connection,
    path: &Path,
    device: Option<&str>,
) -> Result<Vec<Reading>, StoreError> {
    named_readings(conn, path, LATEST_SQL, [device], "querying latest values")
}

/// Rows of (device, point, then a reading's columns) as readings.
fn named_readings(
    conn: &Connection,
    path: &Path,
    sql: &str,
    params: impl rusqlite::Params,
    what: &'static str,
) -> Result<Vec<Reading>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_err(path, what))?;
    let mut rows = stmt.query(params).map_err(sql_err(path, what))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err(path, what))? {
        let device: Arc<str> = Arc::from(row_str(row, 0, path)?);
        let point: Arc<str> = Arc::from(row_str(row, 1, path)?);
        out.push(reading(path, row, 2, device, point)?);
    }
    Ok(out)
}

/// Decodes seq, ts, flags, value, unit, source starting at column `at`.
fn reading(
    path: &Path,
    row: &Row<'_>,
    at: usize,
    device: Arc<str>,
    point: Arc<str>,
) -> Result<Reading, StoreError> {
    let err = sql_err(path, "decoding a reading");
    let seq: i64 = row.get(at).map_err(err)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        seq,
        reason,
    };
    let ts: i64 = row
        .get(at + 1)
        .map_err(sql_err(path, "decoding a reading"))?;
    let flags: i64 = row
        .get(at + 2)
        .map_err(sql_err(path, "decoding a reading"))?;
    let kind = ValueKind::from_code((flags >> 2) as u8)
        .ok_or_else(|| corrupt(format!("flags {flags}")))?;
    let quality =
        Quality::from_code((flags & 3) as u8).ok_or_else(|| corrupt(format!("flags {flags}")))?;
    let raw = row
        .get_ref(at + 3)
        .map_err(sql_err(path, "decoding a reading"))?;
    let value = match (kind, raw) {
        (ValueKind::Bool, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (ValueKind::I64, ValueRef::Integer(i)) => Value::I64(i),
        (ValueKind::F64, ValueRef::Real(f)) => Value::F64(f),
        (ValueKind::Text, ValueRef::Text(t)) => Value::Text(
            String::from_utf8(t.to_vec()).map_err(|_| corrupt("text is not UTF-8".into()))?,
        ),
        (ValueKind::Bytes, ValueRef::Blob(b)) => Value::Bytes(b.to_vec()),
        (kind, raw) => {
            return Err(corrupt(format!(
                "a {:?} stored for a {} value",
                raw.data_type(),
                kind.as_str()
            )));
        }
    };
    let unit = row_str(row, at + 4, path)?;
    let source = row_str(row, at + 5, path)?;
    Ok(Reading {
        device,
        point,
        ts,
        value,
        unit: (!unit.is_empty()).then(|| Arc::from(unit)),
        quality,
        seq: seq as u64,
        source: Arc::from(source),
    })
}

fn row_str<'r>(row: &'r Row<'_>, i: usize, path: &Path) -> Result<&'r str, StoreError> {
    match row
        .get_ref(i)
        .map_err(sql_err(path, "decoding a reading"))?
    {
        ValueRef::Text(t) => std::str::from_utf8(t).map_err(|_| StoreError::Corrupt {
            path: path.to_owned(),
            seq: -1,
            reason: "a name is not UTF-8".into(),
        }),
        other => Err(StoreError::Corrupt {
            path: path.to_owned(),
            seq: -1,
            reason: format!("a name is stored as {:?}", other.data_type()),
        }),
    }
}
