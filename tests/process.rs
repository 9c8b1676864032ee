//! What only a real `tally` process can show: signals, exit statuses, and the managed
//! PostgreSQL it starts and stops.

mod common;

use std::path::Path;
use std::time::Duration;

use common::postgres::{fresh_database, fresh_database_with, process_is_running};
use common::process::{TallyProcess, tally_command};

fn post_increment(
    http: &reqwest::blocking::Client,
    p: &TallyProcess,
    key: &str,
    value: i64,
) -> u16 {
    http.post(p.url("/increment"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"key": key, "value": value}).to_string())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn totals(url: &str) -> Vec<(String, i64)> {
    let url = url.to_owned();
    // A small runtime of its own: these tests are synchronous, like the processes they drive.
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let db = common::postgres::TestDatabase {
                url,
                name: String::new(),
            };
            common::app::db_totals(&db).await
        })
}

/// The postmaster's pid from its pid file, if the managed cluster is running.
fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postgres/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[test]
fn sigterm_flushes_everything_before_exit() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.clone();
    let mut tally = TallyProcess::start(
        dir.path(),
        &["--flush-interval", "10s"],
        &[("DATABASE_URL", &url)],
    );
    let http = reqwest::blocking::Client::new();
    for i in 0..300 {
        assert_eq!(
            post_increment(&http, &tally, &format!("k{}", i % 13), 2),
            202
        );
    }
    assert!(
        totals(&url).is_empty(),
        "a 10 s interval has not flushed yet"
    );

    tally.signal(libc::SIGTERM);
    let status = tally.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        tally.log()
    );
    let totals = totals(&url);
    assert_eq!(totals.len(), 13);
    assert_eq!(totals.iter().map(|(_, v)| v).sum::<i64>(), 600);
    assert!(tally.log().contains("final flush done"), "{}", tally.log());
}

/// Stops `tally` with `signal` and checks it exited 0 and left no postgres behind.
fn stop_and_check_postgres_stopped(tally: &mut TallyProcess, signal: i32, dir: &Path, pid: u32) {
    tally.signal(signal);
    assert!(
        tally.wait(Duration::from_secs(60)).success(),
        "{}",
        tally.log()
    );
    assert!(
        !process_is_running(pid),
        "no stray postgres process is left"
    );
    assert_eq!(
        postmaster_pid(dir),
        None,
        "the managed PostgreSQL stopped with tally"
    );
}

#[test]
fn managed_postgres_starts_from_nothing_keeps_its_data_and_stops_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::blocking::Client::new();

    let mut first = TallyProcess::start(dir.path(), &[], &[]);
    assert!(
        first.log().contains("managed"),
        "the start-up line names the managed database:\n{}",
        first.log()
    );
    let pid = postmaster_pid(dir.path()).expect("the managed PostgreSQL runs");
    assert!(process_is_running(pid));
    assert_eq!(post_increment(&http, &first, "visits", 41), 202);
    stop_and_check_postgres_stopped(&mut first, libc::SIGTERM, dir.path(), pid);

    let mut second = TallyProcess::start(dir.path(), &[], &[]);
    let body: serde_json::Value = http
        .get(second.url("/counters/visits"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        body,
        serde_json::json!({"key": "visits", "value": 41}),
        "the data survived the restart"
    );
    let pid = postmaster_pid(dir.path()).unwrap();
    stop_and_check_postgres_stopped(&mut second, libc::SIGINT, dir.path(), pid);
}

#[test]
fn a_second_process_on_the_same_data_directory_is_refused() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let _first = TallyProcess::start(dir.path(), &[], &[("DATABASE_URL", &db.url)]);
    let out = tally_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another tally process"),
        "{stderr}"
    );
}

