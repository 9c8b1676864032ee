//! A PostgreSQL cluster that Tally creates, starts and stops itself.
//!
//! Without `DATABASE_URL`, Tally keeps its totals in a cluster of its own under its data
//! directory, run by the PostgreSQL server programs installed on the machine
//! ([`PgBinaries::find`]). [`ManagedPostgres::start`] creates the cluster on first use, starts
//! it (or adopts the server an earlier, killed Tally left running) and hands out connection
//! settings. Nothing here stops the server implicitly (there is no `Drop`): only the owner knows
//! when its final flush is done, and a Tally that was killed must find its server where it left
//! it.
//!
//! Layout, for a cluster directory `<dir>` (Tally passes `<data-dir>/postgres`):
//!
//! - `<dir>`: the cluster itself (PGDATA), which also holds the server's Unix socket;
//! - `<dir>.log` beside it: the server log, appended to across runs and kept after failures;
//! - `<dir>.lock` beside it: an advisory lock that serialises start and stop between processes;
//! - `<dir>/tally.conf`: the settings Tally owns (socket, port, listen addresses, extra
//!   settings), written before every start and included from `postgresql.conf`, so a plain
//!   `pg_ctl start` by hand behaves the same.
//!
//! The server listens only on its Unix socket (mode 0700, trusted without a password) unless a
//! TCP port is asked for; TCP clients on localhost then need a password, which has to be set
//! first through the socket (`ALTER ROLE tally PASSWORD '...'`). A socket path is limited to
//! about 107 bytes; when `<dir>` is too deep for that, the socket goes to
//! `/tmp/tally-pg-<hash of dir>` (mode 0700, owned by the server's user) instead.
//!
//! PostgreSQL refuses to run as root. When Tally is root, every server program runs as the
//! `postgres` OS user, without supplementary groups and from `/`, and the cluster and its log
//! belong to that user. As any other user, the programs run as that user.

use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use tracing::{info, warn};

mod binaries;
mod conninfo;

pub use binaries::PgBinaries;
pub use conninfo::to_connection_string;

/// The superuser every managed cluster is created with, and the role Tally connects as.
pub const SUPERUSER: &str = "tally";

/// The OS user that runs the server when Tally itself runs as root.
pub const SERVER_OS_USER: &str = "postgres";

/// Port of the socket when no TCP port is asked for: the socket file is named after it.
const DEFAULT_PORT: u16 = 5432;

/// How long a start may take, crash recovery included, before it is reported as failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stop may take; a fast stop ends sessions, so this is only reached when stuck.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// pg_ctl returns once `postmaster.pid` is gone, a moment before the process has exited.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

const POLL_INTERVAL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 20;
const OUTPUT_TAIL_LINES: usize = 10;

/// Longest socket path the kernel accepts (`sun_path` less its terminating NUL).
#[cfg(target_os = "linux")]
const MAX_SOCKET_PATH: usize = 107;
#[cfg(not(target_os = "linux"))]
const MAX_SOCKET_PATH: usize = 103;

/// Where sockets go when the cluster directory is too deep to hold one.
const SOCKET_FALLBACK_PARENT: &str = "/tmp";

/// The file of settings Tally owns inside the cluster.
const SETTINGS_FILE: &str = "tally.conf";

/// Client authentication for every managed cluster. The socket directory is private to the
/// server's user (and root), so whoever reaches the socket may connect; TCP, when enabled,
/// needs a password so other local users cannot walk in as superuser.
const HBA_CONF: &str = "\
# Written by Tally when it created this cluster.
# Unix-socket connections are trusted: the socket is reachable only by the server's OS user
# (and root). TCP connections, when a TCP port is configured, need a password.
local   all           all                   trust
local   replication   all                   trust
host    all           all     127.0.0.1/32  scram-sha-256
host    all           all     ::1/128       scram-sha-256
";

