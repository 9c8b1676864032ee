//! `GET /counters/{key}` (and its alias `GET /increment/{key}`): a key's total, persisted plus
//! this node's pending increments.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Serialize;

use super::context::ApiContext;
use super::error::ApiError;
use super::route::Route;
use crate::increment::check_key;

pub const ROUTES: &[Route] = &[
    Route::new("/counters/{key}", || get(counter)),
    Route::new("/increment/{key}", || get(counter)),
];

/// A key's total.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Counter {
    /// The key (with `--key-format uuid`, in lowercase).
    key: String,
    /// Its total: what PostgreSQL holds plus this node's pending increments.
    value: i64,
}

/// A key's total: persisted plus this node's pending increments.
#[utoipa::path(get, path = "/counters/{key}", tag = "counting", security((), ("bearer" = []), ("session" = [])), params(("key" = super::body::Key, Path, description = "The key, percent-encoded; a '/' in it may also be written as it is")), responses(
    (status = 200, description = "The total", body = Counter),
    (status = 400, description = "The key breaks the rules of a key", body = super::error::ErrorBody),
    (status = 401, description = "With --auth required: no credentials, or ones that are not valid", body = super::error::ErrorBody),
    (status = 404, description = "No increment was ever counted for this key (counter_not_found), or the key is empty (not_found)", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "The database is unavailable", body = super::error::ErrorBody),
))]
pub(crate) async fn counter(
    State(ctx): State<Arc<ApiContext>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Counter>, ApiError> {
    let Path(key) = key.map_err(|e| {
        ApiError::bad_request(
            "invalid_key",
            format!("the key in the path is invalid: {e}"),
            Some("key"),
        )
    })?;
    let key = check_key(Cow::Owned(key), ctx.rules.key_format)?.into_owned();
    match ctx.ingest.total(&key).await? {
        Some(value) => Ok(Json(Counter { key, value })),
        None => Err(ApiError::not_found(
            "counter_not_found",
            format!("no increment was ever counted for key {key:?}"),
        )),
    }
}
