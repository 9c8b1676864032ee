//! `tally load` against a real node and PostgreSQL: every request is accounted for, and the
//! totals it verifies in PostgreSQL are exact. Figures are printed by the generator, never
//! asserted.

use clap::Parser;
use tally_load::{LoadConfig, run};

use crate::helpers::app::TestApp;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadConfig,
}

fn config(args: &[&str]) -> LoadConfig {
    let mut all = vec!["load", "--quiet"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("valid load flags").load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verified_load_finds_every_acknowledged_increment_in_postgres() {
    let app = TestApp::spawn().await;
    let url = format!("http://{}", app.addr);
    let report = run(config(&[
        "--url",
        &url,
        "--connections",
        "8",
        "--requests",
        "5000",
        "--keys",
        "200",
        "--distribution",
        "zipf",
        "--verify",
        "--database-url",
        &app.db.url,
    ]))
    .await
    .expect("the load runs and verifies");

    assert_eq!(report.requests, 5000);
    assert_eq!(report.statuses.get(&202), Some(&5000), "{report:?}");
    assert_eq!(report.statuses.len(), 1, "only 202s: {report:?}");
    assert_eq!((report.connection_errors, report.timeouts), (0, 0));
    let verify = report.verify.expect("--verify reports");
    assert!(verify.exact, "{verify:?}");
    assert_eq!(verify.increments, 5000);
    assert_eq!(verify.unknown, 0);
    assert!(verify.freshness_ms.is_some());

    // What the generator counted is what PostgreSQL holds for its keys, and nothing else.
    let totals = app.db_totals().await;
    assert_eq!(totals.len(), verify.keys);
    assert_eq!(
        totals.iter().map(|(_, v)| v).sum::<i64>(),
        verify.acknowledged_sum
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_run_with_the_same_prefix_is_refused_before_sending() {
    let app = TestApp::spawn().await;
    let url = format!("http://{}", app.addr);
    let flags = [
        "--url",
        &url,
        "--connections",
        "2",
        "--requests",
        "20",
        "--keys",
        "5",
        "--key-prefix",
        "again",
        "--verify",
        "--database-url",
        &app.db.url,
    ];
    run(config(&flags)).await.expect("the first run verifies");
    let err = run(config(&flags)).await.unwrap_err().to_string();
    assert!(err.contains("already holds"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_health_measures_the_http_ceiling_with_only_200s() {
    let app = TestApp::spawn().await;
    let url = format!("http://{}", app.addr);
    let report = run(config(&[
        "--url",
        &url,
        "--method",
        "get",
        "--path",
        "/health",
        "--connections",
        "8",
        "--requests",
        "2000",
        "--json",
    ]))
    .await
    .expect("the load runs");

    assert_eq!(report.requests, 2000);
    assert_eq!(report.statuses.get(&200), Some(&2000), "{report:?}");
    assert_eq!(report.statuses.len(), 1, "only 200s: {report:?}");
    assert!(report.verify.is_none());
    assert!(report.keys.is_none());
}

#[tokio::test]
async fn a_server_that_is_not_there_is_an_error_before_the_run() {
    // Bind and drop a listener to get a port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = run(config(&["--url", &url, "--requests", "10"]))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn totals_missing_from_postgres_fail_the_verification() {
    // The load goes to one node, the check to another node's database, where nothing arrives:
    // every acknowledged key must be reported missing.
    let loaded = TestApp::spawn().await;
    let elsewhere = TestApp::spawn().await;
    let url = format!("http://{}", loaded.addr);
    let err = run(config(&[
        "--url",
        &url,
        "--connections",
        "2",
        "--requests",
        "50",
        "--keys",
        "20",
        "--verify",
        "--database-url",
        &elsewhere.db.url,
        "--verify-timeout",
        "200ms",
    ]))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("verification failed"), "{err}");
}
