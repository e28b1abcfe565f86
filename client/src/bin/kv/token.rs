//! `kv token create|list|revoke|verify`: bearer tokens, scoped to namespaces. Tokens are
//! managed over gRPC; `verify` works over REST too.

use crate::endpoint::Endpoint;
use crate::{say, Done, Fail, Output};
use clap::Subcommand;
use kv_client::api;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Makes a token and prints its secret, which cannot be shown again.
    Create {
        /// A namespace id the token may use ("*" for every namespace); repeat for several.
        #[arg(long = "ns", value_name = "ID")]
        namespaces: Vec<String>,
        /// Reading keys of those namespaces.
        #[arg(long)]
        read: bool,
        /// Writing keys of those namespaces.
        #[arg(long)]
        write: bool,
        /// Namespaces, tokens and cluster administration (and every namespace's keys).
        #[arg(long)]
        admin: bool,
        /// What the token is for, as `list` shows it.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Every token (never their secrets).
    List,
    /// Stops a token working at every edge (within the bound in docs/security.md).
    Revoke { token_id: String },
    /// Who the token this command sends is.
    Verify,
}

fn shown(t: &api::Token) -> serde_json::Value {
    let grants: Vec<_> =
        t.grants.iter().map(|g| json!({"namespace_id": g.namespace_id, "read": g.read, "write": g.write})).collect();
    json!({"id": t.id, "name": t.name, "admin": t.admin, "grants": grants, "created_at": t.created_at})
}

/// One line: the token's id, name and rights.
fn line(t: &api::Token) -> String {
    let mut rights: Vec<String> = t
        .grants
        .iter()
        .map(|g| {
            let access = match (g.read, g.write) {
                (true, true) => "read+write",
                (true, false) => "read",
                _ => "write",
            };
            format!("{access} on {}", g.namespace_id)
        })
        .collect();
    if t.admin {
        rights.insert(0, "admin".into());
    }
    format!("{}  {:?}  {}", t.id, t.name, rights.join(", "))
}

pub async fn run(client: &Endpoint, cmd: Cmd, output: Output) -> Done {
    if let Cmd::Verify = cmd {
        let t = client.verify_token().await?;
        say(output, shown(&t), || line(&t));
        return Ok(());
    }
    let Endpoint::Grpc(client) = client else {
        return Err(Fail::Input(anyhow::anyhow!("tokens are managed over gRPC: give an edge's gRPC address")));
    };
    match cmd {
        Cmd::Create { namespaces, read, write, admin, name } => {
            if namespaces.is_empty() == (read || write) {
                return Err(Fail::Input(anyhow::anyhow!("--ns goes with --read and/or --write, and they with it")));
            }
            let grants = namespaces.into_iter().map(|namespace_id| api::Grant { namespace_id, read, write }).collect();
            let made = client.create_token(api::CreateTokenRequest { name, admin, grants }).await?;
            let t = made.token.unwrap_or_default();
            let mut json = shown(&t);
            json["secret"] = json!(made.secret);
            say(output, json, || format!("{}\n{}\n(the secret is shown only now)", line(&t), made.secret));
        }
        Cmd::List => {
            let all = client.list_tokens().await?;
            let text = || all.iter().map(line).collect::<Vec<_>>().join("\n");
            say(output, serde_json::Value::Array(all.iter().map(shown).collect()), text);
        }
        Cmd::Revoke { token_id } => {
            client.revoke_token(&token_id).await?;
            say(output, json!({"revoked": token_id}), || format!("revoked {token_id}"));
        }
        Cmd::Verify => {}
    }
    Ok(())
}
