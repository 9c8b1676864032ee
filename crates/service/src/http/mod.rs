//! The HTTP layer: one module per resource, each listing its routes (`route.rs`); the
//! router and the metrics' route labels are both made from those lists.
//!
//! Handlers are thin: parse the request, call the domain, map the result. Every error goes
//! through [`error::ApiError`], so every error answer has the same JSON shape.

pub mod body;
mod context;
mod counters;
pub mod error;
mod health;
mod idempotency;
mod increments;
mod items;
mod metrics;
pub mod observe;
mod openapi;
mod route;

use std::sync::Arc;

use axum::Router;

pub use context::ApiContext;
use error::ApiError;
use route::Route;

/// The whole API, wrapped in [`observe`], which every request goes through, routed or not.
pub fn app(ctx: Arc<ApiContext>, access_log: bool) -> observe::Observe<Router> {
    let observer = Arc::new(observe::Observer::new(
        ctx.metrics.clone(),
        access_log,
        routes(),
    ));
    tower_layer::Layer::layer(&observe::ObserveLayer(observer), router(ctx))
}

/// Every route of the API, resource by resource.
fn routes() -> impl Iterator<Item = &'static Route> {
    [
        increments::ROUTES,
        counters::ROUTES,
        items::ROUTES,
        health::ROUTES,
        metrics::ROUTES,
        openapi::ROUTES,
    ]
    .into_iter()
    .flatten()
}

fn router(ctx: Arc<ApiContext>) -> Router {
    routes()
        .fold(Router::new(), |router, r| {
            router.route(&r.router_path(), r.handlers())
        })
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
