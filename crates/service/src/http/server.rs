//! The HTTP server: accepting connections and serving them with hyper, within limits that a
//! hostile or broken client cannot stretch.
//!
//! `axum::serve` takes no limits: it gives hyper no timer, so hyper's header read timeout never
//! runs, and a client that sends half its headers holds its connection for as long as it likes.
//! This loop is `axum::serve`'s with hyper's own settings:
//!
//! - the head of each request (request line and headers) must arrive within `--read-timeout`,
//!   counted from when the connection is ready for it, so an idle keep-alive connection is
//!   also closed after that long (hyper's `header_read_timeout`);
//! - a head larger than `--max-header-bytes` is answered 431 and the connection closed
//!   (hyper's `max_buf_size`);
//! - at most `--max-connections` connections are open at once; one more is closed as soon as it
//!   is accepted, which costs the node nothing and tells the client at once.
//!
//! The body has its own deadline (`http::body`), and the number of requests in flight its own
//! limit (`http::observe`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::metrics::Metrics;

/// How long to pause accepting after the process ran out of file descriptors, as
/// `axum::serve` does, rather than spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What a connection may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// For a request's head to arrive, and for an idle keep-alive connection's next request.
    pub read_timeout: Duration,
    /// The largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop_accepting` completes, then lets the open connections
/// finish the request they are on and closes them; returns once all are closed. With
/// `with_peers`, each request carries its peer's address (`ConnectInfo`), which the rate limit
/// reads.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: ConnectionLimits,
    with_peers: bool,
    metrics: Arc<Metrics>,
    stop_accepting: impl Future<Output = ()>,
) where
    S: Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(limits.max_header_bytes);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut stop_accepting = std::pin::pin!(stop_accepting);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut stop_accepting => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // A connection that failed before it was accepted concerns only its
                    // client; anything else (no file descriptors left) the whole node.
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "cannot accept connections; pausing");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            drop(tcp);
            continue;
        };
        // Small answers should leave at once, not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            if with_peers {
                request.extensions_mut().insert(ConnectInfo(peer));
            }
            app.clone().call(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        let open = metrics.http_connections.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors of one connection, not of the listener (as hyper-util and axum sort them).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
