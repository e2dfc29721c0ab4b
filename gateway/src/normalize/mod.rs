//! Normalization: raw [`Sample`]s from drivers become CDM [`Reading`]s
//! through the device profiles of the configuration — rename, type,
//! scale and offset, unit, deadband, and the timestamp rule. Anything
//! that cannot become a valid reading is rejected with a counted reason
//! (see [`RejectReason`]); nothing here panics on device input.
//!
//! - [`config`]: `[profiles.<name>]`, its types and validation.

pub mod config;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use biota_drivers::{DeviceBinding, RawValue, Sample, SampleBatch, SampleQuality};
use rustc_hash::FxHashMap as HashMap;

use crate::cdm::{self, CdmError, Quality, Reading, Value, ValueKind};
use crate::metrics::{Metrics, RejectReason};
use config::{ProfileConfig, TimestampRule, Unmapped};

/// A point's compiled profile rule.
#[derive(Debug)]
struct PointRule {
    name: Arc<str>,
    kind: Option<ValueKind>,
    scale: f64,
    offset: f64,
    unit: Option<Arc<str>>,
    deadband: f64,
}

#[derive(Debug)]
struct Profile {
    timestamp: TimestampRule,
    unmapped: Unmapped,
    points: HashMap<String, PointRule>,
}

impl Profile {
    fn compile(config: &ProfileConfig) -> Self {
        let points = config
            .points
            .iter()
            .map(|(raw, p)| {
                let rule = PointRule {
                    name: p.name.as_deref().unwrap_or(raw).into(),
                    kind: p.kind,
                    scale: p.scale,
                    offset: p.offset,
                    unit: p.unit.as_deref().map(Arc::from),
                    deadband: p.deadband,
                };
                (raw.clone(), rule)
            })
            .collect();
        Self {
            timestamp: config.timestamp,
            unmapped: config.unmapped,
            points,
        }
    }

    /// What a device without a profile gets: everything as it comes.
    fn passthrough() -> Self {
        Self {
            timestamp: TimestampRule::Device,
            unmapped: Unmapped::Accept,
            points: HashMap::default(),
        }
    }
}

/// Turns sample batches into readings (without seq: the writer assigns it).
pub struct Normalizer {
    by_device: HashMap<Arc<str>, Arc<Profile>>,
    /// Profiles by name, for batches that name theirs (a driver's rule).
    by_name: HashMap<Arc<str>, Arc<Profile>>,
    passthrough: Arc<Profile>,
    /// Last stored value and quality per deadbanded series.
    deadband_last: HashMap<(Arc<str>, Arc<str>), (f64, Quality)>,
    /// Sources already validated (a source repeats on every batch); at
    /// most `MAX_CACHED`, since sources come from the network.
    valid_sources: HashMap<Arc<str>, bool>,
    metrics: Arc<Metrics>,
}

/// Why a sample's value could not be converted.
struct Rejection {
    reason: RejectReason,
    detail: String,
}

impl From<CdmError> for Rejection {
    fn from(e: CdmError) -> Self {
        let reason = match e {
            CdmError::NonFinite { .. } | CdmError::NegativeZero => RejectReason::NonFinite,
            CdmError::TooLong { .. } => RejectReason::ValueTooLarge,
            CdmError::BadLength { .. } | CdmError::BadChar { .. } => RejectReason::InvalidPoint,
        };
        Self {
            reason,
            detail: e.to_string(),
        }
    }
}

/// Entries a cache keyed by what devices send (sources, series) keeps
/// before it starts again empty: sources (topics, paths, peers) come from
/// the network, and a flood of new ones must not grow memory.
const MAX_CACHED: usize = 65_536;

