//! A node's claim on its id: only one live process may flush under a node id, and what
//! PostgreSQL has of the batches earlier claims left in a journal.
//!
//! Two mechanisms, for two different moments. At start, a session-level advisory lock on a
//! connection held for the life of the process tells whether another live process already
//! uses the id: the start is then refused. The claim then takes a new *epoch*, higher than
//! any before it for this node and than any in the journal, and records it as the owner's;
//! every flush checks it, so should another process have taken the id over anyway (the lock
//! went away with a dropped connection while this one was paused), the flush is refused
//! instead of applied.
//!
//! The epoch is also part of every batch's identity (node, epoch, batch): batches cut under
//! one claim and journaled can never be taken for another claim's batches of the same number.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Storage, StorageError, bounded, from_bigint, to_bigint};
use crate::batch::BatchSeq;
use crate::node::NodeId;

/// How long to wait before trying to get the lock back after its connection was lost.
const RECLAIM_DELAY: Duration = Duration::from_secs(1);

/// Who writes: a node id and the epoch of this process's claim on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: NodeId,
    pub epoch: u64,
}

/// Holds the node's advisory lock until dropped.
pub struct NodeClaim {
    owner: Owner,
    keeper: JoinHandle<()>,
}

impl NodeClaim {
    /// The node and this process's epoch, which every flush checks.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// What PostgreSQL has of the batches of some epochs: the batches each epoch applied itself,
/// and the sequence numbers up to which later processes replayed its other batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    own: HashMap<u64, BatchSeq>,
    replayed: HashMap<(u64, BatchSeq), u64>,
}

impl Applied {
    /// Whether PostgreSQL has the journal record `lsn` of `batch` of `epoch`: its epoch
    /// applied that batch itself (from memory, so every record of it), or a replay took the
    /// batch's records up to a sequence number at or past `lsn`.
    pub fn has(&self, epoch: u64, batch: BatchSeq, lsn: u64) -> bool {
        batch <= self.own_progress(epoch) || lsn <= self.replayed_up_to(epoch, batch)
    }

    /// The last batch `epoch` applied itself.
    pub fn own_progress(&self, epoch: u64) -> BatchSeq {
        self.own.get(&epoch).copied().unwrap_or(BatchSeq::ZERO)
    }

    /// The sequence number up to which `batch` of `epoch` was replayed (0: never).
    pub fn replayed_up_to(&self, epoch: u64, batch: BatchSeq) -> u64 {
        self.replayed.get(&(epoch, batch)).copied().unwrap_or(0)
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
    /// live process holds it, else records a new epoch, above every earlier one and above
    /// `above` (the highest epoch in the journal, in case the database forgot it), as the
    /// owner's. From then on no other process can flush under the id.
    pub async fn claim_node(&self, node: &NodeId, above: u64) -> Result<NodeClaim, StorageError> {
        let mut client = self.lock_node(node).await?;
        let limit = self.timeout;
        let tx = bounded(limit, client.transaction()).await?;
        bounded(
            limit,
            tx.execute(
                "INSERT INTO tally_nodes (node_id) VALUES ($1) ON CONFLICT (node_id) DO NOTHING",
                &[&node.as_str()],
            ),
        )
        .await?;
        // The incarnation column is what processes of earlier versions check: a new value
        // fences them too.
        let epoch: i64 = bounded(
            limit,
            tx.query_one(
                "UPDATE tally_nodes
                 SET epoch = GREATEST(epoch, $2) + 1, incarnation = 'epoch ' || (GREATEST(epoch, $2) + 1),
                     updated_at = now()
                 WHERE node_id = $1
                 RETURNING epoch",
                &[&node.as_str(), &to_bigint(above)],
            ),
        )
        .await?
        .get(0);
        bounded(
            limit,
            tx.execute(
                "INSERT INTO tally_epochs (node_id, epoch) VALUES ($1, $2)",
                &[&node.as_str(), &epoch],
            ),
        )
        .await?;
        bounded(limit, tx.commit()).await?;
        let keeper = tokio::spawn(keep_claim(self.clone(), node.clone(), client));
        Ok(NodeClaim {
            owner: Owner {
                node: node.clone(),
                epoch: from_bigint(epoch),
            },
            keeper,
        })
    }

    /// What PostgreSQL has of the batches of `epochs` of `node`. Call it after claiming the
    /// node, so that no other process can change it any more.
    pub async fn applied(
        &self,
        node: &NodeId,
        epochs: &BTreeSet<u64>,
    ) -> Result<Applied, StorageError> {
        let epochs: Vec<i64> = epochs.iter().map(|&e| to_bigint(e)).collect();
        let node = node.as_str();
        self.with_client(async |client, limit| {
            let mut applied = Applied::default();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&node, &epochs];
            let own = client.query(
                "SELECT epoch, last_batch FROM tally_epochs WHERE node_id = $1 AND epoch = ANY($2)
                 UNION ALL
                 SELECT 0, last_batch FROM tally_nodes WHERE node_id = $1",
                &params,
            );
            for row in bounded(limit, own).await? {
                let (epoch, batch): (i64, i64) = (row.get(0), row.get(1));
                applied
                    .own
                    .insert(from_bigint(epoch), BatchSeq::from_stored(batch));
            }
            let replayed = client.query(
                "SELECT epoch, batch, last_lsn FROM tally_replays WHERE node_id = $1 AND epoch = ANY($2)",
                &params,
            );
            for row in bounded(limit, replayed).await? {
                let (epoch, batch, lsn): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                applied
                    .replayed
                    .insert((from_bigint(epoch), BatchSeq::from_stored(batch)), from_bigint(lsn));
            }
            Ok(applied)
        })
        .await
    }

    /// A new connection holding the node's advisory lock. It has the pool's connection
    /// settings (keepalives included), and its statements the same bound.
    async fn lock_node(&self, node: &NodeId) -> Result<tokio_postgres::Client, StorageError> {
        let (client, connection) = self.endpoint.connect().await?;
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