/// Why the managed PostgreSQL could not be found, created, started or stopped. Every message
/// is one line that names what failed and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// No PostgreSQL server programs on this machine.
    #[error(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) not found {searched}; install them \
         (`apt-get install postgresql` on Debian/Ubuntu, `brew install postgresql` on macOS) \
         or set DATABASE_URL to use an existing PostgreSQL server"
    )]
    NotInstalled {
        /// Where they were looked for.
        searched: String,
    },

    /// Running as root, but there is no OS user to run the server as.
    #[error(
        "Tally runs as root, which PostgreSQL refuses, and there is no `postgres` OS user to run \
         it as; create one (`useradd --system --user-group postgres`) or set DATABASE_URL"
    )]
    NoServerUser,

    /// The user database could not be read.
    #[error("cannot look up the OS user `{user}`: {cause}")]
    UserLookup { user: String, cause: io::Error },

    /// The server's OS user cannot traverse the directories above the cluster.
    #[error(
        "the `{user}` OS user that runs PostgreSQL cannot reach {}: it may not enter {}; \
         choose a --data-dir it can reach (for example under /var/lib or /srv) or set DATABASE_URL",
        .dir.display(), .blocker.display()
    )]
    Unreachable {
        user: String,
        dir: PathBuf,
        blocker: PathBuf,
    },

    /// The cluster directory holds something that is not a PostgreSQL cluster.
    #[error(
        "{} is not empty and holds no PostgreSQL cluster (no PG_VERSION file); move it away \
         or choose another --data-dir",
        .dir.display()
    )]
    NotACluster { dir: PathBuf },

    /// The cluster was made by another major version than the installed programs.
    #[error(
        "the cluster in {} was created by PostgreSQL {cluster}, but the server programs in {} \
         are PostgreSQL {installed}; install PostgreSQL {cluster} or upgrade the cluster with \
         pg_upgrade",
        .dir.display(), .bindir.display()
    )]
    VersionMismatch {
        dir: PathBuf,
        cluster: String,
        bindir: PathBuf,
        installed: String,
    },

    /// The fallback socket directory exists but is not safe to use.
    #[error("{} cannot hold the PostgreSQL socket: {reason}; remove it", .dir.display())]
    UnsafeSocketDir { dir: PathBuf, reason: String },

    /// An option (database name, setting) that cannot be used.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A file-system operation failed.
    #[error("cannot {action} {}: {cause}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },

    /// A program could not be started at all.
    #[error("cannot run {}: {cause}", .program.display())]
    Spawn { program: PathBuf, cause: io::Error },

    /// A program ran and failed.
    #[error("{command} failed ({status}): {output}")]
    Command {
        command: String,
        status: ExitStatus,
        output: String,
    },

    /// The server did not start, did not become ready or did not stop.
    #[error("PostgreSQL in {} {problem}; last lines of {}: {log_tail}", .dir.display(), .log.display())]
    Server {
        dir: PathBuf,
        problem: String,
        log: PathBuf,
        log_tail: String,
    },

    /// A statement on the running server failed.
    #[error("cannot {action} in the PostgreSQL in {}: {cause}", .dir.display())]
    Sql {
        action: String,
        dir: PathBuf,
        cause: String,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ManagedError {
    let path = path.to_path_buf();
    move |cause| ManagedError::Io {
        action,
        path,
        cause,
    }
}

/// Settings for [`ManagedPostgres::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedOptions {
    /// The database created on start when missing. Default "tally".
    pub database: String,
    /// Also listen on this TCP port on localhost (password needed there). Default: socket only.
    pub tcp_port: Option<u16>,
    /// Further server settings, such as `("fsync", "off")` for throwaway test clusters.
    pub extra_settings: Vec<(String, String)>,
}

impl Default for ManagedOptions {
    fn default() -> Self {
        ManagedOptions {
            database: "tally".to_string(),
            tcp_port: None,
            extra_settings: Vec::new(),
        }
    }
}

/// The OS user the server runs as when Tally is root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerUser {
    name: String,
    uid: u32,
    gid: u32,
}

fn server_user() -> Result<Option<ServerUser>, ManagedError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    match lookup_user(SERVER_OS_USER)? {
        Some(user) => Ok(Some(user)),
        None => Err(ManagedError::NoServerUser),
    }
}

fn lookup_user(name: &str) -> Result<Option<ServerUser>, ManagedError> {
    let lookup_error = |cause| ManagedError::UserLookup {
        user: name.to_string(),
        cause,
    };
    let c_name = CString::new(name)
        .map_err(|_| lookup_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain old data; getpwnam_r fills it, pointing into `buffer`, which
        // outlives every read below.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buffer.len() < (1 << 20) {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(lookup_error(io::Error::from_raw_os_error(rc)));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(ServerUser {
            name: name.to_string(),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }));
    }
}

/// Whether a user with `uid` and primary group `gid` (and no supplementary groups, which the
/// server is started without) may enter a directory with these mode, owner and group.
fn can_search(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        true
    } else if owner == uid {
        mode & 0o100 != 0
    } else if group == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// The socket path the server will bind for a socket directory and port.
fn socket_path(socket_dir: &Path, port: u16) -> PathBuf {
    socket_dir.join(format!(".s.PGSQL.{port}"))
}

/// Whether the server's socket fits in `sun_path` when placed in `socket_dir`.
fn socket_path_fits(socket_dir: &Path, port: u16) -> bool {
    socket_path(socket_dir, port).as_os_str().len() <= MAX_SOCKET_PATH
}

/// A short socket directory derived from the cluster directory, so the same cluster always
/// gets the same one and different clusters never share one. FNV-1a rather than std's hasher
/// because the name must not change between Rust releases.
fn fallback_socket_dir(data_dir: &Path) -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Path::new(SOCKET_FALLBACK_PARENT).join(format!("tally-pg-{hash:016x}"))
}

fn validate_setting(name: &str, value: &str) -> Result<(), ManagedError> {
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid_name {
        return Err(ManagedError::Invalid {
            what: "PostgreSQL setting name",
            value: name.to_string(),
            reason: "use letters, digits, '_' and '.'",
        });
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(ManagedError::Invalid {
            what: "PostgreSQL setting value",
            value: value.to_string(),
            reason: "line breaks and NUL are not allowed",
        });
    }
    Ok(())
}

/// PostgreSQL truncates longer identifiers, which would hand out a name that does not exist.
fn validate_database_name(name: &str) -> Result<(), ManagedError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > 63 {
        "PostgreSQL names are at most 63 bytes"
    } else if name.contains('\0') {
        "it contains NUL"
    } else {
        return Ok(());
    };
    Err(ManagedError::Invalid {
        what: "database name",
        value: name.to_string(),
        reason,
    })
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal in postgresql.conf syntax.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The content of `tally.conf`.
fn settings_file(
    port: u16,
    socket_dir: &Path,
    listen_tcp: bool,
    extra: &[(String, String)],
) -> String {
    let listen = if listen_tcp { "localhost" } else { "" };
    let mut text = String::from(
        "# Written by Tally before every start of this server; changes here are overwritten.\n\
         # Put lasting settings of your own in postgresql.auto.conf (ALTER SYSTEM).\n",
    );
    text.push_str(&format!("listen_addresses = {}\n", conf_quote(listen)));
    text.push_str(&format!("port = {port}\n"));
    text.push_str(&format!(
        "unix_socket_directories = {}\n",
        conf_quote(&socket_dir.to_string_lossy())
    ));
    text.push_str("unix_socket_permissions = 0700\n");
    for (name, value) in extra {
        text.push_str(&format!("{name} = {}\n", conf_quote(value)));
    }
    text
}

