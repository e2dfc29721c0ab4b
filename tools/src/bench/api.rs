//! `biota-dev bench api`: the HTTP API under load on this machine.
//!
//! 1. Latency: `clients` concurrent connections (50) each asking, as fast
//!    as answers come, for the latest value of 10,000 points, then for a
//!    24 h aggregate in 1 m buckets (the `bench query` database); p50/p99
//!    and requests/s.
//! 2. SSE fan-out: the sim driver commits `rate` readings/s (10,000) while
//!    `subscribers` (100) streams read every reading; the cost is the CPU
//!    time of the API's thread per second, with the same load and no
//!    subscriber as the baseline, and whether every subscriber kept up.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;
use biota_common::time::format_duration;
use biota_devkit::http_client::Client;
use biota_gateway::api::auth::hash;
use biota_gateway::{Gateway, GatewayConfig, Paths};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::store::query_db;
use super::support::{cpu_seconds_of, sim_config};
use crate::thousands;

const TOKEN: &str = "bgw_bench";

fn api_section(extra: &str) -> String {
    format!(
        "[api]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1024\nsse_max_subscribers = 1000\n\
         tokens = [{{ name = \"bench\", scopes = [\"read\"], sha256 = \"{}\" }}]\n{extra}\n",
        hash(TOKEN)
    )
}

async fn start(
    config: &GatewayConfig,
    db: &Path,
    dir: &Path,
) -> anyhow::Result<(Gateway, SocketAddr, CancellationToken)> {
    let shutdown = CancellationToken::new();
    let paths = Paths {
        db: db.to_owned(),
        state_dir: dir.to_owned(),
        control_socket: None,
    };
    let gateway = Gateway::start(config, &paths, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let address = gateway.api_address().context("the API is configured")?;
    Ok((gateway, address, shutdown))
}

pub async fn api(
    dir: &Path,
    clients: usize,
    duration: Duration,
    subscribers: usize,
    rate: u32,
) -> anyhow::Result<()> {
    println!(
        "\n## api: {clients} concurrent clients, {} per query",
        format_duration(duration)
    );
    let db = dir.join("api.db");
    let (start_ns, now_ns) = query_db(&db, 10_000)?;
    let text = format!("[store.retention]\nmax_size = \"off\"\n{}", api_section(""));
    let config = GatewayConfig::from_toml(Path::new("bench-api.toml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (gateway, address, shutdown) = start(&config, &db, dir).await?;
    let cases = [
        ("latest of 10,000 points", "/v1/latest".to_owned()),
        (
            "24 h aggregate, 1 m buckets",
            format!("/v1/devices/trend/points/t/aggregate?from={start_ns}&to={now_ns}&bucket=1m"),
        ),
    ];
    for (name, path) in cases {
        let (latencies, bytes) = load(address, &path, clients, duration).await?;
        let n = latencies.len();
        let pct = |p: f64| latencies[((n as f64 * p) as usize).min(n - 1)];
        println!(
            "{name:<28} p50 {:>9}  p99 {:>9}  {:>7.0} requests/s  ({} bytes each)",
            format_duration(pct(0.50)),
            format_duration(pct(0.99)),
            n as f64 / duration.as_secs_f64(),
            thousands(bytes),
        );
    }
    shutdown.cancel();
    gateway.stopped().await;

    fan_out(dir, subscribers, rate, duration).await
}

/// `clients` connections asking for `path` until `duration` passed;
/// every latency, sorted, and the size of an answer.
async fn load(
    address: SocketAddr,
    path: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(address, Some(TOKEN)).await?;
            let mut latencies = Vec::new();
            let mut bytes = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                let answer = client.get(&path).await?;
                latencies.push(t.elapsed());
                anyhow::ensure!(answer.status == 200, "{path}: {}", answer.status);
                bytes = answer.body.len() as u64;
            }
            anyhow::Ok((latencies, bytes))
        }));
    }
    let mut all = Vec::new();
    let mut bytes = 0;
    for task in tasks {
        let (latencies, b) = task.await??;
        all.extend(latencies);
        bytes = b;
    }
    anyhow::ensure!(!all.is_empty(), "no request finished");
    all.sort();
    Ok((all, bytes))
}

