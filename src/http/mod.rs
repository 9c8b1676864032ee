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
mod openapi;

use std::sync::Arc;

use axum::Router;

use crate::flush::FlushState;
use crate::increment::ValidationRules;
use crate::ingest::Ingest;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
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
    pub flush: Option<Arc<FlushState>>,
    /// The journal, with `--durability journal`.
    pub journal: Option<Journal>,
}

/// The whole API.
pub fn router(state: Arc<AppState>) -> Router {
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
