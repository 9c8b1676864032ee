//! `GET /health` (liveness, alias `/api/health`) and `GET /ready` (readiness).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use super::context::ApiContext;
use super::error::ApiError;
use super::route::Route;
use crate::readiness::NotReady;

pub const ROUTES: &[Route] = &[
    Route::new("/health", || get(health)),
    Route::new("/api/health", || get(health)),
    Route::new("/ready", || get(ready)),
];

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "Alive")))]
pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers, freshness holds, and the node is not shutting down.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Ready for traffic"),
    (status = 503, description = "Not ready; the message says why", body = super::error::ErrorBody),
))]
pub(crate) async fn ready(State(ctx): State<Arc<ApiContext>>) -> Result<Json<Value>, ApiError> {
    match ctx.readiness.check().await {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(reason) => {
            let code = match reason {
                NotReady::ShuttingDown => "shutting_down",
                NotReady::Database(_) => "database_unavailable",
                NotReady::Stale(_) => "stale",
                NotReady::JournalFailed => "journal_failed",
                NotReady::JournalFull { .. } | NotReady::PendingFull => "overloaded",
            };
            Err(ApiError::unavailable(code, reason.to_string()))
        }
    }
}
