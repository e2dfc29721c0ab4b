//! `[store]`: the database file, durability, group commits, the WAL bound
//! and retention. Owned by the store; `crate::config` composes it.

use std::path::PathBuf;
use std::time::Duration;

use biota_common::config::{ConfigError, Problems, Validate};
use biota_common::time::serde_duration;
use serde::Deserialize;

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Database file. A relative path is taken relative to the state
    /// directory (`--state-dir`, else `$STATE_DIRECTORY`, else
    /// `/var/lib/biota`). Default: `gateway.db`.
    #[serde(default = "default_db_path")]
    pub path: PathBuf,
    /// `full`: a committed reading survives a power cut (an fsync per
    /// group commit). `normal`: it survives a crash of the gateway but the
    /// last commits may be lost on power loss. Default: `full`.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// A group commit happens once this many readings wait. Default: 20000.
    #[serde(default = "default_commit_max_readings")]
    pub commit_max_readings: usize,
    /// ... or once the oldest waiting reading is this old. Default: `50ms`.
    #[serde(default = "default_commit_max_delay", with = "serde_duration")]
    pub commit_max_delay: Duration,
    /// SQLite page cache of the writer, in MiB. Default: 8.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u32,
    /// The write-ahead log is folded back into the database and truncated
    /// once it is larger than this. Default: `32MiB`.
    #[serde(
        default = "default_wal_max_size",
        deserialize_with = "biota_common::size::deserialize"
    )]
    pub wal_max_size: u64,
    /// `[store.retention]`. Defaults: see [`RetentionConfig`].
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// `[store.retention]`: what is deleted, oldest first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delete readings committed longer ago than this (e.g. `90d`).
    /// Default: unset (no age limit).
    #[serde(default, with = "serde_duration::option")]
    pub max_age: Option<Duration>,
    /// Delete the oldest readings while the data in the database exceeds
    /// this size (e.g. `2GiB`, `500MB`). Default: `1GiB`.
    #[serde(
        default = "default_max_size",
        deserialize_with = "biota_common::size::deserialize_optional"
    )]
    pub max_size: Option<u64>,
    /// How often retention runs. Default: `60s`.
    #[serde(default = "default_retention_interval", with = "serde_duration")]
    pub check_interval: Duration,
}

/// SQLite's `synchronous` setting for the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

fn default_db_path() -> PathBuf {
    PathBuf::from("gateway.db")
}
fn default_commit_max_readings() -> usize {
    20_000
}
fn default_commit_max_delay() -> Duration {
    Duration::from_millis(50)
}
fn default_cache_mib() -> u32 {
    8
}
fn default_wal_max_size() -> u64 {
    32 << 20
}
fn default_max_size() -> Option<u64> {
    Some(1 << 30)
}
fn default_retention_interval() -> Duration {
    Duration::from_secs(60)
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_db_path(),
            synchronous: Synchronous::Full,
            commit_max_readings: default_commit_max_readings(),
            commit_max_delay: default_commit_max_delay(),
            cache_mib: default_cache_mib(),
            wal_max_size: default_wal_max_size(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            max_size: default_max_size(),
            check_interval: default_retention_interval(),
        }
    }
}

impl Validate for StoreConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut p = Problems::new(path, errors);
        p.range(
            "commit_max_readings",
            self.commit_max_readings,
            1,
            1_000_000,
        );
        if self.commit_max_delay < Duration::from_millis(1)
            || self.commit_max_delay > Duration::from_secs(10)
        {
            p.add("commit_max_delay", "must be between 1ms and 10s");
        }
        p.range("cache_mib", self.cache_mib, 1, 4096);
        if self.path.as_os_str().is_empty() {
            p.add("path", "must not be empty");
        }
        if let Some(size) = self.retention.max_size
            && size < 1 << 20
        {
            p.add(
                "retention.max_size",
                format!("must be at least 1MiB, got {size} bytes"),
            );
        }
        if self
            .retention
            .max_age
            .is_some_and(|a| a < Duration::from_secs(60))
        {
            p.add("retention.max_age", "must be at least 1m");
        }
        if self.retention.check_interval < Duration::from_secs(1) {
            p.add("retention.check_interval", "must be at least 1s");
        }
        if self.wal_max_size < 1 << 20 {
            p.add(
                "wal_max_size",
                format!("must be at least 1MiB, got {} bytes", self.wal_max_size),
            );
        }
    }
}
