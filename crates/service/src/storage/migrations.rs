//! Schema migrations: the versioned SQL files of `crates/service/migrations/`, embedded in the binary.
//!
//! They run at every start and by `tally migrate`. Several nodes may start at once, and
//! refinery takes no lock of its own, so the run holds a PostgreSQL advisory lock on the same
//! connection: one node migrates, the others wait and then find nothing left to do.

use tokio_postgres::Client;

use super::StorageError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Arbitrary, fixed: the advisory lock key that serialises migrations ("tally" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_616c_6c79;

/// Where refinery records which migrations ran.
const HISTORY_TABLE: &str = "tally_schema_history";

/// Applies every migration this database has not seen yet.
pub async fn run(client: &mut Client) -> Result<(), StorageError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = embedded::migrations::runner()
        .set_migration_table_name(HISTORY_TABLE)
        .run_async(client)
        .await;
    // Unlock even after a failure; should the connection be broken, the lock went with it.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = report.map_err(|e| StorageError::Unavailable(format!("migration failed: {e}")))?;
    unlocked?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "applied migration");
    }
    Ok(())
}
