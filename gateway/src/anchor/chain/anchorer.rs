//! The anchoring loop: each round asks the contract for the gateway's
//! next index (the contract is the source of truth for what is on-chain,
//! so a restart, an outage or a reorg that dropped an anchor all lead to
//! the same step), records confirmations, follows the transaction in
//! flight (replacing it with higher fees when it is not mined in time)
//! and sends the next batches with `anchorMany`. The database's `batches`
//! table is the durable queue; a batch's anchor is recorded there only
//! once it has its confirmations.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use alloy::consensus::TxEip1559;

use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{BlockNumberOrTag, Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent};
use tokio_util::sync::CancellationToken;

use super::contract::{IBiotaAnchor, anchor_input};
use super::{ChainError, call, load_key, provider, rpc_err, send_signed, underpriced};
use crate::anchor::batch::{AnchorRecord, Batches, record_anchor};
use crate::anchor::config::EvmConfig;
use crate::store::config::Synchronous;

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
            "address": *self.address.lock().unwrap_or_else(|e| e.into_inner()),
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
            "last_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
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
        synchronous: Synchronous,
    ) -> Result<Self, ChainError> {
        let signer = load_key(key_file)?;
        let provider = provider(config.rpc.text())?;
        // Validation refuses a configuration whose address does not parse.
        let contract = config.contract.value().map(|a| a.0).ok_or_else(|| {
            ChainError::Refused(format!("`{}` is not an address", config.contract))
        })?;
        let conn = crate::store::schema::open_side_writer(db, synchronous)?;
        let stats = Arc::new(ChainStats::default());
        *stats.address.lock().unwrap_or_else(|e| e.into_inner()) = signer.address().to_string();
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

    /// Rounds until `shutdown`, backing off while the chain is away (the
    /// anchorer's service runs this).
    pub async fn rounds(mut self, shutdown: CancellationToken) {
        let poll = self.config.poll_interval;
        let mut delay = poll;
        let mut last_logged: Option<(String, Instant)> = None;
        loop {
            match self.round().await {
                Ok(()) => {
                    delay = poll;
                    self.stats.reachable.store(true, Relaxed);
                    *self
                        .stats
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = None;
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
                    *self
                        .stats
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(message);
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
            self.config.rpc.text(),
            self.contract,
            Some(self.address()),
            c,
        )
        .await
    }

    fn rpc(&self) -> impl Fn(alloy::transports::TransportError) -> ChainError + '_ {
        rpc_err(self.config.rpc.text())
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
        let rpc = self.config.rpc.to_string();
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
                    local: alloy::hex::encode_prefixed(batch.hash),
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
                anchored_at: biota_common::time::now_ns(),
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
        send_signed(&self.provider, self.config.rpc.text(), &self.signer, tx).await
    }
}
