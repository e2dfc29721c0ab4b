//! The control socket: how the command line reaches the running service
//! (`biota-gateway write`, `biota-gateway devices`).
//!
//! A Unix stream socket, `control.sock` in the state directory, mode 0660:
//! only root and the service's group may use it. One JSON request per
//! line, one JSON answer per line:
//!
//! ```text
//! → {"op":"write","device":"plc-1","point":"setpoint","value":"21.5","verify":true}
//! ← {"ok":true,"write":{"device":"plc-1","point":"setpoint",...,"verified":true}}
//! ← {"ok":false,"error":{"kind":"not_writable","message":"point ... is not writable: ..."}}
//! → {"op":"devices"}
//! ← {"ok":true,"devices":[{"device":"plc-1","state":"online","requests":...},...],
//!    "<component>":{"messages":...,"rejected":[{"reason":...,"count":...}]},...}
//! ```
//!
//! Writes go through the one command path, [`CommandBus`]. A malformed
//! request gets an error answer; it never affects the service.
//!
//! - here: [`ControlServer`], the socket's service.
//! - [`client`]: the blocking client the command line (and the demo)
//!   use, and how answers are shown to people.

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use biota_drivers::RawValue;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::command::{CommandBus, CommandError, WriteCommand};
use crate::service::Service;
use crate::status::Status;

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// The socket's path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Write {
        device: String,
        point: String,
        /// As typed: parsed by the point's type (see `codec::encode`).
        value: String,
        #[serde(default)]
        verify: bool,
    },
    Devices,
}

/// The control socket's service: the bound socket, removed again when
/// serving ends.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    commands: CommandBus,
    status: Status,
}

impl ControlServer {
    /// Binds the socket. A socket file left by a gateway that died is
    /// replaced; one a running gateway answers on is an error.
    pub fn bind(path: &Path, commands: CommandBus, status: Status) -> std::io::Result<Self> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use: another gateway runs with this state directory",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            commands,
            status,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Service for ControlServer {
    const NAME: &'static str = "control-socket";

    /// Answers requests until `shutdown`. The socket file goes when this
    /// ends, or when the runtime drops it on the way out.
    async fn run(self, shutdown: CancellationToken) {
        let _file = SocketFile(self.path.clone());
        let (bus, status) = (self.commands, self.status);
        let connections = tokio_util::task::TaskTracker::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let slot = tokio::select! {
                () = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => slot,
            };
            let Ok(slot) = slot else { break };
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (bus, status, shutdown) = (bus.clone(), status.clone(), shutdown.clone());
            connections.spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = connection(stream, &bus, &status) => {}
                }
                drop(slot);
            });
        }
        // Connections end at the token too; wait for them so none
        // outlives the service.
        connections.close();
        connections.wait().await;
    }
}

/// Removes the socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn connection(stream: UnixStream, bus: &CommandBus, status: &Status) {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut lines).take(MAX_REQUEST as u64 + 1);
        let read = match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return,
        };
        let answer = if read > MAX_REQUEST {
            error(
                "bad_request",
                format!("a request is at most {MAX_REQUEST} bytes"),
            )
        } else {
            answer(&line, bus, status).await
        };
        let mut text = answer.to_string();
        text.push('\n');
        // A client that does not read its answers does not hold a slot.
        let sent = tokio::time::timeout(IDLE, write.write_all(text.as_bytes())).await;
        if !matches!(sent, Ok(Ok(()))) || read > MAX_REQUEST {
            return;
        }
    }
}

async fn answer(line: &[u8], bus: &CommandBus, status: &Status) -> Json {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return error("bad_request", format!("not a valid request: {e}")),
    };
    match request {
        Request::Write {
            device,
            point,
            value,
            verify,
        } => {
            let command = WriteCommand {
                device,
                point,
                value: RawValue::Text(value),
                verify,
            };
            match bus.write(command).await {
                Ok(outcome) => json!({ "ok": true, "write": outcome }),
                Err(e) => command_error(&e),
            }
        }
        Request::Devices => {
            let mut answer = status.json();
            answer["ok"] = json!(true);
            answer
        }
    }
}

fn command_error(e: &CommandError) -> Json {
    error(e.kind(), e.to_string())
}

fn error(kind: &str, message: String) -> Json {
    json!({ "ok": false, "error": { "kind": kind, "message": message } })
}
