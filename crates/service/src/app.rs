//! A Tally node from start to stop.
//!
//! [`Node::build`] starts one: lock the data directory, learn the node id, open the database
//! (starting the managed one if needed) and migrate it, claim the node id in PostgreSQL under
//! a new epoch, replay what the journal holds that PostgreSQL does not, release the journal
//! segments it no longer needs, and start the flusher. [`Node::run_until_stopped`] serves until
//! a shutdown is requested, then stops what the node holds in the order of [`Node`]'s fields:
//! stop accepting, let in-flight requests finish (up to the drain timeout), close the pending
//! buffer to new increments, flush what is pending, close the journal, release the claim,
//! close the pool, stop the managed PostgreSQL.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::StartError;
use crate::access::Accounts;
use crate::access::rate_limit::Limiter;
use crate::batch::BatchSeq;
use crate::config::{Mode, ServeConfig};
use crate::database::Database;
use crate::flush::{FlushEnd, Flusher};
use crate::http::access::Guard;
use crate::http::observe::Observe;
use crate::http::server::ConnectionLimits;
use crate::http::{ApiContext, Serving, app, metrics_app};
use crate::idempotency::{Idempotency, Purger};
use crate::ingest::{Buffered, Ingest, LiveBound};
use crate::journal::{Journal, JournalOptions};
use crate::metrics::Metrics;
use crate::node::{DataDir, NodeId};
use crate::pending::{Unpersisted, Unwritten};
use crate::profile::Profile;
use crate::readiness::Readiness;
use crate::recovery;
use crate::reload::{Hangups, Live, ReadConfig, Reloader};
use crate::shutdown::Shutdown;
use crate::storage::{NodeClaim, Owner, Replay, Storage};
use crate::sync_writer::SyncWriter;

/// How many answers to requests with an `Idempotency-Key` a node keeps, to answer an
/// immediate retry without the database: about 300 bytes each.
const RECENT_IDEMPOTENT_ANSWERS: usize = 100_000;

/// How often the rate limiter forgets the clients whose buckets are full again.
const FORGET_IDLE_CLIENTS_EVERY: Duration = Duration::from_secs(10);

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a node on `listener` until `shutdown` is requested and everything is flushed.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let node = Node::build(config, listener, shutdown).await?;
    node.run_until_stopped().await
}

/// A started node: what it serves and everything it holds, in the order a stop releases them.
/// Each part is stopped only once the parts above it are, since until then they may use it.
pub struct Node {
    /// Stopped first: it stops accepting once a shutdown is requested (and the drain delay
    /// has passed), then lets requests in flight finish, up to the drain timeout.
    http: HttpServer,
    /// Stopped once nothing can take a request with an `Idempotency-Key` any more.
    purger: Purger,
    /// Closed once the server has stopped: a request it gave up waiting for runs on,
    /// detached, and were it to add after the final cut it would be acknowledged and never
    /// written; closed, the buffer answers it 503. `None` in sync mode.
    pending: Option<Arc<Unpersisted>>,
    /// Told to stop once nothing can add any more: it writes what is pending (the final
    /// flush) and ends. `None` in sync mode.
    flusher: Option<FlusherThread>,
    /// Closed once nothing appends and the flusher tells it of no more commits: what was
    /// appended is synced and the writer thread ends. Open whenever a journal exists, also in
    /// modes that append nothing, for the replay at start.
    journal: Option<Journal>,
    /// Released once nothing writes under the node id: dropping it closes the connection
    /// that holds the node's advisory lock.
    claim: NodeClaim,
    /// Closed once nothing uses it: the pool, then the managed PostgreSQL if Tally started it.
    database: Database,
    /// Unlocked last, so that no other process takes the data directory (and the journal in
    /// it) until this one is done with it.
    data_dir: DataDir,
    /// What a reload changes, until [`Node::reload_on`] hands it to a [`Reloader`].
    live: Option<(Live, ServeConfig)>,
    /// The reloader's task, stopped once the node stops serving.
    reloader: Option<(AbortOnDrop, CancellationToken)>,
}

