//! The request path: where a valid increment goes before the client gets its answer.
//!
//! In `buffered` mode an increment is added to the pending buffer ([`Unpersisted`]), which
//! says which batch it landed in; with the journal, a record of it tagged with that batch is
//! then made durable, and only then is it acknowledged (the flusher writes it to PostgreSQL
//! later). With `--durability memory` no I/O happens on the way. In `sync` mode it is applied
//! to PostgreSQL first, in one transaction with the other sync increments that arrived
//! meanwhile ([`SyncWriter`]), and the answer carries the key's new total.
//!
//! When the journal fails, the request's adds are taken back from memory, all or none. Only
//! when that worked and the journal cut the failed write from its file is nothing applied,
//! and the client told to retry ([`IngestError::Journal`]); otherwise the increments may still
//! be counted (by the flusher, or by a replay of the file), and the client is told that the
//! outcome is unknown ([`IngestError::OutcomeUnknown`]), never to retry blindly.
//!
//! Reads combine PostgreSQL's total with what this node still holds in memory, using the
//! node's progress row, read in the same snapshot as the total, to count each batch once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::batch::BatchSeq;
use crate::increment::Increment;
use crate::item::Item;
use crate::journal::{Journal, JournalError};
use crate::pending::{AddError, Unpersisted};
use crate::storage::{Owner, Storage, StorageError};
use crate::sync_writer::SyncWriter;

/// What the client is told once an increment is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// Held for the next flush.
    Buffered,
    /// In PostgreSQL; the key's total is now this.
    Applied { total: i64 },
}

/// Why an increment was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The key's total (or the pending delta) would leave the signed 64-bit range. `index`
    /// is the position in a multi-increment request, when known.
    #[error("the total of key {key:?} would leave the signed 64-bit range")]
    OutOfRange { key: String, index: Option<usize> },
    /// A memory or journal bound is reached (`what` says which); the client should retry
    /// later.
    #[error("too many increments are waiting for the database ({what}); retry later")]
    Full { what: &'static str },
    /// The node is stopping: its final batch may already be cut, so nothing more is taken.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The journal could not make the increment durable; nothing of it was applied.
    #[error("the journal failed: {0}")]
    Journal(String),
    /// The increments may or may not be counted: the journal failed after they were handed
    /// to it and they could not be taken back, or (sync mode) PostgreSQL never answered the
    /// statement that applies them.
    #[error("the outcome is unknown: {0}")]
    OutcomeUnknown(String),
    /// PostgreSQL failed (sync mode, reads).
    #[error(transparent)]
    Storage(StorageError),
}

/// The request path, in either mode. Cheap to clone.
#[derive(Clone)]
pub enum Ingest {
    Buffered(Buffered),
    Sync(SyncWriter),
}

/// The buffered request path: the pending buffer and what it needs to answer reads.
#[derive(Clone)]
pub struct Buffered {
    /// Shared with the flusher, which writes what requests add to it.
    pub pending: Arc<Unpersisted>,
    pub storage: Storage,
    /// This node and its epoch, whose progress says which in-memory batches PostgreSQL has.
    pub owner: Owner,
    /// With `--durability journal`.
    pub journal: Option<Journal>,
    /// Past this many bytes of journal, increments are refused.
    pub max_journal_bytes: LiveBound,
}

/// A bound that a reload may change, shared by those who enforce it.
#[derive(Clone, Debug)]
pub struct LiveBound(Arc<AtomicU64>);

