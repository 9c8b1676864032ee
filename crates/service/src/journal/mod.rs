//! The journal: acknowledged increments made durable on local disk before the answer.
//!
//! The request path adds an increment to the pending deltas, which names the batch it landed
//! in, appends `(batch, key, delta)` here and answers only once [`Journal::append_one`]
//! returns. After PostgreSQL commits batch N the flusher calls [`Journal::committed`]; at
//! start the node replays the journal ([`Journal::open`]) and keeps what PostgreSQL lacks.
//!
//! Every record belongs to an *epoch*: the node's claim on its id that the process which
//! wrote it held (`storage::claim`). A record is identified by its epoch, batch and sequence
//! number, so records written under one claim can never be mistaken for another's.
//!
//! Invariants:
//!
//! - **Durable before acknowledged.** An append returns `Ok` only after an `fdatasync` that
//!   started after its bytes were handed to the writer (`writer.rs` explains the group commit).
//! - **Failure is final.** Once a write or sync fails, that append, every append waiting for
//!   a later sync and every later append fail; nothing is retried and then acknowledged. The
//!   failed write is cut from the file, and its appenders are told if that failed.
//! - **One order.** Every record has a sequence number (LSN), one more than the record before
//!   it, across segments. Replay is in LSN order, never by time, and yields exactly the whole
//!   records on disk: replaying twice yields the same records (the caller skips those that
//!   PostgreSQL already has).
//! - **Unfinished writes versus corruption.** Damage that only a crash during the last group
//!   commit can explain (a torn last record, or damage with nothing after it but records of the
//!   same group commit) was never acknowledged: it is cut off with a warning. Damage anywhere
//!   else may have acknowledged records behind it: the journal refuses to open, and
//!   `tally journal check` / `tally journal repair` (`repair.rs`) show and drop it.
//! - **Deleted only when in PostgreSQL.** A segment is deleted only once closed, only when
//!   PostgreSQL has every record in it ([`Journal::committed`] for this epoch's batches,
//!   [`Journal::replayed`] for earlier epochs), and oldest first, each deletion durable
//!   before the next.
//!
//! The format is in `record.rs` (framing) and `segment.rs` (files).

#![warn(missing_docs)]

mod record;
mod repair;
mod segment;
mod writer;

pub use repair::{Inspection, Repaired, SegmentReport, inspect, repair};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prometheus_client::metrics::histogram::Histogram;

use crate::batch::BatchSeq;
use crate::sync::lock;
use writer::{Shared, Writer};

/// Where the journal lives and when it rotates.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The journal's directory (`<data-dir>/journal`), created if missing.
    pub dir: PathBuf,
    /// The active segment is closed and a new one started once it reaches this size (it may
    /// pass it by one group commit).
    pub segment_bytes: u64,
    /// On [`Journal::committed`], the active segment is closed if all its batches are
    /// committed and it is at least this big, so that a quiet node's journal shrinks.
    pub rotate_on_commit_bytes: u64,
    /// When set, observes the duration of every `fdatasync` of appended records, in seconds.
    pub fsync_seconds: Option<Histogram>,
    /// The epoch of the records this process appends: its claim on the node id, above every
    /// epoch already in the journal.
    pub epoch: u64,
    /// Zeros written ahead of the records in the active segment, this many bytes at a time, so
    /// that a group commit's `fdatasync` has no file metadata to commit (0: none).
    pub preallocate_bytes: u64,
    /// The longest a group commit waits for more records when the last one was big (zero:
    /// never, the default: `bench/analysis.md` says why).
    pub commit_delay: std::time::Duration,
}

impl JournalOptions {
    /// Default sizes (64 MiB segments, rotation on commit from 1 MiB, zeros written 256 KiB
    /// ahead) and no group commit delay, for a journal in `dir` whose appends belong to
    /// epoch 1.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalOptions {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            rotate_on_commit_bytes: 1 << 20,
            fsync_seconds: None,
            epoch: 1,
            preallocate_bytes: 256 << 10,
            commit_delay: std::time::Duration::ZERO,
        }
    }
}

/// The epochs of the records in the journal at `dir`, read from segment headers only, so that
/// a new claim can be made above them before the journal is opened. Empty when there is none.
pub fn epochs(dir: &std::path::Path) -> Result<std::collections::BTreeSet<u64>, JournalError> {
    segment::epochs(dir)
}

