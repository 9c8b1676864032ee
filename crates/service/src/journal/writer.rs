//! Group commit: many appenders, one writer thread, one `fdatasync` for all of them.
//!
//! Appenders encode their records into the *open* buffer under a short mutex and note its
//! generation. The writer thread swaps the open buffer for its spare one (the generation goes
//! up), writes it with one `write`, calls `sync_data` once, and only then publishes that
//! generation as durable. So an appender is woken only by a sync that started after its bytes
//! were handed over, and everything appended while a sync runs shares the next one.
//!
//! Durability is published on two `watch` channels, one per parity of the generation. While
//! generation `g` is being synced, appenders can only be filling generation `g + 1` (the other
//! channel), so publishing `g` wakes exactly the appenders it covered. A failed write or sync
//! is final: its appenders, the ones waiting on the next generation, and every later appender
//! get an error, and the writer stops. Nothing is ever retried and then acknowledged, because
//! after a failed `fsync` the kernel may have dropped the dirty pages it could not write.
//!
//! A failed write or sync may still have left the generation's records in the file (a full
//! disk takes part of a write; a failed sync says nothing of which pages reached the disk), and
//! a record in the file is replayed at the next start. So the writer cuts the segment back to
//! its last durable length and syncs that; the appenders of the failed generation learn
//! whether it worked ([`JournalError::Failed`]'s `maybe_written`), since otherwise their
//! increments may yet be counted.
//!
//! The first record of each generation carries the group-start flag (`record.rs`), which lets
//! a scan after a power cut tell the unfinished last group commit from acknowledged records.
//!
//! Ahead of its records the writer keeps zeros written in the active segment (`zero_ahead`),
//! so that most syncs overwrite allocated blocks of an unchanged file size and commit no file
//! metadata; the zeros are cut when a segment is closed or the journal stops. A group commit
//! can also wait a little for more records under load (`commit_delay`, off by default).
//!
//! The writer also owns the segment files: it rotates the active segment and deletes the
//! segments that [`Journal::committed`](super::Journal::committed) made obsolete, between two
//! writes, so all journal file I/O happens on this one thread.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;

use super::JournalError;
use super::record::{self, GROUP_START, MAX_KEY};
use super::segment::{self, Segment};
use crate::batch::BatchSeq;
use crate::sync::{lock, wait};

/// Values of `Shared::inject_failure`, for tests.
pub(crate) const INJECT_WRITE_FAILURE: u8 = 1;
pub(crate) const INJECT_SYNC_FAILURE: u8 = 2;

/// A spare buffer grown past this by a burst is dropped rather than kept for good.
const KEEP_BUFFER_CAPACITY: usize = 4 << 20;
const INITIAL_BUFFER_CAPACITY: usize = 64 << 10;
/// A group commit is delayed only after a group of at least this many records.
const DELAY_SIBLINGS: u64 = 16;

/// The durable generation published on one of the two channels.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// Every generation up to this one of this parity is durable.
    generation: u64,
    /// The journal failed; generations above `generation` never will be durable.
    failed: bool,
}

/// What appenders hand to the writer, behind the mutex.
pub(crate) struct Queue {
    /// Encoded records of the open generation.
    buf: Vec<u8>,
    generation: u64,
    records: u64,
    max_batch: Option<BatchSeq>,
    /// The LSN the next record gets.
    next_lsn: u64,
    /// The writer waits on the condition variable; appenders wake it only then.
    writer_idle: bool,
    /// While the writer delays a group commit: the record count at which an appender wakes it
    /// before the delay is up; 0 otherwise.
    writer_wants: u64,
    closing: bool,
    failed: bool,
    /// Calls to `committed` so far; the writer acts on them between writes.
    commit_requests: u64,
    /// Calls to `settle` so far.
    settle_requests: u64,
}

/// How the journal failed.
#[derive(Debug)]
pub(crate) struct Failure {
    reason: Arc<str>,
    /// The generation whose write or sync failed; `None` for a failure outside a write.
    generation: Option<u64>,
    /// Whether that generation's bytes were cut from the segment, durably (without a
    /// generation: whether no write can have been under way).
    cut: bool,
}

