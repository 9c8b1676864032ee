//! Tally's integration tests, in one test binary: one module per area of the contract, and the
//! helpers they share (a real PostgreSQL, a real node in-process or as a process, HAProxy, a
//! fault proxy, clients that keep a ledger) compiled once for all of them.
//!
//! Every area shares the binary's one throwaway PostgreSQL cluster, each test in a fresh
//! database of its own; a test that stops or starts PostgreSQL gets a cluster of its own
//! (`helpers::postgres`). Run one area with `cargo test --test it api::`.

mod helpers;

mod access;
mod api;
mod cluster;
mod console;
mod crash;
mod deploy;
mod deploy_files;
mod disk_faults;
mod flush;
mod idempotency;
mod items;
mod journal;
mod limits;
mod load;
mod managed_postgres;
mod process;
mod recovery;
mod reload;
mod schema;
mod sync_group;
mod tls;
