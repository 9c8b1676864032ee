//! The managed PostgreSQL against the real server programs: creating a cluster, stopping it,
//! adopting a running server, recovering from crashes, the short-socket fallback, and the
//! throwaway databases the other integration tests rely on.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tally_postgres::{ManagedError, ManagedOptions, ManagedPostgres, PgBinaries};
use tokio_postgres::{Client, Config, NoTls};

use crate::helpers::postgres::{
    dedicated_cluster, fresh_database, process_is_running, scratch_dir, throwaway_options,
};

async fn connect(config: &Config) -> Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect with {config:?}: {error:?}"));
    tokio::spawn(connection);
    client
}

/// Starts a cluster the way Tally does from async code.
async fn start(dir: &Path, options: &ManagedOptions) -> ManagedPostgres {
    let (dir, options) = (dir.to_path_buf(), options.clone());
    tokio::task::spawn_blocking(move || ManagedPostgres::start(&dir, &options))
        .await
        .expect("start does not panic")
        .unwrap_or_else(|error| panic!("start failed: {error}"))
}

async fn read_value(cluster: &ManagedPostgres) -> i32 {
    let client = connect(&cluster.config("tally")).await;
    client
        .query_one("SELECT v FROM kept", &[])
        .await
        .expect("the row written before is there")
        .get(0)
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_is_running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_installed_server_programs_are_found() {
    let binaries = PgBinaries::find().expect("PostgreSQL server programs are installed here");
    for program in ["initdb", "pg_ctl", "postgres"] {
        assert!(
            binaries.bindir.join(program).is_file(),
            "{program} in {}",
            binaries.bindir.display()
        );
    }
    assert!(
        !binaries.version.is_empty()
            && binaries
                .version
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.'),
        "version {:?}",
        binaries.version
    );
}

#[tokio::test]
async fn a_new_cluster_keeps_its_data_across_stop_and_start() {
    let scratch = scratch_dir();
    let dir = scratch.path().join("postgres");
    let options = throwaway_options();

    let cluster = start(&dir, &options).await;
    assert!(!cluster.adopted());
    assert_eq!(cluster.data_dir(), dir);
    assert_eq!(cluster.socket_dir(), dir, "the socket lives in the cluster");
    assert!(dir.join("PG_VERSION").is_file());
    assert!(cluster.log_file().is_file());
    let client = connect(&cluster.config("tally")).await;
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await
        .expect("write a row");
    drop(client);

    let pid = cluster.server_pid().expect("the server runs");
    assert!(process_is_running(pid));
    cluster.stop().expect("stop");
    assert_eq!(cluster.server_pid(), None);
    assert!(!process_is_running(pid), "postmaster {pid} is gone");
    assert!(!dir.join(".s.PGSQL.5432").exists(), "the socket is removed");
    cluster.stop().expect("stopping a stopped server succeeds");

    let again = start(&dir, &options).await;
    assert!(!again.adopted(), "nothing was running to adopt");
    assert_ne!(again.server_pid(), Some(pid));
    assert_eq!(read_value(&again).await, 42);
    again.stop().expect("stop");
}

#[tokio::test]
async fn a_running_server_is_adopted_rather_than_started_twice() {
    let scratch = scratch_dir();
    let dir = scratch.path().join("postgres");
    // An empty directory made by the caller, and the remains of an initdb killed halfway.
    std::fs::create_dir(&dir).unwrap();
    let staging = scratch.path().join("postgres.initdb");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("PG_VERSION"), "15").unwrap();
    let first = start(&dir, &throwaway_options()).await;
    assert!(!first.adopted());
    assert!(!staging.exists(), "the half-made cluster was cleared away");
    let pid = first.server_pid().expect("the server runs");

    let second = start(&dir, &throwaway_options()).await;
    assert!(second.adopted());
    assert_eq!(second.server_pid(), Some(pid));
    let client = connect(&second.config("tally")).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);

    second.stop().expect("the adopter may stop it");
    assert_eq!(first.server_pid(), None);
    assert!(!process_is_running(pid));
    let attached = ManagedPostgres::attach(&dir, &throwaway_options()).expect("attach");
    assert!(!attached.adopted(), "nothing runs to adopt");
    assert_eq!(attached.server_pid(), None);
}

#[test]
fn concurrent_starts_of_one_cluster_share_one_server() {
    let scratch = scratch_dir();
    let dir = scratch.path().join("postgres");
    let options = throwaway_options();
    let clusters: Vec<ManagedPostgres> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| ManagedPostgres::start(&dir, &options)))
            .collect();
        starts
            .into_iter()
            .map(|start| {
                start
                    .join()
                    .expect("no panic")
                    .unwrap_or_else(|error| panic!("start failed: {error}"))
            })
            .collect()
    });
    let adopted = clusters.iter().filter(|cluster| cluster.adopted()).count();
    assert_eq!(adopted, 1, "one started the server, the other adopted it");
    assert!(clusters[0].server_pid().is_some());
    assert_eq!(clusters[0].server_pid(), clusters[1].server_pid());
    clusters[0].stop().expect("stop");
}

