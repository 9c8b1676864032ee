//! The SQL of the `counters` table: flush batches, synchronous increments, reads.
//!
//! A flush batch is written in one transaction: its progress ([`advance_progress`]: the
//! node's epoch for a batch this process cut, the replay record for a batch of an earlier
//! epoch rebuilt from the journal), then the deltas, one upsert per chunk of sorted keys. When
//! PostgreSQL refuses a chunk's data for good (an error a retry cannot fix: a total out of
//! range, an operator's constraint), the batch is written again isolating the keys it refuses:
//! each chunk under a savepoint, halved on refusal down to single keys, and a single key still
//! refused is left out and recorded in `rejected_increments`. Everything else of the batch
//! commits, in the same transaction as the progress row. A batch's items (`crate::item`) are
//! written first in the same transaction (`items.rs`).

use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::{Owner, Storage, StorageError, bounded, from_bigint, to_bigint};
use crate::batch::BatchSeq;
use crate::item::{MARK, from_pending_key};

/// Most rows one upsert statement carries, so no statement grows without bound however many
/// keys a batch holds.
pub const CHUNK_ROWS: usize = 10_000;

/// Adds each `(key, delta)` of the arrays to its total, inserting new keys.
///
/// The input is sorted by key, so two nodes upserting overlapping keys lock rows in the same
/// order and cannot deadlock. A total that would overflow makes the statement fail as a whole.
/// `counters` keeps half of each page free (migration V9), so the update of an existing key
/// puts its new version beside the old one and adds no index entry: that, not the shape of
/// this statement, is what decides the cost of a large flush (bench/analysis.md).
const UPSERT: &str = "
    INSERT INTO counters AS c (key, value, updated_at)
    SELECT key, delta, now() FROM unnest($1::text[], $2::bigint[]) AS input(key, delta)
    ON CONFLICT (key) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at";

/// Like [`UPSERT`], but leaves out the keys whose total would leave the signed 64-bit range and
/// returns them instead. It reads each row once more, so it is only used for a batch that the
/// plain statement refused. Finding overflowing keys in one pass spares the bisection of
/// [`upsert_isolating`] for them.
///
/// Rows are written in byte order, whatever the collation (`upsert_fitting!`).
const UPSERT_CHECKED: &str = concat!(
    upsert_fitting!(),
    ")
    SELECT key, delta FROM input WHERE NOT fits"
);

/// What became of a flush batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// False when PostgreSQL had already applied this batch (a retry after a commit whose
    /// answer was lost): nothing was written this time.
    pub applied: bool,
    /// Deltas left out, each a key's whole delta in this batch, because PostgreSQL refuses it
    /// for good; they are recorded in `rejected_increments` in the same transaction.
    pub rejected: Vec<Rejected>,
}

/// A key's delta a flush left out: the sum of that key's increments in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: String,
    pub delta: i64,
    pub reason: RejectReason,
    /// The SQLSTATE of PostgreSQL's refusal (`22003` for a total out of range).
    pub sqlstate: String,
    /// PostgreSQL's message, or Tally's for a total its own check found out of range.
    pub message: String,
}

/// Why a delta was left out: the `reason` of `rejected_increments` and of the
/// `tally_increments_rejected_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The key's total would leave the signed 64-bit range.
    TotalOutOfRange,
    /// PostgreSQL refused the key's data otherwise (an operator's constraint, say).
    RefusedByDatabase,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::TotalOutOfRange => "total_out_of_range",
            RejectReason::RefusedByDatabase => "refused_by_database",
        }
    }
}

impl Rejected {
    fn out_of_range(key: String, delta: i64) -> Rejected {
        Rejected {
            key,
            delta,
            reason: RejectReason::TotalOutOfRange,
            sqlstate: SqlState::NUMERIC_VALUE_OUT_OF_RANGE.code().to_owned(),
            message: "the total would leave the signed 64-bit range".to_owned(),
        }
    }

