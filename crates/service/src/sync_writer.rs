//! Sync mode's group commit: the increments of concurrent `POST /increment` requests written
//! to PostgreSQL together, each request still answered with its own exact total.
//!
//! One task takes the requests that are waiting, sums them per key, and writes the sums in one
//! statement and one transaction (`Storage::increment_group`), which returns each key's new
//! total. A key's requests in the group are then given the running totals they would have got
//! one after another, in the order they arrived: the last one the new total, each earlier one
//! that total less the deltas after it. So every answer is a total PostgreSQL held once its
//! transaction committed, and two requests of one key never hear the same total. The next
//! group starts as soon as the statement before it returns, with whatever arrived meanwhile:
//! no request waits for a timer, and a lone request costs what it always did.
//!
//! A group's statement either commits whole or writes nothing. When PostgreSQL refuses the
//! group's data (a total that would leave the signed 64-bit range, an operator's constraint),
//! the group is written again one request at a time, each in its own transaction as before,
//! so that only the requests that cause the refusal are refused, with the answer such a
//! request always got. A key whose deltas in a group mix signs, or whose sum does not fit in
//! 64 bits, is written one request at a time from the start: its total could leave the range
//! between two of its requests while the sum alone fits. When the statement gets no answer,
//! every request of the group is told its outcome is unknown, as a lone request was.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use prometheus_client::metrics::histogram::Histogram;

use crate::ingest::{IngestError, from_storage};
use crate::storage::{Storage, StorageError};

/// Most requests written in one statement: enough to take every waiting request at the
/// concurrency a node serves, few enough that one statement stays short (a key is at most
/// 256 bytes, so a group's arrays stay under 300 KiB).
pub const MAX_GROUP: usize = 1_000;

/// Groups written at once. One: the next group forms while the statement of the one before
/// it runs, which is what makes groups large under load. Two or four in flight gave no more
/// requests/s at 64 connections, with two to four times the commits (bench/analysis.md).
const GROUPS_IN_FLIGHT: usize = 1;

/// One request's increment, waiting for its group.
struct Waiting {
    key: Box<str>,
    value: i64,
    answer: Answer,
}

/// Where a request hears the key's new total, or why it has none.
type Answer = oneshot::Sender<Result<i64, IngestError>>;

/// The handle requests send their increments through. Cheap to clone; the writing task ends
/// once every handle is dropped and the groups it started are written.
#[derive(Clone)]
pub struct SyncWriter {
    storage: Storage,
    queue: mpsc::UnboundedSender<Waiting>,
}

impl SyncWriter {
    /// Starts the writing task on the current runtime; `group_size` observes the requests
    /// of each group.
    pub fn start(storage: Storage, group_size: Histogram) -> SyncWriter {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(storage.clone(), waiting, group_size));
        SyncWriter { storage, queue }
    }

    /// The database.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Adds `value` to `key`'s total in PostgreSQL and returns the new total, once the
    /// transaction that applied it has committed.
    ///
    /// The queue is unbounded: the requests in it are bounded by the requests a node serves
    /// at once (`--max-in-flight`).
    pub async fn increment(&self, key: &str, value: i64) -> Result<i64, IngestError> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            key: key.into(),
            value,
            answer,
        };
        if self.queue.send(waiting).is_err() {
            // The writing task is gone: nothing of this request was sent anywhere.
            return Err(IngestError::ShuttingDown);
        }
        answered.await.unwrap_or_else(|_| {
            Err(IngestError::OutcomeUnknown(
                "the sync writer stopped while the increment was being written".into(),
            ))
        })
    }
}

/// Takes the waiting requests as groups, each once the group before it is written.
async fn write_groups(
    storage: Storage,
    mut waiting: mpsc::UnboundedReceiver<Waiting>,
    group_size: Histogram,
) {
    let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut group = Vec::new();
        if waiting.recv_many(&mut group, MAX_GROUP).await == 0 {
            return;
        }
        group_size.observe(group.len() as f64);
        let storage = storage.clone();
        tokio::spawn(async move {
            write_group(&storage, group).await;
            drop(slot);
        });
    }
}

