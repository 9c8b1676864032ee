//! Distinct items per tenant (DESIGN.md, `POST /items` and `GET /items/{tenant}/count`): each
//! id counts once per tenant, pending or persisted, through any node, across a `kill -9` and a
//! lost COMMIT answer; a batch is valid as a whole; pending ids are bounded like pending keys.
//! Also the read alias `GET /increment/{key}` kept for users of earlier systems.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::app::{TestApp, connect, db_totals};
use crate::helpers::fault_proxy::{FaultProxy, Upstream};
use crate::helpers::postgres::{TestDatabase, dedicated_cluster, fresh_database};
use crate::helpers::process::TallyProcess;

/// A JSON array of items of one tenant.
fn items(tenant: &str, ids: impl IntoIterator<Item = impl ToString>) -> String {
    let items: Vec<Value> = ids
        .into_iter()
        .map(|id| json!({"id": id.to_string(), "tenant": tenant}))
        .collect();
    Value::Array(items).to_string()
}

/// `GET /items/{tenant}/count` on a node at `base`: the status and the parsed body.
async fn count_at(http: &reqwest::Client, base: &str, tenant: &str) -> (StatusCode, Value) {
    let r = http
        .get(format!("{base}/items/{tenant}/count"))
        .send()
        .await
        .expect("request sent");
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn count(app: &TestApp, tenant: &str) -> i64 {
    let (status, body) = count_at(&app.http, &app.url(""), tenant).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant"], tenant);
    body["count"].as_i64().unwrap()
}

/// What PostgreSQL holds for a tenant: its rows in `items` and its `item_counts` row.
async fn persisted(db: &TestDatabase, tenant: &str) -> (i64, Option<i64>) {
    let client = connect(db).await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM items WHERE tenant = $1", &[&tenant])
        .await
        .unwrap()
        .get(0);
    let counted = client
        .query_opt(
            "SELECT count FROM item_counts WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    (rows, counted)
}

async fn wait_for_persisted(db: &TestDatabase, tenant: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = persisted(db, tenant).await;
        if now == (want, Some(want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{tenant} never reached {want} items in PostgreSQL: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Repeats within a request and across requests count once; the count is exact while the ids
/// are pending, once another node has persisted some of them, and after the flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_counts_once_pending_persisted_or_both() {
    let a = TestApp::spawn_with(&["--flush-interval", "10s"]).await;
    let r = a.post_json("/items", items("t", ["a", "b", "a"])).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 3}));
    let r = a.post_json("/items", items("t", ["b", "c"])).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(count(&a, "t").await, 3, "a, b, c pending");
    assert_eq!(
        persisted(&a.db, "t").await,
        (0, None),
        "nothing flushed yet"
    );

    // Another node persists c (which a holds pending too) and d.
    let b = TestApp::spawn_on(a.db.clone(), tempfile::tempdir().unwrap(), &[]).await;
    let r = b.post_json("/items", items("t", ["c", "d"])).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    wait_for_persisted(&b.db, "t", 2).await;
    assert_eq!(count(&b, "t").await, 2, "b has nothing pending");
    assert_eq!(count(&a, "t").await, 4, "c is pending and persisted: once");

    // Tenants are apart, and a tenant never seen counts 0.
    let r = a.post_json("/items", items("u", ["a"])).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(count(&a, "u").await, 1);
    assert_eq!(count(&a, "nobody").await, 0);

    let db = a.db.clone();
    a.stop().await.unwrap();
    wait_for_persisted(&db, "t", 4).await;
    wait_for_persisted(&db, "u", 1).await;
    assert_eq!(count(&b, "t").await, 4);
    assert_eq!(count(&b, "u").await, 1);
    assert!(
        db_totals(&db).await.is_empty(),
        "items are not counters: {:?}",
        db_totals(&db).await
    );
}

/// Two nodes receive overlapping ids at the same time, in many batches: every id counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sent_overlapping_ids_at_once_count_each_once() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(a.db.clone(), tempfile::tempdir().unwrap(), &[]).await;
    let send = |app: &TestApp, ids: std::ops::Range<u32>| {
        let url = app.url("/items");
        let http = app.http.clone();
        async move {
            let ids: Vec<u32> = ids.collect();
            for chunk in ids.chunks(100) {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(items("shared", chunk))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::ACCEPTED);
            }
        }
    };
    tokio::join!(
        send(&a, 0..2_000),
        send(&b, 1_000..3_000),
        send(&a, 2_500..3_500),
        send(&b, 0..500),
    );
    let db = a.db.clone();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert_eq!(persisted(&db, "shared").await, (3_500, Some(3_500)));
}