impl LiveBound {
    pub fn new(value: u64) -> LiveBound {
        LiveBound(Arc::new(AtomicU64::new(value)))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl Ingest {
    /// Whether increments are in PostgreSQL before the answer (`--mode sync`).
    pub fn is_sync(&self) -> bool {
        matches!(self, Ingest::Sync(_))
    }

    /// The pending buffer, in buffered mode.
    pub fn pending(&self) -> Option<&Unpersisted> {
        match self {
            Ingest::Buffered(b) => Some(&b.pending),
            Ingest::Sync(_) => None,
        }
    }

    /// The journal increments go through, with `--durability journal`.
    pub fn journal(&self) -> Option<&Journal> {
        match self {
            Ingest::Buffered(b) => b.journal.as_ref(),
            Ingest::Sync(_) => None,
        }
    }

    /// The database.
    pub fn storage(&self) -> &Storage {
        match self {
            Ingest::Buffered(b) => &b.storage,
            Ingest::Sync(writer) => writer.storage(),
        }
    }

    /// Takes one increment.
    pub async fn increment(&self, inc: &Increment<'_>) -> Result<Receipt, IngestError> {
        match self {
            Ingest::Buffered(b) => {
                b.check_journal()?;
                let batch = match b.pending.add(inc.key(), inc.value()) {
                    Ok(batch) => batch,
                    Err(e) => return Err(b.refuse(e, inc.key(), None)),
                };
                if let Some(journal) = &b.journal
                    && let Err(e) = journal.append_one(batch, inc.key(), inc.value()).await
                {
                    return Err(b.journal_failed(e, &[(inc.key(), inc.value(), batch)]));
                }
                Ok(Receipt::Buffered)
            }
            // Boxed: inline, sync mode's future would make every request's future larger, and
            // it is moved (copied) on each buffered request too.
            Ingest::Sync(writer) => Box::pin(writer.increment(inc.key(), inc.value()))
                .await
                .map(|total| Receipt::Applied { total }),
        }
    }

    /// Takes every increment or none.
    pub async fn increment_all(&self, incs: &[Increment<'_>]) -> Result<(), IngestError> {
        match self {
            Ingest::Buffered(b) => {
                let adds: Vec<(&str, i64)> = incs.iter().map(|i| (i.key(), i.value())).collect();
                b.add_all(&adds).await
            }
            Ingest::Sync(writer) => {
                let merged = merge_sorted(incs).map_err(|index| IngestError::OutOfRange {
                    key: incs[index].key().to_owned(),
                    index: Some(index),
                })?;
                writer
                    .storage()
                    .increment_all(&merged)
                    .await
                    .map_err(|e| from_storage(e, |k| incs.iter().position(|i| i.key() == k)))
            }
        }
    }

    /// The key's total as this node knows it: PostgreSQL's plus what this node holds in
    /// memory. `None` for a key never seen.
    pub async fn total(&self, key: &str) -> Result<Option<i64>, IngestError> {
        match self {
            Ingest::Sync(writer) => writer
                .storage()
                .counter(key)
                .await
                .map_err(IngestError::Storage),
            Ingest::Buffered(b) => {
                // Memory first, then PostgreSQL: a batch that commits in between is then in
                // both, and the progress read with the total says to skip its memory copy.
                let held = b.pending.held(key);
                let (persisted, progress) = b
                    .storage
                    .counter_and_progress(key, &b.owner)
                    .await
                    .map_err(IngestError::Storage)?;
                let mut total = persisted;
                for u in held.iter().filter(|u| u.batch > progress) {
                    // Wrapping: a total outside i64 cannot persist, and a read must not panic.
                    total = Some(total.unwrap_or(0).wrapping_add(u.delta));
                }
                Ok(total)
            }
        }
    }
}

/// What the client is told once its items are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemsReceipt {
    /// Held for the next flush.
    Buffered,
    /// In PostgreSQL (sync mode): the count of every tenant the request named, by tenant.
    Applied { counts: Vec<(String, i64)> },
}

impl Ingest {
    /// Takes every item or none. Each is a pending key of its own with a delta of 1, so it
    /// takes the increments' path whole: the pending buffer, the journal, the flush.
    pub async fn add_items(&self, items: &[Item<'_>]) -> Result<ItemsReceipt, IngestError> {
        match self {
            Ingest::Buffered(b) => {
                let keys: Vec<String> = items.iter().map(Item::pending_key).collect();
                let adds: Vec<(&str, i64)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
                b.add_all(&adds).await?;
                Ok(ItemsReceipt::Buffered)
            }
            Ingest::Sync(writer) => {
                let mut pairs: Vec<(&str, &str)> =
                    items.iter().map(|i| (i.tenant(), i.id())).collect();
                pairs.sort_unstable();
                pairs.dedup();
                match writer.storage().add_items(&pairs).await {
                    Ok(counts) => Ok(ItemsReceipt::Applied { counts }),
                    Err(e) => Err(from_storage(e, |_| None)),
                }
            }
        }
    }

    /// The number of distinct items of `tenant` as this node knows them: PostgreSQL's plus
    /// this node's ids PostgreSQL does not have yet, each once. 0 for an unknown tenant.
    pub async fn item_count(&self, tenant: &str) -> Result<i64, IngestError> {
        // Memory first, then PostgreSQL: an id written in between is found there and counted
        // once.
        let held = match self {
            Ingest::Buffered(b) => b.pending.held_items(tenant),
            Ingest::Sync(_) => Vec::new(),
        };
        let held: Vec<&str> = held.iter().map(|id| &**id).collect();
        self.storage()
            .item_count(tenant, &held)
            .await
            .map_err(IngestError::Storage)
    }
}

impl IngestError {
    /// Why the increment was refused, as the metrics label it.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::OutOfRange { .. } => "total_out_of_range",
            IngestError::Full { what: "journal" } => "journal_full",
            IngestError::Full { .. } => "pending_keys_full",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Journal(_) => "journal_failed",
            IngestError::OutcomeUnknown(_) => "outcome_unknown",
            // Refused for good: answered 400, nothing applied, not a database outage.
            IngestError::Storage(StorageError::Refused { .. }) => "refused_by_database",
            IngestError::Storage(_) => "database_unavailable",
        }
    }
}

impl Buffered {
    /// Adds every `(key, delta)` to the pending buffer and the journal, or none of them.
    async fn add_all(&self, adds: &[(&str, i64)]) -> Result<(), IngestError> {
        self.check_journal()?;
        let batches = match self.pending.add_all(adds) {
            Ok(batches) => batches,
            Err((index, e)) => {
                let key = index.map_or("", |i| adds[i].0);
                return Err(self.refuse(e, key, index));
            }
        };
        if let Some(journal) = &self.journal {
            let records: Vec<(BatchSeq, &str, i64)> = batches
                .iter()
                .zip(adds)
                .map(|(&batch, &(key, value))| (batch, key, value))
                .collect();
            if let Err(e) = journal.append(&records).await {
                let adds: Vec<(&str, i64, BatchSeq)> =
                    records.iter().map(|&(b, k, v)| (k, v, b)).collect();
                return Err(self.journal_failed(e, &adds));
            }
        }
        Ok(())
    }

