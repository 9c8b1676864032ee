//! What every request leaves behind: its request id (taken from `X-Request-Id` or made, and
//! echoed in the answer), its count and latency in the metrics, and, with `--access-log`, one
//! log line. It also holds the limit on requests in flight (`--max-in-flight`): one more is
//! answered 503 at once.
//!
//! A tower layer of its own, wrapped around the whole router rather than added with
//! `Router::layer`: `axum::middleware::from_fn` boxes a future and clones a boxed service for
//! every request, and `Router::layer` boxes every route once more, which on the request path
//! of a service that answers from memory costs more than everything this layer does. Outside
//! the router the matched route is not known yet, so the label comes from the path itself,
//! matched against the same route list the router is made from.
//!
//! The in-flight limit is a semaphore permit held by the response future, here rather than
//! tower's `ConcurrencyLimit` with `LoadShed`: those, with the error handler axum needs around
//! them, cost about 430 instructions per request more (a boxed future and a cloned service
//! stack each time; callgrind, 20,759 against 20,332 per buffered increment), where the permit
//! costs an atomic operation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use rand::RngExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::route::{OPEN_PATHS, Route};
use crate::metrics::{Metrics, RouteMetrics};

/// The header that carries a request's id, in both directions. A constant `HeaderName`, so
/// that the name is not parsed again for every request.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a client; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The label of a request that matches no route.
const UNMATCHED: &str = "unmatched";

/// Per-route metric handles and whether to log each request; shared by every connection.
pub struct Observer {
    metrics: Arc<Metrics>,
    /// One permit per request that may be in flight.
    in_flight: Arc<Semaphore>,
    /// Each route, labelled by its path.
    routes: Vec<(&'static Route, RouteMetrics)>,
    /// For each route, whether it is exempt from the in-flight limit (`OPEN_PATHS`).
    exempt: Vec<bool>,
    unmatched: RouteMetrics,
    /// Whether to log each request; a reload may change it.
    access_log: Arc<AtomicBool>,
    /// Every request answered, for the console (`ApiContext::requests_answered`).
    answered: Arc<AtomicU64>,
}

impl Observer {
    pub fn new(
        metrics: Arc<Metrics>,
        access_log: Arc<AtomicBool>,
        max_in_flight: usize,
        routes: impl IntoIterator<Item = &'static Route>,
        answered: Arc<AtomicU64>,
    ) -> Self {
        let routes: Vec<_> = routes
            .into_iter()
            .map(|r| (r, metrics.route(r.path)))
            .collect();
        Observer {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            exempt: routes
                .iter()
                .map(|(r, _)| OPEN_PATHS.contains(&r.path))
                .collect(),
            routes,
            unmatched: metrics.route(UNMATCHED),
            metrics,
            access_log,
            answered,
        }
    }

    /// The index in `routes` of the route `path` belongs to.
    fn route_of(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|(r, _)| r.matches(path))
    }

    fn finish(&self, seen: Seen, response: &mut Response) {
        let elapsed = seen.started.elapsed();
        let status = response.status().as_u16();
        let (route, metrics) = match seen.route {
            Some(i) => (self.routes[i].0.path, &self.routes[i].1),
            None => (UNMATCHED, &self.unmatched),
        };
        metrics.record(&self.metrics, status, elapsed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        if let Some(method) = seen.method {
            tracing::info!(
                target: "tally::access",
                request_id = seen.request_id.to_str().unwrap_or_default(),
                method = %method,
                route,
                status,
                micros = elapsed.as_micros() as u64,
                "request"
            );
        }
        response.headers_mut().insert(REQUEST_ID, seen.request_id);
    }
}

/// The layer, applied around the whole router.
#[derive(Clone)]
pub struct ObserveLayer(pub Arc<Observer>);

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            observer: self.0.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    observer: Arc<Observer>,
}

/// What is known of a request when it arrives.
struct Seen {
    started: Instant,
    route: Option<usize>,
    request_id: HeaderValue,
    /// Only kept when access logging is on.
    method: Option<Method>,
}

impl<S> tower_service::Service<Request> for Observe<S>
where
    S: tower_service::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let seen = Seen {
            started: Instant::now(),
            route: self.observer.route_of(request.uri().path()),
            request_id: request_id(request.headers().get(&REQUEST_ID)),
            method: self
                .observer
                .access_log
                .load(Ordering::Relaxed)
                .then(|| request.method().clone()),
        };
        let exempt = seen.route.is_some_and(|i| self.observer.exempt[i]);
        let permit = match self.observer.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if exempt => None,
            Err(_) => {
                let shed = ApiError::unavailable(
                    "overloaded",
                    "too many requests are being handled on this node; retry later",
                );
                return ObserveFuture {
                    inner: None,
                    shed: Some(shed.into_response()),
                    _permit: None,
                    observer: self.observer.clone(),
                    seen: Some(seen),
                };
            }
        };
        ObserveFuture {
            inner: Some(self.inner.call(request)),
            shed: None,
            _permit: permit,
            observer: self.observer.clone(),
            seen: Some(seen),
        }
    }
}

pin_project_lite::pin_project! {
    /// Completes with the inner answer, after recording it. A request refused for the
    /// in-flight limit has no `inner` future but its answer in `shed`; an admitted one holds
    /// its `_permit` until its answer is ready.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: Option<F>,
        shed: Option<Response>,
        _permit: Option<OwnedSemaphorePermit>,
        observer: Arc<Observer>,
        seen: Option<Seen>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = match (this.inner.as_pin_mut(), this.shed.take()) {
            (Some(inner), _) => std::task::ready!(inner.poll(cx)),
            (None, shed) => Ok(shed.expect("a future without a request has an answer")),
        };
        if let (Ok(response), Some(seen)) = (&mut result, this.seen.take()) {
            this.observer.finish(seen, response);
        }
        Poll::Ready(result)
    }
}

/// The client's id if it sent a usable one, else a new random one.
fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    match given {
        Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.to_str().is_ok() => {
            id.clone()
        }
        _ => {
            // 64 random bits in hexadecimal, written without a temporary String.
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut n: u64 = rand::rng().random();
            let mut digits = [0u8; 16];
            for d in digits.iter_mut().rev() {
                *d = HEX[(n & 0xf) as usize];
                n >>= 4;
            }
            HeaderValue::from_bytes(&digits).expect("hexadecimal digits are a valid header value")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::MethodRouter;

    #[test]
    fn paths_are_labelled_by_route() {
        static ROUTES: [Route; 2] = [
            Route::new("/increment", MethodRouter::new),
            Route::new("/counters/{key}", MethodRouter::new),
        ];
        let answered = Arc::default();
        let observer = Observer::new(
            Arc::new(Metrics::default()),
            Arc::default(),
            1,
            &ROUTES,
            answered,
        );
        let label = |path| observer.route_of(path).map(|i| observer.routes[i].0.path);
        assert_eq!(label("/increment"), Some("/increment"));
        assert_eq!(label("/counters/a/b"), Some("/counters/{key}"));
        assert_eq!(label("/increment/extra"), None);
        assert_eq!(label("/"), None);
    }

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_replaced() {
        let given = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&given)), given);
        let made = request_id(None);
        assert_eq!(made.len(), 16);
        assert!(
            made.to_str()
                .unwrap()
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        assert_ne!(made, request_id(None), "ids are random");
        let long = HeaderValue::from_str(&"x".repeat(MAX_REQUEST_ID + 1)).unwrap();
        assert_eq!(request_id(Some(&long)).len(), 16);
        assert_eq!(request_id(Some(&HeaderValue::from_static(""))).len(), 16);
    }
}
