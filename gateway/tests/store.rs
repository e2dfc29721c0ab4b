//! The store against a real SQLite file: gapless seq across restarts and
//! failed commits, latest values, range paging, aggregates, query plans,
//! retention, and exact round trips of every value kind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use biota_gateway::metrics::Metrics;
use biota_gateway::store::config::{RetentionConfig, StoreConfig, Synchronous};
use biota_gateway::store::query::{AFTER_SEQ_SQL, AGGREGATE_SQL, LATEST_SQL, RANGE_SQL};
use biota_gateway::store::{Cursor, StoreReader, StoreWriter};
use biota_gateway::{Quality, Reading, Value};

const T0: i64 = 1_767_225_600_000_000_000;
const SEC: i64 = 1_000_000_000;

fn reading(device: &str, point: &str, ts: i64, value: Value) -> Reading {
    Reading {
        device: device.into(),
        point: point.into(),
        ts,
        value,
        unit: Some("Cel".into()),
        quality: Quality::Good,
        seq: 0,
        source: "sim://test".into(),
    }
}

fn store_config() -> StoreConfig {
    StoreConfig {
        synchronous: Synchronous::Normal,
        ..StoreConfig::default()
    }
}

fn open(path: &Path) -> StoreWriter {
    StoreWriter::open(path, &store_config(), Arc::new(Metrics::new())).expect("open writer")
}

fn all_seqs(path: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT seq FROM readings ORDER BY seq")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn seq_is_gapless_across_batches_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    for batch in 0..3 {
        let mut readings: Vec<Reading> = (0..100)
            .map(|i| reading("d", &format!("p{}", i % 7), T0 + i * SEC, Value::I64(batch)))
            .collect();
        writer.commit(&mut readings).expect("commit");
        let expected: Vec<u64> = (1 + 100 * batch as u64..=100 * (batch as u64 + 1)).collect();
        assert_eq!(readings.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
    }
    drop(writer);
    let mut writer = open(&path);
    assert_eq!(writer.next_seq(), 301);
    let mut more = vec![reading("d", "p0", T0, Value::Bool(true))];
    writer.commit(&mut more).expect("commit after reopen");
    assert_eq!(more[0].seq, 301);
    assert_eq!(all_seqs(&path), (1..=301).collect::<Vec<_>>());
}

#[test]
fn a_failed_commit_uses_no_seq_and_can_be_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    writer
        .commit(&mut [reading("d", "a", T0, Value::I64(1))])
        .expect("first commit");
    // Another process holds the write lock: the commit fails (after the
    // busy timeout) and must leave no trace.
    let blocker = rusqlite::Connection::open(&path).expect("open blocker");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let mut batch = vec![
        reading("d", "new-series", T0, Value::I64(2)),
        reading("other", "a", T0, Value::I64(3)),
    ];
    let err = writer.commit(&mut batch).expect_err("locked");
    assert!(
        err.to_string().contains("another process holds a lock"),
        "{err}"
    );
    assert!(batch.iter().all(|r| r.seq == 0));
    blocker.execute_batch("COMMIT").expect("unlock");
    writer.commit(&mut batch).expect("retry");
    assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(all_seqs(&path), [1, 2, 3]);
    let latest = StoreReader::open(&path)
        .expect("reader")
        .latest(None)
        .expect("latest");
    assert_eq!(
        latest.len(),
        3,
        "series created by the failed commit exist after the retry"
    );
}

#[test]
fn latest_is_the_newest_timestamp_per_series() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    writer
        .commit(&mut [
            reading("d1", "p", T0 + 5 * SEC, Value::I64(5)),
            reading("d1", "p", T0 + 9 * SEC, Value::I64(9)),
            reading("d1", "p", T0 + 7 * SEC, Value::I64(7)),
            reading("d2", "p", T0, Value::I64(0)),
        ])
        .expect("commit");
    // A late reading with an older device timestamp does not replace it.
    writer
        .commit(&mut [reading("d1", "p", T0 + 8 * SEC, Value::I64(8))])
        .expect("commit");
    drop(writer);
    // Nor does one from a later session (the writer looks the latest up).
    let mut writer = open(&path);
    writer
        .commit(&mut [
            reading("d1", "p", T0 + SEC, Value::I64(1)),
            reading("d2", "p", T0 + SEC, Value::I64(1)),
        ])
        .expect("commit");
    let reader = StoreReader::open(&path).expect("reader");
    let latest = reader.latest(None).expect("latest");
    let values: Vec<(&str, &Value)> = latest.iter().map(|r| (&*r.device, &r.value)).collect();
    assert_eq!(values, [("d1", &Value::I64(9)), ("d2", &Value::I64(1))]);
    assert_eq!(reader.latest(Some("d2")).expect("one device").len(), 1);
}

