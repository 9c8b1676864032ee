//! The access guard in front of the routes (`crate::access`): with `--auth required`, the
//! counting and reading routes need valid credentials (401 otherwise), and with `--rate-limit`
//! every route but the probes and `/metrics` takes a token from its client's bucket (429 when
//! it is empty). The guard is installed only when one of the two is on, so a node without
//! access control pays nothing for it.
//!
//! A request whose credentials this node has checked recently counts against its key or user.
//! One whose credentials must be checked first (an argon2 hash, a database read) counts against
//! its address before the check, so that wrong keys cannot buy hashing faster than the limit,
//! and against its key or user after.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::route::OPEN_PATHS;
use crate::access::peer::TrustedProxies;
use crate::access::rate_limit::{Allowance, Client, Limiter, Refusal};
use crate::access::{AccessError, Accounts, Credentials};
use crate::metrics::{Metrics, ReasonLabel};

/// The cookie that carries a session token.
pub const SESSION_COOKIE: &str = "tally_session";

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// What the guard needs.
pub struct Guard {
    pub accounts: Arc<Accounts>,
    pub limiter: Option<Arc<Limiter>>,
    pub trusted_proxies: TrustedProxies,
    pub metrics: Arc<Metrics>,
}

/// What a path is, as far as access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Probes, metrics and the API's description: never limited, never behind auth.
    Open,
    /// Users, sessions and keys: limited by address; each handler checks what it needs.
    Accounts,
    /// Counting and reading: behind auth when it is required.
    Counting,
}

fn class(path: &str) -> Class {
    match path {
        _ if OPEN_PATHS.contains(&path) => Class::Open,
        _ if path.starts_with("/api/users")
            || path.starts_with("/api/sessions")
            || path.starts_with("/api/keys") =>
        {
            Class::Accounts
        }
        _ => Class::Counting,
    }
}

/// The credentials in a request's headers: `Authorization: Bearer <key>` and the session
/// cookie.
pub fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    let api_key = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let session = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(name, value)| (name == SESSION_COOKIE).then_some(value));
    Credentials { api_key, session }
}

/// The middleware: see the module's documentation.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let class = class(request.uri().path());
    if class == Class::Open {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let checked = if class == Class::Counting && guard.accounts.required() {
        guard.principal(request.headers(), peer).await
    } else {
        Ok(Client::Addr(
            guard.trusted_proxies.client_addr(peer, request.headers()),
        ))
    };
    let allowance = match checked.and_then(|client| guard.take(&client)) {
        Ok(allowance) => allowance,
        Err(denied) => return guard.deny(denied),
    };
    let mut response = next.run(request).await;
    if let Some(allowance) = allowance {
        set_allowance(response.headers_mut(), &allowance);
    }
    response
}

/// Why the guard turned a request away.
enum Denied {
    RateLimited(Refusal),
    /// 401, with the metric's reason, the error code and the message.
    Unauthorized(&'static str, &'static str, &'static str),
    Failed(ApiError),
}

impl Guard {
    /// Takes a token from the client's bucket, if there is a limit.
    fn take(&self, client: &Client) -> Result<Option<Allowance>, Denied> {
        match &self.limiter {
            None => Ok(None),
            Some(limiter) => limiter.check(client).map(Some).map_err(Denied::RateLimited),
        }
    }

    /// Who an authenticated request counts against.
    async fn principal(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Client, Denied> {
        let given = credentials(headers);
        if let Some(known) = self.accounts.recently_checked(given) {
            return Ok(known.client());
        }
        if given.is_empty() {
            return Err(Denied::Unauthorized(
                "missing",
                "credentials_required",
                "this route needs a session cookie or an Authorization: Bearer API key",
            ));
        }
        self.take(&Client::Addr(
            self.trusted_proxies.client_addr(peer, headers),
        ))?;
        match self.accounts.authenticate(given).await {
            Ok(Some(principal)) => Ok(principal.client()),
            Ok(None) | Err(AccessError::InvalidCredentials) => Err(Denied::Unauthorized(
                "invalid",
                "invalid_credentials",
                "the API key or session is not valid (wrong, revoked or expired)",
            )),
            Err(other) => Err(Denied::Failed(other.into())),
        }
    }

    /// The answer to a request turned away, counted in the metrics.
    fn deny(&self, denied: Denied) -> Response {
        match denied {
            Denied::RateLimited(refusal) => {
                self.metrics.rate_limited.inc();
                let seconds = seconds(refusal.retry_after).max(1);
                let mut response = ApiError::rate_limited(seconds).into_response();
                set_allowance(response.headers_mut(), &refusal.allowance);
                response
            }
            Denied::Unauthorized(reason, code, message) => {
                self.metrics
                    .auth_refused
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                let mut response = ApiError::unauthorized(code, message).into_response();
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Denied::Failed(e) => e.into_response(),
        }
    }
}

/// Whole seconds, rounded up, so that a client that waits them is let in.
fn seconds(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis().div_ceil(1000)).unwrap_or(u32::MAX)
}

fn set_allowance(headers: &mut HeaderMap, allowance: &Allowance) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(allowance.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(allowance.remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(seconds(allowance.reset)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_the_bearer_header_and_the_session_cookie() {
        let mut headers = HeaderMap::new();
        assert!(credentials(&headers).is_empty());
        headers.insert(AUTHORIZATION, "bearer  tally_x ".parse().unwrap());
        headers.append(COOKIE, "a=1; tally_session=abc".parse().unwrap());
        let c = credentials(&headers);
        assert_eq!((c.api_key, c.session), (Some("tally_x"), Some("abc")));
        headers.insert(AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        assert_eq!(credentials(&headers).api_key, None);
    }

    #[test]
    fn probes_and_metrics_are_open_and_accounts_apart() {
        assert_eq!(class("/ready"), Class::Open);
        assert_eq!(class("/metrics"), Class::Open);
        assert_eq!(class("/api/sessions"), Class::Accounts);
        assert_eq!(class("/api/keys/abc"), Class::Accounts);
        assert_eq!(class("/increment"), Class::Counting);
        assert_eq!(class("/api/increment"), Class::Counting);
        assert_eq!(class("/counters/a"), Class::Counting);
    }
}
