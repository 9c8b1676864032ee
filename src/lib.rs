//! Tally: an HTTP counting service that answers at once and keeps exact totals in PostgreSQL.

pub mod storage;
