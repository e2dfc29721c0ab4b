//! `biota-dev bench anchor`: the cost of sealing (hashing readings into
//! batches, on one core, in memory and from the store), of proofs in a
//! large batch (tree rebuilt from stored leaves, then cached), and the
//! proof's size. Gas figures come from the contract's hil test
//! (`docs/anchoring.md`, Gas).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use biota_gateway::anchor::batch::{Batches, Sealer};
use biota_gateway::anchor::config::AnchorConfig;
use biota_gateway::anchor::merkle::{self, Tree};
use biota_gateway::anchor::proof::{self, TreeCache};
use biota_gateway::metrics::Metrics;
use biota_gateway::store::config::{StoreConfig, Synchronous};
use biota_gateway::store::{StoreReader, StoreWriter};
use biota_gateway::{Quality, Reading, Value};

use crate::thousands;

/// A realistic mix: 8 devices × 16 points, f64 values with units.
fn readings(n: u64, first_seq: u64) -> Vec<Reading> {
    let devices: Vec<Arc<str>> = (0..8).map(|d| format!("press-{d}").into()).collect();
    let points: Vec<Arc<str>> = (0..16)
        .map(|p| format!("axis/{p}/temperature").into())
        .collect();
    let unit: Arc<str> = "Cel".into();
    let source: Arc<str> = "modbus-tcp://10.0.0.5:502/1".into();
    (0..n)
        .map(|i| Reading {
            device: devices[(i % 8) as usize].clone(),
            point: points[(i / 8 % 16) as usize].clone(),
            ts: 1_767_225_600_000_000_000 + i as i64 * 1000,
            value: Value::F64(20.0 + (i % 1000) as f64 / 100.0),
            unit: Some(unit.clone()),
            quality: Quality::Good,
            seq: first_seq + i,
            source: source.clone(),
        })
        .collect()
}

pub fn anchor(dir: &Path, batch: u64) -> anyhow::Result<()> {
    println!("bench anchor: batches of {} readings", thousands(batch));

    // 1. Hashing alone, one core: encoding, leaf hashes and the root.
    let input = readings(batch, 1);
    let started = Instant::now();
    let mut leaves: Vec<merkle::Hash> = input.iter().map(Reading::leaf_hash).collect();
    let hashed = started.elapsed();
    let root = merkle::root_in_place(&mut leaves).expect("not empty");
    let sealed = started.elapsed();
    println!(
        "  sealing in memory      {:>12} readings/s  (leaves {:.0} ns/reading, tree {:.0} ns/reading; root 0x{}…)",
        thousands((batch as f64 / sealed.as_secs_f64()) as u64),
        hashed.as_nanos() as f64 / batch as f64,
        (sealed - hashed).as_nanos() as f64 / batch as f64,
        &alloy::hex::encode(root)[..12]
    );

    // 2. From the store, as the gateway does it: read, hash, write the batch.
    let db = dir.join("bench-anchor.db");
    let _ = std::fs::remove_file(&db);
    let config = StoreConfig {
        synchronous: Synchronous::Normal,
        ..StoreConfig::default()
    };
    let mut writer = StoreWriter::open(&db, &config, Arc::new(Metrics::new()))?;
    let mut rows = readings(batch, 0);
    for chunk in rows.chunks_mut(50_000) {
        writer.commit(chunk)?;
    }
    let anchor_config = AnchorConfig {
        batch_max_readings: batch as usize,
        batch_max_age: Duration::from_secs(3600),
        ..AnchorConfig::default()
    };
    let mut sealer = Sealer::open(&db, &anchor_config, Synchronous::Normal)?;
    let started = Instant::now();
    let n = sealer.step(Instant::now())?;
    let took = started.elapsed();
    anyhow::ensure!(n == 1, "expected one batch, sealed {n}");
    println!(
        "  sealing from the store {:>12} readings/s  ({} readings read, hashed and sealed in {:.0} ms)",
        thousands((batch as f64 / took.as_secs_f64()) as u64),
        thousands(batch),
        took.as_secs_f64() * 1000.0
    );

    // 3. Proofs in that batch: the first one loads the stored leaves and
    // builds the tree, the next ones use the cached tree.
    let reader = StoreReader::open(&db)?;
    let started = Instant::now();
    let leaves = Batches::new(reader.connection(), &db)
        .leaves(1)?
        .expect("leaves stored");
    let loaded = started.elapsed();
    let tree = Tree::build(leaves).expect("not empty");
    let built = started.elapsed();
    println!(
        "  tree from stored leaves {:>10.0} ms  (loading {:.0} ms, building {:.0} ms)",
        built.as_secs_f64() * 1000.0,
        loaded.as_secs_f64() * 1000.0,
        (built - loaded).as_secs_f64() * 1000.0
    );
    let mut cache = TreeCache::default();
    let middle = batch / 2;
    let started = Instant::now();
    let (bundle, _) = proof::bundle(&reader, &mut cache, middle)?;
    let first = started.elapsed();
    let mut times: Vec<Duration> = Vec::with_capacity(1000);
    for k in 0..1000u64 {
        let seq = 1 + (k * 7919) % batch;
        let t = Instant::now();
        proof::bundle(&reader, &mut cache, seq)?;
        times.push(t.elapsed());
    }
    times.sort();
    let path_only = {
        let t = Instant::now();
        for k in 0..1000usize {
            std::hint::black_box(tree.proof(k * 997 % batch as usize));
        }
        t.elapsed() / 1000
    };
    let json = serde_json::to_string_pretty(&bundle)?;
    println!(
        "  proof bundle            first {:.0} ms (tree rebuilt), then p50 {:.0} µs / p99 {:.0} µs cached (path alone {:.1} µs)",
        first.as_secs_f64() * 1000.0,
        times[499].as_secs_f64() * 1e6,
        times[989].as_secs_f64() * 1e6,
        path_only.as_secs_f64() * 1e6
    );
    println!(
        "  proof size              {} siblings ({} bytes of hashes); bundle {} bytes of JSON",
        bundle.proof.len(),
        bundle.proof.len() * 32,
        json.len()
    );
    let _ = std::fs::remove_file(&db);
    Ok(())
}
