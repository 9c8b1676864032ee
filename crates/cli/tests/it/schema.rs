//! The OpenAPI document against the node it describes (DESIGN.md section 2, `GET /openapi.json`).
//!
//! schemathesis (from PyPI) reads the document a live node serves and sends each documented
//! operation requests made from it, valid and invalid ones, and checks every answer: never a
//! 5xx, a status code, a content type, a body and headers the document gives for the
//! operation, a request that breaks the document refused with a 4xx, and credentials enforced
//! where the document requires them. A failure means the document or the code is wrong.
//!
//! One node of each kind: the default one (buffered, no auth), and one in sync mode with
//! `--auth required` and `--signup open`, driven with an API key, whose answers carry totals and
//! whose account routes get past the 401. Each run asserts that every operation was tested and
//! answered 2xx at least once.
//!
//! scripts/test installs schemathesis into a virtualenv of its own, `target/schemathesis`
//! (`$TALLY_SCHEMATHESIS` names another); without it these tests fail and say so.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};

use crate::helpers::app::TestApp;
use crate::helpers::root;

/// The checks' settings. A request that breaks the document must be refused with one of
/// these: schemathesis's list, less what Tally never answers to bad input, plus 413, since a
/// batch over `maxItems` is often over `--max-body-bytes` too.
const CONFIG: &str = r#"
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "413", "415", "422"]
"#;

/// Every check but `positive_data_acceptance`, which wants a 2xx for every request the document
/// allows: a reused `Idempotency-Key` is 422 whatever the body, and JSON Schema cannot say "at
/// most 256 bytes" (only characters) nor "no fraction part" (`1.0` is an integer to it).
const CHECKS: &[&str] = &[
    "--checks",
    "all",
    "--exclude-checks",
    "positive_data_acceptance",
];

/// The schemathesis that scripts/test installs, or the test's failure saying so.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("TALLY_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/schemathesis/bin/schemathesis"));
    assert!(
        path.is_file(),
        "schemathesis is not installed at {}: run scripts/test, which installs it from PyPI into \
         target/schemathesis (TALLY_SCHEMATHESIS may name another schemathesis 4)",
        path.display()
    );
    path
}

/// `METHOD /path` of every operation the document describes, as schemathesis names them.
fn operations(doc: &Value) -> BTreeSet<String> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item is an object");
            methods
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect()
}

/// What a run of schemathesis left.
struct Fuzzed {
    /// The operations of the document the node served.
    operations: BTreeSet<String>,
    /// Its JSON report.
    report: Value,
    /// What it printed, for failure messages.
    output: String,
}

impl Fuzzed {
    /// The operations no generated request got a 2xx from.
    fn never_successful(&self) -> BTreeSet<String> {
        let successful: BTreeSet<&String> = self.report["valid_rates"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, phases)| {
                let phases = phases.as_object().into_iter().flatten();
                phases
                    .map(|(_, rate)| rate["accepted"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    > 0
            })
            .map(|(operation, _)| operation)
            .collect();
        self.operations
            .iter()
            .filter(|op| !successful.contains(op))
            .cloned()
            .collect()
    }
}

/// Fetches the node's document and runs schemathesis on it against the node, with `headers`
/// on every request; fails, printing schemathesis's report, unless every check passed on every
/// operation.
///
/// The document is handed over as a file: given its URL, schemathesis leaves out the operation
/// that serves it.
async fn fuzz(app: &TestApp, headers: &[String]) -> Fuzzed {
    let program = schemathesis();
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    let doc: Value = r.json().await.expect("the document is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let operations = operations(&doc);

    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("openapi.json");
    let config = dir.path().join("schemathesis.toml");
    let report = dir.path().join("report.json");
    std::fs::write(&spec, doc.to_string()).unwrap();
    std::fs::write(&config, CONFIG).unwrap();
    let mut command = tokio::process::Command::new(&program);
    command
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&spec)
        .args(["--url", &app.url("")])
        .args(CHECKS)
        // Bounded and repeatable: at most 50 cases per operation and phase, one seed, no
        // examples carried over from an earlier run.
        .args(["--max-examples", "50", "--seed", "1"])
        .args(["--generation-database", "none", "--workers", "1"])
        .args(["--request-timeout", "10", "--continue-on-failure"])
        .arg("--no-color")
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for header in headers {
        command.args(["--header", header]);
    }
    let started = Instant::now();
    let run = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("schemathesis finished within 5 minutes")
        .unwrap_or_else(|e| panic!("{} does not run: {e}", program.display()));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "schemathesis found answers that do not match the document ({}):\n{output}",
        run.status
    );
    eprintln!(
        "schemathesis passed in {:.1} s:\n{output}",
        started.elapsed().as_secs_f64()
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap())
        .expect("schemathesis wrote its JSON report");
    let counts = &report["operations"];
    let n = operations.len() as u64;
    assert_eq!(
        (&counts["total"], &counts["tested"]),
        (&json!(n), &json!(n)),
        "every documented operation was tested:\n{output}"
    );
    assert_eq!(counts["errored"], 0, "{output}");
    for phase in ["examples", "coverage", "fuzzing", "stateful"] {
        assert_eq!(
            report["phases"][phase]["status"], "success",
            "phase {phase}:\n{output}"
        );
    }
    Fuzzed {
        operations,
        report,
        output,
    }
}

