//! Plumbing shared by the BIOTA Edge gateway's crates (`biota-drivers`,
//! `biota-node`, `biota-gateway`): nothing here knows a protocol, the
//! Common Data Model or the store.
//!
//! | module | owns |
//! |---|---|
//! | [`channel`] | bounded, counted channels of batches between stages (backpressure) |
//! | [`config`] | a section's validation errors and the [`config::Validate`] trait; `host:port` typed at load |
//! | [`size`] | sizes (`2GiB`, `off`) in configuration |
//! | [`telemetry`] | what a running component reports: status section and metric families |
//! | [`thread`] | threads with a runtime of their own |
//! | [`time`] | durations, RFC 3339 UTC timestamps, the clock in nanoseconds |
//! | [`tls`] | rustls server and client configurations from PEM files |
//!
//! *Architecture invariant:* this crate depends on no other crate of the
//! workspace.

pub mod channel;
pub mod config;
pub mod size;
pub mod telemetry;
pub mod thread;
pub mod time;
pub mod tls;
