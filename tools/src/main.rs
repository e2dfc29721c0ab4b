//! `biota-dev`: the developer tools of the BIOTA Edge gateway — the demo
//! (the gateway on simulated devices) and the benchmark command behind
//! `docs/performance.md`. Never flashed to a gateway: the service and the
//! operator's commands are `biota-gateway`.
//!
//! - `demo.rs`, `demo_chain.rs`: the demo and its local chain (anvil).
//! - `bench/`: `bench` and its runs (store, Modbus, MQTT, CoAP, API,
//!   anchoring).

mod bench;
mod demo;
mod demo_chain;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "biota-dev",
    version,
    about = "BIOTA Edge developer tools: the demo and the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on simulated devices in a temporary directory and
    /// show what it does.
    Demo(demo::DemoArgs),
    /// Measure ingest, memory, queries, protocols and start-up on this machine.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    biota_gateway::logging::init("warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `12,345,678`
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
