//! Simulated devices: points that follow waveforms (sine, ramp, random
//! walk, counter, boolean toggle) at rates from one per minute to hundreds
//! of thousands per second. The demo, the benchmarks and commissioning
//! dry-runs use it; it behaves like any other driver (same samples, same
//! channel, same backpressure).
//!
//! One task per device. Each task keeps its points in a heap ordered by
//! the next due sample time and, on each wake-up, emits every sample that
//! is due, with its scheduled time, in batches of at most `max_batch`.
//! When the pipeline applies backpressure the task falls behind its
//! schedule and catches up as fast as the pipeline accepts; it never
//! buffers more than one batch.

mod config;

pub use config::{SimConfig, SimDeviceConfig, SimPointConfig, Waveform};

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use biota_common::time::now_ns;
use crate::component::{BoxError, BuildContext, Component, DriverConfig};
use crate::{DeviceBinding, RawValue, Sample, SampleBatch, SampleQuality, SampleSink};
use config::copy_name;

/// Shortest sleep between wake-ups: high-rate points are emitted in
/// batches rather than one wake-up per sample.
const MIN_TICK: Duration = Duration::from_millis(2);

impl DriverConfig for SimConfig {
    fn devices(&self, path: &str) -> Vec<DeviceBinding> {
        self.device_bindings(path)
    }

    fn build(&self, context: BuildContext) -> Result<Component, BoxError> {
        let driver = SimDriver::new(self.clone(), context.sink);
        Ok(Component::task(driver.run(context.shutdown)))
    }
}

/// The simulated-devices driver: one task per device.
pub struct SimDriver {
    config: SimConfig,
    sink: SampleSink,
}

impl SimDriver {
    pub fn new(config: SimConfig, sink: SampleSink) -> Self {
        Self { config, sink }
    }

    /// Runs every simulated device until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let started = Instant::now();
        let started_wall = now_ns();
        for device in &self.config.devices {
            for c in 0..device.copies {
                let id = copy_name(&device.id, device.copies, c);
                let sim = SimDevice::new(
                    &id,
                    device,
                    self.config.seed,
                    self.config.max_batch,
                    started,
                    started_wall,
                );
                tracker.spawn(sim.run(self.sink.clone(), shutdown.clone()));
            }
        }
        tracker.close();
        tracker.wait().await;
    }
}

struct SimPoint {
    name: Arc<str>,
    waveform: Waveform,
    /// Seconds between samples.
    interval: f64,
    min: f64,
    max: f64,
    period: f64,
    step: f64,
    /// Number of the next sample; its time is `index * interval` after start.
    index: u64,
    state: PointState,
}

enum PointState {
    Walk { value: f64, rng: XorShift },
    Counter(u64),
    Toggle(bool),
    Stateless,
}

struct SimDevice {
    id: Arc<str>,
    source: Arc<str>,
    device_timestamps: bool,
    max_batch: usize,
    started: Instant,
    started_wall: i64,
    points: Vec<SimPoint>,
}

impl SimDevice {
    fn new(
        id: &str,
        config: &SimDeviceConfig,
        seed: u64,
        max_batch: usize,
        started: Instant,
        started_wall: i64,
    ) -> Self {
        let mut points = Vec::new();
        for point in &config.points {
            for c in 0..point.copies {
                let name = copy_name(&point.name, point.copies, c);
                let state = match point.waveform {
                    Waveform::RandomWalk => PointState::Walk {
                        value: (point.min + point.max) / 2.0,
                        rng: XorShift::new(seed ^ fnv1a(id) ^ fnv1a(&name).rotate_left(17)),
                    },
                    Waveform::Counter => PointState::Counter(0),
                    Waveform::Toggle => PointState::Toggle(false),
                    Waveform::Sine | Waveform::Ramp => PointState::Stateless,
                };
                points.push(SimPoint {
                    name: name.into(),
                    waveform: point.waveform,
                    interval: 1.0 / point.rate,
                    min: point.min,
                    max: point.max,
                    period: point.period,
                    step: point.step,
                    index: 0,
                    state,
                });
            }
        }
        Self {
            id: id.into(),
            source: format!("sim://{id}").into(),
            device_timestamps: config.device_timestamps,
            max_batch: max_batch.max(1),
            started,
            started_wall,
            points,
        }
    }

