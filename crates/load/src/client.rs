//! The HTTP side of a load run: where requests go ([`Target`]) and one keep-alive HTTP/1.1
//! connection per worker ([`Client`]), which tells apart the three outcomes that matter for
//! verification: an answer, a request that certainly never left, and a request whose fate is
//! unknown.
//!
//! hyper's low-level connection API is used rather than a pooled client: a worker owns its
//! connection, so there is no pool to contend on, and `try_send_request` hands back a request
//! that was never written, which is what lets a reconnect retry it without counting it as
//! possibly applied. The worker also drives its connection itself instead of spawning it as a
//! task of its own: a request then costs no hand-over between two tasks, which matters when
//! the load generator shares the machine's cores with the server it measures.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How many times a request that never left is retried on a fresh connection before it is
/// given up as a connection error. A server closing an idle keep-alive connection costs one.
const SEND_ATTEMPTS: usize = 3;

/// Where the requests go, resolved once before the run.
#[derive(Debug)]
pub struct Target {
    addrs: Vec<SocketAddr>,
    host: HeaderValue,
    uri: Uri,
    method: Method,
    json: HeaderValue,
    /// `Bearer <api key>`, marked sensitive.
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Target {
    /// Resolves `url` (`http://host:port`, no path) and checks `path`. DNS is asked once, so
    /// reconnects during the run cost no lookup.
    pub async fn resolve(
        url: &str,
        path: &str,
        method: Method,
        timeout: Duration,
        api_key: Option<&str>,
    ) -> anyhow::Result<Target> {
        let parsed: Uri = url
            .parse()
            .with_context(|| format!("--url {url:?} is not a URL"))?;
        match parsed.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("--url: only http:// is supported, not {other}://"),
            None => bail!("--url {url:?} needs a scheme, e.g. http://127.0.0.1:3333"),
        }
        if parsed.path_and_query().is_some_and(|p| p.as_str() != "/") {
            bail!("--url {url:?} must not have a path; give it with --path");
        }
        let authority = parsed
            .authority()
            .with_context(|| format!("--url {url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .collect();
        if addrs.is_empty() {
            bail!("{host} resolves to no address");
        }
        if !path.starts_with('/') {
            bail!("--path {path:?} must start with '/'");
        }
        let uri: Uri = path
            .parse()
            .with_context(|| format!("--path {path:?} is not a valid path"))?;
        Ok(Target {
            addrs,
            host: HeaderValue::from_str(authority.as_str())
                .context("the URL's host is not a valid Host header")?,
            uri,
            method,
            json: HeaderValue::from_static("application/json"),
            authorization: api_key
                .map(|key| {
                    let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                        .context("--api-key is not a valid header value")?;
                    value.set_sensitive(true);
                    anyhow::Ok(value)
                })
                .transpose()?,
            timeout,
        })
    }

    /// A request with `body` (empty for GET), headers and all.
    pub fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let has_body = !body.is_empty();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, self.json.clone());
        }
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        request
    }

    /// Opens one connection, to check that the server is there before the run starts.
    pub async fn probe(&self) -> anyhow::Result<()> {
        self.connect().await.map(drop)
    }

    async fn connect(&self) -> anyhow::Result<Open> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addrs[..]))
            .await
            .context("connecting timed out")??;
        // Requests are small and each waits for its answer: Nagle's algorithm would only
        // add delay.
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Open {
            sender,
            connection: Some(Box::pin(connection)),
        })
    }
}

/// The connection future of one keep-alive connection.
type Driver = Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// An open connection: the handle requests go through, and the connection itself, which the
/// worker polls while it waits (see [`driving`]).
struct Open {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once it has ended (server closed, or an error); its error, if any, also reaches
    /// the request in flight, which is where it is counted.
    connection: Option<Driver>,
}

/// Runs `work` while polling `connection`, which does the actual reading and writing.
async fn driving<F: Future>(connection: &mut Option<Driver>, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    loop {
        let Some(conn) = connection.as_mut() else {
            return work.await;
        };
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = conn.as_mut() => *connection = None,
        }
    }
}

/// What became of one request.
#[derive(Debug)]
pub enum Outcome {
    /// The server answered; `latency` runs from sending to the end of the answer's body.
    Answered {
        status: StatusCode,
        latency: Duration,
    },
    /// The request never left: no connection could be made, or each one closed before the
    /// request was written. The server cannot have applied it.
    NotSent(anyhow::Error),
    /// The connection failed after the request was written, so the server may or may not
    /// have applied it.
    Lost(anyhow::Error),
    /// No complete answer within the timeout; the server may or may not have applied it.
    TimedOut,
}

/// One worker's keep-alive connection, opened on first use and again after each failure.
pub struct Client<'a> {
    target: &'a Target,
    open: Option<Open>,
}

impl<'a> Client<'a> {
    /// A client with no connection yet.
    pub fn new(target: &'a Target) -> Self {
        Client { target, open: None }
    }

    /// Sends `request` and reads the whole answer.
    pub async fn send(&mut self, mut request: Request<Full<Bytes>>) -> Outcome {
        let timeout = self.target.timeout;
        let mut last_error = None;
        for _ in 0..SEND_ATTEMPTS {
            let Open { sender, connection } = match self.connected().await {
                Ok(open) => open,
                Err(e) => return Outcome::NotSent(e),
            };
            let started = Instant::now();
            let exchange = driving(connection, async {
                let response = sender.try_send_request(request).await?;
                let status = response.status();
                // The body must be read to the end before the connection can carry the next
                // request; its bytes are not needed.
                let mut body = response.into_body();
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        // The status line came, so the server did decide; only the rest of
                        // this connection is lost.
                        return Ok((status, false));
                    }
                }
                Ok::<_, TrySendError<Request<Full<Bytes>>>>((status, true))
            });
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok((status, reusable))) => {
                    if !reusable {
                        self.open = None;
                    }
                    return Outcome::Answered {
                        status,
                        latency: started.elapsed(),
                    };
                }
                Ok(Err(mut e)) => {
                    self.open = None;
                    match e.take_message() {
                        Some(unsent) => {
                            request = unsent;
                            last_error = Some(e.into_error());
                        }
                        None => return Outcome::Lost(e.into_error().into()),
                    }
                }
                Err(_elapsed) => {
                    // hyper closes a connection whose request future is dropped mid-flight.
                    self.open = None;
                    return Outcome::TimedOut;
                }
            }
        }
        Outcome::NotSent(match last_error {
            Some(e) => anyhow::Error::new(e).context("the connection closed before sending"),
            None => anyhow::anyhow!("the connection closed before sending"),
        })
    }

    async fn connected(&mut self) -> anyhow::Result<&mut Open> {
        // An idle connection is ready at once; asking also notices a close the server sent
        // while this worker was busy, such as the end of an idle keep-alive.
        let usable = match self.open.as_mut() {
            Some(Open { sender, connection }) => driving(connection, sender.ready()).await.is_ok(),
            None => false,
        };
        if !usable {
            self.open = None;
            let mut open = self.target.connect().await?;
            driving(&mut open.connection, open.sender.ready()).await?;
            self.open = Some(open);
        }
        Ok(self.open.as_mut().expect("connected above"))
    }
}
