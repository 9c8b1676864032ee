//! Sync mode's group commit (DESIGN.md section 1, "Consistency mode `sync`"): concurrent
//! requests share one transaction, and each still hears its own exact total, distinct from
//! every other request's on the same key; a request the database refuses fails alone; an
//! outage answers what a lone request's would.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::app::{TestApp, db_totals};
use crate::helpers::fault_proxy::{FaultProxy, Upstream};
use crate::helpers::ledger::Ledger;
use crate::helpers::postgres::fresh_database;

/// Posts one increment and returns the status and the body.
async fn post(http: &reqwest::Client, url: &str, key: &str, value: i64) -> (StatusCode, Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::json!({"key": key, "value": value}).to_string())
        .send()
        .await
        .expect("request sent");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_exact_total() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    const CLIENTS: usize = 64;
    const REQUESTS: usize = 50;
    // Half the requests on one hot key, the rest spread over a few keys shared by clients.
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let http = app.http.clone();
            let url = app.url("/increment");
            tokio::spawn(async move {
                let mut seen: Vec<(String, i64)> = Vec::new();
                for n in 0..REQUESTS {
                    let key = if n % 2 == 0 {
                        "hot".to_owned()
                    } else {
                        format!("warm-{}", (client + n) % 7)
                    };
                    let (status, body) = post(&http, &url, &key, 1).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    assert_eq!(body["key"], key.as_str());
                    assert_eq!(body["value"], 1);
                    seen.push((key, body["total"].as_i64().unwrap()));
                }
                seen
            })
        })
        .collect();
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for t in tasks {
        for (key, total) in t.await.unwrap() {
            by_key.entry(key).or_default().push(total);
        }
    }
    let totals = app.db_totals().await;
    assert_eq!(totals.len(), by_key.len());
    for (key, final_total) in totals {
        let mut seen = by_key.remove(&key).unwrap();
        seen.sort_unstable();
        let n = seen.len() as i64;
        assert_eq!(
            seen,
            (1..=n).collect::<Vec<_>>(),
            "key {key}: every request heard its own total, 1 to {n}, none twice"
        );
        assert_eq!(
            final_total, n,
            "key {key}: PostgreSQL holds every increment"
        );
    }
    // They were written in groups: fewer statements than requests, every request in one.
    let metrics = app.metrics().await;
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let requests = (CLIENTS * REQUESTS) as f64;
    assert_eq!(value("tally_sync_group_size_sum "), requests);
    assert!(
        value("tally_sync_group_size_count ") < requests,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_any_size_add_up_exactly_in_a_group() {
    let app = TestApp::spawn_with(&["--mode", "sync", "--allow-negative"]).await;
    // Each client sends its own values, some negative, on one shared key: a key whose deltas
    // in a group mix signs is written one request at a time, the others in the group.
    let tasks: Vec<_> = (1..=32i64)
        .map(|client| {
            let http = app.http.clone();
            let url = app.url("/increment");
            tokio::spawn(async move {
                let mut sent = 0;
                let mut heard = Vec::new();
                for n in 0..20i64 {
                    let value = if (client + n) % 3 == 0 {
                        -client
                    } else {
                        client * 1_000_000 + n
                    };
                    let (status, body) = post(&http, &url, "shared", value).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    sent += value;
                    heard.push((value, body["total"].as_i64().unwrap()));
                }
                (sent, heard)
            })
        })
        .collect();
    let mut sum = 0;
    let mut heard = Vec::new();
    for t in tasks {
        let (sent, h) = t.await.unwrap();
        sum += sent;
        heard.extend(h);
    }
    assert_eq!(app.db_totals().await, vec![("shared".to_owned(), sum)]);
    // Some serial order of the requests must give exactly the totals heard. Each total heard
    // less its own value is the total before it; following those links from 0 must visit
    // every request once. (No run of requests sums to 0, as the negative values are too small
    // to cancel a positive one, so the links form one chain.)
    let mut before: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for &(value, total) in &heard {
        before
            .entry(total - value)
            .or_default()
            .push((value, total));
    }
    let mut at = 0;
    let mut visited = 0;
    while let Some(next) = before.get_mut(&at).and_then(Vec::pop) {
        at = next.1;
        visited += 1;
    }
    assert_eq!(
        visited,
        heard.len(),
        "the totals heard chain from 0 to the final total through every request"
    );
    assert_eq!(at, sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_that_would_overflow_fails_only_its_own_requests() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    let (status, _) = post(&app.http, &app.url("/increment"), "max", i64::MAX - 3).await;
    assert_eq!(status, StatusCode::OK);
    // Many requests at once, so that they share groups: on "max" the first three fit and
    // every later one is refused; on the other keys all of them count.
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let http = app.http.clone();
            let url = app.url("/increment");
            tokio::spawn(async move {
                let key = if n % 4 == 0 {
                    "max".to_owned()
                } else {
                    format!("fine-{}", n % 3)
                };
                let (status, body) = post(&http, &url, &key, 1).await;
                (key, status, body)
            })
        })
        .collect();
    let mut max_totals = Vec::new();
    let mut refused = 0;
    let mut fine: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for t in tasks {
        let (key, status, body) = t.await.unwrap();
        match (key.as_str(), status) {
            ("max", StatusCode::OK) => max_totals.push(body["total"].as_i64().unwrap()),
            ("max", StatusCode::BAD_REQUEST) => {
                assert_eq!(body["error"]["code"], "total_out_of_range", "{body}");
                assert_eq!(body["error"]["field"], "value", "{body}");
                refused += 1;
            }
            (_, StatusCode::OK) => fine
                .entry(key)
                .or_default()
                .push(body["total"].as_i64().unwrap()),
            _ => panic!("{key}: {status} {body}"),
        }
    }
    max_totals.sort_unstable();
    assert_eq!(max_totals, vec![i64::MAX - 2, i64::MAX - 1, i64::MAX]);
    assert_eq!(refused, 10 - 3);
    for (key, mut totals) in fine.clone() {
        totals.sort_unstable();
        assert_eq!(
            totals,
            (1..=totals.len() as i64).collect::<Vec<_>>(),
            "{key}"
        );
    }
    let mut expected: Vec<(String, i64)> =
        fine.into_iter().map(|(k, t)| (k, t.len() as i64)).collect();
    expected.push(("max".to_owned(), i64::MAX));
    expected.sort();
    assert_eq!(app.db_totals().await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_database_refuses_fails_only_its_own_requests() {
    let app = TestApp::spawn_with(&["--mode", "sync"]).await;
    app.db_client()
        .await
        .batch_execute("ALTER TABLE counters ADD CONSTRAINT no_poison CHECK (key <> 'poison')")
        .await
        .unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let http = app.http.clone();
            let url = app.url("/increment");
            tokio::spawn(async move {
                let key = if n % 5 == 0 { "poison" } else { "fine" };
                let (status, body) = post(&http, &url, key, 1).await;
                (key, status, body)
            })
        })
        .collect();
    let mut fine = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            ("fine", StatusCode::OK, body) => fine.push(body["total"].as_i64().unwrap()),
            ("poison", StatusCode::BAD_REQUEST, body) => {
                assert_eq!(body["error"]["code"], "refused_by_database", "{body}")
            }
            (key, status, body) => panic!("{key}: {status} {body}"),
        }
    }
    fine.sort_unstable();
    assert_eq!(fine, (1..=32).collect::<Vec<_>>());
    assert_eq!(app.db_totals().await, vec![("fine".to_owned(), 32)]);
}

