//! A real Tally node in the test process: the same `app::serve` the binary runs, on a port
//! picked by the OS, over a fresh database, with typed helpers for requests and for reading
//! what PostgreSQL holds.

use clap::Parser;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tally::shutdown::Shutdown;
use tokio::task::JoinHandle;

use super::postgres::{TestDatabase, fresh_database};

pub struct TestApp {
    pub addr: SocketAddr,
    pub db: TestDatabase,
    pub http: reqwest::Client,
    /// Held, never read: the node's data directory is deleted when the `TestApp` is dropped.
    _data_dir: tempfile::TempDir,
    shutdown: Shutdown,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// A buffered node over a fresh database, with a short flush interval so tests wait little.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[]).await
    }

    /// Like [`spawn`](Self::spawn), with extra command-line flags (e.g. `["--mode", "sync"]`).
    pub async fn spawn_with(flags: &[&str]) -> TestApp {
        Self::spawn_on(fresh_database(), tempfile::tempdir().unwrap(), flags).await
    }

    /// A node over a given database and data directory.
    pub async fn spawn_on(
        db: TestDatabase,
        data_dir: tempfile::TempDir,
        flags: &[&str],
    ) -> TestApp {
        let dir = data_dir.path().to_str().unwrap().to_owned();
        let mut args = vec!["tally", "--database-url", &db.url, "--data-dir", &dir];
        if !flags.contains(&"--flush-interval") {
            args.extend_from_slice(&["--flush-interval", "50ms"]);
        }
        args.extend_from_slice(flags);
        let config = ServeCommand::try_parse_from(args)
            .expect("valid test configuration")
            .serve;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(tally::app::serve(config, listener, shutdown.clone()));
        let app = TestApp {
            addr,
            db,
            http: reqwest::Client::new(),
            _data_dir: data_dir,
            shutdown,
            task: Some(task),
        };
        app.wait_until_ready().await;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/ready")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "the node did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Posts a raw body as JSON.
    pub async fn post_json(&self, path: &str, body: impl Into<String>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("request sent")
    }

    /// Posts `{"key": key, "value": value}` and returns the status.
    pub async fn increment(&self, key: &str, value: i64) -> StatusCode {
        let body = serde_json::json!({"key": key, "value": value}).to_string();
        self.post_json("/increment", body).await.status()
    }

    /// `GET /counters/{key}`: the status and the parsed body.
    pub async fn counter(&self, key: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(&format!("/counters/{}", encode_path(key))))
            .send()
            .await
            .expect("request sent");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let r = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request sent");
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }

    /// A connection to the node's database.
    pub async fn db_client(&self) -> tokio_postgres::Client {
        connect(&self.db).await
    }

    /// Every row of `counters`, sorted by key.
    pub async fn db_totals(&self) -> Vec<(String, i64)> {
        db_totals(&self.db).await
    }

    /// Waits until `check` holds for the totals in PostgreSQL.
    pub async fn wait_for_totals(&self, what: &str, check: impl Fn(&[(String, i64)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let totals = self.db_totals().await;
            if check(&totals) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; PostgreSQL has {totals:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Requests a graceful shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.request();
        self.task
            .take()
            .unwrap()
            .await
            .expect("serve did not panic")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.shutdown.force();
            task.abort();
        }
    }
}

pub async fn connect(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = db
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

pub async fn db_totals(db: &TestDatabase) -> Vec<(String, i64)> {
    connect(db)
        .await
        .query("SELECT key, value FROM counters ORDER BY key", &[])
        .await
        .expect("read counters")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Percent-encodes a key for a URL path.
pub fn encode_path(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `tally serve`'s settings alone, parsed from flags and environment as the binary parses them.
#[derive(clap::Parser)]
struct ServeCommand {
    #[command(flatten)]
    serve: tally::config::ServeConfig,
}
