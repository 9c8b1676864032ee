//! The HTTP layer: one module per resource, each with its own `router()`, merged here.
//!
//! Handlers are thin: parse the request, call the domain, map the result. Every error goes
//! through [`error::ApiError`], so every error answer has the same JSON shape.

pub mod body;
mod context;
mod counters;
pub mod error;
mod health;
mod increments;
mod metrics;
pub mod observe;
mod openapi;

use std::sync::Arc;

use axum::Router;

pub use context::ApiContext;
use error::ApiError;

/// The whole API, wrapped in [`observe`], which every request goes through, routed or not.
pub fn app(ctx: Arc<ApiContext>, access_log: bool) -> observe::Observe<Router> {
    let observer = Arc::new(observe::Observer::new(ctx.metrics.clone(), access_log));
    tower_layer::Layer::layer(&observe::ObserveLayer(observer), router(ctx))
}

/// The routes.
fn router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .merge(increments::router())
        .merge(counters::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ctx)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