/// The last `count` non-empty lines of `text`, joined into one line.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(count)..];
    if tail.is_empty() {
        "(nothing)".to_string()
    } else {
        tail.join(" | ")
    }
}

/// The last lines of a log, reading only what was appended after `since` when given.
fn log_tail(path: &Path, since: Option<u64>) -> String {
    const MAX_READ: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return "(no log written)".to_string();
    };
    let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let start = since
        .filter(|&since| since <= len)
        .unwrap_or(0)
        .max(len.saturating_sub(MAX_READ));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return "(log unreadable)".to_string();
    }
    last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES)
}

fn output_tail(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    last_lines(&text, OUTPUT_TAIL_LINES)
}

/// The user's environment must not redirect the server programs (PGDATA, PGHOST, PGPORT, ...)
/// nor change the language of their messages, which errors quote.
fn isolate_environment(command: &mut Command, bindir: &Path) {
    let path = std::env::join_paths([bindir, Path::new("/usr/bin"), Path::new("/bin")])
        .unwrap_or_else(|_| OsString::from("/usr/bin:/bin"));
    command
        .env_clear()
        .env("PATH", path)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .stdin(Stdio::null());
}

/// Prepares `command` to run as `user` when given. The working directory is `/` because the
/// caller's (under /root, say) may be closed to that user. Supplementary groups are dropped by
/// std itself: when a root parent sets a uid without explicit groups, the child calls
/// `setgroups(0, NULL)` before `setuid`.
fn run_as(command: &mut Command, user: Option<&ServerUser>) {
    command.current_dir("/");
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
}

fn run_checked(mut command: Command, description: &str) -> Result<Output, ManagedError> {
    let program = PathBuf::from(command.get_program());
    let output = command
        .output()
        .map_err(|cause| ManagedError::Spawn { program, cause })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(ManagedError::Command {
            command: description.to_string(),
            status: output.status,
            output: output_tail(&output),
        })
    }
}

/// One line for a tokio-postgres error: its own Display says only "db error" and the like.
fn describe_pg_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `work` to completion on a private current-thread runtime in a scoped thread, so the
/// blocking API can talk to the server whether or not its caller is inside a tokio runtime
/// (where `block_on` would panic).
fn block_on_private<T: Send>(work: impl Future<Output = T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(work))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // Errors here surface on the client's next request; the task only drives the socket.
        let _ = connection.await;
    });
    Ok(client)
}

/// Whether `pid` is a live process working in `data_dir`, as a postmaster does. `kill(pid, 0)`
/// alone also succeeds for a zombie and, as root, for any process that reused the pid of a
/// crashed server.
fn postmaster_alive(pid: u32, data_dir: &Path) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        let expected = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        // Unreadable for zombies, and for processes of other users (the server runs as us).
        fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == expected)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = data_dir;
        true
    }
}

/// The lines of `postmaster.pid` that say where a running server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PidFile {
    pid: u32,
    port: Option<u16>,
    socket_dir: Option<PathBuf>,
}

fn parse_pid_file(text: &str) -> Option<PidFile> {
    let lines: Vec<&str> = text.lines().collect();
    let pid = lines.first()?.trim().parse().ok()?;
    let port = lines.get(3).and_then(|line| line.trim().parse().ok());
    let socket_dir = lines
        .get(4)
        .map(|line| line.trim())
        .filter(|line| line.starts_with('/'))
        .map(PathBuf::from);
    Some(PidFile {
        pid,
        port,
        socket_dir,
    })
}

/// An exclusive `flock` on the lock file beside the cluster, released when dropped.
struct ClusterLock {
    _file: File,
}

impl ClusterLock {
    fn acquire(path: &Path) -> Result<ClusterLock, ManagedError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error("open the lock file", path))?;
        loop {
            // SAFETY: the descriptor belongs to `file`, which lives as long as the lock.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(ClusterLock { _file: file });
            }
            let cause = io::Error::last_os_error();
            if cause.kind() != io::ErrorKind::Interrupted {
                return Err(io_error("lock", path)(cause));
            }
        }
    }
}

/// What a wait for the server to accept connections found.
enum Readiness {
    Ready,
    /// The server process went away while we waited (it was stopping, or crashed).
    Gone,
}

/// A PostgreSQL cluster under a directory of Tally's, and the server running on it.
///
/// The handle describes the cluster; it does not own the server process. Dropping it leaves the
/// server running: stop it with [`ManagedPostgres::stop`] once the last write is done.
#[derive(Debug)]
pub struct ManagedPostgres {
    binaries: PgBinaries,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    log_file: PathBuf,
    lock_file: PathBuf,
    listen_tcp: bool,
    extra_settings: Vec<(String, String)>,
    server_user: Option<ServerUser>,
    adopted: bool,
}

