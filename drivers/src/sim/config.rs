//! Configuration of simulated devices (`[sim]` in the gateway's TOML file).

use std::collections::HashSet;

use serde::Deserialize;

use biota_common::config::{ConfigError, Validate};

use crate::DeviceBinding;

/// Highest rate one simulated point may have, in samples per second.
pub const MAX_POINT_RATE: f64 = 2_000_000.0;
/// Most copies of one device or one point.
pub const MAX_COPIES: u32 = 100_000;
/// Most simulated series (devices × points) in all.
pub const MAX_SERIES: u64 = 1_000_000;
/// Most samples per second offered by all simulated points together.
pub const MAX_TOTAL_RATE: f64 = 20_000_000.0;

/// `[sim]`: devices whose points follow waveforms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Samples per batch handed to the pipeline at most. Default: 1024.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Seed of the random walks; the same seed gives the same values.
    /// Default: 1.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The simulated devices (`[[sim.devices]]`). Default: none.
    #[serde(default)]
    pub devices: Vec<SimDeviceConfig>,
}

/// `[[sim.devices]]`: one simulated device, or `copies` identical ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDeviceConfig {
    /// Device id. With `copies > 1` the devices are `<id>-1` … `<id>-N`.
    pub id: String,
    /// How many identical devices this entry makes. Default: 1.
    #[serde(default = "one")]
    pub copies: u32,
    /// Device profile (a `[profiles.<name>]` table) that normalizes this
    /// device's samples. Default: none (samples pass through as they are).
    #[serde(default)]
    pub profile: Option<String>,
    /// Whether samples carry the device's own timestamp (the scheduled
    /// sample time), like a device with a clock. Default: false.
    #[serde(default)]
    pub device_timestamps: bool,
    /// The device's points (`[[sim.devices.points]]`).
    pub points: Vec<SimPointConfig>,
}

/// `[[sim.devices.points]]`: one point, or `copies` identical ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimPointConfig {
    /// Point name. With `copies > 1` the points are `<name>-1` … `<name>-N`.
    pub name: String,
    /// How many identical points this entry makes. Default: 1.
    #[serde(default = "one")]
    pub copies: u32,
    /// `sine`, `ramp`, `random_walk`, `counter` or `toggle`.
    pub waveform: Waveform,
    /// Samples per second, from 1/min (0.0166…) to 2,000,000. Default: 1.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Lowest value of sine, ramp and random walk. Default: 0.
    #[serde(default)]
    pub min: f64,
    /// Highest value of sine, ramp and random walk. Default: 100.
    #[serde(default = "default_max")]
    pub max: f64,
    /// Period of sine and ramp, in seconds. Default: 60.
    #[serde(default = "default_period")]
    pub period: f64,
    /// Largest random-walk step, or the counter's increment (a whole
    /// number). Default: 1.
    #[serde(default = "default_step")]
    pub step: f64,
}

/// The shape a simulated point's values follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Waveform {
    /// `min..max` sine with `period` (f64).
    Sine,
    /// Sawtooth from `min` to `max` over `period` (f64).
    Ramp,
    /// Random steps of at most `step`, kept within `min..max` (f64).
    RandomWalk,
    /// Increments by `step` each sample (u64, wraps).
    Counter,
    /// Flips each sample (bool).
    Toggle,
}

fn default_max_batch() -> usize {
    1024
}
fn default_seed() -> u64 {
    1
}
fn one() -> u32 {
    1
}
fn default_rate() -> f64 {
    1.0
}
fn default_max() -> f64 {
    100.0
}
fn default_period() -> f64 {
    60.0
}
fn default_step() -> f64 {
    1.0
}

/// `name` for one copy, `name-i` (1-based) for several.
pub(crate) fn copy_name(name: &str, copies: u32, index: u32) -> String {
    if copies <= 1 {
        name.to_owned()
    } else {
        format!("{name}-{}", index + 1)
    }
}

