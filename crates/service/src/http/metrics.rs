//! `GET /metrics`: the Prometheus exposition of [`crate::metrics::Metrics`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use super::context::ApiContext;
use super::route::Route;

pub const ROUTES: &[Route] = &[Route::new("/metrics", || get(metrics))];

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "The metrics in the OpenMetrics text format, which Prometheus reads", body = String, content_type = "application/openmetrics-text"),
    (status = 404, description = "With --metrics-listen: /metrics is served on that address instead", body = super::error::ErrorBody),
))]
pub(crate) async fn metrics(State(ctx): State<Arc<ApiContext>>) -> impl IntoResponse {
    let m = &ctx.metrics;
    if let Some(pending) = ctx.ingest.pending() {
        m.pending_keys.set(pending.keys() as i64);
        m.pending_bytes.set(pending.bytes() as i64);
        m.oldest_unpersisted_age
            .set(pending.oldest_age().as_secs_f64());
    }
    if let Some(journal) = ctx.ingest.journal() {
        m.journal_bytes.set(journal.bytes() as i64);
    }
    // The same check as GET /ready, so that the metric says what the balancer sees even
    // where nothing polls /ready. It pings PostgreSQL, for at most 2 s.
    let readiness = ctx.readiness.check().await;
    m.set_ready(readiness.as_ref().map_or_else(|r| r.reason(), |()| "ok"));
    let pool = ctx.ingest.storage().pool_status();
    m.db_pool_max_connections.set(pool.max_size as i64);
    for (state, n) in [
        ("idle", pool.available),
        ("in_use", pool.size - pool.available),
    ] {
        m.db_pool_connections
            .get_or_create(&crate::metrics::StateLabel { state })
            .set(n as i64);
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}
