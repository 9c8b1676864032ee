//! A TCP proxy between Tally and PostgreSQL that makes two network faults on demand.
//!
//! - A lost commit answer: once armed, it forwards the next `COMMIT` to the server and then
//!   closes both sides without relaying the reply. The server commits; the client never learns
//!   it. That is the ambiguous commit of FAULTS.md (row 5).
//! - A host that vanishes without a reset (row 13): every connection open at that moment stops
//!   relaying bytes in both directions, while its sockets stay open, so neither end sees a
//!   reset or an end of stream; both just wait. Connections opened afterwards work normally,
//!   as they would to a database that came back at another address.
//!
//! It understands just enough of the PostgreSQL protocol to find message boundaries in the
//! client's stream: untyped start-up messages, then `tag: u8, length: i32, body`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

use super::postgres::TestDatabase;

/// Where the proxy connects: PostgreSQL's Unix socket or TCP address.
#[derive(Clone, Debug)]
pub enum Upstream {
    Unix(PathBuf),
    Tcp(String),
}

impl Upstream {
    /// The server of a tokio-postgres configuration.
    pub fn of(config: &tokio_postgres::Config) -> Upstream {
        let port = config.get_ports().first().copied().unwrap_or(5432);
        match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Unix(dir)) => {
                Upstream::Unix(dir.join(format!(".s.PGSQL.{port}")))
            }
            Some(tokio_postgres::config::Host::Tcp(host)) => {
                Upstream::Tcp(format!("{host}:{port}"))
            }
            None => Upstream::Tcp(format!("localhost:{port}")),
        }
    }
}

/// What the test asks of every connection the proxy relays.
struct Faults {
    /// Lose the answer of the next COMMIT.
    lose_commit_answer: AtomicBool,
    /// Go silent at the next COMMIT, without forwarding it.
    silence_at_commit: AtomicBool,
    lost_answers: AtomicUsize,
    silenced_commits: AtomicUsize,
    /// Raised to silence every connection opened before; a connection remembers the value it
    /// was opened under.
    silence_epoch: watch::Sender<u64>,
}

impl Faults {
    fn silence_all(&self) {
        self.silence_epoch.send_modify(|epoch| *epoch += 1);
    }
}

pub struct FaultProxy {
    pub port: u16,
    faults: Arc<Faults>,
}

impl FaultProxy {
    /// Starts the proxy on a free loopback port.
    pub async fn start(upstream: Upstream) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults {
            lose_commit_answer: AtomicBool::new(false),
            silence_at_commit: AtomicBool::new(false),
            lost_answers: AtomicUsize::new(0),
            silenced_commits: AtomicUsize::new(0),
            silence_epoch: watch::Sender::new(0),
        });
        let shared = faults.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, faults) = (upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    let _ = relay(client, upstream, faults).await;
                });
            }
        });
        FaultProxy { port, faults }
    }

    /// `db` reached through this proxy, over TCP.
    pub fn database(&self, db: &TestDatabase) -> TestDatabase {
        let direct = db.config();
        let mut through_proxy = tokio_postgres::Config::new();
        through_proxy
            .host("127.0.0.1")
            .port(self.port)
            .user(direct.get_user().unwrap())
            .dbname(direct.get_dbname().unwrap());
        if let Some(password) = direct.get_password() {
            through_proxy.password(password);
        }
        TestDatabase {
            url: tally_postgres::to_connection_string(&through_proxy),
            name: db.name.clone(),
        }
    }

    /// The next COMMIT's answer will be lost.
    pub fn arm(&self) {
        self.faults.lose_commit_answer.store(true, Ordering::SeqCst);
    }

    /// How many commit answers were lost so far.
    pub fn dropped_commits(&self) -> usize {
        self.faults.lost_answers.load(Ordering::SeqCst)
    }

    /// Every connection open now stops relaying, both ways, and keeps its sockets open.
    pub fn silence(&self) {
        self.faults.silence_all();
    }

    /// At the next COMMIT, which is not forwarded, every connection open then goes silent as
    /// [`FaultProxy::silence`] makes it: the host vanished in the middle of a transaction, whose
    /// server side still holds its locks.
    pub fn silence_at_next_commit(&self) {
        self.faults.silence_at_commit.store(true, Ordering::SeqCst);
    }

    /// How many COMMITs were swallowed by [`FaultProxy::silence_at_next_commit`] so far.
    pub fn silenced_commits(&self) -> usize {
        self.faults.silenced_commits.load(Ordering::SeqCst)
    }
}

