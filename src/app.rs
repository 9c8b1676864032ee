//! A Tally node from start to stop.
//!
//! Start: lock the data directory, learn the node id, open the database (starting the
//! managed one if needed) and migrate it, learn the node's flush progress, start the flusher,
//! serve. Stop, in this order: stop accepting, let in-flight requests finish, flush what is
//! pending, close the pool, stop the managed PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Durability, Mode, ServeConfig};
use crate::flush::{FlushEnd, FlushState, Flusher};
use crate::http::{AppState, router};
use crate::ingest::{Buffered, Ingest};
use crate::metrics::Metrics;
use crate::node::DataDir;
use crate::pending::PendingDeltas;
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;
use crate::storage::Database;

/// Most keys held in memory before new keys are refused with 503.
pub const MAX_PENDING_KEYS: usize = 10_000_000;

/// How long in-flight requests may take to finish once a shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a node on `listener` until `shutdown` is requested and everything is flushed.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    config.check()?;
    let data_dir = DataDir::open(&config.database.data_dir)?;
    let node = data_dir.node_id(config.node_id.as_deref())?;
    let database = Database::open(&config.database, data_dir.path()).await?;
    let result = run(&config, listener, shutdown, &database, node).await;
    database.close().await;
    result
}

async fn run(
    config: &ServeConfig,
    listener: TcpListener,
    shutdown: Shutdown,
    database: &Database,
    node: crate::node::NodeId,
) -> anyhow::Result<()> {
    let storage = database.storage.clone();
    let metrics = Arc::new(Metrics::default());
    let last_batch = storage
        .register_node(&node)
        .await
        .context("cannot register this node in PostgreSQL")?;

    let (ingest, flush, flusher) = match config.mode {
        Mode::Sync => (Ingest::Sync(storage.clone()), None, None),
        Mode::Buffered => {
            let open_seq = last_batch + 1;
            let pending = Arc::new(PendingDeltas::new(open_seq, MAX_PENDING_KEYS));
            let state = Arc::new(FlushState::new(pending));
            let flusher = Flusher::new(
                state.clone(),
                storage.clone(),
                node.clone(),
                config.flush_interval,
                open_seq,
                metrics.clone(),
            );
            let ingest = Ingest::Buffered(Buffered {
                flush: state.clone(),
                storage: storage.clone(),
                node: node.clone(),
                metrics: metrics.clone(),
            });
            (ingest, Some(state), Some(flusher))
        }
    };

    let stop_flusher = CancellationToken::new();
    let flusher =
        flusher.map(|f| tokio::spawn(f.run(stop_flusher.clone(), shutdown.forced_token())));

    let state = Arc::new(AppState {
        ingest,
        rules: config.validation_rules(),
        max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
        max_batch: config.max_batch as usize,
        sync_mode: config.mode == Mode::Sync,
        readiness: Readiness::new(shutdown.requested_token(), storage.clone(), flush.clone()),
        metrics,
        flush,
    });

    tracing::info!(
        listen = %listener.local_addr()?,
        database = %database.description,
        node_id = %node,
        mode = %config.mode,
        durability = %match config.mode {
            Mode::Sync => "none (each request is committed before its answer)".to_owned(),
            Mode::Buffered => Durability::Memory.to_string(),
        },
        flush_interval = %humantime::format_duration(config.flush_interval),
        "tally is serving"
    );

    let served = serve_http(listener, router(state), &shutdown).await;

    if let Some(flusher) = flusher {
        stop_flusher.cancel();
        match flusher.await.context("the flusher task failed")? {
            FlushEnd::Drained => {
                tracing::info!("final flush done: PostgreSQL has every acknowledged increment")
            }
            FlushEnd::Abandoned { keys } => tracing::error!(
                keys,
                "shutdown forced while PostgreSQL was failing: pending increments of this many keys were NOT written and are lost"
            ),
        }
    }
    served
}

/// Serves until a shutdown is requested, then lets in-flight requests finish (up to
/// [`DRAIN_TIMEOUT`], or until the shutdown is forced).
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Small answers should leave at once, not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
    });
    let requested = shutdown.requested_token();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { requested.cancelled().await });
    let forced = shutdown.forced_token();
    let drain_deadline = async {
        shutdown.requested().await;
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("in-flight requests did not finish in time; closing their connections"),
            _ = forced.cancelled() => {}
        }
    };
    tokio::select! {
        result = server => result.context("the HTTP server failed"),
        _ = drain_deadline => Ok(()),
    }
}
