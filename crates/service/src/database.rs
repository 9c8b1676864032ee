//! The database a node uses: an external PostgreSQL (`DATABASE_URL`), or else the managed local
//! cluster under the data directory, which Tally creates, starts and stops itself. Opened at
//! start (refused unless it stores text as UTF-8, then migrated) and closed at the very end of
//! a stop, after everything that writes to it.

use std::path::Path;

use crate::StartError;
use crate::config::DatabaseConfig;
use crate::storage::{Storage, describe};
use tally_postgres::tls::SslMode;
use tally_postgres::{Endpoint, ManagedOptions, ManagedPostgres};

/// The database a node uses: an external one (`DATABASE_URL`) or a managed local cluster.
pub struct Database {
    pub storage: Storage,
    /// Where it is, for the start-up log line.
    pub description: String,
    managed: Option<ManagedPostgres>,
}

impl Database {
    /// Connects to `DATABASE_URL`, or creates and starts the managed cluster under
    /// `<data_dir>/postgres` when it is unset, checks that it stores text as UTF-8, then
    /// applies the migrations.
    pub async fn open(config: &DatabaseConfig, data_dir: &Path) -> Result<Database, StartError> {
        // An empty DATABASE_URL means unset, as shells and compose files often leave it.
        let url = config
            .database_url
            .as_ref()
            .filter(|u| !u.expose().trim().is_empty());
        let (endpoint, description, managed) = match url {
            Some(url) => {
                let endpoint = url.endpoint().clone();
                let tls = match endpoint.ssl_mode() {
                    SslMode::Disable => String::new(),
                    mode => format!(" (sslmode {})", mode.as_str()),
                };
                let description = format!("external {}{tls}", describe(&endpoint.config));
                (endpoint, description, None)
            }
            None => {
                let dir = data_dir.join("postgres");
                let cluster = tokio::task::spawn_blocking(move || {
                    ManagedPostgres::start(&dir, &ManagedOptions::default())
                })
                .await
                .map_err(anyhow::Error::from)??;
                let pg = cluster.config(&ManagedOptions::default().database);
                let description = format!("managed {}", describe(&pg));
                (Endpoint::plain(pg), description, Some(cluster))
            }
        };
        let storage = Storage::connect(endpoint, config.db_pool_size as usize, config.db_timeout)?;
        let database = Database {
            storage,
            description,
            managed,
        };
        let usable = async {
            database.storage.check_encoding().await?;
            database.storage.migrate().await
        };
        if let Err(e) = usable.await {
            database.close().await;
            return Err(e.into());
        }
        Ok(database)
    }

    /// Closes the pool and stops the managed cluster, if any.
    pub async fn close(self) {
        self.storage.close();
        if let Some(cluster) = self.managed {
            match tokio::task::spawn_blocking(move || cluster.stop()).await {
                Ok(Ok(())) => tracing::info!("stopped the managed PostgreSQL"),
                Ok(Err(e)) => tracing::error!(error = %e, "could not stop the managed PostgreSQL"),
                Err(e) => tracing::error!(error = %e, "could not stop the managed PostgreSQL"),
            }
        }
    }
}