impl ManagedPostgres {
    /// Creates the cluster under `dir` on first use (initdb: UTF8, locale C, superuser
    /// `tally`, trusted connections on the Unix socket only), starts the server listening only
    /// on a Unix socket (plus localhost when `options.tcp_port` is set), waits until it accepts
    /// connections and creates the database `options.database` if missing. A server left
    /// running on this cluster by an earlier process (a Tally killed with SIGKILL, say) is
    /// adopted rather than started twice; [`ManagedPostgres::adopted`] says which happened.
    ///
    /// Blocking: it runs programs and waits for them. Async callers use `spawn_blocking`.
    pub fn start(dir: &Path, options: &ManagedOptions) -> Result<ManagedPostgres, ManagedError> {
        let mut cluster = ManagedPostgres::describe(dir, options)?;
        let _lock = cluster.lock()?;
        if cluster.is_initialized() {
            cluster.check_version()?;
        } else {
            cluster.initialize(options)?;
        }
        cluster.adopted = cluster.start_or_adopt()?;
        cluster.ensure_database(&options.database)?;
        Ok(cluster)
    }

    /// A handle on the existing cluster under `dir` that starts nothing: to stop or inspect a
    /// server an earlier process left running. `options` must be those it was started with
    /// (only the TCP port matters) unless the server is running, in which case where it listens
    /// is read from its `postmaster.pid`. Fails with [`ManagedError::NotACluster`] when `dir`
    /// holds no cluster.
    pub fn attach(dir: &Path, options: &ManagedOptions) -> Result<ManagedPostgres, ManagedError> {
        let mut cluster = ManagedPostgres::describe(dir, options)?;
        if !cluster.is_initialized() {
            return Err(ManagedError::NotACluster {
                dir: cluster.data_dir,
            });
        }
        if cluster.server_pid().is_some() {
            cluster.use_listen_settings_of_running_server();
            cluster.adopted = true;
        }
        Ok(cluster)
    }

    /// Resolves paths and who runs the server; touches nothing but the parent directory.
    fn describe(dir: &Path, options: &ManagedOptions) -> Result<ManagedPostgres, ManagedError> {
        validate_database_name(&options.database)?;
        for (name, value) in &options.extra_settings {
            validate_setting(name, value)?;
        }
        let binaries = PgBinaries::find()?;
        let server_user = server_user()?;

        let absolute = std::path::absolute(dir).map_err(io_error("resolve", dir))?;
        let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
            return Err(ManagedError::Invalid {
                what: "cluster directory",
                value: dir.display().to_string(),
                reason: "it must name a directory below an existing or creatable parent",
            });
        };
        if let Some(user) = &server_user
            && let Some(existing) = parent.ancestors().find(|ancestor| ancestor.is_dir())
        {
            // Before creating anything, so a refused directory leaves no trace.
            let existing = fs::canonicalize(existing).map_err(io_error("resolve", existing))?;
            check_reachable(&existing, user, &absolute)?;
        }
        fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
        let parent = fs::canonicalize(parent).map_err(io_error("resolve", parent))?;
        let data_dir = parent.join(name);
        if let Some(user) = &server_user {
            check_reachable(&parent, user, &data_dir)?;
        }
        let sibling = |suffix: &str| {
            let mut file_name = name.to_os_string();
            file_name.push(suffix);
            parent.join(file_name)
        };

