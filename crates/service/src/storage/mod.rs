//! Everything that talks to PostgreSQL lives below this module. Which database a node uses, an
//! external one or a local [`ManagedPostgres`](tally_postgres::ManagedPostgres), is decided in
//! `crate::database`.
//!
//! [`Storage`] is a cheap, clonable handle over a connection pool with a small API named for
//! what Tally needs: apply a flush batch exactly once, apply one increment synchronously, read
//! a total. The SQL sits next to the function that runs it, in `counters.rs` and here.
//!
//! A server that vanishes without a reset leaves its connections silent: no answer, no error,
//! no end of stream. So every statement of a flush, a request, a read or the node's claim
//! waits at most `--db-timeout` for its answer (`bounded`), a connection whose statement got
//! no answer is closed instead of going back to the pool (`Lease`), and TCP keepalives and a
//! TCP user timeout let the kernel find dead peers of idle connections and of unacknowledged
//! writes (which is all that bounds a migration: one may rightly take long).

/// The start of the checked upserts (a flush batch's, `counters.rs`, and a sync group's,
/// `sync_group.rs`): the keys of `$1` with their deltas of `$2`, each marked with whether its
/// total stays in the signed 64-bit range, and the upsert of those that fit. Rows are written
/// in the order the keys were given (`ord`: sorted by bytes, as every writer sorts them),
/// never the collation's, which in a database whose collation is not `C` would lock them in
/// another order than other writers and could deadlock with them. One text for both, so the
/// two cannot drift apart. A macro, because `concat!` takes only literals.
macro_rules! upsert_fitting {
    () => {
        "
    WITH input AS (
        SELECT i.ord, i.key, i.delta,
               c.value IS NULL
               OR c.value::numeric + i.delta BETWEEN -9223372036854775808 AND 9223372036854775807
               AS fits
        FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS i(key, delta, ord)
        LEFT JOIN counters c ON c.key = i.key
    ), fitting AS (
        INSERT INTO counters AS c (key, value, updated_at)
        SELECT key, delta, now() FROM input WHERE fits ORDER BY ord
        ON CONFLICT (key) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at
        "
    };
}

mod access;
mod claim;
mod counters;
mod idempotency;
mod items;
mod migrations;
mod sync_group;

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tally_postgres::Endpoint;

pub use access::{AddUserError, StoredKey, StoredUser};
pub use claim::{Applied, NodeClaim, Owner};
pub use counters::{BatchOutcome, RejectReason, Rejected, Replay};
pub use idempotency::{Effect, PURGE_ROWS, Stored, Work};

/// How long to wait for a connection to open, and for a free one from the pool.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP keepalive on every connection: after this long without traffic the kernel probes the
/// peer every [`KEEPALIVE_INTERVAL`], and gives up after [`KEEPALIVE_RETRIES`] unanswered
/// probes. Without it, an idle connection to a vanished server looks alive for hours (the
/// system default waits 2 hours before the first probe).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// The keepalive idle time tokio-postgres (like libpq) uses when the connection string sets
/// none: seeing it means "unset".
const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// How long written data may stay unacknowledged before the kernel closes the connection
/// (`TCP_USER_TIMEOUT`), instead of retransmitting for about 15 minutes. It also bounds the
/// keepalive probing above.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A handle to the database. Clones share one pool.
#[derive(Clone)]
pub struct Storage {
    pool: Pool,
    /// For connections outside the pool (the node's lock).
    endpoint: Endpoint,
    /// Longest wait for one statement's answer (`--db-timeout`).
    timeout: Duration,
}

/// A database failure, sorted by what the caller can do about it. Cloned for each request of
/// a sync group that one failure answers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// A total would leave the signed 64-bit range; `key` names it when known.
    #[error("the total would leave the signed 64-bit range")]
    OutOfRange { key: Option<String> },
    /// PostgreSQL refused the statement's data for good: SQLSTATE class 22 (data exception: a
    /// value out of range, a string too long), 23 (integrity constraint violation: an
    /// operator's CHECK, NOT NULL, unique or foreign key constraint) or 54 (program limit
    /// exceeded: an index row too large, a statement too complex). The same statement would
    /// fail on every retry.
    #[error("the database refused the data ({sqlstate}): {message}")]
    Refused { sqlstate: String, message: String },
    /// The database could not be reached or failed; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement got no answer within the database timeout; its connection was closed. The
    /// statement may have been applied.
    #[error("the database did not answer within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The connection failed while a statement was under way, without an answer from the
    /// server: the statement may have been applied.
    #[error("the database connection failed during a statement: {0}")]
    Interrupted(String),
    /// The database holds something Tally did not expect (e.g. a missing node row).
    #[error("unexpected database state: {0}")]
    Invariant(String),
    /// The database does not store text as UTF-8, so some keys Tally accepts could never be
    /// written: their flush would fail for good. Refused at start.
    #[error(
        "the database's encoding is {0}, but Tally needs UTF8 to store every key it accepts \
         (create the database with ENCODING 'UTF8')"
    )]
    NotUtf8(String),
    /// A live process already holds this node id.
    #[error("node id `{0}` is in use by a running node (two nodes must not share a node id)")]
    NodeInUse(String),
    /// Another process took this node id over: this one must not flush.
    #[error("node id `{0}` was taken over by another process; this process may not flush")]
    Fenced(String),
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        // `Display` of a server error is only "db error"; the server's message says why.
        match e.as_db_error() {
            Some(db) if refuses_the_data(db.code()) => StorageError::Refused {
                sqlstate: db.code().code().to_owned(),
                message: db.message().to_owned(),
            },
            Some(db) => {
                StorageError::Unavailable(format!("{}: {}", db.code().code(), db.message()))
            }
            None => StorageError::Interrupted(with_causes(&e)),
        }
    }
}

