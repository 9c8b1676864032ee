//! Helpers shared by the integration tests: each test binary includes them with `mod common;`.

pub mod postgres;