/// The database host goes silent while groups are in flight: the requests of a statement that
/// got no answer hear 500 `outcome_unknown`, as a lone request did, never a 2xx, and PostgreSQL
/// holds every acknowledged increment and at most the unknown ones besides. Then the node
/// serves again through new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_group_answers_outcome_unknown_and_loses_nothing() {
    let db = fresh_database();
    let proxy = FaultProxy::start(Upstream::of(&db.config())).await;
    let app = TestApp::spawn_on(
        proxy.database(&db),
        tempfile::tempdir().unwrap(),
        // A small pool: connections silenced by the proxy hold their server backends until
        // the test ends, and the test cluster is shared.
        &[
            "--mode",
            "sync",
            "--db-timeout",
            "1s",
            "--db-pool-size",
            "4",
        ],
    )
    .await;
    let keys = ["hot", "a", "b"];
    let tasks: Vec<_> = (0..32)
        .map(|client| {
            let http = app.http.clone();
            let url = app.url("/increment");
            tokio::spawn(async move {
                let mut ledger = Ledger::default();
                let mut unknown = 0;
                let mut totals = Vec::new();
                for n in 0..60 {
                    let key = keys[(client + n) % keys.len()];
                    let (status, body) = post(&http, &url, key, 1).await;
                    match status {
                        StatusCode::OK => {
                            *ledger.acknowledged.entry(key.to_owned()).or_default() += 1;
                            totals.push((key, body["total"].as_i64().unwrap()));
                        }
                        StatusCode::INTERNAL_SERVER_ERROR => {
                            assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
                            *ledger.unknown.entry(key.to_owned()).or_default() += 1;
                            unknown += 1;
                        }
                        // Nothing applied.
                        StatusCode::SERVICE_UNAVAILABLE => {}
                        other => panic!("{other}: {body}"),
                    }
                }
                (ledger, unknown, totals)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.silence();
    let mut ledger = Ledger::default();
    let mut unknown = 0;
    let mut heard: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for t in tasks {
        let (l, u, totals) = t.await.unwrap();
        ledger.merge(l);
        unknown += u;
        for (key, total) in totals {
            heard.entry(key).or_default().push(total);
        }
    }
    assert!(
        unknown > 1,
        "the statement in flight held more than one request: {unknown} unknown"
    );
    for (key, mut totals) in heard {
        let n = totals.len();
        totals.sort_unstable();
        totals.dedup();
        assert_eq!(totals.len(), n, "{key}: no total heard twice");
    }
    // The node's connections closed before the check opens one of its own.
    app.stop().await.unwrap();
    ledger.check(&db_totals(&db).await).unwrap();
}
