//! A PostgreSQL connection string, as Tally takes it from `DATABASE_URL` or a flag.

use std::fmt;

/// A database connection string (a URL or `key=value` pairs). Its `Debug` never shows it,
/// since it may hold a password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The string itself, password included: for a connection, never for a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Parse now so a typo fails at start with exit 2, not at the first connection.
        s.parse::<tokio_postgres::Config>()
            .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
        Ok(DatabaseUrl(s.to_owned()))
    }
}
