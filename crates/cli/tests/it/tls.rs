//! TLS to PostgreSQL, against a real server: first one without TLS, then the same server
//! restarted with `ssl = on`, a certificate from a CA made here, and a `pg_hba.conf` that
//! takes only TLS connections with a client certificate. Every connection Tally opens (the
//! migrations, the node's claim, the pool, `tally load --verify`) goes through it, so a
//! success there is a TLS success.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tally_postgres::{ManagedOptions, ManagedPostgres};

use crate::helpers::postgres::{block_on, scratch_dir, throwaway_options};
use crate::helpers::process::{TallyProcess, tally_command};

const PASSWORD: &str = "tls-test-only";

/// A CA and what it signed, as PEM files in `dir`.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn make_pki() -> (Pki, String) {
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let trusted = ca("Tally test CA");
    let stranger = ca("Some other CA");
    let signed = |names: Vec<String>, common_name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &trusted).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    // Made out to "localhost" only: 127.0.0.1 is the wrong name for it.
    let (server_cert, server_key) = signed(vec!["localhost".into()], "localhost");
    // A client certificate's common name must be the role it logs in as.
    let (client_cert, client_key) = signed(Vec::new(), "tally");
    (
        Pki {
            ca: trusted.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        },
        stranger.pem(),
    )
}

fn write_private(path: &Path, contents: &str, owner_of: &Path) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    let meta = fs::metadata(owner_of).unwrap();
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn migrate(url: &str) -> Output {
    tally_command()
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails with the output unless `tally migrate` failed with exit 1 and a message holding
/// `expected`.
fn assert_refused(url: &str, expected: &str) {
    let out = migrate(url);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{url}: {err}");
    assert!(
        err.contains(expected),
        "{url}: expected {expected:?} in {err}"
    );
    assert!(!err.contains(PASSWORD), "the password leaked: {err}");
}

fn assert_migrates(url: &str) {
    let out = migrate(url);
    assert!(out.status.success(), "{url}: {}", stderr(&out));
}

#[test]
fn every_sslmode_does_what_libpq_says_against_a_real_server() {
    let scratch = scratch_dir();
    let dir = scratch.path().join("postgres");
    let port = free_port();
    let plain = ManagedOptions {
        tcp_port: Some(port),
        ..throwaway_options()
    };
    let cluster = ManagedPostgres::start(&dir, &plain).unwrap();
    block_on(async {
        let (client, connection) = cluster
            .config("tally")
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("ALTER ROLE tally PASSWORD '{PASSWORD}'"))
            .await
    })
    .unwrap();
    let url =
        |host: &str, tls: &str| format!("postgres://tally:{PASSWORD}@{host}:{port}/tally?{tls}");

    // A server without TLS: `prefer` goes on in plain text, `require` and up refuse.
    assert_migrates(&url("localhost", "sslmode=prefer"));
    assert_migrates(&url("localhost", "sslmode=disable"));
    assert_refused(&url("localhost", "sslmode=require"), "does not support TLS");

    // The same server with TLS only, and a client certificate required.
    let (pki, stranger) = make_pki();
    let files = scratch.path().join("client");
    fs::create_dir(&files).unwrap();
    let ca = files.join("ca.pem");
    fs::write(&ca, &pki.ca).unwrap();
    let other_ca = files.join("other-ca.pem");
    fs::write(&other_ca, &stranger).unwrap();
    let client_cert = files.join("client.pem");
    fs::write(&client_cert, &pki.client_cert).unwrap();
    let client_key = files.join("client.key");
    write_private(&client_key, &pki.client_key, &files);
    cluster.stop().unwrap();
    let data = cluster.data_dir().to_path_buf();
    write_private(&data.join("server.crt"), &pki.server_cert, &data);
    write_private(&data.join("server.key"), &pki.server_key, &data);
    write_private(&data.join("ca.crt"), &pki.ca, &data);
    write_private(
        &data.join("pg_hba.conf"),
        "local all all trust\n\
         hostnossl all all 127.0.0.1/32 reject\n\
         hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n",
        &data,
    );
    let mut with_tls = plain.clone();
    with_tls.extra_settings.extend(
        [
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
            ("ssl_ca_file", "ca.crt"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let cluster = ManagedPostgres::start(&dir, &with_tls).unwrap();
    let client = format!(
        "sslcert={}&sslkey={}",
        client_cert.display(),
        client_key.display()
    );
    let full = |host: &str, root: &Path| {
        url(
            host,
            &format!(
                "sslmode=verify-full&sslrootcert={}&{client}",
                root.display()
            ),
        )
    };

    // Refusals, each with a message that says why.
    assert_refused(
        &url("localhost", &format!("sslmode=disable&{client}")),
        "no encryption",
    );
    assert_refused(
        &full("127.0.0.1", &ca),
        "certificate not valid for name \"127.0.0.1\"",
    );
    assert_refused(&full("localhost", &other_ca), "UnknownIssuer");
    assert_refused(
        &url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        ),
        "certificate",
    );
    // A missing file is a configuration error, found before any connection.
    let missing = migrate(&full("localhost", &files.join("nowhere.pem")));
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("nowhere.pem"),
        "{}",
        stderr(&missing)
    );

    // What connects: `require` without checking, `verify-ca` without the name, `verify-full`.
    assert_migrates(&url("127.0.0.1", &format!("sslmode=require&{client}")));
    assert_migrates(&url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}&{client}", ca.display()),
    ));
    assert_migrates(&full("localhost", &ca));

    // A node whose every connection is TLS: it serves, flushes, and `tally load --verify`
    // finds its totals over TLS too.
    let tls_url = full("localhost", &ca);
    let node_dir = scratch.path().join("node");
    let mut node = TallyProcess::start(
        &node_dir,
        &["--flush-interval", "50ms"],
        &[("DATABASE_URL", &tls_url)],
    );
    assert!(
        node.log().contains("sslmode verify-full"),
        "the start-up line names the TLS mode: {}",
        node.log()
    );
    let load = tally_command()
        .args(["load", "--quiet", "--verify", "--requests", "2000"])
        .args(["--connections", "4", "--keys", "50", "--url"])
        .arg(format!("http://{}", node.addr))
        .args(["--database-url", &tls_url])
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "tally load --verify over TLS: {}{}",
        String::from_utf8_lossy(&load.stdout),
        stderr(&load)
    );
    node.signal(libc::SIGTERM);
    assert!(node.wait(std::time::Duration::from_secs(30)).success());
    assert!(!node.log().contains(PASSWORD), "the password leaked");
    cluster.stop().unwrap();
}