/// Writes one group and answers each of its requests.
async fn write_group(storage: &Storage, group: Vec<Waiting>) {
    let mut answers = Vec::with_capacity(group.len());
    let incs: Vec<(Box<str>, i64)> = group
        .into_iter()
        .map(|w| {
            answers.push(Some(w.answer));
            (w.key, w.value)
        })
        .collect();
    let answer = |answers: &mut Vec<Option<Answer>>, i: usize, result| {
        if let Some(answer) = answers[i].take() {
            // The client may have gone: its increment counts all the same.
            let _ = answer.send(result);
        }
    };

    let plan = Plan::of(&incs);
    let mut one_by_one = plan.one_by_one;
    if !plan.keys.is_empty() {
        let deltas: Vec<(&str, i64)> = plan
            .keys
            .iter()
            .map(|k| (&*incs[k.requests[0]].0, k.sum))
            .collect();
        match storage.increment_group(&deltas).await {
            Ok(totals) => {
                for (key, total) in plan.keys.iter().zip(totals) {
                    match total {
                        Some(total) => {
                            for (i, total) in key.running_totals(&incs, total) {
                                answer(&mut answers, i, Ok(total));
                            }
                        }
                        None => one_by_one.extend_from_slice(&key.requests),
                    }
                }
            }
            Err(StorageError::OutOfRange { .. } | StorageError::Refused { .. }) => {
                // Nothing was written: each request on its own finds whose data is refused.
                one_by_one.extend(plan.keys.iter().flat_map(|k| k.requests.iter().copied()));
            }
            Err(e) => {
                // An outage: every request of the statement hears what a lone request would
                // have; those left for one by one were sent nowhere, and may be retried.
                for key in &plan.keys {
                    for &i in &key.requests {
                        answer(&mut answers, i, Err(from_storage(e.clone(), |_| None)));
                    }
                }
                let unsent = StorageError::Unavailable(e.to_string());
                for i in one_by_one {
                    answer(&mut answers, i, Err(IngestError::Storage(unsent.clone())));
                }
                return;
            }
        }
    }
    // In the order they arrived, so that a key's requests are applied in that order.
    one_by_one.sort_unstable();
    for i in one_by_one {
        let (key, value) = &incs[i];
        let result = storage
            .increment(key, *value)
            .await
            .map_err(|e| from_storage(e, |_| None));
        answer(&mut answers, i, result);
    }
}

/// How a group is written: which keys go into the group statement, and which requests are
/// written one by one.
struct Plan {
    /// Sorted by key, each key once.
    keys: Vec<KeyInGroup>,
    /// Indices into the group.
    one_by_one: Vec<usize>,
}

/// A key's requests in a group, in the order they arrived, and the sum of their deltas.
struct KeyInGroup {
    requests: Vec<usize>,
    sum: i64,
}

impl Plan {
    fn of(incs: &[(Box<str>, i64)]) -> Plan {
        let mut order: Vec<usize> = (0..incs.len()).collect();
        order.sort_by(|&a, &b| incs[a].0.cmp(&incs[b].0).then(a.cmp(&b)));
        let mut plan = Plan {
            keys: Vec::new(),
            one_by_one: Vec::new(),
        };
        for run in order.chunk_by(|&a, &b| incs[a].0 == incs[b].0) {
            let mut values = run.iter().map(|&i| incs[i].1);
            let same_sign = values.clone().all(|v| v > 0) || values.clone().all(|v| v < 0);
            let sum = values.try_fold(0i64, i64::checked_add);
            match sum {
                Some(sum) if same_sign => plan.keys.push(KeyInGroup {
                    requests: run.to_vec(),
                    sum,
                }),
                _ => plan.one_by_one.extend_from_slice(run),
            }
        }
        plan
    }
}

impl KeyInGroup {
    /// The total each of the key's requests gets, by index, when `total` is the key's total
    /// after all of them: what it would have been had they been applied one after another.
    fn running_totals<'a>(
        &'a self,
        incs: &'a [(Box<str>, i64)],
        total: i64,
    ) -> impl Iterator<Item = (usize, i64)> + 'a {
        self.requests.iter().rev().scan(total, move |after, &i| {
            let this = *after;
            // Cannot overflow: the deltas share a sign, so every running total lies between
            // the total before the group and `total`, both in range.
            *after -= incs[i].1;
            Some((i, this))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incs(list: &[(&str, i64)]) -> Vec<(Box<str>, i64)> {
        list.iter().map(|&(k, v)| (k.into(), v)).collect()
    }

    #[test]
    fn a_group_is_summed_per_key_in_key_order_keeping_each_keys_arrival_order() {
        let incs = incs(&[("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)]);
        let plan = Plan::of(&incs);
        let keys: Vec<(&str, Vec<usize>, i64)> = plan
            .keys
            .iter()
            .map(|k| (&*incs[k.requests[0]].0, k.requests.clone(), k.sum))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("a", vec![1, 4], 7),
                ("b", vec![0, 2], 4),
                ("c", vec![3], 4)
            ]
        );
        assert!(plan.one_by_one.is_empty());
    }

    #[test]
    fn each_request_gets_the_running_total_it_would_have_had_alone() {
        let incs = incs(&[("k", 1), ("j", 10), ("k", 2), ("k", 3)]);
        let plan = Plan::of(&incs);
        let k = plan.keys.iter().find(|k| &*incs[k.requests[0]].0 == "k");
        // The key held 100 before the group: 101, 103, 106 in the order they arrived.
        let mut totals: Vec<(usize, i64)> = k.unwrap().running_totals(&incs, 106).collect();
        totals.sort_unstable();
        assert_eq!(totals, vec![(0, 101), (2, 103), (3, 106)]);
    }

    #[test]
    fn keys_whose_totals_could_leave_the_range_between_requests_go_one_by_one() {
        let incs = incs(&[
            ("mixed", 5),
            ("fine", 1),
            ("mixed", -5),
            ("huge", i64::MAX),
            ("huge", 1),
            ("down", -1),
            ("down", -2),
        ]);
        let plan = Plan::of(&incs);
        let grouped: Vec<&str> = plan.keys.iter().map(|k| &*incs[k.requests[0]].0).collect();
        assert_eq!(grouped, vec!["down", "fine"]);
        let mut one_by_one = plan.one_by_one.clone();
        one_by_one.sort_unstable();
        assert_eq!(one_by_one, vec![0, 2, 3, 4]);
    }
}
