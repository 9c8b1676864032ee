//! The flush path: pending deltas to PostgreSQL, exactly once, in order.
//!
//! Every `flush_interval` the [`Flusher`] cuts the open batch out of the pending buffer
//! ([`Unpersisted`]), which keeps it, sorted by key, until PostgreSQL has it, and writes it
//! with [`Storage::apply_batch`], which records the batch's sequence number in the same
//! transaction. Batches are written one at a time and in order, so
//! "PostgreSQL's progress row for this node is at or past batch N" means exactly "batch N and
//! every batch before it are applied".
//!
//! A batch that fails is retried as it is, same number and same content, with capped
//! exponential backoff, while newer increments collect in the open batch. It is never merged
//! into a newer batch: a commit whose answer was lost may have been applied, and only the
//! progress row can tell, which is what the retry consults.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchSeq, FlushBatch};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::pending::Unpersisted;
use crate::storage::{BatchOutcome, Owner, Replay, Storage, StorageError};

/// First wait before retrying a failed flush; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The task that writes batches. It runs until told to stop, then writes what is left.
pub struct Flusher {
    pending: Arc<Unpersisted>,
    storage: Storage,
    owner: Owner,
    /// The flush interval; a reload may change it ([`Flusher::interval`]).
    interval: Arc<watch::Sender<Duration>>,
    /// The number of the open batch.
    open_seq: BatchSeq,
    /// Told which batches PostgreSQL has, so that it can drop their segments.
    journal: Option<Journal>,
    metrics: Arc<Metrics>,
}

/// How a flusher's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FlushEnd {
    /// Everything acknowledged is in PostgreSQL.
    Drained,
    /// Told to give up while PostgreSQL was failing: the batch it was writing, and what
    /// collected behind it, were not written ([`Unpersisted::unwritten`] says how much).
    Abandoned,
    /// Another process took the node id over; this one stopped writing.
    Fenced,
}

/// A batch to write: one this process cut, or one of an earlier epoch from the journal.
#[derive(Clone, Copy)]
enum Work<'a> {
    Live(&'a FlushBatch),
    Replay(&'a Replay),
}

impl Work<'_> {
    fn batch(&self) -> BatchSeq {
        match self {
            Work::Live(b) => b.seq,
            Work::Replay(r) => r.batch,
        }
    }

    fn epoch(&self, owner: &Owner) -> u64 {
        match self {
            Work::Live(_) => owner.epoch,
            Work::Replay(r) => r.epoch,
        }
    }

    fn keys(&self) -> usize {
        match self {
            Work::Live(b) => b.deltas.len(),
            Work::Replay(r) => r.deltas.len(),
        }
    }
}

/// The outcome of writing one batch.
enum Written {
    Committed,
    Aborted,
    Fenced,
}

impl Flusher {
    /// A flusher whose first batch is `open_seq`, the batch the pending map is open on.
    pub fn new(
        pending: Arc<Unpersisted>,
        storage: Storage,
        owner: Owner,
        interval: Duration,
        open_seq: BatchSeq,
        journal: Option<Journal>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Flusher {
            pending,
            storage,
            owner,
            interval: Arc::new(watch::channel(interval).0),
            open_seq,
            journal,
            metrics,
        }
    }

    /// Where to send a new flush interval: the next flush comes one new interval after it is
    /// sent.
    pub fn interval(&self) -> Arc<watch::Sender<Duration>> {
        self.interval.clone()
    }

    /// Writes the batches of earlier epochs recovered from the journal, in order, before
    /// anything new, then tells the journal it may delete their segments. An error says how
    /// the node must end instead of serving.
    pub async fn replay(
        &self,
        replays: Vec<Replay>,
        abort: &CancellationToken,
    ) -> Result<(), FlushEnd> {
        for replay in &replays {
            match self.write(Work::Replay(replay), abort).await {
                Written::Committed => {}
                Written::Aborted => return Err(FlushEnd::Abandoned),
                Written::Fenced => return Err(FlushEnd::Fenced),
            }
        }
        if let Some(journal) = &self.journal {
            journal.replayed();
        }
        Ok(())
    }

    /// Runs [`Flusher::run`] on a thread of its own, with its own single-threaded runtime and
    /// its own connection, so that sorting a batch and encoding its statements never hold up
    /// a request on the runtime that serves HTTP. Should another process take the node id
    /// over, the shutdown is forced: nothing accepted from then on could be written.
    pub fn spawn_thread(
        mut self,
        stop: CancellationToken,
        shutdown: crate::shutdown::Shutdown,
    ) -> std::io::Result<std::thread::JoinHandle<FlushEnd>> {
        self.storage = self
            .storage
            .separate_pool(1)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("tally-flusher".into())
            .spawn(move || {
                // Should this thread panic, nothing would flush any more: stop serving.
                let _stop_on_panic = ForceShutdownOnPanic(shutdown.clone());
                let end = runtime.block_on(self.run(stop, shutdown.forced_token()));
                if end == FlushEnd::Fenced {
                    shutdown.force();
                }
                end
            })
    }

