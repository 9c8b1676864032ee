//! A cluster as production runs it (DESIGN.md section 7, FAULTS.md row 8): three `tally`
//! processes sharing one PostgreSQL, behind a real HAProxy that checks each node's `/ready`.
//! Clients send increments through the balancer while nodes are killed, restarted, drained
//! and paused; the check is the ledger's (acknowledged <= total <= acknowledged + unknown, for
//! every key), and what the balancer did is read from its own statistics.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::app::db_totals;
use crate::helpers::haproxy::Haproxy;
use crate::helpers::ledger::{Ledger, Load};
use crate::helpers::postgres::{DedicatedCluster, dedicated_cluster};
use crate::helpers::process::TallyProcess;

/// Clients sending increments through the balancer in each test.
const CLIENTS: usize = 4;

/// Three nodes, their database and their balancer. (Fields drop in order: the balancer and
/// the nodes go before their data directories and the database.)
struct Cluster {
    haproxy: Haproxy,
    nodes: Vec<TallyProcess>,
    dirs: Vec<tempfile::TempDir>,
    db: DedicatedCluster,
    drain_delay: &'static str,
    http: reqwest::Client,
    _scratch: tempfile::TempDir,
}

impl Cluster {
    /// Starts PostgreSQL, three nodes with `--drain-delay drain_delay`, and HAProxy, and waits
    /// until the balancer counts every node in.
    async fn start(drain_delay: &'static str) -> Cluster {
        let db = dedicated_cluster();
        let url = db.database().url;
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<_> = (0..3)
            .map(|i| start_node(&url, &dirs[i], i, drain_delay))
            .collect();
        let scratch = tempfile::tempdir().unwrap();
        let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
        let haproxy = Haproxy::start(scratch.path(), &addrs);
        let cluster = Cluster {
            haproxy,
            nodes,
            dirs,
            db,
            drain_delay,
            http: reqwest::Client::new(),
            _scratch: scratch,
        };
        for i in 0..3 {
            cluster.wait_for(i, "UP").await;
        }
        cluster
    }

    /// Starts node `i` again after it exited, points the balancer at its new address and
    /// waits until the balancer counts it in.
    async fn restart(&mut self, i: usize) {
        let url = self.db.database().url;
        let node =
            tokio::task::block_in_place(|| start_node(&url, &self.dirs[i], i, self.drain_delay));
        self.haproxy.move_server(&server(i), node.addr);
        self.nodes[i] = node;
        self.wait_for(i, "UP").await;
    }

    async fn wait_for(&self, i: usize, status: &str) {
        self.haproxy
            .wait_for(&server(i), status, Duration::from_secs(20))
            .await;
    }

