//! Modbus TCP and RTU (work in progress, issue #3): the register codec and
//! the coalescing planner. The polling tasks, the configuration wiring
//! and writes follow; until then `[drivers]` has no `modbus` table, so no
//! configuration can ask for a Modbus device this build cannot poll.

pub mod codec;
pub mod config;
pub mod plan;
