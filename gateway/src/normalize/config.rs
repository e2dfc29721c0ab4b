//! `[profiles.<name>]`: how a kind of device's raw samples become
//! readings. Owned by the normalizer (which applies them) and read by the
//! command path (which undoes them for writes); `crate::config` composes it.

use std::collections::{BTreeMap, HashMap};

use biota_common::config::ConfigError;
use serde::Deserialize;

use crate::cdm::{self, ValueKind};

/// `[profiles.<name>]`: how a kind of device's raw samples become readings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// `device`: use the device's timestamp when it sent one, else the
    /// ingest time. `ingest`: always the ingest time. Default: `device`.
    #[serde(default)]
    pub timestamp: TimestampRule,
    /// What happens to points the profile does not list: `accept` (kept
    /// under their raw name and type) or `reject` (counted as
    /// `unmapped_point`). Default: `accept`.
    #[serde(default)]
    pub unmapped: Unmapped,
    /// `[profiles.<name>.points.<raw point>]`: per-point rules. Default: none.
    #[serde(default)]
    pub points: BTreeMap<String, PointProfile>,
}

/// Where a reading's timestamp comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampRule {
    #[default]
    Device,
    Ingest,
}

/// What to do with points a profile does not list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmapped {
    #[default]
    Accept,
    Reject,
}

/// `[profiles.<name>.points.<raw point>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointProfile {
    /// The point's name in the CDM. Default: the raw name.
    #[serde(default)]
    pub name: Option<String>,
    /// `bool`, `i64`, `f64`, `text` or `bytes`. Default: the raw value's
    /// own type (unsigned integers become i64).
    #[serde(default, rename = "type")]
    pub kind: Option<ValueKind>,
    /// Multiplier applied to numeric values (`value * scale + offset`).
    /// Default: 1.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling. Default: 0.
    #[serde(default)]
    pub offset: f64,
    /// SenML / UCUM unit code, e.g. `Cel`, `kW`, `m3/h`. Default: none.
    #[serde(default)]
    pub unit: Option<String>,
    /// A numeric reading within this absolute distance of the last stored
    /// one (same quality) is dropped. Default: 0 (store every change).
    #[serde(default)]
    pub deadband: f64,
}

fn one() -> f64 {
    1.0
}

/// Checks every profile of `[profiles]`: CDM point names and units, one
/// CDM name per raw point, finite scale, offset and deadband, and numeric
/// rules only on numbers.
pub fn validate_profiles(
    profiles: &BTreeMap<String, ProfileConfig>,
    errors: &mut Vec<ConfigError>,
) {
    let mut err = |key_path: String, reason: String| errors.push(ConfigError { key_path, reason });
    for (name, profile) in profiles {
        let mut renamed: HashMap<&str, &str> = HashMap::new();
        for (raw, point) in &profile.points {
            let key = format!("profiles.{name}.points.{raw}");
            let cdm_name = point.name.as_deref().unwrap_or(raw);
            if let Err(e) = cdm::validate_point(cdm_name) {
                let field = if point.name.is_some() { ".name" } else { "" };
                err(format!("{key}{field}"), e.to_string());
            }
            if let Some(other) = renamed.insert(cdm_name, raw) {
                err(
                    format!("{key}.name"),
                    format!("raw points `{other}` and `{raw}` both map to point `{cdm_name}`"),
                );
            }
            if let Some(unit) = &point.unit
                && let Err(e) = cdm::validate_unit(unit)
            {
                err(format!("{key}.unit"), e.to_string());
            }
            if !point.scale.is_finite() || point.scale == 0.0 {
                err(
                    format!("{key}.scale"),
                    format!("must be finite and non-zero, got {}", point.scale),
                );
            }
            if !point.offset.is_finite() {
                err(
                    format!("{key}.offset"),
                    format!("must be finite, got {}", point.offset),
                );
            }
            if !point.deadband.is_finite() || point.deadband < 0.0 {
                err(
                    format!("{key}.deadband"),
                    format!("must be 0 or positive, got {}", point.deadband),
                );
            }
            let numeric = !matches!(point.kind, Some(ValueKind::Text | ValueKind::Bytes));
            if !numeric && (point.scale != 1.0 || point.offset != 0.0 || point.deadband != 0.0) {
                err(
                    format!("{key}.type"),
                    "scale, offset and deadband apply to numbers only, not to text or bytes".into(),
                );
            }
        }
    }
}
