//! Tally: an HTTP counting service that answers at once and keeps exact totals in PostgreSQL.
//!
//! A request goes through [`http`] (parse), [`increment`] (validate) and [`ingest`] (the
//! request path: into [`pending`] deltas, or straight to PostgreSQL in sync mode). The
//! [`flush`] path moves pending deltas into PostgreSQL through [`storage`], exactly once.
//! [`app`] wires them together and runs a node from start to stop. [`load`] is the verifying
//! load generator (`tally load`).

pub mod app;
pub mod batch;
pub mod config;
pub mod fault;
pub mod flush;
pub mod http;
pub mod increment;
pub mod ingest;
pub mod journal;
pub mod load;
pub mod metrics;
pub mod node;
pub mod pending;
pub mod readiness;
pub mod recovery;
pub mod shutdown;
pub mod storage;
mod sync;
pub mod telemetry;

/// The exit status for a failed run: 2 when Tally refused to start because of how it was
/// configured or installed, or because of the database it was given (fix that and retry), 1
/// for anything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let refused = e.chain().any(|cause| {
        cause.is::<config::ConfigError>()
            || cause.is::<node::DataDirError>()
            || matches!(
                cause.downcast_ref::<storage::StorageError>(),
                Some(storage::StorageError::NodeInUse(_) | storage::StorageError::NotUtf8(_))
            )
            || matches!(
                cause.downcast_ref::<storage::managed::ManagedError>(),
                Some(storage::managed::ManagedError::NotInstalled { .. })
            )
    });
    if refused { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_to_start_exit_2_and_failures_exit_1() {
        let not_installed = anyhow::Error::new(storage::managed::ManagedError::NotInstalled {
            searched: "PATH".into(),
        });
        assert_eq!(
            exit_code(&not_installed.context("cannot open the database")),
            2
        );
        let locked = node::DataDirError::Locked("/srv/tally".into());
        assert_eq!(exit_code(&anyhow::Error::new(locked)), 2);
        let latin1 = storage::StorageError::NotUtf8("LATIN1".into());
        assert_eq!(exit_code(&anyhow::Error::new(latin1)), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("the HTTP server failed")), 1);
    }
}
