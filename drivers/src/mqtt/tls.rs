//! The embedded broker's TLS listener, which we terminate ourselves and
//! hand to the broker's plain listener on loopback (so client
//! certificates can be optional, which rumqttd's own TLS cannot do).
//! The certificate handling itself is `biota_common::tls`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use biota_common::tls::{ClientTls, TlsError, server_config};
use rustls::ServerConfig;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The rumqttc transport for a client's TLS configuration (upstream
/// brokers; the gateway's uplink builds its own the same way).
pub fn transport(tls: &ClientTls) -> Result<rumqttc::Transport, TlsError> {
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(tls.client_config()?)),
    ))
}

/// `[drivers.mqtt.broker.tls]`: the broker's TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// Where TLS clients connect, e.g. `0.0.0.0:8883`.
    pub listen: SocketAddr,
    /// PEM certificate chain of the broker.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate(s): when set, clients must present a
    /// certificate signed by it. Default: none (server authentication only).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        server_config(&self.cert, &self.key, self.client_ca.as_deref())
    }
}

/// Accepts TLS clients on `listener` and relays each, decrypted, to the
/// broker's plain listener at `plain`, until `shutdown`. A handshake that
/// fails (no or a wrong client certificate, not TLS at all) only ends that
/// connection.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    plain: SocketAddr,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT TLS listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let mut tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "MQTT TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "MQTT TLS handshake timed out");
                    return;
                }
            };
            let Ok(mut broker) = TcpStream::connect(plain).await else {
                tracing::error!(%plain, "MQTT TLS: the broker's plain listener does not answer");
                return;
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut tls, &mut broker) => {}
            }
        });
    }
}
