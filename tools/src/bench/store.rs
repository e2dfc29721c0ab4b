//! The store's runs: durable ingest from the sim driver, resident memory
//! at a steady rate, query latency, and time to readiness with a large
//! existing database.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use biota_common::size::parse_size;
use biota_common::time::{format_duration, now_ns, parse_duration};
use biota_gateway::metrics::Metrics;
use biota_gateway::store::config::{StoreConfig, Synchronous};
use biota_gateway::store::{StoreReader, StoreWriter};
use biota_gateway::{Gateway, Paths, Quality, Reading, Value};
use tokio_util::sync::CancellationToken;

use super::support::{file_mb, rss_kib, sim_config, time_it};
use crate::thousands;

pub async fn ingest(
    dir: &Path,
    duration: &str,
    series: u32,
    synchronous: &str,
    cache_mib: u32,
) -> anyhow::Result<()> {
    let duration = parse_duration(duration).map_err(anyhow::Error::msg)?;
    if duration < Duration::from_secs(1) {
        bail!("--duration must be at least 1s");
    }
    let sync = match synchronous {
        "full" => "full",
        "normal" => "normal",
        other => bail!("--synchronous must be full or normal, got {other}"),
    };
    // Offer far more than the store can take, so the store is what is measured.
    let config = sim_config(
        series,
        5_000_000.0,
        &format!(
            "[store]\nsynchronous = \"{sync}\"\ncache_mib = {cache_mib}\ncommit_max_readings = 100000\ncommit_max_delay = \"100ms\"\npath = \"ingest.db\""
        ),
    )?;
    let db = config.db_path(dir);
    let _ = std::fs::remove_file(&db);
    println!(
        "\n## ingest: sim driver -> store, {series} series, synchronous = {sync}, cache_mib = {cache_mib}, {}",
        format_duration(duration)
    );
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone()).await?;
    let metrics = gateway.metrics().clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = metrics.snapshot();
    let mut prev = start;
    let mut per_second = Vec::new();
    let mut peak_rss = 0;
    let until = Instant::now() + duration;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = metrics.snapshot();
        per_second.push(now.commit_rate(&prev));
        peak_rss = peak_rss.max(rss_kib());
        prev = now;
    }
    let end = metrics.snapshot();
    shutdown.cancel();
    let report = gateway.stopped().await;
    per_second.sort_by(f64::total_cmp);
    let avg = end.commit_rate(&start);
    println!(
        "committed/s   avg {:.0}   min {:.0}   median {:.0}   max {:.0}",
        avg,
        per_second[0],
        per_second[per_second.len() / 2],
        per_second[per_second.len() - 1]
    );
    println!(
        "commits       {} ({:.0} readings each)   write errors {}   uncommitted at stop {}",
        thousands(end.commits - start.commits),
        (end.committed - start.committed) as f64 / (end.commits - start.commits).max(1) as f64,
        end.write_errors,
        report.writer.lost
    );
    println!(
        "rss peak      {:.1} MB   database {:.0} MB",
        peak_rss as f64 / 1024.0,
        file_mb(&db)
    );
    Ok(())
}

pub async fn memory(dir: &Path, duration: &str, rate: u32, series: u32) -> anyhow::Result<()> {
    let duration = parse_duration(duration).map_err(anyhow::Error::msg)?;
    let config = sim_config(series, f64::from(rate), "[store]\npath = \"memory.db\"")?;
    let db = config.db_path(dir);
    let _ = std::fs::remove_file(&db);
    if duration < Duration::from_secs(1) {
        bail!("--duration must be at least 1s");
    }
    println!(
        "\n## memory: {rate} readings/s over {series} series, default store settings, {}",
        format_duration(duration)
    );
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone()).await?;
    let metrics = gateway.metrics().clone();
    let start = metrics.snapshot();
    let mut samples = Vec::new();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(rss_kib());
    }
    let end = metrics.snapshot();
    shutdown.cancel();
    gateway.stopped().await;
    let steady = &samples[samples.len().min(5)..];
    let max = steady.iter().copied().max().unwrap_or(0);
    println!(
        "committed/s   {:.0}   rss steady max {:.1} MB   last {:.1} MB   (whole process, incl. the bench harness)",
        end.commit_rate(&start),
        max as f64 / 1024.0,
        samples.last().copied().unwrap_or(0) as f64 / 1024.0
    );
    Ok(())
}

