//! `biota-dev bench mqtt`: one load generator (rumqttc clients in this
//! process), two receivers, in one run:
//!
//! - **A:** Mosquitto (the Debian binary, a child process on a free loopback
//!   port) forwarding every message to one subscriber (a rumqttc client in
//!   this process): messages/s delivered to the subscriber;
//! - **B:** the gateway (`Gateway::start` in this process) with its embedded
//!   broker and a `plain` rule: readings/s committed durably;
//! - **B, SenML:** the same with packs of 100 records per message.
//!
//! Every message is published with QoS 1 (acknowledged by the broker, so
//! the generator cannot outrun the broker and nothing is lost on the way in;
//! each run checks that every message arrived). A rate is the message (or
//! reading) count divided by the time from the first publish until the
//! subscriber has received / the store has committed the last one.
//!
//! The generator keeps at most 300,000 readings (300,000 plain messages,
//! 3,000 packs) outstanding between its publish and the delivery (A) or the
//! commit (B): QoS 1 acknowledgements come from the broker, not from the
//! store, and rumqttd drops the oldest messages for a reader more than
//! 64 MiB behind, so an unbounded generator would measure losses.
//!
//! Latency: a separate client publishes a probe every 5 ms
//! (`bench/probe/lat`, the payload is its publish time in ns, a plain
//! integer) during the load and for 2 s after it. A watcher thread samples
//! the writer's commit counter every 100 µs and records (highest committed
//! seq, time) at each commit; after the run each stored probe's seq gives the
//! commit that made it durable, and latency = that commit's observed time −
//! the publish time in the payload (observation adds ≤ 100 µs).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use biota_common::time::{format_duration, now_ns};
use biota_gateway::config::GatewayConfig;
use biota_gateway::metrics::Metrics;
use biota_gateway::store::StoreReader;
use biota_gateway::{Gateway, Paths, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::thousands;

/// QoS of every publish, in both runs.
const QOS: QoS = QoS::AtLeastOnce;
/// Unacknowledged publishes per generator connection.
const INFLIGHT: u16 = 1000;
/// Devices and points per device the load is spread over (10,000 series).
const DEVICES: u64 = 100;
const POINTS: u64 = 100;
/// Records per SenML pack.
const PACK: u64 = 100;
/// Messages the generator lets be outstanding between its publish and the
/// delivery to the subscriber (A) or the commit (B), in messages of 100
/// readings for SenML packs: enough to keep the receiver saturated, and far
/// below what rumqttd keeps for a slow reader (4 segments of 16 MiB, the
/// oldest dropped past that).
const WINDOW_READINGS: u64 = 300_000;
const PROBE_TOPIC: &str = "bench/probe/lat";
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How long probes go on after the load (latency on an idle gateway).
const IDLE_TAIL: Duration = Duration::from_secs(2);
/// A run that has not finished after this long is reported as incomplete.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Store settings of run B (reported with the figures).
const STORE: &str = "synchronous = \"full\"\ncache_mib = 128\ncommit_max_readings = 100000\ncommit_max_delay = \"100ms\"";
const QUEUE_CAPACITY: usize = 4096;

pub async fn mqtt(dir: &Path, messages: u64, packs: u64, connections: usize) -> anyhow::Result<()> {
    if messages == 0 || packs == 0 || connections == 0 {
        bail!("--messages, --packs and --connections must be at least 1");
    }
    println!(
        "\n## mqtt: {} single-value messages over {} series, QoS 1, {connections} publishing connections (rumqttc), same generator for A and B",
        thousands(messages),
        thousands(DEVICES * POINTS)
    );
    let topics: Arc<Vec<String>> = Arc::new(
        (0..DEVICES * POINTS)
            .map(|s| format!("bench/dev-{}/p{}", s % DEVICES, s / DEVICES))
            .collect(),
    );
    let plain = {
        let topics = topics.clone();
        move |i: u64| {
            (
                topics[(i % (DEVICES * POINTS)) as usize].clone(),
                format!("{}.5", i % 1000).into_bytes(),
            )
        }
    };

    let a = mosquitto_run(dir, messages, connections, plain.clone()).await?;
    println!(
        "A mosquitto    delivered/s {:.0}   ({} of {} in {}; generator acked/s {:.0}; probe publish->deliver p50 {} p99 {})",
        a.rate,
        thousands(a.done),
        thousands(messages),
        format_duration(a.elapsed),
        a.published_rate,
        ms(a.load_latency.0),
        ms(a.load_latency.1),
    );

    let b = gateway_run(dir, "plain", messages, 1, connections, plain).await?;
    println!(
        "B gateway      committed/s {:.0}   ({} of {} in {}; generator acked/s {:.0}; {} commits of {:.0} readings)",
        b.rate,
        thousands(b.done),
        thousands(messages),
        format_duration(b.elapsed),
        b.published_rate,
        thousands(b.commits),
        b.done as f64 / b.commits.max(1) as f64,
    );
    b.print_latency();
    println!(
        "B / A          {:.1}%   (target >= 80%)",
        100.0 * b.rate / a.rate.max(1.0)
    );

    let senml = move |i: u64| {
        let device = i % DEVICES;
        let mut pack = String::with_capacity(PACK as usize * 24 + 32);
        pack.push('[');
        for p in 0..PACK {
            if p == 0 {
                pack.push_str(&format!(
                    r#"{{"bn":"dev-{device}:","n":"p{p}","v":{}.5}}"#,
                    i % 1000
                ));
            } else {
                pack.push_str(&format!(r#",{{"n":"p{p}","v":{}.5}}"#, (i + p) % 1000));
            }
        }
        pack.push(']');
        (format!("senml/dev-{device}"), pack.into_bytes())
    };
    println!(
        "\n## mqtt senml: {} packs of {PACK} records (bn/n/v) = {} readings over {} series, QoS 1, {connections} connections",
        thousands(packs),
        thousands(packs * PACK),
        thousands(DEVICES * PACK)
    );
    let s = gateway_run(dir, "senml", packs, PACK, connections, senml).await?;
    println!(
        "B gateway      committed/s {:.0}   ({} of {} in {}; packs acked/s {:.0}; {} commits of {:.0} readings)   (target >= 1,000,000)",
        s.rate,
        thousands(s.done),
        thousands(packs * PACK),
        format_duration(s.elapsed),
        s.published_rate,
        thousands(s.commits),
        s.done as f64 / s.commits.max(1) as f64,
    );
    s.print_latency();
    println!(
        "store: {STORE_LINE}, [pipeline] queue_capacity = {QUEUE_CAPACITY}",
        STORE_LINE = STORE.replace('\n', ", ")
    );
    Ok(())
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), format_duration)
}

/// What one run measured.
struct Outcome {
    /// Messages delivered (A) or readings committed (B).
    done: u64,
    elapsed: Duration,
    rate: f64,
    /// Messages acknowledged by the broker per second, first to last.
    published_rate: f64,
    /// Probe latency (p50, p99) under load, and on the idle system.
    load_latency: (Option<Duration>, Option<Duration>),
    idle_latency: (Option<Duration>, Option<Duration>),
    probes: (usize, usize),
    commits: u64,
}

impl Outcome {
    fn print_latency(&self) {
        println!(
            "publish->commit under load  p50 {}   p99 {}   ({} probes)   idle  p50 {}   p99 {}   ({} probes)",
            ms(self.load_latency.0),
            ms(self.load_latency.1),
            self.probes.0,
            ms(self.idle_latency.0),
            ms(self.idle_latency.1),
            self.probes.1,
        );
    }
}

async fn mosquitto_run(
    dir: &Path,
    messages: u64,
    connections: usize,
    message: impl Fn(u64) -> (String, Vec<u8>) + Clone + Send + Sync + 'static,
) -> anyhow::Result<Outcome> {
    // Unlimited queues: a subscriber that falls behind is queued for, never
    // dropped; the count received is checked anyway.
    let mosquitto =
        biota_devkit::peers::mosquitto(dir, "max_queued_messages 0\nmax_inflight_messages 0\n")?;
    let address = mosquitto.address;
    let stop = CancellationToken::new();
    // The subscriber: counts load messages, measures probes on arrival.
    let received = Arc::new(AtomicU64::new(0));
    let last_at = Arc::new(Mutex::new(Instant::now()));
    let probe_latency = Arc::new(Mutex::new(Vec::new()));
    let mut subscriber = {
        let (received, last_at, probe_latency) =
            (received.clone(), last_at.clone(), probe_latency.clone());
        Client::connect(
            address,
            "bench-subscriber",
            stop.clone(),
            move |topic, payload| {
                if topic == PROBE_TOPIC {
                    if let Some(sent) = std::str::from_utf8(payload)
                        .ok()
                        .and_then(|p| p.parse::<i64>().ok())
                    {
                        probe_latency
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((sent, now_ns() - sent));
                    }
                } else {
                    received.fetch_add(1, Relaxed);
                    *last_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                }
            },
        )
        .await?
    };
    subscriber
        .client
        .subscribe("bench/#", QoS::AtMostOnce)
        .await?;
    subscriber.wait_subscribed().await?;
    let probes = Probes::start(address, stop.clone()).await?;
    let delivered = received.clone();
    let load = Load::start(
        address,
        messages,
        connections,
        message,
        Arc::new(move || delivered.load(Relaxed)),
        WINDOW_READINGS,
        stop.clone(),
    )
    .await?;
    let started = load.started;
    let done_at = loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let n = received.load(Relaxed);
        if n >= messages {
            break *last_at.lock().unwrap_or_else(|e| e.into_inner());
        }
        if started.elapsed() > RUN_LIMIT {
            println!("A: only {n} of {messages} delivered after {RUN_LIMIT:?}");
            break Instant::now();
        }
    };
    let published = load.finish().await;
    let load_end = now_ns();
    tokio::time::sleep(Duration::from_millis(200)).await;
    probes.stop();
    stop.cancel();
    let elapsed = done_at.duration_since(started);
    let done = received.load(Relaxed);
    let probe_latency = probe_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let under_load: Vec<i64> = probe_latency
        .iter()
        .filter(|(sent, _)| *sent < load_end)
        .map(|(_, l)| *l)
        .collect();
    Ok(Outcome {
        done,
        elapsed,
        rate: done as f64 / elapsed.as_secs_f64(),
        published_rate: published,
        load_latency: percentiles(under_load.clone()),
        idle_latency: (None, None),
        probes: (under_load.len(), 0),
        commits: 0,
    })
}

