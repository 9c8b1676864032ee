//! Limits against slow and hostile clients (docs/security.md): a request head or body that
//! trickles in is cut off after `--read-timeout`, an oversized head is refused, connections past
//! `--max-connections` are closed at once and requests past `--max-in-flight` get 503, while
//! other clients go on being served.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::app::TestApp;

/// Reads until the server closes the connection (or resets it); what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the server has closed `stream` within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends `bytes` one at a time, `every` apart, until the server stops taking them; how long
/// that took.
async fn trickle(stream: &mut TcpStream, bytes: &[u8], every: Duration) -> Duration {
    let started = Instant::now();
    for b in bytes {
        if stream.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
        // A closed connection shows on a read sooner than on a write.
        let mut probe = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.peek(&mut probe)).await
        {
            break;
        }
    }
    started.elapsed()
}

/// Increments from a normal client while `during` runs; how many were answered 202, and
/// whether any was answered otherwise.
async fn serve_normally_while<T>(app: &TestApp, during: impl Future<Output = T>) -> (T, u32, u32) {
    let http = reqwest::Client::new();
    let mut during = std::pin::pin!(during);
    let (mut ok, mut other) = (0, 0);
    loop {
        tokio::select! {
            out = &mut during => return (out, ok, other),
            r = http
                .post(app.url("/increment"))
                .header("content-type", "application/json")
                .body(r#"{"key": "normal", "value": 1}"#)
                .send() => match r {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => ok += 1,
                    _ => other += 1,
                },
        }
    }
}

/// A client that sends its headers a byte a second is cut off after the read timeout, and a
/// normal client is served all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sent_a_byte_a_second_are_cut_off_while_others_are_served() {
    let app = TestApp::spawn_with(&["--read-timeout", "2s"]).await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let head = b"POST /increment HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let (took, served, failed) =
        serve_normally_while(&app, trickle(&mut slow, head, Duration::from_secs(1))).await;
    assert!(
        took < Duration::from_secs(10),
        "the slow client held its connection for {took:?} of a {}-byte head",
        head.len()
    );
    assert!(closed_within(&mut slow, Duration::from_secs(1)).await);
    assert_eq!(failed, 0, "a normal request failed");
    assert!(served > 10, "only {served} normal requests were served");
    // The request under way when the slow client was cut off may have counted unanswered.
    let served = i64::from(served);
    app.wait_for_totals("the normal client's increments", |t| {
        t == [("normal".to_owned(), served)] || t == [("normal".to_owned(), served + 1)]
    })
    .await;
}

/// A body that trickles in gets 408 after the read timeout, its connection closed, and
/// nothing of it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_gets_408_and_counts_nothing() {
    let app = TestApp::spawn_with(&["--read-timeout", "1s"]).await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let body = br#"{"key": "slow", "value": 1}"#;
    let head = format!(
        "POST /increment HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    trickle(&mut slow, body, Duration::from_millis(300)).await;
    let answer = read_to_close(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(app.counter("slow").await.0, StatusCode::NOT_FOUND);
}

/// A request head over --max-header-bytes is refused with 431.
#[tokio::test]
async fn a_head_over_the_limit_is_refused() {
    let app = TestApp::spawn_with(&["--max-header-bytes", "8KiB"]).await;
    let r = app
        .http
        .get(app.url("/health"))
        .header("x-large", "a".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let r = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "and the node serves on");
}

/// Idle connections past --max-connections are closed at once; a client already connected is
/// served throughout; once the read timeout has closed the idle ones, new clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_stop_the_service() {
    let app = TestApp::spawn_with(&["--max-connections", "20", "--read-timeout", "2s"]).await;
    let kept = reqwest::Client::new();
    let send = |http: reqwest::Client| {
        let url = app.url("/increment");
        async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(r#"{"key": "kept", "value": 1}"#)
                .send()
                .await
                .map(|r| r.status())
        }
    };
    assert_eq!(send(kept.clone()).await.unwrap(), StatusCode::ACCEPTED);

    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut closed_at_once = 0;
    for stream in &mut flood {
        if closed_within(stream, Duration::from_millis(200)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 20,
        "only {closed_at_once} of 40 connections past a limit of 20 were closed"
    );
    for _ in 0..50 {
        assert_eq!(
            send(kept.clone()).await.unwrap(),
            StatusCode::ACCEPTED,
            "the connected client is served during the flood"
        );
    }
    for stream in &mut flood {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "an idle connection outlived the read timeout"
        );
    }
    let fresh = reqwest::Client::new();
    assert_eq!(send(fresh).await.unwrap(), StatusCode::ACCEPTED);
    let metrics = app.metrics().await;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_http_connections_refused_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(refused >= 20.0, "{metrics}");
}

/// Requests past --max-in-flight get 503 with Retry-After at once, and the node recovers as
/// soon as the requests in flight are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_limit_get_503() {
    let app = TestApp::spawn_with(&["--max-in-flight", "1", "--read-timeout", "3s"]).await;
    // A request held in flight by a body that does not come. Its head may meet another request
    // in flight (the readiness check's), and be refused itself: then it is sent again.
    let mut held = loop {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"POST /increment HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Err(_) => break stream,
            Ok(answer) => eprintln!("refused at once, sending it again: {answer:?}"),
        }
    };
    let r = app
        .post_json("/increment", r#"{"key": "k", "value": 1}"#)
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    for probe in ["/health", "/ready", "/metrics"] {
        let r = app.http.get(app.url(probe)).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{probe} is never refused for the limit"
        );
    }
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    let answer = read_to_close(&mut held).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A new connection: the client's earlier one has been idle for the read timeout too.
    let r = reqwest::Client::new()
        .post(app.url("/increment"))
        .header("content-type", "application/json")
        .body(r#"{"key": "k", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        app.counter("k").await.1["value"],
        1,
        "the refused one counted nothing"
    );
}
