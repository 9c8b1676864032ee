//! A PostgreSQL cluster that Tally creates, starts and stops itself.
//!
//! Without `DATABASE_URL`, Tally keeps its totals in a cluster of its own under its data
//! directory, run by the PostgreSQL server programs installed on the machine
//! ([`PgBinaries::find`]). [`ManagedPostgres::start`] creates the cluster on first use, starts
//! it (or adopts the server an earlier, killed Tally left running) and hands out connection
//! settings. Nothing here stops the server implicitly (there is no `Drop`): only the owner knows
//! when its final flush is done, and a Tally that was killed must find its server where it left
//! it.
//!
//! Layout, for a cluster directory `<dir>` (Tally passes `<data-dir>/postgres`):
//!
//! - `<dir>`: the cluster itself (PGDATA), which also holds the server's Unix socket;
//! - `<dir>.log` beside it: the server log, appended to across runs and kept after failures;
//! - `<dir>.lock` beside it: an advisory lock that serialises start and stop between processes;
//! - `<dir>/tally.conf`: the settings Tally owns (socket, port, listen addresses, extra
//!   settings), written before every start and included from `postgresql.conf`, so a plain
//!   `pg_ctl start` by hand behaves the same.
//!
//! The server listens only on its Unix socket (mode 0700, trusted without a password) unless a
//! TCP port is asked for; TCP clients on localhost then need a password, which has to be set
//! first through the socket (`ALTER ROLE tally PASSWORD '...'`). A socket path is limited to
//! about 107 bytes; when `<dir>` is too deep for that, the socket goes to
//! `/tmp/tally-pg-<hash of dir>` (mode 0700, owned by the server's user) instead.
//!
//! PostgreSQL refuses to run as root. When Tally is root, every server program runs as the
//! `postgres` OS user, without supplementary groups and from `/`, and the cluster and its log
//! belong to that user. As any other user, the programs run as that user.
//!
//! The crate also holds [`DatabaseUrl`], the connection string as Tally takes it, and
//! [`Endpoint`], how every connection is opened, with TLS as `sslmode` asks ([`tls`]).
//!
//! Inside, by concern: `error` (what can go wrong), `os_user` (the server's OS user and
//! running programs as it), `settings` (`tally.conf`, `pg_hba.conf`, the socket's place),
//! `programs` (running PostgreSQL's programs and reading their output), `server` (the pid
//! file, the postmaster, the start/stop lock), `cluster` (the life cycle), `binaries` (finding
//! the programs), `conninfo` (connection strings).

mod binaries;
mod cluster;
mod conninfo;
mod database_url;
mod error;
mod os_user;
mod programs;
mod server;
mod settings;
pub mod tls;

pub use binaries::PgBinaries;
pub use cluster::{ManagedPostgres, SUPERUSER};
pub use conninfo::to_connection_string;
pub use database_url::{DatabaseUrl, DatabaseUrlParser, Endpoint, redact};
pub use error::ManagedError;
pub use os_user::SERVER_OS_USER;
pub use settings::ManagedOptions;
