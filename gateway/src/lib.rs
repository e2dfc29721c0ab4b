//! The BIOTA Edge gateway's core: everything between the drivers and the
//! outside world, and the assembly of the running service.
//!
//! | module | owns |
//! |---|---|
//! | [`gateway`] | the one place the running gateway is assembled, started and stopped in order |
//! | [`service`] | the lifecycle every service shares (`new` + `run(shutdown)`, stages, bounded stop) |
//! | [`config`] | the TOML file: composition of the modules' sections, loading, errors with lines |
//! | [`pipeline`] | `[pipeline]` and the normalizer stage between drivers and the writer |
//! | [`normalize`] | device profiles (`[profiles]`): raw samples → readings |
//! | [`cdm`] | the Common Data Model: `Reading`, validation, canonical encoding, leaf hash |
//! | [`store`] | SQLite (`[store]`): schema, the one writer, retention, queries |
//! | [`anchor`] | sealing batches, proofs, audit, the EVM backend (`[anchor]`) |
//! | [`uplink`] | store-and-forward to a northbound broker (`[uplink]`) |
//! | [`api`] | the local HTTP API (`[api]`), Prometheus `/metrics`, the web console; bearer tokens |
//! | [`control`] | the control socket: the command line's way into the running service |
//! | [`command`] | the one command path into devices (writes), with profile scaling undone |
//! | [`status`] | what the gateway reports about itself: pipeline, devices, each component |
//! | [`metrics`] | the pipeline's counters |
//! | [`live`] | committed readings fanned out to live subscribers (bounded, never blocks the writer) |
//! | [`export`] | readings and buckets as CSV cells and JSON, for the CLI and the API |
//! | [`systemd`] | readiness, status, the watchdog, signal handling |
//! | [`logging`] | `[log]` and the log subscriber |
//!
//! The binary (`src/main.rs`, `src/cli/`) is glue: the service (`run`)
//! and the operator's commands. Developer tools (the demo, benchmarks,
//! simulators) are in the `biota-dev` and `biota-devkit` crates.
//!
//! *Architecture invariant:* this crate depends on `biota-drivers` and
//! `biota-common`, never the other way round; no module imports from a
//! module above it in the table's layering (config and gateway at the top).

pub mod anchor;
pub mod api;
pub mod cdm;
pub mod command;
pub mod config;
pub mod control;
pub mod export;
pub mod gateway;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod normalize;
pub mod pipeline;
pub mod service;
pub mod status;
pub mod store;
pub mod systemd;
pub mod uplink;

pub use cdm::{Quality, Reading, Value, ValueKind};
pub use config::GatewayConfig;
pub use gateway::{Gateway, Paths};

/// Exit code when the store cannot be opened or written at start
/// (sysexits' EX_IOERR): disk full, read-only state directory, corrupt file.
pub const EXIT_STORE: i32 = 74;
