//! The HTTP layer: one module per resource, each listing its routes (`route.rs`); the
//! router and the metrics' route labels are both made from those lists.
//!
//! Handlers are thin: parse the request, call the domain, map the result. Every error goes
//! through [`error::ApiError`], so every error answer has the same JSON shape.

pub mod access;
mod accounts;
pub mod body;
mod console;
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
mod runbook;
pub mod server;

use std::sync::Arc;

use axum::Router;

pub use context::ApiContext;
use error::ApiError;
use route::Route;
/// The anchor a runbook heading gets, on GitHub and on `GET /runbook` alike.
pub use runbook::anchor as runbook_anchor;

/// How the API is served.
pub struct Serving {
    /// One log line per request; a reload may change it.
    pub access_log: Arc<std::sync::atomic::AtomicBool>,
    /// Auth and rate limits, when either is on.
    pub guard: Option<Arc<access::Guard>>,
    /// Whether `/metrics` is served here (or on an address of its own, [`metrics_app`]).
    pub metrics_here: bool,
    /// Most requests handled at once; more get 503.
    pub max_in_flight: usize,
}

/// The whole API, wrapped in [`observe`], which every request goes through, routed or not.
pub fn app(ctx: Arc<ApiContext>, serving: Serving) -> observe::Observe<Router> {
    let observer = Arc::new(observe::Observer::new(
        ctx.metrics.clone(),
        serving.access_log,
        serving.max_in_flight,
        routes(),
        ctx.requests_answered.clone(),
    ));
    let mut router = router(ctx, serving.metrics_here);
    if let Some(guard) = serving.guard {
        router = router.layer(axum::middleware::from_fn_with_state(guard, access::guard));
    }
    tower_layer::Layer::layer(&observe::ObserveLayer(observer), router)
}

/// `/metrics` alone, for `--metrics-listen`.
pub fn metrics_app(ctx: Arc<ApiContext>) -> Router {
    metrics::ROUTES
        .iter()
        .fold(Router::new(), |router, r| {
            router.route(&r.router_path(), r.handlers())
        })
        .fallback(not_found)
        .with_state(ctx)
}

/// Every route of the API, resource by resource.
fn routes() -> impl Iterator<Item = &'static Route> {
    [
        increments::ROUTES,
        counters::ROUTES,
        items::ROUTES,
        accounts::ROUTES,
        health::ROUTES,
        metrics::ROUTES,
        openapi::ROUTES,
        runbook::ROUTES,
        console::ROUTES,
    ]
    .into_iter()
    .flatten()
}

fn router(ctx: Arc<ApiContext>, metrics_here: bool) -> Router {
    routes()
        .filter(|r| metrics_here || r.path != "/metrics")
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
