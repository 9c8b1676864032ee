//! What every handler may use: the request path, readiness, the metrics and the limits of a
//! request. Built once per node and shared by every request behind an `Arc`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use super::error::ApiError;
use crate::access::Accounts;
use crate::idempotency::Idempotency;
use crate::idempotency::Once;
use crate::increment::ValidationRules;
use crate::ingest::{Ingest, IngestError};
use crate::metrics::{Metrics, OutcomeLabel, ReasonLabel};
use crate::profile::Profile;
use crate::readiness::Readiness;

/// The handlers' shared context.
pub struct ApiContext {
    /// Where increments go and totals come from; it also holds the pending buffer, the
    /// journal and the database, whose figures `/metrics` reports.
    pub ingest: Ingest,
    /// What `/ready` answers.
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
    /// The rules an increment must follow.
    pub rules: ValidationRules,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// A body slower than this gets 408.
    pub read_timeout: std::time::Duration,
    /// Most elements in one `POST /increments` or `POST /items`.
    pub max_batch: usize,
    /// Requests with an `Idempotency-Key`.
    pub idempotency: Idempotency,
    /// Users, sessions and API keys.
    pub accounts: Arc<Accounts>,
    /// Whether session cookies are marked `Secure` (not with `--insecure-cookies`).
    pub secure_cookies: bool,
    /// The node's identity and settings, secrets hidden, for the console; a reload replaces
    /// it.
    pub profile: RwLock<Profile>,
    /// Requests answered on the main address since start (`http::observe` counts them), from
    /// which the console computes requests per second.
    pub requests_answered: Arc<AtomicU64>,
}

impl ApiContext {
    /// Counts a request refused for its input among the rejected increments (one per
    /// request: a malformed batch has no countable items).
    pub(super) fn count_invalid<T>(
        &self,
        parsed: Result<T, ApiError>,
        n: u64,
    ) -> Result<T, ApiError> {
        if parsed.is_err() {
            self.metrics.reject("invalid", n);
        }
        parsed
    }

    /// Counts a refused `POST /items` among the rejected items, `n` of them.
    pub(super) fn count_invalid_items<T>(
        &self,
        parsed: Result<T, ApiError>,
        n: u64,
    ) -> Result<T, ApiError> {
        if parsed.is_err() {
            self.metrics
                .items_rejected
                .get_or_create(&ReasonLabel { reason: "invalid" })
                .inc_by(n);
        }
        parsed
    }

    /// Counts `n` items as accepted or rejected, by what the request path said.
    pub(super) fn count_items<T>(
        &self,
        taken: Result<T, IngestError>,
        n: u64,
    ) -> Result<T, ApiError> {
        match taken {
            Ok(t) => {
                self.metrics.items_accepted.inc_by(n);
                Ok(t)
            }
            Err(e) => {
                let reason = e.reason();
                self.metrics
                    .items_rejected
                    .get_or_create(&ReasonLabel { reason })
                    .inc_by(n);
                Err(e.into())
            }
        }
    }

    /// Counts what became of a request with an `Idempotency-Key` of `n` increments (or items,
    /// with `items`): only a request applied now is accepted; a retry given its first answer
    /// counts nowhere.
    pub(super) fn count_once(
        &self,
        once: Result<Once, IngestError>,
        n: u64,
        items: bool,
    ) -> Result<Once, ApiError> {
        let (accepted, rejected) = if items {
            (&self.metrics.items_accepted, &self.metrics.items_rejected)
        } else {
            (
                &self.metrics.increments_accepted,
                &self.metrics.increments_rejected,
            )
        };
        let reason = match &once {
            Ok(Once::Applied(_)) => {
                accepted.inc_by(n);
                None
            }
            Ok(Once::Replayed(_)) => None,
            Ok(Once::Reused) => Some("idempotency_key_reused"),
            Err(e) => Some(e.reason()),
        };
        if let Some(reason) = reason {
            rejected.get_or_create(&ReasonLabel { reason }).inc_by(n);
        }
        self.metrics
            .idempotent_requests
            .get_or_create(&OutcomeLabel {
                outcome: match &once {
                    Ok(Once::Applied(_)) => "applied",
                    Ok(Once::Replayed(_)) => "replayed",
                    Ok(Once::Reused) => "reused",
                    Err(_) => "failed",
                },
            })
            .inc();
        once.map_err(ApiError::from)
    }

    /// Counts `n` increments as accepted or rejected, by what the request path said.
    pub(super) fn count<T>(&self, taken: Result<T, IngestError>, n: u64) -> Result<T, ApiError> {
        match taken {
            Ok(t) => {
                self.metrics.increments_accepted.inc_by(n);
                Ok(t)
            }
            Err(e) => {
                self.metrics.reject(e.reason(), n);
                Err(e.into())
            }
        }
    }
}
