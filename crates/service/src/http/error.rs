//! The one error type of the HTTP layer and its one JSON shape:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::access::AccessError;
use crate::increment::RuleViolation;
use crate::ingest::IngestError;
use crate::storage::StorageError;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECONDS: u32 = 1;

/// An error answer. Build it with the constructors; every one maps to a status of
/// DESIGN.md section 2.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    field: Option<Cow<'static, str>>,
    retry_after: Option<u32>,
    /// Ask for the connection to be closed after the answer.
    close: bool,
}

/// Every error answer: `{"error": {"code", "message", "field"}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable, machine-readable: `invalid_value`, `payload_too_large`, ...
    #[schema(example = "invalid_value")]
    code: &'a str,
    /// For people.
    #[schema(example = "value must be an integer >= 1")]
    message: &'a str,
    /// The offending field, when there is one (`value`, `[3].key` in a batch,
    /// `Idempotency-Key`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "value")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            close: false,
        }
    }

    /// Names the offending field.
    pub(super) fn on(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn bad_request(
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
        field: Option<&'static str>,
    ) -> Self {
        let e = ApiError::new(StatusCode::BAD_REQUEST, code, message);
        match field {
            Some(f) => e.on(f),
            None => e,
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed on this path",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body must be at most {limit} bytes"),
        )
    }

    pub fn unsupported_media_type() -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON, sent with Content-Type: application/json",
        )
    }

    /// 408 `request_timeout`: the body did not arrive within the read timeout. The connection
    /// is closed after the answer, since the rest of the body may still be on its way.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        ApiError {
            close: true,
            ..ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(limit)
                ),
            )
        }
    }

    /// 422 `idempotency_key_reused`: the key came before with another request.
    pub fn idempotency_key_reused() -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used before for a different request; nothing was applied",
        )
        .on("Idempotency-Key")
    }

    /// 401: no credentials, or ones that are not valid.
    pub fn unauthorized(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 429 `rate_limited`, to be retried after `retry_after` seconds.
    pub fn rate_limited(retry_after: u32) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this client; retry after the time in Retry-After",
            )
        }
    }

    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            retry_after: Some(RETRY_AFTER_SECONDS),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// A rule broken by the `index`th item of a multi-increment request.
    pub fn at_index(mut self, index: usize) -> Self {
        self.message = format!("item {index}: {}", self.message).into();
        self.field = Some(match self.field {
            Some(f) => format!("[{index}].{f}").into(),
            None => format!("[{index}]").into(),
        });
        self
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let message = e.to_string();
        match e {
            AccessError::InvalidEmail(_) => {
                ApiError::bad_request("invalid_email", message, Some("email"))
            }
            AccessError::InvalidPassword => {
                ApiError::bad_request("invalid_password", message, Some("password"))
            }
            AccessError::EmailTaken => ApiError::conflict("email_taken", message),
            AccessError::SignupClosed => ApiError::forbidden("signup_closed", message),
            AccessError::InvalidCredentials => {
                ApiError::unauthorized("invalid_credentials", message)
            }
            AccessError::UnknownUser => ApiError::not_found("user_not_found", message),
            AccessError::Storage(e) => {
                tracing::warn!(error = %e, "account request failed on the database");
                ApiError::unavailable(
                    "database_unavailable",
                    "the database is unavailable; retry later",
                )
            }
        }
    }
}

impl From<RuleViolation> for ApiError {
    fn from(v: RuleViolation) -> Self {
        let code = match v.field {
            crate::increment::Field::Key => "invalid_key",
            crate::increment::Field::Value => "invalid_value",
            crate::increment::Field::Id => "invalid_id",
            crate::increment::Field::Tenant => "invalid_tenant",
        };
        ApiError::bad_request(code, v.message, Some(v.field.name()))
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::OutOfRange { index, .. } => {
                let err = ApiError::bad_request(
                    "total_out_of_range",
                    "this increment would take the key's total out of the signed 64-bit range",
                    Some("value"),
                );
                match index {
                    Some(i) => err.at_index(i),
                    None => err,
                }
            }
            IngestError::Full { .. } => ApiError::unavailable(
                "overloaded",
                "too many increments are waiting for the database; retry later",
            ),
            IngestError::ShuttingDown => ApiError::unavailable(
                "shutting_down",
                "the node is shutting down; retry on another node",
            ),
            IngestError::Journal(why) => {
                tracing::error!(error = %why, "increment refused: the journal cannot make it durable");
                ApiError::unavailable(
                    "journal_failed",
                    "the node cannot make increments durable; retry on another node",
                )
            }
            IngestError::OutcomeUnknown(why) => {
                tracing::error!(error = %why, "increment's outcome unknown: the node failed after taking it");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "outcome_unknown",
                    "the node failed while taking this request and cannot tell whether it will be counted; do not retry it blindly",
                )
            }
            // A sync-mode increment PostgreSQL refuses for good (an operator's constraint,
            // say): nothing was applied, and a retry would be refused again, so it is the
            // client's to change, not a 503 to retry.
            IngestError::Storage(StorageError::Refused { sqlstate, .. }) => ApiError::bad_request(
                "refused_by_database",
                format!(
                    "the database refuses this increment (SQLSTATE {sqlstate}); \
                         retrying it will not help"
                ),
                None,
            ),
            IngestError::Storage(e) => {
                tracing::warn!(error = %e, "request failed on the database");
                ApiError::unavailable(
                    "database_unavailable",
                    "the database is unavailable; retry later",
                )
            }
        }
    }
}
