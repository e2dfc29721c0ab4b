//! The demo's local chain: when anvil is installed (`hil-tests/node_modules`
//! after `npm ci`, `$BIOTA_ANVIL_BIN`, or on the PATH), the demo starts it,
//! deploys the anchor contract, authorizes a fresh gateway key and anchors
//! to it; afterwards it prints one reading's proof and its verification.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use biota_gateway::anchor::chain::{self, CONTRACT_BYTECODE, IBiotaAnchor};
use biota_gateway::anchor::config::{AnchorBackend, EvmConfig};
use biota_gateway::anchor::proof::{self, TreeCache};
use biota_gateway::config::GatewayConfig;
use biota_gateway::store::StoreReader;

use alloy::primitives::{Bytes, TxKind};
use alloy::providers::Provider;
use alloy::sol_types::SolCall;

/// anvil's first well-known development key (its default mnemonic): a
/// public test key, used only to own the demo's throwaway contract.
const ANVIL_DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

pub use biota_devkit::peers::find_anvil;

/// A running anvil, killed when dropped.
pub struct LocalChain {
    _anvil: biota_devkit::peers::Peer,
    pub rpc: String,
    pub contract: String,
}

/// Starts anvil, deploys the contract, authorizes a new gateway key in
/// `dir`, and points `config` at it.
pub async fn start(
    anvil: &Path,
    dir: &Path,
    config: &mut GatewayConfig,
) -> anyhow::Result<LocalChain> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let anvil = biota_devkit::peers::anvil(anvil)?;
    let rpc = format!("http://{}", anvil.address);
    let mut chain = LocalChain {
        _anvil: anvil,
        rpc: rpc.clone(),
        contract: String::new(),
    };
    let provider = chain::provider(&rpc)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while provider.get_chain_id().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "anvil did not answer on {rpc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner_key = dir.join("contract-owner.key");
    write_key(&owner_key, ANVIL_DEV_KEY)?;
    let owner = chain::load_key(&owner_key)?;
    let code = alloy::hex::decode(CONTRACT_BYTECODE.trim())
        .ok()
        .context("contract bytecode")?;
    let receipt =
        chain::transact(&provider, &rpc, &owner, TxKind::Create, Bytes::from(code)).await?;
    let contract = receipt
        .contract_address
        .context("the deployment names no contract")?;
    let key_file = dir.join("anchor.key");
    let gateway = chain::generate_key(&key_file)?.address();
    let input = IBiotaAnchor::setGatewayCall {
        gateway,
        allowed: true,
    }
    .abi_encode();
    chain::transact(
        &provider,
        &rpc,
        &owner,
        TxKind::Call(contract),
        input.into(),
    )
    .await?;
    // The gateway pays for its anchors.
    provider
        .raw_request::<_, ()>(
            "anvil_setBalance".into(),
            (gateway, "0x56bc75e2d63100000"), // 100 ETH
        )
        .await
        .context("funding the gateway's account")?;
    chain.contract = contract.to_string();
    config.anchor.backend = AnchorBackend::Evm;
    config.anchor.batch_max_age = Duration::from_secs(2);
    config.anchor.evm = Some(EvmConfig {
        rpc: biota_common::config::Parsed::new(&rpc),
        contract: biota_gateway::anchor::config::EvmAddress(contract).into(),
        chain_id: Some(31337),
        key_file,
        confirmations: 1,
        max_fee_gwei: 200.0,
        max_priority_fee_gwei: 2.0,
        resubmit_after: Duration::from_secs(20),
        max_batches_per_tx: 16,
        poll_interval: Duration::from_millis(500),
    });
    Ok(chain)
}

fn write_key(path: &Path, hex: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    writeln!(options.open(path)?, "{hex}")?;
    Ok(())
}

/// Prints the anchoring summary, one proof and its verification.
pub async fn show_proof(db: &Path, rpc: Option<&str>) -> anyhow::Result<()> {
    let reader = StoreReader::open(db)?;
    let batches = biota_gateway::anchor::batch::Batches::new(reader.connection(), db);
    let (sealed, anchored) = batches.counts()?;
    println!("\nAnchoring");
    println!("  batches          {sealed} sealed, {anchored} anchored on-chain");
    let Some(batch) = batches
        .newest(u64::MAX, 64)?
        .into_iter()
        .find(|b| rpc.is_none() || b.anchor.is_some())
    else {
        return Ok(());
    };
    let seq = (batch.first_seq + batch.last_seq) / 2;
    let (bundle, _) = proof::bundle(&reader, &mut TreeCache::default(), seq)?;
    println!(
        "\nExample: biota-gateway proof --seq {seq}   ({}/{} in batch {}, {} siblings)",
        bundle.reading.device,
        bundle.reading.point,
        batch.index,
        bundle.proof.len()
    );
    println!("  leaf             {}", bundle.leaf);
    println!("  batch root       {}", bundle.batch.root);
    if let Some(a) = &bundle.anchor {
        println!(
            "  anchored         tx {} in block {} of chain {} (contract {})",
            a.tx_hash, a.block_number, a.chain_id, a.contract
        );
    }
    let mut checks = proof::check_offline(&bundle);
    let verb = match rpc {
        Some(rpc) => {
            checks.extend(chain::check_onchain(&bundle, rpc, 1).await);
            format!("biota-gateway verify proof.json --rpc {rpc}")
        }
        None => "biota-gateway verify proof.json".into(),
    };
    println!("\nExample: {verb}");
    for c in &checks {
        println!(
            "  {} {:<16} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    Ok(())
}
