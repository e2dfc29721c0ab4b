//! The one command path into devices: every write — from the CLI (over
//! the control socket), the API or a contract — goes through
//! [`CommandBus::write`].
//!
//! The bus speaks CDM names: it maps a point's CDM name back to the
//! driver's raw name through the device's profile, undoes the profile's
//! scale and offset, and hands the raw value to the driver that owns the
//! device ([`biota_drivers::command`]). The driver checks the point is
//! writable, encodes it with the point's type and order, writes it
//! between polls and optionally reads it back.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use std::collections::BTreeMap;

use biota_drivers::command::{self, CommandSender, Sent, WriteError, WriteReport};
use biota_drivers::{DeviceBinding, RawValue};
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::normalize::config::{ProfileConfig, Unmapped};

/// How long a caller waits for a driver's answer: the link may be in the
/// middle of a poll cycle of many slaves.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A point's profile mapping, seen from the CDM side.
#[derive(Debug, Clone)]
struct Mapping {
    raw: String,
    scale: f64,
    offset: f64,
}

#[derive(Debug)]
struct Target {
    sender: Option<CommandSender>,
    /// CDM point name → raw name and scaling, for points the profile maps.
    points: HashMap<String, Mapping>,
    /// Raw names the profile renames: not CDM names, so not writable by
    /// them (that would skip the profile's scaling).
    renamed: rustc_hash::FxHashSet<String>,
    /// The profile drops unmapped points: only mapped ones exist.
    only_mapped: bool,
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("no device {device} is configured")]
    UnknownDevice { device: String },
    #[error("device {device} is served by a driver that does not take writes")]
    ReadOnlyDevice { device: String },
    #[error("cannot write {value:?} to {point}: {why}")]
    BadValue {
        point: String,
        value: String,
        why: String,
    },
    #[error("the driver of {device} did not answer within {ANSWER_TIMEOUT:?}")]
    NoAnswer { device: String },
    #[error(transparent)]
    Driver(#[from] WriteError),
}

impl CommandError {
    /// A stable, machine-readable name.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::UnknownDevice { .. } => "unknown_device",
            CommandError::ReadOnlyDevice { .. } => "read_only_device",
            CommandError::BadValue { .. } => "bad_value",
            CommandError::NoAnswer { .. } => "no_answer",
            CommandError::Driver(e) => e.kind(),
        }
    }
}

/// A write to carry out.
#[derive(Debug, Clone)]
pub struct WriteCommand {
    pub device: String,
    /// The point's CDM name (as stored and queried).
    pub point: String,
    /// The value in engineering units, as the CDM shows it.
    pub value: RawValue,
    /// Read the value back and compare (also done when the map says so).
    pub verify: bool,
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteOutcome {
    pub device: String,
    pub point: String,
    /// The driver's name of the point.
    pub raw_point: String,
    /// The value written, in engineering units, as text.
    pub value: String,
    /// The device's value after undoing the profile's scale and offset.
    pub raw_value: String,
    pub operation: String,
    pub target: String,
    /// What went to the device, in the protocol's units.
    pub sent: Sent,
    pub verified: bool,
}

/// Routes writes to the drivers that own the devices. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CommandBus {
    targets: Arc<HashMap<String, Target>>,
    metrics: Arc<Metrics>,
}

impl CommandBus {
    /// Every configured device, with the write queues of those whose
    /// driver takes writes.
    pub fn new(
        profiles: &BTreeMap<String, ProfileConfig>,
        bindings: &[DeviceBinding],
        senders: Vec<(Arc<str>, CommandSender)>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut senders: HashMap<Arc<str>, CommandSender> = senders.into_iter().collect();
        let targets = bindings
            .iter()
            .map(|binding| {
                let profile = binding.profile.as_deref().and_then(|p| profiles.get(p));
                let mut points = HashMap::default();
                let mut renamed = rustc_hash::FxHashSet::default();
                for (raw, rule) in profile.map(|p| &p.points).into_iter().flatten() {
                    let name = rule.name.clone().unwrap_or_else(|| raw.clone());
                    if name != *raw {
                        renamed.insert(raw.clone());
                    }
                    let mapping = Mapping {
                        raw: raw.clone(),
                        scale: rule.scale,
                        offset: rule.offset,
                    };
                    points.insert(name, mapping);
                }
                let only_mapped = profile.is_some_and(|p| p.unmapped == Unmapped::Reject);
                let sender = senders.remove(binding.device.as_str());
                let target = Target {
                    sender,
                    points,
                    renamed,
                    only_mapped,
                };
                (binding.device.clone(), target)
            })
            .collect();
        Self {
            targets: Arc::new(targets),
            metrics,
        }
    }

    /// Whether `device` is configured and its driver takes writes.
    pub fn takes_writes(&self, device: &str) -> bool {
        self.targets.get(device).is_some_and(|t| t.sender.is_some())
    }

    /// Writes one point and waits for the device's answer.
    pub async fn write(&self, command: WriteCommand) -> Result<WriteOutcome, CommandError> {
        let result = self.try_write(&command).await;
        match &result {
            Ok(_) => self.metrics.writes_ok.fetch_add(1, Relaxed),
            Err(_) => self.metrics.writes_failed.fetch_add(1, Relaxed),
        };
        result
    }

