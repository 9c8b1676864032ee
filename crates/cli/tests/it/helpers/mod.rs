//! Helpers shared by the integration tests: a real PostgreSQL, a real node in-process, a
//! real `tally` process, HAProxy in front of processes, a headless Chromium, clients that keep
//! a ledger, a proxy that loses commit answers, hand-written journal files, and a little PromQL.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

pub mod app;
pub mod browser;
pub mod fault_proxy;
pub mod haproxy;
pub mod journal_files;
pub mod ledger;
pub mod postgres;
pub mod process;
pub mod promql;
pub mod yaml;

/// The repository's root, which holds `deploy/`, `docs/` and the `Dockerfile`. Every path the
/// tests take to a file of the repository starts here, so that moving the tests elsewhere (into
/// a crate of a workspace) changes this one line.
pub fn root() -> &'static Path {
    static ROOT: LazyLock<PathBuf> = LazyLock::new(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .expect("the repository's root")
    });
    &ROOT
}
