//! What only a real `tally` process can show: signals, exit statuses, and the managed
//! PostgreSQL it starts and stops.

use std::path::Path;
use std::time::Duration;

use crate::helpers::postgres::{
    DedicatedCluster, dedicated_cluster, fresh_database, fresh_database_with, process_is_running,
};
use crate::helpers::process::{TallyProcess, tally_command};

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

pub(crate) fn totals(url: &str) -> Vec<(String, i64)> {
    let url = url.to_owned();
    // A small runtime of its own: these tests are synchronous, like the processes they drive.
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let db = crate::helpers::postgres::TestDatabase {
                url,
                name: String::new(),
            };
            crate::helpers::app::db_totals(&db).await
        })
}

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `tally` has logged a line whose message contains `text`.
fn wait_for_log(tally: &TallyProcess, text: &str) {
    tally.wait_for_log_lines(text, 1);
}

/// The first JSON log line whose message contains `text`.
fn log_line(tally: &TallyProcess, text: &str) -> Option<serde_json::Value> {
    tally.log_lines(text).into_iter().next()
}

fn sum(totals: &[(String, i64)]) -> i64 {
    totals.iter().map(|(_, v)| v).sum()
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
    // The start-up line's connection string works with psql as printed.
    let database = first
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "tally is serving")
        .and_then(|v| v["database"].as_str().map(str::to_owned))
        .expect("the start-up line names the database");
    let url = database.trim_start_matches("managed ");
    let psql = std::process::Command::new("psql")
        .args([url, "-Atc", "SELECT count(*) FROM counters"])
        .output()
        .expect("psql runs");
    assert!(
        psql.status.success(),
        "psql {url}: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "0");
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
        (
            &["--mode", "fast"],
            &[],
            "for '--mode <MODE>' [possible values: buffered, sync]",
        ),
        (
            &[],
            &[("TALLY_FLUSH_INTERVAL", "5ms")],
            "TALLY_FLUSH_INTERVAL=5ms: invalid value '5ms' for '--flush-interval <DURATION>': must be between 10ms and 10s",
        ),
        (
            &[],
            &[("TALLY_MODE", "fast")],
            "TALLY_MODE=fast: invalid value",
        ),
        (
            &[],
            &[("TALLY_MAX_BODY_BYTES", "lots")],
            "TALLY_MAX_BODY_BYTES=lots",
        ),
        (&["--listen", "nowhere"], &[], "--listen"),
        (&["--durability", "disk"], &[], "--durability"),
        (&["--max-journal-bytes", "1kB"], &[], "at least 1MiB"),
        (
            &[],
            &[("TALLY_DRAIN_TIMEOUT", "soon")],
            "TALLY_DRAIN_TIMEOUT=soon",
        ),
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

/// A usage error shows clap's whole message, suggestions included; a refused connection
/// string is echoed without its password, in the error and in `--help`.
#[test]
fn usage_errors_say_everything_and_never_a_password() {
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = tally_command();
        cmd.args(args).env_remove("DATABASE_URL");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["load", "--verify"], &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("not provided") && text.contains("--database-url <URL>"),
        "{text}"
    );
    let (code, text) = run(&["--flsh-interval", "1s"], &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("a similar argument exists: '--flush-interval'"),
        "{text}"
    );

    let secret = "s3cret-pw";
    let url = format!("postgres://ada:{secret}@db:5432/tally?bogus=1");
    for (args, envs, source) in [
        (
            vec!["migrate"],
            vec![("DATABASE_URL", url.as_str())],
            "DATABASE_URL: invalid value",
        ),
        (
            vec!["--database-url", url.as_str()],
            vec![],
            "invalid value",
        ),
        (
            vec!["load", "--verify", "--database-url", url.as_str()],
            vec![],
            "invalid value",
        ),
    ] {
        let (code, text) = run(&args, &envs);
        assert_eq!(code, Some(2), "{text}");
        assert!(text.contains("postgres://ada:***@db:5432/tally"), "{text}");
        assert!(!text.contains(secret), "the password is shown: {text}");
        assert!(
            text.starts_with(&format!("tally: {source}")),
            "{source:?} first: {text}"
        );
        assert!(text.contains("for '--database-url <URL>'"), "{text}");
    }
    let good = format!("postgres://ada:{secret}@db:5432/tally");
    let (code, text) = run(&["--help"], &[("DATABASE_URL", good.as_str())]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("DATABASE_URL") && !text.contains(secret),
        "{text}"
    );
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

/// `--log-level` beats `RUST_LOG`, which applies without it.
#[test]
fn the_log_level_flag_beats_rust_log() {
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let logs = |args: &[&str], rust_log: Option<&str>| {
        let mut cmd = tally_command();
        cmd.args(["migrate", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env_remove("RUST_LOG")
            .env_remove("TALLY_LOG_LEVEL");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).contains("migrations are up to date")
    };
    assert!(logs(&[], None), "info by default");
    // PostgreSQL's notices are not logged as Tally's own lines.
    let out = tally_command()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("NOTICE"), "{stderr}");
    assert!(!logs(&[], Some("warn")), "RUST_LOG without the flag");
    assert!(
        logs(&["--log-level", "info"], Some("warn")),
        "the flag beats RUST_LOG"
    );
    assert!(!logs(&["--log-level", "warn"], None));
}

/// `tally check-config` validates without starting: 0 and the settings (no password) when
/// valid, 2 and the reason when not; it reads the file and the environment as `serve` does.
#[test]
fn check_config_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tally.toml");
    std::fs::write(&file, "flush_interval = \"2s\"\n").unwrap();
    let out = tally_command()
        .args(["check-config", "--mode", "sync", "--config"])
        .arg(&file)
        .env("DATABASE_URL", "postgres://ada:s3cret@db:5432/tally")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "mode = sync",
        "flush_interval = 2s",
        "postgres://ada:***@db:5432/tally",
    ] {
        assert!(stdout.contains(line), "{line} missing from {stdout}");
    }
    assert!(!stdout.contains("s3cret"), "{stdout}");
    let out = tally_command()
        .arg("check-config")
        .env_remove("DATABASE_URL")
        .env("TALLY_MODE", "fast")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mode"));
}

