//! A node's claim on its id: only one live process may flush under a node id.
//!
//! Two mechanisms, for two different moments. At start, a session-level advisory lock on a
//! connection held for the life of the process tells whether another live process already
//! uses the id: the start is then refused. During the run, every flush checks that the
//! node's row still carries this process's *incarnation* (written at start, after taking the
//! lock); should another process have taken the id over anyway (the lock went away with a
//! dropped connection while this one was paused), the flush is refused instead of applied.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use super::{Storage, StorageError, batch_seq, bounded};
use crate::node::NodeId;
use crate::pending::BatchSeq;

/// How long to wait before trying to get the lock back after its connection was lost.
const RECLAIM_DELAY: Duration = Duration::from_secs(1);

/// Holds the node's advisory lock until dropped.
pub struct NodeClaim {
    incarnation: String,
    keeper: JoinHandle<()>,
}

impl NodeClaim {
    /// This process's incarnation, which every flush checks.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }
}

impl Drop for NodeClaim {
    fn drop(&mut self) {
        // Dropping the connection releases the advisory lock.
        self.keeper.abort();
    }
}

impl Storage {
    /// Takes the node id for this process: refuses with [`StorageError::NodeInUse`] when a
    /// live process holds it, else records a new incarnation. Returns the claim and the last
    /// batch PostgreSQL applied for the node (0 for a new node), read after the claim so that
    /// no other process can move it any more.
    pub async fn claim_node(&self, node: &NodeId) -> Result<(NodeClaim, BatchSeq), StorageError> {
        let client = self.lock_node(node).await?;
        bounded(
            self.timeout,
            client.execute(
                "INSERT INTO tally_nodes (node_id) VALUES ($1) ON CONFLICT (node_id) DO NOTHING",
                &[&node.as_str()],
            ),
        )
        .await?;
        let incarnation = uuid::Uuid::new_v4().to_string();
        let progress: i64 = bounded(
            self.timeout,
            client.query_one(
                "UPDATE tally_nodes SET incarnation = $2, updated_at = now() WHERE node_id = $1
                 RETURNING last_batch",
                &[&node.as_str(), &incarnation],
            ),
        )
        .await?
        .get(0);
        let keeper = tokio::spawn(keep_claim(self.clone(), node.clone(), client));
        let claim = NodeClaim {
            incarnation,
            keeper,
        };
        Ok((claim, batch_seq(progress)))
    }

    /// A new connection holding the node's advisory lock. It has the pool's connection
    /// settings (keepalives included), and its statements the same bound.
    async fn lock_node(&self, node: &NodeId) -> Result<tokio_postgres::Client, StorageError> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let closed = tokio::spawn(connection);
        let locked = bounded(
            self.timeout,
            client.query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('tally-node:' || $1, 0))",
                &[&node.as_str()],
            ),
        )
        .await;
        let locked: bool = match locked {
            Ok(row) => row.get(0),
            Err(e) => {
                // Close the connection now: it may be silent for good.
                closed.abort();
                return Err(e);
            }
        };
        if !locked {
            closed.abort();
            return Err(StorageError::NodeInUse(node.to_string()));
        }
        // Keep the connection task: when it ends, the lock is gone (see `keep_claim`).
        std::mem::forget(closed);
        Ok(client)
    }
}

/// Keeps the lock's connection open; if the connection is lost (a database restart), takes
/// the lock again once the database is back. Should another process have it by then, the
/// incarnation check of the next flush stops this one; this task only reports it.
async fn keep_claim(storage: Storage, node: NodeId, mut client: tokio_postgres::Client) {
    loop {
        while !client.is_closed() {
            tokio::time::sleep(RECLAIM_DELAY).await;
        }
        tracing::warn!(node_id = %node, "lost the connection that holds this node's lock; taking it again");
        client = loop {
            tokio::time::sleep(RECLAIM_DELAY).await;
            match storage.lock_node(&node).await {
                Ok(client) => break client,
                Err(StorageError::NodeInUse(_)) => {
                    tracing::error!(node_id = %node, "another process now holds this node's id; this process will stop flushing");
                    return;
                }
                Err(_) => continue,
            }
        };
        tracing::info!(node_id = %node, "holds this node's lock again");
    }
}
