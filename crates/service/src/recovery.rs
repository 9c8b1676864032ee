//! Start-up recovery: what the journal holds that PostgreSQL does not.
//!
//! Every journal record carries its epoch (the claim of the process that wrote it), the batch
//! its increment landed in and its sequence number. PostgreSQL knows, per epoch, the last
//! batch that epoch applied itself, and per replayed batch the sequence number up to which a
//! later process replayed it ([`Applied`]). Every record it does not have is replayed, summed
//! per key within its batch, through the same exactly-once write as any flush: one
//! transaction per batch that also records how far the batch is replayed. A crash during
//! recovery only means the next start replays what is left, and PostgreSQL skips what it
//! already has.
//!
//! Records are identified by epoch and not by batch number alone, so a process that took the
//! node id over (and cut batches with the same numbers under its own epoch) cannot hide this
//! journal's batches; and by sequence number within a replayed batch, so a copy of a journal
//! taken while its node ran, replayed elsewhere, leaves the records written after the copy to
//! be replayed from the original.

use std::collections::{BTreeMap, HashMap};

use crate::batch::BatchSeq;
use crate::journal::{Journal, JournalOptions, OpenReport};
use crate::storage::{Applied, Replay};

/// The journal, open for appends, and what it held that PostgreSQL does not.
pub struct Recovered {
    pub journal: Journal,
    /// Batches of earlier epochs with records PostgreSQL lacks, in order of epoch and batch.
    pub replays: Vec<Replay>,
    pub report: OpenReport,
}

/// The records of one batch that PostgreSQL lacks, summed per key.
#[derive(Default)]
struct Missing {
    /// Summed in 128 bits: records may reach the journal in another order than the one in
    /// which they were added in memory, so a partial sum may leave the 64-bit range where the
    /// whole batch's sum does not.
    sums: HashMap<Box<str>, i128>,
    last_lsn: u64,
}

/// Opens the journal and collects the records that `applied` says PostgreSQL lacks. Blocking.
pub fn open_journal(options: JournalOptions, applied: &Applied) -> anyhow::Result<Recovered> {
    let mut missing: BTreeMap<(u64, BatchSeq), Missing> = BTreeMap::new();
    let (journal, report) = Journal::open(options, |record| {
        if applied.has(record.epoch, record.batch, record.lsn) {
            return;
        }
        let batch = missing.entry((record.epoch, record.batch)).or_default();
        *batch.sums.entry(record.key.into()).or_default() += i128::from(record.delta);
        batch.last_lsn = batch.last_lsn.max(record.lsn);
    })?;
    let mut replays = Vec::with_capacity(missing.len());
    for ((epoch, batch), m) in missing {
        let mut deltas = Vec::with_capacity(m.sums.len());
        for (key, sum) in m.sums {
            // A batch's sum per key fit in 64 bits while it was pending, whatever the order of
            // its records.
            let sum = i64::try_from(sum).map_err(|_| {
                anyhow::anyhow!(
                    "the journal's records of batch {batch} of epoch {epoch} for key {key:?} add up to {sum}, beyond the 64-bit range; the journal is damaged (see `tally journal check`)"
                )
            })?;
            deltas.push((key, sum));
        }
        deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        replays.push(Replay {
            epoch,
            batch,
            after_lsn: applied.replayed_up_to(epoch, batch),
            last_lsn: m.last_lsn,
            deltas,
        });
    }
    Ok(Recovered {
        journal,
        replays,
        report,
    })
}
