//! `biota-gateway`: the command line. Glue only — parsing arguments,
//! logging, and calling the library; see `lib.rs` for where things live.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use biota_gateway::config::{EXIT_CONFIG, GatewayConfig, SAMPLE_CONFIG};
use biota_gateway::{EXIT_STORE, Gateway, control, pipeline::StartError, systemd};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "biota-gateway",
    version,
    about = "BIOTA Edge gateway: ingest, normalize, store and anchor factory device data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (what the systemd unit starts).
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/biota/gateway.toml")]
        config: PathBuf,
        /// State directory (default: $STATE_DIRECTORY, else /var/lib/biota).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a configuration file without starting anything.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Print the commented sample configuration with every default.
    PrintDefaultConfig,
    /// Query stored readings.
    Query(cli::query::QueryArgs),
    /// Run the gateway on simulated devices in a temporary directory and
    /// show what it does.
    Demo(cli::demo::DemoArgs),
    /// Measure ingest, memory, queries and start-up on this machine.
    Bench(cli::bench::BenchArgs),
    /// Write a value to a device's point, through the running gateway.
    Write(cli::control::WriteArgs),
    /// Create the gateway's secp256k1 key for anchoring (mode 0600).
    Keygen(cli::anchor::KeygenArgs),
    /// Print the proof bundle of one reading (docs/anchoring.md).
    Proof(cli::anchor::ProofArgs),
    /// Check a proof bundle on its own: offline, and against the chain with --rpc.
    Verify(cli::anchor::VerifyArgs),
    /// Recompute every batch and name each reading altered, removed or
    /// inserted since it was sealed.
    Audit(cli::anchor::AuditArgs),
    /// Deploy the anchor contract or authorize a gateway in it.
    #[command(subcommand)]
    Contract(cli::anchor::ContractCommand),
    /// Show every device's state and transaction counters (polls,
    /// timeouts, CRC errors, exceptions, writes), from the running gateway.
    Devices(cli::control::DevicesArgs),
    /// Manage the HTTP API's bearer tokens (create, list, revoke).
    Token(cli::token::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match GatewayConfig::load(&file) {
            Ok(config) => {
                let devices = config.drivers.devices("drivers").len();
                println!(
                    "{}: valid ({} profile(s), {devices} device(s))",
                    file.display(),
                    config.profiles.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        },
        Command::PrintDefaultConfig => {
            print!("{SAMPLE_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Run { config, state_dir } => {
            let mut config = match GatewayConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            init_logging(&config.log.level);
            let state_dir = biota_gateway::config::state_dir(state_dir.as_deref());
            let db_path = config.db_path(&state_dir);
            config.resolve_key_file(&state_dir);
            exit(runtime().map(|rt| {
                let code = rt.block_on(run(config, db_path, state_dir));
                // After a drain that timed out the writer may still be
                // retrying a commit: do not wait for it, exit.
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
                code
            }))
        }
        Command::Query(args) => exit(cli::query::run(args).map(|()| ExitCode::SUCCESS)),
        Command::Write(args) => exit(cli::control::write(&args)),
        Command::Devices(args) => exit(cli::control::devices(&args)),
        Command::Keygen(args) => exit(cli::anchor::keygen(&args)),
        Command::Proof(args) => exit(cli::anchor::proof(&args)),
        Command::Verify(args) => {
            init_logging("warn");
            exit(runtime().and_then(|rt| rt.block_on(cli::anchor::verify(&args))))
        }
        Command::Audit(args) => {
            init_logging("warn");
            exit(runtime().and_then(|rt| rt.block_on(cli::anchor::audit(&args))))
        }
        Command::Contract(command) => {
            init_logging("warn");
            exit(runtime().and_then(|rt| rt.block_on(cli::anchor::contract(&command))))
        }
        Command::Token(args) => exit(cli::token::run(args).map(|()| ExitCode::SUCCESS)),
        Command::Demo(args) => {
            init_logging("warn");
            exit(runtime().and_then(|rt| rt.block_on(cli::demo::run(args))))
        }
        Command::Bench(args) => {
            init_logging("warn");
            exit(runtime().and_then(|rt| rt.block_on(cli::bench::run(args))))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Prints an error chain and maps it to an exit code.
fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        // A closed pipe (`query ... | head`) means the reader has what it wanted.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = match e.downcast_ref::<cli::Failure>() {
                Some(cli::Failure::Config(_)) => EXIT_CONFIG,
                Some(cli::Failure::Store(_)) => EXIT_STORE,
                Some(cli::Failure::Unavailable(_)) => cli::EXIT_UNAVAILABLE,
                None => 1,
            };
            ExitCode::from(code as u8)
        }
    }
}

/// Logs to stderr; under systemd the journal adds timestamps, so we don't.
fn init_logging(level: &str) {
    // rumqttd logs routine client behaviour (a client that disconnects
    // early) as errors: off unless asked for (BIOTA_LOG=info,rumqttd=warn).
    // The MQTT driver logs what matters itself.
    let filter = std::env::var("BIOTA_LOG").unwrap_or_else(|_| format!("{level},rumqttd=off"));
    let targets: tracing_subscriber::filter::Targets = filter.parse().unwrap_or_else(|_| {
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(targets);
    if journal {
        registry.with(fmt.without_time().with_ansi(false)).init();
    } else {
        registry.with(fmt).init();
    }
}

/// `run`: start, signal readiness, run until SIGTERM/SIGINT, drain, exit.
async fn run(config: GatewayConfig, db_path: PathBuf, state_dir: PathBuf) -> ExitCode {
    let socket = control::socket_path(&state_dir);
    let shutdown = CancellationToken::new();
    let mut gateway = match Gateway::start(&config, &db_path, shutdown.clone()).await {
        Ok(g) => g,
        Err(e) => return start_failed(&e, &db_path),
    };
    // The API is configured on purpose: if it cannot listen, say so and
    // stop (as a taken MQTT port does) rather than run without it.
    if let Err(e) = gateway.serve_api(&config, &db_path, &state_dir) {
        tracing::error!("cannot start: {e}");
        shutdown.cancel();
        let _ = gateway.stopped().await;
        return ExitCode::FAILURE;
    }
    // Without the socket the gateway still collects data; only the
    // command line's writes and status are unavailable.
    if let Err(e) = gateway.serve_control(&socket) {
        tracing::error!(path = %socket.display(), "control socket unavailable: {e}");
    }
    systemd::ready(&format!("running, store {}", db_path.display()));
    tracing::info!("gateway ready");
    tokio::spawn(systemd::supervise(
        gateway.metrics().clone(),
        shutdown.clone(),
    ));
    tokio::spawn(cli::stop_on_signal(shutdown.clone()));
    let metrics = gateway.metrics().clone();
    let report = gateway.stopped().await;
    let snapshot = metrics.snapshot();
    tracing::info!(
        committed = snapshot.committed,
        last_seq = snapshot.last_seq,
        rejected = snapshot.rejected,
        lost = report.writer.lost,
        "gateway stopped"
    );
    if report.timed_out || report.writer.lost > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn start_failed(e: &StartError, db_path: &Path) -> ExitCode {
    tracing::error!(path = %db_path.display(), "cannot start: {e}");
    match e {
        StartError::Store(_)
        | StartError::Anchor(biota_gateway::anchor::AnchorStartError::Store(_)) => {
            ExitCode::from(EXIT_STORE as u8)
        }
        StartError::Thread(_)
        | StartError::Anchor(_)
        | StartError::Mqtt(_)
        | StartError::Coap(_)
        | StartError::Uplink(_) => ExitCode::FAILURE,
    }
}
