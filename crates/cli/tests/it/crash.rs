//! Crash safety and faults (DESIGN.md sections 1, 5, 6; FAULTS.md): real processes killed
//! with SIGKILL, a crash between PostgreSQL's commit and the journal's cleanup, a torn journal
//! tail, a commit whose answer is lost, PostgreSQL stopped under load, a database host that
//! goes silent, a key the database refuses for good, and the memory bounds. The check is
//! always the ledger's: acknowledged <= total <= acknowledged + unknown, for every key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::RngExt;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::app::{TestApp, db_totals};
use crate::helpers::fault_proxy::{FaultProxy, Upstream};
use crate::helpers::ledger::{Ledger, Load, outcome_unknown};
use crate::helpers::postgres::{TestDatabase, dedicated_cluster, fresh_database};
use crate::helpers::process::TallyProcess;

/// Starts a node and stops it with SIGTERM, which flushes everything it holds.
fn drain(dir: &Path, db: &TestDatabase) {
    let mut node = TallyProcess::start(dir, &[], &[("DATABASE_URL", &db.url)]);
    node.signal(libc::SIGTERM);
    assert!(
        node.wait(Duration::from_secs(60)).success(),
        "{}",
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged_and_doubles_nothing() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::default();
    // Several lives, each killed at a different moment of its load and its flush cycle.
    for life in 0..4 {
        let mut node = TallyProcess::start(
            dir.path(),
            &["--flush-interval", "100ms"],
            &[("DATABASE_URL", &db.url)],
        );
        let load = Load::start(node.url("/increment"), 8, 40, "k");
        let run_for = Duration::from_millis(rand::rng().random_range(300..1200));
        tokio::time::sleep(run_for).await;
        node.signal(libc::SIGKILL);
        node.wait(Duration::from_secs(10));
        let lived = load.stop().await;
        assert!(
            lived.acknowledged_total() > 0,
            "life {life} acknowledged something"
        );
        ledger.merge(lived);
    }
    drain(dir.path(), &db);
    let totals = db_totals(&db).await;
    ledger.check(&totals).unwrap();
    eprintln!(
        "acknowledged {}, unknown {}, persisted {}",
        ledger.acknowledged_total(),
        ledger.unknown_total(),
        totals.iter().map(|(_, v)| v).sum::<i64>()
    );
}

#[tokio::test]
async fn a_crash_between_commit_and_journal_cleanup_applies_nothing_twice() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut node = TallyProcess::start(
        dir.path(),
        &["--flush-interval", "300ms"],
        &[
            ("DATABASE_URL", &db.url),
            ("TALLY_FAULT_POINT", "after-commit"),
        ],
    );
    let mut acked = 0;
    // Sequential requests: every 202 is acknowledged; the node dies at its first commit.
    while node.try_wait().is_none() {
        let sent = http
            .post(node.url("/increment"))
            .header("content-type", "application/json")
            .body(r#"{"key": "once", "value": 1}"#)
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::ACCEPTED => acked += 1,
            _ => break,
        }
    }
    let unknown = 1; // the request in flight when the node died
    let status = node.wait(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        node.log()
            .contains("fault injection: killing the process at after-commit")
    );
    let committed = db_totals(&db).await;
    assert_eq!(
        committed.len(),
        1,
        "the batch was committed before the crash"
    );

    // The journal still holds that batch; PostgreSQL's progress row for the first life's
    // epoch says it is applied, so only what came after it (acknowledged while it was being
    // written) is replayed, by the second life under epoch 2.
    let progress: i64 = crate::helpers::app::connect(&db)
        .await
        .query_one("SELECT last_batch FROM tally_epochs WHERE epoch = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(progress, 1, "the first life committed its batch 1");
    let mut node = TallyProcess::start(dir.path(), &[], &[("DATABASE_URL", &db.url)]);
    assert!(node.log().contains("\"epoch\":2"), "{}", node.log());
    node.signal(libc::SIGTERM);
    assert!(node.wait(Duration::from_secs(30)).success());
    let totals = db_totals(&db).await;
    let total = totals[0].1;
    assert!(
        (acked..=acked + unknown).contains(&total),
        "acknowledged {acked}, unknown {unknown}, total {total}: a batch applied twice would add hundreds"
    );
}

/// The newest journal segment that holds records.
fn last_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 64)
        .collect();
    segments.sort();
    segments.pop().expect("a journal segment with records")
}