/// Shell completions and the manual page come from the same command line the binary parses.
#[test]
fn completions_and_the_manual_page_describe_the_command_line() {
    let stdout = |args: &[&str]| {
        let out = tally_command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = stdout(&["completions", "bash"]);
    assert!(
        bash.contains("_tally()") && bash.contains("check-config"),
        "{bash}"
    );
    assert!(bash.contains("--flush-interval"), "{bash}");
    let zsh = stdout(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef tally"), "{zsh}");
    let man = stdout(&["man"]);
    assert!(man.contains(".TH tally 1"), "{man}");
    assert!(man.contains("check\\-config"), "{man}");
}

/// A port in use is a refusal to start, as a data directory in use is: exit status 2 and one
/// line, before anything is opened.
#[test]
fn a_port_in_use_is_refused_like_a_data_directory_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = tally_command()
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .env("DATABASE_URL", "host=/nonexistent dbname=tally")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// The metrics port in use is refused the same way, before the managed PostgreSQL starts: a
/// refusal leaves nothing running behind it.
#[test]
fn a_metrics_port_in_use_is_refused_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = tally_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &addr,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    if let Some(pid) = postmaster_pid(dir.path()) {
        let running = process_is_running(pid);
        if running {
            // Stop what the failure left behind before failing.
            unsafe { libc::kill(pid as i32, libc::SIGQUIT) };
        }
        assert!(!running, "the managed PostgreSQL was left running");
    }
}

/// `tally --version` names the commit it was built from.
#[test]
fn the_version_names_the_commit() {
    let out = tally_command().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success());
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert!(!head.is_empty(), "the tests run in a git checkout");
    assert_eq!(
        version.trim(),
        format!("tally {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}

/// A data directory that a power cut forgets would take the node id and the journal with it:
/// when Tally creates it, it fsyncs the parent that holds its entry. Seen with strace, on the
/// system calls themselves.
#[test]
fn a_new_data_directory_is_made_durable_in_its_parent() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("skipped: strace is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("new");
    let data_dir = parent.join("data");
    let trace = tmp.path().join("trace");
    let out = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=openat,fsync,close", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_tally"))
        .args(["migrate", "--data-dir"])
        .arg(&data_dir)
        // Nothing listens there: the directory is created before the database is reached.
        .env("DATABASE_URL", "host=127.0.0.1 port=1 connect_timeout=1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(data_dir.is_dir());
    let trace = std::fs::read_to_string(trace).unwrap();
    // `openat(AT_FDCWD, "<dir>", O_RDONLY|O_CLOEXEC) = 3`, then `fsync(3)` in the same process
    // before that descriptor is closed.
    let lines: Vec<&str> = trace.lines().collect();
    let synced = |dir: &Path| {
        let name = format!("\"{}\"", dir.display());
        lines.iter().enumerate().any(|(i, open)| {
            let fd = open
                .rsplit("= ")
                .next()
                .and_then(|fd| fd.trim().parse::<u32>().ok());
            let (true, Some(fd)) = (open.contains(&name), fd) else {
                return false;
            };
            let pid = open.split_whitespace().next().unwrap_or_default();
            let (fsync, close) = (format!("fsync({fd})"), format!("close({fd})"));
            lines[i + 1..]
                .iter()
                .filter(|l| l.starts_with(pid))
                .find(|l| l.contains(&fsync) || l.contains(&close))
                .is_some_and(|l| l.contains(&fsync))
        })
    };
    assert!(
        synced(tmp.path()),
        "the entry of `new` in its parent:\n{trace}"
    );
    assert!(synced(&parent), "the entry of `data` in `new`:\n{trace}");
}

/// Brings a node on `cluster` to a forced stop with acknowledged increments that PostgreSQL
/// never got, some in the batch being written and some in the open batch behind it; returns
/// how many increments those are. Before that, 10 increments (total 50) reach PostgreSQL.
fn force_a_stop_while_postgres_is_down(cluster: &DedicatedCluster, tally: &TallyProcess) -> u64 {
    let http = reqwest::blocking::Client::new();
    let url = cluster.database().url;
    for i in 0..10 {
        assert_eq!(post_increment(&http, tally, &format!("w{}", i % 3), 5), 202);
    }
    wait_until(
        "the first increments to reach PostgreSQL",
        Duration::from_secs(20),
        || sum(&totals(&url)) == 50,
    );
    cluster.stop_immediate().unwrap();
    // Values of 3 on 4 keys: the count is of increments, neither of keys nor of their sum.
    for i in 0..12 {
        assert_eq!(post_increment(&http, tally, &format!("a{}", i % 4), 3), 202);
    }
    wait_for_log(tally, "flush failed");
    // The flusher now retries its batch; these wait in the open one.
    for i in 0..7 {
        assert_eq!(post_increment(&http, tally, &format!("b{}", i % 2), 2), 202);
    }
    tally.signal(libc::SIGTERM);
    wait_for_log(tally, "shutting down");
    tally.signal(libc::SIGTERM);
    12 + 7
}

#[test]
fn a_forced_stop_in_memory_mode_exits_1_and_logs_how_many_increments_it_dropped() {
    let cluster = dedicated_cluster();
    let url = cluster.database().url;
    let dir = tempfile::tempdir().unwrap();
    let mut tally = TallyProcess::start(
        dir.path(),
        &["--durability", "memory", "--flush-interval", "200ms"],
        &[("DATABASE_URL", &url)],
    );
    let dropped = force_a_stop_while_postgres_is_down(&cluster, &tally);
    let status = tally.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "log:\n{}", tally.log());
    let line = log_line(&tally, "dropped").unwrap_or_else(|| panic!("{}", tally.log()));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["increments"], dropped, "{line}");
    assert!(
        line["keys"].as_u64().is_some_and(|k| (6..=12).contains(&k)),
        "{line}"
    );

    cluster.start_again().unwrap();
    assert_eq!(
        sum(&totals(&url)),
        50,
        "the dropped increments are lost, as logged"
    );
}

