//! `POST /items` and `GET /items/{tenant}/count`: distinct items per tenant.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::body::{JsonBody, parse_items};
use super::context::ApiContext;
use super::error::ApiError;
use super::idempotency::{MaybeKey, json_answer, respond};
use super::route::Route;
use crate::idempotency::Fingerprint;
use crate::increment::{Field, check_name};
use crate::ingest::ItemsReceipt;
use crate::item::Item;

pub const ROUTES: &[Route] = &[
    Route::new("/items", || post(add_items)),
    Route::new("/items/{tenant}/count", || get(item_count)),
];

/// The answer to `POST /items`; in sync mode with each named tenant's new count.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ItemsAccepted {
    /// How many items the request held (each counts at most once per tenant).
    accepted: usize,
    /// Sync mode only: the count of every tenant the request named, by tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    counts: Option<std::collections::BTreeMap<String, i64>>,
}

/// A tenant's number of distinct items.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ItemCount {
    /// The tenant (with `--key-format uuid`, in lowercase).
    tenant: String,
    /// Its distinct items: what PostgreSQL holds plus this node's pending new ids.
    count: i64,
}

/// Adds items, each counted once per tenant however often it is sent; all or none. With an
/// `Idempotency-Key`, a retry is answered as the first attempt was.
#[utoipa::path(post, path = "/items", tag = "items", security((), ("bearer" = []), ("session" = [])), params(super::body::IdempotencyKeyHeader), request_body(content = Vec<super::body::ItemRequest>, description = "At most --max-batch items (default 1000)"), responses(
    (status = 202, description = "Accepted for the next flush (buffered mode)", body = ItemsAccepted),
    (status = 200, description = "Applied (sync mode), with the count of each tenant named", body = ItemsAccepted),
    (status = 400, description = "Malformed body, an invalid item (its index is in `field`), too many items, or an invalid Idempotency-Key; nothing was applied", body = super::error::ErrorBody),
    (status = 401, description = "With --auth required: no credentials, or ones that are not valid", body = super::error::ErrorBody),
    (status = 408, description = "The body did not arrive within --read-timeout", body = super::error::ErrorBody),
    (status = 413, description = "Body over --max-body-bytes", body = super::error::ErrorBody),
    (status = 415, description = "The Content-Type is not application/json", body = super::error::ErrorBody),
    (status = 422, description = "The Idempotency-Key was used before for a different request; nothing was applied", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 500, description = "outcome_unknown: the node cannot tell whether the items will be counted; do not retry them blindly", body = super::error::ErrorBody),
    (status = 503, description = "Overloaded, the journal or the database is unavailable, or the node is shutting down; nothing was applied", body = super::error::ErrorBody),
))]
pub(crate) async fn add_items(
    State(ctx): State<Arc<ApiContext>>,
    MaybeKey(idempotency_key): MaybeKey,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let parsed = parse_items(&body, ctx.max_batch)
        .map_err(ApiError::from)
        .and_then(|raws| {
            raws.into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    Item::new(raw.tenant, raw.id, &ctx.rules)
                        .map_err(|v| ApiError::from(v).at_index(i))
                })
                .collect::<Result<Vec<_>, _>>()
        });
    let items = ctx.count_invalid_items(parsed, 1)?;
    let accepted = items.len();
    if let Some(key) = idempotency_key {
        let sync = ctx.ingest.is_sync();
        let fingerprint = Fingerprint::of("items", &body);
        // Boxed: the rare path's large future stays out of every request's.
        let once = Box::pin(ctx.idempotency.items(&key, fingerprint, &items, |counts| {
            let (status, counts) = if sync {
                (StatusCode::OK, Some(counts.iter().cloned().collect()))
            } else {
                (StatusCode::ACCEPTED, None)
            };
            json_answer(status, &ItemsAccepted { accepted, counts })
        }))
        .await;
        return respond(ctx.count_once(once, accepted as u64, true)?);
    }
    let receipt = if items.is_empty() {
        ItemsReceipt::Buffered
    } else {
        let taken = ctx.ingest.add_items(&items).await;
        ctx.count_items(taken, accepted as u64)?
    };
    Ok(match receipt {
        _ if ctx.ingest.is_sync() && items.is_empty() => {
            let counts = Some(Default::default());
            (StatusCode::OK, Json(ItemsAccepted { accepted, counts })).into_response()
        }
        ItemsReceipt::Buffered => {
            let counts = None;
            (
                StatusCode::ACCEPTED,
                Json(ItemsAccepted { accepted, counts }),
            )
                .into_response()
        }
        ItemsReceipt::Applied { counts } => {
            let counts = Some(counts.into_iter().collect());
            (StatusCode::OK, Json(ItemsAccepted { accepted, counts })).into_response()
        }
    })
}

/// A tenant's number of distinct items: persisted plus this node's pending new ids.
#[utoipa::path(get, path = "/items/{tenant}/count", tag = "items", security((), ("bearer" = []), ("session" = [])), params(("tenant" = super::body::Key, Path, description = "The tenant, percent-encoded; a '/' in it is written %2F")), responses(
    (status = 200, description = "The count; 0 for a tenant never seen", body = ItemCount),
    (status = 400, description = "The tenant breaks the rules of a key", body = super::error::ErrorBody),
    (status = 401, description = "With --auth required: no credentials, or ones that are not valid", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "The database is unavailable", body = super::error::ErrorBody),
))]
pub(crate) async fn item_count(
    State(ctx): State<Arc<ApiContext>>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Json<ItemCount>, ApiError> {
    let Path(tenant) = tenant.map_err(|e| {
        ApiError::bad_request(
            "invalid_tenant",
            format!("the tenant in the path is invalid: {e}"),
            Some("tenant"),
        )
    })?;
    let tenant = check_name(Cow::Owned(tenant), ctx.rules.key_format, Field::Tenant)?;
    let count = ctx.ingest.item_count(&tenant).await?;
    Ok(Json(ItemCount {
        tenant: tenant.into_owned(),
        count,
    }))
}
