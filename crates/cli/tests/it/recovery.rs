//! What a restarted node makes of the journal it finds (DESIGN.md section 6, FAULTS.md rows
//! 16 and 17): segments PostgreSQL already has are released at start, batches of an earlier
//! claim are applied even after another process used the node id, a batch is summed in
//! whatever order its records reached the disk, and damage is either cut (an unfinished group
//! commit) or left to `tally journal check` and `repair`. Real processes, a real PostgreSQL.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tally::batch::BatchSeq;
use tally::journal::{Journal, JournalOptions};

use crate::helpers::app::{connect, db_totals};
use crate::helpers::journal_files::version_1_segment;
use crate::helpers::postgres::{TestDatabase, fresh_database};
use crate::helpers::process::{TallyProcess, tally_command};

/// Posts `body` to `path` and returns the status.
async fn post(http: &reqwest::Client, node: &TallyProcess, path: &str, body: String) -> StatusCode {
    http.post(node.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

async fn increment(
    http: &reqwest::Client,
    node: &TallyProcess,
    key: &str,
    value: i64,
) -> StatusCode {
    post(
        http,
        node,
        "/increment",
        json!({"key": key, "value": value}).to_string(),
    )
    .await
}

/// A body of 1000 increments of 1, one per key `<prefix>-<n>`.
fn thousand(prefix: &str) -> String {
    let items: Vec<_> = (0..1000)
        .map(|i| json!({"key": format!("{prefix}-{i:04}"), "value": 1}))
        .collect();
    serde_json::to_string(&items).unwrap()
}

/// Stops a node with SIGTERM and waits for a clean exit.
fn stop(mut node: TallyProcess) {
    node.signal(libc::SIGTERM);
    let status = node.wait(Duration::from_secs(60));
    assert!(status.success(), "{}", node.log());
}

/// Sum of all totals in PostgreSQL.
async fn grand_total(db: &TestDatabase) -> i64 {
    db_totals(db).await.iter().map(|(_, v)| v).sum()
}

/// A node killed between the commit that drained its full journal and the deletion of the
/// journal's segments used to answer 503 to every increment forever after a restart: nothing
/// deleted segments that PostgreSQL already had, and no new batch came to trigger it.
#[tokio::test]
async fn a_node_killed_after_draining_a_full_journal_takes_increments_after_restart() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let bounds = [
        "--max-journal-bytes",
        "1MiB",
        "--max-body-bytes",
        "1MiB",
        "--flush-interval",
        "10s",
    ];
    let mut node = TallyProcess::start(
        dir.path(),
        &bounds,
        &[
            ("DATABASE_URL", &db.url),
            ("TALLY_FAULT_POINT", "after-commit"),
        ],
    );
    let mut accepted = 0;
    loop {
        match post(&http, &node, "/increments", thousand("k")).await {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::SERVICE_UNAVAILABLE => break,
            other => panic!("unexpected {other}"),
        }
        assert!(accepted < 100, "the journal bound never took effect");
    }
    // The first flush commits everything, then the process dies before releasing segments.
    node.wait(Duration::from_secs(30));
    assert!(node.log().contains("killing the process at after-commit"));
    assert_eq!(grand_total(&db).await, accepted * 1000);

    let node = TallyProcess::start(dir.path(), &bounds, &[("DATABASE_URL", &db.url)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while increment(&http, &node, "after-restart", 1).await != StatusCode::ACCEPTED {
        assert!(
            Instant::now() < deadline,
            "a restarted node still refuses increments: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(node);
    assert_eq!(grand_total(&db).await, accepted * 1000 + 1);
}

/// `/ready` tells a balancer that a node whose journal bound is reached takes no increments,
/// even while the database answers.
#[tokio::test]
async fn ready_reports_a_full_journal_while_postgres_answers() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let node = TallyProcess::start(
        dir.path(),
        &[
            "--max-journal-bytes",
            "1MiB",
            "--max-body-bytes",
            "1MiB",
            "--flush-interval",
            "10s",
        ],
        &[("DATABASE_URL", &db.url)],
    );
    assert_eq!(
        http.get(node.url("/ready")).send().await.unwrap().status(),
        StatusCode::OK
    );
    while post(&http, &node, "/increments", thousand("k")).await == StatusCode::ACCEPTED {}
    let ready = http.get(node.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.text().await.unwrap();
    assert!(body.contains("journal"), "{body}");
    stop(node);
}

/// FAULTS.md row 16. Node A acknowledges increments and is paused before it flushes them; its
/// database sessions end, so a second process B takes the node id over from another data
/// directory and flushes batches with the same numbers. A is then killed and its directory
/// started again: A's journaled batches must be applied, not mistaken for B's.
#[tokio::test]
async fn a_stale_twins_journaled_increments_are_applied_when_its_directory_restarts() {
    let db = fresh_database();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let http = reqwest::Client::new();
    let twin = ["--node-id", "twin", "--flush-interval", "10s"];
    let env = [("DATABASE_URL", db.url.as_str())];

    let mut a = TallyProcess::start(dir_a.path(), &twin, &env);
    for i in 0..50 {
        assert_eq!(
            increment(&http, &a, &format!("a{}", i % 5), 1).await,
            StatusCode::ACCEPTED
        );
    }
    a.signal(libc::SIGSTOP);
    let ended: i64 = connect(&db)
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        ended > 0,
        "A's sessions, its node lock among them, are gone"
    );

    let b = TallyProcess::start(dir_b.path(), &twin, &env);
    for i in 0..30 {
        assert_eq!(
            increment(&http, &b, &format!("b{}", i % 3), 1).await,
            StatusCode::ACCEPTED
        );
    }
    stop(b);
    assert_eq!(grand_total(&db).await, 30, "B flushed its own batch 1");

    a.signal(libc::SIGKILL);
    a.wait(Duration::from_secs(10));
    let a = TallyProcess::start(dir_a.path(), &twin, &env);
    stop(a);
    let totals = db_totals(&db).await;
    let expected: Vec<(String, i64)> = (0..5)
        .map(|i| (format!("a{i}"), 10))
        .chain((0..3).map(|i| (format!("b{i}"), 10)))
        .collect();
    assert_eq!(
        totals, expected,
        "every acknowledged increment exactly once"
    );
}

/// With `--allow-negative`, +MAX, -1 and +1 fit in memory in the order they were summed, but
/// may reach the journal in another order (+MAX, +1, -1), whose running sum leaves the 64-bit
/// range. Replay sums the whole batch before judging it. The journal here is of the format
/// before epochs, as a node upgraded with an unflushed journal finds it.
#[tokio::test]
async fn a_batch_replays_whatever_order_its_records_reached_the_journal() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let records = [(1, i64::MAX), (1, 1), (1, -1)].map(|(b, d)| (b, "big".to_owned(), d));
    std::fs::write(
        journal.join("00000000000000000001.journal"),
        version_1_segment(1, &records),
    )
    .unwrap();
    let node = TallyProcess::start(
        dir.path(),
        &["--allow-negative", "--node-id", "upgraded"],
        &[("DATABASE_URL", &db.url)],
    );
    stop(node);
    assert_eq!(db_totals(&db).await, [("big".to_owned(), i64::MAX)]);
}

/// Appends `keys` one request each (one group commit each), then `group` as one group commit,
/// to the journal of `data_dir`, as a node with that directory would have.
async fn write_journal(data_dir: &Path, keys: &[&str], group: &[&str]) {
    let (journal, _) =
        Journal::open(JournalOptions::new(data_dir.join("journal")), |_| {}).unwrap();
    let batch = BatchSeq::first();
    for key in keys {
        journal.append_one(batch, key, 1).await.unwrap();
    }
    let records: Vec<(BatchSeq, &str, i64)> = group.iter().map(|k| (batch, *k, 1)).collect();
    journal.append(&records).await.unwrap();
    journal.close().unwrap();
}

/// The journal's only segment with records, and the offset of the `n`th record in it
/// (records of one-byte keys, 34 bytes each, after a 40-byte header).
fn segment_and_offset(data_dir: &Path, n: u64) -> (std::path::PathBuf, u64) {
    let mut files: Vec<_> = std::fs::read_dir(data_dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 40)
        .collect();
    assert_eq!(files.len(), 1);
    (files.pop().unwrap(), 40 + 34 * n)
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// FAULTS.md row 17. A power cut in the middle of a group commit's sync can leave a later page
/// of it on disk and not an earlier one. Nothing of that group was acknowledged, so the node
/// cuts it and starts, instead of calling the journal corrupt.
#[tokio::test]
async fn damage_inside_the_last_group_commit_is_cut_and_the_node_starts() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), &["a", "b", "c"], &["d", "e", "f", "g"]).await;
    let (segment, fifth) = segment_and_offset(dir.path(), 4);
    flip_byte(&segment, fifth + 20);

    let node = TallyProcess::start(
        dir.path(),
        &["--node-id", "n"],
        &[("DATABASE_URL", &db.url)],
    );
    assert!(
        node.log().contains("unfinished group commit"),
        "{}",
        node.log()
    );
    stop(node);
    let keys: Vec<String> = db_totals(&db).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["a", "b", "c", "d"], "everything before the damage");
}

