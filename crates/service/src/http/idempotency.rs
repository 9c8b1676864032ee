//! The `Idempotency-Key` header on the counting routes: its extractor, and the answers of a
//! request that carried one (`crate::idempotency`).

use axum::extract::FromRequestParts;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use crate::idempotency::{Answer, IdempotencyKey, Once};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer given again to a retry, which applied nothing.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The request's `Idempotency-Key`, if it has one; a malformed one is a 400.
pub struct MaybeKey(pub Option<IdempotencyKey>);

impl<S: Sync> FromRequestParts<S> for MaybeKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(&IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(MaybeKey(None));
        };
        let invalid = |message: &str| {
            ApiError::bad_request("invalid_idempotency_key", message.to_owned(), None)
                .on("Idempotency-Key")
        };
        if values.next().is_some() {
            return Err(invalid("Idempotency-Key is given more than once"));
        }
        IdempotencyKey::parse(value.as_bytes())
            .map(|key| MaybeKey(Some(key)))
            .map_err(|e| invalid(e.0))
    }
}

/// The answer to keep: a status and a JSON body.
pub fn json_answer(status: StatusCode, body: &impl Serialize) -> Answer {
    Answer {
        status: status.as_u16(),
        body: serde_json::to_string(body).unwrap_or_default(),
    }
}

/// The answer to keep: a status and no body.
pub fn empty_answer(status: StatusCode) -> Answer {
    Answer {
        status: status.as_u16(),
        body: String::new(),
    }
}

/// What the client is told.
pub fn respond(once: Once) -> Result<Response, ApiError> {
    let (answer, replayed) = match once {
        Once::Applied(answer) => (answer, false),
        Once::Replayed(answer) => (answer, true),
        Once::Reused => return Err(ApiError::idempotency_key_reused()),
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = if answer.body.is_empty() {
        status.into_response()
    } else {
        (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            answer.body,
        )
            .into_response()
    };
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}
