//! Start-up recovery: what the journal holds that PostgreSQL does not.
//!
//! Every journal record carries the batch its increment landed in, and PostgreSQL's progress
//! row holds the last batch applied for this node. Batches are applied one at a time and in
//! order, so the records still to apply are exactly those of batches above the progress. They
//! are replayed as the batches they were, same numbers and same contents, through the same
//! exactly-once write as any flush, in order and before any new batch: a crash during recovery
//! only means the next start replays the same batches again, and PostgreSQL skips those it
//! already has.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::flush::FlushBatch;
use crate::journal::{Journal, JournalOptions, OpenReport};
use crate::pending::BatchSeq;

/// The journal, open for appends, and what it held that PostgreSQL does not.
pub struct Recovered {
    pub journal: Journal,
    /// Batches above the progress, in order.
    pub batches: Vec<FlushBatch>,
    /// The number the next open batch must have: above everything seen in PostgreSQL or in
    /// the journal.
    pub next_open: BatchSeq,
    pub report: OpenReport,
}

/// Opens the journal and collects the records of batches above `progress`. Blocking.
pub fn open_journal(options: JournalOptions, progress: BatchSeq) -> anyhow::Result<Recovered> {
    let mut batches: BTreeMap<BatchSeq, HashMap<Box<str>, i64>> = BTreeMap::new();
    let mut overflow = None;
    let (journal, report) = Journal::open(options, |record| {
        if record.batch <= progress {
            return;
        }
        let sum = batches
            .entry(record.batch)
            .or_default()
            .entry(record.key.into())
            .or_default();
        // A batch's delta per key fit in 64 bits while it was pending, so the records of one
        // batch cannot overflow unless the journal is damaged.
        match sum.checked_add(record.delta) {
            Some(s) => *sum = s,
            None => overflow = Some((record.batch, record.key.to_owned())),
        }
    })?;
    if let Some((batch, key)) = overflow {
        anyhow::bail!(
            "the journal's records of batch {batch} for key {key:?} add up beyond the 64-bit range; the journal is damaged"
        );
    }
    let newest = report.max_batch.unwrap_or(0).max(progress);
    let now = Instant::now();
    let batches = batches
        .into_iter()
        .map(|(seq, deltas)| FlushBatch::new(seq, now, deltas.into_iter().collect()))
        .collect();
    Ok(Recovered {
        journal,
        batches,
        next_open: newest + 1,
        report,
    })
}
