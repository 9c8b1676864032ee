//! A real PostgreSQL for integration tests: one throwaway cluster per test binary, started on
//! first use, and a fresh, empty database for each test. When `DATABASE_URL` is set, fresh
//! databases are created on that server instead.
//!
//! Every area of the binary shares that cluster, tests of other areas running beside each
//! other in it, so a test acts on its own database only: it does not list databases, or count
//! or end sessions beyond `current_database()`, and it stops or reconfigures PostgreSQL only
//! in a [`DedicatedCluster`].
//!
//! Throwaway clusters live under `<temp dir>/tally-test-pg/`, in a directory named after the
//! test process (`<pid>` for the shared cluster, `<pid>-<n>` for the others): the temp
//! directory is one the `postgres` user can reach when tests run as root, and the pid lets a
//! later test process recognise and remove the clusters of one that died without cleaning up.

use std::fs;
use std::future::Future;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tally_postgres::{ManagedOptions, ManagedPostgres, to_connection_string};
use tokio_postgres::{Config, NoTls};

/// A new, empty database for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// A key=value connection string for it, usable by tokio-postgres and as `DATABASE_URL`
    /// of a child `tally` process.
    pub url: String,
    /// The database's name.
    pub name: String,
}

impl TestDatabase {
    /// The connection settings of [`TestDatabase::url`].
    pub fn config(&self) -> Config {
        Config::from_str(&self.url).expect("test database URLs are built to parse")
    }
}

/// A fresh, empty database: on the test binary's own throwaway cluster (started on first use),
/// or on the server `DATABASE_URL` names. Panics, with the reason, when neither can be had.
pub fn fresh_database() -> TestDatabase {
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => database_on_server(&url, name),
        _ => {
            let cluster = shared_cluster();
            cluster
                .create_database(&name)
                .unwrap_or_else(|error| panic!("cannot create the test database: {error}"));
            TestDatabase {
                url: cluster.connection_string(&name),
                name,
            }
        }
    }
}

/// A fresh, empty database created with `options` appended to `CREATE DATABASE` (for example
/// `ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`), on the same server as
/// [`fresh_database`].
pub fn fresh_database_with(options: &str) -> TestDatabase {
    let server = fresh_database();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let statement = format!("CREATE DATABASE \"{name}\" {options}");
    let config = server.config();
    block_on(async {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute(&statement).await
    })
    .unwrap_or_else(|error| panic!("cannot run {statement}: {error:?}"));
    let mut config = server.config();
    config.dbname(&name);
    TestDatabase {
        url: to_connection_string(&config),
        name,
    }
}

/// Settings for throwaway clusters: no fsync, since nothing in them must survive the machine.
pub fn throwaway_options() -> ManagedOptions {
    ManagedOptions {
        extra_settings: vec![("fsync".to_string(), "off".to_string())],
        ..ManagedOptions::default()
    }
}

/// A cluster of its own for a test that stops and starts PostgreSQL, which it must not do to
/// the shared one. Always a managed cluster, even with `DATABASE_URL` set. Stopped
/// (immediately) and deleted when dropped.
pub struct DedicatedCluster {
    cluster: ManagedPostgres,
    _dir: ScratchDir,
}

/// Starts a [`DedicatedCluster`] in a new scratch directory; panics with the reason on failure.
pub fn dedicated_cluster() -> DedicatedCluster {
    let dir = scratch_dir();
    let cluster = ManagedPostgres::start(&dir.path().join("postgres"), &throwaway_options())
        .unwrap_or_else(|error| panic!("cannot start a dedicated test PostgreSQL: {error}"));
    DedicatedCluster { cluster, _dir: dir }
}

impl DedicatedCluster {
    /// The cluster's own `tally` database, which it creates when it starts.
    pub fn database(&self) -> TestDatabase {
        TestDatabase {
            url: self.cluster.connection_string("tally"),
            name: "tally".into(),
        }
    }
}

impl Deref for DedicatedCluster {
    type Target = ManagedPostgres;

