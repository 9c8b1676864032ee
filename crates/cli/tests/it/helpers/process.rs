//! A real `tally` process, for what only a process can show: signals, exit statuses, a
//! managed PostgreSQL left behind or not. It logs JSON, and the start-up line tells the port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct TallyProcess {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// The `tally` binary of this build.
pub fn tally_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

impl TallyProcess {
    /// Starts `tally serve` on a free loopback port with `args` and waits until it serves.
    pub fn start(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> TallyProcess {
        Self::start_wrapped(&[], data_dir, args, envs)
    }

    /// Like [`start`](Self::start), through a program that execs it (e.g. `fiu-run -x`), so
    /// that the pid is still Tally's.
    pub fn start_wrapped(
        wrapper: &[&str],
        data_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> TallyProcess {
        let mut cmd = match wrapper {
            [] => tally_command(),
            [program, rest @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(env!("CARGO_BIN_EXE_tally"));
                cmd
            }
        };
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tally");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line.clone());
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == "tally is serving"
                    {
                        let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_owned());
                    }
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr.parse().expect("a socket address in the start-up line"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "tally did not start; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        TallyProcess { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill failed");
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for tally")
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tally") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "tally did not exit in {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The JSON log lines so far whose message contains `text`.
    pub fn log_lines(&self, text: &str) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
            .collect()
    }

    /// Waits (30 s at most) until `count` log lines have a message containing `text`, and
    /// returns them.
    pub fn wait_for_log_lines(&self, text: &str, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.log_lines(text);
            if lines.len() >= count {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "tally never logged {text:?} {count} times; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TallyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