/// The HTTP side of a node: what it serves, where, and how a stop drains it.
struct HttpServer {
    listener: TcpListener,
    app: Observe<axum::Router>,
    /// What a connection may take.
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    /// `--metrics-listen`: its listener and `/metrics` alone.
    metrics_server: Option<(TcpListener, axum::Router)>,
    /// The rate limiter, whose idle clients are forgotten while the server runs, and the
    /// metrics that count those it remembers.
    limiter: Option<(Arc<Limiter>, Arc<Metrics>)>,
    shutdown: Shutdown,
    drain_delay: Duration,
    drain_timeout: Duration,
}

/// The flusher's thread, and how to stop it.
struct FlusherThread {
    thread: JoinHandle<FlushEnd>,
    stop: CancellationToken,
    /// Whether every acknowledged increment is also in the journal, which the next start
    /// replays: that decides what a forced stop loses.
    journaled: bool,
}

/// What writes under the node's claim: started once the database is open, stopped before it
/// is closed.
struct Writers {
    /// `--max-journal-bytes`, which a reload may change.
    max_journal_bytes: LiveBound,
    /// Where a reload sends a new flush interval; `None` in sync mode.
    flush_interval: Option<Arc<watch::Sender<Duration>>>,
    claim: NodeClaim,
    journal: Option<Journal>,
    pending: Option<Arc<Unpersisted>>,
    flusher: Option<FlusherThread>,
    ingest: Ingest,
}