#[test]
fn range_pages_with_a_cursor_cover_everything_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    // Several readings share a timestamp: the cursor must split them correctly.
    let mut readings: Vec<Reading> = (0..25)
        .map(|i| reading("d", "p", T0 + (i / 3) * SEC, Value::I64(i)))
        .collect();
    readings.push(reading("d", "other", T0, Value::I64(99)));
    writer.commit(&mut readings).expect("commit");
    let reader = StoreReader::open(&path).expect("reader");
    let all = reader
        .range("d", "p", T0, T0 + 100 * SEC, 1000, None)
        .expect("range");
    assert_eq!(all.readings.len(), 25);
    assert_eq!(all.next, None);
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = reader
            .range("d", "p", T0, T0 + 100 * SEC, 10, cursor)
            .expect("page");
        paged.extend(page.readings);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, all.readings);
    // The cursor survives its text form (the CLI prints and parses it).
    let c = Cursor { ts: T0, seq: 42 };
    assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
    // The end is exclusive, the start inclusive.
    let window = reader
        .range("d", "p", T0 + SEC, T0 + 2 * SEC, 100, None)
        .expect("window");
    assert_eq!(
        window
            .readings
            .iter()
            .map(|r| r.value.clone())
            .collect::<Vec<_>>(),
        [3, 4, 5].map(Value::I64)
    );
    assert!(
        reader
            .range("nope", "p", T0, T0 + SEC, 10, None)
            .expect("unknown")
            .readings
            .is_empty()
    );
}

#[test]
fn aggregates_per_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    let mut readings: Vec<Reading> = [
        (0, 4.0),
        (10, 2.0),
        (59, 6.0),
        (60, 1.0),
        (125, 3.0),
        (130, 5.0),
    ]
    .into_iter()
    .map(|(s, v)| reading("d", "p", T0 + s * SEC, Value::F64(v)))
    .collect();
    readings.push(reading(
        "d",
        "p",
        T0 + 61 * SEC,
        Value::Text("not a number".into()),
    ));
    writer.commit(&mut readings).expect("commit");
    let reader = StoreReader::open(&path).expect("reader");
    let buckets = reader
        .aggregate("d", "p", T0, T0 + 3600 * SEC, 60 * SEC)
        .expect("aggregate");
    let got: Vec<(i64, u64, f64, f64, f64, f64, f64)> = buckets
        .iter()
        .map(|b| {
            (
                (b.start - T0) / SEC,
                b.count,
                b.min,
                b.max,
                b.avg,
                b.first,
                b.last,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, 3, 2.0, 6.0, 4.0, 4.0, 6.0),
            (60, 1, 1.0, 1.0, 1.0, 1.0, 1.0),
            (120, 2, 3.0, 5.0, 4.0, 3.0, 5.0),
        ]
    );
}