    /// Refuses new increments once the journal has failed or is at its bound: a failed
    /// journal cannot make anything durable, and a full one waits for PostgreSQL to drain it.
    fn check_journal(&self) -> Result<(), IngestError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        if journal.has_failed() {
            return Err(IngestError::Journal(
                "an earlier write or fsync failed".into(),
            ));
        }
        if journal.bytes() >= self.max_journal_bytes.get() {
            return Err(IngestError::Full { what: "journal" });
        }
        Ok(())
    }

    /// Takes back the adds of a request whose journal append failed, and says what the
    /// client may conclude.
    fn journal_failed(&self, e: JournalError, adds: &[(&str, i64, BatchSeq)]) -> IngestError {
        let maybe_written = matches!(
            e,
            JournalError::Failed {
                maybe_written: true,
                ..
            }
        );
        if self.pending.undo_all(adds) && !maybe_written {
            IngestError::Journal(e.to_string())
        } else {
            IngestError::OutcomeUnknown(e.to_string())
        }
    }

    fn refuse(&self, e: AddError, key: &str, index: Option<usize>) -> IngestError {
        match e {
            AddError::Overflow => IngestError::OutOfRange {
                key: key.to_owned(),
                index,
            },
            AddError::Full => IngestError::Full {
                what: "pending_keys",
            },
            AddError::Closed => IngestError::ShuttingDown,
        }
    }
}

/// Maps a sync-mode storage error; `index_of` finds a key's position in a multi-increment
/// request. A statement that got no answer may have committed: its outcome is unknown.
pub(crate) fn from_storage(
    e: StorageError,
    index_of: impl FnOnce(&str) -> Option<usize>,
) -> IngestError {
    match e {
        e if e.outcome_unknown() => IngestError::OutcomeUnknown(e.to_string()),
        StorageError::OutOfRange { key } => IngestError::OutOfRange {
            index: key.as_deref().and_then(index_of),
            key: key.unwrap_or_default(),
        },
        other => IngestError::Storage(other),
    }
}

/// Sums repeated keys and sorts by key, as one upsert statement needs. On overflow, returns
/// the index of the increment that overflowed.
pub(crate) fn merge_sorted<'a>(incs: &'a [Increment<'_>]) -> Result<Vec<(&'a str, i64)>, usize> {
    let mut order: Vec<usize> = (0..incs.len()).collect();
    order.sort_by(|&a, &b| incs[a].key().cmp(incs[b].key()).then(a.cmp(&b)));
    let mut merged: Vec<(&str, i64)> = Vec::with_capacity(incs.len());
    for i in order {
        match merged.last_mut() {
            Some((k, sum)) if *k == incs[i].key() => {
                *sum = sum.checked_add(incs[i].value()).ok_or(i)?;
            }
            _ => merged.push((incs[i].key(), incs[i].value())),
        }
    }
    Ok(merged)
}