#[tokio::test]
async fn the_server_comes_back_after_a_crash() {
    let scratch = scratch_dir();
    let dir = scratch.path().join("postgres");
    let cluster = start(&dir, &throwaway_options()).await;
    let client = connect(&cluster.config("tally")).await;
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
        .await
        .expect("write a row");
    drop(client);

    let pid = cluster.server_pid().expect("the server runs");
    cluster.stop_immediate().expect("stop immediately");
    assert_eq!(cluster.server_pid(), None);
    assert!(!process_is_running(pid));
    cluster
        .start_again()
        .expect("start again after an immediate stop");
    assert_eq!(read_value(&cluster).await, 7);

    // SIGKILL leaves postmaster.pid behind, naming a process that no longer exists.
    let pid = cluster.server_pid().expect("the server runs again");
    // SAFETY: sends a signal to the postmaster this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    wait_until_gone(pid);
    assert!(!process_is_running(pid));
    assert!(dir.join("postmaster.pid").is_file(), "a stale pid file");
    assert_eq!(cluster.server_pid(), None);

    let restarted = start(&dir, &throwaway_options()).await;
    assert!(!restarted.adopted(), "a dead server is not adopted");
    let new_pid = restarted.server_pid().expect("a new server runs");
    assert_ne!(new_pid, pid);
    assert_eq!(read_value(&restarted).await, 7);
    restarted.stop().expect("stop");
}

#[tokio::test]
async fn a_deep_directory_gets_its_socket_under_tmp() {
    let scratch = scratch_dir();
    let dir: PathBuf = scratch
        .path()
        .join("a".repeat(60))
        .join("b".repeat(60))
        .join("postgres");
    assert!(dir.as_os_str().len() > 107, "too deep for a socket inside");

    let cluster = start(&dir, &throwaway_options()).await;
    let socket_dir = cluster.socket_dir().to_path_buf();
    assert!(
        socket_dir.starts_with("/tmp") && socket_dir != dir,
        "socket in {}",
        socket_dir.display()
    );
    let config = Config::from_str(&cluster.connection_string("tally"))
        .expect("the connection string parses");
    let client = connect(&config).await;
    let name: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "tally");
    drop(client);

    cluster.stop().expect("stop");
    assert!(
        !socket_dir.exists(),
        "the fallback socket directory is removed"
    );
}

#[tokio::test]
async fn tcp_needs_a_password_while_the_socket_does_not() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let scratch = scratch_dir();
    let options = ManagedOptions {
        tcp_port: Some(port),
        ..throwaway_options()
    };
    let cluster = start(&scratch.path().join("postgres"), &options).await;
    assert_eq!(cluster.port(), port);

    let mut tcp = Config::new();
    tcp.host("127.0.0.1")
        .port(port)
        .user("tally")
        .dbname("tally");
    let refused = tcp.connect(NoTls).await;
    assert!(refused.is_err(), "no password, no TCP connection");

    let client = connect(&cluster.config("tally")).await;
    client
        .batch_execute("ALTER ROLE tally PASSWORD 'test-only'")
        .await
        .expect("set a password through the socket");
    tcp.password("test-only");
    let over_tcp = connect(&tcp).await;
    over_tcp.query_one("SELECT 1", &[]).await.expect("query");
    drop((client, over_tcp));
    cluster.stop().expect("stop");
}

#[tokio::test]
async fn fresh_databases_are_distinct_and_empty() {
    let first = fresh_database();
    let second = fresh_database();
    assert_ne!(first.name, second.name);

    let a = connect(&first.config()).await;
    let b = connect(&second.config()).await;
    let count_tables =
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'";
    for (client, database) in [(&a, &first), (&b, &second)] {
        let name: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, database.name);
        let tables: i64 = client.query_one(count_tables, &[]).await.unwrap().get(0);
        assert_eq!(tables, 0, "{} starts empty", database.name);
    }
    a.batch_execute("CREATE TABLE only_in_first (v int)")
        .await
        .unwrap();
    let tables: i64 = b.query_one(count_tables, &[]).await.unwrap().get(0);
    assert_eq!(tables, 0, "databases do not share tables");
}

#[test]
fn a_dedicated_cluster_is_stopped_and_removed_when_dropped() {
    let cluster = dedicated_cluster();
    let dir = cluster.data_dir().to_path_buf();
    let pid = cluster.server_pid().expect("the server runs");
    drop(cluster);
    wait_until_gone(pid);
    assert!(!process_is_running(pid));
    assert!(!dir.exists());
}

#[test]
fn a_directory_holding_something_else_is_refused() {
    let scratch = scratch_dir();
    let dir = scratch.path().join("postgres");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    match ManagedPostgres::start(&dir, &throwaway_options()) {
        Err(ManagedError::NotACluster { .. }) => {}
        other => panic!("expected NotACluster, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
}

/// As root the server runs as `postgres`, which cannot enter a directory closed to others.
#[test]
fn a_directory_the_server_user_cannot_reach_is_refused_with_advice() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root runs the server as another user");
        return;
    }
    let scratch = scratch_dir();
    let closed = scratch.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    match ManagedPostgres::start(&closed.join("postgres"), &throwaway_options()) {
        Err(error @ ManagedError::Unreachable { .. }) => {
            let message = error.to_string();
            assert!(message.contains("--data-dir"), "{message}");
            assert!(message.contains("closed"), "{message}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