impl Normalizer {
    /// Compiles `profiles` and binds each configured device (`bindings`)
    /// to the profile its configuration names.
    pub fn new(
        profiles: &BTreeMap<String, ProfileConfig>,
        bindings: &[DeviceBinding],
        metrics: Arc<Metrics>,
    ) -> Self {
        let profiles: std::collections::HashMap<&str, Arc<Profile>> = profiles
            .iter()
            .map(|(name, p)| (name.as_str(), Arc::new(Profile::compile(p))))
            .collect();
        let by_device = bindings
            .iter()
            .filter_map(|b| {
                let profile = profiles.get(b.profile.as_deref()?)?.clone();
                Some((Arc::from(b.device.as_str()), profile))
            })
            .collect();
        let by_name = profiles
            .iter()
            .map(|(name, p)| (Arc::from(*name), p.clone()))
            .collect();
        Self {
            by_device,
            by_name,
            passthrough: Arc::new(Profile::passthrough()),
            deadband_last: HashMap::default(),
            valid_sources: HashMap::default(),
            metrics,
        }
    }

    /// Normalizes one batch, appending readings to `out`.
    pub fn normalize(&mut self, batch: SampleBatch, out: &mut Vec<Reading>) {
        let metrics = self.metrics.clone();
        metrics
            .received
            .fetch_add(batch.samples.len() as u64, Relaxed);
        if self.valid_sources.len() >= MAX_CACHED && !self.valid_sources.contains_key(&batch.source)
        {
            self.valid_sources.clear();
        }
        let source_ok = *self
            .valid_sources
            .entry(batch.source.clone())
            .or_insert_with(|| cdm::validate_source(&batch.source).is_ok());
        if !source_ok {
            let detail = cdm::validate_source(&batch.source)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            for s in &batch.samples {
                metrics.reject(RejectReason::InvalidSource, &s.device, &s.point, &detail);
            }
            return;
        }
        let before = out.len();
        for sample in batch.samples {
            match self.one(
                sample,
                &batch.source,
                batch.profile.as_ref(),
                batch.received_at,
            ) {
                Ok(Some(reading)) => out.push(reading),
                Ok(None) => {
                    metrics.filtered.fetch_add(1, Relaxed);
                }
                Err((sample, rejection)) => metrics.reject(
                    rejection.reason,
                    &sample.device,
                    &sample.point,
                    &rejection.detail,
                ),
            }
        }
        metrics
            .accepted
            .fetch_add((out.len() - before) as u64, Relaxed);
    }

    /// `Ok(None)`: suppressed by the deadband.
    #[allow(clippy::result_large_err)]
    fn one(
        &mut self,
        mut sample: Sample,
        source: &Arc<str>,
        batch_profile: Option<&Arc<str>>,
        received_at: i64,
    ) -> Result<Option<Reading>, (Sample, Rejection)> {
        if let Err(e) = cdm::validate_device(&sample.device) {
            let r = Rejection {
                reason: RejectReason::InvalidDevice,
                detail: e.to_string(),
            };
            return Err((sample, r));
        }
        let profile = self
            .by_device
            .get(&sample.device)
            .or_else(|| self.by_name.get(batch_profile?))
            .unwrap_or(&self.passthrough)
            .clone();
        let rule = profile.points.get(&*sample.point);
        if rule.is_none() && profile.unmapped == Unmapped::Reject {
            let r = Rejection {
                reason: RejectReason::UnmappedPoint,
                detail: "the device's profile does not list this point and rejects unmapped points"
                    .into(),
            };
            return Err((sample, r));
        }
        let point = match rule {
            Some(rule) => rule.name.clone(),
            None => {
                if let Err(e) = cdm::validate_point(&sample.point) {
                    let r = Rejection {
                        reason: RejectReason::InvalidPoint,
                        detail: e.to_string(),
                    };
                    return Err((sample, r));
                }
                sample.point.clone()
            }
        };
        let value = match convert(&sample.value, rule) {
            Ok(v) => v,
            Err(r) => return Err((sample, r)),
        };
        let mut quality = match sample.quality {
            SampleQuality::Good => Quality::Good,
            SampleQuality::Uncertain => Quality::Uncertain,
            SampleQuality::Bad => Quality::Bad,
        };
        let ts = match (profile.timestamp, sample.device_time) {
            (TimestampRule::Device, Some(t))
                if (cdm::EARLIEST_TS_NS..=received_at.saturating_add(cdm::MAX_FUTURE_SKEW_NS))
                    .contains(&t) =>
            {
                t
            }
            (TimestampRule::Device, Some(_)) => {
                // A device clock that is off by years is common (no RTC
                // battery, never set): keep the value, stamp it on arrival
                // and say it is less trustworthy.
                self.metrics.clock_fallbacks.fetch_add(1, Relaxed);
                if quality == Quality::Good {
                    quality = Quality::Uncertain;
                }
                received_at
            }
            _ => received_at,
        };
        if let Some(rule) = rule
            && rule.deadband > 0.0
            && let Some(v) = value.as_f64()
        {
            let key = (sample.device.clone(), point.clone());
            match self.deadband_last.get_mut(&key) {
                Some((last, last_quality))
                    if *last_quality == quality && (v - *last).abs() < rule.deadband =>
                {
                    return Ok(None);
                }
                Some(entry) => *entry = (v, quality),
                None => {
                    // Forgetting the last values costs one stored reading
                    // per series; growing without bound costs the gateway.
                    if self.deadband_last.len() >= MAX_CACHED {
                        self.deadband_last.clear();
                    }
                    self.deadband_last.insert(key, (v, quality));
                }
            }
        }
        // The profile's unit wins over the one the device sent.
        let unit = match rule.and_then(|r| r.unit.clone()) {
            Some(unit) => Some(unit),
            None => match sample.unit.take() {
                Some(unit) => match cdm::validate_unit(&unit) {
                    Ok(()) => Some(unit),
                    Err(e) => {
                        let r = Rejection {
                            reason: RejectReason::InvalidUnit,
                            detail: e.to_string(),
                        };
                        return Err((sample, r));
                    }
                },
                None => None,
            },
        };
        Ok(Some(Reading {
            device: sample.device,
            point,
            ts,
            value,
            unit,
            quality,
            seq: 0,
            source: source.clone(),
        }))
    }
}

