//! `biota-gateway`: the service (`run`, what systemd starts) and the
//! operator's commands. Glue only — parsing arguments, logging, and
//! calling the library; see `lib.rs` for where things live. Developer
//! tools (the demo, the benchmarks) are the `biota-dev` binary.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use biota_gateway::config::{EXIT_CONFIG, GatewayConfig, SAMPLE_CONFIG};
use biota_gateway::gateway::StartError;
use biota_gateway::{EXIT_STORE, Gateway, Paths, control, logging, systemd};
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
            logging::init(&config.log.level);
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
            logging::init("warn");
            exit(runtime().and_then(|rt| rt.block_on(cli::anchor::verify(&args))))
        }
        Command::Audit(args) => {
            logging::init("warn");
            exit(runtime().and_then(|rt| rt.block_on(cli::anchor::audit(&args))))
        }
        Command::Contract(command) => {
            logging::init("warn");
            exit(runtime().and_then(|rt| rt.block_on(cli::anchor::contract(&command))))
        }
        Command::Token(args) => exit(cli::token::run(args).map(|()| ExitCode::SUCCESS)),
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

/// `run`: install the signal handlers, start, signal readiness, run until
/// SIGTERM/SIGINT, stop in order, exit.
async fn run(config: GatewayConfig, db_path: PathBuf, state_dir: PathBuf) -> ExitCode {
    let shutdown = CancellationToken::new();
    // Before anything starts: a SIGTERM during a schema migration, or
    // right after READY, must still drain and commit.
    tokio::spawn(systemd::stop_on_signal(shutdown.clone()));
    let paths = Paths {
        control_socket: Some(control::socket_path(&state_dir)),
        db: db_path,
        state_dir,
    };
    let gateway = match Gateway::start(&config, &paths, shutdown.clone()).await {
        Ok(g) => g,
        Err(e) => return start_failed(&e, &paths.db),
    };
    if shutdown.is_cancelled() {
        tracing::info!("stopping before readiness: a signal came while starting");
    } else {
        systemd::ready(&format!("running, store {}", paths.db.display()));
        tracing::info!("gateway ready");
    }
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
    if e.is_store() {
        ExitCode::from(EXIT_STORE as u8)
    } else {
        ExitCode::FAILURE
    }
}
