//! A Tally node from start to stop.
//!
//! Start: lock the data directory, learn the node id, open the database (starting the
//! managed one if needed) and migrate it, claim the node id in PostgreSQL under a new epoch,
//! replay what the journal holds that PostgreSQL does not, release the journal segments it no
//! longer needs, then serve. Stop, in this order: stop accepting, let in-flight requests
//! finish (up to the drain timeout), close the pending map to new increments, flush what is
//! pending, close the journal, close the pool, stop the managed PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::StartError;
use crate::batch::BatchSeq;
use crate::config::{Mode, ServeConfig};
use crate::database::Database;
use crate::flush::{FlushEnd, Flusher};
use crate::http::{ApiContext, app};
use crate::ingest::{Buffered, Ingest};
use crate::journal::JournalOptions;
use crate::metrics::Metrics;
use crate::node::{DataDir, NodeId};
use crate::pending::{Unpersisted, Unwritten};
use crate::readiness::Readiness;
use crate::recovery;
use crate::shutdown::Shutdown;
use crate::storage::{Owner, Replay};

/// Runs a node on `listener` until `shutdown` is requested and everything is flushed.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let data_dir = DataDir::open(&config.database.data_dir).map_err(StartError::from)?;
    let node = data_dir
        .node_id(config.node_id.as_deref())
        .map_err(StartError::from)?;
    let database = Database::open(&config.database, data_dir.path()).await?;
    let result = run(&config, listener, shutdown, &database, &data_dir, node).await;
    database.close().await;
    result
}

async fn run(
    config: &ServeConfig,
    listener: TcpListener,
    shutdown: Shutdown,
    database: &Database,
    data_dir: &DataDir,
    node: NodeId,
) -> anyhow::Result<()> {
    let storage = database.storage.clone();
    let metrics = Arc::new(Metrics::default());
    // The journal is opened whenever one exists, whatever the mode, so that a node switched
    // to `--durability memory` or `--mode sync` after a crash still replays it. The claim's
    // epoch must be above every epoch in it, so its headers are read first.
    let journal_dir = data_dir.path().join("journal");
    let epochs = crate::journal::epochs(&journal_dir)?;
    let claim = storage
        .claim_node(&node, epochs.last().copied().unwrap_or(0))
        .await
        .map_err(StartError::from)?;
    let owner = claim.owner().clone();

    let (journal, replays) = if config.uses_journal() || journal_dir.exists() {
        let applied = storage.applied(&node, &epochs).await?;
        let mut options = JournalOptions::new(journal_dir);
        options.fsync_seconds = Some(metrics.journal_fsync_duration.clone());
        options.epoch = owner.epoch;
        let r = tokio::task::spawn_blocking(move || recovery::open_journal(options, &applied))
            .await??;
        log_recovery(&r, &owner);
        (Some(r.journal), r.replays)
    } else {
        (None, Vec::new())
    };

    let pending = Arc::new(Unpersisted::new(
        BatchSeq::first(),
        usize::try_from(config.max_pending_keys).unwrap_or(usize::MAX),
    ));
    let flusher = Flusher::new(
        pending.clone(),
        storage.clone(),
        owner.clone(),
        config.flush_interval,
        BatchSeq::first(),
        journal.clone(),
        metrics.clone(),
    );
    replay(&flusher, replays, &shutdown).await?;

    // The journal takes appends only in buffered journal mode; otherwise it was opened for
    // recovery alone.
    let appends = journal.clone().filter(|_| config.uses_journal());
    let (ingest, flush, flusher) = match config.mode {
        Mode::Sync => (Ingest::Sync(storage.clone()), None, None),
        Mode::Buffered => {
            let ingest = Ingest::Buffered(Buffered {
                pending: pending.clone(),
                storage: storage.clone(),
                owner: owner.clone(),
                journal: appends.clone(),
                max_journal_bytes: config.max_journal_bytes,
            });
            (ingest, Some(pending), Some(flusher))
        }
    };
    let stop_flusher = CancellationToken::new();
    let flusher = match flusher {
        Some(f) => Some(f.spawn_thread(stop_flusher.clone(), shutdown.clone())?),
        None => None,
    };

    let held = flush.clone();
    let state = Arc::new(ApiContext {
        ingest,
        rules: config.validation_rules(),
        max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
        max_batch: config.max_batch as usize,
        readiness: Readiness::new(
            shutdown.requested_token(),
            storage.clone(),
            flush,
            appends,
            config.max_journal_bytes,
        ),
        metrics: metrics.clone(),
    });
    metrics
        .build_info
        .get_or_create(&crate::metrics::BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            node_id: node.to_string(),
            mode: config.mode.to_string(),
            durability: config.durability_in_effect(),
        })
        .set(1);

    tracing::info!(
        listen = %listener.local_addr()?,
        database = %database.description,
        node_id = %node,
        epoch = owner.epoch,
        mode = %config.mode,
        durability = %config.durability_in_effect(),
        flush_interval = %humantime::format_duration(config.flush_interval),
        "tally is serving"
    );

    let app = app(state, config.access_log);
    let served = serve_http(
        listener,
        app,
        &shutdown,
        config.drain_delay,
        config.drain_timeout,
    )
    .await;

    // The HTTP server has stopped, but a request it gave up waiting for runs on, detached:
    // were it to add after the final cut, it would be acknowledged and never written. So the
    // pending map is closed first, and such a request gets 503 instead.
    if let Some(flush) = &held {
        flush.close();
        tracing::info!("taking no more increments; final flush");
    }
    let mut ended = Ok(());
    if let Some(flusher) = flusher {
        stop_flusher.cancel();
        let end = tokio::task::spawn_blocking(move || flusher.join()).await?;
        let end = end.map_err(|_| anyhow::anyhow!("the flusher thread panicked"))?;
        let unwritten = held.as_ref().map(|f| f.unwritten()).unwrap_or_default();
        ended = report_end(end, unwritten, config.uses_journal());
    }
    if let Some(journal) = journal {
        let closed = tokio::task::spawn_blocking(move || journal.close()).await?;
        closed.context("cannot close the journal")?;
    }
    drop(claim);
    served.and(ended)
}

