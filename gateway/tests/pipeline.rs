//! The whole pipeline (sim driver → normalizer → writer) on a real
//! database: backpressure when the writer cannot commit, and a shutdown
//! that commits everything accepted.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use biota_gateway::{Gateway, GatewayConfig, Paths};
use tokio_util::sync::CancellationToken;

fn config(extra: &str) -> GatewayConfig {
    let text = format!(
        r#"{extra}
[store.retention]
max_size = "off"
[drivers.sim]
max_batch = 512
[[drivers.sim.devices]]
id = "line"
copies = 4
points = [{{ name = "p", copies = 25, waveform = "counter", rate = 2000 }}]
"#
    );
    GatewayConfig::from_toml(Path::new("test.toml"), &text).expect("valid config")
}

fn count_and_max(path: &Path) -> (i64, i64, i64) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(
        "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM readings",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_everything_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gateway.db");
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(
        &config("[store]\ncommit_max_delay = \"200ms\""),
        &Paths::for_db(&db),
        shutdown.clone(),
    )
    .await
    .expect("start");
    let metrics = gateway.metrics().clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    let report = gateway.stopped().await;
    assert!(!report.timed_out);
    assert_eq!(report.writer.lost, 0);
    let accepted = metrics.accepted.load(Relaxed);
    let committed = metrics.committed.load(Relaxed);
    assert!(accepted > 10_000, "the sim ran: {accepted}");
    assert_eq!(committed, accepted, "everything accepted was committed");
    let (count, min, max) = count_and_max(&db);
    assert_eq!((count, min, max), (committed as i64, 1, committed as i64));
    // The series index is complete at a clean stop: a pass ran in the
    // commits during ingest (the run lasted past INDEX_MAX_AGE) and the
    // stop added the rest.
    let conn = rusqlite::Connection::open(&db).expect("open");
    let (entries, upto): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM series_ts), (SELECT value FROM meta WHERE key = 'indexed_upto')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("index");
    assert_eq!((entries, upto), (committed as i64, committed as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_applies_backpressure_not_memory_growth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gateway.db");
    let shutdown = CancellationToken::new();
    let config = config("[store]\ncommit_max_readings = 2000\n[pipeline]\nqueue_capacity = 4");
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone())
        .await
        .expect("start");
    let metrics = gateway.metrics().clone();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another process takes the write lock: commits fail and are retried.
    let blocker = rusqlite::Connection::open(&db).expect("open");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("lock");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = metrics.snapshot();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = metrics.snapshot();
    assert!(later.write_errors > 0, "commits failed while locked");
    assert_eq!(
        later.committed, during.committed,
        "nothing commits while locked"
    );
    // Bounded by a constant: each channel holds 4 batches of at most 512
    // plus one waiting batch per blocked sender (4 sim devices into the
    // sample channel, the normalizer into the reading channel), and the
    // writer stops reading once a commit (2000) is due.
    let bound = (4 + 4) * 512 + (4 + 1) * 512 + 2000 + 512;
    assert!(
        later.in_flight() <= bound,
        "in flight {} > {bound}",
        later.in_flight()
    );
    assert!(
        later.accepted - during.accepted <= bound,
        "the normalizer kept accepting: {} more",
        later.accepted - during.accepted
    );
    blocker.execute_batch("COMMIT").expect("unlock");
    drop(blocker);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = metrics.snapshot();
    assert!(after.committed > later.committed, "commits resume");
    shutdown.cancel();
    let report = gateway.stopped().await;
    assert_eq!(report.writer.lost, 0);
    let committed = metrics.committed.load(Relaxed) as i64;
    assert_eq!(
        count_and_max(&db),
        (committed, 1, committed),
        "gapless after the stall"
    );
    assert_eq!(metrics.accepted.load(Relaxed) as i64, committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_continues_across_restarts_of_the_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gateway.db");
    let mut total = 0;
    for _ in 0..3 {
        let shutdown = CancellationToken::new();
        let gateway = Gateway::start(&config(""), &Paths::for_db(&db), shutdown.clone())
            .await
            .expect("start");
        let metrics = gateway.metrics().clone();
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        gateway.stopped().await;
        total += metrics.committed.load(Relaxed) as i64;
        assert_eq!(metrics.last_seq.load(Relaxed) as i64, total);
    }
    assert_eq!(count_and_max(&db), (total, 1, total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_drivers_keeps_running_until_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gateway.db");
    let shutdown = CancellationToken::new();
    let config = GatewayConfig::from_toml(Path::new("empty.toml"), "").expect("valid");
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone())
        .await
        .expect("start");
    let metrics = gateway.metrics().clone();
    let first = metrics.snapshot();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = metrics.snapshot();
    // The writer still proves it is alive: the watchdog keeps being fed.
    assert!(
        biota_gateway::systemd::is_moving(&metrics, &later, &first, Duration::from_millis(750)),
        "an idle gateway must not look stalled"
    );
    shutdown.cancel();
    let report = gateway.stopped().await;
    assert!(!report.timed_out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_sustained_ingest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gateway.db");
    let wal = dir.path().join("gateway.db-wal");
    let shutdown = CancellationToken::new();
    let config = config("[store]\nwal_max_size = \"1MiB\"\nsynchronous = \"normal\"");
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone())
        .await
        .expect("start");
    let metrics = gateway.metrics().clone();
    let mut largest = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(75)).await;
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    shutdown.cancel();
    gateway.stopped().await;
    let db_size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    assert!(
        metrics.committed.load(Relaxed) > 100_000,
        "the test must write a lot"
    );
    assert!(
        db_size > 8 << 20,
        "the database grew to {db_size} bytes: more than the bound below"
    );
    // One commit's worth of frames on top of the 1 MiB limit, at most.
    assert!(largest <= 6 << 20, "the WAL grew to {largest} bytes");
    // A clean stop truncates it.
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_keeps_committing_while_retention_deletes() {
    use biota_gateway::metrics::Metrics;
    use biota_gateway::store::StoreWriter;
    use biota_gateway::{Quality, Reading, Value};

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gateway.db");
    // An existing database far over the size limit set below.
    let old_rows = 400_000u64;
    {
        let config = config("");
        let mut writer = StoreWriter::open(&db, &config.store, std::sync::Arc::new(Metrics::new()))
            .expect("open");
        for chunk in 0..(old_rows / 50_000) {
            let mut batch: Vec<Reading> = (0..50_000)
                .map(|i| Reading {
                    device: "old".into(),
                    point: format!("p{}", i % 100).into(),
                    ts: 1_767_225_600_000_000_000 + (chunk * 50_000 + i) as i64,
                    value: Value::F64(i as f64),
                    unit: None,
                    quality: Quality::Good,
                    seq: 0,
                    source: "sim://old".into(),
                })
                .collect();
            writer.commit(&mut batch).expect("commit");
        }
    }
    let text = r#"
[store]
commit_max_delay = "20ms"
[store.retention]
max_size = "1MiB"
[[drivers.sim.devices]]
id = "line"
points = [{ name = "p", copies = 10, waveform = "counter", rate = 1000 }]
"#;
    let config = GatewayConfig::from_toml(Path::new("test.toml"), text).expect("valid");
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone())
        .await
        .expect("start");
    let metrics = gateway.metrics().clone();
    // The size plan deletes the share over the limit plus 2%: nearly all
    // of the old rows. Polls taken while that pass is part-way through:
    let most = old_rows * 9 / 10;
    let mut during: Vec<u64> = Vec::new();
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let deleted = metrics.retention_deleted.load(Relaxed);
        if deleted > 0 && deleted < most {
            during.push(metrics.commits.load(Relaxed));
        } else if deleted >= most {
            break;
        }
    }
    shutdown.cancel();
    gateway.stopped().await;
    let deleted = metrics.retention_deleted.load(Relaxed);
    assert!(
        deleted >= most,
        "retention deleted only {deleted} of {old_rows} old rows"
    );
    assert!(
        during.len() >= 5,
        "the pass was too quick to observe ({} polls)",
        during.len()
    );
    let commits_during = during.last().copied().unwrap_or(0) - during.first().copied().unwrap_or(0);
    assert!(
        commits_during >= 2,
        "only {commits_during} commits during a retention pass observed over {} polls",
        during.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_hears_when_its_batch_is_durably_stored() {
    use biota_drivers::{
        CommitNotice, CommitOutcome, RawValue, Sample, SampleBatch, SampleQuality,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gateway.db");
    let shutdown = CancellationToken::new();
    let config = GatewayConfig::from_toml(
        Path::new("notice.toml"),
        "[store]\ncommit_max_delay = \"200ms\"\n",
    )
    .expect("valid");
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone())
        .await
        .expect("start");
    let sink = gateway.sample_sink().expect("a sink");
    let sample = |device: &str, value: f64| Sample {
        device: device.into(),
        point: "t".into(),
        value: RawValue::F64(value),
        device_time: None,
        quality: SampleQuality::Good,
        unit: None,
    };
    let batch = |samples: Vec<Sample>, notice: CommitNotice| SampleBatch {
        source: "coap://test".into(),
        received_at: biota_common::time::now_ns(),
        samples,
        profile: None,
        notice: Some(notice),
    };

    // Two good samples and one the normalizer rejects (an invalid device id).
    let (notice, stored) = CommitNotice::new();
    let sent_at = std::time::Instant::now();
    sink.send(batch(
        vec![sample("d1", 1.0), sample("d 1", 2.0), sample("d1", 3.0)],
        notice,
    ))
    .await
    .expect("sent");
    let outcome = tokio::time::timeout(Duration::from_secs(5), stored)
        .await
        .expect("in time")
        .expect("fired");
    let CommitOutcome::Committed {
        stored,
        dropped,
        last_seq,
    } = outcome
    else {
        panic!("not committed: {outcome:?}")
    };
    assert_eq!((stored, dropped), (2, 1));
    // Someone waits and nothing else is queued: committed at once, not
    // after commit_max_delay (200 ms); and the readings are there.
    assert!(
        sent_at.elapsed() < Duration::from_millis(150),
        "took {:?}",
        sent_at.elapsed()
    );
    let (count, _, max) = count_and_max(&db);
    assert_eq!(count, 2);
    assert!(max as u64 <= last_seq);

    // Nothing storable: answered at once, nothing written.
    let (notice, outcome) = CommitNotice::new();
    sink.send(batch(vec![sample("bad device", 1.0)], notice))
        .await
        .expect("sent");
    let outcome = tokio::time::timeout(Duration::from_secs(5), outcome)
        .await
        .expect("in time")
        .expect("fired");
    assert_eq!(outcome, CommitOutcome::NothingStored { dropped: 1 });
    shutdown.cancel();
    drop(sink);
    assert!(!gateway.stopped().await.timed_out);
}
