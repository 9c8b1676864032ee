//! Access control (DESIGN.md, "Access control"): `--auth required` with API keys and session
//! cookies, users added over HTTP or by `tally user add`, keys by `POST /api/keys` or
//! `tally key create`; `--rate-limit` with its 429 and headers, per client, behind trusted
//! proxies only; `--metrics-listen`; and no secret in the logs.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::helpers::app::TestApp;
use crate::helpers::postgres::TestDatabase;
use crate::helpers::process::{TallyProcess, tally_command};

const PASSWORD: &str = "correct horse battery staple";

/// Posts an increment of 1 to `k` with an `Authorization: Bearer` key, if any.
async fn increment_with(
    app: &TestApp,
    http: &reqwest::Client,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(app.url("/increment"))
        .header("content-type", "application/json")
        .body(r#"{"key": "k", "value": 1}"#);
    if let Some(key) = key {
        request = request.header(AUTHORIZATION, format!("Bearer {key}"));
    }
    request.send().await.expect("request sent")
}

async fn error_code(r: reqwest::Response) -> String {
    let body: Value = r.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request sent")
}

/// Runs `tally <args>` against `db`, with `stdin` as its standard input; its stdout.
fn run_tally(db: &TestDatabase, dir: &std::path::Path, args: &[&str], stdin: &str) -> String {
    let mut child = tally_command()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tally");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tally {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The whole life of a user with `--auth required`: no credentials, 401; sign up, log in with
/// a real cookie jar, count with the session, create a key, count with it; a wrong key, 401;
/// revoke the key and log out, 401 again. Probes and metrics stay open throughout.
#[tokio::test]
async fn with_auth_required_only_valid_credentials_count() {
    let app = TestApp::spawn_with(&[
        "--auth",
        "required",
        "--signup",
        "open",
        "--insecure-cookies",
    ])
    .await;
    let anonymous = reqwest::Client::new();
    let r = increment_with(&app, &anonymous, None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(r).await, "credentials_required");
    for open in [
        "/health",
        "/ready",
        "/metrics",
        "/api/health",
        "/openapi.json",
        "/runbook",
    ] {
        let r = anonymous.get(app.url(open)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{open} stays open");
    }
    let r = anonymous.get(app.url("/counters/k")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "reads need credentials too"
    );

    let account = json!({"email": "Ada@example.org", "password": PASSWORD});
    let r = post(&anonymous, app.url("/api/users"), account.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user_id = r.json::<Value>().await.unwrap()["userId"].as_i64().unwrap();
    let again = json!({"email": "ada@EXAMPLE.org", "password": "another password"});
    let r = post(&anonymous, app.url("/api/users"), again).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "email_taken");
    let weak = json!({"email": "bob@example.org", "password": "short"});
    let r = post(&anonymous, app.url("/api/users"), weak).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "invalid_password");

    // A session, in a real cookie jar.
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let r = browser.get(app.url("/api/sessions")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post(&browser, app.url("/api/sessions"), account.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = browser.get(app.url("/api/sessions")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"userId": user_id}));
    assert_eq!(
        increment_with(&app, &browser, None).await.status(),
        StatusCode::ACCEPTED
    );

    // An API key, made by the logged-in user.
    let r = browser.post(app.url("/api/keys")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.unwrap();
    let (key_id, key) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    assert!(key.starts_with("tally_") && key.contains(key_id), "{made}");
    assert_eq!(
        increment_with(&app, &anonymous, Some(key)).await.status(),
        StatusCode::ACCEPTED
    );
    let r = anonymous
        .get(app.url("/counters/k"))
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["value"], 2);

    let mut wrong = key.to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    for bad in [wrong.as_str(), "tally_nonsense", "not-a-key"] {
        let r = increment_with(&app, &anonymous, Some(bad)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(error_code(r).await, "invalid_credentials");
    }

    // Revoked, the key is refused at once; revoked twice, it is not found.
    let revoke = app.url(&format!("/api/keys/{key_id}"));
    let r = browser.delete(&revoke).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = increment_with(&app, &anonymous, Some(key)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = browser.delete(&revoke).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Logged out, the session is over on the server, not only in the jar.
    let cookie = {
        let r = post(&anonymous, app.url("/api/sessions"), account).await;
        r.headers()[SET_COOKIE].to_str().unwrap().to_owned()
    };
    let token = cookie.split(';').next().unwrap().to_owned();
    let r = browser
        .delete(app.url("/api/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = browser.get(app.url("/api/sessions")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        increment_with(&app, &browser, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = anonymous
        .get(app.url("/api/sessions"))
        .header("cookie", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "another session lives on");
    let r = anonymous
        .delete(app.url("/api/sessions"))
        .header("cookie", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = anonymous
        .get(app.url("/api/sessions"))
        .header("cookie", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a copied cookie is dead too"
    );

    app.wait_for_totals("the two counted increments", |t| t == [("k".to_owned(), 2)])
        .await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"tally_auth_refused_total{reason="missing"}"#)
            && metrics.contains(r#"tally_auth_refused_total{reason="invalid"}"#),
        "{metrics}"
    );
}

/// The session cookie is HttpOnly, SameSite=Strict, Secure (without --insecure-cookies) and
/// expires; a wrong password and an unknown email get the same answer.
#[tokio::test]
async fn the_session_cookie_is_locked_down_and_a_failed_login_says_nothing_more() {
    let app = TestApp::spawn_with(&["--signup", "open", "--session-ttl", "1h"]).await;
    let http = reqwest::Client::new();
    let account = json!({"email": "ada@example.org", "password": PASSWORD});
    assert_eq!(
        post(&http, app.url("/api/users"), account.clone())
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = post(&http, app.url("/api/sessions"), account).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in [
        "tally_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(
            cookie.contains(attribute),
            "{attribute} missing from {cookie}"
        );
    }

    let wrong_password = json!({"email": "ada@example.org", "password": "not the password"});
    let unknown_email = json!({"email": "eve@example.org", "password": PASSWORD});
    let mut answers = Vec::new();
    for attempt in [wrong_password, unknown_email] {
        let r = post(&http, app.url("/api/sessions"), attempt).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(SET_COOKIE).is_none());
        answers.push(r.text().await.unwrap());
    }
    assert_eq!(answers[0], answers[1], "nothing tells the two apart");
    let r = post(
        &http,
        app.url("/api/sessions"),
        json!({"email": "ada@example.org"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// Sign-up is closed by default: an operator adds users and keys with the CLI, and those keys
/// work on a node with --auth required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adds_users_and_keys_from_the_command_line() {
    let app = TestApp::spawn_with(&["--auth", "required"]).await;
    let http = reqwest::Client::new();
    let r = post(
        &http,
        app.url("/api/users"),
        json!({"email": "ada@example.org", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "signup_closed");

    let dir = tempfile::tempdir().unwrap();
    let db = app.db.clone();
    let added = tokio::task::spawn_blocking({
        let (db, dir) = (db.clone(), dir.path().to_owned());
        move || {
            let added = run_tally(
                &db,
                &dir,
                &["user", "add", "ada@example.org"],
                &format!("{PASSWORD}\n"),
            );
            let key = run_tally(
                &db,
                &dir,
                &["key", "create", "--user", "ada@example.org"],
                "",
            );
            (added, key)
        }
    })
    .await
    .unwrap();
    assert!(
        added.0.contains("added user ada@example.org"),
        "{}",
        added.0
    );
    let key = added.1.trim();
    assert!(key.starts_with("tally_"), "{key}");
    assert_eq!(
        increment_with(&app, &http, Some(key)).await.status(),
        StatusCode::ACCEPTED
    );
    let r = post(
        &http,
        app.url("/api/sessions"),
        json!({"email": "ada@example.org", "password": PASSWORD}),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "the password read from stdin"
    );
}

async fn wait_until_accepted(app: &TestApp, http: &reqwest::Client, key: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while increment_with(app, http, key).await.status() != StatusCode::ACCEPTED {
        assert!(
            Instant::now() < deadline,
            "the limit never let the client in again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Past the limit: 429 with Retry-After and the RateLimit headers, then service again once
/// the bucket has refilled; probes are never limited.
#[tokio::test]
async fn past_the_rate_limit_a_client_gets_429_and_is_let_in_again_later() {
    let app = TestApp::spawn_with(&["--rate-limit", "3/2s"]).await;
    let http = reqwest::Client::new();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = increment_with(&app, &http, None).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        remaining.push(
            r.headers()["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = increment_with(&app, &http, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = r.headers().clone();
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "0");
    let reset: u32 = headers["ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&reset), "reset {reset}");
    assert_eq!(error_code(r).await, "rate_limited");
    for _ in 0..10 {
        let r = http.get(app.url("/ready")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "probes are not limited");
    }
    wait_until_accepted(&app, &http, None).await;
    let metrics = app.metrics().await;
    assert!(
        !metrics.contains("tally_rate_limited_total 0\n"),
        "{metrics}"
    );
    app.wait_for_totals("what the limit let in", |t| t == [("k".to_owned(), 4)])
        .await;
}

/// Without --trusted-proxies, X-Forwarded-For changes nothing: one peer, one bucket. With the
/// peer trusted, each forwarded client has its own.
#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let send = |app: &TestApp, http: &reqwest::Client, from: &str| {
        http.post(app.url("/increment"))
            .header("content-type", "application/json")
            .header("x-forwarded-for", from)
            .body(r#"{"key": "k", "value": 1}"#)
            .send()
    };
    let http = reqwest::Client::new();
    let untrusting = TestApp::spawn_with(&["--rate-limit", "2/1m"]).await;
    let statuses = [
        send(&untrusting, &http, "1.1.1.1").await.unwrap().status(),
        send(&untrusting, &http, "2.2.2.2").await.unwrap().status(),
        send(&untrusting, &http, "3.3.3.3").await.unwrap().status(),
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "spoofed addresses share the peer's bucket"
    );

    let trusting =
        TestApp::spawn_with(&["--rate-limit", "2/1m", "--trusted-proxies", "127.0.0.1"]).await;
    for from in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "9.9.9.9, 1.1.1.1"] {
        let r = send(&trusting, &http, from).await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{from}");
    }
    let r = send(&trusting, &http, "1.1.1.1").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "1.1.1.1's third");
}

/// With both on, each API key has its own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_key_has_a_bucket_of_its_own() {
    let setup = TestApp::spawn_with(&["--signup", "open", "--insecure-cookies"]).await;
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let account = json!({"email": "ada@example.org", "password": PASSWORD});
    post(&browser, setup.url("/api/users"), account.clone()).await;
    post(&browser, setup.url("/api/sessions"), account).await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let made: Value = browser
            .post(setup.url("/api/keys"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.push(made["key"].as_str().unwrap().to_owned());
    }
    let app = TestApp::spawn_on(
        setup.db.clone(),
        tempfile::tempdir().unwrap(),
        &["--auth", "required", "--rate-limit", "3/1m"],
    )
    .await;
    let http = reqwest::Client::new();
    // A key's first request on this node also counts against the address, which has 3.
    for key in [&keys[0], &keys[0], &keys[0]] {
        assert_eq!(
            increment_with(&app, &http, Some(key)).await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        increment_with(&app, &http, Some(&keys[0])).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..3 {
        assert_eq!(
            increment_with(&app, &http, Some(&keys[1])).await.status(),
            StatusCode::ACCEPTED,
            "the other key's bucket is full"
        );
    }
}

/// `--metrics-listen` moves /metrics to its own address.
#[tokio::test]
async fn metrics_can_move_to_an_address_of_their_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let app = TestApp::spawn_with(&["--metrics-listen", &addr, "--auth", "required"]).await;
    let http = reqwest::Client::new();
    let r = http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("tally_build_info"));
}

/// Nothing a user keeps secret reaches the log, even at debug level with the access log on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_key_or_session_token_is_logged() {
    let db = crate::helpers::postgres::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let node = TallyProcess::start(
        dir.path(),
        &[
            "--auth",
            "required",
            "--signup",
            "open",
            "--insecure-cookies",
            "--access-log",
        ],
        &[("DATABASE_URL", &db.url), ("RUST_LOG", "debug")],
    );
    let http = reqwest::Client::new();
    let account = json!({"email": "ada@example.org", "password": PASSWORD});
    post(&http, node.url("/api/users"), account.clone()).await;
    let r = post(&http, node.url("/api/sessions"), account).await;
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("tally_session=")
        .to_owned();
    let made: Value = http
        .post(node.url("/api/keys"))
        .header("cookie", format!("tally_session={token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let secret = key.rsplit('_').next().unwrap().to_owned();
    let r = http
        .post(node.url("/increment"))
        .header("content-type", "application/json")
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .body(r#"{"key": "k", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let wrong = json!({"email": "ada@example.org", "password": "a wrong password"});
    post(&http, node.url("/api/sessions"), wrong).await;

    let log = node.log();
    assert!(log.contains("/api/sessions"), "the access log ran:\n{log}");
    for secret in [PASSWORD, "a wrong password", &token, &secret] {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
}
