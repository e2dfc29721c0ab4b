//! The gateway's one TOML configuration file: the composition of every
//! module's section, loading, and the rules that span sections. Each
//! section's type, defaults and own validation live with the module that
//! owns it (`store::config`, `api::config`, ...); this module only
//! composes them, reads the file and names the file, the line, the key
//! path and the reason in every error. The binary exits with
//! [`EXIT_CONFIG`] on any of them. `config/gateway.toml` is the commented
//! sample with every default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use biota_common::config::{ConfigError as SectionError, Validate};
use biota_drivers::DriversConfig;
use serde::Deserialize;

use crate::anchor::config::AnchorConfig;
use crate::api::config::ApiConfig;
use crate::cdm;
use crate::logging::LogConfig;
use crate::normalize::config::{ProfileConfig, validate_profiles};
use crate::pipeline::PipelineConfig;
use crate::store::config::StoreConfig;
use crate::uplink::config::UplinkConfig;

/// Exit code for a configuration error (sysexits' EX_CONFIG). The unit
/// file lists it in `RestartPreventExitStatus=` so a bad config is not
/// restarted in a loop.
pub const EXIT_CONFIG: i32 = 78;

/// The sample configuration, also printed by `print-default-config`.
pub const SAMPLE_CONFIG: &str = include_str!("../../config/gateway.toml");

/// The whole configuration file: one section per module that has one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[store]`: the SQLite database. Defaults: see [`StoreConfig`].
    #[serde(default)]
    pub store: StoreConfig,
    /// `[pipeline]`: channels and shutdown. Defaults: see [`PipelineConfig`].
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `[log]`: logging. Defaults: see [`LogConfig`].
    #[serde(default)]
    pub log: LogConfig,
    /// `[profiles.<name>]`: device profiles that normalize raw samples.
    /// Default: none.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// `[drivers.<protocol>]`: southbound drivers. Default: none.
    #[serde(default)]
    pub drivers: DriversConfig,
    /// `[uplink]`: readings published northbound with store-and-forward
    /// (`uplink::config`). Default: none.
    #[serde(default)]
    pub uplink: Option<UplinkConfig>,
    /// `[anchor]`: sealing readings into Merkle batches and anchoring them
    /// on an EVM chain. Default: sealing on, no chain (`backend = "none"`).
    #[serde(default)]
    pub anchor: AnchorConfig,
    /// `[api]`: the local HTTP API, Prometheus metrics and the web console
    /// (`docs/api.md`). Default: none (no HTTP listener); with an `[api]`
    /// section it listens on localhost unless told otherwise.
    #[serde(default)]
    pub api: Option<ApiConfig>,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `drivers.sim.devices[0].points[1].rate`; empty for
    /// the whole file.
    pub key: String,
    /// 1-based line of the key in the file, when it is there.
    pub line: Option<usize>,
    pub reason: String,
}

