//! Helpers shared by the integration tests: a real PostgreSQL, a real node in-process, a
//! real `tally` process, clients that keep a ledger, and a proxy that loses commit answers.

pub mod app;
pub mod fault_proxy;
pub mod haproxy;
pub mod journal_files;
pub mod ledger;
pub mod postgres;
pub mod process;
