//! `[log]` and the log subscriber: `tracing` to stderr, which systemd's
//! journal takes (it adds the timestamps, so we don't), with key/value
//! fields. Only the binary calls [`init`].

use std::io::IsTerminal;

use biota_common::config::{ConfigError, Problems, Validate};
use serde::Deserialize;

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, optionally with
    /// per-module levels (`info,biota_gateway::store=debug`). The
    /// `BIOTA_LOG` environment variable overrides it. Default: `info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
        }
    }
}

impl Validate for LogConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if let Err(e) = self.level.parse::<tracing_subscriber::filter::Targets>() {
            Problems::new(path, errors).add(
                "level",
                format!("`{}` is not a log filter: {e}", self.level),
            );
        }
    }
}

/// Installs the process's subscriber: `level` (or `$BIOTA_LOG`) to
/// stderr, without timestamps under the journal, in colour only on a
/// terminal (a file or the journal gets plain text).
pub fn init(level: &str) {
    // Third-party crates whose routine messages are noise (the drivers
    // name them) are off unless asked for, e.g. BIOTA_LOG=info,<crate>=warn.
    let quiet: String = biota_drivers::QUIET_LOG_TARGETS
        .iter()
        .map(|target| format!(",{target}=off"))
        .collect();
    let filter = std::env::var("BIOTA_LOG").unwrap_or_else(|_| format!("{level}{quiet}"));
    let targets: tracing_subscriber::filter::Targets = filter.parse().unwrap_or_else(|_| {
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(targets);
    if journal {
        registry.with(fmt.without_time()).init();
    } else {
        registry.with(fmt).init();
    }
}