    async fn run(mut self, sink: SampleSink, shutdown: CancellationToken) {
        // Min-heap of (next due time in ns since start, point index).
        let mut due: BinaryHeap<Reverse<(u64, usize)>> =
            (0..self.points.len()).map(|i| Reverse((0, i))).collect();
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let Some(&Reverse((next_ns, _))) = due.peek() else {
                return;
            };
            let wake =
                (self.started + Duration::from_nanos(next_ns)).max(Instant::now() + MIN_TICK);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
            let now_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            while let Some(&Reverse((at, i))) = due.peek() {
                if at > now_ns {
                    break;
                }
                due.pop();
                batch.push(self.sample(i, at));
                let point = &mut self.points[i];
                point.index += 1;
                due.push(Reverse((point_time_ns(point), i)));
                if batch.len() >= self.max_batch && !self.flush(&sink, &mut batch, &shutdown).await
                {
                    return;
                }
            }
            if !batch.is_empty() && !self.flush(&sink, &mut batch, &shutdown).await {
                return;
            }
        }
    }

    /// Hands the batch to the pipeline; false once the gateway stops.
    async fn flush(
        &self,
        sink: &SampleSink,
        batch: &mut Vec<Sample>,
        shutdown: &CancellationToken,
    ) -> bool {
        let samples = std::mem::replace(batch, Vec::with_capacity(self.max_batch));
        let batch = SampleBatch {
            source: self.source.clone(),
            received_at: now_ns(),
            samples,
            profile: None,
            notice: None,
        };
        sink.send_unless(batch, shutdown).await
    }

    fn sample(&mut self, i: usize, at_ns: u64) -> Sample {
        let device_time = self
            .device_timestamps
            .then(|| self.started_wall.saturating_add(at_ns as i64));
        let point = &mut self.points[i];
        let t = at_ns as f64 / 1e9;
        let value = match (&mut point.state, point.waveform) {
            (PointState::Walk { value, rng }, _) => {
                let step = (rng.next_f64() * 2.0 - 1.0) * point.step;
                *value = (*value + step).clamp(point.min, point.max);
                RawValue::F64(*value)
            }
            (PointState::Counter(n), _) => {
                let v = *n;
                *n = n.wrapping_add(point.step as u64);
                RawValue::U64(v)
            }
            (PointState::Toggle(b), _) => {
                let v = *b;
                *b = !*b;
                RawValue::Bool(v)
            }
            (PointState::Stateless, Waveform::Ramp) => {
                let phase = (t / point.period).fract();
                RawValue::F64(point.min + (point.max - point.min) * phase)
            }
            (PointState::Stateless, _) => {
                let mid = (point.min + point.max) / 2.0;
                let amplitude = (point.max - point.min) / 2.0;
                RawValue::F64(mid + amplitude * (std::f64::consts::TAU * t / point.period).sin())
            }
        };
        Sample {
            device: self.id.clone(),
            point: point.name.clone(),
            value,
            device_time,
            quality: SampleQuality::Good,
            unit: None,
        }
    }
}

fn point_time_ns(point: &SimPoint) -> u64 {
    (point.index as f64 * point.interval * 1e9) as u64
}

