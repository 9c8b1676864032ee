//! Everything that talks to PostgreSQL lives below this module.

pub mod managed;