/// Writes the recovered batches before anything else is accepted, then lets the journal
/// release the segments that held them.
async fn replay(
    flusher: &Flusher,
    replays: Vec<Replay>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let batches = replays.len();
    let keys: usize = replays.iter().map(|r| r.deltas.len()).sum();
    match flusher.replay(replays, &shutdown.forced_token()).await {
        Ok(()) if batches > 0 => {
            tracing::info!(batches, keys, "replayed the journal into PostgreSQL");
            Ok(())
        }
        Ok(()) => Ok(()),
        Err(FlushEnd::Abandoned) => {
            tracing::warn!(
                batches,
                keys,
                "shutdown forced while PostgreSQL was failing, before the journal was replayed; the journal still holds every batch it had, and the next start replays them"
            );
            Err(anyhow::anyhow!("recovery did not finish"))
        }
        Err(end) => report_end(end, Unwritten::default(), true)
            .and(Err(anyhow::anyhow!("recovery did not finish"))),
    }
}

fn log_recovery(r: &recovery::Recovered, owner: &Owner) {
    if let Some(torn) = &r.report.torn_tail {
        tracing::warn!(%torn, "the journal ended in an unfinished write (a crash while writing it, never acknowledged); it was cut off and everything before it is kept");
    }
    for gap in &r.report.gaps {
        tracing::warn!(%gap, "journal segments are missing: most likely a deletion whose directory fsync did not reach the disk while a later one did (harmless); if they were removed by hand, increments they held and PostgreSQL lacked are lost");
    }
    let epochs: std::collections::BTreeSet<u64> = r.replays.iter().map(|b| b.epoch).collect();
    tracing::info!(
        segments = r.report.segments,
        records = r.report.records,
        epoch = owner.epoch,
        batches_to_replay = r.replays.len(),
        epochs_to_replay = ?epochs,
        "opened the journal"
    );
}

/// Logs how the flusher ended and turns it into the node's outcome. `unwritten` is what
/// PostgreSQL lacks, counted once nothing can add or cut any more; `journaled` says whether
/// every acknowledged increment is also in the journal, which the next start replays.
///
/// A stop that drops acknowledged increments is a failure (exit status 1), so that whatever
/// runs the node can tell it from a clean stop.
fn report_end(end: FlushEnd, unwritten: Unwritten, journaled: bool) -> anyhow::Result<()> {
    let Unwritten { keys, increments } = unwritten;
    match end {
        FlushEnd::Drained => {
            tracing::info!("final flush done: PostgreSQL has every acknowledged increment");
            Ok(())
        }
        FlushEnd::Abandoned if journaled => {
            tracing::warn!(
                increments,
                keys,
                "shutdown forced while PostgreSQL was failing: the journal holds the acknowledged increments PostgreSQL lacks, and the next start writes them"
            );
            Ok(())
        }
        FlushEnd::Abandoned => {
            tracing::error!(
                increments,
                keys,
                "shutdown forced while PostgreSQL was failing: acknowledged increments were dropped, never written to PostgreSQL (--durability memory)"
            );
            Err(anyhow::anyhow!(
                "forced stop dropped {increments} acknowledged increments of {keys} keys"
            ))
        }
        FlushEnd::Fenced if keys == 0 => Err(anyhow::anyhow!(
            "another process took this node id over; this process stopped writing"
        )),
        FlushEnd::Fenced => Err(anyhow::anyhow!(
            "another process took this node id over; this process stopped writing, with {increments} acknowledged increments of {keys} keys not written to PostgreSQL{}",
            if journaled {
                " (the journal holds them)"
            } else {
                ""
            }
        )),
    }
}

/// Serves until a shutdown is requested and `drain_delay` has passed (while `/ready` already
/// answers 503), then lets in-flight requests finish (up to `drain_timeout`, or until the
/// shutdown is forced).
async fn serve_http(
    listener: TcpListener,
    app: crate::http::observe::Observe<axum::Router>,
    shutdown: &Shutdown,
    drain_delay: Duration,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    use axum::ServiceExt;
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Small answers should leave at once, not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
    });
    let (requested, forced) = (shutdown.requested_token(), shutdown.forced_token());
    let stop_accepting = async move {
        requested.cancelled().await;
        if !drain_delay.is_zero() {
            tracing::info!(delay = %humantime::format_duration(drain_delay), "draining: /ready answers 503, still serving");
            tokio::select! {
                _ = tokio::time::sleep(drain_delay) => {}
                _ = forced.cancelled() => {}
            }
        }
    };
    let server =
        axum::serve(listener, app.into_make_service()).with_graceful_shutdown(stop_accepting);
    let forced = shutdown.forced_token();
    let drain_deadline = async {
        shutdown.requested().await;
        // A forced stop ends the drain delay too, so it must not wait it out either.
        tokio::select! {
            _ = tokio::time::sleep(drain_delay + drain_timeout) => tracing::warn!("in-flight requests did not finish in time; going on without them"),
            _ = forced.cancelled() => {}
        }
    };
    tokio::select! {
        result = server => result.context("the HTTP server failed"),
        _ = drain_deadline => Ok(()),
    }
}