    /// Flushes every interval until `stop` is cancelled, then flushes once more so that
    /// nothing acknowledged before `stop` stays behind. While PostgreSQL fails, it retries;
    /// `abort` makes it give up (for a second Ctrl-C).
    pub async fn run(mut self, stop: CancellationToken, abort: CancellationToken) -> FlushEnd {
        let mut interval = self.interval.subscribe();
        let ticker_every = |period: Duration| {
            let first = tokio::time::Instant::now() + period;
            let mut ticker = tokio::time::interval_at(first, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        };
        let mut ticker = ticker_every(*interval.borrow_and_update());
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => false,
                Ok(()) = interval.changed() => {
                    ticker = ticker_every(*interval.borrow_and_update());
                    continue;
                }
                _ = stop.cancelled() => true,
            };
            match self.flush_once(&abort).await {
                Written::Committed if stopping => return FlushEnd::Drained,
                Written::Committed => {}
                Written::Aborted => return FlushEnd::Abandoned,
                Written::Fenced => return FlushEnd::Fenced,
            }
        }
    }

    /// Cuts the open batch and writes it. When it is empty, PostgreSQL already has every
    /// batch before it, and the journal is told so all the same: that is what releases
    /// segments left from before a restart, and retries a deletion that failed, on a quiet
    /// node.
    async fn flush_once(&mut self, abort: &CancellationToken) -> Written {
        let closing = self.open_seq;
        let batch = self.pending.cut(closing);
        self.open_seq = closing.next();
        match batch {
            None => {
                if let Some(journal) = &self.journal {
                    journal.committed(closing);
                }
                Written::Committed
            }
            Some(batch) => self.write(Work::Live(&batch), abort).await,
        }
    }

    /// Writes one batch, retrying until PostgreSQL has it, `abort` is cancelled, or another
    /// process turns out to own the node id.
    async fn write(&self, work: Work<'_>, abort: &CancellationToken) -> Written {
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let result = match work {
                Work::Live(batch) => {
                    self.storage
                        .apply_batch(&self.owner, batch.seq, &batch.deltas)
                        .await
                }
                Work::Replay(replay) => self.storage.replay_batch(&self.owner, replay).await,
            };
            let seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(outcome) => {
                    crate::fault::point("after-commit");
                    self.record_success(work, &outcome, seconds, failures);
                    if let Work::Live(batch) = work {
                        self.pending.settle(batch);
                        if let Some(journal) = &self.journal {
                            journal.committed(batch.seq);
                        }
                    }
                    return Written::Committed;
                }
                Err(e @ StorageError::Fenced(_)) => {
                    tracing::error!(error = %e, batch = work.batch().get(), "flush refused; this process stops writing");
                    return Written::Fenced;
                }
                Err(e) => {
                    self.metrics.flush("failed", seconds);
                    failures += 1;
                    self.report_failure(work, &e, failures);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(jitter(backoff)) => {}
                _ = abort.cancelled() => return Written::Aborted,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn record_success(&self, work: Work<'_>, outcome: &BatchOutcome, seconds: f64, failures: u32) {
        let label = if outcome.applied {
            "applied"
        } else {
            "already_applied"
        };
        self.metrics.flush(label, seconds);
        if outcome.applied {
            self.metrics.flushed_rows.inc_by(work.keys() as u64);
        }
        let (batch, epoch) = (work.batch().get(), work.epoch(&self.owner));
        // One line per left-out delta, the only trace of it outside rejected_increments.
        for r in &outcome.rejected {
            self.metrics.reject(r.reason.label(), 1);
            tracing::warn!(
                key = %r.key, delta = r.delta, batch, epoch, reason = r.reason.label(),
                sqlstate = %r.sqlstate, message = %r.message,
                "increment rejected: PostgreSQL refuses this key's delta for good; it is left out of the batch and recorded in rejected_increments"
            );
        }
        if failures > 0 {
            tracing::info!(
                batch,
                epoch,
                failures,
                already_applied = !outcome.applied,
                "flush succeeded after failing; PostgreSQL is reachable again"
            );
        }
        tracing::debug!(batch, epoch, keys = work.keys(), seconds, "flushed");
    }

    /// Logs the first failure of a batch as a warning, later ones only at debug level: one
    /// line per change of state, not one per retry.
    fn report_failure(&self, work: Work<'_>, error: &StorageError, failures: u32) {
        let (batch, epoch) = (work.batch().get(), work.epoch(&self.owner));
        if failures == 1 {
            tracing::warn!(
                batch,
                epoch,
                keys = work.keys(),
                %error,
                "flush failed; retrying the same batch until PostgreSQL takes it"
            );
        } else {
            tracing::debug!(batch, epoch, failures, %error, "flush failed again");
        }
    }
}

/// Forces the shutdown when dropped by a panicking thread.
struct ForceShutdownOnPanic(crate::shutdown::Shutdown);

impl Drop for ForceShutdownOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the flusher panicked; shutting down");
            self.0.force();
        }
    }
}

/// A random wait between half and all of `d`, so that nodes which lost the database together
/// do not come back in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}