    /// `POST /increment` requests node `i` has answered, whatever the status, from its own
    /// metrics; `None` while it does not answer.
    async fn answered(&self, i: usize) -> Option<u64> {
        let text = self
            .http
            .get(self.nodes[i].url("/metrics"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(r#"tally_http_requests_total{route="/increment","#))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
                .sum(),
        )
    }

    /// Waits until the nodes in `which` together have answered `more` requests beyond
    /// what they had answered when called.
    async fn wait_for_requests(&self, which: &[usize], more: u64) {
        let mut total = 0;
        for &i in which {
            total += self.answered(i).await.unwrap_or(0);
        }
        let target = total + more;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut now = 0;
            for &i in which {
                now += self.answered(i).await.unwrap_or(0);
            }
            if now >= target {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {which:?} answered {} of {more} more requests",
                now - (target - more)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERMs every node at once, as stopping a whole cluster does, and checks that each
    /// drained, flushed and exited 0.
    fn stop(&mut self) {
        for node in &self.nodes {
            node.signal(libc::SIGTERM);
        }
        for node in &mut self.nodes {
            let status = node.wait(Duration::from_secs(60));
            assert!(status.success(), "exit status {status:?}:\n{}", node.log());
            assert!(node.log().contains("final flush done"), "{}", node.log());
        }
    }

    /// PostgreSQL's totals, checked against the ledger.
    async fn check(&self, ledger: &Ledger) -> Vec<(String, i64)> {
        let totals = db_totals(&self.db.database()).await;
        if let Err(problems) = ledger.check(&totals) {
            panic!("PostgreSQL's totals do not match the ledger:\n{problems}");
        }
        totals
    }
}

/// Starts node `i` on its data directory (replaying its journal, if it holds one).
fn start_node(db_url: &str, dir: &tempfile::TempDir, i: usize, drain_delay: &str) -> TallyProcess {
    let node_id = format!("cluster-{i}");
    TallyProcess::start(
        dir.path(),
        &[
            "--node-id",
            &node_id,
            "--drain-delay",
            drain_delay,
            "--flush-interval",
            "100ms",
        ],
        &[("DATABASE_URL", db_url)],
    )
}

fn server(i: usize) -> String {
    format!("node{i}")
}

/// Posts an increment of 1 and returns the answer's status (502 when none came).
async fn increment(http: &reqwest::Client, url: &str, key: &str) -> StatusCode {
    http.post(url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"key":"{key}","value":1}}"#))
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// A node killed with SIGKILL mid-load and started again on its data directory, then a
/// rolling restart of another one (SIGTERM: drain, flush, exit 0, start again): nothing
/// acknowledged is lost and nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_a_rolling_restart_behind_the_balancer_lose_nothing_and_double_nothing() {
    let mut cluster = Cluster::start("2s").await;

    // kill -9 node 0 while it takes a share of the load.
    let load = Load::start(cluster.haproxy.url("/increment"), CLIENTS, 40, "k");
    cluster.wait_for_requests(&[0], 300).await;
    cluster.nodes[0].signal(libc::SIGKILL);
    cluster.nodes[0].wait(Duration::from_secs(10));
    cluster.wait_for(0, "DOWN").await;
    cluster.wait_for_requests(&[1, 2], 300).await;
    cluster.restart(0).await;
    cluster.wait_for_requests(&[0], 300).await;
    let killed = load.stop().await;

    // SIGTERM node 1: the balancer takes it out while it drains; it flushes and exits 0.
    let load = Load::start(cluster.haproxy.url("/increment"), CLIENTS, 40, "k");
    cluster.wait_for_requests(&[1], 300).await;
    cluster.nodes[1].signal(libc::SIGTERM);
    cluster.wait_for(1, "DOWN").await;
    let status = cluster.nodes[1].wait(Duration::from_secs(30));
    assert!(status.success(), "{}", cluster.nodes[1].log());
    cluster.restart(1).await;
    cluster.wait_for_requests(&[1], 300).await;
    let rolled = load.stop().await;

    cluster.stop();
    let mut ledger = killed.clone();
    ledger.merge(rolled.clone());
    let totals = cluster.check(&ledger).await;
    let persisted: i64 = totals.iter().map(|(_, v)| v).sum();
    eprintln!(
        "kill -9: acknowledged {}, unknown {}; rolling restart: acknowledged {}, unknown {}; \
         persisted {persisted}",
        killed.acknowledged_total(),
        killed.unknown_total(),
        rolled.acknowledged_total(),
        rolled.unknown_total(),
    );

    assert!(killed.acknowledged_total() > 0 && rolled.acknowledged_total() > 0);
    // Each client has one request in flight at a time, so the kill can leave at most one
    // request per client without an answer (HAProxy answers 502 for it). Requests sent to the
    // dead node afterwards find its port closed and are redispatched by `retry-on
    // conn-failure`, so clients never see them fail. Values are at most 9.
    assert!(
        killed.unknown_total() <= 9 * CLIENTS as i64,
        "unknown {} is more than one request per client: {:?}",
        killed.unknown_total(),
        killed.unknown
    );
    assert!(
        killed.refused.is_empty(),
        "no refusals: {:?}",
        killed.refused
    );
    // A drained node is out of the balancer before it stops accepting: every request of the
    // rolling restart was answered, and acknowledged.
    assert_eq!(
        (rolled.unknown_total(), &rolled.refused),
        (0, &Default::default()),
        "every request of the rolling restart was acknowledged"
    );
    if ledger.unknown_total() == 0 {
        assert_eq!(persisted, ledger.acknowledged_total());
    }
}

/// A node that is shutting down answers `/ready` 503 while it still serves: HAProxy marks it
/// DOWN and stops sending it requests (its own request counter stops), clients are still
/// answered, and once the node is started again HAProxy counts it back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_stops_sending_to_a_draining_node_and_takes_it_back_after_restart() {
    // Long enough to watch the node being skipped while it still serves.
    let mut cluster = Cluster::start("5s").await;
    let load = Load::start(cluster.haproxy.url("/increment"), CLIENTS, 30, "d");
    cluster.wait_for_requests(&[1], 100).await;

    cluster.nodes[1].signal(libc::SIGTERM);
    cluster.wait_for(1, "DOWN").await;
    let check = cluster.haproxy.servers()["node1"].check.clone();
    assert_eq!(check, "L7STS", "taken out for its /ready status (503)");
    // Requests forwarded just before the balancer took it out have long been answered once
    // the others have answered a hundred more; from then on its counter must not move.
    cluster.wait_for_requests(&[0, 2], 100).await;
    let before = cluster
        .answered(1)
        .await
        .expect("the draining node still answers");
    cluster.wait_for_requests(&[0, 2], 500).await;
    let after = cluster
        .answered(1)
        .await
        .expect("the draining node still answers");
    assert_eq!(
        before, after,
        "HAProxy sent requests to a node it marked DOWN"
    );
    // It is draining, not gone: asked directly, it still takes increments.
    let direct = increment(&cluster.http, &cluster.nodes[1].url("/increment"), "direct").await;
    assert_eq!(direct, StatusCode::ACCEPTED);
    let ready = cluster
        .http
        .get(cluster.nodes[1].url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    let status = cluster.nodes[1].wait(Duration::from_secs(30));
    assert!(status.success(), "{}", cluster.nodes[1].log());
    cluster.restart(1).await;
    cluster.wait_for_requests(&[1], 100).await;
    let mut ledger = load.stop().await;

    cluster.stop();
    assert_eq!(
        (ledger.unknown_total(), &ledger.refused),
        (0, &Default::default()),
        "every request through the balancer was acknowledged"
    );
    ledger.acknowledged.insert("direct".into(), 1);
    let totals = cluster.check(&ledger).await;
    assert_eq!(
        totals.iter().map(|(_, v)| v).sum::<i64>(),
        ledger.acknowledged_total()
    );
}

/// A node that stops answering altogether (SIGSTOP: its port still accepts connections, but
/// nothing answers) fails its checks by timeout: HAProxy marks it DOWN and the cluster keeps
/// acknowledging; requests that were waiting on it are answered once it resumes (SIGCONT),
/// and HAProxy counts it back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_takes_out_a_paused_node_and_the_cluster_keeps_answering() {
    let mut cluster = Cluster::start("1s").await;
    let load = Load::start(cluster.haproxy.url("/increment"), CLIENTS, 30, "p");
    cluster.wait_for_requests(&[2], 100).await;

    cluster.nodes[2].signal(libc::SIGSTOP);
    cluster.wait_for(2, "DOWN").await;
    let mut probes = 0;
    for _ in 0..50 {
        let status = increment(&cluster.http, &cluster.haproxy.url("/increment"), "probe").await;
        assert_eq!(status, StatusCode::ACCEPTED, "through the balancer");
        probes += 1;
    }
    cluster.nodes[2].signal(libc::SIGCONT);
    cluster.wait_for(2, "UP").await;
    cluster.wait_for_requests(&[2], 100).await;
    let mut ledger = load.stop().await;

    cluster.stop();
    assert_eq!(
        (ledger.unknown_total(), &ledger.refused),
        (0, &Default::default()),
        "requests that waited on the paused node were answered once it resumed"
    );
    ledger.acknowledged.insert("probe".into(), probes);
    let totals = cluster.check(&ledger).await;
    assert_eq!(
        totals.iter().map(|(_, v)| v).sum::<i64>(),
        ledger.acknowledged_total()
    );
}