/// State shared by the journal's handles and its writer thread.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    wake_writer: Condvar,
    durable: [watch::Sender<Progress>; 2],
    /// The count of `settle` calls the writer has answered; `u64::MAX` once it stopped.
    settled: watch::Sender<u64>,
    committed: AtomicU64,
    /// Set once every record of earlier epochs is in PostgreSQL: their segments may go.
    replayed: AtomicBool,
    failed: AtomicBool,
    failure: OnceLock<Failure>,
    bytes: AtomicU64,
    segments: AtomicUsize,
    syncs: AtomicU64,
    durable_records: AtomicU64,
    /// The LSN of the last record made durable, to check the acknowledgement rule in tests.
    #[cfg(test)]
    pub(crate) durable_lsn: AtomicU64,
    /// Makes the writer fail its next write or sync, to test failures.
    #[cfg(test)]
    pub(crate) inject_failure: std::sync::atomic::AtomicU8,
}

impl Shared {
    pub(crate) fn new(next_lsn: u64, bytes: u64, segments: usize) -> Shared {
        // Generations start at 1 so that the initial value 0 of both channels covers none.
        let generation = 1;
        Shared {
            queue: Mutex::new(Queue {
                buf: Vec::with_capacity(INITIAL_BUFFER_CAPACITY),
                generation,
                records: 0,
                max_batch: None,
                next_lsn,
                writer_idle: false,
                writer_wants: 0,
                closing: false,
                failed: false,
                commit_requests: 0,
                settle_requests: 0,
            }),
            wake_writer: Condvar::new(),
            durable: [
                watch::Sender::new(Progress::default()),
                watch::Sender::new(Progress::default()),
            ],
            settled: watch::Sender::new(0),
            committed: AtomicU64::new(0),
            replayed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failure: OnceLock::new(),
            bytes: AtomicU64::new(bytes),
            segments: AtomicUsize::new(segments),
            syncs: AtomicU64::new(0),
            durable_records: AtomicU64::new(0),
            #[cfg(test)]
            durable_lsn: AtomicU64::new(next_lsn - 1),
            #[cfg(test)]
            inject_failure: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Encodes `records` into the open generation, all or none, and returns that generation
    /// and the LSN of the last record.
    pub(crate) fn enqueue<'k, I>(&self, records: I) -> Result<(u64, u64), JournalError>
    where
        I: Iterator<Item = (BatchSeq, &'k str, i64)> + Clone,
    {
        if let Some(len) = records
            .clone()
            .map(|(_, k, _)| k.len())
            .find(|&l| l > MAX_KEY)
        {
            return Err(JournalError::KeyTooLong { len, max: MAX_KEY });
        }
        let mut q = lock(&self.queue);
        if q.failed {
            return Err(self.failure());
        }
        if q.closing {
            return Err(JournalError::Closed);
        }
        for (batch, key, delta) in records {
            let lsn = q.next_lsn;
            let flags = if q.buf.is_empty() { GROUP_START } else { 0 };
            record::encode(&mut q.buf, lsn, batch, key, delta, flags);
            q.next_lsn += 1;
            q.records += 1;
            q.max_batch = q.max_batch.max(Some(batch));
        }
        let position = (q.generation, q.next_lsn - 1);
        if q.writer_idle {
            q.writer_idle = false;
            self.wake_writer.notify_one();
        } else if q.writer_wants != 0 && q.records >= q.writer_wants {
            q.writer_wants = 0;
            self.wake_writer.notify_one();
        }
        Ok(position)
    }

    /// Waits until `generation` is durable, or fails if the journal failed first.
    pub(crate) async fn wait_durable(&self, generation: u64) -> Result<(), JournalError> {
        let mut rx = self.durable[(generation & 1) as usize].subscribe();
        let progress = match rx
            .wait_for(|p| p.generation >= generation || p.failed)
            .await
        {
            Ok(p) => *p,
            // The sender lives in `self`, so this cannot happen; an error is still the honest
            // answer.
            Err(_) => return Err(JournalError::Closed),
        };
        if progress.generation >= generation {
            Ok(())
        } else {
            Err(self.failure_of(generation))
        }
    }

    pub(crate) fn committed(&self, batch: BatchSeq) {
        self.committed.fetch_max(batch.get(), Ordering::AcqRel);
        self.wake_housekeeping();
    }

    pub(crate) fn replayed(&self) {
        self.replayed.store(true, Ordering::Release);
        self.wake_housekeeping();
    }

    fn wake_housekeeping(&self) {
        let mut q = lock(&self.queue);
        q.commit_requests += 1;
        if q.writer_idle {
            q.writer_idle = false;
            self.wake_writer.notify_one();
        }
    }

    /// Waits until the writer has finished every job it had before this call: `committed`
    /// calls acted on, and the rotation that may follow a write.
    pub(crate) async fn settle(&self) {
        let target = {
            let mut q = lock(&self.queue);
            q.settle_requests += 1;
            if q.writer_idle {
                q.writer_idle = false;
                self.wake_writer.notify_one();
            }
            q.settle_requests
        };
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|&done| done >= target).await;
    }

    /// Tells the writer to write what is queued and stop.
    pub(crate) fn close(&self) {
        let mut q = lock(&self.queue);
        q.closing = true;
        q.writer_idle = false;
        self.wake_writer.notify_one();
    }

    /// The error for an append that was never handed to a failed write.
    pub(crate) fn failure(&self) -> JournalError {
        JournalError::Failed {
            reason: self.reason(),
            maybe_written: false,
        }
    }

    /// The error for an append of `generation`, which the failure may have left on disk.
    fn failure_of(&self, generation: u64) -> JournalError {
        // A failure outside a known write (a panic of the writer) may have been in the middle
        // of any write: every appender waiting then hears that its records may be on disk.
        let maybe_written = self.failure.get().is_some_and(|f| match f.generation {
            Some(failed) => failed == generation && !f.cut,
            None => !f.cut,
        });
        JournalError::Failed {
            reason: self.reason(),
            maybe_written,
        }
    }

    fn reason(&self) -> Arc<str> {
        match self.failure.get() {
            Some(f) => f.reason.clone(),
            None => "the journal failed".into(),
        }
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn segments(&self) -> usize {
        self.segments.load(Ordering::Relaxed)
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub(crate) fn durable_records(&self) -> u64 {
        self.durable_records.load(Ordering::Relaxed)
    }

    /// Makes the journal fail for good: queued records are dropped, their appenders and all
    /// later ones get `reason`. `generation` is the one whose write or sync failed, if any, and
    /// `cut` whether its bytes were cut from the segment.
    fn fail(&self, reason: String, generation: Option<u64>, cut: bool) {
        tracing::error!(error = %reason, "journal failed; no more increments are acknowledged");
        let _ = self.failure.set(Failure {
            reason: reason.into(),
            generation,
            cut,
        });
        {
            let mut q = lock(&self.queue);
            q.failed = true;
            q.buf.clear();
        }
        self.failed.store(true, Ordering::Release);
        for channel in &self.durable {
            channel.send_modify(|p| p.failed = true);
        }
        self.settled.send_replace(u64::MAX);
    }
}

/// A batch of records taken from the queue.
struct Take {
    generation: u64,
    records: u64,
    max_batch: Option<BatchSeq>,
}

enum Job {
    Write(Take),
    Housekeep(u64),
    Settle(u64),
    Stop,
}

/// The writer thread's state: the active segment and the closed ones, oldest first.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    /// The epoch of the records this process appends.
    pub epoch: u64,
    pub file: File,
    pub active: Segment,
    pub closed: VecDeque<Segment>,
    /// The LSN the next record written carries: the first LSN of a segment created now.
    pub next_lsn: u64,
    pub segment_bytes: u64,
    pub rotate_on_commit_bytes: u64,
    pub fsync_seconds: Option<Histogram>,
    pub spare: Vec<u8>,
    /// `commit_requests` acted on.
    pub housekept: u64,
    /// `settle_requests` answered.
    pub settled: u64,
    /// A segment was deleted but the directory's fsync failed: no further deletion until one
    /// succeeds, so that deletions stay durable oldest first.
    pub dir_unsynced: bool,
    /// Zeros written ahead of the records at a time (0: none); see [`Writer::zero_ahead`].
    pub preallocate: u64,
    /// The active segment's length with the zeros written ahead: records up to there overwrite
    /// blocks already allocated, and their `fdatasync` changes no metadata.
    pub zeroed_to: u64,
    /// The active segment's length on disk as counted in `Shared::bytes`: its records' end or
    /// the zeros' end, whichever is further.
    pub file_len: u64,
    /// The longest a group commit waits for more records when they arrive fast.
    pub commit_delay: Duration,
    /// Records in the last group commit.
    pub last_group: u64,
}

/// Why the writer stopped: a failure, and the generation whose write or sync it was.
struct Halt {
    reason: String,
    generation: Option<u64>,
    cut: bool,
}

impl From<String> for Halt {
    fn from(reason: String) -> Halt {
        Halt {
            reason,
            generation: None,
            cut: true,
        }
    }
}

/// Marks the journal failed if the writer thread ends by a panic, so that no appender waits
/// forever, and releases `settle` callers: nothing more will be done.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail("the journal writer thread panicked".into(), None, false);
        }
        self.0.settled.send_replace(u64::MAX);
    }
}

