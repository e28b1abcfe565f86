//! `kv namespace create|list|get|rename|delete`.

use crate::endpoint::Endpoint;
use crate::{say, Done, Output};
use clap::Subcommand;
use kv_client::api;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum Cmd {
    Create { title: String },
    List,
    Get { namespace_id: String },
    Rename { namespace_id: String, title: String },
    Delete { namespace_id: String },
}

fn shown(n: &api::Namespace) -> serde_json::Value {
    json!({"id": n.id, "title": n.title})
}

pub async fn run(client: &Endpoint, cmd: Cmd, output: Output) -> Done {
    match cmd {
        Cmd::Create { title } => {
            let n = client.create_namespace(&title).await?;
            say(output, shown(&n), || format!("created namespace {:?} with id {}", n.title, n.id));
        }
        Cmd::List => {
            let all = client.list_namespaces().await?;
            let rows = all.iter().map(shown).collect();
            let text = || all.iter().map(|n| format!("{}  {}", n.id, n.title)).collect::<Vec<_>>().join("\n");
            say(output, serde_json::Value::Array(rows), text);
        }
        Cmd::Get { namespace_id } => {
            let n = client.get_namespace(&namespace_id).await?;
            say(output, shown(&n), || format!("{}  {}", n.id, n.title));
        }
        Cmd::Rename { namespace_id, title } => {
            let n = client.rename_namespace(&namespace_id, &title).await?;
            say(output, shown(&n), || format!("renamed to {:?}", n.title));
        }
        Cmd::Delete { namespace_id } => {
            client.delete_namespace(&namespace_id).await?;
            say(output, json!({"deleted": namespace_id}), || format!("deleted {namespace_id}"));
        }
    }
    Ok(())
}