#[test]
fn a_forced_stop_in_journal_mode_exits_0_and_the_next_start_writes_what_it_held() {
    let cluster = dedicated_cluster();
    let url = cluster.database().url;
    let dir = tempfile::tempdir().unwrap();
    let mut tally = TallyProcess::start(
        dir.path(),
        &["--flush-interval", "200ms"],
        &[("DATABASE_URL", &url)],
    );
    let held = force_a_stop_while_postgres_is_down(&cluster, &tally);
    let status = tally.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        tally.log()
    );
    let line = log_line(&tally, "the journal holds").unwrap_or_else(|| panic!("{}", tally.log()));
    assert_eq!(line["increments"], held, "{line}");

    cluster.start_again().unwrap();
    let mut next = TallyProcess::start(dir.path(), &[], &[("DATABASE_URL", &url)]);
    next.signal(libc::SIGTERM);
    assert!(
        next.wait(Duration::from_secs(30)).success(),
        "{}",
        next.log()
    );
    assert_eq!(
        sum(&totals(&url)),
        50 + 12 * 3 + 7 * 2,
        "the next start wrote them"
    );
}

/// Reads an HTTP/1.1 answer's status and text (head and what came of the body) from `conn`,
/// or `None` when the connection is closed (or reset) before an answer.
fn read_answer(conn: &mut std::net::TcpStream) -> Option<(u16, String)> {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // Error bodies are small and sent with the head; give them a moment to arrive.
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    if let Ok(n) = conn.read(&mut buf) {
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

#[test]
fn a_request_still_running_after_the_drain_timeout_is_refused_not_lost() {
    use std::io::Write;
    let cluster = dedicated_cluster();
    let url = cluster.database().url;
    let dir = tempfile::tempdir().unwrap();
    // A long interval: nothing is flushed before the final flush.
    let mut tally = TallyProcess::start(
        dir.path(),
        &[
            "--durability",
            "memory",
            "--flush-interval",
            "10s",
            "--drain-timeout",
            "1s",
        ],
        &[("DATABASE_URL", &url)],
    );
    let http = reqwest::blocking::Client::new();
    for _ in 0..5 {
        assert_eq!(post_increment(&http, &tally, "early", 1), 202);
    }

    let body = br#"{"key": "late", "value": 7}"#;
    let mut conn = std::net::TcpStream::connect(tally.addr).unwrap();
    write!(
        conn,
        "POST /increment HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..10]).unwrap();

    // PostgreSQL down: the final flush keeps the process alive past the drain timeout.
    cluster.stop_immediate().unwrap();
    tally.signal(libc::SIGTERM);
    // Proof that the request was in flight: the server gave up waiting for it.
    wait_for_log(&tally, "did not finish in time");
    // The final flush has cut its batch (and failed).
    wait_for_log(&tally, "flush failed");

    conn.write_all(&body[10..]).unwrap();
    if let Some((status, answer)) = read_answer(&mut conn) {
        assert!(
            !(200..300).contains(&status),
            "a request answered after the final cut was acknowledged and never written:\n{answer}"
        );
        assert_eq!(status, 503, "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
        assert!(answer.contains(r#""code":"shutting_down""#), "{answer}");
    }

    cluster.start_again().unwrap();
    let status = tally.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        tally.log()
    );
    assert_eq!(
        totals(&url),
        vec![("early".to_owned(), 5)],
        "PostgreSQL has exactly what was acknowledged"
    );
}

#[test]
fn a_second_signal_during_the_drain_delay_stops_waiting_for_requests_in_flight() {
    use std::io::Write;
    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut tally = TallyProcess::start(
        dir.path(),
        &["--drain-delay", "5m", "--drain-timeout", "5m"],
        &[("DATABASE_URL", &db.url)],
    );
    // A request that never finishes: its body never comes.
    let mut conn = std::net::TcpStream::connect(tally.addr).unwrap();
    write!(
        conn,
        "POST /increment HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    let http = reqwest::blocking::Client::new();
    assert_eq!(post_increment(&http, &tally, "k", 1), 202);
    tally.signal(libc::SIGTERM);
    wait_for_log(&tally, "draining");
    tally.signal(libc::SIGTERM);
    let status = tally.wait(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        tally.log()
    );
    assert_eq!(totals(&db.url), vec![("k".to_owned(), 1)]);
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
