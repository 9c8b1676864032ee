//! Tests that look inside the writer: acknowledgement only after a covering sync, group
//! commit under concurrency, and failures made to happen. The behaviour on disk (replay, torn
//! tails, corruption, deletion) is tested through the public API in `crates/cli/tests/it/journal.rs`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::*;

fn open(dir: &std::path::Path) -> (Journal, Vec<(u64, String, i64)>, OpenReport) {
    let mut seen = Vec::new();
    let (journal, report) = Journal::open(JournalOptions::new(dir), |r| {
        seen.push((r.batch.get(), r.key.to_owned(), r.delta))
    })
    .unwrap();
    (journal, seen, report)
}

const WRITE: u8 = writer::INJECT_WRITE_FAILURE;
const SYNC: u8 = writer::INJECT_SYNC_FAILURE;

fn inject(journal: &Journal, what: u8) {
    journal
        .inner
        .shared
        .inject_failure
        .store(what, Ordering::Relaxed);
}

fn durable_lsn(journal: &Journal) -> u64 {
    journal.inner.shared.durable_lsn.load(Ordering::Acquire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_return_only_once_durable_and_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    let tasks = 64;
    let per_task = 300;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut acked = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let key = format!("t{t}-{i}");
                    let lsn = journal
                        .append_one_at(BatchSeq::new(i as u64 / 50), &key, 1)
                        .await
                        .unwrap();
                    assert!(
                        durable_lsn(&journal) >= lsn,
                        "record {lsn} acknowledged before a sync covered it"
                    );
                    acked.push(key);
                }
                acked
            })
        })
        .collect();
    let mut acked = HashSet::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    let records = (tasks * per_task) as u64;
    let stats = journal.stats();
    assert_eq!(stats.records, records);
    assert!(
        stats.syncs * 4 < records,
        "{} syncs for {records} records: appends did not share syncs",
        stats.syncs
    );
    journal.close().unwrap();

    let (_journal, replayed, report) = open(dir.path());
    assert_eq!(report.records, records);
    assert_eq!(report.torn_tail, None);
    let replayed_keys: HashSet<String> = replayed.iter().map(|(_, k, _)| k.clone()).collect();
    assert_eq!(replayed.len(), acked.len(), "a record replayed twice");
    assert_eq!(replayed_keys, acked);
}

async fn a_failure_is_final(what: u8) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    journal
        .append_one(BatchSeq::new(1), "before", 1)
        .await
        .unwrap();

    inject(&journal, what);
    let err = journal
        .append_one(BatchSeq::new(1), "failed", 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Failed {
                maybe_written: false,
                ..
            }
        ),
        "the failed write was cut from the file: {err:?}"
    );
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(journal.has_failed());
    let later = journal
        .append(&[(BatchSeq::new(1), "later", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            later,
            JournalError::Failed {
                maybe_written: false,
                ..
            }
        ),
        "{later}"
    );
    assert!(journal.append(&[]).await.is_err());
    assert!(journal.close().is_err(), "close reports the failure");
    drop(journal);

    let (_journal, replayed, _) = open(dir.path());
    let keys: Vec<&str> = replayed.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(keys, ["before"], "only the acknowledged record is replayed");
}

#[tokio::test]
async fn a_failed_sync_fails_its_append_and_every_later_one() {
    a_failure_is_final(SYNC).await;
}

#[tokio::test]
async fn a_failed_write_fails_its_append_and_every_later_one() {
    a_failure_is_final(WRITE).await;
}

/// Appenders waiting on the sync that fails, and on the one after it, all get the error; none
/// is acknowledged past the last successful sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_under_load_acknowledges_nothing_it_did_not_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    let handles: Vec<_> = (0..32)
        .map(|t| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..200 {
                    if t == 0 && i == 50 {
                        inject(&journal, SYNC);
                    }
                    match journal
                        .append_one_at(BatchSeq::new(1), &format!("t{t}-{i}"), 1)
                        .await
                    {
                        Ok(lsn) => {
                            assert!(durable_lsn(&journal) >= lsn);
                            outcomes.push(Ok(lsn));
                        }
                        Err(e) => outcomes.push(Err(e.to_string())),
                    }
                }
                outcomes
            })
        })
        .collect();
    let mut ok = 0;
    let mut failed = 0;
    for h in handles {
        let outcomes = h.await.unwrap();
        // Once a task saw the failure it never sees success again.
        let first_err = outcomes.iter().position(Result::is_err);
        if let Some(first) = first_err {
            assert!(outcomes[first..].iter().all(Result::is_err));
        }
        ok += outcomes.iter().filter(|o| o.is_ok()).count();
        failed += outcomes.iter().filter(|o| o.is_err()).count();
    }
    assert!(journal.has_failed());
    assert!(failed > 0 && ok > 0, "ok {ok}, failed {failed}");
    assert_eq!(journal.stats().records, ok as u64);
}

