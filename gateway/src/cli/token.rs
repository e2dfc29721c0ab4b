//! `biota-gateway token create|list|revoke`: the API's bearer tokens in
//! the token file (`[api] token_file`, default `<state dir>/tokens.json`).
//! A created token is printed once; only its SHA-256 is kept.

use std::path::PathBuf;

use biota_gateway::api::auth::{self, Scope};
use biota_gateway::config::{GatewayConfig, state_dir};
use clap::{Args, Subcommand};

use super::Failure;

#[derive(Args)]
pub struct TokenArgs {
    /// Configuration file, for `[api] token_file` (default: the state
    /// directory's tokens.json).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// State directory (default: $STATE_DIRECTORY, else /var/lib/biota).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    what: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (the only time it is shown).
    Create {
        /// Who holds it (unique).
        #[arg(long)]
        name: String,
        /// What it may do; repeat for several (admin grants all).
        #[arg(long = "scope", value_enum, required = true)]
        scopes: Vec<Scope>,
    },
    /// List the tokens: name, scopes, creation time (never the token).
    List,
    /// Revoke the token named NAME.
    Revoke { name: String },
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let dir = state_dir(args.state_dir.as_deref());
    let file = match &args.config {
        Some(config) => GatewayConfig::load(config)
            .map_err(Failure::from)?
            .token_path(&dir),
        None => GatewayConfig::default().token_path(&dir),
    };
    match args.what {
        TokenCommand::Create { name, scopes } => {
            let token = auth::create(&file, &name, &scopes)?;
            println!("{token}");
            eprintln!(
                "token `{name}` created in {} (shown once; keep it safe)",
                file.display()
            );
        }
        TokenCommand::List => {
            let tokens = auth::load_file(&file)?;
            if tokens.is_empty() {
                println!("(no tokens in {})", file.display());
            }
            for t in tokens {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                println!(
                    "{:<24} {:<18} {}",
                    t.name,
                    scopes.join(","),
                    t.created.as_deref().unwrap_or("-")
                );
            }
        }
        TokenCommand::Revoke { name } => {
            if !auth::revoke(&file, &name)? {
                anyhow::bail!("no token named `{name}` in {}", file.display());
            }
            println!("token `{name}` revoked");
        }
    }
    Ok(())
}
