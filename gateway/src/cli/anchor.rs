//! `keygen`, `proof`, `verify`, `audit` and `contract`: the anchoring
//! commands (`docs/anchoring.md`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use alloy::primitives::{Address, Bytes, TxKind};
use alloy::sol_types::SolCall;
use anyhow::Context;
use clap::{Args, Subcommand};

use biota_gateway::anchor::audit;
use biota_gateway::anchor::chain::{self, IBiotaAnchor};
use biota_gateway::anchor::config::parse_address;
use biota_gateway::anchor::proof::{self, Check, ProofBundle, TreeCache};
use biota_gateway::config::{GatewayConfig, state_dir};
use biota_gateway::store::StoreReader;

use super::Failure;

/// Where the database is: `--db`, else the config's `[store] path` in the
/// state directory.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// Configuration file, to find the database (`[store] path`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// State directory (default: $STATE_DIRECTORY, else /var/lib/biota).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The database file itself (overrides --config and --state-dir).
    #[arg(long)]
    pub db: Option<PathBuf>,
}

impl DbArgs {
    pub fn config(&self) -> anyhow::Result<GatewayConfig> {
        Ok(match &self.config {
            Some(file) => GatewayConfig::load(file).map_err(Failure::from)?,
            None => GatewayConfig::default(),
        })
    }

    pub fn db_path(&self) -> anyhow::Result<PathBuf> {
        match &self.db {
            Some(db) => Ok(db.clone()),
            None => Ok(self
                .config()?
                .db_path(&state_dir(self.state_dir.as_deref()))),
        }
    }

    pub fn reader(&self) -> anyhow::Result<StoreReader> {
        Ok(StoreReader::open(&self.db_path()?).map_err(Failure::from)?)
    }
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the key (mode 0600). Default: the config's
    /// `[anchor.evm] key_file` in the state directory (`anchor.key`).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    db: DbArgs,
}

