//! Helpers shared by the integration tests: a real PostgreSQL, a real node in-process, a
//! real `tally` process, HAProxy in front of processes, clients that keep a ledger, a proxy
//! that loses commit answers, hand-written journal files, and a little PromQL.

pub mod app;
pub mod fault_proxy;
pub mod haproxy;
pub mod journal_files;
pub mod ledger;
pub mod postgres;
pub mod process;
pub mod promql;