/// An error's message followed by its causes': tokio-postgres's own says only "error
/// performing TLS handshake" or "error connecting to server", and the cause says why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    message
}

impl StorageError {
    /// Whether the statement that failed may still have been applied: no answer came.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            StorageError::TimedOut(_) | StorageError::Interrupted(_)
        )
    }
}

/// Whether an error says that PostgreSQL refuses a statement's data itself, so that retrying
/// the same statement can never succeed: the classes of [`StorageError::Refused`]. Program
/// limits (54) are among them because a limit reached by a statement's size goes away as its
/// part of a batch is halved, and one reached by a single key never does. Everything else
/// waits for a retry: connection errors (08), insufficient resources (53: disk full, too many
/// connections), missing privileges and objects (42), a read-only server (25006),
/// serialization failures and deadlocks (40), cancelled statements (57): time, or an
/// operator, fixes those, and no acknowledged increment may be dropped for them.
fn refuses_the_data(code: &tokio_postgres::error::SqlState) -> bool {
    matches!(code.code().get(..2), Some("22" | "23" | "54"))
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            // No connection could be had: no statement was sent.
            deadpool_postgres::PoolError::Backend(e) => match StorageError::from(e) {
                StorageError::Interrupted(why) => StorageError::Unavailable(why),
                other => other,
            },
            other => StorageError::Unavailable(other.to_string()),
        }
    }
}

/// Where the database is, fit for a log line: never the password.
pub struct DatabaseDescription(String);

impl fmt::Display for DatabaseDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Describes a connection configuration without its password.
pub fn describe(config: &tokio_postgres::Config) -> DatabaseDescription {
    use tokio_postgres::config::Host;
    // A libpq URI that psql takes as it is: a socket directory, or more than one host, goes in
    // the query (`?host=/run/postgresql&port=5432`), where a path needs no escaping.
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let user = config
        .get_user()
        .map(|u| format!("{}@", escape(u)))
        .unwrap_or_default();
    let dbname = config.get_dbname().map(escape).unwrap_or_default();
    let simple = hosts.len() <= 1
        && ports.len() <= 1
        && !config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, Host::Unix(_)));
    DatabaseDescription(if simple {
        let host = hosts.first().map_or("", String::as_str);
        let port = ports.first().map(|p| format!(":{p}")).unwrap_or_default();
        format!("postgresql://{user}{host}{port}/{dbname}")
    } else {
        let hosts: Vec<String> = hosts.iter().map(|h| escape_path(h)).collect();
        let mut query = vec![format!("host={}", hosts.join(","))];
        if !ports.is_empty() {
            query.push(format!("port={}", ports.join(",")));
        }
        format!("postgresql://{user}/{dbname}?{}", query.join("&"))
    })
}

/// Like [`escape`], keeping the slashes of a socket directory (libpq decodes the rest).
fn escape_path(s: &str) -> String {
    s.split('/').map(escape).collect::<Vec<_>>().join("/")
}

/// Percent-encodes what a URI's user or database name cannot hold as it is.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Tally's choices for what a connection string leaves unset: a connect timeout, an
/// application name, TCP keepalives and a TCP user timeout. Whatever the string sets, it keeps
/// (`keepalives=0` turns keepalives off, and with them Tally's keepalive timings).
fn with_connection_defaults(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("tally");
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_keepalives() {
        if config.get_keepalives_idle() == DEFAULT_KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
    }
    config
}

/// Awaits one statement's answer for at most `limit`.
async fn bounded<T>(
    limit: Duration,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(limit, statement).await {
        Ok(answer) => answer.map_err(StorageError::from),
        Err(_) => Err(StorageError::TimedOut(limit)),
    }
}

/// A pooled connection that goes back to the pool only once its work has ended with an
/// answer. A connection whose statement timed out, or whose caller gave up waiting, may be
/// silent for good: it is closed instead (taken out of the pool), so that the next caller, a
/// retry among them, opens a new one.
struct Lease {
    client: Option<Object>,
    answered: bool,
}

