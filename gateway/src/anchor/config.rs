//! `[anchor]` and `[anchor.evm]`: sealing batches and anchoring them on an
//! EVM chain (`docs/anchoring.md`). Owned by anchoring; `crate::config`
//! composes it. The endpoint's URL and the contract's address are typed
//! when the file is read.

use std::path::PathBuf;
use std::time::Duration;

use alloy::primitives::Address;
use biota_common::config::{ConfigError, FromText, Parsed, Problems, Validate};
use biota_common::time::serde_duration;
use serde::Deserialize;

/// The largest batch: 4 Mi readings (128 MiB of leaves).
pub const MAX_BATCH_READINGS: usize = 4 << 20;

/// `[anchor]`: see `docs/anchoring.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorConfig {
    /// Seal batches at all. Default: true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A batch is sealed when it holds this many readings. Default: 10000.
    #[serde(default = "default_batch_max_readings")]
    pub batch_max_readings: usize,
    /// …or when its oldest reading has waited this long. Default: `60s`.
    #[serde(default = "default_batch_max_age", with = "serde_duration")]
    pub batch_max_age: Duration,
    /// `none` (the local hash chain only, default) or `evm`.
    #[serde(default)]
    pub backend: AnchorBackend,
    /// `[anchor.evm]`: the chain, required with `backend = "evm"`.
    #[serde(default)]
    pub evm: Option<EvmConfig>,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_max_readings: default_batch_max_readings(),
            batch_max_age: default_batch_max_age(),
            backend: AnchorBackend::None,
            evm: None,
        }
    }
}

/// Where batch roots go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorBackend {
    /// Only the local hash chain.
    #[default]
    None,
    /// An EVM chain through JSON-RPC and the anchor contract.
    Evm,
}

/// `[anchor.evm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmConfig {
    /// JSON-RPC endpoint, `http://` or `https://`.
    pub rpc: Parsed<HttpUrl>,
    /// The anchor contract's address, `0x` and 40 hex digits.
    pub contract: Parsed<EvmAddress>,
    /// The chain id the endpoint must report; checked before anything is
    /// sent. Default: whatever the endpoint reports.
    #[serde(default)]
    pub chain_id: Option<u64>,
    /// The gateway's secp256k1 key (hex), created by `biota-gateway
    /// keygen`; must be mode 0600. Relative to the state directory.
    /// Default: `anchor.key`.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Blocks on top of (and including) the anchor's block before it
    /// counts as final. Default: 2.
    #[serde(default = "default_confirmations")]
    pub confirmations: u64,
    /// Cap on the fee per gas, in gwei. Default: 200.
    #[serde(default = "default_max_fee_gwei")]
    pub max_fee_gwei: f64,
    /// Cap on the priority fee (tip) per gas, in gwei. Default: 2.
    #[serde(default = "default_max_priority_fee_gwei")]
    pub max_priority_fee_gwei: f64,
    /// A transaction not mined after this long is sent again with higher
    /// fees (same nonce). Default: `60s`.
    #[serde(default = "default_resubmit_after", with = "serde_duration")]
    pub resubmit_after: Duration,
    /// Most batches in one transaction (catching up after an outage). Default: 16.
    #[serde(default = "default_max_batches_per_tx")]
    pub max_batches_per_tx: usize,
    /// How often the chain is asked for news. Default: `2s`.
    #[serde(default = "default_poll_interval", with = "serde_duration")]
    pub poll_interval: Duration,
}

fn default_batch_max_readings() -> usize {
    10_000
}
fn default_batch_max_age() -> Duration {
    Duration::from_secs(60)
}
fn default_key_file() -> PathBuf {
    "anchor.key".into()
}
fn default_confirmations() -> u64 {
    2
}
fn default_max_fee_gwei() -> f64 {
    200.0
}
fn default_max_priority_fee_gwei() -> f64 {
    2.0
}
fn default_resubmit_after() -> Duration {
    Duration::from_secs(60)
}
fn default_max_batches_per_tx() -> usize {
    16
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(2)
}

fn yes() -> bool {
    true
}

/// Parses `0x` and 40 hex digits (any case; no checksum is required).
pub fn parse_address(s: &str) -> Result<Address, String> {
    let bad = || format!("`{s}` is not an address (0x and 40 hex digits)");
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(bad)?;
    if digits.len() != 40 {
        return Err(bad());
    }
    digits.parse().map_err(|_| bad())
}

/// An EVM address in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvmAddress(pub Address);

impl FromText for EvmAddress {
    fn from_text(text: &str) -> Result<Self, String> {
        parse_address(text).map(Self)
    }
}

impl std::fmt::Display for EvmAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses an `http://` or `https://` URL.
pub fn parse_http_url(s: &str) -> Result<reqwest::Url, String> {
    let bad = || format!("`{s}` is not an http:// or https:// URL");
    let url: reqwest::Url = s.parse().map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad());
    }
    Ok(url)
}

/// An `http://` or `https://` URL in configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(pub reqwest::Url);

impl FromText for HttpUrl {
    fn from_text(text: &str) -> Result<Self, String> {
        parse_http_url(text).map(Self)
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Validate for AnchorConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut p = Problems::new(path, errors);
        p.range(
            "batch_max_readings",
            self.batch_max_readings,
            1,
            MAX_BATCH_READINGS,
        );
        if self.batch_max_age < Duration::from_millis(100) {
            p.add("batch_max_age", "must be at least 100ms");
        }
        match (&self.backend, &self.evm) {
            (AnchorBackend::Evm, None) => p.add(
                "evm",
                "backend = \"evm\" needs an [anchor.evm] section (rpc, contract)",
            ),
            (AnchorBackend::Evm, Some(_)) if !self.enabled => p.add(
                "enabled",
                "backend = \"evm\" anchors sealed batches: sealing must be enabled",
            ),
            _ => {}
        }
        let Some(evm) = &self.evm else { return };
        p.parsed("evm.rpc", &evm.rpc);
        p.parsed("evm.contract", &evm.contract);
        p.range("evm.confirmations", evm.confirmations, 1, 10_000);
        for (key, v) in [
            ("max_fee_gwei", evm.max_fee_gwei),
            ("max_priority_fee_gwei", evm.max_priority_fee_gwei),
        ] {
            if !v.is_finite() || v <= 0.0 || v > 1e9 {
                p.add(
                    &format!("evm.{key}"),
                    format!("must be a positive number of gwei, got {v}"),
                );
            }
        }
        if evm.max_priority_fee_gwei > evm.max_fee_gwei {
            p.add("evm.max_priority_fee_gwei", "must not exceed max_fee_gwei");
        }
        p.range("evm.max_batches_per_tx", evm.max_batches_per_tx, 1, 256);
        if evm.poll_interval < Duration::from_millis(50) || evm.resubmit_after.is_zero() {
            p.add(
                "evm.poll_interval",
                "poll_interval must be at least 50ms and resubmit_after positive",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_urls_are_typed_with_clear_errors() {
        assert!(parse_address("0x00000000000000000000000000000000000000aA").is_ok());
        for bad in [
            "",
            "0x12",
            "00000000000000000000000000000000000000aa",
            "0xzz00000000000000000000000000000000000000",
        ] {
            let e = parse_address(bad).expect_err(bad);
            assert!(e.contains("is not an address"), "{e}");
        }
        assert!(parse_http_url("https://rpc.example:8545/x").is_ok());
        for bad in ["ws://rpc", "rpc.example", "http://"] {
            let e = parse_http_url(bad).expect_err(bad);
            assert!(e.contains("http:// or https://"), "{e}");
        }
    }
}
