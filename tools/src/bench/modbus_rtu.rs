//! Modbus RTU: the service binary polling slaves on a modelled serial line.
//!
//! The gateway opens one end of a pseudo-terminal pair as its bus; this
//! run holds the other end and models what hangs on a real line there: a
//! half-duplex wire at `--baud` (11 bits a character, as 8E1 or 8N2) and
//! slaves that read two holding registers. A frame reaches the other side
//! only when its last character would have, the line carries one frame at
//! a time (a request sent while an answer is still on the wire is counted
//! as a collision), and a slave answers 3.5 characters after the request
//! ended. Two healthy slaves are polled as fast as the gateway can (an
//! interval of 1 ms keeps a poll always due), in three scenarios:
//!
//! - `clean`: nothing else on the bus;
//! - `silent`: a third slave configured but not answering;
//! - `corrupt`: the silent slave, and 5% of all answers with a byte
//!   flipped (a seeded draw, so every run sees the same answers hit).
//!
//! The figure is the healthy slaves' valid answers per second, as a
//! fraction of what the line allows: one transaction costs the request's
//! and the answer's characters plus two 3.5-character silences (the
//! slave's before it answers, the master's before its next request).

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use biota_common::time::format_duration;
use biota_drivers::modbus::rtu::frame::{FrameLen, crc_ok, push_crc, request_len};

use super::support::{RunningGateway, cpu_seconds_of_process, gateway_binary};

/// Bits of one character on the modelled line (start, 8 data, parity or a
/// second stop bit, stop).
const CHAR_BITS: u32 = 11;
/// Registers each poll reads (a 5 + 2 × 2 = 9-byte answer).
const REGISTERS: u16 = 2;
/// Bytes of the request (address, function, start, count, CRC) and the answer.
const REQUEST_BYTES: u32 = 8;
const ANSWER_BYTES: u32 = 5 + 2 * REGISTERS as u32;
/// Healthy slaves, and the silent one of the `silent` and `corrupt` runs.
const HEALTHY: [u8; 2] = [1, 2];
const SILENT: u8 = 3;
/// Share of answers corrupted in the `corrupt` run.
const CORRUPT_RATE: f64 = 0.05;
/// Time for the gateway to settle (its first polls, the silent slave's
/// first timeouts) before the window.
const WARM_UP: Duration = Duration::from_secs(3);

/// One run's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Clean,
    Silent,
    Corrupt,
}

impl Scenario {
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name.trim() {
            "clean" => Self::Clean,
            "silent" => Self::Silent,
            "corrupt" => Self::Corrupt,
            other => bail!("unknown scenario `{other}` (clean, silent, corrupt)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Silent => "silent slave",
            Self::Corrupt => "silent + 5% corrupt",
        }
    }
}

pub fn modbus_rtu(
    dir: &Path,
    duration: Duration,
    baud: u32,
    scenarios: &[Scenario],
) -> anyhow::Result<()> {
    if duration < Duration::from_secs(1) || !(300..=115_200).contains(&baud) {
        bail!("--duration must be at least 1s and --baud 300..=115200");
    }
    let exe = gateway_binary()?;
    let line = Timing::new(baud);
    let best = line.transaction(REQUEST_BYTES, ANSWER_BYTES);
    println!(
        "\n## modbus-rtu: {} healthy slaves on a modelled {baud}-baud line over a pty pair ({CHAR_BITS} bits a character), {REGISTERS} registers a poll, polled as fast as the gateway can, {} windows; gateway {}",
        HEALTHY.len(),
        format_duration(duration),
        exe.display()
    );
    println!(
        "line limit: one transaction {:.2} ms ({REQUEST_BYTES} + {ANSWER_BYTES} bytes and two 3.5-character silences) = {:.1} polls/s",
        best.as_secs_f64() * 1e3,
        1.0 / best.as_secs_f64()
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>6} {:>8} {:>8} {:>6}   gateway counters (healthy / silent)",
        "scenario",
        "polls/s",
        "of limit",
        "gap p50",
        "gap p99",
        "coll.",
        "corrupt",
        "silent",
        "CPU"
    );
    for &scenario in scenarios {
        let run_dir = dir.join(format!("modbus-rtu-{scenario:?}").to_lowercase());
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)?;
        let result = run(&exe, &run_dir, line, scenario, duration)?;
        let rate = result.good as f64 / result.window.as_secs_f64();
        println!(
            "{:<22} {:>9.1} {:>9.3} {:>7.2}ms {:>7.2}ms {:>6} {:>8} {:>8} {:>5.0}%   {}",
            scenario.name(),
            rate,
            rate * best.as_secs_f64(),
            result.gap_p50.as_secs_f64() * 1e3,
            result.gap_p99.as_secs_f64() * 1e3,
            result.collisions,
            result.corrupted,
            result.silent_requests,
            100.0 * result.cpu_seconds / result.window.as_secs_f64(),
            result.counters
        );
    }
    println!(
        "(polls/s: valid answers of the healthy slaves per second; of limit: that times one transaction; gap: from an answer's last character to the next request; coll.: requests sent while an answer was on the line; CPU: the gateway's, of one core)"
    );
    Ok(())
}

