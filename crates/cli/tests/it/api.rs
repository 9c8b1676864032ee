//! The HTTP contract of DESIGN.md sections 2 and 3: every route, every validation rule, every
//! status code, and the JSON error body of each.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::app::TestApp;

/// Asserts an error answer: its status, its `code`, its `field`, and that it has a message.
async fn assert_error(r: reqwest::Response, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(r.status(), status);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/json", "errors are always JSON");
    let body: Value = r.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["field"].as_str(), field, "{body}");
    assert!(!error["message"].as_str().unwrap().is_empty(), "{body}");
}

#[tokio::test]
async fn a_valid_increment_is_accepted_with_an_empty_202() {
    let app = TestApp::spawn().await;
    let r = app
        .post_json("/increment", r#"{"key": "page-views", "value": 3}"#)
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.bytes().await.unwrap().is_empty());

    let r = app
        .post_json("/api/increment", r#"{"key": "page-views", "value": 2}"#)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "the alias of earlier systems"
    );
    assert_eq!(
        app.counter("page-views").await,
        (StatusCode::OK, json!({"key": "page-views", "value": 5}))
    );

    let r = app
        .http
        .post(app.url("/increment"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"key": "k", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "a charset parameter is fine"
    );
}

#[tokio::test]
async fn malformed_bodies_are_400_with_the_field_named() {
    let app = TestApp::spawn().await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("", "malformed_json", None),
        ("{", "malformed_json", None),
        (r#"{"key": "k", "value": 1,}"#, "malformed_json", None),
        (
            r#"{"key": "k", "value": 1} trailing"#,
            "malformed_json",
            None,
        ),
        ("[]", "invalid_body", None),
        ("\"text\"", "invalid_body", None),
        (r#"{"value": 1}"#, "missing_field", Some("key")),
        (r#"{"key": "k"}"#, "missing_field", Some("value")),
        (
            r#"{"key": "k", "value": 1, "tenant": "t"}"#,
            "unknown_field",
            Some("tenant"),
        ),
        (
            r#"{"key": "k", "key": "k", "value": 1}"#,
            "duplicate_field",
            Some("key"),
        ),
        (
            r#"{"key": "k", "value": 1, "value": 2}"#,
            "duplicate_field",
            Some("value"),
        ),
        (r#"{"key": 7, "value": 1}"#, "invalid_type", Some("key")),
        (r#"{"key": null, "value": 1}"#, "invalid_type", Some("key")),
        (
            r#"{"key": "k", "value": "1"}"#,
            "invalid_type",
            Some("value"),
        ),
        (
            r#"{"key": "k", "value": 1.0}"#,
            "invalid_type",
            Some("value"),
        ),
        (
            r#"{"key": "k", "value": 1e2}"#,
            "invalid_type",
            Some("value"),
        ),
        (
            r#"{"key": "k", "value": true}"#,
            "invalid_type",
            Some("value"),
        ),
        (
            r#"{"key": "k", "value": null}"#,
            "invalid_type",
            Some("value"),
        ),
        (
            r#"{"key": "k", "value": 9223372036854775808}"#,
            "invalid_value",
            Some("value"),
        ),
    ];
    for (body, code, field) in cases {
        let r = app.post_json("/increment", *body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_error(r, StatusCode::BAD_REQUEST, code, *field).await;
    }
    assert!(app.db_totals().await.is_empty());
    assert_eq!(
        app.counter("k").await.0,
        StatusCode::NOT_FOUND,
        "nothing bad was counted"
    );
}

#[tokio::test]
async fn key_and_value_rules_by_default() {
    let app = TestApp::spawn().await;
    let post = |key: Value, value: Value| {
        let body = json!({"key": key, "value": value}).to_string();
        app.post_json("/increment", body)
    };
    assert_error(
        post(json!(""), json!(1)).await,
        StatusCode::BAD_REQUEST,
        "invalid_key",
        Some("key"),
    )
    .await;
    assert_error(
        post(json!("x".repeat(257)), json!(1)).await,
        StatusCode::BAD_REQUEST,
        "invalid_key",
        Some("key"),
    )
    .await;
    assert_error(
        post(json!("a\u{1}b"), json!(1)).await,
        StatusCode::BAD_REQUEST,
        "invalid_key",
        Some("key"),
    )
    .await;
    assert_error(
        post(json!("line\nbreak"), json!(1)).await,
        StatusCode::BAD_REQUEST,
        "invalid_key",
        Some("key"),
    )
    .await;
    assert_eq!(
        post(json!("x".repeat(256)), json!(1)).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post(json!("ünïcødé ✓"), json!(1)).await.status(),
        StatusCode::ACCEPTED
    );

    let r = post(json!("k"), json!(0)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": "invalid_value", "message": "value must be an integer >= 1", "field": "value"}})
    );
    assert_error(
        post(json!("k"), json!(-3)).await,
        StatusCode::BAD_REQUEST,
        "invalid_value",
        Some("value"),
    )
    .await;
    assert_eq!(
        post(json!("k"), json!(i64::MAX)).await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn negative_values_when_allowed_but_never_zero() {
    let app = TestApp::spawn_with(&["--allow-negative"]).await;
    assert_eq!(app.increment("balance", 10).await, StatusCode::ACCEPTED);
    assert_eq!(app.increment("balance", -4).await, StatusCode::ACCEPTED);
    let r = app
        .post_json("/increment", r#"{"key": "balance", "value": 0}"#)
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_value", Some("value")).await;
    assert_eq!(app.counter("balance").await.1["value"], 6);
}

#[tokio::test]
async fn uuid_keys_when_required() {
    let app = TestApp::spawn_with(&["--key-format", "uuid"]).await;
    let r = app
        .post_json("/increment", r#"{"key": "not-a-uuid", "value": 1}"#)
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_key", Some("key")).await;
    let upper = "6F9619FF-8B86-D011-B42D-00CF4FC964FF";
    assert_eq!(app.increment(upper, 1).await, StatusCode::ACCEPTED);
    assert_eq!(
        app.increment(&upper.to_lowercase(), 1).await,
        StatusCode::ACCEPTED
    );
    let (status, body) = app.counter(upper).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"key": upper.to_lowercase(), "value": 2}),
        "one UUID, one counter"
    );
    let (status, body) = app.counter("nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn content_type_and_size_limits() {
    let app = TestApp::spawn_with(&["--max-body-bytes", "1024"]).await;
    let no_type = app
        .http
        .post(app.url("/increment"))
        .body(r#"{"key": "k", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_error(
        no_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    )
    .await;
    let text = app
        .http
        .post(app.url("/increment"))
        .header("content-type", "text/plain")
        .body(r#"{"key": "k", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_error(
        text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    )
    .await;

    let big = format!(r#"{{"key": "{}", "value": 1}}"#, "x".repeat(2000));
    assert_error(
        app.post_json("/increment", big.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;

    // Without a Content-Length (chunked), the limit holds while reading.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(100)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let r = app
        .http
        .post(app.url("/increment"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None).await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/nowhere")).send().await.unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "not_found", None).await;
    let r = app.http.get(app.url("/increment")).send().await.unwrap();
    let allow = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(allow.as_deref(), Some("POST"));
    assert_error(
        r,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    let r = app
        .http
        .delete(app.url("/counters/k"))
        .send()
        .await
        .unwrap();
    assert_error(
        r,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
}

#[tokio::test]
async fn counters_are_404_until_counted_and_keys_may_hold_slashes() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(app.url("/counters/never-seen"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "counter_not_found", None).await;

    assert_eq!(
        app.increment("shop/eu/orders", 4).await,
        StatusCode::ACCEPTED
    );
    let r = app
        .http
        .get(app.url("/counters/shop/eu/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"key": "shop/eu/orders", "value": 4})
    );
    assert_eq!(
        app.counter("shop/eu/orders").await.1["value"],
        4,
        "escaped slashes too"
    );

    let r = app
        .http
        .get(app.url("/counters/bad%0Akey"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_key", Some("key")).await;
}

#[tokio::test]
async fn batches_are_all_or_nothing() {
    let app = TestApp::spawn_with(&["--max-batch", "3"]).await;
    let r = app
        .post_json(
            "/increments",
            r#"[{"key": "a", "value": 1}, {"key": "b", "value": 2}, {"key": "a", "value": 3}]"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 3}));
    assert_eq!(app.counter("a").await.1["value"], 4);

    let r = app
        .post_json(
            "/increments",
            r#"[{"key": "a", "value": 1}, {"key": "b", "value": 0}]"#,
        )
        .await;
    assert_error(
        r,
        StatusCode::BAD_REQUEST,
        "invalid_value",
        Some("[1].value"),
    )
    .await;
    let r = app
        .post_json("/increments", r#"[{"key": "a", "value": 1}, {"key": "b"}]"#)
        .await;
    assert_error(
        r,
        StatusCode::BAD_REQUEST,
        "missing_field",
        Some("[1].value"),
    )
    .await;
    let r = app
        .post_json("/increments", r#"[{"key": "a", "value": 1}, 5]"#)
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_body", Some("[1]")).await;
    let four = r#"[{"key": "a", "value": 1}, {"key": "a", "value": 1}, {"key": "a", "value": 1}, {"key": "a", "value": 1}]"#;
    assert_error(
        app.post_json("/increments", four).await,
        StatusCode::BAD_REQUEST,
        "too_many_items",
        None,
    )
    .await;
    let r = app
        .post_json("/increments", r#"{"key": "a", "value": 1}"#)
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_body", None).await;

    assert_eq!(
        app.counter("a").await.1["value"],
        4,
        "no refused batch counted anything"
    );
    assert_eq!(app.counter("b").await.1["value"], 2);
}

#[tokio::test]
async fn health_ready_metrics_answer() {
    let app = TestApp::spawn().await;
    for path in ["/health", "/api/health", "/ready"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    app.increment("k", 1).await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("tally_increments_accepted_total 1"), "{text}");
    assert!(
        text.contains("tally_oldest_unpersisted_increment_age_seconds"),
        "{text}"
    );
    // The bounds beside their use, at their defaults, and the readiness /ready just gave.
    for line in [
        "tally_pending_keys_limit 10000000",
        "tally_journal_limit_bytes 4294967296",
        "tally_ready{reason=\"ok\"} 1",
        "tally_ready{reason=\"database_unavailable\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    // The process metrics, read from the system: this process has files open and memory.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_cpu_seconds_total") > 0.0);
    let (open, max) = (value("process_open_fds"), value("process_max_fds"));
    assert!(open > 0.0 && open <= max, "{open} of {max} files");
    assert!(value("process_threads") >= 1.0);
}

#[tokio::test]
async fn sync_mode_answers_with_the_new_total() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    let r = app
        .post_json("/increment", r#"{"key": "k", "value": 5}"#)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"key": "k", "value": 5, "total": 5})
    );
    let r = app
        .post_json("/increment", r#"{"key": "k", "value": 2}"#)
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["total"], 7);
    assert_eq!(
        app.db_totals().await,
        vec![("k".to_owned(), 7)],
        "in PostgreSQL before the answer"
    );

    let r = app
        .post_json(
            "/increments",
            r#"[{"key": "k", "value": 1}, {"key": "j", "value": 1}]"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 2}));
    assert_eq!(
        app.db_totals().await,
        vec![("j".to_owned(), 1), ("k".to_owned(), 8)]
    );
    assert_eq!(
        app.counter("k").await,
        (StatusCode::OK, json!({"key": "k", "value": 8}))
    );
}

#[tokio::test]
async fn totals_never_leave_the_64_bit_range() {
    // Sync: PostgreSQL refuses, the client hears why, nothing changes.
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    assert_eq!(app.increment("max", i64::MAX).await, StatusCode::OK);
    let r = app
        .post_json("/increment", r#"{"key": "max", "value": 1}"#)
        .await;
    assert_error(
        r,
        StatusCode::BAD_REQUEST,
        "total_out_of_range",
        Some("value"),
    )
    .await;
    let r = app
        .post_json(
            "/increments",
            r#"[{"key": "other", "value": 1}, {"key": "max", "value": 1}]"#,
        )
        .await;
    assert_error(
        r,
        StatusCode::BAD_REQUEST,
        "total_out_of_range",
        Some("[1].value"),
    )
    .await;
    assert_eq!(app.db_totals().await, vec![("max".to_owned(), i64::MAX)]);

    // Buffered: a pending delta that would overflow is refused at once.
    let app = TestApp::spawn_with(&["--flush-interval", "10s"]).await;
    assert_eq!(app.increment("max", i64::MAX).await, StatusCode::ACCEPTED);
    let r = app
        .post_json("/increment", r#"{"key": "max", "value": 1}"#)
        .await;
    assert_error(
        r,
        StatusCode::BAD_REQUEST,
        "total_out_of_range",
        Some("value"),
    )
    .await;
}

#[tokio::test]
async fn in_sync_mode_a_key_the_database_refuses_for_good_is_a_400_not_a_503() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    app.db_client()
        .await
        .batch_execute("ALTER TABLE counters ADD CONSTRAINT no_poison CHECK (key <> 'poison')")
        .await
        .unwrap();
    let r = app
        .post_json("/increment", r#"{"key": "poison", "value": 1}"#)
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "refused_by_database", None).await;
    let r = app
        .post_json(
            "/increments",
            r#"[{"key": "fine", "value": 1}, {"key": "poison", "value": 1}]"#,
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "refused_by_database", None).await;
    assert_eq!(app.increment("fine", 2).await, StatusCode::OK);
    assert_eq!(
        app.db_totals().await,
        vec![("fine".to_owned(), 2)],
        "all or nothing"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"tally_increments_rejected_total{reason="refused_by_database"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_total_that_would_overflow_in_postgres_never_blocks_other_keys() {
    let app = TestApp::spawn().await;
    assert_eq!(app.increment("max", i64::MAX).await, StatusCode::ACCEPTED);
    app.wait_for_totals("the first flush", |t| t.len() == 1)
        .await;

    // Both land in one batch: the poison key is left out, the other key commits.
    let r = app
        .post_json(
            "/increments",
            r#"[{"key": "max", "value": 1}, {"key": "fine", "value": 2}]"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    app.wait_for_totals("the good key", |t| t.iter().any(|(k, _)| k == "fine"))
        .await;
    assert_eq!(
        app.db_totals().await,
        vec![("fine".to_owned(), 2), ("max".to_owned(), i64::MAX)]
    );

    let rejected = app
        .db_client()
        .await
        .query("SELECT key, delta, reason FROM rejected_increments", &[])
        .await
        .unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].get::<_, String>(0), "max");
    assert_eq!(rejected[0].get::<_, i64>(1), 1);
    assert_eq!(rejected[0].get::<_, String>(2), "total_out_of_range");

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"tally_increments_rejected_total{reason="total_out_of_range"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_only_real_ones() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let spec: Value = r.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    assert_eq!(
        documented,
        [
            "/",
            "/api/keys",
            "/api/keys/{id}",
            "/api/sessions",
            "/api/users",
            "/console.css",
            "/console.js",
            "/console/status",
            "/counters/{key}",
            "/health",
            "/increment",
            "/increment/{key}",
            "/increments",
            "/items",
            "/items/{tenant}/count",
            "/metrics",
            "/openapi.json",
            "/ready",
            "/runbook"
        ]
    );
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = app.url(
                &path
                    .replace("{key}", "some-key")
                    .replace("{tenant}", "some-tenant")
                    .replace("{id}", "some-id"),
            );
            let r = match method.as_str() {
                "get" => app.http.get(url).send().await.unwrap(),
                "post" => app.post_json(path, "[]").await,
                "delete" => app.http.delete(url).send().await.unwrap(),
                other => panic!("unexpected method {other}"),
            };
            assert_ne!(
                r.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_ne!(
                body["error"]["code"], "not_found",
                "{method} {path} is routed"
            );
        }
    }
}

#[tokio::test]
async fn every_request_gets_an_id_and_is_counted_by_route_and_status() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .post(app.url("/increment"))
        .header("content-type", "application/json")
        .header("x-request-id", "client-chosen-42")
        .body(r#"{"key": "k", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-42");
    let r = app.http.get(app.url("/nowhere")).send().await.unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 16, "a made id: {made}");
    app.post_json("/increment", r#"{"key": "k", "value": 0}"#)
        .await;

    let metrics = app.metrics().await;
    for line in [
        r#"tally_http_requests_total{route="/increment",status="202"} 1"#,
        r#"tally_http_requests_total{route="/increment",status="400"} 1"#,
        r#"tally_http_requests_total{route="unmatched",status="404"} 1"#,
        r#"tally_http_request_duration_seconds_count{route="/increment"} 2"#,
        r#"tally_increments_accepted_total 1"#,
        r#"tally_increments_rejected_total{reason="invalid"} 1"#,
        r#"tally_pending_keys 1"#,
        r#"tally_db_pool_max_connections 16"#,
        r#"tally_db_pool_connections{state="in_use"}"#,
        r#"mode="buffered",durability="journal"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} is missing from\n{metrics}");
    }
    assert!(
        metrics.contains("tally_pending_bytes 9"),
        "one key of 1 byte and its delta:\n{metrics}"
    );
}
