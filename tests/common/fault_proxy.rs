//! A TCP proxy between Tally and PostgreSQL that can lose a commit's answer: once armed, it
//! forwards the next `COMMIT` to the server and then closes both sides without relaying the
//! reply. The server commits; the client never learns it. That is the ambiguous commit of
//! FAULTS.md, made on demand.
//!
//! It understands just enough of the PostgreSQL protocol to find message boundaries in the
//! client's stream: untyped start-up messages, then `tag: u8, length: i32, body`.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

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

pub struct FaultProxy {
    pub port: u16,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// Starts the proxy on a free loopback port.
    pub async fn start(upstream: Upstream) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (a, d) = (armed.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, armed, dropped) = (upstream.clone(), a.clone(), d.clone());
                tokio::spawn(async move {
                    let _ = relay(client, upstream, armed, dropped).await;
                });
            }
        });
        FaultProxy {
            port,
            armed,
            dropped,
        }
    }

    /// The next COMMIT's answer will be lost.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many commit answers were lost so far.
    pub fn dropped_commits(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

async fn relay(
    client: TcpStream,
    upstream: Upstream,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let (server_read, mut server_write): (
        Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    ) = match &upstream {
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

    // Server to client: plain copying, until told to stop.
    let (cut_tx, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
    let backward = tokio::spawn(async move {
        let mut server_read = server_read;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                _ = &mut cut_rx => return,
                n = server_read.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if client_write.write_all(&buf[..n]).await.is_err() { return },
                },
            }
        }
    });

    // Client to server: message by message, watching for COMMIT.
    let mut startup = true;
    loop {
        let message = if startup {
            let len = client_read.read_i32().await?;
            let mut body = vec![0u8; len as usize - 4];
            client_read.read_exact(&mut body).await?;
            // An SSL or GSS encryption request is followed by another untyped message.
            let code = u32::from_be_bytes(body[..4].try_into().unwrap());
            startup = code == 80_877_103 || code == 80_877_104;
            [len.to_be_bytes().as_slice(), &body].concat()
        } else {
            let tag = client_read.read_u8().await?;
            let len = client_read.read_i32().await?;
            let mut body = vec![0u8; len as usize - 4];
            client_read.read_exact(&mut body).await?;
            let is_commit = tag == b'Q'
                && std::str::from_utf8(&body).is_ok_and(|sql| {
                    sql.trim_end_matches('\0')
                        .trim()
                        .eq_ignore_ascii_case("COMMIT")
                });
            if is_commit && armed.swap(false, Ordering::SeqCst) {
                let _ = cut_tx.send(());
                server_write.write_all(&[tag]).await?;
                server_write.write_all(&len.to_be_bytes()).await?;
                server_write.write_all(&body).await?;
                server_write.flush().await?;
                dropped.fetch_add(1, Ordering::SeqCst);
                // Give the server time to commit before both sides go away.
                tokio::time::sleep(Duration::from_millis(200)).await;
                backward.abort();
                return Ok(());
            }
            [[tag].as_slice(), &len.to_be_bytes(), &body].concat()
        };
        server_write.write_all(&message).await?;
    }
}
