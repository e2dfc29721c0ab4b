//! The EVM backend: anchors sealed batches with the anchor contract
//! (`contracts/BiotaAnchor.sol`), follows them to their confirmation
//! depth, and answers the on-chain checks of `verify`.
//!
//! The contract is the source of truth for what is on-chain: each round
//! asks it for the gateway's next index, so a restart, an outage or a
//! reorg that dropped an anchor all lead to the same step — send the
//! batches from that index on, in order. The database's `batches` table is
//! the durable queue; a batch's anchor is recorded there only once it has
//! its confirmations.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{TransactionBuilder, TxSignerSync};
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{BlockNumberOrTag, Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent, SolInterface};
use tokio_util::sync::CancellationToken;

use super::batch::{AnchorRecord, Batch, Batches, record_anchor};
use crate::cdm::{Reading, Value, hex};
use crate::config::EvmConfig;

alloy::sol! {
    /// The anchor contract's interface (contracts/BiotaAnchor.sol).
    interface IBiotaAnchor {
        struct Reading {
            uint64 seq;
            int64 ts;
            uint8 quality;
            string device;
            string point;
            string unit;
            string source;
            uint8 kind;
            bytes value;
        }
        struct Batch {
            bytes32 root;
            bytes32 batchHash;
            uint64 firstSeq;
            uint64 lastSeq;
            uint64 count;
            uint64 blockNumber;
        }
        struct BatchHeader {
            uint64 index;
            uint64 firstSeq;
            uint64 lastSeq;
            uint64 count;
            bytes32 root;
            bytes32 prevHash;
        }
        error NotOwner();
        error ZeroAddress();
        error NotAuthorized();
        error WrongIndex(uint64 expected, uint64 got);
        error WrongPrevHash(bytes32 expected, bytes32 got);
        error WrongFirstSeq(uint64 expected, uint64 got);
        error BadRange();
        error InvalidReading(uint8 field);
        event Anchored(address indexed gateway, uint64 indexed index, uint64 firstSeq, uint64 lastSeq, uint64 count, bytes32 root, bytes32 batchHash);
        function owner() external view returns (address);
        function setGateway(address gateway, bool allowed) external;
        function authorized(address gateway) external view returns (bool);
        function anchor(uint64 index, uint64 firstSeq, uint64 lastSeq, uint64 count, bytes32 root, bytes32 prevHash) external;
        function anchorMany(BatchHeader[] calldata batches) external;
        function nextIndex(address gateway) external view returns (uint64);
        function batchOf(address gateway, uint64 index) external view returns (Batch memory);
        function leafOf(Reading calldata r) external pure returns (bytes32);
        function verifyLeaf(address gateway, uint64 index, uint64 position, bytes32 leaf, bytes32[] calldata proof) external view returns (bool);
        function verifyReading(address gateway, uint64 index, Reading calldata r, bytes32[] calldata proof) external view returns (bool);
    }
}

/// The contract's deployment bytecode, as compiled by `contracts/build.sh`.
pub const CONTRACT_BYTECODE: &str = include_str!("../../../contracts/build/BiotaAnchor.bin");

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

/// Reads the gateway's key: hex, one line, readable by its owner only.
pub fn load_key(path: &Path) -> Result<PrivateKeySigner, ChainError> {
    let bad = |reason: String| ChainError::Key {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        bad(format!(
            "{e} (create one with `biota-gateway keygen --out {}`)",
            path.display()
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:04o} lets others read the key; run `chmod 600 {}`",
                path.display()
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let bytes = crate::cdm::unhex(text.trim())
        .filter(|b| b.len() == 32)
        .ok_or_else(|| bad("not a secp256k1 key (64 hex digits)".into()))?;
    PrivateKeySigner::from_slice(&bytes).map_err(|e| bad(format!("not a valid key: {e}")))
}

/// Writes a new random key with mode 0600; refuses to overwrite one.
pub fn generate_key(path: &Path) -> Result<PrivateKeySigner, ChainError> {
    use std::io::Write;
    let bad = |reason: String| ChainError::Key {
        path: path.to_owned(),
        reason,
    };
    let signer = PrivateKeySigner::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            bad("exists already; a gateway keeps its key (remove it first to replace it)".into())
        } else {
            bad(e.to_string())
        }
    })?;
    writeln!(file, "0x{}", hex(signer.to_bytes().as_slice()))
        .and_then(|()| file.sync_all())
        .map_err(|e| bad(e.to_string()))?;
    Ok(signer)
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