impl Lease {
    fn client(&mut self) -> &mut Object {
        self.client.as_mut().expect("held until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.answered
            && let Some(client) = self.client.take()
        {
            // Dropping the connection aborts its task, which closes the socket.
            drop(Object::take(client));
        }
    }
}

impl Storage {
    /// Runs `work` on a pooled connection whose statements each wait at most the database
    /// timeout (through [`bounded`]); see [`Lease`] for what becomes of the connection.
    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut Object, Duration) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut lease = Lease {
            client: Some(self.pool.get().await?),
            answered: false,
        };
        let result = work(lease.client(), self.timeout).await;
        lease.answered = !matches!(result, Err(StorageError::TimedOut(_)));
        result
    }

    /// Builds the pool. Connections open lazily; call [`Storage::migrate`] or
    /// [`Storage::ping`] to find out whether the database answers.
    ///
    /// `timeout` bounds the wait for each statement's answer (`--db-timeout`).
    pub fn connect(
        mut endpoint: Endpoint,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Storage, StorageError> {
        endpoint.config = with_connection_defaults(endpoint.config);
        let manager = Manager::from_config(
            endpoint.config.clone(),
            endpoint.tls(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        Ok(Storage {
            pool,
            endpoint,
            timeout,
        })
    }

    /// Applies the embedded migrations (`crates/service/migrations/`).
    ///
    /// Not bounded by the database timeout: a migration may rightly take long on a big table.
    /// A server that vanishes meanwhile is found by the TCP user timeout and keepalives.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let mut client = self.pool.get().await?;
        migrations::run(&mut client).await
    }

    /// Refuses a database whose text is not UTF-8 ([`StorageError::NotUtf8`]).
    pub async fn check_encoding(&self) -> Result<(), StorageError> {
        let encoding: String = self
            .with_client(async |client, limit| {
                let row = bounded(
                    limit,
                    client.query_one("SELECT current_setting('server_encoding')", &[]),
                )
                .await?;
                Ok(row.get(0))
            })
            .await?;
        if encoding == "UTF8" {
            Ok(())
        } else {
            Err(StorageError::NotUtf8(encoding))
        }
    }

    /// Answers whether the database takes a query now.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.with_client(async |client, limit| {
            bounded(limit, client.simple_query("SELECT 1")).await?;
            Ok(())
        })
        .await
    }

    /// A handle on the same database with a pool of its own, for work that runs on another
    /// runtime: a connection belongs to the runtime that opened it.
    pub fn separate_pool(&self, size: usize) -> Result<Storage, StorageError> {
        Storage::connect(self.endpoint.clone(), size, self.timeout)
    }

    /// The pool's size limit, open connections and idle ones.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// Closes the pool: idle connections are dropped and no new ones are made.
    pub fn close(&self) {
        self.pool.close();
    }
}

/// Epochs and journal sequence numbers are stored as `bigint`; they start at 0 or 1 and only
/// grow. (Batch numbers convert themselves: [`BatchSeq::to_stored`].)
fn from_bigint(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

fn to_bigint(n: u64) -> i64 {
    i64::try_from(n).expect("epochs and sequence numbers stay far below 2^63")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_is_a_uri_psql_takes_without_the_password() {
        let described = |s: &str| describe(&s.parse().unwrap()).to_string();
        assert_eq!(
            described("host='/tmp/tally data/postgres' port=5432 user=tally dbname=tally"),
            "postgresql://tally@/tally?host=/tmp/tally%20data/postgres&port=5432"
        );
        assert_eq!(
            described("postgres://ada:s3cret@db.example:6432/counts"),
            "postgresql://ada@db.example:6432/counts"
        );
        assert_eq!(
            described("postgres://ada@a:1,b:2/counts"),
            "postgresql://ada@/counts?host=a,b&port=1,2"
        );
    }

    fn defaults_for(url: &str) -> tokio_postgres::Config {
        with_connection_defaults(url.parse().unwrap())
    }

    #[test]
    fn connections_get_keepalives_and_a_user_timeout_unless_the_url_sets_them() {
        let c = defaults_for("postgresql://tally@db.example/tally");
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(c.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(c.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(c.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(c.get_connect_timeout(), Some(&CONNECT_TIMEOUT));

        let c = defaults_for(
            "host=db.example user=tally keepalives_idle=60 keepalives_interval=7 \
             keepalives_retries=9 tcp_user_timeout=120",
        );
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(7)));
        assert_eq!(c.get_keepalives_retries(), Some(9));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(120)));

        let c = defaults_for("host=db.example user=tally keepalives=0");
        assert!(!c.get_keepalives(), "the URL turned keepalives off");
        assert_eq!(c.get_keepalives_interval(), None);
    }

    #[test]
    fn only_errors_about_the_data_itself_count_as_refusals() {
        use tokio_postgres::error::SqlState;
        for about_the_data in [
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::STRING_DATA_RIGHT_TRUNCATION,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::CHECK_VIOLATION,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::UNIQUE_VIOLATION,
            SqlState::FOREIGN_KEY_VIOLATION,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
        ] {
            assert!(refuses_the_data(&about_the_data), "{about_the_data:?}");
        }
        for fixed_by_time_or_an_operator in [
            SqlState::CONNECTION_FAILURE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::DISK_FULL,
            SqlState::OUT_OF_MEMORY,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_TABLE,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::QUERY_CANCELED,
            SqlState::LOCK_NOT_AVAILABLE,
        ] {
            assert!(
                !refuses_the_data(&fixed_by_time_or_an_operator),
                "{fixed_by_time_or_an_operator:?}"
            );
        }
    }
}