    pub(super) fn refused(key: &str, delta: i64, sqlstate: String, message: String) -> Rejected {
        let reason = if sqlstate == SqlState::NUMERIC_VALUE_OUT_OF_RANGE.code() {
            RejectReason::TotalOutOfRange
        } else {
            RejectReason::RefusedByDatabase
        };
        Rejected {
            key: key.to_owned(),
            delta,
            reason,
            sqlstate,
            message,
        }
    }
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
enum BatchId<'a> {
    /// A batch this process cut: `tally_epochs.last_batch` of its own epoch.
    Live(BatchSeq),
    /// A batch of an earlier epoch: `tally_replays`.
    Replay(&'a Replay),
}

impl BatchId<'_> {
    fn epoch(&self, owner: &Owner) -> u64 {
        match self {
            BatchId::Live(_) => owner.epoch,
            BatchId::Replay(r) => r.epoch,
        }
    }

    fn batch(&self) -> BatchSeq {
        match self {
            BatchId::Live(batch) => *batch,
            BatchId::Replay(r) => r.batch,
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
        self.apply(owner, BatchId::Live(batch), deltas).await
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
        self.apply(owner, BatchId::Replay(replay), &replay.deltas)
            .await
    }

    async fn apply(
        &self,
        owner: &Owner,
        id: BatchId<'_>,
        deltas: &[(Box<str>, i64)],
    ) -> Result<BatchOutcome, StorageError> {
        debug_assert!(
            deltas.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, unique keys"
        );
        self.with_client(async |client, limit| {
            match apply_batch_in(client, limit, owner, id, deltas, Chunks::Plain).await? {
                Some(outcome) => Ok(outcome),
                None => apply_batch_in(client, limit, owner, id, deltas, Chunks::Isolating)
                    .await?
                    .ok_or_else(|| {
                        StorageError::Invariant("a refusal escaped key isolation".into())
                    }),
            }
        })
        .await
    }

    /// Adds one increment in its own transaction and returns the new total.
    pub async fn increment(&self, key: &str, value: i64) -> Result<i64, StorageError> {
        self.with_client(async |client, limit| {
            let statement = bounded(
                limit,
                client.prepare_cached(
                    "INSERT INTO counters AS c (key, value, updated_at) VALUES ($1, $2, now())
                     ON CONFLICT (key) DO UPDATE
                     SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at
                     RETURNING value",
                ),
            )
            .await?;
            match tokio::time::timeout(limit, client.query_one(&statement, &[&key, &value])).await {
                Err(_) => Err(StorageError::TimedOut(limit)),
                Ok(Ok(row)) => Ok(row.get(0)),
                Ok(Err(e)) if is_out_of_range(&e) => Err(StorageError::OutOfRange {
                    key: Some(key.to_owned()),
                }),
                Ok(Err(e)) => Err(e.into()),
            }
        })
        .await
    }

    /// Adds several increments in one statement: all or none. `deltas` must be sorted by key,
    /// each key once.
    pub async fn increment_all(&self, deltas: &[(&str, i64)]) -> Result<(), StorageError> {
        let (keys, values): (Vec<&str>, Vec<i64>) = deltas.iter().copied().unzip();
        self.with_client(async |client, limit| {
            match tokio::time::timeout(limit, client.execute(UPSERT, &[&keys, &values])).await {
                Err(_) => Err(StorageError::TimedOut(limit)),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if is_out_of_range(&e) => {
                    // Name the key: the checked statement finds it (its writes are rolled
                    // back). Without an answer in time, the refusal stands without a name.
                    let key = async {
                        let tx = bounded(limit, client.transaction()).await.ok()?;
                        let rows = bounded(limit, tx.query(UPSERT_CHECKED, &[&keys, &values]))
                            .await
                            .ok()?;
                        rows.first().map(|r| r.get::<_, String>(0))
                    }
                    .await;
                    Err(StorageError::OutOfRange { key })
                }
                Ok(Err(e)) => Err(e.into()),
            }
        })
        .await
    }

    /// The persisted total of `key`.
    pub async fn counter(&self, key: &str) -> Result<Option<i64>, StorageError> {
        self.with_client(async |client, limit| {
            let statement = bounded(
                limit,
                client.prepare_cached("SELECT value FROM counters WHERE key = $1"),
            )
            .await?;
            let row = bounded(limit, client.query_opt(&statement, &[&key])).await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    /// The persisted total of `key` and the last batch `owner`'s epoch applied, read from one
    /// snapshot, so a caller can tell which of its in-memory batches the total includes.
    pub async fn counter_and_progress(
        &self,
        key: &str,
        owner: &Owner,
    ) -> Result<(Option<i64>, BatchSeq), StorageError> {
        let (node, epoch) = (owner.node.as_str(), to_bigint(owner.epoch));
        let row = self
            .with_client(async |client, limit| {
                let statement = bounded(
                    limit,
                    client.prepare_cached(
                        "SELECT (SELECT value FROM counters WHERE key = $1),
                                (SELECT last_batch FROM tally_epochs WHERE node_id = $2 AND epoch = $3)",
                    ),
                )
                .await?;
                bounded(limit, client.query_one(&statement, &[&key, &node, &epoch])).await
            })
            .await?;
        let progress: Option<i64> = row.get(1);
        let progress = progress.ok_or_else(|| no_epoch_row(owner))?;
        Ok((row.get(0), BatchSeq::from_stored(progress)))
    }
}

fn no_epoch_row(owner: &Owner) -> StorageError {
    StorageError::Invariant(format!(
        "node {} has no row for its epoch {}",
        owner.node, owner.epoch
    ))
}

/// How a batch's chunks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// One plain upsert per chunk: the common case, and the cheapest. A chunk whose data
    /// PostgreSQL refuses ends the attempt.
    Plain,
    /// Each chunk under a savepoint, halved on refusal down to single keys
    /// ([`upsert_isolating`]): for a batch that [`Chunks::Plain`] could not write.
    Isolating,
}

/// Writes the batch in one transaction, each statement waiting at most `limit` for its answer.
/// `None` when PostgreSQL refused a chunk's data in [`Chunks::Plain`] (the transaction is
/// rolled back): the caller writes the batch again isolating the refused keys.
async fn apply_batch_in(
    client: &mut deadpool_postgres::Object,
    limit: Duration,
    owner: &Owner,
    id: BatchId<'_>,
    deltas: &[(Box<str>, i64)],
    chunks: Chunks,
) -> Result<Option<BatchOutcome>, StorageError> {
    let tx = bounded(limit, client.transaction()).await?;
    // The same bound on the server's side: should this process stop talking mid-flush (its
    // connection silent, then closed by it), the server cancels the statement and ends the
    // idle transaction, releasing the rows it locked, instead of holding them until TCP
    // notices, which can take hours. Another node's flush may be waiting for those rows.
    let millis = limit.as_millis();
    bounded(
        limit,
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {millis}; \
             SET LOCAL idle_in_transaction_session_timeout = {millis}"
        )),
    )
    .await?;
    if advance_progress(&tx, limit, owner, id).await? == Progress::AlreadyApplied {
        return Ok(Some(BatchOutcome::default()));
    }

    let mut rejected = Vec::new();
    // Items sort before every counter key: the batch's items first, then its counters, the
    // order in which every transaction takes its locks.
    let (items, deltas) = deltas.split_at(deltas.partition_point(|(k, _)| k.starts_with(MARK)));
    if !items.is_empty() {
        let items: Vec<(&str, &str)> = items
            .iter()
            .filter_map(|(k, _)| from_pending_key(k))
            .collect();
        let isolating = chunks == Chunks::Isolating;
        match super::items::insert(&tx, limit, &items, isolating, &mut rejected).await {
            Ok(()) => {}
            Err(StorageError::Refused { .. }) if !isolating => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    for chunk in deltas.chunks(CHUNK_ROWS) {
        match chunks {
            Chunks::Plain => match upsert(&tx, limit, chunk).await {
                Ok(()) => {}
                Err(StorageError::Refused { .. }) => return Ok(None),
                Err(e) => return Err(e),
            },
            Chunks::Isolating => upsert_isolating(&tx, limit, chunk, &mut rejected).await?,
        }
    }
    if !rejected.is_empty() {
        record_rejections(&tx, limit, owner, id, &rejected).await?;
    }
    bounded(limit, tx.commit()).await?;
    Ok(Some(BatchOutcome {
        applied: true,
        rejected,
    }))
}

fn keys_and_values(deltas: &[(Box<str>, i64)]) -> (Vec<&str>, Vec<i64>) {
    deltas.iter().map(|(k, d)| (&**k, *d)).unzip()
}

/// Adds a chunk's deltas with [`UPSERT`].
async fn upsert(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
    chunk: &[(Box<str>, i64)],
) -> Result<(), StorageError> {
    let (keys, values) = keys_and_values(chunk);
    bounded(limit, tx.execute(UPSERT, &[&keys, &values])).await?;
    Ok(())
}

/// Adds a chunk's deltas leaving out, into `rejected`, every key whose data PostgreSQL
/// refuses for good ([`StorageError::Refused`]).
///
/// Keys whose total would leave the 64-bit range are left out by [`UPSERT_CHECKED`] in one
/// pass. For any other refusal the part that failed is rolled back to its savepoint and
/// written again as two halves, down to single keys: a single key still refused is left out.
/// Parts are written left to right, so rows are still locked in key order (rolling back to a
/// savepoint releases the row locks taken since), and two nodes still cannot deadlock.
/// Each refused key costs about two statements per halving, so a chunk of 10,000 keys with
/// one refused key takes some 30 statements: cheap for what should be rare.
async fn upsert_isolating(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
    chunk: &[(Box<str>, i64)],
    rejected: &mut Vec<Rejected>,
) -> Result<(), StorageError> {
    // The parts still to write, the next one last.
    let mut parts = vec![chunk];
    while let Some(part) = parts.pop() {
        bounded(limit, tx.batch_execute("SAVEPOINT isolate")).await?;
        let (keys, values) = keys_and_values(part);
        match bounded(limit, tx.query(UPSERT_CHECKED, &[&keys, &values])).await {
            Ok(rows) => {
                bounded(limit, tx.batch_execute("RELEASE SAVEPOINT isolate")).await?;
                rejected.extend(
                    rows.iter()
                        .map(|row| Rejected::out_of_range(row.get(0), row.get(1))),
                );
            }
            Err(StorageError::Refused { sqlstate, message }) => {
                bounded(
                    limit,
                    tx.batch_execute("ROLLBACK TO SAVEPOINT isolate; RELEASE SAVEPOINT isolate"),
                )
                .await?;
                match part {
                    [(key, delta)] => {
                        rejected.push(Rejected::refused(key, *delta, sqlstate, message));
                    }
                    _ => {
                        let (left, right) = part.split_at(part.len() / 2);
                        parts.push(right);
                        parts.push(left);
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a batch is to be written.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// The batch's progress now names it; the caller writes its deltas in the same
    /// transaction, or rolls it all back.
    Advanced,
    /// PostgreSQL already has this batch (a retry after a commit whose answer was lost, or a
    /// replay whose records it already took). Nothing is to be written.
    AlreadyApplied,
}

/// The exactly-once gate of a flush, all of it: checks and advances the batch's progress
/// inside its transaction, before any delta is written.
///
/// The node's row is locked `FOR UPDATE`, so a twin process flushing under the same node id
/// waits here, and the owner's epoch tells which of the two may write
/// ([`StorageError::Fenced`] for the other). A batch this process cut is applied unless its
/// epoch's `last_batch` covers it; a batch of an earlier epoch unless that epoch applied it
/// itself or a replay took its records up to `last_lsn`. The progress is then set to this
/// batch at once: it commits with the deltas or not at all, so advancing it before writing
/// them changes nothing for any reader.
async fn advance_progress(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
    owner: &Owner,
    id: BatchId<'_>,
) -> Result<Progress, StorageError> {
    let node = owner.node.as_str();
    let epoch = to_bigint(id.epoch(owner));
    let batch = id.batch().to_stored();
    let row = bounded(
        limit,
        tx.query_opt(
            "SELECT n.epoch,
                    CASE WHEN $2 = 0 THEN n.last_batch ELSE e.last_batch END,
                    r.last_lsn
             FROM tally_nodes n
             LEFT JOIN tally_epochs e ON e.node_id = n.node_id AND e.epoch = $2
             LEFT JOIN tally_replays r ON r.node_id = n.node_id AND r.epoch = $2 AND r.batch = $3
             WHERE n.node_id = $1
             FOR UPDATE OF n",
            &[&node, &epoch, &batch],
        ),
    )
    .await?
    .ok_or_else(|| StorageError::Invariant(format!("node {node} has no row")))?;
    let (owner_epoch, own, replayed): (i64, Option<i64>, Option<i64>) =
        (row.get(0), row.get(1), row.get(2));
    if from_bigint(owner_epoch) != owner.epoch {
        return Err(StorageError::Fenced(node.to_owned()));
    }
    match id {
        BatchId::Live(seq) => {
            let own = own.ok_or_else(|| no_epoch_row(owner))?;
            if BatchSeq::from_stored(own) >= seq {
                return Ok(Progress::AlreadyApplied);
            }
            bounded(
                limit,
                tx.execute(
                    "UPDATE tally_epochs SET last_batch = $3, updated_at = now()
                     WHERE node_id = $1 AND epoch = $2",
                    &[&node, &epoch, &batch],
                ),
            )
            .await?;
        }
        BatchId::Replay(r) => {
            let replayed = from_bigint(replayed.unwrap_or(0));
            if BatchSeq::from_stored(own.unwrap_or(0)) >= r.batch || replayed >= r.last_lsn {
                return Ok(Progress::AlreadyApplied);
            }
            if replayed != r.after_lsn {
                return Err(StorageError::Invariant(format!(
                    "batch {} of epoch {} was replayed up to LSN {replayed} by another process while this one replayed it from LSN {}",
                    r.batch, r.epoch, r.after_lsn
                )));
            }
            bounded(
                limit,
                tx.execute(
                    "INSERT INTO tally_replays (node_id, epoch, batch, last_lsn)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (node_id, epoch, batch)
                     DO UPDATE SET last_lsn = EXCLUDED.last_lsn, replayed_at = now()",
                    &[&node, &epoch, &batch, &to_bigint(r.last_lsn)],
                ),
            )
            .await?;
        }
    }
    Ok(Progress::Advanced)
}

async fn record_rejections(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
    owner: &Owner,
    id: BatchId<'_>,
    rejected: &[Rejected],
) -> Result<(), StorageError> {
    let keys: Vec<&str> = rejected.iter().map(|r| r.key.as_str()).collect();
    let deltas: Vec<i64> = rejected.iter().map(|r| r.delta).collect();
    let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.label()).collect();
    let sqlstates: Vec<&str> = rejected.iter().map(|r| r.sqlstate.as_str()).collect();
    let messages: Vec<&str> = rejected.iter().map(|r| r.message.as_str()).collect();
    bounded(
        limit,
        tx.execute(
            "INSERT INTO rejected_increments
                 (key, delta, node_id, epoch, batch, reason, sqlstate, message)
             SELECT key, delta, $3, $8, $4, reason, sqlstate, message
             FROM unnest($1::text[], $2::bigint[], $5::text[], $6::text[], $7::text[])
                  AS r(key, delta, reason, sqlstate, message)",
            &[
                &keys,
                &deltas,
                &owner.node.as_str(),
                &id.batch().to_stored(),
                &reasons,
                &sqlstates,
                &messages,
                &to_bigint(id.epoch(owner)),
            ],
        ),
    )
    .await?;
    Ok(())
}

fn is_out_of_range(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE)
}