impl Writer {
    pub(crate) fn run(mut self) {
        let _guard = StopGuard(self.shared.clone());
        loop {
            let result = match self.next_job() {
                Job::Write(take) => self.write(take),
                Job::Housekeep(requests) => self
                    .housekeep()
                    .map(|()| self.housekept = requests)
                    .map_err(Halt::from),
                Job::Settle(requests) => {
                    self.settled = requests;
                    self.shared.settled.send_replace(requests);
                    Ok(())
                }
                Job::Stop => {
                    // A clean stop leaves no zeros for the next start to cut as a torn tail.
                    if !self.shared.has_failed()
                        && let Err(e) = self.trim()
                    {
                        tracing::warn!(error = %e, "the next start will cut the journal's preallocated end");
                    }
                    return;
                }
            };
            if let Err(stop) = result {
                self.shared.fail(stop.reason, stop.generation, stop.cut);
                return;
            }
        }
    }

    /// Waits for work. `committed` calls come first: they are rare, and under steady load
    /// the buffer is never empty, so they would otherwise wait forever.
    fn next_job(&mut self) -> Job {
        let mut q = lock(&self.shared.queue);
        loop {
            if q.failed {
                return Job::Stop;
            }
            if q.commit_requests != self.housekept {
                return Job::Housekeep(q.commit_requests);
            }
            if q.settle_requests != self.settled {
                return Job::Settle(q.settle_requests);
            }
            if !q.buf.is_empty() {
                q = self.delay_group(q);
                if q.failed {
                    return Job::Stop;
                }
                std::mem::swap(&mut q.buf, &mut self.spare);
                let take = Take {
                    generation: q.generation,
                    records: q.records,
                    max_batch: q.max_batch.take(),
                };
                q.generation += 1;
                q.records = 0;
                self.last_group = take.records;
                return Job::Write(take);
            }
            if q.closing {
                return Job::Stop;
            }
            q.writer_idle = true;
            q = wait(&self.shared.wake_writer, q);
        }
    }

