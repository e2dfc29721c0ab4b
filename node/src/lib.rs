//! The Neumann node: what a gateway lends its peers and borrows from them.
//!
//! Storage (encrypted, erasure-coded history shards over libp2p, audited
//! and credited), the WASM contract runtime, and contract jobs run on
//! peers. This crate never depends on `biota-drivers` or `biota-gateway`
//! (docs/ARCHITECTURE.md, "Dependency direction"): where it needs the
//! gateway's data it defines a trait, and the gateway implements it.
