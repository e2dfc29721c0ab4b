//! `biota-dev demo`: the gateway on simulated devices in a temporary
//! state directory, with a live view of what it does, then a summary and
//! example queries.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use biota_common::time::{format_duration, now_ns, parse_duration};
use biota_devkit::modbus_plc::SimulatedPlc;
use biota_devkit::{coap_sensor, mqtt_devices};
use biota_drivers::modbus::config::TcpConnectionConfig;
use biota_drivers::stats::DeviceState;
use biota_gateway::api::auth::{self, Scope};
use biota_gateway::config::GatewayConfig;
use biota_gateway::control::{self, client};
use biota_gateway::export::{
    BUCKET_COLUMNS, READING_COLUMNS, bucket_cells, reading_cells, write_table,
};
use biota_gateway::store::StoreReader;
use biota_gateway::systemd::{status_line, stop_on_signal};
use biota_gateway::{Gateway, Paths, Reading, metrics::Metrics};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::thousands;

/// The demo's configuration.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

#[derive(Args)]
pub struct DemoArgs {
    /// How long to run (Ctrl-C stops earlier).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Keep the data in this directory instead of a temporary one.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Use this configuration instead of the built-in demo one.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let duration = parse_duration(&args.duration)
        .map_err(anyhow::Error::msg)
        .context("--duration")?;
    let mut config = match &args.config {
        Some(file) => GatewayConfig::load(file),
        None => GatewayConfig::from_toml(Path::new("config/demo.toml (built in)"), DEMO_CONFIG),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let plc = connect_simulated_plc(&mut config)?;
    let mqtt = free_mqtt_port(&mut config)?;
    let coap = free_coap_port(&mut config)?;
    free_api_port(&mut config)?;
    let temp;
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("biota-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let db = config.db_path(&dir);
    let chain = match super::demo_chain::find_anvil() {
        Some(anvil) => Some(
            super::demo_chain::start(&anvil, &dir, &mut config)
                .await
                .context("starting the demo's local chain (anvil)")?,
        ),
        None => None,
    };
    let rate: f64 = config.drivers.sim.as_ref().map_or(0.0, |s| s.total_rate());
    println!("BIOTA Edge gateway demo");
    println!("  state directory  {}", dir.display());
    println!(
        "  simulated        {} devices, {:.0} samples/s configured",
        config.drivers.devices("drivers").len(),
        rate
    );
    if let Some(plc) = &plc {
        println!("  Modbus TCP       simulated PLC `plc-1` served at {plc}");
    }
    if let Some(broker) = mqtt {
        println!(
            "  MQTT             embedded broker at {broker}: boiler-1, meter-1 (JSON), env-1 (SenML) publish to it"
        );
    }
    if let Some(server) = coap {
        println!(
            "  CoAP             server at udp {server}: sensor coap-1 posts confirmable SenML packs"
        );
    }
    match &chain {
        Some(c) => println!(
            "  anchoring        local chain (anvil) at {}, contract {}: batches every 2 s",
            c.rpc, c.contract
        ),
        None => println!(
            "  anchoring        local hash chain only; for on-chain anchors install anvil \
             (`cd hil-tests && npm ci`, or set BIOTA_ANVIL_BIN) or configure [anchor.evm]"
        ),
    }
    println!(
        "  running for      {} (Ctrl-C stops)\n",
        format_duration(duration)
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let started = Instant::now();
    let paths = Paths {
        db: db.clone(),
        state_dir: dir.clone(),
        control_socket: Some(control::socket_path(&dir)),
    };
    let gateway = Gateway::start(&config, &paths, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(api) = gateway.api_address() {
        let token = auth::create(
            &config.token_path(&dir),
            "demo",
            &[Scope::Read, Scope::Write],
        )?;
        println!("  web console      http://{api}/   token (read + write): {token}");
        println!(
            "  API              curl -H 'Authorization: Bearer {token}' http://{api}/v1/latest"
        );
        println!(
            "                   (docs/api.md; the API stops with the demo: use --duration 10m to look around)\n"
        );
    }
    let ready_after = started.elapsed();
    if let Some(broker) = mqtt {
        mqtt_devices::start(broker, Duration::from_millis(200), shutdown.clone());
    }
    if let Some(server) = coap {
        coap_sensor::start(
            server,
            "coap-1",
            Duration::from_millis(500),
            shutdown.clone(),
        );
    }
    let control = gateway.control_socket().map(Path::to_owned);
    if plc.is_some() {
        // The PLC answers within a few milliseconds of the start.
        let stats = gateway.status().devices.clone();
        let online = || {
            stats
                .iter()
                .any(|s| &*s.device == "plc-1" && s.state() == DeviceState::Online)
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        while !online() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if let (Some(_), Some(socket)) = (&plc, &control) {
        println!(
            "Writing a setpoint through the control socket ({}):",
            socket.display()
        );
        println!(
            "  $ biota-gateway write --state-dir {} plc-1 speed_setpoint 12.5",
            dir.display()
        );
        let in_dir = dir.clone();
        tokio::task::spawn_blocking(move || write_in(&in_dir, "plc-1", "speed_setpoint", "12.5"))
            .await?;
        println!(
            "  (while the demo runs, try `biota-gateway devices --state-dir {}`)\n",
            dir.display()
        );
    }
    let metrics = gateway.metrics().clone();
    let live = tokio::spawn(show_live(metrics.clone(), shutdown.clone(), duration));
    let _ = live.await;
    if control.is_some() && !shutdown.is_cancelled() {
        println!("\nExample: biota-gateway devices   (transaction counters per device)");
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || devices_in(&dir)).await?;
    }
    shutdown.cancel();
    let report = gateway.stopped().await;
    let elapsed = started.elapsed();

    let s = metrics.snapshot();
    let db_size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!("\nSummary");
    println!("  ready after      {}", format_duration(ready_after));
    println!("  ran for          {}", format_duration(elapsed));
    println!(
        "  committed        {} readings in {} group commits ({:.0} readings/s)",
        thousands(s.committed),
        thousands(s.commits),
        s.committed as f64 / elapsed.as_secs_f64()
    );
    println!("  seq              1..={}", thousands(s.last_seq));
    println!(
        "  rejected         {}   deadband-filtered {}   uncommitted at exit {}",
        s.rejected, s.filtered, report.writer.lost
    );
    println!(
        "  database         {} ({} MB)",
        db.display(),
        db_size / 1_000_000
    );

    let reader = StoreReader::open(&db)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\nExample: biota-gateway query latest --device press-1"
    )?;
    print_readings(&mut out, &reader.latest(Some("press-1"))?)?;
    if plc.is_some() {
        writeln!(
            out,
            "\nExample: biota-gateway query latest --device plc-1   (over Modbus TCP)"
        )?;
        print_readings(&mut out, &reader.latest(Some("plc-1"))?)?;
    }
    let mut remote: Vec<(&str, &str)> = Vec::new();
    if mqtt.is_some() {
        remote.extend([("meter-1", "MQTT"), ("env-1", "MQTT")]);
    }
    if coap.is_some() {
        remote.push(("coap-1", "CoAP"));
    }
    for (device, via) in remote {
        writeln!(
            out,
            "\nExample: biota-gateway query latest --device {device}   (over {via})"
        )?;
        print_readings(&mut out, &reader.latest(Some(device))?)?;
    }
    let now = now_ns();
    writeln!(
        out,
        "\nExample: biota-gateway query aggregate --device press-1 --point oil_temperature --bucket 5s --from -30s"
    )?;
    let buckets = reader.aggregate(
        "press-1",
        "oil_temperature",
        now - 30_000_000_000,
        now,
        5_000_000_000,
    )?;
    let rows: Vec<Vec<String>> = buckets.iter().map(|b| bucket_cells(b).to_vec()).collect();
    write_table(&mut out, &BUCKET_COLUMNS, &rows)?;
    drop(out);
    super::demo_chain::show_proof(&db, chain.as_ref().map(|c| c.rpc.as_str())).await?;
    drop(chain);
    let mut out = std::io::stdout().lock();
    if args.state_dir.is_some() {
        writeln!(
            out,
            "\nThe data stays in {}; query it with\n  biota-gateway query --db {} latest",
            dir.display(),
            db.display()
        )?;
    }
    Ok(if report.writer.lost > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Readings as the gateway's `query` prints them.
fn print_readings(out: &mut impl Write, readings: &[Reading]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = readings.iter().map(|r| reading_cells(r).to_vec()).collect();
    write_table(out, &READING_COLUMNS, &rows)
}

/// `biota-gateway write` against the demo's state directory.
fn write_in(dir: &Path, device: &str, point: &str, value: &str) {
    let request = serde_json::json!({
        "op": "write", "device": device, "point": point, "value": value, "verify": false,
    });
    let answer = client::request(
        &control::socket_path(dir),
        &request,
        Duration::from_secs(40),
    );
    match answer
        .map_err(|e| e.to_string())
        .and_then(|a| client::body(&a, "write").map(client::write_summary))
    {
        Ok(line) => println!("  {line}"),
        Err(e) => eprintln!("  error: {e}"),
    }
}

/// `biota-gateway devices` against the demo's state directory.
fn devices_in(dir: &Path) {
    let request = serde_json::json!({ "op": "devices" });
    match client::request(
        &control::socket_path(dir),
        &request,
        Duration::from_secs(10),
    ) {
        Ok(answer) => print!("{}", client::devices_report(&answer)),
        Err(e) => eprintln!("  error: {e}"),
    }
}

/// Keeps the API's configured port if it is free, else takes a free one,
/// so a second demo (or anything on 8080) does not stop this one.
fn free_api_port(config: &mut GatewayConfig) -> anyhow::Result<()> {
    let Some(api) = &mut config.api else {
        return Ok(());
    };
    if std::net::TcpListener::bind(api.listen).is_err() {
        api.listen.set_port(0);
    }
    Ok(())
}

/// Moves the CoAP server (if configured) to a free local UDP port.
fn free_coap_port(config: &mut GatewayConfig) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(coap) = &mut config.drivers.coap else {
        return Ok(None);
    };
    let probe = std::net::UdpSocket::bind(("127.0.0.1", 0)).context("finding a free port")?;
    let address = probe.local_addr()?;
    coap.listen = vec![address];
    Ok(Some(address))
}

/// Moves the embedded MQTT broker (if configured) to a free local port, so
/// the demo never clashes with a broker already running here.
fn free_mqtt_port(config: &mut GatewayConfig) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(mqtt) = &mut config.drivers.mqtt else {
        return Ok(None);
    };
    let probe = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    mqtt.broker.listen = probe.local_addr()?;
    Ok(Some(mqtt.broker.listen))
}

/// If the configuration has the `demo-plc` register map, serves a
/// simulated PLC in-process and connects device `plc-1` to it.
fn connect_simulated_plc(
    config: &mut GatewayConfig,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(modbus) = config.drivers.modbus.as_mut() else {
        return Ok(None);
    };
    if !modbus.maps.contains_key("demo-plc") {
        return Ok(None);
    }
    let plc = SimulatedPlc::start(1..=1, 200).context("starting the simulated PLC")?;
    let connection: TcpConnectionConfig = toml::from_str(&format!(
        "address = \"{}\"\ndevices = [{{ id = \"plc-1\", unit = 1, map = \"demo-plc\", profile = \"demo-plc\" }}]",
        plc.address
    ))?;
    modbus.tcp.push(connection);
    Ok(Some(plc.address))
}

async fn show_live(metrics: Arc<Metrics>, shutdown: CancellationToken, duration: Duration) {
    let tty = std::io::stdout().is_terminal();
    let deadline = tokio::time::Instant::now() + duration;
    let mut earlier = metrics.snapshot();
    let mut earlier_devices: HashMap<Arc<str>, u64> = HashMap::new();
    let mut drawn = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = metrics.snapshot();
        let secs = now.at_ms.saturating_sub(earlier.at_ms).max(1) as f64 / 1000.0;
        let mut lines = vec![format!(
            "[{:>4}s] {}",
            now.at_ms / 1000,
            status_line(&now, &earlier)
        )];
        if tty {
            let devices = metrics.device_counts();
            for (device, total) in devices.iter().take(14) {
                let before = earlier_devices.get(device).copied().unwrap_or(0);
                lines.push(format!(
                    "        {device:<16} {:>9.0}/s  {:>13} total",
                    (total - before) as f64 / secs,
                    thousands(*total)
                ));
            }
            if devices.len() > 14 {
                lines.push(format!("        … and {} more devices", devices.len() - 14));
            }
            earlier_devices = devices.into_iter().collect();
        }
        let mut out = std::io::stdout().lock();
        if tty && drawn > 0 {
            // Redraw in place: up to the first line of the last frame.
            let _ = write!(out, "\x1b[{drawn}A");
        }
        for line in &lines {
            let _ = writeln!(out, "{}{line}", if tty { "\x1b[2K" } else { "" });
        }
        let _ = out.flush();
        drawn = lines.len();
        earlier = now;
    }
}
