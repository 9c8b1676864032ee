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
    accepted: usize,
    /// Sync mode only: the count of every tenant the request named, by tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    counts: Option<std::collections::BTreeMap<String, i64>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ItemCount {
    tenant: String,
    count: i64,
}

/// Adds items, each counted once per tenant however often it is sent; all or none. With an
/// `Idempotency-Key`, a retry is answered as the first attempt was.
#[utoipa::path(post, path = "/items", params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters: a retry with the same key and body counts once and gets the first answer, on any node, for --idempotency-ttl")), request_body = Vec<super::body::ItemRequest>, responses(
    (status = 202, description = "Accepted for the next flush (buffered mode)", body = ItemsAccepted),
    (status = 200, description = "Applied (sync mode), with the count of each tenant named", body = ItemsAccepted),
    (status = 400, description = "An item is invalid (its index is in `field`), or too many items", body = super::error::ErrorBody),
    (status = 413, description = "Body over the size limit", body = super::error::ErrorBody),
    (status = 415, description = "Not application/json", body = super::error::ErrorBody),
    (status = 500, description = "The outcome is unknown: the items may or may not be counted", body = super::error::ErrorBody),
    (status = 422, description = "The Idempotency-Key was used before for a different request; nothing was applied", body = super::error::ErrorBody),
    (status = 401, description = "With --auth required: no credentials, or ones that are not valid", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit; see Retry-After and the RateLimit-* headers", body = super::error::ErrorBody),
    (status = 503, description = "Overloaded, the database is unavailable, or the node is shutting down; nothing was applied; see Retry-After", body = super::error::ErrorBody),
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
        let once = ctx
            .idempotency
            .items(&key, fingerprint, &items, |counts| {
                let (status, counts) = if sync {
                    (StatusCode::OK, Some(counts.iter().cloned().collect()))
                } else {
                    (StatusCode::ACCEPTED, None)
                };
                json_answer(status, &ItemsAccepted { accepted, counts })
            })
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
#[utoipa::path(get, path = "/items/{tenant}/count", params(("tenant" = String, Path, description = "The tenant; a '/' in it is written %2F")), responses(
    (status = 200, description = "The count; 0 for a tenant never seen", body = ItemCount),
    (status = 400, description = "Invalid tenant", body = super::error::ErrorBody),
    (status = 401, description = "With --auth required: no credentials, or ones that are not valid", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit; see Retry-After and the RateLimit-* headers", body = super::error::ErrorBody),
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
