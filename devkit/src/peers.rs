//! Third-party peers the tools start beside the gateway: Mosquitto (the
//! MQTT benchmark's reference broker) and anvil (the demo's local chain).
//! Each runs as a child process that is killed when its [`Peer`] drops,
//! on a loopback port nobody used a moment before.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address nobody listens on right now.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts Mosquitto (Debian package `mosquitto`) on a free loopback port
/// with `extra` lines of configuration, its config file in `dir`; returns
/// once it accepts connections.
pub fn mosquitto(dir: &Path, extra: &str) -> anyhow::Result<Peer> {
    let address = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n{extra}",
            address.port()
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting mosquitto (Debian package `mosquitto`)")?;
    let peer = Peer { child, address };
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(address).is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto does not listen on {address}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(peer)
}

/// The anvil binary (a local EVM node), if one is installed:
/// `$BIOTA_ANVIL_BIN`, `hil-tests/node_modules` after `npm ci` (relative
/// to the working directory), or the PATH.
pub fn find_anvil() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("BIOTA_ANVIL_BIN") {
        return Some(PathBuf::from(bin));
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let local = Path::new("hil-tests/node_modules/@foundry-rs")
        .join(format!("anvil-linux-{arch}"))
        .join("bin/anvil");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("anvil"))
            .find(|p| p.is_file())
    })
}

/// Starts anvil on a free loopback port (chain id 31337, a block a
/// second). The caller waits for its JSON-RPC to answer.
pub fn anvil(bin: &Path) -> anyhow::Result<Peer> {
    let address = free_port()?;
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &address.port().to_string()])
        .args(["--chain-id", "31337", "--block-time", "1", "--silent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(Peer { child, address })
}