    /// Waits a little for more records before a group commit, when the last group was big
    /// (as PostgreSQL's `commit_delay` does with `commit_siblings`): under load a sync costs
    /// about the same for 20 records as for 60, so fewer, bigger groups spend less CPU per
    /// record; a quiet node never waits. An appender ends the wait once the group is twice the
    /// last one; other work waits for the delay's end.
    fn delay_group<'q>(
        &self,
        mut q: std::sync::MutexGuard<'q, Queue>,
    ) -> std::sync::MutexGuard<'q, Queue> {
        if self.commit_delay.is_zero() || self.last_group < DELAY_SIBLINGS {
            return q;
        }
        let wants = self.last_group.saturating_mul(2);
        let deadline = Instant::now() + self.commit_delay;
        while q.records < wants && !q.closing && !q.failed {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            q.writer_wants = wants;
            q = match self.shared.wake_writer.wait_timeout(q, left) {
                Ok((q, _)) => q,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        q.writer_wants = 0;
        q
    }

    /// Writes and syncs one generation, then publishes it as durable. On failure, cuts what
    /// may have been written of it.
    fn write(&mut self, take: Take) -> Result<(), Halt> {
        if let Err(reason) = self.write_and_sync() {
            let cut = self.cut_back();
            return Err(Halt {
                reason,
                generation: Some(take.generation),
                cut,
            });
        }
        self.publish(take)?;
        Ok(())
    }

    /// Cuts the active segment back to its durable length, durably; false if that failed.
    fn cut_back(&mut self) -> bool {
        let durable = self.active.bytes;
        let cut = self
            .file
            .set_len(durable)
            .and_then(|()| self.file.sync_all());
        match cut {
            Ok(()) => {
                self.zeroed_to = durable;
                self.count_file_len();
                true
            }
            Err(e) => {
                tracing::error!(segment = %self.active.path.display(), error = %e, "cannot cut the failed write from the journal; its records may be replayed at the next start");
                false
            }
        }
    }

    fn write_and_sync(&mut self) -> Result<(), String> {
        #[cfg(test)]
        let injected = self.shared.inject_failure.swap(0, Ordering::Relaxed);
        #[cfg(not(test))]
        let injected = 0;
        let written = if injected == INJECT_WRITE_FAILURE {
            Err(std::io::Error::other("injected write failure"))
        } else {
            self.zero_ahead(self.spare.len() as u64);
            self.file.write_all(&self.spare)
        };
        let path = &self.active.path;
        written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let started = Instant::now();
        let synced = if injected == INJECT_SYNC_FAILURE {
            Err(std::io::Error::other("injected fdatasync failure"))
        } else {
            self.file.sync_data()
        };
        if let Some(h) = &self.fsync_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        synced.map_err(|e| format!("cannot fdatasync {}: {e}", path.display()))
    }

    /// Writes zeros after the `len` bytes about to be appended, `preallocate` bytes at a time
    /// and never past the segment's size, so that the next group commits overwrite blocks that
    /// are allocated and written already: their `fdatasync` then has no metadata to commit (no
    /// new size, no new extent), which on ext4 spares a journal commit per sync. The zeros are
    /// made durable by the same sync as the records before them, once per `preallocate` bytes.
    ///
    /// Zeros are never a record (a length of 0 is invalid): the scan at start cuts a zero tail
    /// of the last segment like a torn one, and the writer cuts it when it closes a segment, so
    /// only the last segment can have one. Failing to write them (a full disk) only ends the
    /// preallocation: the records are appended as before.
    fn zero_ahead(&mut self, len: u64) {
        let end = self.active.bytes + len;
        if self.preallocate == 0 || end <= self.zeroed_to || end >= self.segment_bytes {
            return;
        }
        let to = (end + self.preallocate).min(self.segment_bytes);
        let zeros = vec![0; (to - end) as usize];
        match self.file.write_all_at(&zeros, end) {
            Ok(()) => {
                self.zeroed_to = to;
                self.count_file_len();
            }
            Err(e) => {
                tracing::warn!(segment = %self.active.path.display(), error = %e, "cannot write zeros ahead of the journal's records; appending without them from now on");
                self.preallocate = 0;
                // Zeros past the records do no harm in the last segment, and `trim` cuts them
                // when it is closed; this only gives the disk its space back.
                let _ = self.file.set_len(self.zeroed_to.max(self.active.bytes));
            }
        }
    }

    /// Brings `Shared::bytes` up to date with the active segment's length on disk.
    fn count_file_len(&mut self) {
        let len = self.active.bytes.max(self.zeroed_to);
        if len >= self.file_len {
            self.shared
                .bytes
                .fetch_add(len - self.file_len, Ordering::Relaxed);
        } else {
            self.shared
                .bytes
                .fetch_sub(self.file_len - len, Ordering::Relaxed);
        }
        self.file_len = len;
    }

    /// Cuts the zeros written ahead from the end of the active segment, durably, so that a
    /// segment that is no longer the last one ends with its last record.
    fn trim(&mut self) -> Result<(), String> {
        let path = &self.active.path;
        let len = self
            .file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
            .len();
        if len > self.active.bytes {
            self.file
                .set_len(self.active.bytes)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| {
                    format!("cannot cut the preallocated end of {}: {e}", path.display())
                })?;
        }
        self.zeroed_to = self.active.bytes;
        self.count_file_len();
        Ok(())
    }

    /// Publishes a synced generation as durable.
    fn publish(&mut self, take: Take) -> Result<(), String> {
        let len = self.spare.len() as u64;
        self.active.add(len, take.records, take.max_batch);
        self.next_lsn += take.records;
        self.count_file_len();
        let shared = &self.shared;
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        shared
            .durable_records
            .fetch_add(take.records, Ordering::Relaxed);
        #[cfg(test)]
        shared
            .durable_lsn
            .store(self.next_lsn - 1, Ordering::Release);
        shared.durable[(take.generation & 1) as usize]
            .send_modify(|p| p.generation = take.generation);

        self.spare.clear();
        if self.spare.capacity() > KEEP_BUFFER_CAPACITY {
            self.spare = Vec::with_capacity(INITIAL_BUFFER_CAPACITY);
        }
        if self.active.bytes >= self.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Closes the active segment and opens a new one. Its records are already durable: each
    /// write is synced before the next is taken, so no later segment can hold a record while
    /// an earlier one misses one.
    fn rotate(&mut self) -> Result<(), String> {
        self.trim()?;
        let (file, segment) =
            segment::create(&self.dir, self.next_lsn, self.epoch).map_err(|e| e.to_string())?;
        self.shared
            .bytes
            .fetch_add(segment.bytes, Ordering::Relaxed);
        self.shared.segments.fetch_add(1, Ordering::Relaxed);
        self.file = file;
        self.zeroed_to = segment.bytes;
        self.file_len = segment.bytes;
        let old = std::mem::replace(&mut self.active, segment);
        tracing::debug!(segment = %old.path.display(), bytes = old.bytes, "journal segment closed");
        self.closed.push_back(old);
        Ok(())
    }

    /// Acts on the committed batch: rotates a big enough active segment that holds only
    /// committed batches, then deletes the oldest closed segments whose records PostgreSQL
    /// has (this epoch's batches up to the committed one; earlier epochs' once replayed).
    /// Only a prefix is deleted, one durable deletion at a time, so that a crash can never
    /// leave a newer segment deleted and an older one present but by a failed directory
    /// fsync (a gap the scan tolerates). A failed deletion is retried at the next call.
    fn housekeep(&mut self) -> Result<(), String> {
        let committed = BatchSeq::new(self.shared.committed.load(Ordering::Acquire));
        let replayed = self.shared.replayed.load(Ordering::Acquire);
        // The zeros written ahead count: they are on disk, and toward the journal's bound,
        // which a node at its bound must get below once PostgreSQL has everything.
        if self.active.max_batch.is_some_and(|b| b <= committed)
            && self.file_len >= self.rotate_on_commit_bytes
        {
            self.rotate()?;
        }
        if self.dir_unsynced {
            if let Err(e) = segment::sync_dir(&self.dir) {
                tracing::warn!(error = %e, "cannot fsync the journal directory after a deletion; will retry before deleting more");
                return Ok(());
            }
            self.dir_unsynced = false;
        }
        while let Some(oldest) = self.closed.front() {
            let in_postgres = if oldest.epoch == self.epoch {
                oldest.max_batch.is_none_or(|b| b <= committed)
            } else {
                replayed
            };
            if !in_postgres {
                break;
            }
            match std::fs::remove_file(&oldest.path) {
                // Gone already (removed by hand): what matters is that it is gone.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(segment = %oldest.path.display(), error = %e, "cannot delete a journal segment PostgreSQL has; will retry");
                    break;
                }
                _ => {}
            }
            self.shared.bytes.fetch_sub(oldest.bytes, Ordering::Relaxed);
            self.shared.segments.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(segment = %oldest.path.display(), committed = committed.get(), "journal segment deleted");
            self.closed.pop_front();
            if let Err(e) = segment::sync_dir(&self.dir) {
                tracing::warn!(error = %e, "deleted a journal segment but cannot fsync the directory; will retry before deleting more");
                self.dir_unsynced = true;
                break;
            }
        }
        Ok(())
    }
}
