//! Whether this node should receive traffic: the answer behind `GET /ready`, which load
//! balancers use as their health check.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ingest::LiveBound;
use crate::journal::Journal;
use crate::pending::Unpersisted;
use crate::storage::Storage;

/// The hard freshness bound of DESIGN.md: past it, the node reports itself not ready.
pub const FRESHNESS_BOUND: Duration = Duration::from_secs(10);

/// How long a database check may take before it counts as a failure.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Every reason `tally_ready` names: `ok` (ready), then each of [`NotReady`]'s, in the order
/// [`Readiness::check`] tries them (the first that holds is the one given).
pub const REASONS: [&str; 7] = [
    "ok",
    "shutting_down",
    "journal_failed",
    "journal_full",
    "pending_keys_full",
    "stale",
    "database_unavailable",
];

/// Why the node is not ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the database is unreachable: {0}")]
    Database(String),
    #[error("the journal failed; this node cannot make increments durable")]
    JournalFailed,
    #[error(
        "the journal holds {bytes} bytes, its bound is {max}: increments are refused until PostgreSQL takes them"
    )]
    JournalFull { bytes: u64, max: u64 },
    #[error(
        "the bound on pending keys is reached: new keys are refused until PostgreSQL takes them"
    )]
    PendingFull,
    #[error("the oldest unpersisted increment is {:.1}s old (bound: {}s)", .0.as_secs_f64(), FRESHNESS_BOUND.as_secs())]
    Stale(Duration),
}

impl NotReady {
    /// The reason as `tally_ready` labels it. `/ready`'s error code says `overloaded` for
    /// both bounds; the metric tells them apart, since each has its own alert.
    pub fn reason(&self) -> &'static str {
        match self {
            NotReady::ShuttingDown => "shutting_down",
            NotReady::Database(_) => "database_unavailable",
            NotReady::JournalFailed => "journal_failed",
            NotReady::JournalFull { .. } => "journal_full",
            NotReady::PendingFull => "pending_keys_full",
            NotReady::Stale(_) => "stale",
        }
    }
}

#[derive(Clone)]
pub struct Readiness {
    shutting_down: CancellationToken,
    storage: Storage,
    pending: Option<Arc<Unpersisted>>,
    journal: Option<Journal>,
    max_journal_bytes: LiveBound,
}

impl Readiness {
    /// `pending` is `None` in sync mode, where nothing is ever unpersisted; `journal` is `None`
    /// unless increments go through one, and then refuses them past `max_journal_bytes`.
    pub fn new(
        shutting_down: CancellationToken,
        storage: Storage,
        pending: Option<Arc<Unpersisted>>,
        journal: Option<Journal>,
        max_journal_bytes: LiveBound,
    ) -> Self {
        Readiness {
            shutting_down,
            storage,
            pending,
            journal,
            max_journal_bytes,
        }
    }

    pub async fn check(&self) -> Result<(), NotReady> {
        if self.shutting_down.is_cancelled() {
            return Err(NotReady::ShuttingDown);
        }
        if let Some(journal) = &self.journal {
            if journal.has_failed() {
                return Err(NotReady::JournalFailed);
            }
            let bytes = journal.bytes();
            let max = self.max_journal_bytes.get();
            if bytes >= max {
                return Err(NotReady::JournalFull { bytes, max });
            }
        }
        if let Some(pending) = &self.pending {
            if pending.is_full() {
                return Err(NotReady::PendingFull);
            }
            let age = pending.oldest_age();
            if age > FRESHNESS_BOUND {
                return Err(NotReady::Stale(age));
            }
        }
        match tokio::time::timeout(PING_TIMEOUT, self.storage.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotReady::Database(e.to_string())),
            Err(_) => Err(NotReady::Database(format!(
                "no answer within {}s",
                PING_TIMEOUT.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_named_once_in_reasons() {
        let all = [
            NotReady::ShuttingDown,
            NotReady::JournalFailed,
            NotReady::JournalFull { bytes: 2, max: 1 },
            NotReady::PendingFull,
            NotReady::Stale(Duration::from_secs(11)),
            NotReady::Database("down".into()),
        ];
        let named: Vec<&str> = std::iter::once("ok")
            .chain(all.iter().map(NotReady::reason))
            .collect();
        assert_eq!(
            named, REASONS,
            "REASONS lists each reason once, in check order"
        );
    }
}
