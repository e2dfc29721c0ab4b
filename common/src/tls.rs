//! TLS configuration with rustls and ring as the provider (aws-lc-rs
//! would add a C build): server configurations from PEM files (the MQTT
//! broker's TLS listener, the HTTP API), with optional client
//! certificates, and client configurations (the uplink, upstream
//! brokers) that trust a given CA and may present a certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;

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
}

/// A rustls server configuration (ring) from PEM files: the certificate
/// chain, its key and, when clients must present a certificate, the CA
/// that signs theirs. Shared by the MQTT broker's TLS listener
/// and the gateway's HTTP API.
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
