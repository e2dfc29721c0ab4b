//! TLS for MQTT, with rustls (ring): the embedded broker's TLS listener,
//! which we terminate ourselves and hand to the broker's plain listener on
//! loopback (so client certificates can be optional, which rumqttd's own
//! TLS cannot do), and the client side of the uplink and upstream
//! subscriptions (a CA to trust, optionally a client certificate).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Why TLS could not be set up: the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {path}: {reason}")]
pub struct TlsError {
    pub path: PathBuf,
    pub reason: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError {
        path: path.to_owned(),
        reason: format!("no usable PEM private key: {e}"),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store.add(cert).map_err(|e| TlsError {
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

/// `tls = { ca = ..., cert = ..., key = ... }` of a client (uplink, upstream).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM file of the CA certificate(s) to trust for the broker.
    pub ca: PathBuf,
    /// PEM client certificate chain, for brokers that want one (mTLS).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its PEM private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Checks what the config alone can: a certificate needs its key.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert, &self.key) {
            (Some(_), None) => Err("cert needs key".into()),
            (None, Some(_)) => Err("key needs cert".into()),
            _ => Ok(()),
        }
    }

    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                path: self.ca.clone(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots(&self.ca)?);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key_path)) => builder
                .with_client_auth_cert(certs(cert)?, key(key_path)?)
                .map_err(|e| TlsError {
                    path: cert.clone(),
                    reason: e.to_string(),
                }),
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    /// The rumqttc transport for this configuration.
    pub fn transport(&self) -> Result<rumqttc::Transport, TlsError> {
        Ok(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(self.client_config()?)),
        ))
    }
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

/// A rustls server configuration (ring) from PEM files: the certificate
/// chain, its key and, when clients must present a certificate, the CA
/// that signs theirs. Shared by the broker's TLS listener and the
/// gateway's HTTP API.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError {
                        path: ca.to_owned(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| TlsError {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })
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
