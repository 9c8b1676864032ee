//! Why the managed PostgreSQL could not be found, created, started or stopped.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

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

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> ManagedError {
    let path = path.to_path_buf();
    move |cause| ManagedError::Io {
        action,
        path,
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
