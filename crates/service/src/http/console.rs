//! The console: a page at `/` that shows a node's figures live, reads a counter or a tenant's
//! distinct count, and shows the node's settings, secrets hidden.
//!
//! The page is three static files compiled into the binary (`console/`: plain HTML, CSS and
//! JavaScript, no framework, nothing fetched from elsewhere), open like the probes since they
//! hold no data. Everything it shows comes from `GET /console/status` and the API's own read
//! routes, which, with `--auth required`, need an API key or a session like any other read.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use super::context::ApiContext;
use super::route::Route;

pub const ROUTES: &[Route] = &[
    Route::new("/", || get(page)),
    Route::new("/console.js", || get(script)),
    Route::new("/console.css", || get(style)),
    Route::new("/console/status", || get(status)),
];

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The page may load only its own script and style, and talk only to its own node.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// A static file: revalidated on every load (`no-cache`), so that a node upgraded in place
/// never serves a page with the script of an older one.
fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
        ],
        body,
    )
}

/// The console page.
#[utoipa::path(get, path = "/", tag = "console", responses((status = 200, description = "The console page; it reads GET /console/status", body = String, content_type = "text/html")))]
pub(crate) async fn page() -> impl IntoResponse {
    file("text/html; charset=utf-8", PAGE)
}

/// The console's script.
#[utoipa::path(get, path = "/console.js", tag = "console", responses((status = 200, description = "The console page's script", body = String, content_type = "text/javascript")))]
pub(crate) async fn script() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", SCRIPT)
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console.css", tag = "console", responses((status = 200, description = "The console page's style sheet", body = String, content_type = "text/css")))]
pub(crate) async fn style() -> impl IntoResponse {
    file("text/css; charset=utf-8", STYLE)
}

/// A setting of the node, as the console shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Setting {
    /// Its name in the configuration file (`flush_interval`).
    #[schema(example = "flush_interval")]
    name: &'static str,
    /// Its value as written on the command line; a connection string's password is `***`.
    #[schema(example = "1s")]
    value: String,
}

/// What the node is doing now, and how it is set up.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ConsoleStatus {
    /// This node's id.
    node_id: String,
    /// Tally's version.
    version: &'static str,
    /// `buffered` or `sync`.
    mode: String,
    /// `journal`, `memory`, or `none` (sync mode).
    durability: String,
    /// Whether `GET /ready` would answer 200 now.
    ready: bool,
    /// Why not, when it is not ready.
    not_ready: Option<String>,
    /// HTTP requests this node answered since it started (of the main address; a client
    /// computes requests per second from two readings).
    requests: u64,
    /// Increments accepted since the node started.
    increments: u64,
    /// Items accepted since the node started.
    items: u64,
    /// Age in seconds of the oldest increment or item not yet in PostgreSQL (0 when none);
    /// null in sync mode, where nothing waits.
    flush_lag_seconds: Option<f64>,
    /// Keys and item ids held in memory until PostgreSQL has them; null in sync mode.
    pending_keys: Option<u64>,
    /// The bound on pending keys (`--max-pending-keys`); past it, new keys get 503.
    max_pending_keys: u64,
    /// Bytes of the journal on disk; null without a journal (`--durability memory`, sync
    /// mode).
    journal_bytes: Option<u64>,
    /// The bound on the journal (`--max-journal-bytes`); past it, increments get 503.
    max_journal_bytes: u64,
    /// The node's settings, secrets hidden.
    settings: Vec<Setting>,
}

/// The node's figures and settings, for the console.
#[utoipa::path(get, path = "/console/status", tag = "console", security((), ("bearer" = []), ("session" = [])), responses(
    (status = 200, description = "The node's figures now, and its settings with the database password as `***`", body = ConsoleStatus),
    (status = 401, description = "With --auth required: no credentials, or ones that are not valid", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "Overloaded: over --max-in-flight", body = super::error::ErrorBody),
))]
pub(crate) async fn status(State(ctx): State<Arc<ApiContext>>) -> impl IntoResponse {
    let not_ready = ctx.readiness.check().await.err().map(|e| e.to_string());
    let pending = ctx.ingest.pending();
    let profile = ctx
        .profile
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let status = ConsoleStatus {
        node_id: profile.node_id.clone(),
        version: profile.version,
        mode: profile.mode.clone(),
        durability: profile.durability.clone(),
        ready: not_ready.is_none(),
        not_ready,
        requests: ctx.requests_answered.load(Ordering::Relaxed),
        increments: ctx.metrics.increments_accepted.get(),
        items: ctx.metrics.items_accepted.get(),
        flush_lag_seconds: pending.map(|p| p.oldest_age().as_secs_f64()),
        pending_keys: pending.map(|p| p.keys() as u64),
        max_pending_keys: profile.max_pending_keys,
        journal_bytes: ctx.ingest.journal().map(|j| j.bytes()),
        max_journal_bytes: profile.max_journal_bytes,
        settings: profile
            .settings
            .iter()
            .map(|(name, value)| Setting {
                name,
                value: value.clone(),
            })
            .collect(),
    };
    ([(CACHE_CONTROL, "no-store")], Json(status))
}
