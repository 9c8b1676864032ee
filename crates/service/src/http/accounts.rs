//! Users, sessions and API keys over HTTP, at the paths earlier systems used: `POST /api/users`,
//! `POST|GET|DELETE /api/sessions`, `POST /api/keys`, `DELETE /api/keys/{id}`
//! (`crate::access::Accounts` does the work).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};

use super::access::{SESSION_COOKIE, credentials};
use super::body::JsonBody;
use super::context::ApiContext;
use super::error::ApiError;
use super::route::Route;
use crate::access::Principal;

pub const ROUTES: &[Route] = &[
    Route::new("/api/users", || post(sign_up)),
    Route::new("/api/sessions", || {
        post(log_in).get(current_session).delete(log_out)
    }),
    Route::new("/api/keys", || post(create_key)),
    Route::new("/api/keys/{id}", || delete(revoke_key)),
];

/// An email and a password. No other field is allowed.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmailPassword {
    /// `name@domain`: 1 to 254 bytes, one '@', no spaces or control characters; letters are
    /// folded to lower case. Checked when a user is created; logging in with any other email
    /// is refused like a wrong password (401).
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = "^[^@\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]+@[^@\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]+$",
        example = "ada@example.org"
    )]
    email: String,
    /// 8 to 1024 characters. Checked when a user is created; logging in with any other
    /// password is refused (401).
    #[schema(
        min_length = 8,
        max_length = 1024,
        example = "correct horse battery staple"
    )]
    password: String,
}

/// The signed-in user.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserId {
    user_id: i64,
}

/// A new API key, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NewApiKey {
    /// Names the key, e.g. to revoke it: 16 hex digits.
    #[schema(pattern = "^[0-9a-f]{16}$")]
    id: String,
    /// Send it as `Authorization: Bearer <key>`. Only its hash is kept: it cannot be shown
    /// again.
    #[schema(pattern = "^tally_[0-9a-f]{16}_[0-9a-f]{64}$")]
    key: String,
}

fn parse(body: &[u8]) -> Result<EmailPassword, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("the body must be {{\"email\": ..., \"password\": ...}}: {e}"),
            None,
        )
    })
}

/// The user whose credentials the request carries, or 401.
async fn signed_in(ctx: &ApiContext, headers: &HeaderMap) -> Result<Principal, ApiError> {
    ctx.accounts
        .authenticate(credentials(headers))
        .await?
        .ok_or_else(|| {
            ApiError::unauthorized(
                "credentials_required",
                "this needs a session cookie or an Authorization: Bearer API key",
            )
        })
}

/// The `Set-Cookie` value for a session token, or for ending it (`None`).
fn session_cookie(token: Option<&str>, ttl: Duration, secure: bool) -> HeaderValue {
    let mut cookie = Cookie::build((SESSION_COOKIE, token.unwrap_or("").to_owned()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    if token.is_none() {
        cookie.make_removal();
    }
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie of hex digits is a header value")
}

/// Creates a user (only with `--signup open`; otherwise an operator runs `tally user add`).
#[utoipa::path(post, path = "/api/users", tag = "accounts", request_body = EmailPassword, responses(
    (status = 201, description = "Created", body = UserId),
    (status = 400, description = "Invalid email or password, or a malformed body", body = super::error::ErrorBody),
    (status = 403, description = "Sign-up is closed (without --signup open)", body = super::error::ErrorBody),
    (status = 409, description = "A user with this email exists", body = super::error::ErrorBody),
    (status = 408, description = "The body did not arrive within --read-timeout", body = super::error::ErrorBody),
    (status = 413, description = "Body over --max-body-bytes", body = super::error::ErrorBody),
    (status = 415, description = "The Content-Type is not application/json", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "The database is unavailable", body = super::error::ErrorBody),
))]
pub(crate) async fn sign_up(
    State(ctx): State<Arc<ApiContext>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let EmailPassword { email, password } = parse(&body)?;
    let user_id = ctx.accounts.sign_up(&email, &password).await?;
    Ok((StatusCode::CREATED, Json(UserId { user_id })).into_response())
}