fn mismatch(raw: &RawValue, kind: ValueKind) -> Rejection {
    Rejection {
        reason: RejectReason::TypeMismatch,
        detail: format!(
            "a {} value cannot become {}",
            raw.kind_name(),
            kind.as_str()
        ),
    }
}

/// Applies type, scale and offset. Integer targets stay exact when there
/// is no scaling; scaled values are computed in f64 and rounded.
fn convert(raw: &RawValue, rule: Option<&PointRule>) -> Result<Value, Rejection> {
    let (scale, offset) = rule.map_or((1.0, 0.0), |r| (r.scale, r.offset));
    let identity = scale == 1.0 && offset == 0.0;
    let natural = match raw {
        RawValue::Bool(_) => ValueKind::Bool,
        RawValue::I64(_) | RawValue::U64(_) => ValueKind::I64,
        RawValue::F64(_) => ValueKind::F64,
        RawValue::Text(_) => ValueKind::Text,
        RawValue::Bytes(_) => ValueKind::Bytes,
    };
    let kind = rule.and_then(|r| r.kind).unwrap_or(
        // A scaled integer is a measurement, not a count.
        if natural == ValueKind::I64 && !identity {
            ValueKind::F64
        } else {
            natural
        },
    );
    let number = || -> Result<f64, Rejection> {
        let v = match raw {
            RawValue::Bool(b) => f64::from(u8::from(*b)),
            RawValue::I64(i) => *i as f64,
            RawValue::U64(u) => *u as f64,
            RawValue::F64(f) => *f,
            RawValue::Text(_) | RawValue::Bytes(_) => return Err(mismatch(raw, kind)),
        };
        Ok(v * scale + offset)
    };
    let out_of_range = |what: &dyn std::fmt::Display| Rejection {
        reason: RejectReason::OutOfRange,
        detail: format!("{what} does not fit in i64"),
    };
    let value = match kind {
        ValueKind::Bool => match raw {
            RawValue::Bool(b) => Value::Bool(*b),
            RawValue::I64(_) | RawValue::U64(_) | RawValue::F64(_) => {
                let v = number()?;
                if !v.is_finite() {
                    return Err(CdmError::NonFinite { value: v }.into());
                }
                Value::Bool(v != 0.0)
            }
            _ => return Err(mismatch(raw, kind)),
        },
        ValueKind::I64 => match raw {
            RawValue::I64(i) if identity => Value::I64(*i),
            RawValue::U64(u) if identity => {
                Value::I64(i64::try_from(*u).map_err(|_| out_of_range(u))?)
            }
            RawValue::Bool(b) if identity => Value::I64(i64::from(*b)),
            _ => {
                let v = number()?;
                if !v.is_finite() {
                    return Err(CdmError::NonFinite { value: v }.into());
                }
                let r = v.round();
                // i64::MAX as f64 rounds up to 2^63, which does not fit.
                if r < -(2f64.powi(63)) || r >= 2f64.powi(63) {
                    return Err(out_of_range(&v));
                }
                Value::I64(r as i64)
            }
        },
        ValueKind::F64 => Value::f64(number()?)?,
        ValueKind::Text => match raw {
            RawValue::Text(t) => Value::Text(t.clone()),
            _ => return Err(mismatch(raw, kind)),
        },
        ValueKind::Bytes => match raw {
            RawValue::Bytes(b) => Value::Bytes(b.clone()),
            RawValue::Text(t) => Value::Bytes(t.as_bytes().to_vec()),
            _ => return Err(mismatch(raw, kind)),
        },
    };
    if let Value::Text(t) = &value
        && t.len() > cdm::MAX_VALUE_LEN
    {
        return Err(CdmError::TooLong {
            field: "value",
            len: t.len(),
            max: cdm::MAX_VALUE_LEN,
        }
        .into());
    }
    if let Value::Bytes(b) = &value
        && b.len() > cdm::MAX_VALUE_LEN
    {
        return Err(CdmError::TooLong {
            field: "value",
            len: b.len(),
            max: cdm::MAX_VALUE_LEN,
        }
        .into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600_000_000_000;

    fn normalizer(profiles: &str) -> (Normalizer, Arc<Metrics>) {
        #[derive(serde::Deserialize)]
        struct Doc {
            #[serde(default)]
            profiles: BTreeMap<String, ProfileConfig>,
        }
        let doc: Doc = toml::from_str(profiles).expect("valid profiles");
        let mut errors = Vec::new();
        config::validate_profiles(&doc.profiles, &mut errors);
        assert_eq!(errors, [], "valid profiles");
        let bindings = [DeviceBinding {
            device: "press-1".into(),
            profile: Some("press".into()),
            key_path: "drivers.sim.devices[0]".into(),
        }];
        let metrics = Arc::new(Metrics::new());
        (
            Normalizer::new(&doc.profiles, &bindings, metrics.clone()),
            metrics,
        )
    }

    fn sample(device: &str, point: &str, value: RawValue, device_time: Option<i64>) -> Sample {
        Sample {
            device: device.into(),
            point: point.into(),
            value,
            device_time,
            quality: SampleQuality::Good,
            unit: None,
        }
    }

    fn run(n: &mut Normalizer, samples: Vec<Sample>) -> Vec<Reading> {
        let mut out = Vec::new();
        n.normalize(
            SampleBatch {
                source: "sim://test".into(),
                received_at: NOW,
                samples,
                profile: None,
                notice: None,
            },
            &mut out,
        );
        out
    }

    const PRESS: &str = r#"
[profiles.press]
timestamp = "device"
[profiles.press.points.temp_raw]
name = "temperature"
type = "f64"
scale = 0.1
offset = -40
unit = "Cel"
deadband = 0.5
[profiles.press.points.count]
type = "i64"
[profiles.press.points.running]
type = "bool"
"#;

    #[test]
    fn profile_renames_scales_types_and_units() {
        let (mut n, _) = normalizer(PRESS);
        let out = run(
            &mut n,
            vec![
                sample("press-1", "temp_raw", RawValue::U64(655), Some(NOW - 5)),
                sample("press-1", "count", RawValue::U64(7), None),
                sample("press-1", "running", RawValue::I64(1), None),
                sample("press-1", "other", RawValue::Text("hi".into()), None),
            ],
        );
        assert_eq!(out.len(), 4);
        assert_eq!(&*out[0].point, "temperature");
        assert_eq!(out[0].value, Value::F64(25.5));
        assert_eq!(out[0].unit.as_deref(), Some("Cel"));
        assert_eq!(out[0].ts, NOW - 5, "device time is used");
        assert_eq!(out[1].value, Value::I64(7));
        assert_eq!(out[1].ts, NOW, "no device time: ingest time");
        assert_eq!(out[2].value, Value::Bool(true));
        assert_eq!(
            out[3].value,
            Value::Text("hi".into()),
            "unmapped passes through"
        );
        assert!(
            out.iter()
                .all(|r| r.validate().is_ok() && &*r.source == "sim://test")
        );
    }

    #[test]
    fn deadband_drops_small_changes_only() {
        let (mut n, metrics) = normalizer(PRESS);
        let values = [650u64, 652, 654, 656, 600];
        let samples = values
            .iter()
            .map(|v| sample("press-1", "temp_raw", RawValue::U64(*v), None))
            .collect();
        let out = run(&mut n, samples);
        let got: Vec<_> = out.iter().map(|r| r.value.clone()).collect();
        // 25.0 stored; 25.2, 25.4 within 0.5 of it; 25.6 is not; 20.0 is not.
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(metrics.filtered.load(Relaxed), 2);
    }

    #[test]
    fn ingest_rule_and_implausible_device_clocks() {
        let (mut n, metrics) = normalizer(&format!(
            "{PRESS}\n[profiles.other]\ntimestamp = \"ingest\"\n"
        ));
        let out = run(
            &mut n,
            vec![
                sample("press-1", "count", RawValue::I64(1), Some(1_000)),
                sample(
                    "press-1",
                    "count",
                    RawValue::I64(2),
                    Some(NOW + 2 * cdm::MAX_FUTURE_SKEW_NS),
                ),
            ],
        );
        assert!(
            out.iter()
                .all(|r| r.ts == NOW && r.quality == Quality::Uncertain)
        );
        assert_eq!(metrics.clock_fallbacks.load(Relaxed), 2);
    }

    #[test]
    fn bad_samples_are_rejected_with_reasons() {
        let (mut n, metrics) = normalizer(&format!(
            "{PRESS}\n[profiles.strict]\nunmapped = \"reject\"\n"
        ));
        let out = run(
            &mut n,
            vec![
                sample("bad device", "x", RawValue::I64(1), None),
                sample("press-1", "bad point!", RawValue::I64(1), None),
                sample("press-1", "temp_raw", RawValue::Text("hot".into()), None),
                sample("press-1", "nan", RawValue::F64(f64::NAN), None),
                sample("press-1", "count", RawValue::F64(1e300), None),
                sample("press-1", "u", RawValue::U64(u64::MAX), None),
                sample(
                    "press-1",
                    "big",
                    RawValue::Bytes(vec![0; cdm::MAX_VALUE_LEN + 1]),
                    None,
                ),
                sample("press-1", "ok", RawValue::F64(-0.0), None),
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value, Value::F64(0.0));
        assert!(!out[0].value.as_f64().is_some_and(|v| v.is_sign_negative()));
        for (reason, n) in [
            (RejectReason::InvalidDevice, 1),
            (RejectReason::InvalidPoint, 1),
            (RejectReason::TypeMismatch, 1),
            (RejectReason::NonFinite, 1),
            (RejectReason::OutOfRange, 2),
            (RejectReason::ValueTooLarge, 1),
        ] {
            assert_eq!(metrics.rejected(reason), n, "{reason:?}");
        }
        assert_eq!(metrics.accepted.load(Relaxed), 1);
        assert_eq!(metrics.received.load(Relaxed), 8);
    }

    #[test]
    fn invalid_source_rejects_the_batch() {
        let (mut n, metrics) = normalizer(PRESS);
        let mut out = Vec::new();
        n.normalize(
            SampleBatch {
                source: "bad\nsource".into(),
                received_at: NOW,
                samples: vec![sample("press-1", "count", RawValue::I64(1), None)],
                profile: None,
                notice: None,
            },
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(metrics.rejected(RejectReason::InvalidSource), 1);
    }
}
