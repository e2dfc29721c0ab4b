//! Sealing, proofs and audits against a real SQLite file written by the
//! real store writer: batches by count and by age, the hash chain across
//! restarts, proof bundles of every position, a retention hole, and the
//! audit's findings after direct edits of the database.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use biota_gateway::anchor::audit::audit;
use biota_gateway::anchor::batch::{Batches, Sealer};
use biota_gateway::anchor::config::AnchorConfig;
use biota_gateway::anchor::merkle;
use biota_gateway::anchor::proof::{self, ProofBundle, TreeCache};
use biota_gateway::metrics::Metrics;
use biota_gateway::store::config::{StoreConfig, Synchronous};
use biota_gateway::store::{StoreReader, StoreWriter};
use biota_gateway::{Quality, Reading, Value};

const T0: i64 = 1_767_225_600_000_000_000;

fn reading(i: u64) -> Reading {
    let value = match i % 4 {
        0 => Value::F64(i as f64 / 10.0),
        1 => Value::I64(-(i as i64)),
        2 => Value::Bool(i.is_multiple_of(3)),
        _ => Value::Text(format!("state {i}")),
    };
    Reading {
        device: format!("dev-{}", i % 3).into(),
        point: format!("p{}", i % 5).into(),
        ts: T0 + i as i64 * 1_000_000,
        value,
        unit: i.is_multiple_of(2).then(|| "Cel".into()),
        quality: Quality::Good,
        seq: 0,
        source: "sim://test".into(),
    }
}

fn writer(path: &Path) -> StoreWriter {
    let config = StoreConfig {
        synchronous: Synchronous::Normal,
        ..StoreConfig::default()
    };
    StoreWriter::open(path, &config, Arc::new(Metrics::new())).expect("open writer")
}

fn commit(w: &mut StoreWriter, from: u64, n: u64) {
    let mut batch: Vec<Reading> = (from..from + n).map(reading).collect();
    w.commit(&mut batch).expect("commit");
}

fn sealer(path: &Path, max: usize) -> Sealer {
    let config = AnchorConfig {
        batch_max_readings: max,
        batch_max_age: Duration::from_secs(60),
        ..AnchorConfig::default()
    };
    Sealer::open(path, &config, Synchronous::Normal).expect("open sealer")
}

fn batches(path: &Path) -> Vec<biota_gateway::anchor::batch::Batch> {
    let reader = StoreReader::open(path).expect("reader");
    Batches::new(reader.connection(), path)
        .after(0, 1000)
        .expect("batches")
}

#[test]
fn batches_close_by_count_and_by_age_and_chain_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.db");
    let mut w = writer(&path);
    commit(&mut w, 0, 250);
    let mut s = sealer(&path, 100);
    let now = Instant::now();
    assert_eq!(s.step(now).unwrap(), 2, "two full batches");
    assert_eq!(s.step(now + Duration::from_secs(59)).unwrap(), 0);
    assert_eq!(
        s.step(now + Duration::from_secs(60)).unwrap(),
        1,
        "the rest by age"
    );
    drop(s);
    commit(&mut w, 250, 30);
    let mut s = sealer(&path, 100); // a restart
    assert!(s.seal_now().unwrap());
    assert!(!s.seal_now().unwrap(), "nothing left to seal");

    let all = batches(&path);
    let ranges: Vec<_> = all
        .iter()
        .map(|b| (b.index, b.first_seq, b.last_seq))
        .collect();
    assert_eq!(
        ranges,
        [(1, 1, 100), (2, 101, 200), (3, 201, 250), (4, 251, 280)]
    );
    let reader = StoreReader::open(&path).unwrap();
    let mut prev = [0u8; 32];
    for b in &all {
        assert!(b.hash_holds());
        assert_eq!(b.prev_hash, prev);
        prev = b.hash;
        let leaves: Vec<_> = reader
            .after_seq(b.first_seq - 1, b.count as usize)
            .unwrap()
            .iter()
            .map(Reading::leaf_hash)
            .collect();
        assert_eq!(merkle::root(&leaves), Some(b.root));
        let stored = Batches::new(reader.connection(), &path)
            .leaves(b.index)
            .unwrap()
            .unwrap();
        assert_eq!(stored, leaves);
    }
}

