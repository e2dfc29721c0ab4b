//! `bench coap`: confirmable SenML packs from many endpoints into the
//! durable store, each answered only after its commit, and the same load
//! against a bare UDP request/answer loop as the limit it is measured
//! against (issue #15).
//!
//! The load generator runs in this process: `endpoints` UDP sockets (each
//! its own CoAP endpoint, so per-endpoint rate limits and deduplication
//! apply as in the field), each keeping `window` confirmable POSTs of a
//! SenML pack of `records` readings in flight. The devices run on a
//! runtime (one thread) of their own, so their tasks do not queue in the
//! gateway's; they still share the machine's cores with it. A request's
//! latency is from its send to its 2.04 ACK.
//!
//! Two runs with the same generator, one after the other:
//! - A, the bare loop: one task on the gateway's runtime answers each
//!   datagram at once with a 2.04 ACK echoing its message id and token —
//!   what a CoAP server costs at the least on this machine and its UDP
//!   stack, with no parsing, no pipeline and no commit;
//! - B, the gateway: its CoAP server, which answers after the group commit
//!   that stored the readings.
//!
//! B / A is the figure to compare across machines.

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

/// Load before measuring starts.
const WARMUP: Duration = Duration::from_secs(1);

pub async fn coap(
    dir: &Path,
    duration: Duration,
    endpoints: usize,
    window: usize,
    records: usize,
) -> anyhow::Result<()> {
    println!(
        "\n## coap: {endpoints} endpoints x {window} confirmable POSTs in flight, SenML packs of {records} readings, {}",
        format_duration(duration)
    );
    let bare = bare_run(duration, endpoints, window, records).await?;
    bare.print(
        "A bare UDP loop",
        duration,
        "answered at once, nothing parsed or stored",
    );

    let server = free_udp_address()?;
    let text = format!(
        "[store]\npath = \"coap.db\"\ncache_mib = 64\ncommit_max_readings = 100000\ncommit_max_delay = \"5ms\"\n\
         [store.retention]\nmax_size = \"off\"\n[pipeline]\nqueue_capacity = 4096\n\
         [drivers.coap]\nlisten = [\"{server}\"]\nrate_limit = 1000000\nmax_records = 1000\n"
    );
    let config = GatewayConfig::from_toml(Path::new("bench-coap.toml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = config.db_path(dir);
    let _ = std::fs::remove_file(&db);
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone()).await?;
    let metrics = gateway.metrics().clone();
    let load = Load::start(server, endpoints, window, records)?;
    tokio::time::sleep(WARMUP).await;
    let start = metrics.snapshot();
    tokio::time::sleep(duration).await;
    let end = metrics.snapshot();
    let outcome = load.finish().await;
    shutdown.cancel();
    gateway.stopped().await;
    let seconds = duration.as_secs_f64();
    outcome.print(
        "B gateway",
        duration,
        &format!(
            "readings/s committed {}",
            thousands(((end.committed - start.committed) as f64 / seconds) as u64)
        ),
    );
    println!(
        "B / A          {:.1}%   requests/s of the bare loop over the same sockets and packs",
        100.0 * outcome.answered as f64 / bare.answered.max(1) as f64
    );
    let commits = end.commits - start.commits;
    println!(
        "group commits/s {}   requests per commit {:.1}",
        thousands((commits as f64 / seconds) as u64),
        outcome.answered as f64 / commits.max(1) as f64
    );
    println!(
        "store: synchronous = full (fsync per group commit), commit_max_delay = 5ms; 2.04 only after the commit"
    );
    Ok(())
}

/// A free UDP port on 127.0.0.1 (the probe socket is closed again).
fn free_udp_address() -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind(("127.0.0.1", 0))?.local_addr()
}

/// Run A: the generator against one task that answers every datagram at
/// once (on this runtime, where the gateway's server would run).
async fn bare_run(
    duration: Duration,
    endpoints: usize,
    window: usize,
    records: usize,
) -> anyhow::Result<Outcome> {
    // The server's own kind of socket, with its default receive buffer.
    let socket = UdpSocket::from_std(biota_drivers::coap::bind_udp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        biota_drivers::coap::config::DEFAULT_RECV_BUFFER,
    )?)?;
    let server = socket.local_addr()?;
    let stop = CancellationToken::new();
    let responder = tokio::spawn(bare_responder(socket, stop.clone()));
    let load = Load::start(server, endpoints, window, records)?;
    tokio::time::sleep(WARMUP + duration).await;
    let outcome = load.finish().await;
    stop.cancel();
    let _ = responder.await;
    Ok(outcome)
}

/// Answers each datagram with a 2.04 ACK: its header (type ACK, code
/// 2.04, its message id) and token, nothing else.
async fn bare_responder(socket: UdpSocket, stop: CancellationToken) {
    let mut buf = [0u8; 1500];
    loop {
        let (n, peer) = tokio::select! {
            () = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        if n < 4 {
            continue;
        }
        let end = (4 + usize::from(buf[0] & 15).min(8)).min(n);
        buf[0] = 0x60 | (buf[0] & 15);
        buf[1] = 0x44;
        let _ = socket.send_to(&buf[..end], peer).await;
    }
}

/// The generator while it runs: its endpoints on a runtime of their own.
struct Load {
    devices: tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, u64, u64)>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// Starts the endpoints; what they send after WARMUP is measured.
    fn start(
        server: SocketAddr,
        endpoints: usize,
        window: usize,
        records: usize,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let measure_from = Instant::now() + WARMUP;
        let devices = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-devices")
            .enable_all()
            .build()?;
        let tasks = (0..endpoints)
            .map(|e| {
                devices.spawn(endpoint(
                    server,
                    e,
                    window,
                    records,
                    measure_from,
                    stop.clone(),
                ))
            })
            .collect();
        Ok(Self {
            devices,
            tasks,
            stop,
        })
    }

    /// Stops the endpoints and gathers what they measured.
    async fn finish(self) -> Outcome {
        self.stop.store(true, Relaxed);
        let mut outcome = Outcome::default();
        for t in self.tasks {
            if let Ok((latencies, answered, retransmits)) = t.await {
                outcome.latencies.extend(latencies);
                outcome.answered += answered;
                outcome.retransmits += retransmits;
            }
        }
        self.devices.shutdown_background();
        outcome.latencies.sort_unstable();
        outcome
    }
}

/// What the endpoints measured: requests answered, their latencies in µs
/// (sorted), retransmissions.
#[derive(Default)]
struct Outcome {
    answered: u64,
    latencies: Vec<u64>,
    retransmits: u64,
}

impl Outcome {
    /// Quantile `q` of the latencies, in ms.
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let n = self.latencies.len();
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i] as f64 / 1000.0
    }

    fn print(&self, name: &str, duration: Duration, extra: &str) {
        println!(
            "{name:<14} requests/s {}   {extra}   ack latency p50 {:.2} ms  p99 {:.2} ms  ({} requests measured, {} retransmissions)",
            thousands((self.answered as f64 / duration.as_secs_f64()) as u64),
            self.percentile(0.50),
            self.percentile(0.99),
            thousands(self.answered),
            self.retransmits
        );
    }
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
