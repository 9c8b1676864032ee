//! Retries that count once (DESIGN.md section 1, "Retries"): requests with an
//! `Idempotency-Key`, retried on the same node, on another node at the same moment, after a
//! `kill -9` of the node that answered first, with another body, and past the key's TTL.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::app::{TestApp, db_totals};
use crate::helpers::postgres::fresh_database;
use crate::helpers::process::TallyProcess;

/// Posts `body` to `url` with an `Idempotency-Key`; the status, the replay header and the body.
async fn post_once(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, bool, String) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("request sent");
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (r.status(), replayed, r.text().await.unwrap())
}

/// A retry on the same node gets the first answer and applies nothing; the same key with
/// another body is refused; requests without the key are counted each time, as before.
#[tokio::test]
async fn a_retry_counts_once_and_another_body_under_the_key_is_refused() {
    let app = TestApp::spawn().await;
    let url = app.url("/increment");
    let body = json!({"key": "k", "value": 5});
    let first = post_once(&app.http, &url, "order-1", &body).await;
    assert_eq!(first, (StatusCode::ACCEPTED, false, String::new()));
    let retry = post_once(&app.http, &url, "order-1", &body).await;
    assert_eq!(retry, (StatusCode::ACCEPTED, true, String::new()));

    let other = json!({"key": "k", "value": 6});
    let (status, _, error) = post_once(&app.http, &url, "order-1", &other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = serde_json::from_str(&error).unwrap();
    assert_eq!(error["error"]["code"], "idempotency_key_reused");

    let batch = json!([{"key": "k", "value": 1}, {"key": "j", "value": 2}]);
    for _ in 0..3 {
        let (status, _, answer) = post_once(&app.http, &app.url("/increments"), "b", &batch).await;
        assert_eq!(
            (status, answer.as_str()),
            (StatusCode::ACCEPTED, r#"{"accepted":2}"#)
        );
    }
    // Without the header, every request counts.
    assert_eq!(app.increment("k", 100).await, StatusCode::ACCEPTED);
    assert_eq!(app.increment("k", 100).await, StatusCode::ACCEPTED);

    app.wait_for_totals("every request, the retried ones once", |t| {
        t == [("j".to_owned(), 2), ("k".to_owned(), 206)]
    })
    .await;
    let metrics = app.metrics().await;
    for line in [
        r#"tally_idempotent_requests_total{outcome="applied"} 2"#,
        r#"tally_idempotent_requests_total{outcome="replayed"} 3"#,
        r#"tally_idempotent_requests_total{outcome="reused"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

/// A malformed key is a 400 and applies nothing.
#[tokio::test]
async fn a_malformed_key_is_refused() {
    let app = TestApp::spawn().await;
    for bad in ["", &"x".repeat(256), "tab\there"] {
        let r = app
            .http
            .post(app.url("/increment"))
            .header("content-type", "application/json")
            .header("idempotency-key", bad)
            .body(r#"{"key": "k", "value": 1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_idempotency_key", "{bad:?}");
    }
    assert_eq!(app.counter("k").await.0, StatusCode::NOT_FOUND);
}

/// The same request sent to two nodes at the same moment, many times over with fresh keys,
/// is applied once each time: PostgreSQL decides which node applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_on_two_nodes_at_once_counts_once() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(a.db.clone(), tempfile::tempdir().unwrap(), &[]).await;
    let rounds = 50;
    let (inc_a, inc_b) = (a.url("/increment"), b.url("/increment"));
    let (items_a, items_b) = (a.url("/items"), b.url("/items"));
    for round in 0..rounds {
        let key = format!("race-{round}");
        let inc = json!({"key": "raced", "value": 1});
        let items = json!([{"id": format!("i{round}"), "tenant": "raced"}]);
        let (ra, rb) = tokio::join!(
            post_once(&a.http, &inc_a, &key, &inc),
            post_once(&b.http, &inc_b, &key, &inc),
        );
        assert_eq!((ra.0, rb.0), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
        assert!(
            ra.1 != rb.1,
            "exactly one of the two is a replay: {ra:?} {rb:?}"
        );
        let item_key = format!("items-{round}");
        let (ia, ib) = tokio::join!(
            post_once(&a.http, &items_a, &item_key, &items),
            post_once(&b.http, &items_b, &item_key, &items),
        );
        assert_eq!((ia.0, ib.0), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
        assert!(
            ia.1 != ib.1,
            "exactly one of the two is a replay: {ia:?} {ib:?}"
        );
    }
    assert_eq!(db_totals(&a.db).await, [("raced".to_owned(), rounds)]);
    let count: Value = a
        .http
        .get(a.url("/items/raced/count"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["count"], rounds);
}

/// A node killed with SIGKILL right after it acknowledged a request with a key: the request is
/// in PostgreSQL already, and its retry, on the restarted node or on another, applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_first_node_was_killed_counts_once() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let body = json!({"key": "paid", "value": 7});
    let mut node = TallyProcess::start(
        dir.path(),
        &["--flush-interval", "10s"],
        &[("DATABASE_URL", &db.url)],
    );
    let first = post_once(&http, &node.url("/increment"), "payment-1", &body).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    node.signal(libc::SIGKILL);
    node.wait(Duration::from_secs(10));

    // Another node takes the retry at once.
    let other = TestApp::spawn_on(db.clone(), tempfile::tempdir().unwrap(), &[]).await;
    let retry = post_once(&other.http, &other.url("/increment"), "payment-1", &body).await;
    assert_eq!(retry, (StatusCode::ACCEPTED, true, String::new()));

    // The killed node comes back (replaying its journal) and gets the retry too.
    let mut node = TallyProcess::start(dir.path(), &[], &[("DATABASE_URL", &db.url)]);
    let again = post_once(&http, &node.url("/increment"), "payment-1", &body).await;
    assert_eq!(again, (StatusCode::ACCEPTED, true, String::new()));
    node.signal(libc::SIGTERM);
    assert!(
        node.wait(Duration::from_secs(60)).success(),
        "{}",
        node.log()
    );
    other.stop().await.unwrap();
    assert_eq!(db_totals(&db).await, [("paid".to_owned(), 7)]);
}

/// In sync mode a retry gets the first answer, the total of that moment, byte for byte.
#[tokio::test]
async fn in_sync_mode_a_retry_gets_the_first_answer() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    let url = app.url("/increment");
    let body = json!({"key": "k", "value": 3});
    let first = post_once(&app.http, &url, "s-1", &body).await;
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(app.increment("k", 10).await, StatusCode::OK);
    let retry = post_once(&app.http, &url, "s-1", &body).await;
    assert_eq!(retry, (StatusCode::OK, true, first.2.clone()));
    let first: Value = serde_json::from_str(&first.2).unwrap();
    assert_eq!(first, json!({"key": "k", "value": 3, "total": 3}));

    let items = json!([{"id": "a", "tenant": "t"}, {"id": "b", "tenant": "t"}]);
    let once = post_once(&app.http, &app.url("/items"), "s-2", &items).await;
    assert_eq!(once.0, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&once.2).unwrap(),
        json!({"accepted": 2, "counts": {"t": 2}})
    );
    let retry = post_once(&app.http, &app.url("/items"), "s-2", &items).await;
    assert_eq!(retry, (StatusCode::OK, true, once.2));
    assert_eq!(app.counter("k").await.1["value"], 13);
}

/// A key is kept for --idempotency-ttl: a retry after it counts again.
#[tokio::test]
async fn a_retry_after_the_ttl_counts_again() {
    let app = TestApp::spawn_with(&["--idempotency-ttl", "1s"]).await;
    let url = app.url("/increment");
    let body = json!({"key": "k", "value": 1});
    assert!(!post_once(&app.http, &url, "t-1", &body).await.1);
    assert!(
        post_once(&app.http, &url, "t-1", &body).await.1,
        "within the TTL"
    );
    // Past the TTL, checked by polling rather than a fixed sleep.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, replayed, _) = post_once(&app.http, &url, "t-1", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        if !replayed {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.wait_for_totals("two applications", |t| t == [("k".to_owned(), 2)])
        .await;
}