async fn gateway_run(
    dir: &Path,
    name: &str,
    messages: u64,
    readings_per_message: u64,
    connections: usize,
    message: impl Fn(u64) -> (String, Vec<u8>) + Clone + Send + Sync + 'static,
) -> anyhow::Result<Outcome> {
    let address = biota_devkit::peers::free_port()?;
    let text = format!(
        "[store]\npath = \"mqtt-{name}.db\"\n{STORE}\n[pipeline]\nqueue_capacity = {QUEUE_CAPACITY}\n\
         [store.retention]\nmax_size = \"off\"\n\
         [drivers.mqtt.broker]\nlisten = \"{address}\"\nmax_payload = 1048576\n\
         [[drivers.mqtt.rules]]\ntopic = \"bench/{{device}}/{{point}}\"\nformat = \"plain\"\n\
         [[drivers.mqtt.rules]]\ntopic = \"senml/+\"\nformat = \"senml\"\n"
    );
    let config = GatewayConfig::from_toml(Path::new("bench-mqtt.toml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = config.db_path(dir);
    let _ = std::fs::remove_file(&db);
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone()).await?;
    let metrics = gateway.metrics().clone();
    let commits = CommitWatch::start(metrics.clone());
    let stop = CancellationToken::new();
    let start = metrics.snapshot();
    let probes = Probes::start(address, stop.clone()).await?;
    let committed = {
        let metrics = metrics.clone();
        move || {
            metrics
                .committed
                .load(Relaxed)
                .saturating_sub(start.committed)
                / readings_per_message
        }
    };
    let load = Load::start(
        address,
        messages,
        connections,
        message,
        Arc::new(committed),
        WINDOW_READINGS / readings_per_message,
        stop.clone(),
    )
    .await?;
    let started = load.started;
    let target = messages * readings_per_message;
    let mut last = start.committed;
    let mut last_change = Instant::now();
    let done_at = loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = metrics.committed.load(Relaxed);
        let n = now - start.committed;
        // Probes are committed too: wait for the ones published so far.
        if n >= target + probes.acked.load(Relaxed) {
            break Instant::now();
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        if started.elapsed() > RUN_LIMIT || last_change.elapsed() > Duration::from_secs(10) {
            println!("B {name}: only {n} of {target} committed; stopped waiting");
            break Instant::now();
        }
    };
    let published = load.finish().await;
    let load_end = now_ns();
    tokio::time::sleep(IDLE_TAIL).await;
    probes.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let end = metrics.snapshot();
    let seen_commits = commits.stop();
    shutdown.cancel();
    gateway.stopped().await;
    let elapsed = done_at.duration_since(started);
    // Each probe's commit time: the first commit whose highest seq covers it.
    let reader = StoreReader::open(&db)?;
    let page = reader.range("probe", "lat", 0, i64::MAX, 1_000_000, None)?;
    let done = (end.committed - start.committed).saturating_sub(page.readings.len() as u64);
    let (mut under_load, mut idle) = (Vec::new(), Vec::new());
    for r in &page.readings {
        let sent = match r.value {
            Value::I64(v) => v,
            Value::F64(v) => v as i64,
            _ => continue,
        };
        let i = seen_commits.partition_point(|(seq, _)| *seq < r.seq);
        let Some((_, at)) = seen_commits.get(i) else {
            continue;
        };
        if sent < load_end {
            under_load.push(at - sent);
        } else {
            idle.push(at - sent);
        }
    }
    Ok(Outcome {
        done,
        elapsed,
        rate: done as f64 / elapsed.as_secs_f64(),
        published_rate: published,
        probes: (under_load.len(), idle.len()),
        load_latency: percentiles(under_load),
        idle_latency: percentiles(idle),
        commits: end.commits - start.commits,
    })
}

fn percentiles(mut ns: Vec<i64>) -> (Option<Duration>, Option<Duration>) {
    if ns.is_empty() {
        return (None, None);
    }
    ns.sort_unstable();
    let at = |q: f64| {
        let i = ((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1;
        Some(Duration::from_nanos(ns[i].max(0) as u64))
    };
    (at(0.50), at(0.99))
}

/// Records (highest committed seq, time) at each commit of the writer.
struct CommitWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u64, i64)>>,
}

impl CommitWatch {
    fn start(metrics: Arc<Metrics>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut commits = metrics.commits.load(Relaxed);
            while !flag.load(Relaxed) {
                std::thread::sleep(Duration::from_micros(100));
                let now = metrics.commits.load(Relaxed);
                if now != commits {
                    commits = now;
                    seen.push((metrics.last_seq.load(Relaxed), now_ns()));
                }
            }
            seen
        });
        Self { stop, thread }
    }

    fn stop(self) -> Vec<(u64, i64)> {
        self.stop.store(true, Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A rumqttc connection whose event loop runs in a task: counts the
/// broker's acknowledgements and hands incoming publishes to `on_publish`.
struct Client {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    subscribed: Option<tokio::sync::oneshot::Receiver<()>>,
    task: JoinHandle<()>,
}

impl Client {
    async fn connect(
        address: SocketAddr,
        id: &str,
        stop: CancellationToken,
        mut on_publish: impl FnMut(&str, &[u8]) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let mut options = MqttOptions::new(id, address.ip().to_string(), address.port());
        options.set_keep_alive(Duration::from_secs(60));
        options.set_inflight(INFLIGHT);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 4096);
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let acked = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (sub_tx, sub_rx) = tokio::sync::oneshot::channel();
        let counter = acked.clone();
        let name = id.to_owned();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut sub = Some(sub_tx);
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    event = eventloop.poll() => event,
                };
                match event {
                    // Our own goodbye: the broker closing the socket next is no error.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p.topic, &p.payload),
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = sub.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        match ready.take() {
                            Some(tx) => {
                                let _ = tx.send(Err(e.to_string()));
                            }
                            None => eprintln!("bench client {name}: {e}"),
                        }
                        return;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(5), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Self {
                client,
                acked,
                subscribed: Some(sub_rx),
                task,
            }),
            Ok(Ok(Err(e))) => bail!("{id} cannot connect to {address}: {e}"),
            _ => bail!("{id}: no CONNACK from {address}"),
        }
    }

    async fn wait_subscribed(&mut self) -> anyhow::Result<()> {
        let rx = self.subscribed.take().context("already subscribed")?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .context("no SUBACK within 5 s")?
            .context("the subscriber's connection closed")
    }
}

