//! The EVM backend: anchors sealed batches with the anchor contract
//! (`contracts/BiotaAnchor.sol`), follows them to their confirmation
//! depth, and answers the on-chain checks of `verify`.
//!
//! - [`contract`]: the contract's interface (`sol!`), bytecode and the
//!   encodings of readings and batch headers for it.
//! - [`keys`]: the gateway's secp256k1 key file.
//! - [`anchorer`]: [`anchorer::Anchorer`], the anchoring loop (a service).
//! - [`tools`]: what the operator's commands use: `transact` (deploy,
//!   authorize) and `check_onchain` (`verify`).
//! - here: the JSON-RPC provider, calls, errors.

pub mod anchorer;
pub mod contract;
pub mod keys;
pub mod tools;

use std::time::Duration;

use std::path::PathBuf;

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, B256, Bytes};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolInterface};

pub use anchorer::{Anchorer, ChainStats};
pub use contract::{CONTRACT_BYTECODE, IBiotaAnchor, sol_reading};
pub use keys::{generate_key, load_key};
pub use tools::{check_onchain, transact};

/// Something the chain or the key said no to.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the chain at {rpc} cannot be reached: {reason}")]
    Rpc { rpc: String, reason: String },
    #[error("the chain at {rpc} has chain id {found}, the configuration says {expected}")]
    WrongChain {
        rpc: String,
        found: u64,
        expected: u64,
    },
    #[error("there is no contract at {contract} on chain {chain_id} ({rpc})")]
    NoContract {
        rpc: String,
        contract: String,
        chain_id: u64,
    },
    #[error("the anchor contract refuses: {0}")]
    Refused(String),
    #[error(
        "the contract holds batch {index} of {gateway} with hash {onchain}, this database has {local}: \
         another database anchored with this key; give this gateway a key of its own (`biota-gateway keygen`)"
    )]
    Diverged {
        gateway: String,
        index: u64,
        onchain: String,
        local: String,
    },
    #[error("key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A JSON-RPC connection with timeouts.
pub fn provider(rpc: &str) -> Result<DynProvider, ChainError> {
    let bad = |reason: String| ChainError::Rpc {
        rpc: rpc.to_owned(),
        reason,
    };
    let url: reqwest::Url = rpc.parse().map_err(|e| bad(format!("not a URL: {e}")))?;
    install_crypto();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| bad(e.to_string()))?;
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .connect_reqwest(client, url)
        .erased())
}

/// rustls needs a process-wide provider for reqwest; ring, as everywhere.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn rpc_err(rpc: &str) -> impl Fn(alloy::transports::TransportError) -> ChainError + '_ {
    move |e| match revert_reason(&e) {
        Some(reason) => ChainError::Refused(reason),
        None => ChainError::Rpc {
            rpc: rpc.to_owned(),
            reason: e.to_string(),
        },
    }
}

/// The contract's custom error in a failed call, in words.
fn revert_reason(e: &alloy::transports::TransportError) -> Option<String> {
    let data = e.as_error_resp()?.as_revert_data()?;
    Some(match IBiotaAnchor::IBiotaAnchorErrors::abi_decode(&data) {
        Ok(IBiotaAnchor::IBiotaAnchorErrors::NotAuthorized(_)) => {
            "NotAuthorized: this gateway's address is not authorized; the contract's owner \
                 must call setGateway(address, true)"
                .into()
        }
        Ok(IBiotaAnchor::IBiotaAnchorErrors::NotOwner(_)) => {
            "NotOwner: only the contract's owner may do this".into()
        }
        Ok(IBiotaAnchor::IBiotaAnchorErrors::WrongIndex(w)) => {
            format!("WrongIndex: expected batch {}, got {}", w.expected, w.got)
        }
        Ok(IBiotaAnchor::IBiotaAnchorErrors::WrongPrevHash(w)) => format!(
            "WrongPrevHash: the contract's previous batch hash is {}, this gateway sent {}",
            w.expected, w.got
        ),
        Ok(IBiotaAnchor::IBiotaAnchorErrors::WrongFirstSeq(w)) => format!(
            "WrongFirstSeq: the batch starts at seq {}, the contract wants {} or later",
            w.got, w.expected
        ),
        Ok(IBiotaAnchor::IBiotaAnchorErrors::ZeroAddress(_)) => {
            "ZeroAddress: the zero address cannot own the contract".into()
        }
        Ok(IBiotaAnchor::IBiotaAnchorErrors::BadRange(_)) => {
            "BadRange: the seq range does not follow the previous batch".into()
        }
        Ok(IBiotaAnchor::IBiotaAnchorErrors::InvalidReading(w)) => format!(
            "InvalidReading: field {} (docs/cdm.md's encoding table) does not fit the CDM encoding",
            w.field
        ),
        Err(_) => format!("reverted with data {}", alloy::hex::encode_prefixed(&data)),
    })
}

/// A read-only call of the contract.
pub async fn call<C: SolCall>(
    provider: &DynProvider,
    rpc: &str,
    contract: Address,
    from: Option<Address>,
    call: &C,
) -> Result<C::Return, ChainError> {
    let mut req = TransactionRequest::default()
        .to(contract)
        .input(Bytes::from(call.abi_encode()).into());
    if let Some(from) = from {
        req = req.from(from);
    }
    let out = provider.call(req).await.map_err(rpc_err(rpc))?;
    C::abi_decode_returns(&out).map_err(|e| ChainError::Rpc {
        rpc: rpc.to_owned(),
        reason: format!(
            "the contract answered something that is not {}: {e}",
            C::SIGNATURE
        ),
    })
}

/// Signs an EIP-1559 transaction and sends it raw; its hash.
pub(crate) async fn send_signed(
    provider: &DynProvider,
    rpc: &str,
    signer: &PrivateKeySigner,
    mut tx: TxEip1559,
) -> Result<B256, ChainError> {
    let signature = signer
        .sign_transaction_sync(&mut tx)
        .map_err(|e| ChainError::Key {
            path: PathBuf::from("(the gateway key)"),
            reason: format!("cannot sign: {e}"),
        })?;
    let envelope = TxEnvelope::from(tx.into_signed(signature));
    let hash = *envelope.tx_hash();
    // The pending-transaction handle is not needed: callers follow the hash.
    match provider
        .send_raw_transaction(&envelope.encoded_2718())
        .await
    {
        Ok(_pending) => Ok(hash),
        // The very same transaction is in the pool already (sent before a
        // restart, or put back by a reorg): follow it.
        Err(e) if already_known(&e.to_string()) => Ok(hash),
        Err(e) => Err(rpc_err(rpc)(e)),
    }
}

pub(crate) fn already_known(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("already known") || m.contains("already imported") || m.contains("already exists")
}

/// A node's refusal to replace a pooled transaction of the same nonce
/// whose fees are not enough higher.
pub(crate) fn underpriced(e: &ChainError) -> bool {
    matches!(e, ChainError::Rpc { reason, .. } if reason.to_ascii_lowercase().contains("underpriced"))
}
