//! The SQL of the `counters` table: flush batches, synchronous increments, reads.

use tokio_postgres::error::SqlState;

use super::{Owner, Storage, StorageError, batch_seq, stored_seq};
use crate::pending::BatchSeq;

/// Most rows one upsert statement carries, so no statement grows without bound however many
/// keys a batch holds.
pub const CHUNK_ROWS: usize = 10_000;

/// Adds each `(key, delta)` of the arrays to its total, inserting new keys.
///
/// The input is sorted by key, so two nodes upserting overlapping keys lock rows in the same
/// order and cannot deadlock. A total that would overflow makes the statement fail as a whole.
const UPSERT: &str = "
    INSERT INTO counters AS c (key, value, updated_at)
    SELECT key, delta, now() FROM unnest($1::text[], $2::bigint[]) AS input(key, delta)
    ON CONFLICT (key) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at";

/// Like [`UPSERT`], but leaves out the keys whose total would leave the signed 64-bit range and
/// returns them instead. It reads each row once more, so it is only used for a batch that the
/// plain statement refused.
const UPSERT_CHECKED: &str = "
    WITH input AS (
        SELECT i.key, i.delta,
               c.value IS NULL
               OR c.value::numeric + i.delta BETWEEN -9223372036854775808 AND 9223372036854775807
               AS fits
        FROM unnest($1::text[], $2::bigint[]) AS i(key, delta)
        LEFT JOIN counters c ON c.key = i.key
    ), applied AS (
        INSERT INTO counters AS c (key, value, updated_at)
        SELECT key, delta, now() FROM input WHERE fits ORDER BY key
        ON CONFLICT (key) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at
    )
    SELECT key, delta FROM input WHERE NOT fits";

/// What became of a flush batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// False when PostgreSQL had already applied this batch (a retry after a commit whose
    /// answer was lost): nothing was written this time.
    pub applied: bool,
    /// Deltas left out because their key's total would leave the 64-bit range.
    pub rejected: Vec<Rejected>,
}

/// A delta a flush could not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: String,
    pub delta: i64,
}

/// A batch of an earlier epoch, rebuilt from the journal by a later process: the sums of its
/// records with sequence numbers above `after_lsn` and up to `last_lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub epoch: u64,
    pub batch: BatchSeq,
    /// PostgreSQL had this batch's records up to here when the replay was read.
    pub after_lsn: u64,
    /// The highest sequence number among the records replayed.
    pub last_lsn: u64,
    /// Sorted by key, each key once.
    pub deltas: Vec<(Box<str>, i64)>,
}

/// Which batch a transaction applies, and so how its progress is checked and recorded.
#[derive(Clone, Copy)]
enum Progress<'a> {
    /// A batch this process cut: `tally_epochs.last_batch` of its own epoch.
    Live(BatchSeq),
    /// A batch of an earlier epoch: `tally_replays`.
    Replay(&'a Replay),
}

impl Progress<'_> {
    fn epoch(&self, owner: &Owner) -> u64 {
        match self {
            Progress::Live(_) => owner.epoch,
            Progress::Replay(r) => r.epoch,
        }
    }

    fn batch(&self) -> BatchSeq {
        match self {
            Progress::Live(batch) => *batch,
            Progress::Replay(r) => r.batch,
        }
    }
}

impl Storage {
    /// Applies a batch this process cut, once and only once: the deltas and the epoch's new
    /// progress are written in one transaction, and a batch the progress already covers is
    /// skipped.
    ///
    /// `deltas` must be sorted by key, each key once. Should another process have taken the
    /// node id over, the batch is refused with [`StorageError::Fenced`].
    pub async fn apply_batch(
        &self,
        owner: &Owner,
        batch: BatchSeq,
        deltas: &[(Box<str>, i64)],
    ) -> Result<BatchOutcome, StorageError> {
        self.apply(owner, Progress::Live(batch), deltas).await
    }

    /// Applies a batch of an earlier epoch rebuilt from the journal, once and only once: the
    /// deltas and the replay's sequence number are written in one transaction, and records
    /// PostgreSQL already has are skipped. Refused with [`StorageError::Fenced`] like
    /// [`apply_batch`](Self::apply_batch).
    pub async fn replay_batch(
        &self,
        owner: &Owner,
        replay: &Replay,
    ) -> Result<BatchOutcome, StorageError> {
        self.apply(owner, Progress::Replay(replay), &replay.deltas)
            .await
    }