#[test]
fn every_query_is_answered_from_an_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    let mut readings: Vec<Reading> = (0..2000)
        .map(|i| {
            reading(
                &format!("d{}", i % 10),
                &format!("p{}", i % 20),
                T0 + i * SEC,
                Value::I64(i),
            )
        })
        .collect();
    writer.commit(&mut readings).expect("commit");
    let reader = StoreReader::open(&path).expect("reader");
    for (name, sql, index) in [
        ("latest", LATEST_SQL, "INTEGER PRIMARY KEY"),
        ("after seq", AFTER_SEQ_SQL, "INTEGER PRIMARY KEY"),
    ] {
        let plan = reader.plan(sql).expect("plan");
        let text = plan.join("\n");
        let readings_steps: Vec<&String> = plan
            .iter()
            .filter(|l| l.contains(" r ") || l.contains("readings"))
            .collect();
        assert!(
            !readings_steps.is_empty(),
            "{name}: readings not in plan:\n{text}"
        );
        for step in readings_steps {
            assert!(step.starts_with("SEARCH"), "{name} scans readings:\n{text}");
            assert!(step.contains(index), "{name} does not use {index}:\n{text}");
        }
        assert!(
            !text.contains("TEMP B-TREE"),
            "{name} sorts instead of reading an index in order:\n{text}"
        );
    }
    // Ranges and aggregates: the series index in order, merged with the
    // readings not yet in it (found by seq; only they are sorted), then
    // each row by its seq.
    for (name, sql) in [("range", RANGE_SQL), ("aggregate", AGGREGATE_SQL)] {
        let plan = reader.plan(sql).expect("plan");
        let text = plan.join("\n");
        let at = |needle: &str| {
            plan.iter()
                .position(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("{name}: no `{needle}` in the plan:\n{text}"))
        };
        let merge = at("MERGE (UNION ALL)");
        let index = at("SEARCH series_ts USING PRIMARY KEY (series=? AND ");
        let right = at("RIGHT");
        let tail = at("SEARCH readings USING INTEGER PRIMARY KEY (rowid>?)");
        let rows = at("SCAN x");
        assert!(
            merge < index && index < right && right < tail && tail < rows,
            "{name}:\n{text}"
        );
        at("SEARCH r USING INTEGER PRIMARY KEY (rowid=?)");
        for (i, line) in plan.iter().enumerate() {
            assert!(
                !line.contains("SCAN") || i == rows,
                "{name} scans a table:\n{text}"
            );
            assert!(
                !line.contains("TEMP B-TREE") || (right < i && i < rows),
                "{name} sorts more than the readings not yet indexed:\n{text}"
            );
        }
    }
}

#[test]
fn every_value_kind_round_trips_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    let mut readings = vec![
        reading("d", "b", T0, Value::Bool(true)),
        reading("d", "i", T0, Value::I64(i64::MIN)),
        reading("d", "f", T0, Value::F64(5.0)),
        reading("d", "f2", T0, Value::F64(-1.25e-300)),
        reading("d", "t", T0, Value::Text("12".into())),
        reading("d", "x", T0, Value::Bytes(vec![0, 255, 7])),
        Reading {
            unit: None,
            quality: Quality::Bad,
            source: "modbus-rtu:///dev/ttyS0/3".into(),
            ..reading("d", "n", T0 - 1, Value::I64(0))
        },
    ];
    writer.commit(&mut readings).expect("commit");
    let reader = StoreReader::open(&path).expect("reader");
    for original in &readings {
        let page = reader
            .range(
                &original.device,
                &original.point,
                T0 - SEC,
                T0 + SEC,
                10,
                None,
            )
            .expect("range");
        assert_eq!(page.readings, std::slice::from_ref(original));
        assert_eq!(page.readings[0].leaf_hash(), original.leaf_hash());
    }
}

#[test]
fn retention_by_size_deletes_the_oldest_and_seq_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let config = StoreConfig {
        retention: RetentionConfig {
            max_size: Some(2 << 20),
            ..RetentionConfig::default()
        },
        ..store_config()
    };
    let metrics = Arc::new(Metrics::new());
    let mut writer = StoreWriter::open(&path, &config, metrics.clone()).expect("open");
    for round in 0..20 {
        let mut batch: Vec<Reading> = (0..5000)
            .map(|i| {
                reading(
                    "d",
                    &format!("p{}", i % 50),
                    T0 + (round * 5000 + i) * SEC,
                    Value::F64(i as f64 + 0.5),
                )
            })
            .collect();
        writer.commit(&mut batch).expect("commit");
    }
    assert!(
        writer.used_bytes().expect("size") > 2 << 20,
        "the test must overfill"
    );
    let deleted = writer.enforce_retention().expect("retention");
    assert!(deleted > 0);
    assert!(writer.used_bytes().expect("size") <= 2 << 20);
    let seqs = all_seqs(&path);
    assert_eq!(
        *seqs.last().expect("rows left"),
        100_000,
        "the newest are kept"
    );
    assert_eq!(
        seqs.len() as i64,
        100_000 - seqs[0] + 1,
        "what is left is one gapless range"
    );
    assert_eq!(
        metrics
            .retention_deleted
            .load(std::sync::atomic::Ordering::Relaxed),
        deleted
    );
    let mut next = vec![reading("d", "p0", T0, Value::I64(1))];
    writer.commit(&mut next).expect("commit");
    assert_eq!(next[0].seq, 100_001);
}