async fn fan_out(
    dir: &Path,
    subscribers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<()> {
    println!(
        "\n## api: SSE fan-out, {subscribers} subscribers at {} readings/s, {} each",
        thousands(u64::from(rate)),
        format_duration(duration)
    );
    let db = dir.join("api-stream.db");
    let _ = std::fs::remove_file(&db);
    let config = sim_config(1000, f64::from(rate), &api_section("sse_buffer = 1024"))?;
    let (gateway, address, shutdown) = start(&config, &db, dir).await?;
    let metrics = gateway.metrics().clone();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Baseline: the same ingest, nobody listening.
    let (_, api_before) = cpu_seconds_of("api");
    let committed_before = metrics.committed.load(Relaxed);
    let t = Instant::now();
    tokio::time::sleep(duration).await;
    let baseline_cpu = (cpu_seconds_of("api").1 - api_before) / t.elapsed().as_secs_f64();
    let baseline_rate =
        (metrics.committed.load(Relaxed) - committed_before) as f64 / t.elapsed().as_secs_f64();

    let received = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let (received, lagged, stop) = (received.clone(), lagged.clone(), stop.clone());
        let client = Client::connect(address, Some(TOKEN)).await?;
        let (status, mut body) = client.stream("/v1/stream").await?;
        anyhow::ensure!(status == 200, "stream: {status}");
        readers.push(tokio::spawn(async move {
            // Count readings by their "seq" keys: no JSON parsing on this side.
            let mut carry = Vec::new();
            loop {
                let frame = tokio::select! {
                    () = stop.cancelled() => return,
                    frame = body.frame() => frame,
                };
                let Some(Ok(frame)) = frame else { return };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                carry.extend_from_slice(&data);
                let text = String::from_utf8_lossy(&carry);
                let complete = text.rfind('\n').map_or(0, |i| i + 1);
                let done = &text[..complete];
                received.fetch_add(done.matches("\"seq\":").count() as u64, Relaxed);
                if done.contains("event: lagged") {
                    lagged.fetch_add(1, Relaxed);
                }
                carry.drain(..complete);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, api_before) = cpu_seconds_of("api");
    let committed_before = metrics.committed.load(Relaxed);
    let received_before = received.load(Relaxed);
    let t = Instant::now();
    tokio::time::sleep(duration).await;
    let secs = t.elapsed().as_secs_f64();
    let api_cpu = (cpu_seconds_of("api").1 - api_before) / secs;
    let committed = (metrics.committed.load(Relaxed) - committed_before) as f64;
    let delivered = (received.load(Relaxed) - received_before) as f64;
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    shutdown.cancel();
    gateway.stopped().await;

    println!(
        "no subscriber               {:>7.0} readings/s committed, API thread {:>5.1}% of a core",
        baseline_rate,
        baseline_cpu * 100.0
    );
    println!(
        "{subscribers} subscribers             {:>7.0} readings/s committed, API thread {:>5.1}% of a core",
        committed / secs,
        api_cpu * 100.0
    );
    println!(
        "delivered                   {:>7.0} readings/s per subscriber ({:.1}% of committed), {} dropped for lagging",
        delivered / secs / subscribers.max(1) as f64,
        100.0 * delivered / (committed * subscribers.max(1) as f64).max(1.0),
        lagged.load(Relaxed)
    );
    println!(
        "fan-out cost                {:.2} µs of API-thread CPU per reading delivered",
        (api_cpu - baseline_cpu).max(0.0) * secs / delivered.max(1.0) * 1e6
    );
    Ok(())
}