/// A database of `series` series (devices `dev-N` of 100 points `p-N`)
/// with 10 readings each, plus `trend`/`t` at 1 Hz over the last 24 h;
/// returns the 24 h window (start, now). Shared by `bench query` and `bench api`.
pub fn query_db(db: &Path, series: u32) -> anyhow::Result<(i64, i64)> {
    let _ = std::fs::remove_file(db);
    let store = StoreConfig {
        synchronous: Synchronous::Normal,
        ..StoreConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let mut writer = StoreWriter::open(db, &store, metrics)?;
    let now = now_ns();
    let source: Arc<str> = Arc::from("sim://bench");
    let unit: Option<Arc<str>> = Some(Arc::from("Cel"));
    let points: Vec<(Arc<str>, Arc<str>)> = (0..series)
        .map(|i| {
            (
                Arc::from(format!("dev-{}", i / 100)),
                Arc::from(format!("p-{}", i % 100)),
            )
        })
        .collect();
    for round in 0..10i64 {
        let mut batch: Vec<Reading> = points
            .iter()
            .map(|(d, p)| {
                reading(
                    d,
                    p,
                    now - (10 - round) * 1_000_000_000,
                    round as f64,
                    &unit,
                    &source,
                )
            })
            .collect();
        writer.commit(&mut batch)?;
    }
    let (trend_d, trend_p): (Arc<str>, Arc<str>) = (Arc::from("trend"), Arc::from("t"));
    let day = 86_400i64;
    let start = now - day * 1_000_000_000;
    for chunk in (0..day).collect::<Vec<_>>().chunks(20_000) {
        let mut batch: Vec<Reading> = chunk
            .iter()
            .map(|s| {
                reading(
                    &trend_d,
                    &trend_p,
                    start + s * 1_000_000_000,
                    (*s as f64 / 600.0).sin(),
                    &unit,
                    &source,
                )
            })
            .collect();
        writer.commit(&mut batch)?;
    }
    // As a gateway leaves it at a stop.
    writer.index_all()?;
    Ok((start, now))
}

pub fn query(dir: &Path, series: u32) -> anyhow::Result<()> {
    let db = dir.join("query.db");
    println!("\n## query: {series} series x 10 readings, plus one 1 Hz point over 24 h");
    let (start, now) = query_db(&db, series)?;
    let reader = StoreReader::open(&db)?;
    let latest = time_it(20, || reader.latest(None).map(|r| r.len()))?;
    let agg = time_it(20, || {
        reader
            .aggregate("trend", "t", start, now, 60_000_000_000)
            .map(|b| b.len())
    })?;
    let range = time_it(20, || {
        reader
            .range("trend", "t", start, now, 1000, None)
            .map(|p| p.readings.len())
    })?;
    println!(
        "latest of all series      {} rows   median {}   max {}",
        latest.0,
        format_duration(latest.1),
        format_duration(latest.2)
    );
    println!(
        "24 h aggregate, 1 m       {} buckets  median {}   max {}",
        agg.0,
        format_duration(agg.1),
        format_duration(agg.2)
    );
    println!(
        "range page of 1000        {} rows   median {}   max {}",
        range.0,
        format_duration(range.1),
        format_duration(range.2)
    );
    Ok(())
}

pub fn reading(
    device: &Arc<str>,
    point: &Arc<str>,
    ts: i64,
    v: f64,
    unit: &Option<Arc<str>>,
    source: &Arc<str>,
) -> Reading {
    Reading {
        device: device.clone(),
        point: point.clone(),
        ts,
        value: Value::F64(v),
        unit: unit.clone(),
        quality: Quality::Good,
        seq: 0,
        source: source.clone(),
    }
}

pub fn ready(dir: &Path, size: &str) -> anyhow::Result<()> {
    let size = parse_size(size).map_err(anyhow::Error::msg)?;
    let db = dir.join("ready.db");
    println!(
        "\n## ready: start to READY=1 with an existing database of {} MB",
        size / 1_000_000
    );
    let store = StoreConfig {
        synchronous: Synchronous::Normal,
        ..StoreConfig::default()
    };
    {
        let mut writer = StoreWriter::open(&db, &store, Arc::new(Metrics::new()))?;
        let built = Instant::now();
        let source: Arc<str> = Arc::from("sim://bench");
        let points: Vec<(Arc<str>, Arc<str>)> = (0..1000)
            .map(|i| {
                (
                    Arc::from(format!("dev-{}", i / 100)),
                    Arc::from(format!("p-{}", i % 100)),
                )
            })
            .collect();
        let mut ts = now_ns() - 86_400_000_000_000;
        while writer.used_bytes()? < size {
            // 100 rounds of 1000 series: 100,000 readings per commit.
            let mut batch = Vec::with_capacity(100_000);
            for _ in 0..100 {
                ts += 1_000_000_000;
                batch.extend(
                    points
                        .iter()
                        .map(|(d, p)| reading(d, p, ts, 1.5, &None, &source)),
                );
            }
            writer.commit(&mut batch)?;
        }
        writer.index_all()?;
        println!(
            "built {:.0} MB in {}",
            file_mb(&db),
            format_duration(built.elapsed())
        );
    }
    let config = dir.join("ready.toml");
    std::fs::write(
        &config,
        "[store]\npath = \"ready.db\"\n[store.retention]\nmax_size = \"off\"\n[[drivers.sim.devices]]\nid = \"d\"\npoints = [{ name = \"p\", waveform = \"sine\", rate = 100 }]\n",
    )?;
    let exe = gateway_binary()?;
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(time_to_ready(&exe, &config, dir)?);
    }
    times.sort();
    println!(
        "READY after   median {}   max {}   (5 starts, process spawn included)",
        format_duration(times[2]),
        format_duration(times[4])
    );
    Ok(())
}

