//! `GET /health` (liveness, alias `/api/health`) and `GET /ready` (readiness).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::ApiContext;
use super::error::ApiError;
use crate::readiness::NotReady;

pub fn router() -> Router<Arc<ApiContext>> {
    Router::new()
        .route("/health", get(health))
        .route("/api/health", get(health))
        .route("/ready", get(ready))
}

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