/// Resolves once connections opened under `born` must go silent.
async fn silenced(mut epoch: watch::Receiver<u64>, born: u64) {
    if epoch.wait_for(|e| *e > born).await.is_err() {
        // The proxy is gone; so is the test.
        std::future::pending::<()>().await;
    }
}

/// Holds both halves of a connection open, relaying nothing, for as long as the test runs.
async fn stay_silent<A, B>(_a: A, _b: B) {
    std::future::pending::<()>().await;
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

async fn relay(client: TcpStream, upstream: Upstream, faults: Arc<Faults>) -> std::io::Result<()> {
    let born = *faults.silence_epoch.borrow();
    client.set_nodelay(true)?;
    let (server_read, mut server_write): (Reader, Writer) = match &upstream {
        Upstream::Unix(path) => {
            let (r, w) = UnixStream::connect(path).await?.into_split();
            (Box::new(r), Box::new(w))
        }
        Upstream::Tcp(addr) => {
            let (r, w) = TcpStream::connect(addr).await?.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    let (mut client_read, mut client_write) = client.into_split();

    // Server to client: plain copying, until told to stop or to go silent.
    let (cut_tx, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
    let silence = silenced(faults.silence_epoch.subscribe(), born);
    let backward = tokio::spawn(async move {
        let mut server_read = server_read;
        let mut buf = vec![0u8; 64 * 1024];
        tokio::pin!(silence);
        loop {
            tokio::select! {
                _ = &mut cut_rx => return,
                _ = &mut silence => return stay_silent(server_read, client_write).await,
                n = server_read.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if client_write.write_all(&buf[..n]).await.is_err() { return },
                },
            }
        }
    });

    // Client to server: message by message, watching for COMMIT.
    let silence = silenced(faults.silence_epoch.subscribe(), born);
    tokio::pin!(silence);
    let mut startup = true;
    loop {
        let message = tokio::select! {
            _ = &mut silence => {
                stay_silent(client_read, server_write).await;
                return Ok(());
            }
            message = read_message(&mut client_read, startup) => message?,
        };
        let Message {
            bytes,
            is_commit,
            more_startup,
        } = message;
        startup = more_startup;
        if is_commit && faults.silence_at_commit.swap(false, Ordering::SeqCst) {
            faults.silenced_commits.fetch_add(1, Ordering::SeqCst);
            faults.silence_all();
            stay_silent(client_read, server_write).await;
            return Ok(());
        }
        if is_commit && faults.lose_commit_answer.swap(false, Ordering::SeqCst) {
            let _ = cut_tx.send(());
            server_write.write_all(&bytes).await?;
            server_write.flush().await?;
            faults.lost_answers.fetch_add(1, Ordering::SeqCst);
            // Give the server time to commit before both sides go away.
            tokio::time::sleep(Duration::from_millis(200)).await;
            backward.abort();
            return Ok(());
        }
        server_write.write_all(&bytes).await?;
    }
}

/// One message of the client's stream, whole.
struct Message {
    bytes: Vec<u8>,
    is_commit: bool,
    /// Another untyped start-up message follows (after an SSL or GSS encryption request).
    more_startup: bool,
}

async fn read_message(
    client: &mut (impl AsyncRead + Unpin),
    startup: bool,
) -> std::io::Result<Message> {
    if startup {
        let len = client.read_i32().await?;
        let mut body = vec![0u8; len as usize - 4];
        client.read_exact(&mut body).await?;
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        return Ok(Message {
            bytes: [len.to_be_bytes().as_slice(), &body].concat(),
            is_commit: false,
            more_startup: code == 80_877_103 || code == 80_877_104,
        });
    }
    let tag = client.read_u8().await?;
    let len = client.read_i32().await?;
    let mut body = vec![0u8; len as usize - 4];
    client.read_exact(&mut body).await?;
    let is_commit = tag == b'Q'
        && std::str::from_utf8(&body).is_ok_and(|sql| {
            sql.trim_end_matches('\0')
                .trim()
                .eq_ignore_ascii_case("COMMIT")
        });
    Ok(Message {
        bytes: [[tag].as_slice(), &len.to_be_bytes(), &body].concat(),
        is_commit,
        more_startup: false,
    })
}