impl Validate for SimConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err =
            |key_path: String, reason: String| errors.push(ConfigError { key_path, reason });
        if self.max_batch == 0 || self.max_batch > 65_536 {
            err(
                format!("{path}.max_batch"),
                format!("must be 1..=65536, got {}", self.max_batch),
            );
        }
        let series: u64 = self
            .devices
            .iter()
            .map(|d| {
                u64::from(d.copies) * d.points.iter().map(|p| u64::from(p.copies)).sum::<u64>()
            })
            .sum();
        if series > MAX_SERIES {
            err(
                format!("{path}.devices"),
                format!(
                    "{series} simulated series in all (devices × points × copies); at most {MAX_SERIES}"
                ),
            );
        }
        let rate = self.total_rate();
        if rate > MAX_TOTAL_RATE {
            err(
                format!("{path}.devices"),
                format!("{rate:.0} samples/s in all; at most {MAX_TOTAL_RATE:.0}"),
            );
        }
        let mut device_ids = HashSet::new();
        for (d, device) in self.devices.iter().enumerate() {
            let dpath = format!("{path}.devices[{d}]");
            if device.id.is_empty() {
                err(format!("{dpath}.id"), "must not be empty".into());
            }
            if device.copies == 0 || device.copies > MAX_COPIES {
                err(
                    format!("{dpath}.copies"),
                    format!("must be 1..={MAX_COPIES}, got {}", device.copies),
                );
                continue;
            }
            for c in 0..device.copies {
                let id = copy_name(&device.id, device.copies, c);
                if !device_ids.insert(id.clone()) {
                    err(
                        format!("{dpath}.id"),
                        format!("device id `{id}` is defined twice"),
                    );
                    break;
                }
            }
            if device.points.is_empty() {
                err(
                    format!("{dpath}.points"),
                    "a device needs at least one point".into(),
                );
            }
            let mut names = HashSet::new();
            for (p, point) in device.points.iter().enumerate() {
                let ppath = format!("{dpath}.points[{p}]");
                if point.name.is_empty() {
                    err(format!("{ppath}.name"), "must not be empty".into());
                }
                if point.copies == 0 || point.copies > MAX_COPIES {
                    err(
                        format!("{ppath}.copies"),
                        format!("must be 1..={MAX_COPIES}, got {}", point.copies),
                    );
                    continue;
                }
                for c in 0..point.copies {
                    let name = copy_name(&point.name, point.copies, c);
                    if !names.insert(name.clone()) {
                        err(
                            format!("{ppath}.name"),
                            format!("point `{name}` is defined twice in device `{}`", device.id),
                        );
                        break;
                    }
                }
                if !(point.rate.is_finite() && point.rate > 0.0 && point.rate <= MAX_POINT_RATE) {
                    err(
                        format!("{ppath}.rate"),
                        format!(
                            "samples per second must be > 0 and <= {MAX_POINT_RATE}, got {}",
                            point.rate
                        ),
                    );
                }
                if !(point.min.is_finite() && point.max.is_finite() && point.min < point.max) {
                    err(
                        format!("{ppath}.max"),
                        format!(
                            "min ({}) must be below max ({}), both finite",
                            point.min, point.max
                        ),
                    );
                }
                if !(point.period.is_finite() && point.period > 0.0) {
                    err(
                        format!("{ppath}.period"),
                        format!("must be a positive number of seconds, got {}", point.period),
                    );
                }
                let step_ok = match point.waveform {
                    Waveform::Counter => {
                        point.step >= 1.0 && point.step.fract() == 0.0 && point.step <= 1e15
                    }
                    _ => point.step.is_finite() && point.step > 0.0,
                };
                if !step_ok {
                    err(
                        format!("{ppath}.step"),
                        format!(
                            "must be positive (a whole number for a counter), got {}",
                            point.step
                        ),
                    );
                }
            }
        }
    }
}

impl SimConfig {
    /// Every device (copies included) with its profile and key path.
    pub(crate) fn device_bindings(&self, path: &str) -> Vec<DeviceBinding> {
        let mut out = Vec::new();
        for (d, device) in self.devices.iter().enumerate() {
            for c in 0..device.copies.min(MAX_COPIES) {
                out.push(DeviceBinding {
                    device: copy_name(&device.id, device.copies, c),
                    profile: device.profile.clone(),
                    key_path: format!("{path}.devices[{d}]"),
                });
            }
        }
        out
    }

    /// Total configured samples per second over all devices and points.
    pub fn total_rate(&self) -> f64 {
        self.devices
            .iter()
            .map(|d| {
                f64::from(d.copies)
                    * d.points
                        .iter()
                        .map(|p| p.rate * f64::from(p.copies))
                        .sum::<f64>()
            })
            .sum()
    }
}
