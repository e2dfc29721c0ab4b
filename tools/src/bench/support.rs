//! What every benchmark run shares: the sim configuration of a load, CPU
//! time per thread, resident memory, file sizes and the machine's name.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use biota_gateway::config::GatewayConfig;

/// A sim config: `series` counters (devices of 100 points) at `rate` in total.
pub fn sim_config(series: u32, total_rate: f64, extra: &str) -> anyhow::Result<GatewayConfig> {
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

/// (result of the last run, median, max) over `runs` runs.
pub fn time_it<T>(
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

/// (CPU seconds of the whole process, CPU seconds of the threads named `thread`).
pub fn cpu_seconds_of(thread: &str) -> (f64, f64) {
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

pub fn rss_kib() -> u64 {
    biota_gateway::metrics::rss_bytes() / 1024
}

pub fn file_mb(path: &Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0)
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn cpu_model() -> String {
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
