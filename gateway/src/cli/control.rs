//! `write` and `devices`: the command line's requests to the running
//! gateway over its control socket ([`biota_gateway::control`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use biota_gateway::control::{self, client};
use clap::Args;
use serde_json::{Value as Json, json};

use super::Failure;

/// Longer than the gateway's own wait for a driver's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Args)]
pub struct SocketArgs {
    /// State directory of the running gateway (default: $STATE_DIRECTORY,
    /// else /var/lib/biota); its control socket is `control.sock` there.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Print the gateway's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WriteArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Read the value back after writing and compare (also done for
    /// points whose map says `verify = true`).
    #[arg(long)]
    verify: bool,
    /// Device id.
    device: String,
    /// Point name, as stored (after the profile's rename).
    point: String,
    /// The value in engineering units (the profile's scale and offset are
    /// undone): a number, true/false/on/off, or text for string points.
    #[arg(allow_hyphen_values = true)]
    value: String,
}

#[derive(Args)]
pub struct DevicesArgs {
    #[command(flatten)]
    socket: SocketArgs,
}

fn ask(args: &SocketArgs, request: &Json) -> anyhow::Result<Json> {
    let dir = biota_gateway::config::state_dir(args.state_dir.as_deref());
    let path = control::socket_path(&dir);
    match client::request(&path, request, ANSWER_TIMEOUT) {
        Ok(answer) => Ok(answer),
        Err(e @ client::ClientError::Unreachable { .. }) => Err(Failure::Unavailable(e).into()),
        // Sent, but no answer: a write may or may not have happened.
        Err(e) => Err(anyhow::anyhow!(
            "{e}; a write may or may not have been carried out (check with `biota-gateway query latest`)"
        )),
    }
}

pub fn write(args: &WriteArgs) -> anyhow::Result<ExitCode> {
    let request = json!({
        "op": "write",
        "device": args.device,
        "point": args.point,
        "value": args.value,
        "verify": args.verify,
    });
    let answer = ask(&args.socket, &request)?;
    if args.socket.json {
        println!("{answer}");
    }
    match client::body(&answer, "write") {
        Ok(w) => {
            if !args.socket.json {
                println!("{}", client::write_summary(w));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn devices(args: &DevicesArgs) -> anyhow::Result<ExitCode> {
    let answer = ask(&args.socket, &json!({ "op": "devices" }))?;
    if args.socket.json {
        println!("{answer}");
    }
    if let Err(error) = client::body(&answer, "devices") {
        eprintln!("{error}");
        return Ok(ExitCode::FAILURE);
    }
    if !args.socket.json {
        print!("{}", client::devices_report(&answer));
    }
    Ok(ExitCode::SUCCESS)
}