/// The service binary: `$BIOTA_GATEWAY_BIN`, else `biota-gateway` beside
/// this one (cargo builds both into the same directory).
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BIOTA_GATEWAY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let beside = std::env::current_exe()?.with_file_name("biota-gateway");
    anyhow::ensure!(
        beside.is_file(),
        "no biota-gateway beside this binary ({}): build it (cargo build --release -p biota-gateway) or set BIOTA_GATEWAY_BIN",
        beside.display()
    );
    Ok(beside)
}

/// Spawns `run` with a notify socket of our own and times READY=1.
pub fn time_to_ready(exe: &Path, config: &Path, dir: &Path) -> anyhow::Result<Duration> {
    use std::os::unix::net::UnixDatagram;
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let started = Instant::now();
    let mut child = std::process::Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(dir)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("BIOTA_LOG", "warn")
        .spawn()?;
    let mut buf = [0u8; 4096];
    let result = loop {
        match socket.recv(&mut buf) {
            Ok(n)
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1") =>
            {
                break Ok(started.elapsed());
            }
            Ok(_) => continue,
            Err(e) => break Err(anyhow::anyhow!("no READY=1 within 30 s: {e}")),
        }
    };
    // A clean stop (SIGTERM), so the next start does not begin with WAL recovery.
    // SAFETY: kill(2) on our own child's pid, which it keeps until waited for.
    if unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
        child.kill()?;
    }
    child.wait()?;
    result
}
