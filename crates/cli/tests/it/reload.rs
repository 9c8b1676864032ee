//! Live reload on a real process: SIGHUP (and `--watch-config`) make a running node read its
//! configuration file again and apply what can change, refuse an invalid file whole, and name
//! the changes that need a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::postgres::fresh_database;
use crate::helpers::process::TallyProcess;

fn post(http: &reqwest::blocking::Client, node: &TallyProcess, key: &str) -> u16 {
    http.post(node.url("/increment"))
        .header("content-type", "application/json")
        .body(json!({"key": key, "value": 1}).to_string())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn metrics(http: &reqwest::blocking::Client, node: &TallyProcess) -> String {
    http.get(node.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn setting(http: &reqwest::blocking::Client, node: &TallyProcess, name: &str) -> String {
    let status: Value = http
        .get(node.url("/console/status"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    status["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["value"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no setting {name} in {status}"))
}

fn reload(node: &TallyProcess, file: &Path, text: &str) {
    std::fs::write(file, text).unwrap();
    node.signal(libc::SIGHUP);
}

/// The value of the sample line `series` in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn sighup_applies_what_can_change_refuses_a_bad_file_and_names_what_needs_a_restart() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tally.toml");
    std::fs::write(
        &file,
        "flush_interval = \"10s\"\nrate_limit = \"1000/1s\"\n",
    )
    .unwrap();
    let node = TallyProcess::start(
        &dir.path().join("node"),
        &["--config", file.to_str().unwrap()],
        &[("DATABASE_URL", &db.url)],
    );
    let http = reqwest::blocking::Client::new();

    // The flush interval: from 10 s to 50 ms, so an increment is in PostgreSQL well before
    // the first 10 s tick would have come.
    reload(
        &node,
        &file,
        "flush_interval = \"50ms\"\nrate_limit = \"1000/1s\"\n",
    );
    let line = &node.wait_for_log_lines("configuration reloaded", 1)[0];
    assert_eq!(line["changed"], "flush_interval: 10s -> 50ms", "{line}");
    assert_eq!(line["trigger"], "SIGHUP");
    let sent = Instant::now();
    assert_eq!(post(&http, &node, "reload-a"), 202);
    loop {
        let totals = crate::process::totals(&db.url);
        if totals.iter().any(|(k, v)| k == "reload-a" && *v == 1) {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "not flushed at the new interval"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Bounds and the rate: two pending keys at most, two requests a minute.
    reload(
        &node,
        &file,
        "flush_interval = \"10s\"\nmax_pending_keys = 2\nrate_limit = \"3/1m\"\n",
    );
    let line = &node.wait_for_log_lines("configuration reloaded", 2)[1];
    let changed = line["changed"].as_str().unwrap();
    for expected in [
        "flush_interval: 50ms -> 10s",
        "max_pending_keys: 10000000 -> 2",
        "rate_limit: 1000/1s -> 3/1m",
    ] {
        assert!(changed.contains(expected), "{expected} in {changed}");
    }
    assert_eq!(post(&http, &node, "reload-b"), 202);
    assert_eq!(post(&http, &node, "reload-c"), 202);
    assert_eq!(
        post(&http, &node, "reload-d"),
        503,
        "past the new key bound"
    );
    assert_eq!(post(&http, &node, "reload-b"), 429, "past the new rate");
    let page = metrics(&http, &node);
    assert_eq!(sample(&page, "tally_pending_keys_limit"), Some(2.0));
    assert_eq!(
        sample(&page, "tally_config_reloads_total{outcome=\"applied\"}"),
        Some(2.0)
    );

    // An invalid file is refused whole: nothing of it applies, not even its valid lines.
    reload(
        &node,
        &file,
        "flush_interval = \"forever\"\nmax_pending_keys = 100\n",
    );
    let line = &node.wait_for_log_lines("configuration reload refused", 1)[0];
    assert!(
        line["error"].as_str().unwrap().contains("forever"),
        "the error names the bad value: {line}"
    );
    let page = metrics(&http, &node);
    assert_eq!(sample(&page, "tally_pending_keys_limit"), Some(2.0));
    assert_eq!(
        sample(&page, "tally_config_reloads_total{outcome=\"failed\"}"),
        Some(1.0)
    );

    // What cannot change while running is named, and left as it is; what can is applied
    // beside it. The access log, once on, logs the next request.
    let settled = "flush_interval = \"10s\"\nmax_pending_keys = 2\nrate_limit = \"1000/1s\"\n\
                   mode = \"sync\"\naccess_log = true\n";
    reload(&node, &file, settled);
    let line = &node.wait_for_log_lines("need a restart", 1)[0];
    assert_eq!(
        line["needs_restart"], "mode: buffered -> sync, durability: journal -> none",
        "{line}"
    );
    let line = &node.wait_for_log_lines("configuration reloaded", 3)[2];
    assert_eq!(
        line["changed"], "rate_limit: 3/1m -> 1000/1s, access_log: false -> true",
        "{line}"
    );
    assert_eq!(setting(&http, &node, "flush_interval"), "10s");
    assert_eq!(setting(&http, &node, "mode"), "buffered");
    assert_eq!(setting(&http, &node, "access_log"), "true");
    http.get(node.url("/health")).send().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node
        .log_lines("request")
        .iter()
        .any(|l| l["message"] == "request" && l["route"] == "/health")
    {
        assert!(
            Instant::now() < deadline,
            "no access log line: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The log level: at `warn`, the reload's own info line is no longer written.
    reload(&node, &file, &format!("{settled}log_level = \"warn\"\n"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(
        &metrics(&http, &node),
        "tally_config_reloads_total{outcome=\"applied\"}",
    ) != Some(4.0)
    {
        assert!(Instant::now() < deadline, "the fourth reload never counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(setting(&http, &node, "log_level"), "warn");
    assert_eq!(
        node.log_lines("configuration reloaded").len(),
        3,
        "an info line was logged at level warn"
    );
    // The restart-needing change is named again: it is still not applied.
    assert_eq!(node.log_lines("need a restart").len(), 2);
}

#[test]
fn watch_config_reloads_when_the_file_changes_and_flags_still_win() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tally.toml");
    std::fs::write(&file, "max_pending_keys = 100\n").unwrap();
    let node = TallyProcess::start(
        &dir.path().join("node"),
        &[
            "--config",
            file.to_str().unwrap(),
            "--watch-config",
            "--flush-interval",
            "2s",
        ],
        &[("DATABASE_URL", &db.url)],
    );
    // No signal: the change itself is seen. The flag beats the file's flush_interval.
    std::fs::write(&file, "max_pending_keys = 50\nflush_interval = \"9s\"\n").unwrap();
    let line = &node.wait_for_log_lines("configuration reloaded", 1)[0];
    assert_eq!(line["trigger"], "file changed", "{line}");
    assert_eq!(line["changed"], "max_pending_keys: 100 -> 50", "{line}");
    let http = reqwest::blocking::Client::new();
    assert_eq!(setting(&http, &node, "flush_interval"), "2s");
    assert_eq!(setting(&http, &node, "max_pending_keys"), "50");
}