/// Posts `body` as JSON with an optional API key; asserts a 2xx.
async fn post(app: &TestApp, http: &reqwest::Client, path: &str, key: Option<&str>, body: Value) {
    let mut request = http
        .post(app.url(path))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header(AUTHORIZATION, format!("Bearer {key}"));
    }
    let r = request.send().await.unwrap();
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
}

/// Counts under the document's example key and tenant, so that reading them finds something.
async fn seed_examples(app: &TestApp, http: &reqwest::Client, key: Option<&str>) {
    let increment = json!({"key": "page-views", "value": 1});
    post(app, http, "/increment", key, increment).await;
    let items = json!([{"id": "user-4711", "tenant": "acme"}]);
    post(app, http, "/items", key, items).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_default_node_answers_as_its_openapi_document_says() {
    schemathesis();
    let app = TestApp::spawn().await;
    seed_examples(&app, &app.http, None).await;

    let fuzzed = fuzz(&app, &[]).await;
    // Without credentials and with sign-up closed, the account routes can only refuse.
    let accounts: BTreeSet<String> = [
        "POST /api/users",
        "POST /api/sessions",
        "GET /api/sessions",
        "DELETE /api/sessions",
        "POST /api/keys",
        "DELETE /api/keys/{id}",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        fuzzed.never_successful(),
        accounts,
        "every other operation was answered 2xx at least once:\n{}",
        fuzzed.output
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_auth_and_sync_mode_answers_as_its_openapi_document_says() {
    schemathesis();
    let app = TestApp::spawn_with(&[
        "--mode",
        "sync",
        "--auth",
        "required",
        "--signup",
        "open",
        "--insecure-cookies",
    ])
    .await;
    // The user of the document's examples, so that its example log-in succeeds, and an API key
    // of theirs for every request.
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let account = json!({"email": "ada@example.org", "password": "correct horse battery staple"});
    post(&app, &browser, "/api/users", None, account.clone()).await;
    post(&app, &browser, "/api/sessions", None, account).await;
    let r = browser.post(app.url("/api/keys")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    seed_examples(&app, &app.http, Some(&key)).await;

    let fuzzed = fuzz(&app, &[format!("Authorization: Bearer {key}")]).await;
    // Logging out needs the session cookie: with an API key it is always 401.
    let log_out: BTreeSet<String> = ["DELETE /api/sessions".to_owned()].into();
    assert_eq!(
        fuzzed.never_successful(),
        log_out,
        "every other operation was answered 2xx at least once:\n{}",
        fuzzed.output
    );
    assert_eq!(
        fuzzed.report["warnings"]["missing_auth"],
        json!(["DELETE /api/sessions"]),
        "with the key, nothing else was refused for want of credentials:\n{}",
        fuzzed.output
    );
}
