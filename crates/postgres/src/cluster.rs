//! The cluster's life cycle: create on first use, start or adopt a running server, hand out
//! connection settings, create databases, stop.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::Config;
use tokio_postgres::error::SqlState;
use tracing::{info, warn};

use crate::binaries::PgBinaries;
use crate::conninfo::to_connection_string;
use crate::error::{ManagedError, io_error};
use crate::os_user::{ServerUser, check_reachable, run_as, server_user};
use crate::programs::{
    block_on_private, connect, describe_pg_error, isolate_environment, log_tail, output_tail,
    run_checked,
};
use crate::server::{ClusterLock, PidFile, Readiness, parse_pid_file, postmaster_alive};
use crate::settings::{
    DEFAULT_PORT, HBA_CONF, ManagedOptions, SETTINGS_FILE, fallback_socket_dir, quote_identifier,
    settings_file, socket_path, socket_path_fits, validate_database_name, validate_setting,
};

/// The superuser every managed cluster is created with, and the role Tally connects as.
pub const SUPERUSER: &str = "tally";

/// How long a start may take, crash recovery included, before it is reported as failed.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stop may take; a fast stop ends sessions, so this is only reached when stuck.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// pg_ctl returns once `postmaster.pid` is gone, a moment before the process has exited.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
