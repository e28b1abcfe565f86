//! Proposing a command to Raft on the leader and waiting for what applying it produced.

use crate::error::{StoreError, StoreResult};
use crate::metrics::Metrics;
use crate::types::{Command, CommandResult, Raft};
use openraft::error::{ClientWriteError, RaftError};

/// Proposes `cmd` on this (leader) node and waits until it is applied; returns its log
/// index and what applying it produced.
pub async fn propose(raft: &Raft, metrics: &Metrics, cmd: Command) -> StoreResult<(u64, CommandResult)> {
    let kind = match &cmd {
        Command::Write { .. } => "write",
        Command::CreateNamespace { .. } | Command::RenameNamespace { .. } | Command::DeleteNamespace { .. } => {
            "namespace"
        }
        Command::CreateToken { .. } | Command::RevokeToken { .. } => "token",
        Command::Sweep { .. } => "sweep",
    };
    metrics.proposals.with_label_values(&[kind]).inc();
    let reply = raft.client_write(cmd).await.map_err(|e| match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            StoreError::Raft("leadership moved while the write was in flight; retry".into())
        }
        other => StoreError::Raft(other.to_string()),
    })?;
    tracing::Span::current().record("log_index", reply.log_id.index);
    Ok((reply.log_id.index, reply.data))
}
