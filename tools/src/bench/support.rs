//! What every benchmark run shares: the sim configuration of a load, CPU
//! time per thread, resident memory, file sizes, the machine's name, and
//! the service binary started as systemd starts it.

use std::path::{Path, PathBuf};
use std::process::Child;
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
    let ticks = |stat: &str| stat_ticks(stat) / 100.0;
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

/// utime + stime of a `/proc/.../stat` line, in clock ticks (100 Hz on
/// Linux): fields 14 and 15.
fn stat_ticks(stat: &str) -> f64 {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the ")", field 3 of the man page is index 0: utime is 14 -> 11, stime 15 -> 12.
    field(11) + field(12)
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

/// The service binary: `$BIOTA_GATEWAY_BIN`, else `biota-gateway` beside
/// this one (cargo builds both into the same directory).
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BIOTA_GATEWAY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let beside = std::env::current_exe()?.with_file_name("biota-gateway");
    anyhow::ensure!(
        beside.is_file(),
        "no biota-gateway beside this binary ({}): build it (cargo build --release -p biota-gateway) or set BIOTA_GATEWAY_BIN",
        beside.display()
    );
    Ok(beside)
}

/// `biota-gateway run` as a child process, started as systemd starts it
/// (with a notify socket of ours) and stopped with SIGTERM.
pub struct RunningGateway {
    child: Child,
    /// From the spawn to READY=1.
    pub ready_after: Duration,
}

impl RunningGateway {
    /// Spawns `run` with `config` and `dir` as its state directory, logging
    /// at `log` into `dir/gateway.log`, and waits for READY=1.
    pub fn start(exe: &Path, config: &Path, dir: &Path, log: &str) -> anyhow::Result<Self> {
        use std::os::unix::net::UnixDatagram;
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path)?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        let log_path = dir.join("gateway.log");
        let started = Instant::now();
        let child = std::process::Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(dir)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("BIOTA_LOG", log)
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?;
        let mut gateway = Self {
            child,
            ready_after: Duration::ZERO,
        };
        let mut buf = [0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n)
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "READY=1") =>
                {
                    gateway.ready_after = started.elapsed();
                    // Take its later notifications (STATUS, WATCHDOG) as
                    // systemd would, until it has been quiet for 30 s.
                    std::thread::spawn(move || while socket.recv(&mut buf).is_ok() {});
                    return Ok(gateway);
                }
                Ok(_) => continue,
                // Dropping `gateway` kills it.
                Err(e) => bail!(
                    "no READY=1 within 30 s ({e}); its log: {}",
                    log_path.display()
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it as systemd does (SIGTERM) and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid, which it keeps until waited for.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            self.child.kill()?;
        }
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        // Not stopped (an error on the way): do not leave it running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds process `pid` has used so far.
pub fn cpu_seconds_of_process(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| stat_ticks(&s) / 100.0)
        .unwrap_or(0.0)
}
