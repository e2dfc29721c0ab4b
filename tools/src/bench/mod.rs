//! `biota-dev bench`: the benchmark command behind
//! `docs/performance.md`. It measures on the machine it runs on — durable
//! ingest from the sim driver, resident memory at a modest rate, query
//! latency and time to readiness with a large existing database — and
//! prints the figures. It asserts nothing: the numbers are the result.
//!
//! - [`store`]: ingest, memory, queries, time to READY;
//! - [`modbus`], [`mqtt`], [`coap`], [`api`], [`anchor`]: one run each;
//! - [`support`]: what the runs share (the sim load, CPU and memory
//!   readings, the machine's name).

mod anchor;
mod api;
mod coap;
mod modbus;
mod mqtt;
mod store;
mod support;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use biota_common::time::parse_duration;
use clap::{Args, Subcommand};

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
    println!(
        "machine: {} cores, {}",
        support::cores(),
        support::cpu_model()
    );
    match args.what {
        Bench::Ingest {
            duration,
            series,
            synchronous,
            cache_mib,
        } => store::ingest(&dir, &duration, series, &synchronous, cache_mib).await?,
        Bench::Memory {
            duration,
            rate,
            series,
        } => store::memory(&dir, &duration, rate, series).await?,
        Bench::Query { series } => store::query(&dir, series)?,
        Bench::Anchor { batch } => anchor::anchor(&dir, batch)?,
        Bench::Ready { size } => store::ready(&dir, &size)?,
        Bench::Modbus {
            duration,
            units,
            registers,
        } => modbus::modbus(&dir, &duration, units, registers).await?,
        Bench::Mqtt {
            messages,
            packs,
            connections,
        } => mqtt::mqtt(&dir, messages, packs, connections).await?,
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
                coap::coap(&dir, duration, endpoints, window, records).await?
            }
        }
        Bench::Api {
            clients,
            duration,
            subscribers,
            rate,
        } => {
            let duration = parse_duration(&duration).map_err(anyhow::Error::msg)?;
            api::api(&dir, clients, duration, subscribers, rate).await?
        }
        Bench::All => {
            store::query(&dir, 10_000)?;
            api::api(&dir, 50, Duration::from_secs(10), 100, 10_000).await?;
            store::memory(&dir, "30s", 10_000, 1000).await?;
            store::ingest(&dir, "60s", 1000, "full", 64).await?;
            modbus::modbus(&dir, "30s", 100, 100).await?;
            mqtt::mqtt(&dir, 2_000_000, 30_000, 4).await?;
            for records in [1, 10] {
                coap::coap(&dir, Duration::from_secs(10), 300, 1, records).await?;
            }
            store::ready(&dir, "1GiB")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
