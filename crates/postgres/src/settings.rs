//! The settings Tally owns in a cluster: `tally.conf` (socket, port, listen addresses, extra
//! settings), `pg_hba.conf`, where the socket goes, and the names it accepts.

use std::path::{Path, PathBuf};

use crate::error::ManagedError;

/// Port of the socket when no TCP port is asked for: the socket file is named after it.
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// Longest socket path the kernel accepts (`sun_path` less its terminating NUL).
#[cfg(target_os = "linux")]
pub(crate) const MAX_SOCKET_PATH: usize = 107;

#[cfg(not(target_os = "linux"))]
pub(crate) const MAX_SOCKET_PATH: usize = 103;

/// Where sockets go when the cluster directory is too deep to hold one.
pub(crate) const SOCKET_FALLBACK_PARENT: &str = "/tmp";

/// The file of settings Tally owns inside the cluster.
pub(crate) const SETTINGS_FILE: &str = "tally.conf";

/// Client authentication for every managed cluster. The socket directory is private to the
/// server's user (and root), so whoever reaches the socket may connect; TCP, when enabled,
/// needs a password so other local users cannot walk in as superuser.
pub(crate) const HBA_CONF: &str = "\
# Written by Tally when it created this cluster.
# Unix-socket connections are trusted: the socket is reachable only by the server's OS user
# (and root). TCP connections, when a TCP port is configured, need a password.
local   all           all                   trust
local   replication   all                   trust
host    all           all     127.0.0.1/32  scram-sha-256
host    all           all     ::1/128       scram-sha-256
";

/// Settings for [`ManagedPostgres::start`](crate::ManagedPostgres::start).
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

/// The socket path the server will bind for a socket directory and port.
pub(crate) fn socket_path(socket_dir: &Path, port: u16) -> PathBuf {
    socket_dir.join(format!(".s.PGSQL.{port}"))
}

/// Whether the server's socket fits in `sun_path` when placed in `socket_dir`.
pub(crate) fn socket_path_fits(socket_dir: &Path, port: u16) -> bool {
    socket_path(socket_dir, port).as_os_str().len() <= MAX_SOCKET_PATH
}

/// A short socket directory derived from the cluster directory, so the same cluster always
/// gets the same one and different clusters never share one. FNV-1a rather than std's hasher
/// because the name must not change between Rust releases.
pub(crate) fn fallback_socket_dir(data_dir: &Path) -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Path::new(SOCKET_FALLBACK_PARENT).join(format!("tally-pg-{hash:016x}"))
}

pub(crate) fn validate_setting(name: &str, value: &str) -> Result<(), ManagedError> {
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
pub(crate) fn validate_database_name(name: &str) -> Result<(), ManagedError> {
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

pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal in postgresql.conf syntax.
pub(crate) fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The content of `tally.conf`.
pub(crate) fn settings_file(
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
}