#[test]
fn retention_by_age_uses_commit_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let config = StoreConfig {
        retention: RetentionConfig {
            max_age: Some(Duration::from_secs(3600)),
            max_size: None,
            ..RetentionConfig::default()
        },
        ..store_config()
    };
    let mut writer = StoreWriter::open(&path, &config, Arc::new(Metrics::new())).expect("open");
    let mut old: Vec<Reading> = (0..10)
        .map(|i| reading("d", "p", T0 + i, Value::I64(i)))
        .collect();
    writer.commit(&mut old).expect("commit");
    // Pretend that commit happened two hours ago.
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute(
        "UPDATE checkpoints SET committed_at = committed_at - 7200000000000",
        [],
    )
    .expect("age the checkpoint");
    let mut new: Vec<Reading> = (0..5)
        .map(|i| reading("d", "p", T0 + 100 + i, Value::I64(i)))
        .collect();
    writer.commit(&mut new).expect("commit");
    assert_eq!(writer.enforce_retention().expect("retention"), 10);
    assert_eq!(all_seqs(&path), (11..=15).collect::<Vec<_>>());
    // Nothing newer than max_age goes.
    assert_eq!(writer.enforce_retention().expect("retention"), 0);
}

#[test]
fn a_next_seq_behind_the_data_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    writer
        .commit(&mut [
            reading("d", "p", T0, Value::I64(1)),
            reading("d", "p", T0, Value::I64(2)),
        ])
        .expect("commit");
    drop(writer);
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute("UPDATE meta SET value = 2 WHERE key = 'next_seq'", [])
        .expect("corrupt it");
    drop(conn);
    let err = StoreWriter::open(&path, &store_config(), Arc::new(Metrics::new()))
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("next_seq is 2 but readings hold seq up to 2"),
        "{err}"
    );
}

#[test]
fn a_commit_groups_readings_by_series_keeping_each_series_arrival_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    // Three series interleaved, as many devices polled in turn deliver them.
    let mut readings: Vec<Reading> = (0..30)
        .map(|i| {
            let point = ["a", "b", "c"][i % 3];
            reading("d", point, T0 + i as i64 * SEC, Value::I64(i as i64))
        })
        .collect();
    writer.commit(&mut readings).expect("commit");
    // Seq is gapless and follows the (reordered) slice the caller gets back.
    let seqs: Vec<u64> = readings.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
    assert_eq!(all_seqs(&path), (1..=30).collect::<Vec<i64>>());
    // Each series is one run, in its arrival order.
    let runs: Vec<&str> = readings.iter().map(|r| &*r.point).collect();
    assert_eq!(runs.iter().filter(|p| **p == "a").count(), 10);
    let changes = runs.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(changes, 2, "three runs: {runs:?}");
    for series in readings.chunk_by(|x, y| x.point == y.point) {
        assert!(
            series
                .windows(2)
                .all(|w| w[0].ts < w[1].ts && w[0].seq < w[1].seq)
        );
    }
    // The stored rows say the same, and latest is each series' newest.
    let reader = StoreReader::open(&path).expect("reader");
    let b = reader
        .range("d", "b", T0, T0 + 100 * SEC, 100, None)
        .expect("range");
    let b_values: Vec<&Value> = b.readings.iter().map(|r| &r.value).collect();
    let want: Vec<Value> = (0..30).filter(|i| i % 3 == 1).map(Value::I64).collect();
    assert_eq!(b_values, want.iter().collect::<Vec<_>>());
    let latest = reader.latest(Some("d")).expect("latest");
    let newest: Vec<(&str, &Value)> = latest.iter().map(|r| (&*r.point, &r.value)).collect();
    assert_eq!(
        newest,
        [
            ("a", &Value::I64(27)),
            ("b", &Value::I64(28)),
            ("c", &Value::I64(29))
        ]
    );
}

/// Every reading of `point` in [from, to) through range pages of `limit`,
/// as (ts, seq, value).
fn ranged(reader: &StoreReader, point: &str, limit: usize) -> Vec<(i64, u64, Value)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = reader
            .range("d", point, T0, T0 + 1_000 * SEC, limit, cursor)
            .expect("range");
        out.extend(page.readings.iter().map(|r| (r.ts, r.seq, r.value.clone())));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

