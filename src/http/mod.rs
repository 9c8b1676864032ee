//! The HTTP layer: one module per resource, each with its own `router()`, merged here.
//!
//! Handlers are thin: parse the request, call the domain, map the result. Every error goes
//! through [`error::ApiError`], so every error answer has the same JSON shape.

pub mod body;
mod counters;
pub mod error;
mod health;
mod increments;
mod metrics;
pub mod observe;
mod openapi;

use std::sync::Arc;

use axum::Router;

use crate::increment::ValidationRules;
use crate::ingest::{Ingest, IngestError};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::pending::Unpersisted;
use crate::readiness::Readiness;
use crate::storage::Storage;
use error::ApiError;

/// What every handler may use.
pub struct AppState {
    pub ingest: Ingest,
    pub rules: ValidationRules,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// Whether increments are applied before the answer (`--mode sync`).
    pub sync_mode: bool,
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
    /// The flush path's state, in buffered mode.
    pub flush: Option<Arc<Unpersisted>>,
    /// The journal, with `--durability journal`.
    pub journal: Option<Journal>,
    /// For the pool's figures in the metrics.
    pub storage: Storage,
}

impl AppState {
    /// Counts a request refused for its input among the rejected increments (one per
    /// request: a malformed batch has no countable items).
    fn count_invalid<T>(&self, parsed: Result<T, ApiError>, n: u64) -> Result<T, ApiError> {
        if parsed.is_err() {
            self.metrics.reject("invalid", n);
        }
        parsed
    }

    /// Counts `n` increments as accepted or rejected, by what the request path said.
    fn count<T>(&self, taken: Result<T, IngestError>, n: u64) -> Result<T, ApiError> {
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

/// The whole API, wrapped in [`observe`], which every request goes through, routed or not.
pub fn app(state: Arc<AppState>, access_log: bool) -> observe::Observe<Router> {
    let observer = Arc::new(observe::Observer::new(state.metrics.clone(), access_log));
    tower_layer::Layer::layer(&observe::ObserveLayer(observer), router(state))
}

/// The routes.
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(increments::router())
        .merge(counters::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
