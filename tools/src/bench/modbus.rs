//! Modbus TCP: a simulated PLC in-process, polled as fast as it answers.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use biota_common::time::{format_duration, parse_duration};
use biota_gateway::config::GatewayConfig;
use biota_gateway::{Gateway, Paths};
use tokio_util::sync::CancellationToken;

use super::support::cpu_seconds_of;

pub async fn modbus(dir: &Path, duration: &str, units: u8, registers: u16) -> anyhow::Result<()> {
    use biota_devkit::modbus_plc::SimulatedPlc;
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
    let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone()).await?;
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