#[test]
fn invalid_configuration_exits_2_with_one_clear_line() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--flush-interval", "20s"], &[], "between 10ms and 10s"),
        (&["--mode", "fast"], &[], "--mode"),
        (
            &[],
            &[("TALLY_FLUSH_INTERVAL", "5ms")],
            "between 10ms and 10s",
        ),
        (&[], &[("TALLY_MAX_BODY_BYTES", "lots")], "--max-body-bytes"),
        (&["--listen", "nowhere"], &[], "--listen"),
        (&["--durability", "disk"], &[], "--durability"),
        (&["--max-journal-bytes", "1kB"], &[], "at least 1MiB"),
    ];
    for (args, envs, expected) in cases {
        let mut cmd = tally_command();
        cmd.args(*args).env_remove("DATABASE_URL");
        for (k, v) in *envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {envs:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn flags_beat_environment_which_beats_the_file() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tally.toml");
    std::fs::write(&file, "flush_interval = \"9s\"\nmode = \"sync\"\n").unwrap();
    let file = file.to_str().unwrap();
    let started_with = |args: &[&str], envs: &[(&str, &str)]| {
        let data = tempfile::tempdir().unwrap();
        let mut all_envs = vec![("DATABASE_URL", db.url.as_str())];
        all_envs.extend_from_slice(envs);
        let p = TallyProcess::start(data.path(), args, &all_envs);
        let line = p
            .log()
            .lines()
            .find(|l| l.contains("tally is serving"))
            .unwrap()
            .to_owned();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        (
            v["flush_interval"].as_str().unwrap().to_owned(),
            v["mode"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        started_with(&["--config", file], &[]),
        ("9s".into(), "sync".into())
    );
    assert_eq!(
        started_with(&["--config", file], &[("TALLY_FLUSH_INTERVAL", "2s")]),
        ("2s".into(), "sync".into())
    );
    assert_eq!(
        started_with(
            &[
                "--config",
                file,
                "--flush-interval",
                "3s",
                "--mode",
                "buffered"
            ],
            &[("TALLY_FLUSH_INTERVAL", "2s")]
        ),
        ("3s".into(), "buffered".into())
    );
}

#[test]
fn access_logs_are_off_by_default_and_on_by_a_flag() {
    let db = fresh_database();
    let http = reqwest::blocking::Client::new();
    for (flags, expected) in [(&[][..], 0), (&["--access-log"][..], 1)] {
        let dir = tempfile::tempdir().unwrap();
        let mut tally = TallyProcess::start(dir.path(), flags, &[("DATABASE_URL", &db.url)]);
        let r = http
            .post(tally.url("/increment"))
            .header("content-type", "application/json")
            .header("x-request-id", "trace-me")
            .body(r#"{"key": "k", "value": 1}"#)
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        tally.signal(libc::SIGTERM);
        assert!(tally.wait(Duration::from_secs(30)).success());
        let lines: Vec<serde_json::Value> = tally
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["target"] == "tally::access")
            .collect();
        assert_eq!(lines.len(), expected, "{flags:?}:\n{}", tally.log());
        if let Some(line) = lines.first() {
            assert_eq!(line["request_id"], "trace-me");
            assert_eq!(line["route"], "/increment");
            assert_eq!(line["status"], 202);
            assert_eq!(line["method"], "POST");
        }
    }
}

#[test]
fn during_the_drain_delay_ready_fails_but_increments_are_still_served() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut tally = TallyProcess::start(
        dir.path(),
        &["--drain-delay", "2s", "--flush-interval", "10s"],
        &[("DATABASE_URL", &db.url)],
    );
    let http = reqwest::blocking::Client::new();
    assert_eq!(http.get(tally.url("/ready")).send().unwrap().status(), 200);
    tally.signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while http.get(tally.url("/ready")).send().unwrap().status() != 503 {
        assert!(std::time::Instant::now() < deadline, "/ready never failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        post_increment(&http, &tally, "late", 3),
        202,
        "still serving while draining"
    );
    assert!(
        tally.wait(Duration::from_secs(30)).success(),
        "{}",
        tally.log()
    );
    assert_eq!(totals(&db.url), vec![("late".to_owned(), 3)]);
}

#[test]
fn postgres_subcommand_starts_and_stops_a_cluster_for_several_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let start = tally_command()
        .args(["postgres", "start", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let url = String::from_utf8(start.stdout).unwrap().trim().to_owned();
    let pid = postmaster_pid(dir.path()).expect("running");
    assert!(totals_after_migrate(&url).is_empty());
    let stop = tally_command()
        .args(["postgres", "stop", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert!(!process_is_running(pid));
}

/// Migrates the database at `url` with `tally migrate` and reads its totals.
fn totals_after_migrate(url: &str) -> Vec<(String, i64)> {
    let dir = tempfile::tempdir().unwrap();
    let out = tally_command()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    totals(url)
}

#[test]
fn migrate_creates_the_schema_and_exits() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = tally_command()
            .args(["migrate", "--data-dir"])
            .arg(dir.path())
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        totals(&db.url).is_empty(),
        "the counters table exists and is empty"
    );
}

/// FAULTS.md row 15: a database that cannot store every key Tally accepts would fail a flush
/// for good, so it is refused at start, before anything is acknowledged.
#[test]
fn a_database_whose_encoding_is_not_utf8_is_refused_at_start() {
    let db =
        fresh_database_with("ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let mut child = tally_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("DATABASE_URL", &db.url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tally kept running on a LATIN1 database; its log:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("encoding") && stderr.contains("LATIN1") && stderr.contains("UTF8"),
        "{stderr}"
    );
}