/// What one window measured.
struct Measured {
    window: Duration,
    /// Valid answers of the healthy slaves handed to the gateway.
    good: u64,
    corrupted: u64,
    collisions: u64,
    silent_requests: u64,
    gap_p50: Duration,
    gap_p99: Duration,
    cpu_seconds: f64,
    /// The gateway's own counters over the window, as text.
    counters: String,
}

fn run(
    exe: &Path,
    dir: &Path,
    line: Timing,
    scenario: Scenario,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let pty = Pty::open()?;
    let silent = scenario != Scenario::Clean;
    let corrupt_rate = if scenario == Scenario::Corrupt {
        CORRUPT_RATE
    } else {
        0.0
    };
    let model = Model::start(pty.master, line, corrupt_rate)?;
    let mut devices: Vec<String> = HEALTHY
        .iter()
        .map(|u| format!("{{ id = \"slave-{u}\", unit = {u}, map = \"meter\" }}"))
        .collect();
    if silent {
        devices.push(format!(
            "{{ id = \"slave-{SILENT}\", unit = {SILENT}, map = \"meter\" }}"
        ));
    }
    let points: Vec<String> = (0..REGISTERS)
        .map(|a| {
            format!(
                "{{ name = \"r{a}\", area = \"holding_register\", address = {a}, type = \"u16\" }}"
            )
        })
        .collect();
    // The defaults of a bus (timeout 200ms, backoff 5s, retries) except
    // what a pty needs: no parity (it refuses even parity), two stop bits
    // (so a character is 11 bits, as with 8E1).
    let config = format!(
        "[store]\npath = \"rtu.db\"\n[store.retention]\nmax_size = \"off\"\n\
         [[drivers.modbus.rtu]]\npath = \"{}\"\nbaud = {}\nparity = \"none\"\nstop_bits = 2\ndevices = [{}]\n\
         [drivers.modbus.maps.meter]\n[[drivers.modbus.maps.meter.groups]]\nname = \"fast\"\ninterval = \"1ms\"\npoints = [{}]\n",
        pty.slave_path.display(),
        line.baud,
        devices.join(", "),
        points.join(", ")
    );
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, config)?;
    let gateway = RunningGateway::start(exe, &config_path, dir, "warn")?;
    std::thread::sleep(WARM_UP);
    let (from, cpu_from) = (Instant::now(), cpu_seconds_of_process(gateway.pid()));
    let before = device_counters(exe, dir)?;
    std::thread::sleep(duration);
    let (to, cpu_to) = (Instant::now(), cpu_seconds_of_process(gateway.pid()));
    let after = device_counters(exe, dir)?;
    gateway.stop()?;
    let events = model.stop();
    let in_window = |t: Instant| from <= t && t < to;
    let mut measured = Measured {
        window: to - from,
        good: 0,
        corrupted: 0,
        collisions: 0,
        silent_requests: 0,
        gap_p50: Duration::ZERO,
        gap_p99: Duration::ZERO,
        cpu_seconds: cpu_to - cpu_from,
        counters: counters_text(&before, &after, silent),
    };
    let mut gaps = Vec::new();
    let mut last_answer: Option<Instant> = None;
    for event in events.iter().filter(|e| in_window(e.at)) {
        match event.kind {
            EventKind::Request { unit, collision } => {
                measured.collisions += u64::from(collision);
                measured.silent_requests += u64::from(unit == SILENT);
                if let Some(answered) = last_answer.take() {
                    gaps.push(event.at - answered);
                }
            }
            EventKind::Answer { corrupted, .. } => {
                if corrupted {
                    measured.corrupted += 1;
                } else {
                    measured.good += 1;
                }
                last_answer = Some(event.at);
            }
        }
    }
    gaps.sort();
    let quantile = |q: f64| {
        gaps.get(((gaps.len() as f64 * q) as usize).min(gaps.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (measured.gap_p50, measured.gap_p99) = (quantile(0.5), quantile(0.99));
    Ok(measured)
}

/// `biota-gateway devices --json`: each device's counters by id.
fn device_counters(exe: &Path, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let output = std::process::Command::new(exe)
        .args(["devices", "--json", "--state-dir"])
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "biota-gateway devices failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The counters' growth over the window, healthy slaves summed, then the
/// silent one's: `timeouts/crc_errors/late_answers/link_errors`.
fn counters_text(before: &serde_json::Value, after: &serde_json::Value, silent: bool) -> String {
    let get = |all: &serde_json::Value, unit: u8, key: &str| -> Option<u64> {
        all["devices"]
            .as_array()?
            .iter()
            .find(|d| d["device"] == format!("slave-{unit}").as_str())?
            .get(key)?
            .as_u64()
    };
    let keys = ["timeouts", "crc_errors", "late_answers", "link_errors"];
    let growth = |units: &[u8]| -> String {
        let values: Vec<String> = keys
            .iter()
            .map(|key| {
                let grown: Option<u64> = units.iter().try_fold(0, |sum, &u| {
                    Some(sum + get(after, u, key)?.saturating_sub(get(before, u, key)?))
                });
                // An older gateway without the counter: "-".
                grown.map_or_else(|| "-".into(), |n| n.to_string())
            })
            .collect();
        values.join("/")
    };
    let mut text = format!("timeouts/crc/late/link {}", growth(&HEALTHY));
    if silent {
        text.push_str(&format!(" / {}", growth(&[SILENT])));
    }
    text
}

/// The modelled line's timing.
#[derive(Debug, Clone, Copy)]
struct Timing {
    baud: u32,
    char_time: Duration,
    /// 3.5 characters, 1.75 ms above 19,200 baud.
    frame_gap: Duration,
}

impl Timing {
    fn new(baud: u32) -> Self {
        let char_time = Duration::from_secs_f64(f64::from(CHAR_BITS) / f64::from(baud));
        let frame_gap = if baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            char_time.mul_f64(3.5)
        };
        Self {
            baud,
            char_time,
            frame_gap,
        }
    }

    fn on_wire(&self, bytes: u32) -> Duration {
        self.char_time * bytes
    }

    /// The shortest transaction: both frames and two silences.
    fn transaction(&self, request: u32, answer: u32) -> Duration {
        self.on_wire(request + answer) + 2 * self.frame_gap
    }
}

/// A pseudo-terminal pair: the gateway opens `slave_path`; the model
/// holds `master`.
struct Pty {
    master: OwnedFd,
    /// Kept open so the master never reads EIO while the gateway has its
    /// end closed (before it opens it, or while it reopens it).
    _slave: OwnedFd,
    slave_path: PathBuf,
}

impl Pty {
    fn open() -> anyhow::Result<Self> {
        let last_error = || std::io::Error::last_os_error();
        // SAFETY: plain libc calls on a descriptor we own; the buffer of
        // ptsname_r is ours and its length is passed.
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(last_error()).context("posix_openpt");
            }
            let master = OwnedFd::from_raw_fd(fd);
            // Never block on a gateway that stopped reading.
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
                return Err(last_error()).context("O_NONBLOCK");
            }
            if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
                return Err(last_error()).context("grantpt/unlockpt");
            }
            let mut name = [0 as libc::c_char; 128];
            if libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) != 0 {
                return Err(last_error()).context("ptsname_r");
            }
            let slave_path = PathBuf::from(
                std::ffi::CStr::from_ptr(name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
            );
            let sfd = libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if sfd < 0 {
                return Err(last_error()).context("opening the pty's slave end");
            }
            let slave = OwnedFd::from_raw_fd(sfd);
            // Raw from the start: no echo, no line editing of the bytes.
            let mut termios: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(sfd, &mut termios) == 0 {
                libc::cfmakeraw(&mut termios);
                libc::tcsetattr(sfd, libc::TCSANOW, &termios);
            }
            Ok(Self {
                master,
                _slave: slave,
                slave_path,
            })
        }
    }
}