fn rpc_err(rpc: &str) -> impl Fn(alloy::transports::TransportError) -> ChainError + '_ {
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
        Err(_) => format!("reverted with data 0x{}", hex(&data)),
    })
}

/// The contract's form of a reading.
pub fn sol_reading(r: &Reading) -> IBiotaAnchor::Reading {
    let value = match &r.value {
        Value::Bool(b) => vec![u8::from(*b)],
        Value::I64(i) => i.to_be_bytes().to_vec(),
        Value::F64(f) => f.to_bits().to_be_bytes().to_vec(),
        Value::Text(t) => t.as_bytes().to_vec(),
        Value::Bytes(b) => b.clone(),
    };
    IBiotaAnchor::Reading {
        seq: r.seq,
        ts: r.ts,
        quality: r.quality.code(),
        device: r.device.to_string(),
        point: r.point.to_string(),
        unit: r.unit.as_deref().unwrap_or("").to_string(),
        source: r.source.to_string(),
        kind: r.value.kind().code(),
        value: value.into(),
    }
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

/// What the chain side is doing, for status and metrics.
#[derive(Debug, Default)]
pub struct ChainStats {
    pub reachable: AtomicBool,
    pub chain_id: AtomicU64,
    pub head: AtomicU64,
    /// The contract's next index for this gateway (batches below it are on-chain).
    pub onchain_next: AtomicU64,
    /// Highest batch with its confirmations recorded, and its last seq.
    pub confirmed_batch: AtomicU64,
    pub anchored_seq: AtomicU64,
    /// When the last confirmation was recorded (UTC ns, 0 never).
    pub last_anchored_at: AtomicI64,
    pub txs_sent: AtomicU64,
    pub resubmissions: AtomicU64,
    pub reverts: AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
    pub address: std::sync::Mutex<String>,
}

impl ChainStats {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "address": *self.address.lock().expect("not poisoned"),
            "reachable": self.reachable.load(Relaxed),
            "chain_id": self.chain_id.load(Relaxed),
            "head": self.head.load(Relaxed),
            "onchain_next_index": self.onchain_next.load(Relaxed),
            "confirmed_batch": self.confirmed_batch.load(Relaxed),
            "anchored_seq": self.anchored_seq.load(Relaxed),
            "last_anchored_at": self.last_anchored_at.load(Relaxed),
            "txs_sent": self.txs_sent.load(Relaxed),
            "resubmissions": self.resubmissions.load(Relaxed),
            "reverts": self.reverts.load(Relaxed),
            "last_error": *self.last_error.lock().expect("not poisoned"),
        })
    }
}

/// A transaction sent and not yet mined: every hash sent with its nonce
/// (replacements included), and its fees for the next bump.
struct InFlight {
    nonce: u64,
    hashes: Vec<B256>,
    input: Bytes,
    gas: u64,
    max_fee: u128,
    priority: u128,
    sent_at: Instant,
    first_index: u64,
    batches: usize,
}

/// The anchoring loop's state.
pub struct Anchorer {
    config: EvmConfig,
    provider: DynProvider,
    signer: PrivateKeySigner,
    contract: Address,
    conn: rusqlite::Connection,
    path: PathBuf,
    chain_id: Option<u64>,
    inflight: Option<InFlight>,
    stats: Arc<ChainStats>,
}

const GWEI: f64 = 1e9;