#[tokio::test]
async fn a_torn_last_record_is_skipped_and_everything_before_it_is_replayed() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut node = TallyProcess::start(
        dir.path(),
        &["--flush-interval", "10s"],
        &[("DATABASE_URL", &db.url)],
    );
    for i in 0..10 {
        let r = http
            .post(node.url("/increment"))
            .header("content-type", "application/json")
            .body(json!({"key": format!("k{i}"), "value": i + 1}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    node.signal(libc::SIGKILL);
    node.wait(Duration::from_secs(10));
    assert!(
        db_totals(&db).await.is_empty(),
        "nothing was flushed before the crash"
    );

    // Cut the last record in half, as a crash in the middle of its write would. The writer
    // writes zeros ahead of its records, and a killed node leaves them: the last record ends
    // at the last byte that is not zero (its key's last byte).
    let segment = last_segment(dir.path());
    let bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(end < bytes.len(), "zeros were written ahead of the records");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(end as u64 - 5)
        .unwrap();

    let mut node = TallyProcess::start(dir.path(), &[], &[("DATABASE_URL", &db.url)]);
    assert!(
        node.log().contains("torn"),
        "recovery warns about the torn record:\n{}",
        node.log()
    );
    node.signal(libc::SIGTERM);
    assert!(node.wait(Duration::from_secs(30)).success());
    let expected: Vec<(String, i64)> = (0..9).map(|i| (format!("k{i}"), i + 1)).collect();
    assert_eq!(db_totals(&db).await, expected, "all but the torn record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_under_load_then_back_totals_exact_and_ready_recovers() {
    let cluster = dedicated_cluster();
    let db = cluster.database();
    let dir = tempfile::tempdir().unwrap();
    let mut node = TallyProcess::start(
        dir.path(),
        &["--flush-interval", "100ms"],
        &[("DATABASE_URL", &db.url)],
    );
    let http = reqwest::Client::new();
    let ready = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status() }
    };
    assert_eq!(ready(node.url("/ready")).await, StatusCode::OK);
    let load = Load::start(node.url("/increment"), 4, 30, "k");
    tokio::time::sleep(Duration::from_millis(300)).await;

    cluster.stop_immediate().unwrap();
    wait_for_status(&http, &node.url("/ready"), StatusCode::SERVICE_UNAVAILABLE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_again().unwrap();
    wait_for_status(&http, &node.url("/ready"), StatusCode::OK).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ledger = load.stop().await;
    node.signal(libc::SIGTERM);
    assert!(
        node.wait(Duration::from_secs(60)).success(),
        "{}",
        node.log()
    );
    assert_eq!(
        ledger.unknown_total(),
        0,
        "the node answered every request: {:?}",
        ledger.refused
    );
    assert_eq!(
        ledger.refused.len(),
        0,
        "no request was refused: {:?}",
        ledger.refused
    );
    let totals = db_totals(&db).await;
    ledger.check(&totals).unwrap();
    assert_eq!(
        totals.iter().map(|(_, v)| v).sum::<i64>(),
        ledger.acknowledged_total()
    );
    let log = node.log();
    assert_eq!(
        log.matches("flush failed; retrying").count(),
        1,
        "one warning per outage, not one per retry:\n{log}"
    );
}

async fn wait_for_status(http: &reqwest::Client, url: &str, want: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status() == want
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_lost_commit_answer_is_resolved_by_the_progress_row() {
    let db = fresh_database();
    let proxy = FaultProxy::start(Upstream::of(&db.config())).await;
    let proxied = proxy.database(&db);
    let app = TestApp::spawn_on(
        proxied,
        tempfile::tempdir().unwrap(),
        &["--flush-interval", "200ms"],
    )
    .await;
    proxy.arm();
    for i in 0..20 {
        assert_eq!(
            app.increment(&format!("k{}", i % 4), 1).await,
            StatusCode::ACCEPTED
        );
    }
    // The retry of the batch whose commit answer was lost finds it applied.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = app.metrics().await;
        if metrics.contains(r#"tally_flushes_total{outcome="already_applied"} 1"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no retry found its batch applied:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        proxy.dropped_commits(),
        1,
        "exactly one commit answer was lost"
    );
    app.stop().await.unwrap();
    assert_eq!(
        db_totals(&db).await,
        (0..4).map(|i| (format!("k{i}"), 5)).collect::<Vec<_>>()
    );
}

/// Sends one increment of 1 to each key in turn, one request at a time, and notes each in
/// the ledger: acknowledged on a 2xx, unknown if the answer never came.
async fn increment_each(http: &reqwest::Client, url: &str, keys: &[String], ledger: &mut Ledger) {
    for key in keys {
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .body(json!({"key": key, "value": 1}).to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                *ledger.acknowledged.entry(key.clone()).or_default() += 1
            }
            Ok(r) if outcome_unknown(r.status()) => {
                *ledger.unknown.entry(key.clone()).or_default() += 1
            }
            Ok(r) => *ledger.refused.entry(r.status().as_u16()).or_default() += 1,
            Err(_) => *ledger.unknown.entry(key.clone()).or_default() += 1,
        }
    }
}

/// Waits until PostgreSQL's totals equal what the ledger says was acknowledged, and returns
/// how long that took; fails after `within`.
async fn wait_for_exact_totals(db: &TestDatabase, ledger: &Ledger, within: Duration) -> Duration {
    let expected: Vec<(String, i64)> = ledger.acknowledged.clone().into_iter().collect();
    let started = Instant::now();
    loop {
        let totals = db_totals(db).await;
        if totals == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "PostgreSQL did not reach the acknowledged totals within {within:?}:\n\
             acknowledged {expected:?}\nPostgreSQL   {totals:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `batch` field of the first JSON log line whose message starts with `message`.
fn batch_of_first(log: &str, message: &str) -> Option<u64> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .and_then(|v| v["batch"].as_u64())
}

/// FAULTS.md row 13: the database host vanishes without a reset. Its connections go silent (no
/// answer, no error, no end of stream), so only a deadline can tell; a new connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_connection_is_abandoned_and_the_same_batch_is_retried_on_a_new_one() {
    let db = fresh_database();
    let proxy = FaultProxy::start(Upstream::of(&db.config())).await;
    let proxied = proxy.database(&db);
    let dir = tempfile::tempdir().unwrap();
    let mut node = tokio::task::block_in_place(|| {
        TallyProcess::start(
            dir.path(),
            &["--flush-interval", "100ms", "--db-timeout", "1s"],
            &[("DATABASE_URL", &proxied.url)],
        )
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = node.url("/increment");
    let keys: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
    let mut ledger = Ledger::default();
    increment_each(&http, &url, &keys, &mut ledger).await;
    wait_for_exact_totals(&db, &ledger, Duration::from_secs(10)).await;

    // The host vanishes in the middle of a flush: its COMMIT never arrives, and the server
    // side of that connection keeps its transaction open, holding the node's progress row and
    // the keys' rows locked.
    proxy.silence_at_next_commit();
    increment_each(&http, &url, &keys, &mut ledger).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.silenced_commits() == 0 {
        assert!(Instant::now() < deadline, "no flush reached COMMIT");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    increment_each(&http, &url, &keys, &mut ledger).await;
    let mid_flush = wait_for_exact_totals(&db, &ledger, Duration::from_secs(10)).await;

    // And again between two flushes, every connection open at that moment, the one the
    // flusher opened to recover among them.
    proxy.silence();
    increment_each(&http, &url, &keys, &mut ledger).await;
    let between_flushes = wait_for_exact_totals(&db, &ledger, Duration::from_secs(10)).await;
    eprintln!(
        "caught up {mid_flush:?} after the host vanished mid-flush, \
         {between_flushes:?} after it vanished between flushes (--db-timeout 1s)"
    );

    node.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| node.wait(Duration::from_secs(30)));
    let log = node.log();
    assert!(status.success(), "{log}");
    assert_eq!(ledger.unknown_total(), 0, "every request was answered");
    assert!(ledger.refused.is_empty(), "{:?}", ledger.refused);
    assert_eq!(ledger.acknowledged_total(), 16);
    wait_for_exact_totals(&db, &ledger, Duration::ZERO).await;

    // The batch whose COMMIT was swallowed is the one retried, under its own number.
    let failed = batch_of_first(&log, "flush failed; retrying the same batch");
    let recovered = batch_of_first(&log, "flush succeeded after failing");
    assert!(failed.is_some(), "a flush failed:\n{log}");
    assert_eq!(
        failed, recovered,
        "the failed batch is the one that succeeded:\n{log}"
    );
}

/// FAULTS.md row 15: an error no retry can fix. An operator's constraint refuses one key;
/// that key is left out and recorded, and the rest of its batch, and every later batch,
/// commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_database_refuses_for_good_is_left_out_and_the_rest_of_its_batch_commits() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut node = tokio::task::block_in_place(|| {
        TallyProcess::start(
            dir.path(),
            &["--flush-interval", "100ms"],
            &[("DATABASE_URL", &db.url)],
        )
    });
    let sql = crate::helpers::app::connect(&db).await;
    sql.batch_execute("ALTER TABLE counters ADD CONSTRAINT no_poison CHECK (key <> 'poison')")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let post = |body: &'static str| {
        http.post(node.url("/increments"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // One request, so one batch: keys on both sides of the poison one in sort order.
    let r = post(r#"[{"key": "apple", "value": 1}, {"key": "poison", "value": 5}, {"key": "zebra", "value": 2}]"#)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let expected = [("apple".to_owned(), 1), ("zebra".to_owned(), 2)];
    let deadline = Instant::now() + Duration::from_secs(10);
    while db_totals(&db).await != expected {
        assert!(
            Instant::now() < deadline,
            "the other keys of the batch never committed; PostgreSQL has {:?}",
            db_totals(&db).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Later batches keep flushing, and the key is refused again each time it comes.
    let r = post(r#"[{"key": "apple", "value": 3}, {"key": "poison", "value": 1}]"#)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let expected = [("apple".to_owned(), 4), ("zebra".to_owned(), 2)];
    let deadline = Instant::now() + Duration::from_secs(10);
    while db_totals(&db).await != expected {
        assert!(Instant::now() < deadline, "a later batch never committed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let rows = sql
        .query(
            "SELECT key, delta, reason, sqlstate, message FROM rejected_increments ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let rejected: Vec<(String, i64, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    for ((key, delta, reason, sqlstate, message), want) in rejected.iter().zip([5, 1]) {
        assert_eq!((key.as_str(), *delta), ("poison", want));
        assert_eq!(reason, "refused_by_database");
        assert_eq!(sqlstate, "23514", "check_violation");
        assert!(message.contains("no_poison"), "{message}");
    }
    let metrics = http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"tally_increments_rejected_total{reason="refused_by_database"} 2"#),
        "{metrics}"
    );

    node.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| node.wait(Duration::from_secs(30)));
    let log = node.log();
    assert!(status.success(), "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("increment rejected"))
        .collect();
    assert_eq!(warnings.len(), 2, "one line per rejected delta:\n{log}");
    assert!(
        warnings
            .iter()
            .all(|l| l.contains("poison") && l.contains("23514") && l.contains("no_poison")),
        "the line names the key, the SQLSTATE and the message:\n{log}"
    );
    assert!(
        !log.contains("flush failed"),
        "a refused key is not a failed flush:\n{log}"
    );
}

#[tokio::test]
async fn the_pending_key_bound_answers_503_and_recovers_by_itself() {
    let cluster = dedicated_cluster();
    let db = cluster.database();
    let app = TestApp::spawn_on(
        db.clone(),
        tempfile::tempdir().unwrap(),
        &["--max-pending-keys", "100"],
    )
    .await;
    cluster.stop_immediate().unwrap();
    for i in 0..100 {
        assert_eq!(
            app.increment(&format!("k{i}"), 1).await,
            StatusCode::ACCEPTED
        );
    }
    let r = app
        .post_json("/increment", r#"{"key": "k100", "value": 1}"#)
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    // The metrics show the bound beside its use, and why the node is not ready.
    let metrics = app.metrics().await;
    for line in [
        "tally_pending_keys 100",
        "tally_pending_keys_limit 100",
        "tally_ready{reason=\"pending_keys_full\"} 1",
        "tally_ready{reason=\"ok\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}`:\n{metrics}"
        );
    }

    cluster.start_again().unwrap();
    app.wait_for_totals("the drained buffer", |t| t.len() == 100)
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.increment("k100", 1).await != StatusCode::ACCEPTED {
        assert!(Instant::now() < deadline, "new keys are accepted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.lines().any(|l| l == "tally_ready{reason=\"ok\"} 1"),
        "ready again:\n{metrics}"
    );
    app.stop().await.unwrap();
    let totals = db_totals(&db).await;
    assert_eq!(totals.len(), 101);
    assert_eq!(totals.iter().map(|(_, v)| v).sum::<i64>(), 101);
}

#[tokio::test]
async fn the_journal_bound_answers_503_and_recovers_by_itself() {
    let cluster = dedicated_cluster();
    let db = cluster.database();
    let app = TestApp::spawn_on(
        db.clone(),
        tempfile::tempdir().unwrap(),
        &[
            "--max-journal-bytes",
            "1MiB",
            "--max-batch",
            "1000",
            "--max-body-bytes",
            "1MiB",
        ],
    )
    .await;
    cluster.stop_immediate().unwrap();
    let batch: Vec<_> = (0..1000)
        .map(|i| json!({"key": format!("key-{i:04}"), "value": 1}))
        .collect();
    let body = serde_json::to_string(&batch).unwrap();
    let mut accepted = 0;
    let refused = loop {
        let r = app.post_json("/increments", body.clone()).await;
        if r.status() != StatusCode::ACCEPTED {
            break r;
        }
        accepted += 1;
        assert!(accepted < 100, "the journal bound never took effect");
    };
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "tally_journal_limit_bytes 1048576"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "tally_ready{reason=\"journal_full\"} 1"),
        "{metrics}"
    );

    cluster.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.post_json("/increments", body.clone()).await.status() != StatusCode::ACCEPTED {
        assert!(
            Instant::now() < deadline,
            "the journal drained and increments are accepted again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accepted += 1;
    app.stop().await.unwrap();
    let totals = db_totals(&db).await;
    assert!(
        totals.iter().all(|(_, v)| *v == accepted),
        "every accepted batch counted once"
    );
}

#[tokio::test]
async fn a_node_id_in_use_by_a_running_node_is_refused() {
    let db = fresh_database();
    let first = TestApp::spawn_on(
        db.clone(),
        tempfile::tempdir().unwrap(),
        &["--node-id", "twin"],
    )
    .await;
    // Another data directory (a copy, say) with the same node id.
    let out = crate::helpers::process::tally_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "twin",
            "--data-dir",
        ])
        .arg(tempfile::tempdir().unwrap().path())
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("node id `twin` is in use by a running node"),
        "{stderr}"
    );
    assert_eq!(
        first.increment("k", 1).await,
        StatusCode::ACCEPTED,
        "the first node is unaffected"
    );
    first.stop().await.unwrap();
}

/// In sync mode the answer comes after PostgreSQL's: a statement that got no answer within
/// `--db-timeout` may have committed, so the client hears 500 `outcome_unknown`, not a 503
/// that would promise nothing was applied; the next request goes through a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_mode_a_statement_without_an_answer_is_an_unknown_outcome_not_a_503() {
    let db = fresh_database();
    let proxy = FaultProxy::start(Upstream::of(&db.config())).await;
    let proxied = proxy.database(&db);
    let dir = tempfile::tempdir().unwrap();
    let node = tokio::task::block_in_place(|| {
        TallyProcess::start(
            dir.path(),
            &["--mode", "sync", "--db-timeout", "1s"],
            &[("DATABASE_URL", &proxied.url)],
        )
    });
    let http = reqwest::Client::new();
    let url = node.url("/increment");
    let keys = ["k".to_owned()];
    let mut ledger = Ledger::default();
    increment_each(&http, &url, &keys, &mut ledger).await;
    assert_eq!(ledger.acknowledged_total(), 1);

    proxy.silence();
    let answer = http
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"key": "k", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(answer.headers().get("retry-after").is_none());
    assert!(answer.text().await.unwrap().contains("outcome_unknown"));
    *ledger.unknown.entry("k".into()).or_default() += 1;

    increment_each(&http, &url, &keys, &mut ledger).await;
    assert_eq!(
        ledger.acknowledged_total(),
        2,
        "a new connection serves the next one"
    );
    ledger.check(&db_totals(&db).await).unwrap();
}
