//! Helpers shared by the integration tests: a real PostgreSQL, a real node in-process, and a
//! real `tally` process.

pub mod app;
pub mod postgres;
pub mod process;
