//! `shoal token create|list|revoke`: owner tokens, issued by an admin. A new token's
//! secret is printed once; the master keeps only its hash.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use shoal_proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo};

use super::Context;
use super::dataset::MasterFlag;
use crate::connect;
use crate::output::{OutputFormat, Table, print_json};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a token for an owner (admin only). The token is printed once.
    Create {
        /// The owner (tenant) the token acts as.
        #[arg(long)]
        owner: String,
        /// The token may act for every owner and manage tokens and grants.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// List tokens: ids, owners, state; never secrets (admin only).
    List {
        #[command(flatten)]
        m: MasterFlag,
    },
    /// Revoke a token by id (admin only).
    Revoke {
        id: String,
        #[command(flatten)]
        m: MasterFlag,
    },
}

fn row(t: &TokenInfo) -> Vec<String> {
    vec![
        t.id.clone(),
        t.owner.clone(),
        if t.admin { "yes" } else { "no" }.into(),
        if t.revoked_at_ms != 0 {
            "revoked"
        } else {
            "valid"
        }
        .into(),
    ]
}

fn to_json(t: &TokenInfo) -> serde_json::Value {
    json!({
        "id": t.id, "owner": t.owner, "admin": t.admin,
        "created_at_ms": t.created_at_ms, "revoked_at_ms": t.revoked_at_ms,
    })
}

pub async fn run(ctx: &Context, c: TokenCommand) -> anyhow::Result<ExitCode> {
    match c {
        TokenCommand::Create { owner, admin, m } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let r = client
                .create_token(CreateTokenRequest { owner, admin })
                .await
                .map_err(connect::status)?
                .into_inner();
            let info = r.info.unwrap_or_default();
            match ctx.output {
                OutputFormat::Json => {
                    let mut v = to_json(&info);
                    v["token"] = json!(r.token);
                    print_json(&v)?;
                }
                OutputFormat::Table => {
                    println!("{}", r.token);
                    eprintln!(
                        "token {} for owner `{}`{}: shown once. Give it to its user: `export SHOAL_TOKEN=<token>` or save it in ~/.config/shoal/token with mode 0600.",
                        info.id,
                        info.owner,
                        if info.admin { " (admin)" } else { "" }
                    );
                }
            }
        }
        TokenCommand::List { m } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let tokens = client
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(connect::status)?
                .into_inner()
                .tokens;
            match ctx.output {
                OutputFormat::Json => {
                    print_json(&json!(tokens.iter().map(to_json).collect::<Vec<_>>()))?
                }
                OutputFormat::Table => {
                    let mut t = Table::new(["ID", "OWNER", "ADMIN", "STATE"]);
                    for x in &tokens {
                        t.row(row(x));
                    }
                    t.print()?;
                }
            }
        }
        TokenCommand::Revoke { id, m } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let t = client
                .revoke_token(RevokeTokenRequest { id })
                .await
                .map_err(connect::status)?
                .into_inner();
            match ctx.output {
                OutputFormat::Json => print_json(&to_json(&t))?,
                OutputFormat::Table => println!("revoked token {} of `{}`", t.id, t.owner),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