impl Node {
    /// Starts a node that will serve on `listener`: everything up to serving, recovery
    /// included. A refusal to start says so ([`StartError::is_refusal`]); whatever was
    /// started before it is stopped again.
    pub async fn build(
        config: ServeConfig,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> Result<Node, StartError> {
        let listen = listener.local_addr().map_err(anyhow::Error::from)?;
        let watched = crate::reload::watched(&config);
        // Bound before anything starts, so that a port in use leaves nothing to stop.
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Listen {
                            addr,
                            what: " for /metrics",
                            source,
                        })?,
                )
            }
            None => None,
        };
        let data_dir = DataDir::open(&config.database.data_dir)?;
        let node = data_dir.node_id(config.node_id.as_deref())?;
        let database = Database::open(&config.database, data_dir.path()).await?;
        let metrics = Arc::new(Metrics::default());
        let storage = &database.storage;
        let writers =
            match Writers::start(&config, &data_dir, &node, storage, &metrics, &shutdown).await {
                Ok(writers) => writers,
                Err(e) => {
                    database.close().await;
                    return Err(e);
                }
            };

        let readiness = Readiness::new(
            shutdown.requested_token(),
            storage.clone(),
            writers.pending.clone(),
            writers.ingest.journal().cloned(),
            writers.max_journal_bytes.clone(),
        );
        let accounts = Arc::new(Accounts::new(
            storage.clone(),
            config.auth,
            config.signup,
            config.session_ttl,
        ));
        let limiter = config.rate_limit.map(|rate| Arc::new(Limiter::new(rate)));
        let guard = (accounts.required() || limiter.is_some()).then(|| {
            Arc::new(Guard {
                accounts: accounts.clone(),
                limiter: limiter.clone(),
                trusted_proxies: config.trusted_proxies.clone(),
                metrics: metrics.clone(),
            })
        });
        let ctx = Arc::new(ApiContext {
            ingest: writers.ingest,
            readiness,
            metrics: metrics.clone(),
            rules: config.validation_rules(),
            max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
            read_timeout: config.read_timeout,
            max_batch: config.max_batch as usize,
            idempotency: Idempotency::new(
                storage.clone(),
                config.idempotency_ttl,
                RECENT_IDEMPOTENT_ANSWERS,
            ),
            accounts,
            secure_cookies: !config.insecure_cookies,
            profile: RwLock::new(Profile::of(&config, node.to_string(), listen)),
            requests_answered: Default::default(),
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
        // The bounds beside their use (`tally_pending_keys`, `tally_journal_bytes`), so that
        // alerts and graphs read how near a node is to refusing increments.
        let bound = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        metrics
            .pending_keys_limit
            .set(bound(config.max_pending_keys));
        metrics
            .journal_limit_bytes
            .set(bound(config.max_journal_bytes));
        tracing::info!(
            %listen,
            database = %database.description,
            node_id = %node,
            epoch = writers.claim.owner().epoch,
            mode = %config.mode,
            durability = %config.durability_in_effect(),
            auth = %config.auth,
            rate_limit = %config.rate_limit.map_or("none".to_owned(), |r| r.to_string()),
            flush_interval = %humantime::format_duration(config.flush_interval),
            "tally is serving"
        );
        let access_log = Arc::new(AtomicBool::new(config.access_log));
        let live_limiter = limiter.clone();
        let live_ctx = ctx.clone();
        Ok(Node {
            http: HttpServer {
                listener,
                metrics_server: metrics_listener.map(|l| (l, metrics_app(ctx.clone()))),
                limiter: limiter.map(|l| (l, metrics.clone())),
                app: app(
                    ctx,
                    Serving {
                        access_log: access_log.clone(),
                        guard,
                        metrics_here: config.metrics_listen.is_none(),
                        max_in_flight: config.max_in_flight as usize,
                    },
                ),
                limits: ConnectionLimits {
                    read_timeout: config.read_timeout,
                    max_header_bytes: usize::try_from(config.max_header_bytes)
                        .unwrap_or(usize::MAX),
                    max_connections: config.max_connections as usize,
                },
                metrics: metrics.clone(),
                shutdown,
                drain_delay: config.drain_delay,
                drain_timeout: config.drain_timeout,
            },
            live: Some((
                Live {
                    flush_interval: writers.flush_interval,
                    pending: writers.pending.clone(),
                    max_journal_bytes: writers.max_journal_bytes,
                    access_log,
                    limiter: live_limiter,
                    ctx: live_ctx,
                    listen,
                    watched,
                },
                config.clone(),
            )),
            reloader: None,
            purger: Purger::start(storage.clone()),
            pending: writers.pending,
            flusher: writers.flusher,
            journal: writers.journal,
            claim: writers.claim,
            database,
            data_dir,
        })
    }

    /// Reloads the configuration with `read` on every SIGHUP and, with `--watch-config`,
    /// whenever the `--config` file changes ([`crate::reload`]).
    pub fn reload_on(mut self, hangups: Hangups, read: ReadConfig) -> Node {
        if let Some((live, config)) = self.live.take() {
            let stop = CancellationToken::new();
            let reloader = Reloader::new(read, config, live);
            let task = tokio::spawn(reloader.run(hangups, stop.clone()));
            self.reloader = Some((AbortOnDrop(task), stop));
        }
        self
    }

    /// Serves until a shutdown is requested, then stops, in the order of the fields: the
    /// outcome says whether PostgreSQL has every acknowledged increment, or the journal does.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.http.serve().await;
        if let Some((_task, stop)) = &self.reloader {
            stop.cancel();
        }
        self.purger.stop().await;
        if let Some(pending) = &self.pending {
            pending.close();
            tracing::info!("taking no more increments; final flush");
        }
        let flushed = match self.flusher {
            Some(flusher) => flusher.finish(self.pending.as_deref()).await,
            None => Ok(Ok(())),
        };
        let closed = match self.journal {
            Some(journal) => tokio::task::spawn_blocking(move || journal.close())
                .await
                .map_err(anyhow::Error::from)
                .and_then(|closed| closed.context("cannot close the journal")),
            None => Ok(()),
        };
        drop(self.claim);
        self.database.close().await;
        drop(self.data_dir);
        // A lost flusher thread or journal says more than how serving ended.
        let ended = flushed?;
        closed?;
        served.and(ended)
    }
}

