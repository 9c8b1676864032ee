//! Whether this node should receive traffic: the answer behind `GET /ready`, which load
//! balancers use as their health check.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::flush::FlushState;
use crate::journal::Journal;
use crate::storage::Storage;

/// The hard freshness bound of DESIGN.md: past it, the node reports itself not ready.
pub const FRESHNESS_BOUND: Duration = Duration::from_secs(10);

/// How long a database check may take before it counts as a failure.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the node is not ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the database is unreachable: {0}")]
    Database(String),
    #[error("the journal failed; this node cannot make increments durable")]
    JournalFailed,
    #[error("the oldest unpersisted increment is {:.1}s old (bound: {}s)", .0.as_secs_f64(), FRESHNESS_BOUND.as_secs())]
    Stale(Duration),
}

#[derive(Clone)]
pub struct Readiness {
    shutting_down: CancellationToken,
    storage: Storage,
    flush: Option<Arc<FlushState>>,
    journal: Option<Journal>,
}

impl Readiness {
    /// `flush` is `None` in sync mode, where nothing is ever unpersisted; `journal` is `None`
    /// unless increments go through one.
    pub fn new(
        shutting_down: CancellationToken,
        storage: Storage,
        flush: Option<Arc<FlushState>>,
        journal: Option<Journal>,
    ) -> Self {
        Readiness {
            shutting_down,
            storage,
            flush,
            journal,
        }
    }

    pub async fn check(&self) -> Result<(), NotReady> {
        if self.shutting_down.is_cancelled() {
            return Err(NotReady::ShuttingDown);
        }
        if self.journal.as_ref().is_some_and(Journal::has_failed) {
            return Err(NotReady::JournalFailed);
        }
        if let Some(flush) = &self.flush {
            let age = flush.oldest_unpersisted_age();
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
