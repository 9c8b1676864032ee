//! `POST /increment` and `POST /increments` (and the alias `/api/increment`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;

use super::body::{JsonBody, parse_increment, parse_increments};
use super::context::ApiContext;
use super::error::ApiError;
use super::idempotency::{MaybeKey, empty_answer, json_answer, respond};
use super::route::Route;
use crate::idempotency::Fingerprint;
use crate::increment::Increment;
use crate::ingest::Receipt;

pub const ROUTES: &[Route] = &[
    Route::new("/increment", || post(increment)),
    Route::new("/api/increment", || post(increment)),
    Route::new("/increments", || post(increments)),
];

/// The answer in `sync` mode.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Applied<'a> {
    key: &'a str,
    value: i64,
    total: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    accepted: usize,
}

/// Adds `value` to the total of `key`. With an `Idempotency-Key`, a retry counts once.
#[utoipa::path(post, path = "/increment", tag = "counting", security((), ("bearer" = []), ("session" = [])), params(super::body::IdempotencyKeyHeader), request_body = super::body::IncrementRequest, responses(
    (status = 202, description = "Accepted for the next flush (buffered mode; with --durability journal, in the journal on disk); empty body"),
    (status = 200, description = "Applied (sync mode), with the new total", body = Applied),
    (status = 400, description = "Malformed or invalid body, an invalid Idempotency-Key, or a total that would leave the signed 64-bit range; nothing was applied", body = super::error::ErrorBody),
    (status = 401, description = "With --auth required: no credentials, or ones that are not valid", body = super::error::ErrorBody),
    (status = 408, description = "The body did not arrive within --read-timeout", body = super::error::ErrorBody),
    (status = 413, description = "Body over --max-body-bytes", body = super::error::ErrorBody),
    (status = 415, description = "The Content-Type is not application/json", body = super::error::ErrorBody),
    (status = 422, description = "The Idempotency-Key was used before for a different request; nothing was applied", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 500, description = "outcome_unknown: the node cannot tell whether the increment will be counted; do not retry it blindly", body = super::error::ErrorBody),
    (status = 503, description = "Overloaded, the journal or the database is unavailable, or the node is shutting down; nothing was applied", body = super::error::ErrorBody),
))]
pub(crate) async fn increment(
    State(ctx): State<Arc<ApiContext>>,
    MaybeKey(idempotency_key): MaybeKey,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let parsed = parse_increment(&body)
        .map_err(ApiError::from)
        .and_then(|raw| Ok(Increment::new(raw.key, raw.value, &ctx.rules)?));
    let inc = ctx.count_invalid(parsed, 1)?;
    if let Some(key) = idempotency_key {
        let sync = ctx.ingest.is_sync();
        let fingerprint = Fingerprint::of("increment", &body);
        // Boxed: the rare path's large future stays out of every request's.
        let once = Box::pin(ctx.idempotency.increments(
            &key,
            fingerprint,
            std::slice::from_ref(&inc),
            |totals| match totals.first() {
                Some(&(_, total)) if sync => {
                    let (key, value) = (inc.key(), inc.value());
                    json_answer(StatusCode::OK, &Applied { key, value, total })
                }
                _ => empty_answer(StatusCode::ACCEPTED),
            },
        ))
        .await;
        return respond(ctx.count_once(once, 1, false)?);
    }
    let receipt = ctx.ingest.increment(&inc).await;
    Ok(match ctx.count(receipt, 1)? {
        Receipt::Buffered => StatusCode::ACCEPTED.into_response(),
        Receipt::Applied { total } => Json(Applied {
            key: inc.key(),
            value: inc.value(),
            total,
        })
        .into_response(),
    })
}

/// Adds several increments, all or none. With an `Idempotency-Key`, a retry counts once.
#[utoipa::path(post, path = "/increments", tag = "counting", security((), ("bearer" = []), ("session" = [])), params(super::body::IdempotencyKeyHeader), request_body(content = Vec<super::body::IncrementRequest>, description = "At most --max-batch increments (default 1000)"), responses(
    (status = 202, description = "Accepted for the next flush (buffered mode)", body = Accepted),
    (status = 200, description = "Applied (sync mode)", body = Accepted),
    (status = 400, description = "Malformed body, an invalid item (its index is in `field`), too many items, or an invalid Idempotency-Key; nothing was applied", body = super::error::ErrorBody),
    (status = 401, description = "With --auth required: no credentials, or ones that are not valid", body = super::error::ErrorBody),
    (status = 408, description = "The body did not arrive within --read-timeout", body = super::error::ErrorBody),
    (status = 413, description = "Body over --max-body-bytes", body = super::error::ErrorBody),
    (status = 415, description = "The Content-Type is not application/json", body = super::error::ErrorBody),
    (status = 422, description = "The Idempotency-Key was used before for a different request; nothing was applied", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 500, description = "outcome_unknown: the node cannot tell whether the increments will be counted; do not retry them blindly", body = super::error::ErrorBody),
    (status = 503, description = "Overloaded, the journal or the database is unavailable, or the node is shutting down; nothing was applied", body = super::error::ErrorBody),
))]
pub(crate) async fn increments(
    State(ctx): State<Arc<ApiContext>>,
    MaybeKey(idempotency_key): MaybeKey,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let parsed = parse_increments(&body, ctx.max_batch)
        .map_err(ApiError::from)
        .and_then(|raws| {
            raws.into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    Increment::new(raw.key, raw.value, &ctx.rules)
                        .map_err(|v| ApiError::from(v).at_index(i))
                })
                .collect::<Result<Vec<_>, _>>()
        });
    let incs = ctx.count_invalid(parsed, 1)?;
    let status = if ctx.ingest.is_sync() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let accepted = Accepted {
        accepted: incs.len(),
    };
    if let Some(key) = idempotency_key {
        let fingerprint = Fingerprint::of("increments", &body);
        // Boxed: the rare path's large future stays out of every request's.
        let once = Box::pin(
            ctx.idempotency
                .increments(&key, fingerprint, &incs, |_| json_answer(status, &accepted)),
        )
        .await;
        return respond(ctx.count_once(once, incs.len() as u64, false)?);
    }
    if !incs.is_empty() {
        let taken = ctx.ingest.increment_all(&incs).await;
        ctx.count(taken, incs.len() as u64)?;
    }
    Ok((status, Json(accepted)).into_response())
}
