//! What a node tells its operators about itself (the console, `GET /console/status`): who it
//! is and the settings it runs with, secrets hidden. Taken once, when the node starts.
//!
//! The one secret among the settings is the database's password: the connection string is
//! shown as [`DatabaseUrl::redacted`](tally_postgres::DatabaseUrl::redacted) writes it, with
//! `***` for the password. API keys and session tokens are never settings, so never here.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::ServeConfig;

/// A node's identity and settings, as shown to its operators.
#[derive(Debug, Clone)]
pub struct Profile {
    pub node_id: String,
    pub version: &'static str,
    pub mode: String,
    /// The durability in effect (`none` in sync mode, where nothing waits in memory).
    pub durability: String,
    /// The bound on pending keys (`--max-pending-keys`).
    pub max_pending_keys: u64,
    /// The bound on the journal (`--max-journal-bytes`).
    pub max_journal_bytes: u64,
    /// Every setting that shapes the node, by its name in the configuration file, with its
    /// value as written on the command line.
    pub settings: Vec<(&'static str, String)>,
}

impl Profile {
    /// The profile of node `node_id` started with `config`, serving on `listen` (the address
    /// it has, which differs from `config.listen` when that asked for port 0).
    pub fn of(config: &ServeConfig, node_id: String, listen: SocketAddr) -> Profile {
        Profile {
            node_id,
            version: env!("CARGO_PKG_VERSION"),
            mode: config.mode.to_string(),
            durability: config.durability_in_effect(),
            max_pending_keys: config.max_pending_keys,
            max_journal_bytes: config.max_journal_bytes,
            settings: settings(config, listen),
        }
    }
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn or_unset<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "unset".to_owned(), |v| v.to_string())
}

/// Every setting that shapes a node serving on `listen`, by its name in the configuration
/// file, secrets hidden: for the console, `tally check-config` and reloads.
pub fn settings(c: &ServeConfig, listen: SocketAddr) -> Vec<(&'static str, String)> {
    let database = match &c.database.database_url {
        Some(url) if !url.expose().trim().is_empty() => url.redacted(),
        _ => format!(
            "managed, under {}",
            c.database.data_dir.join("postgres").display()
        ),
    };
    vec![
        ("listen", listen.to_string()),
        ("database_url", database),
        ("data_dir", c.database.data_dir.display().to_string()),
        ("mode", c.mode.to_string()),
        ("durability", c.durability_in_effect()),
        ("flush_interval", duration(c.flush_interval)),
        ("key_format", c.key_format.to_string()),
        ("allow_negative", c.allow_negative.to_string()),
        ("max_body_bytes", c.max_body_bytes.to_string()),
        ("max_batch", c.max_batch.to_string()),
        ("max_pending_keys", c.max_pending_keys.to_string()),
        ("max_journal_bytes", c.max_journal_bytes.to_string()),
        ("db_pool_size", c.database.db_pool_size.to_string()),
        ("db_timeout", duration(c.database.db_timeout)),
        ("idempotency_ttl", duration(c.idempotency_ttl)),
        ("auth", c.auth.to_string()),
        ("signup", c.signup.to_string()),
        ("session_ttl", duration(c.session_ttl)),
        ("rate_limit", or_unset(c.rate_limit)),
        ("metrics_listen", or_unset(c.metrics_listen)),
        ("read_timeout", duration(c.read_timeout)),
        ("max_header_bytes", c.max_header_bytes.to_string()),
        ("max_connections", c.max_connections.to_string()),
        ("max_in_flight", c.max_in_flight.to_string()),
        ("drain_delay", duration(c.drain_delay)),
        ("drain_timeout", duration(c.drain_timeout)),
        ("access_log", c.access_log.to_string()),
        ("log_format", c.log_format.to_string()),
        ("log_level", or_unset(c.log_level)),
        ("node_id", or_unset(c.node_id.as_ref())),
        ("insecure_cookies", c.insecure_cookies.to_string()),
        ("trusted_proxies", c.trusted_proxies.to_string()),
        ("watch_config", c.watch_config.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeConfig,
    }

    fn profile(args: &[&str]) -> Profile {
        let mut all = vec!["tally"];
        all.extend_from_slice(args);
        let listen = "127.0.0.1:3333".parse().unwrap();
        Profile::of(&Command::parse_from(all).serve, "n1".to_owned(), listen)
    }

    fn setting<'a>(profile: &'a Profile, name: &str) -> &'a str {
        let found = profile.settings.iter().find(|(n, _)| *n == name);
        &found.unwrap_or_else(|| panic!("no setting {name}")).1
    }

    #[test]
    fn the_database_password_is_never_shown() {
        for url in [
            "postgres://ada:s3cret@db:5432/tally",
            "host=db user=ada password=s3cret dbname=tally",
        ] {
            let p = profile(&["--database-url", url]);
            let shown = setting(&p, "database_url");
            assert!(shown.contains("***"), "{shown}");
            let everything = format!("{:?}", p.settings);
            assert!(!everything.contains("s3cret"), "{everything}");
        }
    }

    #[test]
    fn settings_are_shown_as_written() {
        let p = profile(&["--flush-interval", "2s", "--mode", "sync"]);
        assert_eq!(setting(&p, "flush_interval"), "2s");
        assert_eq!(setting(&p, "mode"), "sync");
        assert_eq!(setting(&p, "rate_limit"), "unset");
        assert_eq!(p.max_pending_keys, 10_000_000);
    }
}