impl Writers {
    /// Claims the node id, opens the journal and replays what PostgreSQL lacks, then starts
    /// the request path and, in buffered mode, the flusher.
    async fn start(
        config: &ServeConfig,
        data_dir: &DataDir,
        node: &NodeId,
        storage: &Storage,
        metrics: &Arc<Metrics>,
        shutdown: &Shutdown,
    ) -> Result<Writers, StartError> {
        // The journal is opened whenever one exists, whatever the mode, so that a node
        // switched to `--durability memory` or `--mode sync` after a crash still replays it.
        // The claim's epoch must be above every epoch in it, so its headers are read first.
        let journal_dir = data_dir.path().join("journal");
        let epochs = crate::journal::epochs(&journal_dir).map_err(anyhow::Error::from)?;
        let claim = storage
            .claim_node(node, epochs.last().copied().unwrap_or(0))
            .await?;
        let owner = claim.owner().clone();

        let (journal, replays) = if config.uses_journal() || journal_dir.exists() {
            let applied = storage.applied(node, &epochs).await?;
            let mut options = JournalOptions::new(journal_dir);
            options.fsync_seconds = Some(metrics.journal_fsync_duration.clone());
            options.epoch = owner.epoch;
            let r = tokio::task::spawn_blocking(move || recovery::open_journal(options, &applied))
                .await
                .map_err(anyhow::Error::from)??;
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
        replay(&flusher, replays, shutdown).await?;

        let max_journal_bytes = LiveBound::new(config.max_journal_bytes);
        let mut flush_interval = None;
        let (ingest, pending, flusher) = match config.mode {
            Mode::Sync => {
                let writer = SyncWriter::start(storage.clone(), metrics.sync_group_size.clone());
                (Ingest::Sync(writer), None, None)
            }
            Mode::Buffered => {
                let ingest = Ingest::Buffered(Buffered {
                    pending: pending.clone(),
                    storage: storage.clone(),
                    owner,
                    // The journal takes appends only with journal durability; otherwise it
                    // was opened for recovery alone.
                    journal: journal.clone().filter(|_| config.uses_journal()),
                    max_journal_bytes: max_journal_bytes.clone(),
                });
                let stop = CancellationToken::new();
                flush_interval = Some(flusher.interval());
                let thread = flusher
                    .spawn_thread(stop.clone(), shutdown.clone())
                    .map_err(anyhow::Error::from)?;
                let flusher = FlusherThread {
                    thread,
                    stop,
                    journaled: config.uses_journal(),
                };
                (ingest, Some(pending), Some(flusher))
            }
        };
        Ok(Writers {
            max_journal_bytes,
            flush_interval,
            claim,
            journal,
            pending,
            flusher,
            ingest,
        })
    }
}

impl FlusherThread {
    /// Stops the flusher, which first writes what `pending` holds, and says how that ended.
    /// The outer error is a flusher that could not end normally.
    async fn finish(self, pending: Option<&Unpersisted>) -> anyhow::Result<anyhow::Result<()>> {
        self.stop.cancel();
        let thread = self.thread;
        let end = tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the flusher thread panicked"))?;
        let unwritten = pending.map(Unpersisted::unwritten).unwrap_or_default();
        Ok(report_end(end, unwritten, self.journaled))
    }
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

impl HttpServer {
    /// Serves until a shutdown is requested and the drain delay has passed (while `/ready`
    /// already answers 503), then lets in-flight requests finish (up to the drain timeout, or
    /// until the shutdown is forced).
    async fn serve(self) -> anyhow::Result<()> {
        let HttpServer {
            listener,
            app,
            limits,
            metrics,
            metrics_server,
            limiter,
            shutdown,
            drain_delay,
            drain_timeout,
        } = self;
        // Both end with this function: the metrics server serves through the drain.
        let _metrics_server = metrics_server.map(|(listener, router)| {
            AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "the /metrics server failed");
                }
            }))
        });
        let _forgetting = limiter.map(|(limiter, limited)| {
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FORGET_IDLE_CLIENTS_EVERY).await;
                    limiter.forget_idle();
                    let clients = i64::try_from(limiter.clients()).unwrap_or(i64::MAX);
                    limited.rate_limit_clients.set(clients);
                }
            }))
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
        // The peer's address is only read by the rate limit; without one, requests are spared
        // carrying it.
        let with_peers = _forgetting.is_some();
        let server =
            crate::http::server::serve(listener, app, limits, with_peers, metrics, stop_accepting);
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
            () = server => Ok(()),
            _ = drain_deadline => Ok(()),
        }
    }
}