/// Logs in: sets an HttpOnly, SameSite=Strict session cookie (Secure unless
/// `--insecure-cookies`) that lasts `--session-ttl`.
#[utoipa::path(post, path = "/api/sessions", tag = "accounts", request_body = EmailPassword, responses(
    (status = 201, description = "Logged in", body = UserId, headers(("Set-Cookie" = String, description = "The session: `tally_session=<token>`, HttpOnly, SameSite=Strict, Secure unless --insecure-cookies, Max-Age --session-ttl"))),
    (status = 400, description = "A malformed body", body = super::error::ErrorBody),
    (status = 401, description = "Wrong email or password (the same answer for an unknown email)", body = super::error::ErrorBody),
    (status = 408, description = "The body did not arrive within --read-timeout", body = super::error::ErrorBody),
    (status = 413, description = "Body over --max-body-bytes", body = super::error::ErrorBody),
    (status = 415, description = "The Content-Type is not application/json", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "The database is unavailable", body = super::error::ErrorBody),
))]
pub(crate) async fn log_in(
    State(ctx): State<Arc<ApiContext>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let EmailPassword { email, password } = parse(&body)?;
    let session = ctx.accounts.log_in(&email, &password).await?;
    let cookie = session_cookie(Some(&session.token), session.ttl, ctx.secure_cookies);
    let user_id = session.user_id;
    Ok((
        StatusCode::CREATED,
        [(SET_COOKIE, cookie)],
        Json(UserId { user_id }),
    )
        .into_response())
}

/// Who the session (or API key) belongs to.
#[utoipa::path(get, path = "/api/sessions", tag = "accounts", security(("bearer" = []), ("session" = [])), responses(
    (status = 200, description = "The user", body = UserId),
    (status = 401, description = "No valid session or API key", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "The database is unavailable", body = super::error::ErrorBody),
))]
pub(crate) async fn current_session(
    State(ctx): State<Arc<ApiContext>>,
    headers: HeaderMap,
) -> Result<Json<UserId>, ApiError> {
    let principal = signed_in(&ctx, &headers).await?;
    Ok(Json(UserId {
        user_id: principal.user_id,
    }))
}

/// Logs out: the session ends in PostgreSQL, and the cookie is cleared.
#[utoipa::path(delete, path = "/api/sessions", tag = "accounts", security(("session" = [])), responses(
    (status = 204, description = "The session has ended", headers(("Set-Cookie" = String, description = "Clears the session cookie"))),
    (status = 401, description = "No valid session cookie (an API key does not log out)", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "The database is unavailable", body = super::error::ErrorBody),
))]
pub(crate) async fn log_out(
    State(ctx): State<Arc<ApiContext>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = signed_in(&ctx, &headers).await?;
    let token = credentials(&headers)
        .session
        .filter(|_| principal.key_id.is_none())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "credentials_required",
                "logging out needs the session cookie",
            )
        })?;
    ctx.accounts.log_out(token).await?;
    let cookie = session_cookie(None, Duration::ZERO, ctx.secure_cookies);
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, cookie)]).into_response())
}

/// Creates an API key for the signed-in user; the key is in this answer only.
#[utoipa::path(post, path = "/api/keys", tag = "accounts", security(("bearer" = []), ("session" = [])), responses(
    (status = 201, description = "Created", body = NewApiKey),
    (status = 401, description = "Not signed in", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "The database is unavailable", body = super::error::ErrorBody),
))]
pub(crate) async fn create_key(
    State(ctx): State<Arc<ApiContext>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = signed_in(&ctx, &headers).await?;
    let (key, id) = ctx.accounts.create_key(principal.user_id).await?;
    Ok((StatusCode::CREATED, Json(NewApiKey { id, key })).into_response())
}

/// Revokes one of the signed-in user's API keys: from then on it is refused (on other nodes
/// within `CHECKED_CREDENTIALS_TTL`, 10 s).
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "accounts", security(("bearer" = []), ("session" = [])), params(("id" = String, Path, pattern = "^[0-9a-f]{16}$", description = "The key's id: 16 hex digits")), responses(
    (status = 204, description = "Revoked"),
    (status = 401, description = "Not signed in", body = super::error::ErrorBody),
    (status = 404, description = "The user has no live key with this id (key_not_found), or the id is empty (not_found)", body = super::error::ErrorBody),
    (status = 429, description = "With --rate-limit: over the client's limit", body = super::error::ErrorBody),
    (status = 503, description = "The database is unavailable", body = super::error::ErrorBody),
))]
pub(crate) async fn revoke_key(
    State(ctx): State<Arc<ApiContext>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let principal = signed_in(&ctx, &headers).await?;
    let not_found =
        || ApiError::not_found("key_not_found", "you have no live API key with this id");
    // An id that is not 16 hex digits (or not UTF-8 at all) names no key: answered without
    // asking PostgreSQL, which would refuse some of them (a NUL) as data errors.
    let Ok(Path(id)) = id else {
        return Err(not_found());
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    if ctx.accounts.revoke_key(principal.user_id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