    async fn apply(
        &self,
        owner: &Owner,
        progress: Progress<'_>,
        deltas: &[(Box<str>, i64)],
    ) -> Result<BatchOutcome, StorageError> {
        debug_assert!(
            deltas.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, unique keys"
        );
        let mut client = self.pool.get().await?;
        match apply_batch_in(&mut client, owner, progress, deltas, false).await {
            Err(StorageError::OutOfRange { .. }) => {
                apply_batch_in(&mut client, owner, progress, deltas, true).await
            }
            other => other,
        }
    }

    /// Adds one increment in its own transaction and returns the new total.
    pub async fn increment(&self, key: &str, value: i64) -> Result<i64, StorageError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO counters AS c (key, value, updated_at) VALUES ($1, $2, now())
                 ON CONFLICT (key) DO UPDATE
                 SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at
                 RETURNING value",
            )
            .await?;
        match client.query_one(&statement, &[&key, &value]).await {
            Ok(row) => Ok(row.get(0)),
            Err(e) if is_out_of_range(&e) => Err(StorageError::OutOfRange {
                key: Some(key.to_owned()),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds several increments in one statement: all or none. `deltas` must be sorted by key,
    /// each key once.
    pub async fn increment_all(&self, deltas: &[(&str, i64)]) -> Result<(), StorageError> {
        let mut client = self.pool.get().await?;
        let (keys, values): (Vec<&str>, Vec<i64>) = deltas.iter().copied().unzip();
        match client.execute(UPSERT, &[&keys, &values]).await {
            Ok(_) => Ok(()),
            Err(e) if is_out_of_range(&e) => {
                // Name the key: the checked statement finds it (its writes are rolled back).
                let key = async {
                    let tx = client.transaction().await.ok()?;
                    let rows = tx.query(UPSERT_CHECKED, &[&keys, &values]).await.ok()?;
                    rows.first().map(|r| r.get::<_, String>(0))
                }
                .await;
                Err(StorageError::OutOfRange { key })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The persisted total of `key`.
    pub async fn counter(&self, key: &str) -> Result<Option<i64>, StorageError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT value FROM counters WHERE key = $1")
            .await?;
        Ok(client
            .query_opt(&statement, &[&key])
            .await?
            .map(|r| r.get(0)))
    }

    /// The persisted total of `key` and the last batch `owner`'s epoch applied, read from one
    /// snapshot, so a caller can tell which of its in-memory batches the total includes.
    pub async fn counter_and_progress(
        &self,
        key: &str,
        owner: &Owner,
    ) -> Result<(Option<i64>, BatchSeq), StorageError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT (SELECT value FROM counters WHERE key = $1),
                        (SELECT last_batch FROM tally_epochs WHERE node_id = $2 AND epoch = $3)",
            )
            .await?;
        let row = client
            .query_one(
                &statement,
                &[&key, &owner.node.as_str(), &stored_seq(owner.epoch)],
            )
            .await?;
        let progress: Option<i64> = row.get(1);
        let progress = progress.ok_or_else(|| no_epoch_row(owner))?;
        Ok((row.get(0), batch_seq(progress)))
    }
}

fn no_epoch_row(owner: &Owner) -> StorageError {
    StorageError::Invariant(format!(
        "node {} has no row for its epoch {}",
        owner.node, owner.epoch
    ))
}

/// Checks, at the start of a batch's transaction, that this process still owns the node id
/// and that PostgreSQL does not have the batch yet. Returns false when it has it.
///
/// FOR UPDATE of the node's row: a twin process flushing under the same node id serialises
/// here, and the owner's epoch tells which of the two may write.
async fn check_progress(
    tx: &deadpool_postgres::Transaction<'_>,
    owner: &Owner,
    progress: Progress<'_>,
) -> Result<bool, StorageError> {
    let node = owner.node.as_str();
    let epoch = stored_seq(progress.epoch(owner));
    let batch = stored_seq(progress.batch());
    let row = tx
        .query_opt(
            "SELECT n.epoch,
                    CASE WHEN $2 = 0 THEN n.last_batch ELSE e.last_batch END,
                    r.last_lsn
             FROM tally_nodes n
             LEFT JOIN tally_epochs e ON e.node_id = n.node_id AND e.epoch = $2
             LEFT JOIN tally_replays r ON r.node_id = n.node_id AND r.epoch = $2 AND r.batch = $3
             WHERE n.node_id = $1
             FOR UPDATE OF n",
            &[&node, &epoch, &batch],
        )
        .await?
        .ok_or_else(|| StorageError::Invariant(format!("node {node} has no row")))?;
    let (owner_epoch, own, replayed): (i64, Option<i64>, Option<i64>) =
        (row.get(0), row.get(1), row.get(2));
    if batch_seq(owner_epoch) != owner.epoch {
        return Err(StorageError::Fenced(node.to_owned()));
    }
    match progress {
        Progress::Live(batch) => {
            let own = own.ok_or_else(|| no_epoch_row(owner))?;
            Ok(batch_seq(own) < batch)
        }
        Progress::Replay(r) => {
            let replayed = batch_seq(replayed.unwrap_or(0));
            if batch_seq(own.unwrap_or(0)) >= r.batch || replayed >= r.last_lsn {
                return Ok(false);
            }
            if replayed != r.after_lsn {
                return Err(StorageError::Invariant(format!(
                    "batch {} of epoch {} was replayed up to LSN {replayed} by another process while this one replayed it from LSN {}",
                    r.batch, r.epoch, r.after_lsn
                )));
            }
            Ok(true)
        }
    }
}

/// Records, in the batch's transaction, that PostgreSQL now has it.
async fn record_progress(
    tx: &deadpool_postgres::Transaction<'_>,
    owner: &Owner,
    progress: Progress<'_>,
) -> Result<(), StorageError> {
    let node = owner.node.as_str();
    match progress {
        Progress::Live(batch) => {
            tx.execute(
                "UPDATE tally_epochs SET last_batch = $3, updated_at = now()
                 WHERE node_id = $1 AND epoch = $2",
                &[&node, &stored_seq(owner.epoch), &stored_seq(batch)],
            )
            .await?;
        }
        Progress::Replay(r) => {
            tx.execute(
                "INSERT INTO tally_replays (node_id, epoch, batch, last_lsn) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (node_id, epoch, batch)
                 DO UPDATE SET last_lsn = EXCLUDED.last_lsn, replayed_at = now()",
                &[
                    &node,
                    &stored_seq(r.epoch),
                    &stored_seq(r.batch),
                    &stored_seq(r.last_lsn),
                ],
            )
            .await?;
        }
    }
    Ok(())
}

async fn apply_batch_in(
    client: &mut deadpool_postgres::Object,
    owner: &Owner,
    progress: Progress<'_>,
    deltas: &[(Box<str>, i64)],
    checked: bool,
) -> Result<BatchOutcome, StorageError> {
    let tx = client.transaction().await?;
    if !check_progress(&tx, owner, progress).await? {
        return Ok(BatchOutcome::default());
    }

    let mut rejected = Vec::new();
    for chunk in deltas.chunks(CHUNK_ROWS) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| &**k).collect();
        let values: Vec<i64> = chunk.iter().map(|(_, d)| *d).collect();
        if checked {
            for row in tx.query(UPSERT_CHECKED, &[&keys, &values]).await? {
                rejected.push(Rejected {
                    key: row.get(0),
                    delta: row.get(1),
                });
            }
        } else {
            match tx.execute(UPSERT, &[&keys, &values]).await {
                Ok(_) => {}
                Err(e) if is_out_of_range(&e) => {
                    return Err(StorageError::OutOfRange { key: None });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if !rejected.is_empty() {
        record_rejections(&tx, owner, progress, &rejected).await?;
    }
    record_progress(&tx, owner, progress).await?;
    tx.commit().await?;
    Ok(BatchOutcome {
        applied: true,
        rejected,
    })
}

async fn record_rejections(
    tx: &deadpool_postgres::Transaction<'_>,
    owner: &Owner,
    progress: Progress<'_>,
    rejected: &[Rejected],
) -> Result<(), StorageError> {
    let keys: Vec<&str> = rejected.iter().map(|r| r.key.as_str()).collect();
    let deltas: Vec<i64> = rejected.iter().map(|r| r.delta).collect();
    tx.execute(
        "INSERT INTO rejected_increments (key, delta, node_id, epoch, batch, reason)
         SELECT key, delta, $3, $4, $5, 'total_out_of_range'
         FROM unnest($1::text[], $2::bigint[]) AS r(key, delta)",
        &[
            &keys,
            &deltas,
            &owner.node.as_str(),
            &stored_seq(progress.epoch(owner)),
            &stored_seq(progress.batch()),
        ],
    )
    .await?;
    Ok(())
}

fn is_out_of_range(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE)
}