        let port = options.tcp_port.unwrap_or(DEFAULT_PORT);
        let socket_dir = if socket_path_fits(&data_dir, port) {
            data_dir.clone()
        } else {
            fallback_socket_dir(&data_dir)
        };
        Ok(ManagedPostgres {
            binaries,
            log_file: sibling(".log"),
            lock_file: sibling(".lock"),
            data_dir,
            socket_dir,
            port,
            listen_tcp: options.tcp_port.is_some(),
            extra_settings: options.extra_settings.clone(),
            server_user,
            adopted: false,
        })
    }

    /// tokio-postgres settings for `database` on this cluster: its Unix socket, as `tally`.
    pub fn config(&self, database: &str) -> Config {
        let mut config = Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database);
        config
    }

    /// A connection string for `database` on this cluster, in libpq key=value form (such as
    /// `host=/srv/tally/postgres port=5432 user=tally dbname=tally`), for `DATABASE_URL` of
    /// another process; `tokio_postgres::Config::from_str` parses it.
    pub fn connection_string(&self, database: &str) -> String {
        to_connection_string(&self.config(database))
    }

    /// Creates a new, empty database `name`; fails if it exists already.
    pub fn create_database(&self, name: &str) -> Result<(), ManagedError> {
        validate_database_name(name)?;
        let statement = format!("CREATE DATABASE {}", quote_identifier(name));
        let config = self.config("postgres");
        let result = self.on_private_runtime(async {
            let client = connect(&config).await?;
            client.batch_execute(&statement).await
        })?;
        result.map_err(|error| self.sql_error(format!("create database {name:?}"), &error))
    }

    fn ensure_database(&self, name: &str) -> Result<(), ManagedError> {
        let statement = format!("CREATE DATABASE {}", quote_identifier(name));
        let config = self.config("postgres");
        let result = self.on_private_runtime(async {
            let client = connect(&config).await?;
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await?
                .is_some();
            if exists {
                return Ok(());
            }
            match client.batch_execute(&statement).await {
                // Another process created it between our check and our CREATE.
                Err(error) if error.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
                other => other,
            }
        })?;
        result.map_err(|error| self.sql_error(format!("create database {name:?}"), &error))
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`: sessions are ended, everything is
    /// written out) and waits until the process is gone. Stopping a stopped server succeeds.
    pub fn stop(&self) -> Result<(), ManagedError> {
        self.stop_with_mode("fast")
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`), as a crash would: the next start
    /// runs crash recovery. Meant for fault tests and throwaway clusters.
    pub fn stop_immediate(&self) -> Result<(), ManagedError> {
        self.stop_with_mode("immediate")
    }

    /// Starts the server again after [`ManagedPostgres::stop`] or
    /// [`ManagedPostgres::stop_immediate`] (or a crash), with the same settings, and waits
    /// until it accepts connections. Does nothing but wait when it is running already.
    pub fn start_again(&self) -> Result<(), ManagedError> {
        let _lock = self.lock()?;
        if self.server_pid().is_some()
            && let Readiness::Ready = self.wait_until_ready(Instant::now() + START_TIMEOUT)?
        {
            return Ok(());
        }
        self.launch()
    }

    /// The PID of the postmaster when it is running: read from `postmaster.pid` and checked
    /// to be a live process working in this cluster, so a stale file left by a crash, or a
    /// process that reused its PID, reads as not running.
    pub fn server_pid(&self) -> Option<u32> {
        let pid = self.read_pid_file()?.pid;
        postmaster_alive(pid, &self.data_dir).then_some(pid)
    }

    /// The cluster directory (PGDATA), absolute.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the server's Unix socket: the cluster directory, or a short one
    /// under /tmp when the cluster directory is too deep for a socket path.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The port: it names the socket file, and is the TCP port when TCP is enabled.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log, appended to across runs.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The server programs this cluster runs with.
    pub fn binaries(&self) -> &PgBinaries {
        &self.binaries
    }

    /// Whether the server was already running when this handle was made, rather than started
    /// by it.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    fn lock(&self) -> Result<ClusterLock, ManagedError> {
        ClusterLock::acquire(&self.lock_file)
    }

    fn is_initialized(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    fn check_version(&self) -> Result<(), ManagedError> {
        let path = self.data_dir.join("PG_VERSION");
        let cluster = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        let cluster = cluster.trim();
        if cluster == self.binaries.version {
            return Ok(());
        }
        Err(ManagedError::VersionMismatch {
            dir: self.data_dir.clone(),
            cluster: cluster.to_string(),
            bindir: self.binaries.bindir.clone(),
            installed: self.binaries.version.clone(),
        })
    }

    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.binaries.program(program));
        isolate_environment(&mut command, &self.binaries.bindir);
        run_as(&mut command, self.server_user.as_ref());
        command
    }

    /// Gives a path Tally created to the server's user, so the server can use it.
    fn hand_over(&self, path: &Path) -> Result<(), ManagedError> {
        if let Some(user) = &self.server_user {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(io_error("change the owner of", path))?;
        }
        Ok(())
    }

    /// The uid the server runs as, which must own its socket directory.
    fn server_uid(&self) -> u32 {
        match &self.server_user {
            Some(user) => user.uid,
            // SAFETY: geteuid has no preconditions and cannot fail.
            None => unsafe { libc::geteuid() },
        }
    }

    fn create_private_dir(&self, path: &Path) -> Result<(), ManagedError> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io_error("create directory", path))?;
        self.hand_over(path)
    }

    /// Writes a file inside the cluster, readable by the server's user only.
    fn write_server_file(&self, path: &Path, contents: &str) -> Result<(), ManagedError> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error("write", path))?;
        file.write_all(contents.as_bytes())
            .map_err(io_error("write", path))?;
        self.hand_over(path)
    }

    /// Runs initdb into a staging directory beside the cluster and renames it into place, so
    /// that a cluster directory with `PG_VERSION` in it is always complete, even when an
    /// earlier initdb was killed halfway.
    fn initialize(&self, options: &ManagedOptions) -> Result<(), ManagedError> {
        if let Ok(mut entries) = fs::read_dir(&self.data_dir)
            && entries.next().is_some()
        {
            return Err(ManagedError::NotACluster {
                dir: self.data_dir.clone(),
            });
        }
        let mut staging_name = self.data_dir.as_os_str().to_os_string();
        staging_name.push(".initdb");
        let staging = PathBuf::from(staging_name);
        if staging.exists() {
            // Left by an initdb that was interrupted; we hold the lock, so nobody is using it.
            fs::remove_dir_all(&staging).map_err(io_error("remove", &staging))?;
        }
        self.create_private_dir(&staging)?;

        let mut initdb = self.server_command("initdb");
        initdb.arg("--pgdata").arg(&staging).args([
            "--username",
            SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=reject",
        ]);
        let fsync_off = options.extra_settings.iter().any(|(name, value)| {
            name == "fsync" && matches!(value.as_str(), "off" | "false" | "0")
        });
        if fsync_off {
            // A cluster that will run without fsync gains nothing from initdb's final sync.
            initdb.arg("--no-sync");
        }
        run_checked(initdb, "initdb")?;

        self.write_server_file(&staging.join("pg_hba.conf"), HBA_CONF)?;
        let postgresql_conf = staging.join("postgresql.conf");
        let mut conf = OpenOptions::new()
            .append(true)
            .open(&postgresql_conf)
            .map_err(io_error("open", &postgresql_conf))?;
        writeln!(
            conf,
            "\n# Settings Tally manages (socket, port, listen addresses), rewritten at every start.\ninclude = '{SETTINGS_FILE}'"
        )
        .map_err(io_error("write", &postgresql_conf))?;
        drop(conf);

        if self.data_dir.exists() {
            // Renaming onto a directory is not portable; it is known to be empty here.
            fs::remove_dir(&self.data_dir).map_err(io_error("replace", &self.data_dir))?;
        }
        fs::rename(&staging, &self.data_dir).map_err(io_error("move into place", &staging))?;
        if let Some(parent) = self.data_dir.parent()
            && let Ok(parent) = File::open(parent)
        {
            // Make the rename itself durable; failure only risks redoing initdb after a crash.
            let _ = parent.sync_all();
        }
        info!(
            dir = %self.data_dir.display(),
            version = %self.binaries.version,
            "created a PostgreSQL cluster"
        );
        Ok(())
    }

    fn read_pid_file(&self) -> Option<PidFile> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        parse_pid_file(&text)
    }

    /// A server started by an earlier process may listen elsewhere than this process would
    /// choose (another TCP port, say); connect where it actually is.
    fn use_listen_settings_of_running_server(&mut self) {
        if let Some(pid_file) = self.read_pid_file() {
            if let Some(port) = pid_file.port {
                self.port = port;
            }
            if let Some(socket_dir) = pid_file.socket_dir {
                self.socket_dir = socket_dir;
            }
        }
    }

    /// Whether pg_ctl and our own check agree that a server runs on this cluster. pg_ctl alone
    /// would take a zombie or, as root, a reused PID for a server.
    fn running_server(&self) -> Result<Option<u32>, ManagedError> {
        let mut status = self.server_command("pg_ctl");
        status.arg("status").arg("--pgdata").arg(&self.data_dir);
        let program = self.binaries.program("pg_ctl");
        let output = status
            .output()
            .map_err(|cause| ManagedError::Spawn { program, cause })?;
        match output.status.code() {
            Some(0) => Ok(self.server_pid()),
            // 3: no server running (a stale postmaster.pid included); 4: no cluster yet.
            Some(3) | Some(4) => Ok(None),
            _ => Err(ManagedError::Command {
                command: "pg_ctl status".to_string(),
                status: output.status,
                output: output_tail(&output),
            }),
        }
    }

    /// Returns whether a running server was adopted (true) or a new one started (false).
    fn start_or_adopt(&mut self) -> Result<bool, ManagedError> {
        if let Some(pid) = self.running_server()? {
            let planned = (self.port, self.socket_dir.clone());
            self.use_listen_settings_of_running_server();
            match self.wait_until_ready(Instant::now() + START_TIMEOUT)? {
                Readiness::Ready => {
                    info!(
                        dir = %self.data_dir.display(),
                        pid,
                        "adopted the PostgreSQL server an earlier run left running"
                    );
                    return Ok(true);
                }
                Readiness::Gone => {
                    // It was shutting down; start our own with our own settings.
                    (self.port, self.socket_dir) = planned;
                }
            }
        }
        self.launch()?;
        Ok(false)
    }

    fn prepare_socket_dir(&self) -> Result<(), ManagedError> {
        if self.socket_dir == self.data_dir {
            return Ok(());
        }
        let unsafe_dir = |reason: String| ManagedError::UnsafeSocketDir {
            dir: self.socket_dir.clone(),
            reason,
        };
        let meta = match fs::symlink_metadata(&self.socket_dir) {
            Ok(meta) => meta,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return self.create_private_dir(&self.socket_dir);
            }
            Err(error) => return Err(io_error("inspect", &self.socket_dir)(error)),
        };
        // /tmp is shared: a directory planted there by someone else must not receive our socket.
        if !meta.is_dir() {
            return Err(unsafe_dir("it is not a directory".to_string()));
        }
        if meta.uid() != self.server_uid() {
            return Err(unsafe_dir(format!(
                "it belongs to uid {}, not to the server's uid {}",
                meta.uid(),
                self.server_uid()
            )));
        }
        if meta.mode() & 0o777 != 0o700 {
            fs::set_permissions(&self.socket_dir, fs::Permissions::from_mode(0o700))
                .map_err(io_error("restrict the permissions of", &self.socket_dir))?;
        }
        Ok(())
    }

    /// The fallback socket directory is ours alone; leave no empty ones behind in /tmp.
    fn remove_fallback_socket_dir(&self) {
        if self.socket_dir != self.data_dir {
            let _ = fs::remove_dir(&self.socket_dir);
        }
    }

    /// A postmaster killed with SIGKILL leaves its lock files behind. PostgreSQL ignores them
    /// when their pid is gone, but not when it names a zombie (signal 0 reaches zombies, and
    /// some init processes never reap) or, as root, a process that reused the pid. A live
    /// postmaster always works in its data directory, which tells them apart. Leftover
    /// backends are still caught: PostgreSQL's shared-memory interlock is keyed on the data
    /// directory, not on these files.
    fn remove_stale_lock_files(&self) -> Result<(), ManagedError> {
        let lock_files = [
            self.data_dir.join("postmaster.pid"),
            self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)),
        ];
        for path in lock_files {
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Some(pid) = parse_pid_file(&text).map(|lock| lock.pid) else {
                continue;
            };
            if postmaster_alive(pid, &self.data_dir) {
                continue;
            }
            warn!(
                file = %path.display(),
                pid,
                "removing the lock file of a PostgreSQL server that is no longer running"
            );
            match fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error("remove the stale lock file", &path)(error));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Creates the log (owned by the server's user, which appends to it) and returns its
    /// length, from where this start's lines begin.
    fn prepare_log(&self) -> Result<u64, ManagedError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log_file)
            .map_err(io_error("create the log", &self.log_file))?;
        self.hand_over(&self.log_file)?;
        Ok(file.metadata().map(|meta| meta.len()).unwrap_or(0))
    }

    /// Writes the settings and starts the server with `pg_ctl start -w`, then waits until it
    /// accepts connections.
    fn launch(&self) -> Result<(), ManagedError> {
        self.prepare_socket_dir()?;
        let settings = settings_file(
            self.port,
            &self.socket_dir,
            self.listen_tcp,
            &self.extra_settings,
        );
        self.write_server_file(&self.data_dir.join(SETTINGS_FILE), &settings)?;
        self.remove_stale_lock_files()?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log_start = self.prepare_log()?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut pg_ctl = self.server_command("pg_ctl");
            pg_ctl
                .arg("start")
                .arg("--pgdata")
                .arg(&self.data_dir)
                .arg("--log")
                .arg(&self.log_file)
                .arg("--wait")
                .arg(format!("--timeout={}", remaining.as_secs().max(1)));
            let program = self.binaries.program("pg_ctl");
            // pg_ctl sends the server's output to the log, so these pipes close when it exits.
            let output = pg_ctl
                .output()
                .map_err(|cause| ManagedError::Spawn { program, cause })?;
            if output.status.success() {
                break;
            }
            let tail = log_tail(&self.log_file, Some(log_start));
            // Backends of a postmaster killed with SIGKILL exit only once they notice; until
            // then the new server refuses to share their memory. They go within a second.
            if tail.contains("pre-existing shared memory block") && Instant::now() < deadline {
                warn!(dir = %self.data_dir.display(), "backends of a killed PostgreSQL are still exiting; retrying");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            return Err(ManagedError::Server {
                dir: self.data_dir.clone(),
                problem: format!(
                    "did not start (pg_ctl start: {}: {})",
                    output.status,
                    output_tail(&output)
                ),
                log: self.log_file.clone(),
                log_tail: tail,
            });
        }
        match self.wait_until_ready(deadline)? {
            Readiness::Ready => {
                info!(
                    dir = %self.data_dir.display(),
                    socket_dir = %self.socket_dir.display(),
                    pid = self.server_pid(),
                    "started PostgreSQL"
                );
                Ok(())
            }
            Readiness::Gone => Err(self.server_error("exited right after starting".to_string())),
        }
    }

    /// Polls with real connections until one succeeds, the server process disappears, or the
    /// deadline passes.
    fn wait_until_ready(&self, deadline: Instant) -> Result<Readiness, ManagedError> {
        let mut config = self.config("postgres");
        config.connect_timeout(Duration::from_secs(2));
        let last_error = self.on_private_runtime(async {
            loop {
                let error = match connect(&config).await {
                    Ok(client) => match client.simple_query("SELECT 1").await {
                        Ok(_) => return Ok(Readiness::Ready),
                        Err(error) => error,
                    },
                    Err(error) => error,
                };
                if self.server_pid().is_none() {
                    return Ok(Readiness::Gone);
                }
                if Instant::now() >= deadline {
                    return Err(describe_pg_error(&error));
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        })?;
        last_error.map_err(|error| {
            self.server_error(format!(
                "did not accept connections on {} within {} s ({error})",
                socket_path(&self.socket_dir, self.port).display(),
                START_TIMEOUT.as_secs()
            ))
        })
    }

    fn stop_with_mode(&self, mode: &str) -> Result<(), ManagedError> {
        let _lock = self.lock()?;
        let Some(pid) = self.server_pid() else {
            self.remove_fallback_socket_dir();
            return Ok(());
        };
        let mut pg_ctl = self.server_command("pg_ctl");
        pg_ctl
            .arg("stop")
            .arg("--pgdata")
            .arg(&self.data_dir)
            .arg(format!("--mode={mode}"))
            .arg("--wait")
            .arg(format!("--timeout={}", STOP_TIMEOUT.as_secs()));
        let program = self.binaries.program("pg_ctl");
        let output = pg_ctl
            .output()
            .map_err(|cause| ManagedError::Spawn { program, cause })?;

        let deadline = Instant::now() + EXIT_TIMEOUT;
        while postmaster_alive(pid, &self.data_dir) && Instant::now() < deadline {
            std::thread::sleep(POLL_INTERVAL);
        }
        if postmaster_alive(pid, &self.data_dir) {
            let problem = if output.status.success() {
                format!("(pid {pid}) was still running after pg_ctl stop -m {mode}")
            } else {
                format!(
                    "(pid {pid}) did not stop (pg_ctl stop -m {mode}: {}: {})",
                    output.status,
                    output_tail(&output)
                )
            };
            return Err(self.server_error(problem));
        }
        self.remove_fallback_socket_dir();
        info!(dir = %self.data_dir.display(), pid, mode, "stopped PostgreSQL");
        Ok(())
    }

    fn on_private_runtime<T: Send>(
        &self,
        work: impl Future<Output = T> + Send,
    ) -> Result<T, ManagedError> {
        block_on_private(work).map_err(io_error(
            "start a runtime to connect to the PostgreSQL in",
            &self.data_dir,
        ))
    }

    fn server_error(&self, problem: String) -> ManagedError {
        ManagedError::Server {
            dir: self.data_dir.clone(),
            problem,
            log: self.log_file.clone(),
            log_tail: log_tail(&self.log_file, None),
        }
    }

    fn sql_error(&self, action: String, error: &tokio_postgres::Error) -> ManagedError {
        ManagedError::Sql {
            action,
            dir: self.data_dir.clone(),
            cause: describe_pg_error(error),
        }
    }
}

/// Fails early, with a message saying so, when the server's user could not reach the cluster:
/// initdb would otherwise fail with a bare "permission denied".
fn check_reachable(parent: &Path, user: &ServerUser, dir: &Path) -> Result<(), ManagedError> {
    for ancestor in parent.ancestors() {
        let meta = fs::metadata(ancestor).map_err(io_error("inspect", ancestor))?;
        if !can_search(meta.mode(), meta.uid(), meta.gid(), user.uid, user.gid) {
            return Err(ManagedError::Unreachable {
                user: user.name.clone(),
                dir: dir.to_path_buf(),
                blocker: ancestor.to_path_buf(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_length_is_checked_against_the_kernel_limit() {
        let short = Path::new("/srv/tally-data/postgres");
        assert!(socket_path_fits(short, 5432));

        // ".s.PGSQL.5432" plus the separator is 14 bytes.
        let exact = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH - 15)));
        assert_eq!(socket_path(&exact, 5432).as_os_str().len(), MAX_SOCKET_PATH);
        assert!(socket_path_fits(&exact, 5432));
        assert!(
            !socket_path_fits(&exact, 54321),
            "a longer port name no longer fits"
        );

        let long = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH)));
        assert!(!socket_path_fits(&long, 5432));
    }

    #[test]
    fn fallback_socket_dir_is_short_stable_and_distinct() {
        let a = fallback_socket_dir(Path::new(&format!("/{}/postgres", "x".repeat(200))));
        let b = fallback_socket_dir(Path::new(&format!("/{}/postgres", "y".repeat(200))));
        assert_ne!(a, b);
        assert_eq!(
            a,
            fallback_socket_dir(Path::new(&format!("/{}/postgres", "x".repeat(200))))
        );
        assert!(a.starts_with("/tmp"));
        assert!(socket_path_fits(&a, u16::MAX));
    }

    #[test]
    fn search_permission_follows_owner_group_other() {
        let (uid, gid) = (101, 104);
        assert!(!can_search(0o700, 0, 0, uid, gid), "/root-like directory");
        assert!(can_search(0o755, 0, 0, uid, gid));
        assert!(can_search(0o700, uid, 0, uid, gid));
        assert!(can_search(0o710, 0, gid, uid, gid));
        assert!(
            !can_search(0o701, 0, gid, uid, gid),
            "group bits apply, not other"
        );
        assert!(can_search(0o700, 0, 0, 0, 0), "root enters everything");
    }

    #[test]
    fn settings_file_listens_on_the_socket_only_unless_tcp_is_asked() {
        let text = settings_file(
            5432,
            Path::new("/tmp/it's"),
            false,
            &[("fsync".to_string(), "off".to_string())],
        );
        assert!(text.contains("listen_addresses = ''\n"));
        assert!(text.contains("unix_socket_directories = '/tmp/it''s'\n"));
        assert!(text.contains("unix_socket_permissions = 0700\n"));
        assert!(text.contains("fsync = 'off'\n"));
        let tcp = settings_file(6000, Path::new("/x"), true, &[]);
        assert!(tcp.contains("listen_addresses = 'localhost'\n"));
        assert!(tcp.contains("port = 6000\n"));
    }

    #[test]
    fn settings_that_could_break_the_file_are_refused() {
        assert!(validate_setting("fsync", "off").is_ok());
        assert!(validate_setting("auto_explain.log_min_duration", "0").is_ok());
        assert!(validate_setting("fsync = off\nport", "1").is_err());
        assert!(validate_setting("fsync", "off\nlisten_addresses = '*'").is_err());
        assert!(validate_setting("", "x").is_err());
    }

    #[test]
    fn database_names_postgres_would_truncate_are_refused() {
        assert!(validate_database_name("tally").is_ok());
        assert!(validate_database_name(&"d".repeat(63)).is_ok());
        assert!(validate_database_name(&"d".repeat(64)).is_err());
        assert!(validate_database_name("").is_err());
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn pid_file_gives_pid_port_and_socket_dir() {
        let text = "4242\n/srv/tally/postgres\n1700000000\n5433\n/tmp/tally-pg-1\n\n  1234   5678\nready   \n";
        assert_eq!(
            parse_pid_file(text),
            Some(PidFile {
                pid: 4242,
                port: Some(5433),
                socket_dir: Some(PathBuf::from("/tmp/tally-pg-1")),
            })
        );
        assert_eq!(parse_pid_file("garbage"), None);
    }

    #[test]
    fn last_lines_makes_one_line_of_the_tail() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 5), "(nothing)");
    }

    #[test]
    fn not_installed_says_how_to_install_or_what_to_set() {
        let message = ManagedError::NotInstalled {
            searched: "on PATH".to_string(),
        }
        .to_string();
        assert!(message.contains("apt-get install postgresql"));
        assert!(message.contains("brew install postgresql"));
        assert!(message.contains("DATABASE_URL"));
        assert!(!message.contains('\n'));
    }

    #[test]
    fn a_dead_process_is_not_a_postmaster() {
        let mut child = Command::new("true").spawn().expect("run true");
        let pid = child.id();
        child.wait().expect("wait for true");
        assert!(!postmaster_alive(pid, Path::new("/")));
        assert!(!postmaster_alive(0, Path::new("/")));
    }

    /// Only meaningful as root with a `postgres` user, which is how Tally runs in containers.
    #[test]
    fn server_programs_run_as_the_server_user_without_extra_groups() {
        let Ok(Some(user)) = server_user() else {
            eprintln!("skipped: not root, or no postgres user");
            return;
        };
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "id -u; id -G; pwd; env"]);
        isolate_environment(&mut command, Path::new("/usr/bin"));
        run_as(&mut command, Some(&user));
        let output = run_checked(command, "sh").expect("sh runs as the server user");
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], user.uid.to_string());
        assert_eq!(lines[1], user.gid.to_string(), "only the primary group");
        assert_eq!(lines[2], "/");
        assert!(!text.contains("PGDATA="));
        assert!(!text.contains("PGHOST="));
        assert!(text.contains("LC_ALL=C"));
    }
}