    async fn try_write(&self, command: &WriteCommand) -> Result<WriteOutcome, CommandError> {
        let target =
            self.targets
                .get(&command.device)
                .ok_or_else(|| CommandError::UnknownDevice {
                    device: command.device.clone(),
                })?;
        let sender = target
            .sender
            .as_ref()
            .ok_or_else(|| CommandError::ReadOnlyDevice {
                device: command.device.clone(),
            })?;
        let identity = Mapping {
            raw: command.point.clone(),
            scale: 1.0,
            offset: 0.0,
        };
        let mapping = match target.points.get(&command.point) {
            Some(mapping) => mapping,
            None if target.only_mapped || target.renamed.contains(&command.point) => {
                return Err(WriteError::UnknownPoint {
                    device: command.device.clone(),
                    point: command.point.clone(),
                }
                .into());
            }
            None => &identity,
        };
        let raw_value = unscale(&command.value, mapping).map_err(|why| CommandError::BadValue {
            point: command.point.clone(),
            value: display(&command.value),
            why,
        })?;
        let submit = command::submit(
            sender,
            command.device.as_str().into(),
            mapping.raw.clone(),
            raw_value.clone(),
            command.verify,
        );
        let report: WriteReport = tokio::time::timeout(ANSWER_TIMEOUT, submit)
            .await
            .map_err(|_| CommandError::NoAnswer {
                device: command.device.clone(),
            })??;
        Ok(WriteOutcome {
            device: command.device.clone(),
            point: command.point.clone(),
            raw_point: mapping.raw.clone(),
            value: display(&command.value),
            raw_value: display(&raw_value),
            operation: report.operation,
            target: report.target,
            sent: report.sent,
            verified: report.verified,
        })
    }
}

/// The inverse of the profile's `value * scale + offset`. A result within
/// rounding error of an integer becomes that integer (21.5 °C at scale
/// 0.1 is register value 215, not 214.99999999999997); anything else is
/// left as it is, and an integer register refuses it rather than
/// truncating.
fn unscale(value: &RawValue, mapping: &Mapping) -> Result<RawValue, String> {
    if mapping.scale == 1.0 && mapping.offset == 0.0 {
        return Ok(value.clone());
    }
    let v = match value {
        RawValue::I64(i) => *i as f64,
        RawValue::U64(u) => *u as f64,
        RawValue::F64(f) => *f,
        RawValue::Text(t) => match t.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => f,
            _ => return Ok(value.clone()),
        },
        // Booleans are not scaled on the way in either.
        other => return Ok(other.clone()),
    };
    if mapping.scale == 0.0 {
        return Err("the profile's scale is 0: no device value maps to it".into());
    }
    let raw = (v - mapping.offset) / mapping.scale;
    if !raw.is_finite() {
        return Err(format!(
            "({v} - {}) / {} is not a finite number",
            mapping.offset, mapping.scale
        ));
    }
    // A few units in the last place: the error of one subtraction and one
    // division, and no more (at 1e9 a looser bound would round 0.5 away).
    let nearest = raw.round();
    if (raw - nearest).abs() <= 8.0 * f64::EPSILON * raw.abs().max(1.0) {
        return Ok(RawValue::F64(nearest));
    }
    Ok(RawValue::F64(raw))
}

/// A value as an operator reads it.
pub fn display(value: &RawValue) -> String {
    match value {
        RawValue::Bool(b) => b.to_string(),
        RawValue::I64(i) => i.to_string(),
        RawValue::U64(u) => u.to_string(),
        RawValue::F64(f) => f.to_string(),
        RawValue::Text(t) => t.clone(),
        RawValue::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(scale: f64, offset: f64) -> Mapping {
        Mapping {
            raw: "r".into(),
            scale,
            offset,
        }
    }

    #[test]
    fn unscaling_inverts_the_profile_and_snaps_rounding_noise() {
        let m = scaled(0.1, 0.0);
        assert_eq!(unscale(&RawValue::F64(21.5), &m), Ok(RawValue::F64(215.0)));
        let m = scaled(0.1, -40.0);
        assert_eq!(unscale(&RawValue::I64(-20), &m), Ok(RawValue::F64(200.0)));
        // Not a multiple of the scale: left fractional, for the register to refuse.
        let m = scaled(0.1, 0.0);
        let RawValue::F64(f) = unscale(&RawValue::F64(21.53), &m).unwrap() else {
            panic!("f64 expected")
        };
        assert!((f - 215.3).abs() < 1e-9);
        assert!(unscale(&RawValue::F64(1.0), &scaled(0.0, 0.0)).is_err());
        // Large registers: a real fraction is not rounded away.
        let RawValue::F64(f) =
            unscale(&RawValue::F64(1_234_567.890_5), &scaled(0.001, 0.0)).unwrap()
        else {
            panic!("f64 expected")
        };
        assert!(f.fract() != 0.0, "{f}");
        // Identity keeps exact integers exact.
        let m = scaled(1.0, 0.0);
        assert_eq!(
            unscale(&RawValue::U64(u64::MAX), &m),
            Ok(RawValue::U64(u64::MAX))
        );
        assert_eq!(
            unscale(&RawValue::Bool(true), &scaled(2.0, 1.0)),
            Ok(RawValue::Bool(true))
        );
        // Typed text (the CLI) is a number when it reads as one.
        assert_eq!(
            unscale(&RawValue::Text("21.5".into()), &scaled(0.1, 0.0)),
            Ok(RawValue::F64(215.0))
        );
        assert_eq!(
            unscale(&RawValue::Text("on".into()), &scaled(0.1, 0.0)),
            Ok(RawValue::Text("on".into()))
        );
    }
}
