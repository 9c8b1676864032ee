//! A real HAProxy in front of real `tally` processes, configured as `deploy/local-cluster`
//! configures it (active `GET /ready` checks, retries only for connections that were never
//! made), with faster checks so that tests wait little, and an admin socket through which a
//! test reads what the balancer thinks of each node and tells it where a restarted node now
//! listens.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often HAProxy checks each node, and how many checks in a row flip its state. Two
/// failed checks at 250 ms take a node out within about half a second; a node's drain delay
/// must be well above that.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
pub const CHECKS_TO_FLIP: u32 = 2;

/// The backend's name in the generated configuration; servers are `node0`, `node1`, ...
pub const BACKEND: &str = "nodes";

/// The configuration for a balancer on `port` in front of `servers` (named `node0`, ...),
/// with its admin socket at `socket`.
pub fn config(port: u16, socket: &Path, servers: &[SocketAddr]) -> String {
    let inter = CHECK_INTERVAL.as_millis();
    let fall = CHECKS_TO_FLIP;
    let mut cfg = format!(
        "global
    # In the foreground (-db), server state changes (UP, DOWN) go to stderr, which the test
    # keeps.
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    # Longer than any pause a test inflicts on a node: a request waiting on a paused node
    # must get its answer once the node resumes, not a 504.
    timeout server 30s
    timeout check 1s
    # An increment is not idempotent: only a request whose connection could not be made
    # (so no node saw it) may be sent again, to another node.
    retries 3
    retry-on conn-failure
    option redispatch 1

frontend tally
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter {inter} fall {fall} rise {fall}
",
        socket = socket.display(),
    );
    for (i, addr) in servers.iter().enumerate() {
        cfg.push_str(&format!("    server node{i} {addr}\n"));
    }
    cfg
}

/// A running `haproxy`, stopped when dropped.
pub struct Haproxy {
    child: Child,
    /// The port clients send to.
    pub port: u16,
    socket: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

/// One server as `show stat` reports it.
#[derive(Debug, Clone)]
pub struct ServerStat {
    /// `UP`, `DOWN`, or a transition such as `UP 1/2` (going down) or `DOWN 1/2` (going up).
    pub status: String,
    /// The last health check's outcome, e.g. `L7OK`, `L7STS` (a 503), `L7TOUT`, `L4CON`.
    pub check: String,
}

impl Haproxy {
    /// Writes a configuration into `dir` and starts HAProxy in the foreground on a free port.
    /// Panics, naming `scripts/test`, when `haproxy` is not installed: the cluster tests are
    /// about a real balancer, and skipping them would hide that nothing was shown.
    pub fn start(dir: &Path, servers: &[SocketAddr]) -> Haproxy {
        if Command::new("haproxy").arg("-v").output().is_err() {
            panic!(
                "haproxy is not installed; the cluster tests run a real HAProxy in front of the \
                 nodes. scripts/test installs it (Debian/Ubuntu: apt-get install haproxy)"
            );
        }
        let port = free_port();
        let socket = dir.join("haproxy.sock");
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, config(port, &socket, servers)).unwrap();
        let mut child = Command::new("haproxy")
            .arg("-db") // foreground: the test owns the process and reads its stderr
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = child.stderr.take().unwrap();
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut haproxy = Haproxy {
            child,
            port,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while haproxy.try_command("show info").is_err() {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", haproxy.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not open its admin socket:\n{}",
                haproxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }

    /// The balancer's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Everything HAProxy wrote to stderr so far (start-up warnings, server state changes).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Runs one command of HAProxy's runtime API and returns its answer.
    pub fn command(&self, command: &str) -> String {
        self.try_command(command)
            .unwrap_or_else(|error| panic!("haproxy runtime API `{command}`: {error}"))
    }

    fn try_command(&self, command: &str) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// Every server of the backend, by name, from `show stat`'s CSV.
    pub fn servers(&self) -> BTreeMap<String, ServerStat> {
        let csv = self.command("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .expect("show stat starts with a header")
            .split(',')
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("show stat has no {name} column"))
        };
        let (px, sv, status, check) = (
            column("pxname"),
            column("svname"),
            column("status"),
            column("check_status"),
        );
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > check && f[px] == BACKEND && f[sv].starts_with("node"))
            .map(|f| {
                (
                    f[sv].to_owned(),
                    ServerStat {
                        status: f[status].to_owned(),
                        check: f[check].to_owned(),
                    },
                )
            })
            .collect()
    }

    /// Waits until HAProxy reports `server` exactly `UP` or `DOWN`, at most `timeout`.
    pub async fn wait_for(&self, server: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let servers = self.servers();
            if servers.get(server).is_some_and(|s| s.status == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy never reported {server} {want} within {timeout:?}: {servers:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Points `server` at a new address, as service discovery would for a node that came
    /// back elsewhere. (Test nodes bind port 0, so a restarted node gets a new port.)
    pub fn move_server(&self, server: &str, addr: SocketAddr) {
        let answer = self.command(&format!(
            "set server {BACKEND}/{server} addr {} port {}",
            addr.ip(),
            addr.port()
        ));
        assert!(
            answer.contains("changed"),
            "haproxy did not move {server} to {addr}: {answer}"
        );
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now. Another process could take it before HAProxy
/// binds it; on a test machine that is rare enough, and HAProxy then fails loudly.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
