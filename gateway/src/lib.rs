//! The BIOTA Edge gateway's core: everything between the drivers and the
//! outside world.
//!
//! | module | owns |
//! |---|---|
//! | [`api`] | the local HTTP API (`/v1`), Prometheus `/metrics`, the web console; bearer tokens |
//! | [`cdm`] | the Common Data Model: `Reading`, validation, canonical encoding, leaf hash |
//! | [`command`] | the one command path into devices (writes), with profile scaling undone |
//! | [`control`] | the control socket: the CLI's way into the running service |
//! | [`config`] | the TOML configuration: types, defaults, loading, validation, errors with lines |
//! | [`export`] | readings and buckets as CSV cells and JSON, for the CLI and the API |
//! | [`live`] | committed readings fanned out to live subscribers (bounded, never blocks the writer) |
//! | [`normalize`] | device profiles: raw samples → readings |
//! | [`store`] | SQLite: schema, the one writer, retention, queries |
//! | [`pipeline`] | wiring drivers → normalizer → writer, shutdown order |
//! | [`metrics`] | the pipeline's counters |
//! | [`systemd`] | readiness, status and the watchdog over `$NOTIFY_SOCKET` |
//! | [`uplink`] | store-and-forward to a northbound MQTT broker (QoS 1, acknowledged seq persisted) |
//! | [`time`] | RFC 3339 and duration parsing/formatting |
//!
//! The binary (`src/main.rs`, `src/cli/`) is glue: command line, logging,
//! the demo and the benchmarks.
//!
//! *Architecture invariant:* this crate depends on `biota-drivers`, never
//! the other way round.

pub mod anchor;
pub mod api;
pub mod cdm;
pub mod command;
pub mod config;
pub mod control;
pub mod export;
pub mod live;
pub mod metrics;
pub mod normalize;
pub mod pipeline;
pub mod store;
pub mod systemd;
pub mod time;
pub mod uplink;

pub use cdm::{Quality, Reading, Value, ValueKind};
pub use config::GatewayConfig;
pub use pipeline::Gateway;

/// Exit code when the store cannot be opened or written at start
/// (sysexits' EX_IOERR): disk full, read-only state directory, corrupt file.
pub const EXIT_STORE: i32 = 74;