/// What happened on the line, when.
#[derive(Debug, Clone, Copy)]
struct Event {
    at: Instant,
    kind: EventKind,
}

#[derive(Debug, Clone, Copy)]
enum EventKind {
    /// A request came in whole; `collision` if an answer was on the line.
    Request { unit: u8, collision: bool },
    /// An answer was handed to the gateway (its last character arrived).
    Answer { corrupted: bool },
}

/// The line and its slaves, on their own thread.
struct Model {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Model {
    fn start(master: OwnedFd, timing: Timing, corrupt_rate: f64) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (stop.clone(), events.clone());
        let thread = std::thread::Builder::new()
            .name("rtu-line".into())
            .spawn(move || line(master, timing, corrupt_rate, &s, &e))?;
        Ok(Self {
            stop,
            events,
            thread,
        })
    }

    fn stop(self) -> Vec<Event> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The line's loop: requests in, answers out at their modelled times.
fn line(
    master: OwnedFd,
    timing: Timing,
    corrupt_rate: f64,
    stop: &AtomicBool,
    events: &Mutex<Vec<Event>>,
) {
    let fd = master.as_raw_fd();
    let mut port = std::fs::File::from(master);
    let mut input: Vec<u8> = Vec::new();
    // Answers on their way: (when the last character arrives, corrupted, bytes).
    let mut on_line: VecDeque<(Instant, bool, Vec<u8>)> = VecDeque::new();
    let mut line_free = Instant::now();
    let mut draw = Draw(0x2545_F491_4F6C_DD1D);
    let log = |kind| {
        let event = Event {
            at: Instant::now(),
            kind,
        };
        events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = on_line
            .front()
            .map_or(Duration::from_millis(50), |(at, ..)| {
                at.saturating_duration_since(now)
            })
            .min(Duration::from_millis(50));
        if readable(fd, wait) {
            let mut chunk = [0u8; 512];
            // SAFETY: reading into our own buffer from a descriptor we own.
            let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
            if n > 0 {
                input.extend_from_slice(&chunk[..n as usize]);
            }
        }
        // Whole requests: each takes the line for its characters; the slave
        // answers 3.5 characters after it ended.
        loop {
            let n = match request_len(&input) {
                FrameLen::Known(n) if input.len() >= n => n,
                FrameLen::Known(_) | FrameLen::NeedMore => break,
                FrameLen::Unknown => {
                    input.clear();
                    break;
                }
            };
            let request: Vec<u8> = input.drain(..n).collect();
            if !crc_ok(&request) {
                continue;
            }
            let now = Instant::now();
            let (unit, function) = (request[0], request[1]);
            let collision = now < line_free;
            log(EventKind::Request { unit, collision });
            let ended = now.max(line_free) + timing.on_wire(n as u32);
            line_free = ended;
            if unit == SILENT || !HEALTHY.contains(&unit) || function != 3 {
                continue;
            }
            let start = u16::from_be_bytes([request[2], request[3]]);
            let count = u16::from_be_bytes([request[4], request[5]]).min(125);
            let mut answer = vec![unit, 3, (2 * count) as u8];
            for a in start..start.saturating_add(count) {
                answer.extend((u16::from(unit) * 100 + a).to_be_bytes());
            }
            push_crc(&mut answer);
            let corrupted = corrupt_rate > 0.0 && draw.next() < corrupt_rate;
            if corrupted {
                answer[3] ^= 0x5A;
            }
            let arrives = ended + timing.frame_gap + timing.on_wire(answer.len() as u32);
            line_free = arrives;
            on_line.push_back((arrives, corrupted, answer));
        }
        let now = Instant::now();
        while on_line.front().is_some_and(|(at, ..)| *at <= now) {
            if let Some((_, corrupted, bytes)) = on_line.pop_front() {
                // The gateway may have its end closed (reopening): lost, as on a wire.
                let _ = port.write_all(&bytes);
                log(EventKind::Answer { corrupted });
            }
        }
    }
}

/// Whether `fd` has input within `wait` (nanosecond timeouts: ppoll).
fn readable(fd: i32, wait: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
    };
    // SAFETY: one pollfd of ours, a timespec of ours, no signal mask.
    let ready = unsafe { libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null()) };
    ready > 0 && pollfd.revents & libc::POLLIN != 0
}

/// A seeded draw in [0, 1) (xorshift), so every run corrupts the same answers.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