/// One record as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The claim of the process that wrote it (0 for journals older than epochs).
    pub epoch: u64,
    /// Its sequence number in the journal.
    pub lsn: u64,
    /// The flush batch the increment landed in.
    pub batch: BatchSeq,
    /// The counter's key, borrowed from the segment being read.
    pub key: &'a str,
    /// What the increment added to the key.
    pub delta: i64,
}

/// What [`Journal::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files read.
    pub segments: usize,
    /// Whole records replayed.
    pub records: u64,
    /// The highest batch among them.
    pub max_batch: Option<BatchSeq>,
    /// Set when a torn tail was cut off: which file, where and why, for a warning.
    pub torn_tail: Option<String>,
    /// LSN ranges missing between segments (a deletion whose directory fsync did not reach
    /// the disk while a later one did), for a warning.
    pub gaps: Vec<String>,
}

/// Counters of the journal's work, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    /// Records made durable since open.
    pub records: u64,
    /// `fdatasync` calls for appended records since open (one per group commit).
    pub syncs: u64,
    /// Segment files on disk, the active one included.
    pub segments: usize,
    /// Bytes of all segment files on disk, headers included.
    pub bytes: u64,
}

/// Why the journal could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed while opening the journal.
    #[error("journal: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb: "read", "fsync directory", ...
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Damage that is not a torn tail: acknowledged records may be lost, so the journal
    /// refuses to open. `offset` is the byte in the file where the damage starts.
    #[error("journal corrupt: {} at byte {offset}: {reason} (stop the node; `tally journal check` shows the damage, `tally journal repair` drops it and says what it dropped)", path.display())]
    Corrupt {
        /// The damaged segment file.
        path: PathBuf,
        /// Where in it the damage starts.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A write or sync failed; the journal accepts nothing more.
    #[error("journal failed, nothing more is accepted: {reason}")]
    Failed {
        /// What failed.
        reason: Arc<str>,
        /// The append's records were handed to the failed write and could not be cut from the
        /// file: they may be replayed at the next start.
        maybe_written: bool,
    },
    /// The journal was closed.
    #[error("journal is closed")]
    Closed,
    /// A key too long for a record; nothing of the append was written.
    #[error("journal record key is {len} bytes, at most {max} fit")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The longest key a record holds.
        max: usize,
    },
}

/// A handle on the journal; clones share it. The writer thread stops when [`Journal::close`]
/// is called or the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Inner {
    fn close(&self) -> Result<(), JournalError> {
        // Held while joining, so that a second caller returns only once the first is done.
        let mut writer = lock(&self.writer);
        if let Some(thread) = writer.take() {
            self.shared.close();
            let _ = thread.join();
        }
        if self.shared.has_failed() {
            return Err(self.shared.failure());
        }
        Ok(())
    }
}

