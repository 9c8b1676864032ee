//! Tally: an HTTP counting service that answers at once and keeps exact totals in PostgreSQL.
//!
//! The modules follow the data. A request goes through [`http`] (parse), [`increment`]
//! (validate) and [`ingest`] (the request path: into the [`pending`] buffer and the
//! [`journal`], or straight to PostgreSQL in sync mode). The [`flush`] path writes the pending
//! buffer to PostgreSQL through [`storage`], one [`batch`] at a time, exactly once; at start,
//! [`recovery`] replays what the journal holds and PostgreSQL lacks. [`app`] wires them
//! together and runs a node from start to stop on the [`database`] it opens; a
//! [`StartError`] says whether a start was refused.
//!
//! The binary (`crates/cli`) parses the command line into this crate's settings; PostgreSQL's
//! connection strings and the managed local cluster are the `tally-postgres` crate's.

pub mod access;
pub mod app;
pub mod batch;
pub mod config;
pub mod database;
pub mod fault;
pub mod flush;
pub mod http;
pub mod idempotency;
pub mod increment;
pub mod ingest;
pub mod item;
pub mod journal;
pub mod metrics;
pub mod node;
pub mod pending;
pub mod profile;
pub mod readiness;
pub mod recovery;
pub mod reload;
pub mod shutdown;
pub mod storage;
mod sync;
pub mod sync_writer;
pub mod telemetry;

/// Why a node could not start, or a command could not open what it needs (a node's data
/// directory, its database): the error of the start path, which alone decides whether `tally`
/// refused to start ([`is_refusal`](Self::is_refusal)).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be used: locked by another process, another node's, or
    /// unreadable.
    #[error(transparent)]
    DataDir(#[from] node::DataDirError),
    /// The managed PostgreSQL could not be found, created or started.
    #[error(transparent)]
    Managed(#[from] tally_postgres::ManagedError),
    /// PostgreSQL failed, or refused this node: its id in use by a live process, or an
    /// encoding other than UTF8.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// An address to serve on cannot be had: another process holds it, or it is not this
    /// machine's.
    #[error("cannot listen on {addr}{what}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        /// What the address is for, when it is not the API's (` for /metrics`).
        what: &'static str,
        source: std::io::Error,
    },
    /// Anything else: a damaged journal, an invalid database URL, a failed replay.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl StartError {
    /// Whether `tally` refused to start because of how it was configured or installed, or
    /// because of the database it was given: fixing that is the operator's, and retrying
    /// as it is cannot help (exit status 2). Anything else is a failure (exit status 1).
    pub fn is_refusal(&self) -> bool {
        use storage::StorageError::{NodeInUse, NotUtf8};
        match self {
            StartError::DataDir(_) => true,
            StartError::Managed(e) => {
                matches!(e, tally_postgres::ManagedError::NotInstalled { .. })
            }
            StartError::Storage(e) => matches!(e, NodeInUse(_) | NotUtf8(_)),
            // Like a data directory in use: the operator's to fix, and a retry as it is fails.
            StartError::Listen { .. } => true,
            StartError::Failed(_) => false,
        }
    }
}

/// The exit status for a failed run: 2 when Tally refused to start
/// ([`StartError::is_refusal`]), 1 for anything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let refused = e.chain().any(|cause| {
        cause
            .downcast_ref::<StartError>()
            .is_some_and(StartError::is_refusal)
    });
    if refused { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: impl Into<StartError>) -> u8 {
        exit_code(&anyhow::Error::new(e.into()))
    }

    #[test]
    fn refusals_to_start_exit_2_and_failures_exit_1() {
        let not_installed = StartError::from(tally_postgres::ManagedError::NotInstalled {
            searched: "PATH".into(),
        });
        assert_eq!(
            exit_code(&anyhow::Error::new(not_installed).context("cannot open the database")),
            2
        );
        assert_eq!(code(node::DataDirError::Locked("/srv/tally".into())), 2);
        assert_eq!(code(storage::StorageError::NotUtf8("LATIN1".into())), 2);
        assert_eq!(code(storage::StorageError::NodeInUse("a".into())), 2);
        let unreachable = storage::StorageError::Unavailable("connection refused".into());
        assert_eq!(code(unreachable), 1);
        assert_eq!(code(anyhow::anyhow!("the journal is damaged")), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("the HTTP server failed")), 1);
    }
}
