//! Commands into drivers: writing a point of a device.
//!
//! A driver that takes writes hands out one [`CommandSender`] per device
//! (several devices on one link share the link's queue, so a write is
//! serialized with that link's polls). The gateway routes every write —
//! from the CLI, the API or a contract — through these queues: there is
//! one command path. The driver answers each [`WriteRequest`] on its
//! `reply` channel with a [`WriteReport`] or a [`WriteError`].

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::RawValue;

/// How many writes may wait for one link before callers are told it is busy.
pub const COMMAND_QUEUE: usize = 16;

/// A write of one point, in the device's own units (the gateway has
/// already undone the profile's scale and offset).
#[derive(Debug)]
pub struct WriteRequest {
    pub device: Arc<str>,
    /// The point's name in the driver's map (before profile renames).
    pub point: String,
    pub value: RawValue,
    /// Read the value back and compare, whatever the point's config says.
    pub verify: bool,
    pub reply: oneshot::Sender<Result<WriteReport, WriteError>>,
}

/// What was written, for the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteReport {
    /// The protocol operation, e.g. `write_multiple_registers (16)`.
    pub operation: String,
    /// Where, e.g. `holding_register 100..101`.
    pub target: String,
    /// What went to the device, in the protocol's own units.
    pub sent: Sent,
    /// The value was read back and matched.
    pub verified: bool,
}

/// Data as it went to (or came back from) a device, in the protocol's own
/// units. Serialized as `{"registers": [125]}`, `{"bits": [true]}` or
/// `{"payload": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sent {
    /// 16-bit registers (Modbus holding registers).
    Registers(Vec<u16>),
    /// Single bits (Modbus coils, digital outputs).
    Bits(Vec<bool>),
    /// A message body (a topic's or a resource's payload), as text.
    Payload(String),
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sent::Registers(words) => write!(f, "registers {words:?}"),
            Sent::Bits(bits) => write!(f, "bits {bits:?}"),
            Sent::Payload(text) => write!(f, "payload {text:?}"),
        }
    }
}

/// Why a write did not happen (or did not stick).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("device {device} has no point {point}")]
    UnknownPoint { device: String, point: String },
    #[error("point {point} of device {device} is not writable: {why}")]
    NotWritable {
        device: String,
        point: String,
        why: String,
    },
    #[error("cannot write {value} to {point}: {why}")]
    BadValue {
        point: String,
        value: String,
        why: String,
    },
    #[error("device {device} is offline: {why}")]
    Offline { device: String, why: String },
    #[error("device {device} refused the write: {why}")]
    Refused { device: String, why: String },
    #[error("device {device} did not answer the write within {timeout:?}")]
    Timeout {
        device: String,
        timeout: std::time::Duration,
    },
    #[error("the link to device {device} failed during the write: {why}")]
    Link { device: String, why: String },
    #[error("read-back of {point} does not match: wrote {wrote}, read {read}")]
    Mismatch {
        point: String,
        wrote: Sent,
        read: Sent,
    },
    #[error("{point} was written (the device acknowledged it) but reading it back failed: {why}")]
    VerifyFailed { point: String, why: String },
    #[error("{device}'s link has {COMMAND_QUEUE} writes waiting; try again")]
    Busy { device: String },
    #[error("the driver of {device} has stopped")]
    Stopped { device: String },
}

impl WriteError {
    /// A stable, machine-readable name.
    pub fn kind(&self) -> &'static str {
        match self {
            WriteError::UnknownPoint { .. } => "unknown_point",
            WriteError::NotWritable { .. } => "not_writable",
            WriteError::BadValue { .. } => "bad_value",
            WriteError::Offline { .. } => "offline",
            WriteError::Refused { .. } => "refused",
            WriteError::Timeout { .. } => "timeout",
            WriteError::Link { .. } => "link",
            WriteError::Mismatch { .. } => "mismatch",
            WriteError::VerifyFailed { .. } => "verify_failed",
            WriteError::Busy { .. } => "busy",
            WriteError::Stopped { .. } => "stopped",
        }
    }
}

/// Where a device's writes go.
pub type CommandSender = mpsc::Sender<WriteRequest>;
pub type CommandReceiver = mpsc::Receiver<WriteRequest>;

/// A link's queue of writes.
pub fn command_channel() -> (CommandSender, CommandReceiver) {
    mpsc::channel(COMMAND_QUEUE)
}

/// Sends a write to its device's driver and waits for the answer.
pub async fn submit(
    sender: &CommandSender,
    device: Arc<str>,
    point: String,
    value: RawValue,
    verify: bool,
) -> Result<WriteReport, WriteError> {
    let (reply, answer) = oneshot::channel();
    let request = WriteRequest {
        device: device.clone(),
        point,
        value,
        verify,
        reply,
    };
    let stopped = || WriteError::Stopped {
        device: device.to_string(),
    };
    match sender.try_send(request) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return Err(WriteError::Busy {
                device: device.to_string(),
            });
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
    }
    answer.await.unwrap_or_else(|_| Err(stopped()))
}