#[tokio::test]
async fn a_key_too_long_is_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    let long = "k".repeat(record::MAX_KEY + 1);
    let err = journal
        .append(&[(BatchSeq::new(1), "fine", 1), (BatchSeq::new(1), &long, 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::KeyTooLong { .. }), "{err}");
    assert!(!journal.has_failed());
    let longest = "k".repeat(record::MAX_KEY);
    journal
        .append_one(BatchSeq::new(1), &longest, 1)
        .await
        .unwrap();
    journal.close().unwrap();
    let (_journal, replayed, _) = open(dir.path());
    assert_eq!(
        replayed.len(),
        1,
        "nothing of the refused append was written"
    );
    assert_eq!(replayed[0].1, longest);
}

#[tokio::test]
async fn close_is_idempotent_and_later_appends_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    journal.append_one(BatchSeq::new(1), "a", 1).await.unwrap();
    journal.close().unwrap();
    journal.close().unwrap();
    assert!(matches!(
        journal.append_one(BatchSeq::new(1), "b", 1).await,
        Err(JournalError::Closed)
    ));
    assert!(!journal.has_failed());
    journal.settle().await;
}

#[tokio::test]
async fn every_sync_is_timed_when_a_histogram_is_given() {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::exponential_buckets;
    use prometheus_client::registry::Registry;

    let dir = tempfile::tempdir().unwrap();
    let histogram = Histogram::new(exponential_buckets(0.00001, 2.0, 20));
    let mut registry = Registry::default();
    registry.register("journal_fsync_seconds", "", histogram.clone());
    let options = JournalOptions {
        fsync_seconds: Some(histogram),
        ..JournalOptions::new(dir.path())
    };
    let (journal, _) = Journal::open(options, |_| {}).unwrap();
    for i in 0..3 {
        journal
            .append_one(BatchSeq::new(1), "k", i + 1)
            .await
            .unwrap();
    }
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(text.contains("journal_fsync_seconds_count 3"), "{text}");
}

/// The group commit waits for more records only after a big group: appends one after the
/// other are each synced at once, however long the delay.
#[tokio::test]
async fn a_lone_appender_never_waits_for_the_commit_delay() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        commit_delay: std::time::Duration::from_secs(2),
        ..JournalOptions::new(dir.path())
    };
    let (journal, _) = Journal::open(options, |_| {}).unwrap();
    let started = std::time::Instant::now();
    for i in 0..20 {
        journal
            .append_one(BatchSeq::new(1), &format!("k{i}"), 1)
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "20 appends took {:?}",
        started.elapsed()
    );
    assert_eq!(journal.stats().syncs, 20);
}

/// Under concurrent load with a long delay, groups grow, and still no append returns before
/// a sync that covers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_delay_makes_bigger_groups_and_acknowledges_only_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        commit_delay: std::time::Duration::from_millis(20),
        ..JournalOptions::new(dir.path())
    };
    let (journal, _) = Journal::open(options, |_| {}).unwrap();
    let tasks = 32;
    let per_task = 20;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let lsn = journal
                        .append_one_at(BatchSeq::new(1), &format!("t{t}-{i}"), 1)
                        .await
                        .unwrap();
                    assert!(
                        durable_lsn(&journal) >= lsn,
                        "record {lsn} acknowledged early"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let stats = journal.stats();
    assert_eq!(stats.records, (tasks * per_task) as u64);
    assert!(
        stats.syncs * 16 < stats.records,
        "{} syncs for {} records",
        stats.syncs,
        stats.records
    );
    journal.close().unwrap();
}
