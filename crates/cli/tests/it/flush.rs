//! The buffer and the flush path against a real PostgreSQL: exact totals under concurrency,
//! pending increments visible before they are flushed, and deltas kept through a database
//! outage.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::RngExt;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::app::{TestApp, db_totals};
use crate::helpers::postgres::dedicated_cluster;

/// Sends `per_task` random increments from each of `tasks` concurrent clients over `keys`
/// keys, and returns the sum of the acknowledged ones per key.
async fn concurrent_load(
    app: &TestApp,
    tasks: usize,
    per_task: usize,
    keys: usize,
) -> BTreeMap<String, i64> {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let http = app.http.clone();
            let url = app.url("/increment");
            tokio::spawn(async move {
                let mut acked: BTreeMap<String, i64> = BTreeMap::new();
                for _ in 0..per_task {
                    let (key, value) = {
                        let mut rng = rand::rng();
                        (
                            format!("key-{}", rng.random_range(0..keys)),
                            rng.random_range(1..=100),
                        )
                    };
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(json!({"key": key, "value": value}).to_string())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                    *acked.entry(key).or_default() += value;
                }
                acked
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for h in handles {
        for (k, v) in h.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_add_up_exactly_in_postgres() {
    let app = TestApp::spawn().await;
    let acked = concurrent_load(&app, 8, 500, 300).await;
    assert!(acked.len() > 250, "the load spread over many keys");
    let expected: Vec<(String, i64)> = acked.into_iter().collect();
    app.wait_for_totals("every acknowledged increment", |t| t == expected.as_slice())
        .await;

    // Nothing more arrives later: the totals are exact, not a lower bound on the way up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.db_totals().await, expected);
    for (key, total) in expected.iter().take(20) {
        assert_eq!(app.counter(key).await.1["value"], *total);
    }
}

#[tokio::test]
async fn pending_increments_are_visible_before_the_flush() {
    let app = TestApp::spawn_with(&["--flush-interval", "10s"]).await;
    assert_eq!(app.increment("k", 3).await, StatusCode::ACCEPTED);
    assert_eq!(app.increment("k", 4).await, StatusCode::ACCEPTED);
    assert_eq!(
        app.counter("k").await,
        (StatusCode::OK, json!({"key": "k", "value": 7}))
    );
    let t = app.db_totals().await;
    assert!(t.is_empty(), "nothing is flushed yet: {t:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_total_is_the_persisted_value_plus_the_pending_one() {
    let app = TestApp::spawn().await;
    assert_eq!(app.increment("k", 10).await, StatusCode::ACCEPTED);
    app.wait_for_totals("the flush", |t| t == [("k".to_owned(), 10)])
        .await;
    let app = {
        // A second node on the same database, flushing rarely: it sees the other's total plus
        // its own pending increments.
        let other = TestApp::spawn_on(
            app.db.clone(),
            tempfile::tempdir().unwrap(),
            &["--flush-interval", "10s"],
        )
        .await;
        assert_eq!(other.increment("k", 5).await, StatusCode::ACCEPTED);
        assert_eq!(other.counter("k").await.1["value"], 15);
        assert_eq!(
            app.counter("k").await.1["value"],
            10,
            "the first node sees only what is persisted"
        );
        other.stop().await.unwrap();
        app
    };
    app.wait_for_totals("the second node's final flush", |t| {
        t == [("k".to_owned(), 15)]
    })
    .await;
}

#[tokio::test]
async fn reading_totals_while_flushing_never_counts_a_batch_twice_or_not_at_all() {
    let app = TestApp::spawn_with(&["--flush-interval", "10ms"]).await;
    let mut expected = 0;
    for i in 1..=200 {
        assert_eq!(app.increment("hot", 1).await, StatusCode::ACCEPTED);
        expected += 1;
        if i % 5 == 0 {
            let (_, body) = app.counter("hot").await;
            assert_eq!(body["value"], expected, "after {i} increments");
        }
    }
}

#[tokio::test]
async fn a_failed_flush_keeps_its_deltas_until_the_database_returns() {
    let cluster = dedicated_cluster();
    let db = cluster.database();
    let app = TestApp::spawn_on(db.clone(), tempfile::tempdir().unwrap(), &[]).await;
    assert_eq!(app.increment("a", 1).await, StatusCode::ACCEPTED);
    app.wait_for_totals("the first flush", |t| t == [("a".to_owned(), 1)])
        .await;

    cluster.stop_immediate().unwrap();
    for _ in 0..50 {
        assert_eq!(
            app.increment("a", 2).await,
            StatusCode::ACCEPTED,
            "accepted while the database is down"
        );
        assert_eq!(app.increment("b", 1).await, StatusCode::ACCEPTED);
    }
    let r = app.http.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready without a database"
    );
    // Let several flush attempts fail.
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.start_again().unwrap();
    let expected = vec![("a".to_owned(), 101), ("b".to_owned(), 50)];
    app.wait_for_totals("the retried flushes", |t| t == expected.as_slice())
        .await;
    app.stop().await.unwrap();
    assert_eq!(db_totals(&db).await, expected);
}

#[tokio::test]
async fn shutdown_flushes_what_is_pending() {
    let app = TestApp::spawn_with(&["--flush-interval", "10s"]).await;
    for i in 0..100 {
        assert_eq!(
            app.increment(&format!("k{}", i % 7), 1).await,
            StatusCode::ACCEPTED
        );
    }
    assert!(app.db_totals().await.is_empty());
    let db = app.db.clone();
    app.stop().await.unwrap();
    let totals = db_totals(&db).await;
    assert_eq!(totals.iter().map(|(_, v)| v).sum::<i64>(), 100);
    assert_eq!(totals.len(), 7);
}

#[tokio::test]
async fn sync_mode_loses_no_update_under_contention() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let http = app.http.clone();
            let url = app.url("/increment");
            tokio::spawn(async move {
                let mut totals = Vec::new();
                for _ in 0..100 {
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(r#"{"key": "contended", "value": 1}"#)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                    totals.push(
                        r.json::<serde_json::Value>().await.unwrap()["total"]
                            .as_i64()
                            .unwrap(),
                    );
                }
                totals
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=800).collect::<Vec<i64>>(),
        "every request saw its own, distinct total"
    );
    assert_eq!(app.db_totals().await, vec![("contended".to_owned(), 800)]);
}

#[tokio::test]
async fn a_batch_larger_than_one_statement_is_written_in_chunks() {
    let app = TestApp::spawn_with(&[
        "--flush-interval",
        "10s",
        "--max-batch",
        "5000",
        "--max-body-bytes",
        "1048576",
    ])
    .await;
    let keys = 25_000; // more than two statements' worth of rows
    for start in (0..keys).step_by(5000) {
        let items: Vec<_> = (start..start + 5000)
            .map(|i| json!({"key": format!("chunk-{i:05}"), "value": i + 1}))
            .collect();
        let r = app
            .post_json("/increments", serde_json::to_string(&items).unwrap())
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let db = app.db.clone();
    app.stop().await.unwrap();
    let totals = db_totals(&db).await;
    assert_eq!(totals.len(), keys);
    assert!(
        totals
            .iter()
            .enumerate()
            .all(|(i, (k, v))| *k == format!("chunk-{i:05}") && *v == i as i64 + 1)
    );
}

#[tokio::test]
async fn keys_the_database_refuses_are_left_out_of_a_batch_of_several_chunks() {
    let app = TestApp::spawn_with(&[
        "--flush-interval",
        "10s",
        "--max-batch",
        "5000",
        "--max-body-bytes",
        "1048576",
    ])
    .await;
    let keys = 25_000; // three statements' worth of rows
    let key = |i: usize| format!("chunk-{i:05}");
    let refused = [0, 12_345, 12_346, keys - 1]; // first, two neighbours, last
    let sql = app.db_client().await;
    let banned: Vec<String> = refused.iter().map(|&i| format!("'{}'", key(i))).collect();
    sql.batch_execute(&format!(
        "ALTER TABLE counters ADD CONSTRAINT banned CHECK (key NOT IN ({}));
         INSERT INTO counters (key, value) VALUES ('{}', {});",
        banned.join(", "),
        key(7_000),
        i64::MAX
    ))
    .await
    .unwrap();

    for start in (0..keys).step_by(5000) {
        let items: Vec<_> = (start..start + 5000)
            .map(|i| json!({"key": key(i), "value": i + 1}))
            .collect();
        let r = app
            .post_json("/increments", serde_json::to_string(&items).unwrap())
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let db = app.db.clone();
    let started = std::time::Instant::now();
    app.stop().await.unwrap(); // one final flush: one batch of 25,000 keys
    eprintln!(
        "a batch of {keys} keys with {} refused and 1 out of range took {:?} to stop",
        refused.len(),
        started.elapsed()
    );

    let totals = db_totals(&db).await;
    let expected: Vec<(String, i64)> = (0..keys)
        .filter(|i| !refused.contains(i))
        .map(|i| {
            let total = if i == 7_000 { i64::MAX } else { i as i64 + 1 };
            (key(i), total)
        })
        .collect();
    assert_eq!(totals.len(), expected.len());
    assert!(totals == expected, "every key but the refused ones, once");

    let rows = crate::helpers::app::connect(&db)
        .await
        .query(
            "SELECT key, delta, reason, sqlstate FROM rejected_increments ORDER BY key",
            &[],
        )
        .await
        .unwrap();
    let rejected: Vec<(String, i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut want: Vec<(String, i64, String, String)> = refused
        .iter()
        .map(|&i| {
            let reason = "refused_by_database".to_owned();
            (key(i), i as i64 + 1, reason, "23514".to_owned())
        })
        .collect();
    want.push((
        key(7_000),
        7_001,
        "total_out_of_range".into(),
        "22003".into(),
    ));
    want.sort();
    assert_eq!(rejected, want);
}

/// What a flush-time overflow drops, exactly: the key's delta in the batch is one sum, and it
/// is left out whole, even the increments of it that alone would have fit.
#[tokio::test]
async fn a_flush_time_overflow_drops_the_keys_whole_delta_in_the_batch() {
    let app = TestApp::spawn_with(&["--flush-interval", "10s"]).await;
    let near_max = i64::MAX - 10;
    app.db_client()
        .await
        .execute(
            "INSERT INTO counters (key, value) VALUES ('near-max', $1)",
            &[&near_max],
        )
        .await
        .unwrap();
    // One request, so one batch: 5 alone would fit, 5 + 10 does not.
    let r = app
        .post_json(
            "/increments",
            r#"[{"key": "near-max", "value": 5}, {"key": "near-max", "value": 10},
                {"key": "other", "value": 1}]"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let db = app.db.clone();
    app.stop().await.unwrap();

    assert_eq!(
        db_totals(&db).await,
        vec![("near-max".to_owned(), near_max), ("other".to_owned(), 1)],
        "the whole delta of the batch is left out, never a part of it"
    );
    let rows = crate::helpers::app::connect(&db)
        .await
        .query(
            "SELECT key, delta, reason, sqlstate FROM rejected_increments",
            &[],
        )
        .await
        .unwrap();
    let rejected: Vec<(String, i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        rejected,
        vec![(
            "near-max".to_owned(),
            15,
            "total_out_of_range".to_owned(),
            "22003".to_owned()
        )],
        "one row holding the batch's sum for the key"
    );
}

/// A flush of keys PostgreSQL already has updates each row on its own page (a HOT update,
/// which adds no index entry): `counters` is filled to half (migration V9), so each page has
/// room for a new version of every row on it. That is what keeps a flush of many existing
/// keys cheap (bench/analysis.md, "Flushing 1 million existing keys").
#[tokio::test]
async fn a_flush_of_existing_keys_updates_them_in_place() {
    let app = TestApp::spawn_with(&["--flush-interval", "100ms"]).await;
    let keys = 3_000;
    let key = |i: usize| format!("in-place-{i:05}");
    for round in 1..=2 {
        for start in (0..keys).step_by(1000) {
            let items: Vec<_> = (start..start + 1000)
                .map(|i| json!({"key": key(i), "value": 1}))
                .collect();
            let r = app
                .post_json("/increments", serde_json::to_string(&items).unwrap())
                .await;
            assert_eq!(r.status(), StatusCode::ACCEPTED);
        }
        app.wait_for_totals(&format!("{keys} keys of {round}"), |totals| {
            totals.len() == keys && totals.iter().all(|(_, v)| *v == round)
        })
        .await;
    }

    // The node's connection reports its statistics within a second or so of going idle.
    let sql = app.db_client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (updated, in_place) = loop {
        let row = sql
            .query_one(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                 WHERE relname = 'counters'",
                &[],
            )
            .await
            .unwrap();
        let (updated, in_place): (i64, i64) = (row.get(0), row.get(1));
        if updated >= keys as i64 || std::time::Instant::now() > deadline {
            break (updated, in_place);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(updated, keys as i64, "each key updated once");
    assert_eq!(in_place, updated, "every update stayed on its page");
    app.stop().await.unwrap();
}

/// The flush's statement for a batch with an overflowing key locks rows in the same order as
/// every other writer, byte order, whatever the database's collation: in a database that
/// sorts `a` before `B` (ICU, en-US), it waits for `B` without holding `a`. When it locked
/// rows in the collation's order, a transaction holding `B` and then asking for `a` made a
/// deadlock, and PostgreSQL aborted the flush.
#[tokio::test]
async fn a_flush_with_an_overflowing_key_locks_rows_in_byte_order_under_any_collation() {
    let db = crate::helpers::postgres::fresh_database_with(
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'",
    );
    let app = TestApp::spawn_on(
        db,
        tempfile::tempdir().unwrap(),
        &["--flush-interval", "100ms"],
    )
    .await;
    let sql = app.db_client().await;
    // '0' sorts first in both orders, so the plain statement fails at once on the overflow,
    // before it locks anything, and the statement that leaves the key out runs.
    sql.batch_execute(&format!(
        "INSERT INTO counters (key, value) VALUES ('0-near-max', {}), ('a', 0), ('B', 0)",
        i64::MAX - 10
    ))
    .await
    .unwrap();
    let (ours, connection) = app
        .db
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    ours.batch_execute("SET statement_timeout = '20s'; BEGIN; UPDATE counters SET value = value + 100 WHERE key = 'B'")
        .await
        .unwrap();

    let r = app
        .post_json(
            "/increments",
            r#"[{"key": "0-near-max", "value": 15}, {"key": "a", "value": 1}, {"key": "B", "value": 1}]"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The flush now waits for our lock on B.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the flush never waited for B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Holding B, ask for a: a deadlock if the flush holds a while it waits for B.
    let ours_on_a = ours
        .batch_execute("UPDATE counters SET value = value + 100 WHERE key = 'a'; COMMIT")
        .await;
    if ours_on_a.is_err() {
        ours.batch_execute("ROLLBACK").await.unwrap();
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while db_totals(&app.db)
        .await
        .iter()
        .any(|(k, v)| k == "a" && *v % 100 != 1)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the batch never reached PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.metrics().await;
    assert!(ours_on_a.is_ok(), "our transaction failed: {ours_on_a:?}");
    assert!(
        !metrics.contains(r#"tally_flushes_total{outcome="failed"} 1"#),
        "a flush failed (a deadlock):\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("flushes_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        db_totals(&app.db).await,
        vec![
            ("0-near-max".to_owned(), i64::MAX - 10),
            ("a".to_owned(), 101), // in the database's order
            ("B".to_owned(), 101),
        ]
    );
}
