//! `biota-gateway bench`: the benchmark command behind
//! `docs/performance.md`. It measures on the machine it runs on — durable
//! ingest from the sim driver, resident memory at a modest rate, query
//! latency and time to readiness with a large existing database — and
//! prints the figures. It asserts nothing: the numbers are the result.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use biota_gateway::config::{GatewayConfig, StoreConfig, Synchronous, parse_size};
use biota_gateway::metrics::Metrics;
use biota_gateway::store::{StoreReader, StoreWriter};
use biota_gateway::time::{format_duration, now_ns, parse_duration};
use biota_gateway::{Gateway, Quality, Reading, Value};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::thousands;

#[derive(Args)]
pub struct BenchArgs {
    /// Directory for the benchmark databases (default: a temporary one).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    what: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Sealing (readings hashed into batches), proofs in a large batch and
    /// their size.
    Anchor {
        /// Readings in the batch.
        #[arg(long, default_value_t = 1_000_000)]
        batch: u64,
    },
    /// Durable ingest from the sim driver into the store, as fast as it goes.
    Ingest {
        #[arg(long, default_value = "60s")]
        duration: String,
        /// Series the sim driver spreads the load over (multiple of 100).
        #[arg(long, default_value_t = 1000)]
        series: u32,
        /// `full` (fsync per group commit) or `normal`.
        #[arg(long, default_value = "full")]
        synchronous: String,
        /// The writer's page cache (`[store] cache_mib`).
        #[arg(long, default_value_t = 64)]
        cache_mib: u32,
    },
    /// Resident memory at a steady rate.
    Memory {
        #[arg(long, default_value = "30s")]
        duration: String,
        /// Readings per second in total.
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
        /// Series the rate is spread over (multiple of 100).
        #[arg(long, default_value_t = 1000)]
        series: u32,
    },
    /// Query latency: latest of 10,000 series, a 24 h aggregate, a range page.
    Query {
        #[arg(long, default_value_t = 10_000)]
        series: u32,
    },
    /// Time from start to READY=1 with an existing database of this size.
    Ready {
        #[arg(long, default_value = "1GiB")]
        size: String,
    },
    /// Modbus TCP: a simulated PLC in-process, polled as fast as it answers.
    Modbus {
        #[arg(long, default_value = "30s")]
        duration: String,
        /// Unit ids served (each a device in the gateway).
        #[arg(long, default_value_t = 100)]
        units: u8,
        /// Holding registers per unit, each a u16 point.
        #[arg(long, default_value_t = 100)]
        registers: u16,
    },
    /// MQTT: Mosquitto forwarding vs the gateway's embedded broker storing
    /// durably, single values and SenML packs, with publish-to-commit latency.
    Mqtt {
        /// Single-value messages per run (A: Mosquitto, B: the gateway).
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        /// SenML packs of 100 records.
        #[arg(long, default_value_t = 30_000)]
        packs: u64,
        /// Publishing client connections of the load generator.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// CoAP: confirmable SenML packs from many endpoints, each answered
    /// after its commit; requests/s and acknowledgement latency.
    Coap {
        /// How long to measure (after 1 s of warm-up).
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Client endpoints (UDP sockets), each its own device.
        #[arg(long, default_value_t = 300)]
        endpoints: usize,
        /// Confirmable requests each endpoint keeps in flight (RFC 7252's
        /// NSTART is 1).
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Readings per SenML pack; a comma-separated list runs each.
        #[arg(long, default_value = "1,10")]
        records: String,
    },
    /// The HTTP API: latest of 10,000 points and a 24 h aggregate under
    /// concurrent clients (p50/p99), and the live stream's fan-out cost.
    Api {
        /// Concurrent client connections.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// How long each measurement runs.
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Live-stream subscribers.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Readings per second committed while they listen.
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
    },
    /// All of the above with their default settings.
    All,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let dir = match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            dir
        }
        None => {
            temp = tempfile::Builder::new().prefix("biota-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    println!("machine: {} cores, {}", cores(), cpu_model());
    match args.what {
        Bench::Ingest {
            duration,
            series,
            synchronous,
            cache_mib,
        } => ingest(&dir, &duration, series, &synchronous, cache_mib).await?,
        Bench::Memory {
            duration,
            rate,
            series,
        } => memory(&dir, &duration, rate, series).await?,
        Bench::Query { series } => query(&dir, series)?,
        Bench::Anchor { batch } => super::bench_anchor::anchor(&dir, batch)?,
        Bench::Ready { size } => ready(&dir, &size)?,
        Bench::Modbus {
            duration,
            units,
            registers,
        } => modbus(&dir, &duration, units, registers).await?,
        Bench::Mqtt {
            messages,
            packs,
            connections,
        } => super::bench_mqtt::mqtt(&dir, messages, packs, connections).await?,
        Bench::Coap {
            duration,
            endpoints,
            window,
            records,
        } => {
            let duration = parse_duration(&duration).map_err(anyhow::Error::msg)?;
            for records in records.split(',') {
                let records: usize = records.trim().parse().map_err(|_| {
                    anyhow::anyhow!("--records: `{records}` is not a number of readings")
                })?;
                super::bench_coap::coap(&dir, duration, endpoints, window, records).await?
            }
        }
        Bench::Api {
            clients,
            duration,
            subscribers,
            rate,
        } => {
            let duration = parse_duration(&duration).map_err(anyhow::Error::msg)?;
            super::bench_api::api(&dir, clients, duration, subscribers, rate).await?
        }
        Bench::All => {
            query(&dir, 10_000)?;
            super::bench_api::api(&dir, 50, Duration::from_secs(10), 100, 10_000).await?;
            memory(&dir, "30s", 10_000, 1000).await?;
            ingest(&dir, "60s", 1000, "full", 64).await?;
            modbus(&dir, "30s", 100, 100).await?;
            super::bench_mqtt::mqtt(&dir, 2_000_000, 30_000, 4).await?;
            for records in [1, 10] {
                super::bench_coap::coap(&dir, Duration::from_secs(10), 300, 1, records).await?;
            }
            ready(&dir, "1GiB")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A sim config: `series` counters (devices of 100 points) at `rate` in total.
pub(super) fn sim_config(
    series: u32,
    total_rate: f64,
    extra: &str,
) -> anyhow::Result<GatewayConfig> {
    if series == 0 || !series.is_multiple_of(100) {
        bail!("--series must be a positive multiple of 100, got {series}");
    }
    let text = format!(
        r#"{extra}
[store.retention]
max_size = "off"
[drivers.sim]
max_batch = 4096
[[drivers.sim.devices]]
id = "bench"
copies = {devices}
points = [{{ name = "p", copies = 100, waveform = "counter", rate = {rate} }}]
"#,
        devices = series / 100,
        rate = total_rate / f64::from(series),
    );
    GatewayConfig::from_toml(Path::new("bench.toml"), &text).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn ingest(
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
    let gateway = Gateway::start(&config, &db, shutdown.clone()).await?;
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

async fn memory(dir: &Path, duration: &str, rate: u32, series: u32) -> anyhow::Result<()> {
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
    let gateway = Gateway::start(&config, &db, shutdown.clone()).await?;
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
pub(super) fn query_db(db: &Path, series: u32) -> anyhow::Result<(i64, i64)> {
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

fn query(dir: &Path, series: u32) -> anyhow::Result<()> {
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

fn reading(
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

/// (result of the last run, median, max) over `runs` runs.
fn time_it<T>(
    runs: usize,
    mut f: impl FnMut() -> Result<T, biota_gateway::store::StoreError>,
) -> anyhow::Result<(T, Duration, Duration)> {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f()?);
        times.push(t.elapsed());
    }
    times.sort();
    Ok((last.context("no runs")?, times[runs / 2], times[runs - 1]))
}

fn ready(dir: &Path, size: &str) -> anyhow::Result<()> {
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
    let exe = std::env::current_exe()?;
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

/// Spawns `run` with a notify socket of our own and times READY=1.
fn time_to_ready(exe: &Path, config: &Path, dir: &Path) -> anyhow::Result<Duration> {
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
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    child.wait()?;
    result
}

async fn modbus(dir: &Path, duration: &str, units: u8, registers: u16) -> anyhow::Result<()> {
    use biota_drivers::modbus::simulator::SimulatedPlc;
    let duration = parse_duration(duration).map_err(anyhow::Error::msg)?;
    if duration < Duration::from_secs(1) || units == 0 || registers == 0 {
        bail!("--duration must be at least 1s, --units and --registers at least 1");
    }
    let plc = SimulatedPlc::start(1..=units, registers)?;
    let points: Vec<String> = (0..registers)
        .map(|a| {
            format!(
                "{{ name = \"r{a}\", area = \"holding_register\", address = {a}, type = \"u16\" }}"
            )
        })
        .collect();
    let devices: Vec<String> = (1..=units)
        .map(|u| format!("{{ id = \"unit-{u}\", unit = {u}, map = \"bench\" }}"))
        .collect();
    let text = format!(
        "[store]\npath = \"modbus.db\"\ncache_mib = 128\ncommit_max_readings = 300000\ncommit_max_delay = \"500ms\"\n[pipeline]\nqueue_capacity = 4096\n\
         [store.retention]\nmax_size = \"off\"\n\
         [[drivers.modbus.tcp]]\naddress = \"{}\"\ndevices = [{}]\n\
         [drivers.modbus.maps.bench]\n[[drivers.modbus.maps.bench.groups]]\nname = \"all\"\ninterval = \"1ms\"\npoints = [{}]\n",
        plc.address,
        devices.join(", "),
        points.join(", ")
    );
    let config = GatewayConfig::from_toml(Path::new("bench-modbus.toml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = config.db_path(dir);
    let _ = std::fs::remove_file(&db);
    let minimum = u64::from(units) * u64::from(registers.div_ceil(plan_limit()));
    println!(
        "\n## modbus: simulated PLC over TCP, {units} units x {registers} registers (u16 points), polled as fast as it answers, {}",
        format_duration(duration)
    );
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(&config, &db, shutdown.clone()).await?;
    let metrics = gateway.metrics().clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = metrics.snapshot();
    let cpu_start = cpu_seconds();
    let requests_start = plc.requests.load(std::sync::atomic::Ordering::Relaxed);
    let values_start = plc.values_read.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let end = metrics.snapshot();
    let cpu_end = cpu_seconds();
    let requests = plc.requests.load(std::sync::atomic::Ordering::Relaxed) - requests_start;
    let values = plc.values_read.load(std::sync::atomic::Ordering::Relaxed) - values_start;
    shutdown.cancel();
    gateway.stopped().await;
    let stored = end.committed - start.committed;
    // Cycles from the registers the simulator served in the same window as
    // its requests (the commits lag the polls by up to one commit delay).
    let cycles = values as f64 / (f64::from(units) * f64::from(registers));
    let gateway_cpu = (cpu_end.0 - cpu_start.0) - (cpu_end.1 - cpu_start.1);
    println!(
        "points stored/s {:.0}   gateway CPU {:.2} us/point ({:.2} s of CPU; the simulator's {:.2} s excluded)",
        end.commit_rate(&start),
        gateway_cpu * 1e6 / stored.max(1) as f64,
        gateway_cpu,
        cpu_end.1 - cpu_start.1
    );
    println!(
        "requests per cycle {:.1} (minimum {minimum}: {units} units x ceil({registers}/125))",
        requests as f64 / cycles.max(1.0)
    );
    Ok(())
}

fn plan_limit() -> u16 {
    biota_drivers::modbus::plan::MAX_READ_REGISTERS
}

/// (CPU seconds of the whole process, CPU seconds of the `plc-simulator` thread).
fn cpu_seconds() -> (f64, f64) {
    cpu_seconds_of("plc-simulator")
}

/// (CPU seconds of the whole process, CPU seconds of the threads named `thread`).
pub(super) fn cpu_seconds_of(thread: &str) -> (f64, f64) {
    // utime + stime are fields 14 and 15 of /proc/.../stat, in clock ticks (100 Hz on Linux).
    fn ticks(stat: &str) -> f64 {
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // After the ")", field 3 of the man page is index 0: utime is 14 -> 11, stime 15 -> 12.
        (field(11) + field(12)) / 100.0
    }
    let total = std::fs::read_to_string("/proc/self/stat")
        .map(|s| ticks(&s))
        .unwrap_or(0.0);
    let mut simulator = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == thread {
                simulator += std::fs::read_to_string(task.path().join("stat"))
                    .map(|s| ticks(&s))
                    .unwrap_or(0.0);
            }
        }
    }
    (total, simulator)
}

fn rss_kib() -> u64 {
    biota_gateway::metrics::rss_bytes() / 1024
}

fn file_mb(path: &Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0)
}

pub(super) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}