#[test]
fn every_reading_of_a_batch_has_a_proof_that_checks_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.db");
    let mut w = writer(&path);
    commit(&mut w, 0, 77);
    let mut s = sealer(&path, 1000);
    assert!(s.seal_now().unwrap());
    let reader = StoreReader::open(&path).unwrap();
    let mut cache = TreeCache::default();
    for seq in 1..=77 {
        let (bundle, matches) = proof::bundle(&reader, &mut cache, seq).unwrap();
        assert!(matches);
        // The bundle survives JSON (what `verify` reads) unchanged.
        let text = serde_json::to_string(&bundle).unwrap();
        let back: ProofBundle = serde_json::from_str(&text).unwrap();
        let checks = proof::check_offline(&back);
        assert!(checks.iter().all(|c| c.ok), "seq {seq}: {checks:?}");
        assert!(back.anchor.is_none());
    }
    // The JSON form keeps every f64 bit (serde_json's float_roundtrip):
    // 101.60000000000001 is not 101.6.
    let tricky = Value::F64(f64::from_bits(0x4059_6666_6666_6667));
    let text = serde_json::to_string(&tricky).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        tricky,
        "{text}"
    );
    // Not sealed yet / never stored.
    commit(&mut w, 77, 1);
    assert!(matches!(
        proof::bundle(&reader, &mut cache, 78),
        Err(proof::ProofError::NotSealed(78))
    ));
    assert!(matches!(
        proof::bundle(&reader, &mut cache, 1000),
        Err(proof::ProofError::NoReading(1000))
    ));
}

#[test]
fn a_hole_retention_left_before_sealing_is_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.db");
    let mut w = writer(&path);
    commit(&mut w, 0, 50);
    let mut s = sealer(&path, 20);
    assert_eq!(s.step(Instant::now()).unwrap(), 2); // 1..=40 sealed, 41..=50 pending
    commit(&mut w, 50, 50);
    // Readings 41..=60 disappear before they are sealed (as retention would).
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM readings WHERE seq BETWEEN 41 AND 60", [])
        .unwrap();
    drop(s);
    let mut s = sealer(&path, 20);
    s.step(Instant::now()).unwrap();
    assert_eq!(
        s.stats()
            .lost_to_retention
            .load(std::sync::atomic::Ordering::Relaxed),
        20
    );
    let ranges: Vec<_> = batches(&path)
        .iter()
        .map(|b| (b.first_seq, b.last_seq))
        .collect();
    assert_eq!(ranges, [(1, 20), (21, 40), (61, 80), (81, 100)]);
}

#[test]
fn audit_names_altered_removed_and_inserted_readings_and_chain_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.db");
    let mut w = writer(&path);
    commit(&mut w, 0, 60);
    let mut s = sealer(&path, 25);
    s.seal_now().unwrap(); // 1..=25, 26..=50, 51..=60
    commit(&mut w, 60, 5); // 61..=65 unsealed
    let reader = StoreReader::open(&path).unwrap();
    let clean = audit(&reader).unwrap();
    assert!(clean.clean(), "{:?}", clean.findings);
    assert_eq!(
        (clean.batches, clean.readings_checked, clean.unsealed),
        (3, 65, 5)
    );

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE readings SET ts = ts + 1 WHERE seq = 7;
         UPDATE readings SET value = 'x' WHERE seq = 30;  -- a text where an f64 was
         DELETE FROM readings WHERE seq = 52;
         INSERT INTO readings (seq, series, ts, label, flags, value)
             SELECT 500, series, ts, label, flags, value FROM readings WHERE seq = 1;",
    )
    .unwrap();
    let report = audit(&reader).unwrap();
    let found: Vec<_> = report.findings.iter().map(|f| (f.kind, f.seq)).collect();
    assert_eq!(
        found,
        [
            ("altered", 7),
            ("altered", 30),
            ("removed", 52),
            ("inserted", 500)
        ]
    );
    // A batch row rewritten to match an altered reading breaks the chain.
    conn.execute("UPDATE batches SET root = zeroblob(32) WHERE idx = 2", [])
        .unwrap();
    let report = audit(&reader).unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == "batch" && f.batch == 2)
    );
}