/// xorshift64*: small, fast and good enough for a random walk.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DriversConfig, sample_channel};

    fn config(text: &str) -> DriversConfig {
        let config: DriversConfig = toml::from_str(text).expect("valid test config");
        let mut errors = Vec::new();
        config.validate("", &mut errors);
        assert_eq!(errors, [], "valid test config");
        config
    }

    async fn collect(config: DriversConfig, millis: u64) -> Vec<Sample> {
        let (sink, mut source) = sample_channel(64);
        let shutdown = CancellationToken::new();
        let driver = SimDriver::new(config.sim.expect("sim section"), sink);
        let task = tokio::spawn(driver.run(shutdown.clone()));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            stop.cancel();
        });
        let mut out = Vec::new();
        while let Some(batch) = source.recv().await {
            out.extend(batch.samples);
        }
        task.await.expect("driver task");
        out
    }

    #[tokio::test]
    async fn every_waveform_produces_its_type_and_range() {
        let config = config(
            r#"
            [[sim.devices]]
            id = "d"
            device_timestamps = true
            points = [
              { name = "s", waveform = "sine", rate = 200, min = -5, max = 5, period = 0.1 },
              { name = "r", waveform = "ramp", rate = 200, min = 10, max = 20, period = 0.1 },
              { name = "w", waveform = "random_walk", rate = 200, min = 0, max = 1, step = 0.5 },
              { name = "c", waveform = "counter", rate = 200, step = 3 },
              { name = "t", waveform = "toggle", rate = 200 },
            ]
            "#,
        );
        let samples = collect(config, 300).await;
        fn of<'a>(samples: &'a [Sample], name: &'a str) -> impl Iterator<Item = &'a Sample> {
            samples.iter().filter(move |s| &*s.point == name)
        }
        for s in of(&samples, "s") {
            let RawValue::F64(v) = s.value else {
                panic!("sine is f64")
            };
            assert!((-5.0..=5.0).contains(&v), "{v}");
        }
        for s in of(&samples, "r") {
            let RawValue::F64(v) = s.value else {
                panic!("ramp is f64")
            };
            assert!((10.0..20.0).contains(&v), "{v}");
        }
        for s in of(&samples, "w") {
            let RawValue::F64(v) = s.value else {
                panic!("walk is f64")
            };
            assert!((0.0..=1.0).contains(&v), "{v}");
        }
        let counter: Vec<_> = of(&samples, "c").map(|s| s.value.clone()).collect();
        assert!(counter.len() > 10, "got {} counter samples", counter.len());
        for (i, v) in counter.iter().enumerate() {
            assert_eq!(*v, RawValue::U64(3 * i as u64));
        }
        let toggles: Vec<_> = of(&samples, "t").map(|s| s.value.clone()).collect();
        for pair in toggles.windows(2) {
            assert_ne!(pair[0], pair[1]);
        }
        // Device timestamps are the schedule: 5 ms apart at 200/s.
        let times: Vec<i64> = of(&samples, "c")
            .map(|s| s.device_time.expect("timestamp"))
            .collect();
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], 5_000_000);
        }
    }

    #[tokio::test]
    async fn rate_is_kept_and_copies_multiply_series() {
        let config = config(
            r#"
            [[sim.devices]]
            id = "line"
            copies = 3
            points = [{ name = "p", copies = 4, waveform = "counter", rate = 100 }]
            "#,
        );
        let samples = collect(config, 500).await;
        let series: std::collections::HashSet<_> = samples
            .iter()
            .map(|s| (s.device.to_string(), s.point.to_string()))
            .collect();
        assert_eq!(series.len(), 12);
        assert!(series.contains(&("line-3".into(), "p-4".into())));
        // 12 series × 100/s × 0.5 s = 600, first sample at t=0.
        assert!(
            (560..=680).contains(&samples.len()),
            "got {} samples",
            samples.len()
        );
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let config: DriversConfig = toml::from_str(
            r#"
            [[sim.devices]]
            id = "a"
            points = [
              { name = "x", waveform = "sine", rate = 0 },
              { name = "x", waveform = "sine", min = 5, max = 1 },
              { name = "c", waveform = "counter", step = 0.5 },
            ]
            [[sim.devices]]
            id = "a"
            points = []
            "#,
        )
        .expect("parses");
        let mut errors = Vec::new();
        config.validate("", &mut errors);
        let paths: Vec<_> = errors.iter().map(|e| e.key_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sim.devices[0].points[0].rate",
                "sim.devices[0].points[1].name",
                "sim.devices[0].points[1].max",
                "sim.devices[0].points[2].step",
                "sim.devices[1].id",
                "sim.devices[1].points",
            ]
        );
    }
}
