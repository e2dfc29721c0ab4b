//! `write` and `devices`: the command line's requests to the running
//! gateway over its control socket ([`biota_gateway::control`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use biota_gateway::control;
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
    match control::request(&path, request, ANSWER_TIMEOUT) {
        Ok(answer) => Ok(answer),
        Err(e @ control::ClientError::Unreachable { .. }) => Err(Failure::Unavailable(e).into()),
        // Sent, but no answer: a write may or may not have happened.
        Err(e) => Err(anyhow::anyhow!(
            "{e}; a write may or may not have been carried out (check with `biota-gateway query latest`)"
        )),
    }
}

/// Prints the gateway's error and returns failure, or the answer's body.
fn body<'a>(answer: &'a Json, key: &str) -> Result<&'a Json, ExitCode> {
    if answer["ok"] == json!(true) {
        return Ok(&answer[key]);
    }
    let error = &answer["error"];
    eprintln!(
        "error ({}): {}",
        error["kind"].as_str().unwrap_or("unknown"),
        error["message"]
            .as_str()
            .unwrap_or("the gateway gave no reason")
    );
    Err(ExitCode::FAILURE)
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
    let w = match body(&answer, "write") {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    if !args.socket.json {
        let text = |k: &str| w[k].as_str().unwrap_or_default().to_owned();
        let raw = if text("raw_point") == text("point") && text("raw_value") == text("value") {
            String::new()
        } else {
            format!(" (device: {} = {})", text("raw_point"), text("raw_value"))
        };
        println!(
            "{}/{} = {}{raw}: {} at {}, words {}{}",
            text("device"),
            text("point"),
            text("value"),
            text("operation"),
            text("target"),
            w["words"],
            if w["verified"] == json!(true) {
                ", read back and verified"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn devices(args: &DevicesArgs) -> anyhow::Result<ExitCode> {
    let answer = ask(&args.socket, &json!({ "op": "devices" }))?;
    if args.socket.json {
        println!("{answer}");
    }
    let list = match body(&answer, "devices") {
        Ok(list) => list,
        Err(code) => return Ok(code),
    };
    if args.socket.json {
        return Ok(ExitCode::SUCCESS);
    }
    // (heading, field): counters since the gateway started.
    let columns = [
        ("REQUESTS", "requests"),
        ("ANSWERS", "answers"),
        ("TIMEOUTS", "timeouts"),
        ("CRC", "crc_errors"),
        ("EXCEPT", "exceptions"),
        ("LINK", "link_errors"),
        ("WRITES", "writes"),
        ("W.FAIL", "write_errors"),
        ("RTT_US", "latency_us"),
    ];
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if !list.is_empty() {
        print!("{:<20} {:<8}", "DEVICE", "STATE");
        for (heading, _) in columns {
            print!(" {heading:>9}");
        }
        println!("  SOURCE");
    }
    for d in list {
        print!(
            "{:<20} {:<8}",
            d["device"].as_str().unwrap_or("?"),
            d["state"].as_str().unwrap_or("?")
        );
        for (_, field) in columns {
            print!(" {:>9}", d[field].as_u64().unwrap_or(0));
        }
        println!("  {}", d["source"].as_str().unwrap_or(""));
    }
    let up = &answer["uplink"];
    if up.is_object() {
        println!(
            "\nUplink: {}, acknowledged up to seq {} (backlog {}), {} messages, {} readings, {} bytes, {} lost to retention{}",
            if up["connected"] == json!(true) {
                "connected"
            } else {
                "disconnected"
            },
            up["acked_seq"],
            up["backlog"],
            up["messages"],
            up["readings"],
            up["bytes"],
            up["lost_to_retention"],
            if up["over_budget"] == json!(true) {
                ", waiting for the data budget"
            } else {
                ""
            }
        );
    }
    let coap = &answer["coap"];
    if coap.is_object() {
        println!(
            "\nCoAP: {} datagrams, {} requests stored ({} readings), {} duplicates answered from the cache, rejected {}",
            coap["datagrams"],
            coap["stored"],
            coap["readings"],
            coap["duplicates"],
            coap["rejected"]
        );
    }
    let mqtt = &answer["mqtt"];
    if mqtt.is_object() {
        println!(
            "\nMQTT: {} messages, {} samples, {} on topics no rule matches",
            mqtt["messages"], mqtt["samples"], mqtt["unmatched"]
        );
        for r in mqtt["rejected"].as_array().into_iter().flatten() {
            println!(
                "  rejected {:>8}  {:<20} {}",
                r["count"],
                r["reason"].as_str().unwrap_or("?"),
                r["topic"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `write` as the demo shows it, against its own state directory.
pub fn write_in(dir: &std::path::Path, device: &str, point: &str, value: &str) -> ExitCode {
    let args = WriteArgs {
        socket: SocketArgs {
            state_dir: Some(dir.to_owned()),
            json: false,
        },
        verify: false,
        device: device.to_owned(),
        point: point.to_owned(),
        value: value.to_owned(),
    };
    write(&args).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

/// `devices` as the demo shows it, against its own state directory.
pub fn devices_in(dir: &std::path::Path) -> ExitCode {
    let args = DevicesArgs {
        socket: SocketArgs {
            state_dir: Some(dir.to_owned()),
            json: false,
        },
    };
    devices(&args).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