/// `keygen`: a new secp256k1 key; prints its address.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.out {
        Some(p) => p.clone(),
        None => {
            let config = args.db.config()?;
            let file = config
                .anchor
                .evm
                .map_or_else(|| PathBuf::from("anchor.key"), |e| e.key_file);
            state_dir(args.db.state_dir.as_deref()).join(file)
        }
    };
    let signer = chain::generate_key(&path)?;
    println!("{}", signer.address());
    eprintln!(
        "wrote {} (mode 0600); authorize {} in the anchor contract \
         (`biota-gateway contract authorize`)",
        path.display(),
        signer.address()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ProofArgs {
    /// The reading's seq.
    #[arg(long)]
    seq: u64,
    /// Write the bundle here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    db: DbArgs,
}

/// `proof`: the bundle of one reading. Exit 1 (bundle still printed) when
/// the stored reading is not what was sealed.
pub fn proof(args: &ProofArgs) -> anyhow::Result<ExitCode> {
    let reader = args.db.reader()?;
    let (bundle, matches) = proof::bundle(&reader, &mut TreeCache::default(), args.seq)?;
    let json = serde_json::to_string_pretty(&bundle)? + "\n";
    match &args.out {
        Some(path) => std::fs::write(path, &json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().lock().write_all(json.as_bytes())?,
    }
    if !matches {
        eprintln!(
            "seq {}: the stored reading differs from the one sealed in batch {}: it was altered \
             after sealing, and this proof does not verify (run `biota-gateway audit`)",
            args.seq, bundle.batch.index
        );
        return Ok(ExitCode::FAILURE);
    }
    if bundle.anchor.is_none() {
        eprintln!(
            "note: batch {} has no confirmed on-chain anchor yet; the bundle proves it against \
             the local hash chain only",
            bundle.batch.index
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A proof bundle (`biota-gateway proof`), `-` for standard input.
    file: PathBuf,
    /// JSON-RPC endpoint of the chain the bundle names. Without it only the
    /// offline checks run.
    #[arg(long)]
    rpc: Option<String>,
    /// Confirmations the anchor must have.
    #[arg(long, default_value_t = 1)]
    confirmations: u64,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
}

/// `verify`: checks a bundle without the gateway's database. Exit 0 when
/// every check passes, 1 otherwise.
pub async fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let bundle: ProofBundle = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a proof bundle", args.file.display()))?;
    let mut checks = proof::check_offline(&bundle);
    if let Some(rpc) = &args.rpc {
        checks.extend(chain::check_onchain(&bundle, rpc, args.confirmations).await);
    }
    let ok = checks.iter().all(|c| c.ok);
    print_checks(&checks, ok, args.json)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_checks(checks: &[Check], ok: bool, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({"verified": ok, "checks": checks}),
        )?;
        writeln!(out)?;
    } else {
        for c in checks {
            writeln!(
                out,
                "{} {:<16} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        writeln!(out, "{}", if ok { "verified" } else { "NOT verified" })?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Also compare every anchored batch with the contract on this chain.
    #[arg(long)]
    rpc: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `audit`: exit 0 when nothing changed since sealing, 1 otherwise.
pub async fn audit(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let reader = args.db.reader()?;
    let mut report = audit::audit(&reader).map_err(Failure::from)?;
    if let Some(rpc) = &args.rpc {
        audit_onchain(&reader, rpc, &mut report).await?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        for f in &report.findings {
            writeln!(out, "{:<9} {}", f.kind, f.detail)?;
        }
        writeln!(
            out,
            "{} batches, {} readings checked, {} finding(s); {} deleted by retention, {} not sealed yet",
            report.batches,
            report.readings_checked,
            report.findings.len(),
            report.retired,
            report.unsealed
        )?;
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every batch with a recorded anchor must be on the contract as stored.
async fn audit_onchain(
    reader: &StoreReader,
    rpc: &str,
    report: &mut audit::AuditReport,
) -> anyhow::Result<()> {
    use biota_gateway::anchor::batch::Batches;
    let provider = chain::provider(rpc)?;
    let mut after = 0;
    loop {
        let page = Batches::new(reader.connection(), reader.path()).after(after, 256)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.index;
        for batch in page {
            let Some(anchor) = &batch.anchor else {
                continue;
            };
            let (Ok(contract), Ok(gateway)) = (
                <[u8; 20]>::try_from(anchor.contract.as_slice()),
                <[u8; 20]>::try_from(anchor.gateway.as_slice()),
            ) else {
                continue;
            };
            let onchain = chain::call(
                &provider,
                rpc,
                Address::from(contract),
                None,
                &IBiotaAnchor::batchOfCall {
                    gateway: Address::from(gateway),
                    index: batch.index,
                },
            )
            .await?;
            if onchain.root.0 != batch.root || onchain.batchHash.0 != batch.hash {
                report.findings.push(audit::Finding {
                    kind: "batch",
                    seq: 0,
                    batch: batch.index,
                    detail: format!(
                        "batch {}: the database's root/hash differ from the contract's ({} / {})",
                        batch.index, onchain.root, onchain.batchHash
                    ),
                });
            }
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ContractCommand {
    /// Deploy the anchor contract (the committed build); the key's account
    /// becomes its owner. Prints the contract's address.
    Deploy {
        #[arg(long)]
        rpc: String,
        /// The owner's key file (hex).
        #[arg(long)]
        key: PathBuf,
        /// Gateway addresses to authorize right away.
        #[arg(long)]
        authorize: Vec<String>,
    },
    /// Authorize (or with --revoke, stop authorizing) a gateway's address.
    Authorize {
        #[arg(long)]
        rpc: String,
        /// The owner's key file (hex).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        contract: String,
        gateway: String,
        #[arg(long)]
        revoke: bool,
    },
}

fn address(s: &str, what: &str) -> anyhow::Result<Address> {
    parse_address(s).map_err(|e| anyhow::anyhow!("{what} {e}"))
}

/// `contract deploy|authorize`.
pub async fn contract(command: &ContractCommand) -> anyhow::Result<ExitCode> {
    match command {
        ContractCommand::Deploy {
            rpc,
            key,
            authorize,
        } => {
            let signer = chain::load_key(key)?;
            let provider = chain::provider(rpc)?;
            let code = alloy::hex::decode(chain::CONTRACT_BYTECODE.trim())
                .ok()
                .context("the embedded contract bytecode is not hex")?;
            let receipt =
                chain::transact(&provider, rpc, &signer, TxKind::Create, Bytes::from(code)).await?;
            let contract = receipt
                .contract_address
                .context("the deployment's receipt names no contract address")?;
            for gateway in authorize {
                set_gateway(
                    &provider,
                    rpc,
                    &signer,
                    contract,
                    address(gateway, "--authorize")?,
                    true,
                )
                .await?;
            }
            println!("{contract}");
            Ok(ExitCode::SUCCESS)
        }
        ContractCommand::Authorize {
            rpc,
            key,
            contract,
            gateway,
            revoke,
        } => {
            let signer = chain::load_key(key)?;
            let provider = chain::provider(rpc)?;
            set_gateway(
                &provider,
                rpc,
                &signer,
                address(contract, "--contract")?,
                address(gateway, "the gateway")?,
                !revoke,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn set_gateway(
    provider: &alloy::providers::DynProvider,
    rpc: &str,
    signer: &alloy::signers::local::PrivateKeySigner,
    contract: Address,
    gateway: Address,
    allowed: bool,
) -> anyhow::Result<()> {
    let input = IBiotaAnchor::setGatewayCall { gateway, allowed }.abi_encode();
    chain::transact(provider, rpc, signer, TxKind::Call(contract), input.into()).await?;
    eprintln!(
        "{gateway} {} by {contract}",
        if allowed {
            "authorized"
        } else {
            "no longer authorized"
        }
    );
    Ok(())
}