fn journal_command(data_dir: &Path, action: &str) -> (bool, String) {
    let out = tally_command()
        .args(["journal", action, "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Damage followed by a later group commit may have hit acknowledged records: the node
/// refuses to start and says what to run; `tally journal check` shows the damage, `tally
/// journal repair` drops exactly the damaged record and says so, and the node then replays
/// every other record.
#[tokio::test]
async fn a_corrupt_journal_is_shown_by_check_and_dropped_by_repair() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), &["a", "b", "c"], &["d", "e"]).await;
    let (segment, second) = segment_and_offset(dir.path(), 1);
    flip_byte(&segment, second + 20);

    let mut refused = tally_command();
    refused
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "n",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("DATABASE_URL", &db.url);
    let out = refused.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("journal corrupt"), "{stderr}");
    assert!(stderr.contains("tally journal repair"), "{stderr}");

    let (ok, text) = journal_command(dir.path(), "check");
    assert!(!ok, "check fails on a journal the node refuses: {text}");
    assert!(text.contains("corrupt at byte 74"), "{text}");

    let (ok, text) = journal_command(dir.path(), "repair");
    assert!(ok, "{text}");
    assert!(
        text.contains("the records with LSNs 2 to 2 (1 records) could not be read and are lost"),
        "{text}"
    );
    let (ok, text) = journal_command(dir.path(), "check");
    assert!(ok, "{text}");

    let node = TallyProcess::start(
        dir.path(),
        &["--node-id", "n"],
        &[("DATABASE_URL", &db.url)],
    );
    stop(node);
    let keys: Vec<String> = db_totals(&db).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["a", "c", "d", "e"], "all but the damaged record");
}