/// The load generator: `connections` clients publishing `messages`
/// messages between them (message `i` from client `i % connections`).
struct Load {
    started: Instant,
    clients: Vec<Arc<Client>>,
    publishers: Vec<JoinHandle<anyhow::Result<()>>>,
    messages: u64,
}

impl Load {
    async fn start(
        address: SocketAddr,
        messages: u64,
        connections: usize,
        message: impl Fn(u64) -> (String, Vec<u8>) + Clone + Send + Sync + 'static,
        done: Arc<dyn Fn() -> u64 + Send + Sync>,
        window: u64,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(connections);
        for c in 0..connections {
            let client =
                Client::connect(address, &format!("bench-load-{c}"), stop.clone(), |_, _| {})
                    .await?;
            clients.push(Arc::new(client));
        }
        let started = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let step = connections as u64;
        let publishers = clients
            .iter()
            .enumerate()
            .map(|(c, client)| {
                let (client, message) = (client.clone(), message.clone());
                let (sent, done) = (sent.clone(), done.clone());
                tokio::spawn(async move {
                    let mut i = c as u64;
                    while i < messages {
                        // At most WINDOW messages between publish and
                        // delivery / commit (see the module's doc).
                        if i % 64 < step {
                            while sent.load(Relaxed).saturating_sub(done()) > window {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        sent.fetch_add(1, Relaxed);
                        let (topic, payload) = message(i);
                        client.client.publish(topic, QOS, false, payload).await?;
                        i += step;
                    }
                    Ok(())
                })
            })
            .collect();
        Ok(Self {
            started,
            clients,
            publishers,
            messages,
        })
    }

    /// Waits until every message is acknowledged; messages acknowledged
    /// per second.
    async fn finish(self) -> f64 {
        for p in self.publishers {
            match p.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("bench publisher: {e}"),
                Err(e) => eprintln!("bench publisher: {e}"),
            }
        }
        let acked = || {
            self.clients
                .iter()
                .map(|c| c.acked.load(Relaxed))
                .sum::<u64>()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked() < self.messages && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let rate = acked() as f64 / self.started.elapsed().as_secs_f64();
        for c in &self.clients {
            let _ = c.client.disconnect().await;
        }
        for c in self.clients {
            if let Ok(c) = Arc::try_unwrap(c) {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.task).await;
            }
        }
        rate
    }
}

/// Publishes `bench/probe/lat` = its publish time (ns) every `PROBE_EVERY`.
struct Probes {
    acked: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Probes {
    async fn start(address: SocketAddr, stop: CancellationToken) -> anyhow::Result<Self> {
        let client = Client::connect(address, "bench-probe", stop.clone(), |_, _| {}).await?;
        let acked = client.acked.clone();
        let own = stop.child_token();
        let done = own.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            loop {
                tokio::select! {
                    () = done.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let payload = now_ns().to_string();
                if client
                    .client
                    .publish(PROBE_TOPIC, QOS, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = client.client.disconnect().await;
        });
        Ok(Self { acked, stop: own })
    }

    fn stop(&self) {
        self.stop.cancel();
    }
}
