//! `bench coap`: confirmable SenML packs from many endpoints into the
//! durable store, each answered only after its commit.
//!
//! The load generator runs in this process: `endpoints` UDP sockets (each
//! its own CoAP endpoint, so per-endpoint rate limits and deduplication
//! apply as in the field), each keeping `window` confirmable POSTs of a
//! SenML pack of `records` readings in flight. The devices run on a
//! runtime (one thread) of their own, so their tasks do not queue in the
//! gateway's; they still share the machine's cores with it. A request's
//! latency is from its send to its 2.04 ACK, which the gateway sends after
//! the group commit that stored it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use biota_common::time::format_duration;
use biota_gateway::config::GatewayConfig;
use biota_gateway::{Gateway, Paths};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::thousands;

pub async fn coap(
    dir: &Path,
    duration: Duration,
    endpoints: usize,
    window: usize,
    records: usize,
) -> anyhow::Result<()> {
    let probe = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    let server = probe.local_addr()?;
    drop(probe);
    let text = format!(
        "[store]\npath = \"coap.db\"\ncache_mib = 64\ncommit_max_readings = 100000\ncommit_max_delay = \"5ms\"\n\
         [store.retention]\nmax_size = \"off\"\n[pipeline]\nqueue_capacity = 4096\n\
         [drivers.coap]\nlisten = [\"{server}\"]\nrate_limit = 1000000\nmax_records = 1000\n"
    );
    let config = GatewayConfig::from_toml(Path::new("bench-coap.toml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = config.db_path(dir);
    let _ = std::fs::remove_file(&db);
    println!(
        "\n## coap: {endpoints} endpoints x {window} confirmable POSTs in flight, SenML packs of {records} readings, {}",
        format_duration(duration)
    );
    println!(
        "store: synchronous = full (fsync per group commit), commit_max_delay = 5ms; 2.04 only after the commit"
    );
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone()).await?;
    let metrics = gateway.metrics().clone();

    let stop = Arc::new(AtomicBool::new(false));
    let warmup = Duration::from_secs(1);
    let started = Instant::now();
    let measure_from = started + warmup;
    let devices = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-devices")
        .enable_all()
        .build()?;
    let mut tasks = Vec::new();
    for e in 0..endpoints {
        let stop = stop.clone();
        tasks.push(devices.spawn(endpoint(server, e, window, records, measure_from, stop)));
    }
    tokio::time::sleep(warmup).await;
    let start = metrics.snapshot();
    tokio::time::sleep(duration).await;
    let end = metrics.snapshot();
    let (committed_start, committed_end) = (start.committed, end.committed);
    let commits = end.commits - start.commits;
    stop.store(true, Relaxed);
    let mut latencies: Vec<u64> = Vec::new();
    let mut answered = 0u64;
    let mut retransmits = 0u64;
    for t in tasks {
        if let Ok((lat, n, r)) = t.await {
            latencies.extend(lat);
            answered += n;
            retransmits += r;
        }
    }
    shutdown.cancel();
    gateway.stopped().await;
    devices.shutdown_background();
    let seconds = duration.as_secs_f64();
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    println!(
        "requests/s {}   readings/s committed {}   ack latency p50 {:.2} ms  p99 {:.2} ms  ({} requests measured, {} retransmissions)",
        thousands((answered as f64 / seconds) as u64),
        thousands(((committed_end - committed_start) as f64 / seconds) as u64),
        pct(0.50),
        pct(0.99),
        thousands(answered),
        retransmits
    );
    println!(
        "group commits/s {}   requests per commit {:.1}",
        thousands((commits as f64 / seconds) as u64),
        answered as f64 / commits.max(1) as f64
    );
    Ok(())
}

/// One endpoint: `window` confirmable POSTs in flight, each re-sent after
/// 2 s without an answer. Returns (latencies in µs, answered, retransmits)
/// of requests sent after `measure_from`.
async fn endpoint(
    server: SocketAddr,
    id: usize,
    window: usize,
    records: usize,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
) -> (Vec<u64>, u64, u64) {
    let Ok(socket) = UdpSocket::bind(("127.0.0.1", 0)).await else {
        return (Vec::new(), 0, 0);
    };
    let device = format!("ep-{id}");
    let mut next_mid: u16 = 1;
    // In flight: message id → (sent at, bytes).
    let mut inflight: std::collections::HashMap<u16, (Instant, Vec<u8>)> =
        std::collections::HashMap::new();
    let mut latencies = Vec::new();
    let (mut answered, mut retransmits) = (0u64, 0u64);
    let mut buf = [0u8; 1500];
    let mut value = 0.0f64;
    loop {
        while !stop.load(Relaxed) && inflight.len() < window {
            let mid = next_mid;
            next_mid = next_mid.wrapping_add(1);
            let mut pack = String::from("[");
            for r in 0..records {
                value += 0.25;
                if r > 0 {
                    pack.push(',');
                }
                pack.push_str(&format!(r#"{{"n":"p{r}","v":{value}}}"#));
            }
            pack.push(']');
            let bytes = biota_devkit::coap_sensor::post_senml(mid, &device, pack.into_bytes());
            let _ = socket.send_to(&bytes, server).await;
            inflight.insert(mid, (Instant::now(), bytes));
        }
        if inflight.is_empty() {
            return (latencies, answered, retransmits);
        }
        match tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if n >= 4 => {
                let mid = u16::from_be_bytes([buf[2], buf[3]]);
                if let Some((sent, _)) = inflight.remove(&mid)
                    && sent >= measure_from
                    && !stop.load(Relaxed)
                {
                    latencies.push(sent.elapsed().as_micros() as u64);
                    answered += 1;
                }
            }
            _ => {
                let now = Instant::now();
                for (sent, bytes) in inflight.values_mut() {
                    if now.duration_since(*sent) > Duration::from_secs(2) {
                        let _ = socket.send_to(bytes, server).await;
                        retransmits += 1;
                    }
                }
                if stop.load(Relaxed) {
                    // Let the last answers come, then leave.
                    inflight
                        .retain(|_, (sent, _)| now.duration_since(*sent) < Duration::from_secs(3));
                }
            }
        }
    }
}