impl Journal {
    /// Scans the segments in LSN order and calls `visit` for every whole record, then starts
    /// the writer on a new segment.
    ///
    /// Damage in the last segment that nothing acknowledged can be behind (a torn last record,
    /// or damage followed only by records of the same unfinished group commit) is cut off
    /// (the file is truncated and fsynced), reported in [`OpenReport::torn_tail`], and not
    /// visited. Any other damage is corruption: `open` fails with [`JournalError::Corrupt`]
    /// and the node must not start until `tally journal repair` has dropped it. A gap between
    /// segments is reported in [`OpenReport::gaps`]. When `open` fails, `visit` may already
    /// have seen records before the damage; the caller discards them.
    ///
    /// Blocks on file I/O: call it before serving, or from a blocking thread.
    pub fn open(
        options: JournalOptions,
        visit: impl FnMut(Record<'_>),
    ) -> Result<(Journal, OpenReport), JournalError> {
        let dir = options.dir;
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(segment::io_error("create", &dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segment::sync_dir(parent)?;
            }
        }
        let mut max_batch = None;
        let mut visit = visit;
        let mut scan = segment::scan(&dir, |r| {
            max_batch = max_batch.max(Some(r.batch));
            visit(r)
        })?;
        // An empty last segment (a run that appended nothing) is replaced by the new one,
        // which starts at the same LSN and so has the same name.
        if scan.segments.last().is_some_and(|s| s.records == 0) {
            scan.segments.pop();
        }
        let (file, active) = segment::create(&dir, scan.next_lsn, options.epoch)?;
        let zeroed_to = active.bytes;
        let closed: std::collections::VecDeque<_> = scan.segments.into();
        let bytes = closed.iter().map(|s| s.bytes).sum::<u64>() + active.bytes;
        let shared = Arc::new(Shared::new(scan.next_lsn, bytes, closed.len() + 1));
        let writer = Writer {
            shared: shared.clone(),
            dir: dir.clone(),
            epoch: options.epoch,
            file,
            active,
            closed,
            next_lsn: scan.next_lsn,
            segment_bytes: options.segment_bytes,
            rotate_on_commit_bytes: options.rotate_on_commit_bytes,
            fsync_seconds: options.fsync_seconds,
            spare: Vec::new(),
            housekept: 0,
            settled: 0,
            dir_unsynced: false,
            preallocate: options.preallocate_bytes,
            zeroed_to,
            file_len: zeroed_to,
            commit_delay: options.commit_delay,
            last_group: 0,
        };
        let thread = std::thread::Builder::new()
            .name("tally-journal".into())
            .spawn(move || writer.run())
            .map_err(segment::io_error("start the writer thread for", &dir))?;
        let journal = Journal {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(thread)),
            }),
        };
        let report = OpenReport {
            segments: scan.read,
            records: scan.records,
            max_batch,
            torn_tail: scan.torn_tail,
            gaps: scan.gaps,
        };
        Ok((journal, report))
    }

    /// Appends `(batch, key, delta)` records, all or none, and returns once every one is
    /// durable. Many concurrent appends share one `fdatasync`. On error none of them may be
    /// acknowledged (some may still be replayed after a restart).
    pub async fn append(&self, records: &[(BatchSeq, &str, i64)]) -> Result<(), JournalError> {
        if records.is_empty() {
            return match self.has_failed() {
                true => Err(self.inner.shared.failure()),
                false => Ok(()),
            };
        }
        let shared = &self.inner.shared;
        let (generation, _) = shared.enqueue(records.iter().copied())?;
        shared.wait_durable(generation).await
    }

    /// Appends one record and returns once it is durable; the request path's call. Allocates
    /// nothing once the journal's buffers have grown to the load.
    pub async fn append_one(
        &self,
        batch: BatchSeq,
        key: &str,
        delta: i64,
    ) -> Result<(), JournalError> {
        self.append_one_at(batch, key, delta).await.map(|_| ())
    }

    /// [`append_one`](Self::append_one), returning the record's LSN.
    async fn append_one_at(
        &self,
        batch: BatchSeq,
        key: &str,
        delta: i64,
    ) -> Result<u64, JournalError> {
        let shared = &self.inner.shared;
        let (generation, lsn) = shared.enqueue(std::iter::once((batch, key, delta)))?;
        shared.wait_durable(generation).await?;
        Ok(lsn)
    }

    /// Tells the journal that PostgreSQL has every batch up to and including `batch`. The
    /// writer thread then deletes the oldest closed segments whose records all belong to such
    /// batches (fsyncing the directory after each) and closes the active segment if it holds
    /// only such batches and is at least `rotate_on_commit_bytes` big. Returns at once;
    /// [`settle`](Self::settle) waits for that work. A segment waits for every older one to be
    /// deletable, so that the segments left stay contiguous and a missing one is detected.
    pub fn committed(&self, batch: BatchSeq) {
        self.inner.shared.committed(batch);
    }

    /// Tells the journal that PostgreSQL has every record of earlier epochs (those found at
    /// [`open`](Self::open)): their segments are deleted, oldest first, like committed ones.
    pub fn replayed(&self) {
        self.inner.shared.replayed();
    }

    /// Returns once the writer has finished what it was asked before this call: every
    /// earlier [`committed`](Self::committed) acted on, and the rotation that may follow an
    /// append that already returned. Returns at once if the writer has stopped.
    pub async fn settle(&self) {
        self.inner.shared.settle().await;
    }

    /// Bytes of all segment files on disk, headers included. Cheap: one atomic load.
    pub fn bytes(&self) -> u64 {
        self.inner.shared.bytes()
    }

    /// Counters of the work done since open.
    pub fn stats(&self) -> JournalStats {
        let shared = &self.inner.shared;
        JournalStats {
            records: shared.durable_records(),
            syncs: shared.syncs(),
            segments: shared.segments(),
            bytes: shared.bytes(),
        }
    }

    /// True once a write or sync failed: every later append fails at once.
    pub fn has_failed(&self) -> bool {
        self.inner.shared.has_failed()
    }

    /// Writes and syncs everything appended so far, stops the writer thread and returns
    /// whether the journal ended healthy. Later appends fail with [`JournalError::Closed`].
    /// Idempotent. Blocks until the writer is done: call it from a blocking thread, or at the
    /// very end of shutdown.
    pub fn close(&self) -> Result<(), JournalError> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests;
