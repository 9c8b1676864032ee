//! `GET /health` (liveness, alias `/api/health`) and `GET /ready` (readiness).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use super::context::ApiContext;
use super::error::ApiError;
use super::route::Route;
use crate::readiness::NotReady;

pub const ROUTES: &[Route] = &[
    Route::new("/health", || get(health)),
    Route::new("/api/health", || get(health)),
    Route::new("/ready", || get(ready)),
];

/// What a probe answers when all is well.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Status {
    /// `ok` from `/health`, `ready` from `/ready`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`", body = Status)))]
pub(crate) async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: the database answers, freshness holds, and the node is not shutting down.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "Ready for traffic: `{\"status\": \"ready\"}`", body = Status),
    (status = 503, description = "Not ready; the code and the message say why (shutting_down, database_unavailable, stale, journal_failed, overloaded)", body = super::error::ErrorBody),
))]
pub(crate) async fn ready(State(ctx): State<Arc<ApiContext>>) -> Result<Json<Status>, ApiError> {
    match ctx.readiness.check().await {
        Ok(()) => Ok(Json(Status { status: "ready" })),
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
