//! The chain as the operator's commands use it: `transact` sends one
//! transaction and waits for its receipt (`contract deploy`,
//! `contract authorize`); `check_onchain` is the on-chain half of
//! `verify`.

use std::time::{Duration, Instant};

use alloy::consensus::TxEip1559;
use alloy::network::TransactionBuilder;
use alloy::primitives::{B256, Bytes, TxKind, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{BlockNumberOrTag, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;

use super::contract::{IBiotaAnchor, sol_reading};
use super::{ChainError, call, provider, rpc_err, send_signed};
use crate::anchor::config::parse_address;
use crate::anchor::proof::{Check, ProofBundle, hash_of};

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

/// The checks of a proof bundle against the chain: the contract holds the
/// batch's root and hash, its own `verifyReading` accepts the reading,
/// the anchoring transaction is in the bundle's block, and that block
/// has at least `min_confirmations`.
pub async fn check_onchain(b: &ProofBundle, rpc: &str, min_confirmations: u64) -> Vec<Check> {
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
    let (Ok(contract), Ok(gateway)) = (
        parse_address(&anchor.contract),
        parse_address(&anchor.gateway),
    ) else {
        push(
            "anchor",
            false,
            "malformed contract or gateway address".into(),
        );
        return checks;
    };
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