/// Items acknowledged by a node killed with SIGKILL before any flush are replayed from its
/// journal when it starts again, and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_acknowledged_before_a_kill_are_counted_after_the_restart() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let env = [("DATABASE_URL", db.url.as_str())];
    let mut node = TallyProcess::start(dir.path(), &["--flush-interval", "10s"], &env);
    for batch in 0..10 {
        let r = http
            .post(node.url("/items"))
            .header("content-type", "application/json")
            .body(items("k", (batch * 50)..(batch * 50 + 60)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(count_at(&http, &node.url(""), "k").await.1["count"], 510);
    node.signal(libc::SIGKILL);
    node.wait(Duration::from_secs(10));
    assert_eq!(
        persisted(&db, "k").await,
        (0, None),
        "killed before a flush"
    );

    let mut node = TallyProcess::start(dir.path(), &[], &env);
    wait_for_persisted(&db, "k", 510).await;
    assert_eq!(count_at(&http, &node.url(""), "k").await.1["count"], 510);
    node.signal(libc::SIGTERM);
    assert!(
        node.wait(Duration::from_secs(60)).success(),
        "{}",
        node.log()
    );
    assert_eq!(persisted(&db, "k").await, (510, Some(510)));
}

/// A flush whose COMMIT answer is lost is retried and found applied: a batch that mixes
/// increments and items adds each once.
#[tokio::test]
async fn a_lost_commit_answer_adds_the_items_of_its_batch_once() {
    let db = fresh_database();
    let proxy = FaultProxy::start(Upstream::of(&db.config())).await;
    let app = TestApp::spawn_on(
        proxy.database(&db),
        tempfile::tempdir().unwrap(),
        &["--flush-interval", "200ms"],
    )
    .await;
    proxy.arm();
    for round in 0..5 {
        assert_eq!(app.increment("k", 1).await, StatusCode::ACCEPTED);
        let r = app
            .post_json("/items", items("t", (round * 10)..(round * 10 + 20)))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app
        .metrics()
        .await
        .contains(r#"tally_flushes_total{outcome="already_applied"} 1"#)
    {
        assert!(
            Instant::now() < deadline,
            "no retry found its batch applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.dropped_commits(), 1);
    app.stop().await.unwrap();
    assert_eq!(db_totals(&db).await, [("k".to_owned(), 5)]);
    assert_eq!(persisted(&db, "t").await, (60, Some(60)));
}

/// One invalid item refuses the whole batch, with the item's index in `field`.
#[tokio::test]
async fn an_invalid_item_refuses_the_whole_batch() {
    let app = TestApp::spawn_with(&["--max-batch", "3"]).await;
    let cases = [
        (
            r#"[{"id": "a", "tenant": "t"}, {"tenant": "t"}]"#,
            "missing_field",
            Some("[1].id"),
        ),
        (
            r#"[{"id": "a", "tenant": ""}]"#,
            "invalid_tenant",
            Some("[0].tenant"),
        ),
        (
            r#"[{"id": "", "tenant": "t"}]"#,
            "invalid_id",
            Some("[0].id"),
        ),
        (
            r#"[{"id": "a", "tenant": "t", "value": 1}]"#,
            "unknown_field",
            Some("[0].value"),
        ),
        (
            r#"[{"id": 5, "tenant": "t"}]"#,
            "invalid_type",
            Some("[0].id"),
        ),
        (r#"{"id": "a", "tenant": "t"}"#, "invalid_body", None),
    ];
    for (body, code, field) in cases {
        let r = app.post_json("/items", body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(answer["error"]["field"].as_str(), field, "{body}: {answer}");
    }
    let r = app.post_json("/items", items("t", 0..4)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "too_many_items"
    );
    assert_eq!(count(&app, "t").await, 0, "no refused batch counted an id");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tally_items_rejected_total"),
        "refusals are counted:\n{metrics}"
    );
}

/// In sync mode the items are applied before the answer, which carries each tenant's count;
/// sending them again does not raise it.
#[tokio::test]
async fn in_sync_mode_the_answer_carries_each_tenants_new_count() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    let body = r#"[{"id": "a", "tenant": "t"}, {"id": "b", "tenant": "t"}, {"id": "a", "tenant": "u"}, {"id": "a", "tenant": "t"}]"#;
    for _ in 0..2 {
        let r = app.post_json("/items", body).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"accepted": 4, "counts": {"t": 2, "u": 1}})
        );
    }
    assert_eq!(persisted(&app.db, "t").await, (2, Some(2)));
    assert_eq!(count(&app, "u").await, 1);
}

/// Pending ids share the pending-key bound: past it, 503 with Retry-After, and the node takes
/// new ids again once PostgreSQL is back and the buffer has drained.
#[tokio::test]
async fn pending_ids_past_the_bound_answer_503_and_recover() {
    let cluster = dedicated_cluster();
    let db = cluster.database();
    let app = TestApp::spawn_on(
        db.clone(),
        tempfile::tempdir().unwrap(),
        &["--max-pending-keys", "100"],
    )
    .await;
    cluster.stop_immediate().unwrap();
    let r = app.post_json("/items", items("t", 0..100)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = app.post_json("/items", items("t", [100])).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "overloaded"
    );

    cluster.start_again().unwrap();
    wait_for_persisted(&db, "t", 100).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.post_json("/items", items("t", [100])).await.status() != StatusCode::ACCEPTED {
        assert!(Instant::now() < deadline, "new ids are accepted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.unwrap();
    assert_eq!(persisted(&db, "t").await, (101, Some(101)));
}

/// `GET /increment/{key}` answers as `GET /counters/{key}` does.
#[tokio::test]
async fn the_increment_read_alias_answers_like_counters() {
    let app = TestApp::spawn().await;
    assert_eq!(app.increment("page", 4).await, StatusCode::ACCEPTED);
    for path in ["/increment/page", "/counters/page"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"key": "page", "value": 4})
        );
    }
    let r = app
        .http
        .get(app.url("/increment/never"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