/// Everything wrong with a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = issue.line {
                write!(f, ":{line}")?;
            }
            if !issue.key.is_empty() {
                write!(f, ": {}", issue.key)?;
            }
            write!(f, ": {}", issue.reason)?;
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// Reads, parses and validates `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            issues: vec![ConfigIssue {
                key: String::new(),
                line: None,
                reason: format!("cannot read the configuration file: {e}"),
            }],
        })?;
        Self::from_toml(file, &text)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn from_toml(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let fail = |issues| ConfigError {
            file: file.to_owned(),
            issues,
        };
        let located = toml::de::DeTable::parse(text).map_err(|e| {
            fail(vec![ConfigIssue {
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                reason: format!("invalid TOML: {}", e.message().trim()),
            }])
        })?;
        let deserializer = toml::de::Deserializer::parse(text).map_err(|e| {
            fail(vec![ConfigIssue {
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                reason: format!("invalid TOML: {}", e.message().trim()),
            }])
        })?;
        let config: Self = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." => String::new(),
                p => p,
            };
            let line = e
                .inner()
                .span()
                .map(|s| line_of(text, s.start))
                .or_else(|| find_line(text, located.get_ref(), &key));
            fail(vec![ConfigIssue {
                key,
                line,
                reason: e.inner().message().trim().to_owned(),
            }])
        })?;
        let issues: Vec<ConfigIssue> = config
            .validate()
            .into_iter()
            .map(|e| ConfigIssue {
                line: find_line(text, located.get_ref(), &e.key_path),
                key: e.key_path,
                reason: e.reason,
            })
            .collect();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(fail(issues))
        }
    }

    /// Every section's own rules, then the rules that span sections.
    fn validate(&self) -> Vec<SectionError> {
        let mut errors = Vec::new();
        if let Some(uplink) = &self.uplink {
            uplink.validate("uplink", &mut errors);
        }
        if let Some(api) = &self.api {
            api.validate("api", &mut errors);
        }
        self.anchor.validate("anchor", &mut errors);
        self.store.validate("store", &mut errors);
        self.pipeline.validate("pipeline", &mut errors);
        self.log.validate("log", &mut errors);
        validate_profiles(&self.profiles, &mut errors);
        self.drivers.validate("drivers", &mut errors);

        // What drivers name must exist: valid device ids, defined profiles.
        let mut err =
            |key_path: String, reason: String| errors.push(SectionError { key_path, reason });
        let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        let undefined = |profile: &str| {
            (!self.profiles.contains_key(profile)).then(|| {
                format!(
                    "profile `{profile}` is not defined (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            })
        };
        for binding in self.drivers.devices("drivers") {
            if let Err(e) = cdm::validate_device(&binding.device) {
                err(format!("{}.id", binding.key_path), e.to_string());
            }
            if let Some(reason) = binding.profile.as_deref().and_then(undefined) {
                err(format!("{}.profile", binding.key_path), reason);
            }
        }
        // Profiles for devices only known at run time (topic or path captures).
        for (key_path, profile) in self.drivers.dynamic_profiles("drivers") {
            if let Some(reason) = undefined(&profile) {
                err(format!("{key_path}.profile"), reason);
            }
        }
        // Copies of one device entry repeat the same error: report it once.
        errors.dedup();
        errors
    }

    /// The token file of the API for a state directory.
    pub fn token_path(&self, state_dir: &Path) -> PathBuf {
        let file = self
            .api
            .as_ref()
            .map_or_else(|| ApiConfig::default().token_file, |a| a.token_file.clone());
        state_dir.join(file)
    }

    /// Makes `[anchor.evm] key_file` absolute (relative to the state directory).
    pub fn resolve_key_file(&mut self, state_dir: &Path) {
        if let Some(evm) = self.anchor.evm.as_mut() {
            evm.key_file = state_dir.join(&evm.key_file);
        }
    }

    /// The database file for a state directory.
    pub fn db_path(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(&self.store.path)
    }
}

/// The state directory: `--state-dir`, else systemd's `$STATE_DIRECTORY`,
/// else `/var/lib/biota`.
pub fn state_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(dir) = cli {
        return dir.to_owned();
    }
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; ours is the first.
        Some(dirs) if !dirs.is_empty() => {
            PathBuf::from(dirs.to_string_lossy().split(':').next().unwrap_or_default())
        }
        _ => PathBuf::from("/var/lib/biota"),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of a key path like `drivers.sim.devices[1].points[0].rate`,
/// or of its closest ancestor that is in the file.
fn find_line(text: &str, root: &toml::de::DeTable<'_>, key: &str) -> Option<usize> {
    use toml::de::DeValue;
    let mut table = Some(root);
    let mut best = None;
    for segment in key.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        let Some((k, mut value)) = table?.iter().find(|(k, _)| k.get_ref() == name) else {
            break;
        };
        best = Some(line_of(text, k.span().start));
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            let item = match (value.get_ref(), index.parse::<usize>()) {
                (DeValue::Array(items), Ok(i)) => items.get(i),
                _ => None,
            };
            let Some(item) = item else { return best };
            value = item;
            best = Some(line_of(text, value.span().start));
        }
        table = match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::Synchronous;
    use std::time::Duration;

    fn load(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_toml(Path::new("test.toml"), text)
    }

    fn issues(text: &str) -> Vec<(String, Option<usize>, String)> {
        load(text)
            .expect_err("invalid config")
            .issues
            .into_iter()
            .map(|i| (i.key, i.line, i.reason))
            .collect()
    }

    #[test]
    fn the_sample_config_is_valid_and_documents_defaults() {
        let config = load(SAMPLE_CONFIG).expect("config/gateway.toml is valid");
        assert_eq!(config.store.commit_max_readings, 20_000);
        assert_eq!(config.store.commit_max_delay, Duration::from_millis(50));
        assert!(
            config.drivers.sim.is_none(),
            "no simulated devices unless asked for"
        );
        // Its commented-out dry-run section ("#key", "##" for comments) is
        // valid once uncommented.
        let uncommented: String = SAMPLE_CONFIG
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.starts_with([' ', '#']) && !rest.is_empty() => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let dry_run = load(&uncommented).expect("the uncommented dry run is valid");
        let sim = dry_run
            .drivers
            .sim
            .expect("the dry run has simulated devices");
        assert_eq!(sim.devices[0].profile.as_deref(), Some("press"));
        // An empty file is a valid configuration too: every field has a default.
        let empty = load("").expect("empty config is valid");
        assert_eq!(empty.store.retention.max_size, Some(1 << 30));
        assert_eq!(empty.store.synchronous, Synchronous::Full);
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let found = issues("[store]\ncommit_max_delay = \"10ms\"\ncomit_max_readings = 5\n");
        assert_eq!(found.len(), 1);
        let (key, line, reason) = &found[0];
        assert_eq!(key, "store.comit_max_readings");
        assert_eq!(*line, Some(3));
        assert!(reason.contains("comit_max_readings"), "{reason}");
    }

    #[test]
    fn bad_value_names_path_and_line() {
        let found = issues("[store]\n\ncommit_max_delay = \"soon\"\n");
        assert_eq!(found[0].0, "store.commit_max_delay");
        assert_eq!(found[0].1, Some(3));
        assert!(found[0].2.contains("`soon`"), "{}", found[0].2);

        let found = issues("[store.retention]\nmax_size = \"12 parsecs\"\n");
        assert_eq!(found[0].0, "store.retention.max_size");
        assert_eq!(found[0].1, Some(2));
        let found = issues("[store.retention]\nmax_size = true\n");
        assert!(found[0].2.contains("a size like"), "{}", found[0].2);
    }

    #[test]
    fn invalid_toml_names_the_line() {
        let found = issues("[store]\npath = \"x.db\"\ncache_mib = = 3\n");
        assert_eq!(found[0].1, Some(3));
        assert!(found[0].2.starts_with("invalid TOML"));
    }

    #[test]
    fn cross_field_rules_name_path_and_line() {
        let text = r#"
[profiles.press.points.temp_raw]
name = "bad name"
scale = 0

[[drivers.sim.devices]]
id = "press-1"
profile = "pres"
points = [{ name = "temp_raw", waveform = "sine" }]

[[drivers.sim.devices]]
id = "press 2"
points = [
  { name = "a", waveform = "sine" },
  { name = "b", waveform = "sine", rate = -1 },
]
"#;
        let found = issues(text);
        let keys: Vec<(&str, Option<usize>)> =
            found.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
        assert_eq!(
            keys,
            [
                ("profiles.press.points.temp_raw.name", Some(3)),
                ("profiles.press.points.temp_raw.scale", Some(4)),
                ("drivers.sim.devices[1].points[1].rate", Some(15)),
                ("drivers.sim.devices[0].profile", Some(8)),
                ("drivers.sim.devices[1].id", Some(12)),
            ]
        );
        assert!(
            found[3]
                .2
                .contains("`pres` is not defined (defined: press)")
        );
    }

    #[test]
    fn error_display_is_file_line_key_reason() {
        let e = load("[pipeline]\nqueue_capacity = 0\n").expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.toml:2: pipeline.queue_capacity: must be 1..=65536, got 0"
        );
    }
}
