//! The console (DESIGN.md, `GET /`): its page in a real headless Chromium against a live node,
//! and who may read its data.
//!
//! The page test writes a screenshot of the page with data to
//! `target/tmp/console.png` (`docs/console.png` is a copy of one).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::app::TestApp;
use crate::helpers::browser::Browser;
use crate::helpers::postgres::{TestDatabase, fresh_database};

/// Submits the search form as its button would.
const SUBMIT: &str = "document.querySelector('#search-form button').click()";

/// A number the page shows, without its thousands separators; `None` before the first reading.
fn number(text: &str) -> Option<u64> {
    text.replace(',', "").trim().parse().ok()
}

/// A fresh database whose connection string carries a password, and that password. The
/// throwaway cluster trusts its Unix socket, so a password it is given goes unused; a server
/// named by `DATABASE_URL` gets its own, if it has one.
fn database_with_a_password() -> (TestDatabase, String) {
    let mut db = fresh_database();
    let given = db
        .config()
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let password = match given {
        Some(password) => password,
        None => {
            let password = "console-s3cret".to_owned();
            db.url.push_str(&format!(" password={password}"));
            password
        }
    };
    (db, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_figures_reads_totals_and_hides_the_password() {
    let (db, password) = database_with_a_password();
    let app = TestApp::spawn_on(
        db,
        tempfile::tempdir().unwrap(),
        &["--flush-interval", "3s"],
    )
    .await;
    let mut browser = Browser::start(1200, 1100).await;
    browser.open(&app.url("/")).await;
    browser
        .wait_for(
            "the first figures",
            "document.getElementById('increments').textContent === '0'",
        )
        .await;
    let requests_before = number(&browser.text("requests").await).unwrap();

    // Increments and items over plain HTTP, a key and a tenant that need escaping in a URL.
    let key = "page/views ü?#";
    for value in 1..=25 {
        assert_eq!(app.increment(key, value).await, StatusCode::ACCEPTED);
    }
    let items = json!([
        {"tenant": "acme/eu", "id": "u1"},
        {"tenant": "acme/eu", "id": "u2"},
        {"tenant": "acme/eu", "id": "u1"},
        {"tenant": "acme/eu", "id": "u3"},
    ]);
    let r = app.post_json("/items", items.to_string()).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    browser
        .wait_for(
            "the page to count the increments and items",
            "document.getElementById('increments').textContent === '25' && \
             document.getElementById('items').textContent === '4'",
        )
        .await;
    let requests_after = number(&browser.text("requests").await).unwrap();
    assert!(
        requests_after > requests_before + 25,
        "{requests_before} then {requests_after} requests"
    );
    browser
        .wait_for(
            "a requests/s figure and every chart drawn",
            "/^[0-9.,]+$/.test(document.getElementById('rps').textContent) && \
             document.querySelectorAll('.chart svg polyline').length === 4",
        )
        .await;
    let pending = browser.text("pending").await;
    assert!(pending.ends_with(" of 10,000,000"), "{pending}");
    let journal = browser.text("journal").await;
    assert!(journal.ends_with(" of 4.0 GiB"), "{journal}");
    assert!(browser.text("lag").await.ends_with(" s"));
    assert_eq!(browser.text("ready").await, "ready");

    // The search box: a key never counted, a tenant's distinct items, a counter's total.
    browser.type_into("search-input", "never-counted").await;
    browser.eval(SUBMIT).await;
    browser
        .wait_for(
            "a counter never counted to be said so",
            "document.getElementById('search-result').textContent\
             .startsWith('no increment was ever counted')",
        )
        .await;
    browser
        .eval("document.getElementById('search-kind').value = 'tenant'")
        .await;
    browser.type_into("search-input", "acme/eu").await;
    browser.eval(SUBMIT).await;
    browser
        .wait_for(
            "the tenant's count",
            "document.getElementById('search-result').textContent === \
             'acme/eu: 3 distinct items'",
        )
        .await;
    browser
        .eval("document.getElementById('search-kind').value = 'counter'")
        .await;
    browser.type_into("search-input", key).await;
    browser.eval(SUBMIT).await;
    browser
        .wait_for(
            "the counter's total",
            &format!(
                "document.getElementById('search-result').textContent === {:?}",
                format!("{key} = 325")
            ),
        )
        .await;

    // The settings, with the database password hidden.
    let settings: Value = browser
        .eval(
            "Object.fromEntries([...document.querySelectorAll('#settings tr')]\
             .map(r => [r.querySelector('th').textContent, r.querySelector('td').textContent]))",
        )
        .await;
    assert_eq!(settings["flush_interval"], "3s", "{settings}");
    assert_eq!(settings["mode"], "buffered", "{settings}");
    let database = settings["database_url"].as_str().unwrap();
    assert!(database.contains("password=***"), "{database}");
    let page = browser.eval("document.documentElement.outerHTML").await;
    assert!(!page.as_str().unwrap().contains(&password), "{page}");

    // A look at the page with its charts drawn, for the README: bursts of new keys, one per
    // reading of the page, each waited for until the page has shown it.
    for burst in 1..=12u64 {
        let shown = number(&browser.text("increments").await).unwrap();
        let body: Vec<Value> = (0..burst * 40 % 170 + 20)
            .map(|i| json!({"key": format!("burst-{burst}-{i}"), "value": 1}))
            .collect();
        let sent = body.len() as u64;
        let r = app
            .post_json("/increments", Value::from(body).to_string())
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        for _ in 0..burst % 4 + 1 {
            assert_eq!(app.increment(key, 1).await, StatusCode::ACCEPTED);
        }
        browser
            .wait_for(
                "the burst on the page",
                &format!(
                    "Number(document.getElementById('increments').textContent\
                     .replaceAll(',', '')) > {}",
                    shown + sent
                ),
            )
            .await;
    }
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    std::fs::write(&path, png).unwrap();
}

#[tokio::test]
async fn with_auth_required_the_page_is_open_and_its_data_needs_credentials() {
    let app = TestApp::spawn_with(&[
        "--auth",
        "required",
        "--signup",
        "open",
        "--insecure-cookies",
    ])
    .await;
    let anonymous = reqwest::Client::new();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/console.js", "text/javascript; charset=utf-8"),
        ("/console.css", "text/css; charset=utf-8"),
    ] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        assert!(!r.text().await.unwrap().is_empty(), "{path}");
    }
    let r = anonymous
        .get(app.url("/console/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "credentials_required");

    // With a session, the same data as with no auth at all.
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let account = json!({"email": "ada@example.org", "password": "a long password"});
    for path in ["/api/users", "/api/sessions"] {
        let r = browser
            .post(app.url(path))
            .json(&account)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{path}");
    }
    let r = browser
        .get(app.url("/console/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["mode"], "buffered");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["not_ready"], Value::Null, "{status}");
    assert_eq!(status["max_journal_bytes"], 4u64 << 30);
    assert!(status["journal_bytes"].is_u64(), "{status}");
    assert_eq!(status["pending_keys"], 0, "{status}");
    let auth = status["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "auth")
        .unwrap();
    assert_eq!(auth["value"], "required");

    // In a browser without a session, the page asks for a key, and shows the figures once it
    // has one.
    let r = browser.post(app.url("/api/keys")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut page = Browser::start(1000, 800).await;
    page.open(&app.url("/")).await;
    page.wait_for(
        "the page to ask for credentials",
        "!document.getElementById('credentials').hidden",
    )
    .await;
    assert_eq!(
        page.text("increments").await,
        "–",
        "no figures without a key"
    );
    page.type_into("key-input", &key).await;
    page.eval("document.querySelector('#key-form button').click()")
        .await;
    page.wait_for(
        "the figures, read with the key",
        "document.getElementById('increments').textContent === '0' && \
         document.getElementById('credentials').hidden",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('key-input').value")
            .await,
        json!(""),
        "the key is not left in the form"
    );
}

#[tokio::test]
async fn in_sync_mode_nothing_is_pending_and_there_is_no_journal() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    assert_eq!(app.increment("k", 2).await, StatusCode::OK);
    let r = app
        .http
        .get(app.url("/console/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["mode"], "sync");
    assert_eq!(status["increments"], 1, "{status}");
    for absent in ["flush_lag_seconds", "pending_keys", "journal_bytes"] {
        assert_eq!(status[absent], Value::Null, "{absent}: {status}");
    }
    assert!(status["requests"].as_u64().unwrap() >= 2, "{status}");
}