impl Anchorer {
    pub fn new(
        config: EvmConfig,
        key_file: &Path,
        db: &Path,
        synchronous: crate::config::Synchronous,
    ) -> Result<Self, ChainError> {
        let signer = load_key(key_file)?;
        let provider = provider(&config.rpc)?;
        let contract =
            Address::from(super::parse_address(&config.contract).expect("validated by the config"));
        let conn = crate::store::schema::open_side_writer(db, synchronous)?;
        let stats = Arc::new(ChainStats::default());
        *stats.address.lock().expect("not poisoned") = signer.address().to_string();
        if let Some(last) = Batches::new(&conn, db).last_anchored()? {
            stats.confirmed_batch.store(last.index, Relaxed);
            stats.anchored_seq.store(last.last_seq, Relaxed);
            if let Some(a) = &last.anchor {
                stats.last_anchored_at.store(a.anchored_at, Relaxed);
            }
        }
        Ok(Self {
            config,
            provider,
            signer,
            contract,
            conn,
            path: db.to_owned(),
            chain_id: None,
            inflight: None,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<ChainStats> {
        self.stats.clone()
    }

    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// Rounds until `shutdown`, backing off while the chain is away.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let poll = self.config.poll_interval;
        let mut delay = poll;
        let mut last_logged: Option<(String, Instant)> = None;
        loop {
            match self.round().await {
                Ok(()) => {
                    delay = poll;
                    self.stats.reachable.store(true, Relaxed);
                    *self.stats.last_error.lock().expect("not poisoned") = None;
                }
                Err(e) => {
                    let message = e.to_string();
                    if matches!(e, ChainError::Rpc { .. }) {
                        self.stats.reachable.store(false, Relaxed);
                        self.chain_id = None;
                    }
                    // The same error at most once a minute.
                    if last_logged.as_ref().is_none_or(|(m, at)| {
                        *m != message || at.elapsed() > Duration::from_secs(60)
                    }) {
                        tracing::warn!(error = %message, "anchoring waits");
                        last_logged = Some((message.clone(), Instant::now()));
                    }
                    *self.stats.last_error.lock().expect("not poisoned") = Some(message);
                    delay = (delay * 2).min(Duration::from_secs(30)).max(poll);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn call<C: SolCall>(&self, c: &C) -> Result<C::Return, ChainError> {
        call(
            &self.provider,
            &self.config.rpc,
            self.contract,
            Some(self.address()),
            c,
        )
        .await
    }

    fn rpc(&self) -> impl Fn(alloy::transports::TransportError) -> ChainError + '_ {
        rpc_err(&self.config.rpc)
    }

    /// One round: check the chain, record confirmations, follow the
    /// transaction in flight, send the next batches.
    pub async fn round(&mut self) -> Result<(), ChainError> {
        let chain_id = match self.chain_id {
            Some(id) => id,
            None => self.connect().await?,
        };
        let head = self.provider.get_block_number().await.map_err(self.rpc())?;
        self.stats.head.store(head, Relaxed);
        let gateway = self.address();
        let next = self.call(&IBiotaAnchor::nextIndexCall { gateway }).await?;
        self.stats.onchain_next.store(next, Relaxed);
        self.confirm(chain_id, head, next).await?;
        if !self.follow_inflight().await? {
            return Ok(());
        }
        self.send_from(next).await
    }

    async fn connect(&mut self) -> Result<u64, ChainError> {
        let rpc = self.config.rpc.clone();
        let found = self.provider.get_chain_id().await.map_err(self.rpc())?;
        if let Some(expected) = self.config.chain_id
            && expected != found
        {
            return Err(ChainError::WrongChain {
                rpc,
                found,
                expected,
            });
        }
        let code = self
            .provider
            .get_code_at(self.contract)
            .await
            .map_err(self.rpc())?;
        if code.is_empty() {
            return Err(ChainError::NoContract {
                rpc,
                contract: self.contract.to_string(),
                chain_id: found,
            });
        }
        let authorized = self
            .call(&IBiotaAnchor::authorizedCall {
                gateway: self.address(),
            })
            .await?;
        if !authorized {
            return Err(ChainError::Refused(format!(
                "{} is not authorized by the contract {}; its owner must call setGateway({0}, true) \
                 (`biota-gateway contract authorize`)",
                self.address(),
                self.contract
            )));
        }
        tracing::info!(chain_id = found, contract = %self.contract, gateway = %self.address(), "anchoring to the chain");
        self.stats.chain_id.store(found, Relaxed);
        self.chain_id = Some(found);
        Ok(found)
    }

    /// Records the anchors of on-chain batches that have their confirmations.
    async fn confirm(&mut self, chain_id: u64, head: u64, next: u64) -> Result<(), ChainError> {
        loop {
            let Some(batch) = Batches::new(&self.conn, &self.path).first_unanchored()? else {
                return Ok(());
            };
            if batch.index >= next {
                return Ok(());
            }
            let gateway = self.address();
            let onchain = self
                .call(&IBiotaAnchor::batchOfCall {
                    gateway,
                    index: batch.index,
                })
                .await?;
            if onchain.batchHash.0 != batch.hash || onchain.root.0 != batch.root {
                return Err(ChainError::Diverged {
                    gateway: gateway.to_string(),
                    index: batch.index,
                    onchain: onchain.batchHash.to_string(),
                    local: format!("0x{}", hex(&batch.hash)),
                });
            }
            let block = onchain.blockNumber;
            if head + 1 < block + self.config.confirmations {
                return Ok(());
            }
            let filter = Filter::new()
                .address(self.contract)
                .event_signature(IBiotaAnchor::Anchored::SIGNATURE_HASH)
                .topic1(gateway.into_word())
                .topic2(B256::from(U256::from(batch.index)))
                .from_block(block)
                .to_block(block);
            let logs = self.provider.get_logs(&filter).await.map_err(self.rpc())?;
            let Some(log) = logs.last() else {
                // The node has not indexed the block yet, or it was reorged
                // away between the two calls: next round.
                return Ok(());
            };
            let (Some(tx_hash), Some(block_hash)) = (log.transaction_hash, log.block_hash) else {
                return Ok(());
            };
            let record = AnchorRecord {
                chain_id,
                contract: self.contract.to_vec(),
                gateway: gateway.to_vec(),
                tx_hash: tx_hash.to_vec(),
                block_number: block,
                block_hash: block_hash.to_vec(),
                anchored_at: crate::time::now_ns(),
            };
            record_anchor(&self.conn, &self.path, batch.index, &record)?;
            tracing::info!(
                batch = batch.index,
                last_seq = batch.last_seq,
                block,
                tx = %tx_hash,
                "batch anchored and confirmed"
            );
            self.stats.confirmed_batch.store(batch.index, Relaxed);
            self.stats.anchored_seq.store(batch.last_seq, Relaxed);
            self.stats
                .last_anchored_at
                .store(record.anchored_at, Relaxed);
        }
    }

    /// Follows the transaction in flight. True when nothing is in flight
    /// any more (the next batches may be sent).
    async fn follow_inflight(&mut self) -> Result<bool, ChainError> {
        let Some(f) = &self.inflight else {
            return Ok(true);
        };
        for hash in f.hashes.clone() {
            if let Some(receipt) = self
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(self.rpc())?
            {
                if !receipt.status() {
                    self.stats.reverts.fetch_add(1, Relaxed);
                    tracing::warn!(tx = %hash, first_batch = f.first_index, "an anchor transaction reverted; the next round re-reads the contract");
                }
                self.inflight = None;
                return Ok(true);
            }
        }
        let mined_nonce = self
            .provider
            .get_transaction_count(self.address())
            .await
            .map_err(self.rpc())?;
        if mined_nonce < f.nonce {
            // Only one transaction is ever in flight, sent with the mined
            // count as its nonce: a lower count now means a reorg dropped
            // earlier anchors, and this one can never be mined. Start again
            // from what the contract holds.
            tracing::warn!(
                nonce = f.nonce,
                chain_nonce = mined_nonce,
                "a reorg dropped earlier anchor transactions; sending again"
            );
            self.inflight = None;
            return Ok(true);
        }
        if mined_nonce > f.nonce {
            // Another transaction with this nonce was mined (one sent
            // before a restart): the contract's next index tells the rest.
            self.inflight = None;
            return Ok(true);
        }
        if f.sent_at.elapsed() >= self.config.resubmit_after {
            self.resubmit().await?;
        }
        Ok(false)
    }

    fn caps(&self) -> (u128, u128) {
        (
            (self.config.max_fee_gwei * GWEI) as u128,
            (self.config.max_priority_fee_gwei * GWEI) as u128,
        )
    }

    /// Fees for a new transaction: the tip the node suggests (capped) on
    /// top of twice the base fee, capped.
    async fn fees(&self) -> Result<(u128, u128), ChainError> {
        let (cap, tip_cap) = self.caps();
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(self.rpc())?;
        let base = block
            .and_then(|b| b.header.base_fee_per_gas)
            .map_or(0, u128::from);
        let tip = self
            .provider
            .get_max_priority_fee_per_gas()
            .await
            .unwrap_or(tip_cap)
            .min(tip_cap);
        let max_fee = (2 * base + tip).min(cap);
        if max_fee < base {
            tracing::warn!(
                base_fee_gwei = base as f64 / GWEI,
                cap_gwei = self.config.max_fee_gwei,
                "the base fee is above max_fee_gwei: anchors wait until it falls"
            );
        }
        Ok((max_fee.max(tip), tip))
    }

    async fn send_from(&mut self, next: u64) -> Result<(), ChainError> {
        let batches =
            Batches::new(&self.conn, &self.path).after(next - 1, self.config.max_batches_per_tx)?;
        let Some(first) = batches.first() else {
            let local_last = Batches::new(&self.conn, &self.path).last()?;
            if let Some(last) = local_last
                && last.index + 1 < next
            {
                return Err(ChainError::Diverged {
                    gateway: self.address().to_string(),
                    index: next - 1,
                    onchain: "a batch".into(),
                    local: format!("batches only up to {}", last.index),
                });
            }
            return Ok(());
        };
        if first.index != next {
            return Ok(());
        }
        let input = anchor_input(&batches);
        // Dry run first: a refusal is named without spending gas.
        let req = TransactionRequest::default()
            .from(self.address())
            .to(self.contract)
            .input(input.clone().into());
        self.provider.call(req.clone()).await.map_err(self.rpc())?;
        let estimate = self.provider.estimate_gas(req).await.map_err(self.rpc())?;
        let gas = estimate + estimate / 4 + 10_000;
        let (max_fee, priority) = self.fees().await?;
        let nonce = self
            .provider
            .get_transaction_count(self.address())
            .await
            .map_err(self.rpc())?;
        let mut f = InFlight {
            nonce,
            hashes: Vec::new(),
            input,
            gas,
            max_fee,
            priority,
            sent_at: Instant::now(),
            first_index: first.index,
            batches: batches.len(),
        };
        // A transaction of ours with this nonce may still be pooled (sent
        // before a restart, or put back by a reorg): replace it with higher
        // fees, within the caps.
        let (cap, tip_cap) = self.caps();
        let mut attempt = 0;
        let hash = loop {
            match self.send(&f).await {
                Ok(hash) => break hash,
                Err(e) if underpriced(&e) && attempt < 4 && f.max_fee < cap => {
                    attempt += 1;
                    f.max_fee = (f.max_fee + f.max_fee / 4 + 1).min(cap);
                    f.priority = (f.priority + f.priority / 4 + 1)
                        .min(tip_cap)
                        .min(f.max_fee);
                }
                Err(e) => return Err(e),
            }
        };
        f.hashes.push(hash);
        tracing::info!(
            tx = %hash,
            nonce,
            first_batch = first.index,
            batches = f.batches,
            gas,
            max_fee_gwei = max_fee as f64 / GWEI,
            "anchor transaction sent"
        );
        self.stats.txs_sent.fetch_add(1, Relaxed);
        self.inflight = Some(f);
        Ok(())
    }

    /// The same transaction again with fees raised by a quarter (nodes
    /// want at least a tenth more to replace one), within the caps.
    async fn resubmit(&mut self) -> Result<(), ChainError> {
        let (cap, tip_cap) = self.caps();
        let Some(f) = &self.inflight else {
            return Ok(());
        };
        let (current_max, current_tip) = self.fees().await?;
        let max_fee = (f.max_fee + f.max_fee / 4).max(current_max).min(cap);
        let priority = (f.priority + f.priority / 4 + 1)
            .max(current_tip)
            .min(tip_cap)
            .min(max_fee);
        if max_fee <= f.max_fee && priority <= f.priority {
            tracing::warn!(
                nonce = f.nonce,
                "an anchor transaction is stuck at the fee caps; raise max_fee_gwei to speed it up"
            );
            if let Some(f) = &mut self.inflight {
                f.sent_at = Instant::now();
            }
            return Ok(());
        }
        let mut bumped = InFlight {
            nonce: f.nonce,
            hashes: f.hashes.clone(),
            input: f.input.clone(),
            gas: f.gas,
            max_fee,
            priority,
            sent_at: Instant::now(),
            first_index: f.first_index,
            batches: f.batches,
        };
        let hash = self.send(&bumped).await?;
        bumped.hashes.push(hash);
        tracing::info!(tx = %hash, nonce = bumped.nonce, max_fee_gwei = max_fee as f64 / GWEI, "anchor transaction re-sent with higher fees");
        self.stats.resubmissions.fetch_add(1, Relaxed);
        self.inflight = Some(bumped);
        Ok(())
    }

    async fn send(&self, f: &InFlight) -> Result<B256, ChainError> {
        let tx = TxEip1559 {
            chain_id: self.chain_id.unwrap_or_default(),
            nonce: f.nonce,
            gas_limit: f.gas,
            max_fee_per_gas: f.max_fee,
            max_priority_fee_per_gas: f.priority,
            to: TxKind::Call(self.contract),
            value: U256::ZERO,
            access_list: Default::default(),
            input: f.input.clone(),
        };
        send_signed(&self.provider, &self.config.rpc, &self.signer, tx).await
    }
}

/// Signs an EIP-1559 transaction and sends it raw; its hash.
async fn send_signed(
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

fn already_known(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("already known") || m.contains("already imported") || m.contains("already exists")
}

/// A node's refusal to replace a pooled transaction of the same nonce
/// whose fees are not enough higher.
fn underpriced(e: &ChainError) -> bool {
    matches!(e, ChainError::Rpc { reason, .. } if reason.to_ascii_lowercase().contains("underpriced"))
}

/// Sends one transaction and waits (up to a minute) for its receipt: for
/// the operator's tools (`contract deploy`, `contract authorize`), not for
/// anchoring. Fails on a revert, naming the contract's error.
pub async fn transact(
    provider: &DynProvider,
    rpc: &str,
    signer: &PrivateKeySigner,
    to: TxKind,
    input: Bytes,
) -> Result<alloy::rpc::types::TransactionReceipt, ChainError> {
    let rpc_e = rpc_err(rpc);
    let from = signer.address();
    let mut req = TransactionRequest::default()
        .from(from)
        .input(input.clone().into());
    if let TxKind::Call(to) = to {
        req = req.to(to);
    } else {
        req = req.into_create();
    }
    // A dry run names a refusal before anything is signed.
    provider.call(req.clone()).await.map_err(&rpc_e)?;
    let estimate = provider.estimate_gas(req).await.map_err(&rpc_e)?;
    let chain_id = provider.get_chain_id().await.map_err(&rpc_e)?;
    let nonce = provider
        .get_transaction_count(from)
        .pending()
        .await
        .map_err(&rpc_e)?;
    let base = provider
        .get_block_by_number(BlockNumberOrTag::Latest)
        .await
        .map_err(&rpc_e)?
        .and_then(|b| b.header.base_fee_per_gas)
        .map_or(0, u128::from);
    let tip = provider
        .get_max_priority_fee_per_gas()
        .await
        .unwrap_or(1_000_000_000);
    let tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit: estimate + estimate / 4 + 10_000,
        max_fee_per_gas: 2 * base + tip,
        max_priority_fee_per_gas: tip,
        to,
        value: U256::ZERO,
        access_list: Default::default(),
        input,
    };
    let hash = send_signed(provider, rpc, signer, tx).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(receipt) = provider
            .get_transaction_receipt(hash)
            .await
            .map_err(&rpc_e)?
        {
            if !receipt.status() {
                return Err(ChainError::Refused(format!("transaction {hash} reverted")));
            }
            return Ok(receipt);
        }
        if Instant::now() > deadline {
            return Err(ChainError::Rpc {
                rpc: rpc.to_owned(),
                reason: format!("transaction {hash} not mined within a minute"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `anchorMany([...])`: one or more consecutive batches (one batch costs
/// about as much as `anchor`).
fn anchor_input(batches: &[Batch]) -> Bytes {
    IBiotaAnchor::anchorManyCall {
        batches: batches
            .iter()
            .map(|b| IBiotaAnchor::BatchHeader {
                index: b.index,
                firstSeq: b.first_seq,
                lastSeq: b.last_seq,
                count: b.count,
                root: b.root.into(),
                prevHash: b.prev_hash.into(),
            })
            .collect(),
    }
    .abi_encode()
    .into()
}

/// The checks of a proof bundle against the chain: the contract holds the
/// batch's root and hash, its own `verifyReading` accepts the reading,
/// the anchoring transaction is in the bundle's block, and that block
/// has at least `min_confirmations`.
pub async fn check_onchain(
    b: &super::proof::ProofBundle,
    rpc: &str,
    min_confirmations: u64,
) -> Vec<super::proof::Check> {
    use super::proof::{Check, hash_of};
    let mut checks = Vec::new();
    let Some(anchor) = &b.anchor else {
        checks.push(Check {
            name: "anchor",
            ok: false,
            detail: format!(
                "batch {} has no on-chain anchor in this bundle (not anchored yet, or the gateway \
                 runs without a chain); only the offline checks apply",
                b.batch.index
            ),
        });
        return checks;
    };
    let mut push = |name, ok, detail: String| checks.push(Check { name, ok, detail });
    let (Some(contract), Some(gateway)) = (
        super::parse_address(&anchor.contract),
        super::parse_address(&anchor.gateway),
    ) else {
        push(
            "anchor",
            false,
            "malformed contract or gateway address".into(),
        );
        return checks;
    };
    let (contract, gateway) = (Address::from(contract), Address::from(gateway));
    let provider = match provider(rpc) {
        Ok(p) => p,
        Err(e) => {
            push("chain", false, e.to_string());
            return checks;
        }
    };
    match provider.get_chain_id().await {
        Ok(id) => push(
            "chain_id",
            id == anchor.chain_id,
            format!(
                "the endpoint is chain {id}, the bundle says {}",
                anchor.chain_id
            ),
        ),
        Err(e) => {
            push("chain", false, rpc_err(rpc)(e).to_string());
            return checks;
        }
    }
    let index = b.batch.index;
    match call(
        &provider,
        rpc,
        contract,
        None,
        &IBiotaAnchor::batchOfCall { gateway, index },
    )
    .await
    {
        Ok(onchain) => {
            let ok = Some(onchain.root.0) == hash_of(&b.batch.root)
                && Some(onchain.batchHash.0) == hash_of(&b.batch.hash);
            push(
                "contract_root",
                ok,
                if onchain.count == 0 {
                    format!("the contract holds no batch {index} of {gateway}")
                } else if ok {
                    format!("the contract holds batch {index} of {gateway} with this root and hash")
                } else {
                    format!(
                        "the contract holds root {} and hash {} for batch {index}",
                        onchain.root, onchain.batchHash
                    )
                },
            );
        }
        Err(e) => push("contract_root", false, e.to_string()),
    }
    let proof: Vec<alloy::primitives::FixedBytes<32>> = b
        .proof
        .iter()
        .filter_map(|p| hash_of(p))
        .map(Into::into)
        .collect();
    let verify = IBiotaAnchor::verifyReadingCall {
        gateway,
        index,
        r: sol_reading(&b.reading),
        proof,
    };
    match call(&provider, rpc, contract, None, &verify).await {
        Ok(ok) => push(
            "contract_verify",
            ok,
            format!("the contract's verifyReading says {ok}"),
        ),
        Err(e) => push("contract_verify", false, e.to_string()),
    }
    let tx_hash = hash_of(&anchor.tx_hash).map(B256::from);
    let receipt = match tx_hash {
        Some(h) => provider
            .get_transaction_receipt(h)
            .await
            .map_err(rpc_err(rpc)),
        None => Ok(None),
    };
    match receipt {
        Ok(Some(r)) => {
            let block_ok = r.block_number == Some(anchor.block_number)
                && r.block_hash.map(|h| format!("{h:#x}"))
                    == Some(anchor.block_hash.to_ascii_lowercase());
            let logged = r.inner.logs().iter().any(|log| {
                log.address() == contract
                    && IBiotaAnchor::Anchored::decode_log_data(log.data())
                        .is_ok_and(|e| e.gateway == gateway && e.index == index)
            });
            push(
                "transaction",
                r.status() && block_ok && logged,
                format!(
                    "{} in block {}: status {}, {} the Anchored event of batch {index}",
                    anchor.tx_hash,
                    r.block_number.map_or("(pending)".into(), |n| n.to_string()),
                    if r.status() { "ok" } else { "reverted" },
                    if logged { "with" } else { "without" }
                ),
            );
        }
        Ok(None) => push(
            "transaction",
            false,
            format!("{} is not on this chain (reorged away?)", anchor.tx_hash),
        ),
        Err(e) => push("transaction", false, e.to_string()),
    }
    match provider.get_block_number().await {
        Ok(head) => {
            let confirmations = (head + 1).saturating_sub(anchor.block_number);
            push(
                "confirmations",
                confirmations >= min_confirmations,
                format!(
                    "{confirmations} confirmation(s) (block {} of head {head}); at least \
                     {min_confirmations} wanted",
                    anchor.block_number
                ),
            );
        }
        Err(e) => push("confirmations", false, rpc_err(rpc)(e).to_string()),
    }
    checks
}