fn index_rows(path: &Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(
        "SELECT (SELECT count(*) FROM series_ts), (SELECT value FROM meta WHERE key = 'indexed_upto')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("index rows")
}

/// The series index is written in passes (store/series_index.rs): range
/// and aggregate queries must give the same answer whether a reading is in
/// it, waiting for it, in a half-done pass, or was waiting at a crash.
#[test]
fn queries_are_the_same_before_during_and_after_an_index_pass() {
    use biota_gateway::store::series_index::SeriesIndex;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut writer = open(&path);
    // Two points, timestamps out of seq order (a device's clock jumps
    // back), several readings per timestamp.
    let mut expected: Vec<(i64, u64, Value)> = Vec::new();
    let mut seq = 1u64;
    for batch in 0..6i64 {
        let mut readings: Vec<Reading> = (0..40i64)
            .map(|i| {
                let ts = T0 + ((batch * 37 + i * 11) % 97) * SEC;
                reading(
                    "d",
                    if i % 2 == 0 { "a" } else { "b" },
                    ts,
                    Value::I64(batch * 100 + i),
                )
            })
            .collect();
        writer.commit(&mut readings).expect("commit");
        for r in &readings {
            if &*r.point == "a" {
                expected.push((r.ts, r.seq, r.value.clone()));
            }
        }
        seq += readings.len() as u64;
        if batch == 2 {
            // The first half goes into the index.
            writer.index_all().expect("index");
            assert_eq!(index_rows(&path), (120, 120));
        }
    }
    assert_eq!(seq, 241);
    expected.sort_by_key(|e| (e.0, e.1));
    let check = |when: &str, expected: &[(i64, u64, Value)]| {
        let reader = StoreReader::open(&path).expect("reader");
        for limit in [1, 7, 1000] {
            assert_eq!(
                ranged(&reader, "a", limit),
                expected,
                "{when}, pages of {limit}"
            );
        }
        let buckets = reader
            .aggregate("d", "a", T0, T0 + 1_000 * SEC, 1_000_000 * SEC)
            .expect("aggregate");
        assert_eq!(buckets.len(), 1, "{when}");
        assert_eq!(buckets[0].count, expected.len() as u64, "{when}");
        let value = |v: &Value| match v {
            Value::I64(i) => *i as f64,
            other => panic!("{other:?}"),
        };
        assert_eq!(buckets[0].first, value(&expected[0].2), "{when}");
        assert_eq!(
            buckets[0].last,
            value(&expected[expected.len() - 1].2),
            "{when}"
        );
    };
    check("half indexed", &expected);
    // A crash: the writer goes without completing the index.
    drop(writer);
    assert_eq!(index_rows(&path), (120, 120));
    check("after a crash", &expected);
    // A pass broken off halfway: part of the second half is in
    // `series_ts`, above `indexed_upto`. Nothing may show twice.
    {
        let mut conn = rusqlite::Connection::open(&path).expect("open");
        let mut index = SeriesIndex::load(&conn).expect("load");
        index.start(240, true);
        let tx = conn.transaction().expect("tx");
        let to = index.step(&tx, 50).expect("step");
        tx.commit().expect("commit");
        assert_eq!(to, 50);
        index.stepped(to);
        assert!(!index.is_current());
    }
    assert_eq!(index_rows(&path), (170, 120));
    check("in a broken pass", &expected);
    // The next start takes the rest again, and completes the pass.
    let mut writer = open(&path);
    writer.index_all().expect("index");
    assert_eq!(index_rows(&path), (240, 240));
    check("indexed", &expected);
    // Retention (and a hand-made DELETE) takes the index entries along;
    // a hand-made UPDATE of a timestamp moves its entry.
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute("DELETE FROM readings WHERE seq <= 40", [])
        .expect("delete");
    conn.execute(
        "UPDATE readings SET ts = ts + 500 * 1000000000 WHERE seq = 41",
        [],
    )
    .expect("update");
    assert_eq!(index_rows(&path), (200, 240));
    let moved: i64 = conn
        .query_row("SELECT ts FROM series_ts WHERE seq = 41", [], |r| r.get(0))
        .expect("moved");
    assert!(moved >= T0 + 500 * SEC);
    expected.retain(|e| e.1 > 40);
    if let Some(e) = expected.iter_mut().find(|e| e.1 == 41) {
        e.0 += 500 * SEC;
    }
    expected.sort_by_key(|e| (e.0, e.1));
    check("after deletes and an edit", &expected);
}