    fn deref(&self) -> &ManagedPostgres {
        &self.cluster
    }
}

impl Drop for DedicatedCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop_immediate();
    }
}

/// A new directory under the test root for a test's own files or clusters. When dropped, every
/// cluster found inside is stopped and the directory is deleted.
pub struct ScratchDir {
    path: PathBuf,
}

/// Creates a [`ScratchDir`].
pub fn scratch_dir() -> ScratchDir {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let path = test_root().join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&path)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
    ScratchDir { path }
}

impl ScratchDir {
    /// The directory, absolute.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        stop_clusters_under(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Whether a process with this pid exists and is not a zombie (`kill(pid, 0)` succeeds for
/// zombies too, which would make a stopped server look alive).
pub fn process_is_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence.
    let exists = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    if !exists {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z'),
        Err(_) => !cfg!(target_os = "linux"),
    }
}

/// Runs `work` on a private runtime in its own thread, so that blocking helpers work from
/// inside `#[tokio::test]` as well as from plain tests.
pub fn block_on<T: Send>(work: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for test setup")
                    .block_on(work)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn database_on_server(url: &str, name: String) -> TestDatabase {
    let mut config = Config::from_str(url)
        .unwrap_or_else(|error| panic!("DATABASE_URL does not parse: {error}"));
    let statement = format!("CREATE DATABASE \"{name}\"");
    let created = block_on(async {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute(&statement).await
    });
    if let Err(error) = created {
        let detail = error
            .as_db_error()
            .map(ToString::to_string)
            .or_else(|| std::error::Error::source(&error).map(ToString::to_string))
            .unwrap_or_default();
        panic!("cannot create test database {name} through DATABASE_URL: {error}: {detail}");
    }
    config.dbname(&name);
    TestDatabase {
        url: to_connection_string(&config),
        name,
    }
}

/// The directory holding every test process's clusters, created (and cleared of the clusters
/// of dead test processes) on first use.
fn test_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("tally-test-pg");
        if fs::create_dir(&root).is_ok() {
            // Shared like /tmp: any user's test processes may add their own entries.
            let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o1777));
        }
        fs::create_dir_all(&root)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", root.display()));
        remove_stale_clusters(&root);
        root
    })
}

fn remove_stale_clusters(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_is_running(pid) {
            continue;
        }
        stop_clusters_under(&entry.path());
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// Stops (immediately) every running cluster at most a few levels below `dir`.
fn stop_clusters_under(dir: &Path) {
    fn visit(dir: &Path, depth: usize) {
        if dir.join("PG_VERSION").is_file() {
            if let Ok(cluster) = ManagedPostgres::attach(dir, &throwaway_options()) {
                let _ = cluster.stop_immediate();
            }
            return;
        }
        if depth == 0 {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                visit(&entry.path(), depth - 1);
            }
        }
    }
    visit(dir, 6);
}

fn shared_cluster_dir() -> PathBuf {
    test_root().join(std::process::id().to_string())
}

/// Registered with `atexit`, which runs both when libtest returns from `main` and when it
/// calls `process::exit` after a failure.
extern "C" fn remove_shared_cluster() {
    let _ = std::panic::catch_unwind(|| {
        let dir = shared_cluster_dir();
        stop_clusters_under(&dir);
        let _ = fs::remove_dir_all(&dir);
    });
}

fn shared_cluster() -> &'static ManagedPostgres {
    static SHARED: OnceLock<Result<ManagedPostgres, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        // Registered before starting, so a start that fails halfway is cleaned up too.
        // SAFETY: registers a plain function that does not unwind.
        unsafe { libc::atexit(remove_shared_cluster) };
        ManagedPostgres::start(&shared_cluster_dir().join("postgres"), &throwaway_options())
            .map_err(|error| error.to_string())
    });
    match shared {
        Ok(cluster) => cluster,
        Err(error) => panic!("cannot start the test PostgreSQL: {error}"),
    }
}
