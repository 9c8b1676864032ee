//! The journal on disk, through its public API: what is appended replays in order, a torn
//! tail is cut with a warning, corruption refuses to open, and `committed` deletes exactly
//! the segments PostgreSQL no longer needs. No database is involved.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use rand::RngExt;
use tally::batch::BatchSeq;
use tally::journal::{Journal, JournalError, JournalOptions, OpenReport};

type Rec = (u64, String, i64);

/// Bytes a record takes on disk: length, checksum, LSN, batch, delta, flags and the key.
fn record_len(key: &str) -> u64 {
    33 + key.len() as u64
}

fn open(options: JournalOptions) -> Result<(Journal, Vec<Rec>, OpenReport), JournalError> {
    let mut seen = Vec::new();
    let (journal, report) = Journal::open(options, |r| {
        seen.push((r.batch.get(), r.key.to_owned(), r.delta))
    })?;
    Ok((journal, seen, report))
}

fn small_segments(dir: &Path, segment_bytes: u64) -> JournalOptions {
    JournalOptions {
        segment_bytes,
        rotate_on_commit_bytes: u64::MAX,
        ..JournalOptions::new(dir)
    }
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    files.sort();
    files
}

fn disk_bytes(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

async fn append_all(journal: &Journal, records: &[Rec]) {
    for (batch, key, delta) in records {
        journal
            .append_one(BatchSeq::new(*batch), key, *delta)
            .await
            .unwrap();
    }
}

fn records(range: std::ops::Range<u64>) -> Vec<Rec> {
    range
        .map(|i| {
            (
                i / 10,
                format!("key-{i}-{}", "é".repeat((i % 7) as usize)),
                i as i64 - 20,
            )
        })
        .collect()
}

/// A journal with several segments whose last segment holds exactly `tail` records, each
/// appended alone, and the records in the order written.
async fn journal_with_tail(dir: &Path, tail: u64) -> Vec<Rec> {
    let head = records(0..60);
    let (journal, _, _) = open(small_segments(dir, 300)).unwrap();
    append_all(&journal, &head).await;
    journal.close().unwrap();
    drop(journal);
    let last = records(60..60 + tail);
    let (journal, _, _) = open(small_segments(dir, u64::MAX)).unwrap();
    append_all(&journal, &last).await;
    journal.close().unwrap();
    assert!(segments(dir).len() > 3, "the head spans several segments");
    [head, last].concat()
}

#[tokio::test]
async fn appends_replay_in_order_across_many_segments_and_twice_alike() {
    let dir = tempfile::tempdir().unwrap();
    let options = || small_segments(dir.path(), 4096);
    let (journal, replayed, report) = open(options()).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(
        report,
        OpenReport {
            segments: 0,
            records: 0,
            max_batch: None,
            torn_tail: None,
            gaps: Vec::new(),
        }
    );

    let written = records(0..3000);
    for chunk in written.chunks(10) {
        if chunk[0].0 % 2 == 0 {
            let slice: Vec<(BatchSeq, &str, i64)> = chunk
                .iter()
                .map(|(b, k, d)| (BatchSeq::new(*b), k.as_str(), *d))
                .collect();
            journal.append(&slice).await.unwrap();
        } else {
            append_all(&journal, chunk).await;
        }
    }
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));
    assert_eq!(journal.stats().segments, segments(dir.path()).len());
    journal.close().unwrap();
    drop(journal);

    let (journal, replayed, report) = open(options()).unwrap();
    assert_eq!(replayed, written);
    assert!(report.segments > 10, "{report:?}");
    assert_eq!(report.records, 3000);
    assert_eq!(report.max_batch, Some(BatchSeq::new(299)));
    assert_eq!(report.torn_tail, None);
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));
    drop(journal);

    let files = segments(dir.path());
    let (_journal, again, _) = open(options()).unwrap();
    assert_eq!(again, written, "a second replay yields the same records");
    assert_eq!(
        segments(dir.path()),
        files,
        "an empty segment is replaced, not piled up"
    );
}

/// Cuts the last segment at `cut` in a copy of `template` and checks that the journal opens,
/// replays `expected`, reports a torn tail when `torn`, and appends after it.
async fn check_cut(template: &Path, cut: u64, expected: &[Rec], torn: bool) {
    let case = tempfile::tempdir().unwrap();
    copy_dir(template, case.path());
    let last = segments(case.path()).pop().unwrap();
    truncate(&last, cut);

    let (journal, replayed, report) =
        open(small_segments(case.path(), u64::MAX)).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
    assert_eq!(replayed, expected, "cut at {cut}");
    assert_eq!(report.torn_tail.is_some(), torn, "cut at {cut}: {report:?}");
    if torn {
        let warning = report.torn_tail.unwrap();
        assert!(warning.contains(&format!("byte {}", fs::metadata(&last).unwrap().len())));
    }
    journal
        .append_one(BatchSeq::new(999), "after", 1)
        .await
        .unwrap();
    journal.close().unwrap();
    drop(journal);

    let (_journal, replayed, report) = open(small_segments(case.path(), u64::MAX)).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(&replayed[..expected.len()], expected);
    assert_eq!(replayed[expected.len()..], [(999, "after".to_owned(), 1)]);
}

#[tokio::test]
async fn a_tail_torn_at_any_byte_of_the_last_record_is_cut_and_the_rest_replays() {
    let template = tempfile::tempdir().unwrap();
    let written = journal_with_tail(template.path(), 5).await;
    let last = segments(template.path()).pop().unwrap();
    let end = fs::metadata(&last).unwrap().len();
    let start = end - record_len(&written.last().unwrap().1);
    let before = &written[..written.len() - 1];

    check_cut(template.path(), start, before, false).await;
    for cut in start + 1..end {
        check_cut(template.path(), cut, before, true).await;
    }
}

#[tokio::test]
async fn a_tail_torn_at_random_bytes_replays_the_whole_records_before_it() {
    let template = tempfile::tempdir().unwrap();
    let tail = 30;
    let written = journal_with_tail(template.path(), tail).await;
    let last = segments(template.path()).pop().unwrap();
    let end = fs::metadata(&last).unwrap().len();
    let last_records = &written[written.len() - tail as usize..];
    // Where each record of the last segment ends.
    let mut ends = Vec::new();
    let mut at = end - last_records.iter().map(|r| record_len(&r.1)).sum::<u64>();
    let header = at;
    for r in last_records {
        at += record_len(&r.1);
        ends.push(at);
    }

    let mut rng = rand::rng();
    for _ in 0..25 {
        let cut = rng.random_range(header..end);
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let expected = &written[..written.len() - tail as usize + whole];
        let torn = cut != header && !ends.contains(&cut);
        check_cut(template.path(), cut, expected, torn).await;
    }
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = journal_with_tail(dir.path(), 4).await;
    let last = segments(dir.path()).pop().unwrap();
    let end = fs::metadata(&last).unwrap().len();
    let len_of_last = record_len(&written.last().unwrap().1);
    flip_byte(&last, end - len_of_last + 20);

    let (_journal, replayed, report) = open(small_segments(dir.path(), u64::MAX)).unwrap();
    assert_eq!(replayed, written[..written.len() - 1]);
    let warning = report.torn_tail.expect("a torn tail is reported");
    assert!(warning.contains("checksum"), "{warning}");
}

fn assert_corrupt(result: Result<(Journal, Vec<Rec>, OpenReport), JournalError>, what: &str) {
    match result {
        Err(e @ JournalError::Corrupt { .. }) => {
            let message = e.to_string();
            assert!(message.starts_with("journal corrupt: "), "{message}");
            assert!(message.contains(".journal at byte "), "{message}");
        }
        Err(e) => panic!("{what}: expected corruption, got {e}"),
        Ok((_, _, report)) => panic!("{what}: opened despite corruption: {report:?}"),
    }
}

#[tokio::test]
async fn a_flipped_byte_followed_by_good_records_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let written = journal_with_tail(dir.path(), 4).await;
    let last = segments(dir.path()).pop().unwrap();
    let end = fs::metadata(&last).unwrap().len();
    let tail: u64 = written[written.len() - 2..]
        .iter()
        .map(|r| record_len(&r.1))
        .sum();
    // In the second-to-last record: its length field, then its payload.
    for at in [end - tail + 1, end - tail + 30] {
        let case = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), case.path());
        flip_byte(&segments(case.path()).pop().unwrap(), at);
        assert_corrupt(
            open(small_segments(case.path(), u64::MAX)),
            &format!("byte {at}"),
        );
    }
}

#[tokio::test]
async fn damage_in_an_earlier_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_tail(dir.path(), 4).await;
    let files = segments(dir.path());
    let earlier = &files[files.len() - 2];
    let len = fs::metadata(earlier).unwrap().len();

    type Damage = Box<dyn Fn(&Path)>;
    let cases: [(&str, Damage); 3] = [
        (
            "a flipped byte in its last record",
            Box::new(move |p| flip_byte(p, len - 3)),
        ),
        ("a torn end", Box::new(move |p| truncate(p, len - 3))),
        (
            "a flipped byte in its header",
            Box::new(|p| flip_byte(p, 17)),
        ),
    ];
    for (what, damage) in cases {
        let case = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), case.path());
        damage(&case.path().join(earlier.file_name().unwrap()));
        assert_corrupt(open(small_segments(case.path(), u64::MAX)), what);
    }
}

#[tokio::test]
async fn a_zero_filled_tail_is_torn_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let written = journal_with_tail(dir.path(), 4).await;
    let last = segments(dir.path()).pop().unwrap();
    let end = fs::metadata(&last).unwrap().len();

    // Preallocated space after the records.
    let extended = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), extended.path());
    let path = segments(extended.path()).pop().unwrap();
    truncate(&path, end + 8192);
    let (_journal, replayed, report) = open(small_segments(extended.path(), u64::MAX)).unwrap();
    assert_eq!(replayed, written);
    assert!(report.torn_tail.is_some());
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        end,
        "the zeros are cut off"
    );

    // A last record whose blocks never reached the disk.
    let zeroed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), zeroed.path());
    let path = segments(zeroed.path()).pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let start = (end - record_len(&written.last().unwrap().1)) as usize;
    bytes[start..].fill(0);
    fs::write(&path, bytes).unwrap();
    let (_journal, replayed, report) = open(small_segments(zeroed.path(), u64::MAX)).unwrap();
    assert_eq!(replayed, written[..written.len() - 1]);
    assert!(
        report
            .torn_tail
            .unwrap()
            .contains("invalid record length 0")
    );
}

#[tokio::test]
async fn committed_deletes_exactly_the_segments_of_committed_batches() {
    let dir = tempfile::tempdir().unwrap();
    // A segment per append: each append is its own group commit.
    let options = || small_segments(dir.path(), 1);
    let (journal, _, _) = open(options()).unwrap();
    let written: Vec<Rec> = [1, 1, 2, 2, 3, 3]
        .into_iter()
        .enumerate()
        .map(|(i, b)| (b, format!("k{i}"), 1))
        .collect();
    append_all(&journal, &written).await;
    journal.settle().await;
    let files = segments(dir.path());
    assert_eq!(
        files.len(),
        7,
        "six closed segments and an empty active one"
    );
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));

    journal.committed(BatchSeq::new(1));
    journal.settle().await;
    assert_eq!(segments(dir.path()), files[2..]);
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));

    journal.committed(BatchSeq::new(1));
    journal.committed(BatchSeq::new(2));
    journal.settle().await;
    assert_eq!(segments(dir.path()), files[4..]);
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));
    assert_eq!(journal.stats().segments, 3);
    journal.close().unwrap();
    drop(journal);

    let (journal, replayed, report) = open(options()).unwrap();
    assert_eq!(replayed, written[4..], "the rest still replays");
    assert_eq!(report.max_batch, Some(BatchSeq::new(3)));
    journal.committed(BatchSeq::new(3));
    journal.settle().await;
    let left = segments(dir.path());
    assert_eq!(left.len(), 1, "only the active segment is left: {left:?}");
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));
    journal.append_one(BatchSeq::new(4), "k6", 1).await.unwrap();
    journal.close().unwrap();
    drop(journal);
    let (_journal, replayed, _) = open(options()).unwrap();
    assert_eq!(replayed, [(4, "k6".to_owned(), 1)]);
}

#[tokio::test]
async fn the_active_segment_is_never_deleted_but_rotates_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(small_segments(dir.path(), u64::MAX)).unwrap();
    append_all(&journal, &records(0..20)).await;
    let files = segments(dir.path());
    let bytes = journal.bytes();
    journal.committed(BatchSeq::new(100));
    journal.settle().await;
    assert_eq!(segments(dir.path()), files, "the active segment stays");
    assert_eq!(journal.bytes(), bytes);
    journal.close().unwrap();
    drop(journal);

    let rotating = JournalOptions {
        rotate_on_commit_bytes: 256,
        ..JournalOptions::new(dir.path())
    };
    let (journal, replayed, _) = open(rotating.clone()).unwrap();
    assert_eq!(replayed.len(), 20);
    journal
        .append_one(BatchSeq::new(200), "small", 1)
        .await
        .unwrap();
    let active = segments(dir.path()).pop().unwrap();
    journal.committed(BatchSeq::new(100));
    journal.settle().await;
    assert_eq!(
        segments(dir.path()),
        std::slice::from_ref(&active),
        "the closed segment goes, the active one is too small to rotate"
    );

    append_all(&journal, &records(0..20)).await;
    journal.committed(BatchSeq::new(150));
    journal.settle().await;
    assert_eq!(
        segments(dir.path()),
        std::slice::from_ref(&active),
        "it holds batch 200"
    );

    journal.committed(BatchSeq::new(200));
    journal.settle().await;
    let left = segments(dir.path());
    assert_eq!(left.len(), 1, "rotated, and the old one deleted: {left:?}");
    assert_ne!(left[0], active);
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));
    assert_eq!(journal.bytes(), fs::metadata(&left[0]).unwrap().len());
    journal.close().unwrap();
    drop(journal);
    let (_journal, replayed, _) = open(rotating).unwrap();
    assert!(replayed.is_empty());
}

/// Increments of one batch can be journaled after those of the next (the request path tags
/// and journals in two steps); a segment still waits for the older ones, so that the
/// segments on disk stay contiguous.
#[tokio::test]
async fn segments_are_deleted_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(small_segments(dir.path(), 1)).unwrap();
    journal
        .append_one(BatchSeq::new(6), "late", 1)
        .await
        .unwrap();
    journal
        .append_one(BatchSeq::new(5), "early", 1)
        .await
        .unwrap();
    journal.settle().await;
    let files = segments(dir.path());
    journal.committed(BatchSeq::new(5));
    journal.settle().await;
    assert_eq!(segments(dir.path()), files);
    journal.committed(BatchSeq::new(6));
    journal.settle().await;
    assert_eq!(segments(dir.path()), files[2..]);
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));
}

#[tokio::test]
async fn a_missing_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("data").join("journal");
    let (journal, _, report) = open(JournalOptions::new(&nested)).unwrap();
    assert_eq!(report.segments, 0);
    journal.append_one(BatchSeq::new(1), "k", 1).await.unwrap();
    assert_eq!(segments(&nested).len(), 1);
    assert_eq!(
        segments(&nested)[0].file_name().unwrap(),
        "00000000000000000001.journal"
    );
}

/// A journal whose last segment ends in one group commit of `group` records (one append),
/// after records appended one by one; returns the records and where the group starts.
async fn journal_ending_in_a_group(dir: &Path, group: usize) -> (Vec<Rec>, u64) {
    let head = records(0..10);
    let (journal, _, _) = open(small_segments(dir, u64::MAX)).unwrap();
    append_all(&journal, &head).await;
    // Where the records end, not the file: zeros are written ahead of them.
    let group_start = records_end(&head);
    let tail = records(10..10 + group as u64);
    let slice: Vec<(BatchSeq, &str, i64)> = tail
        .iter()
        .map(|(b, k, d)| (BatchSeq::new(*b), k.as_str(), *d))
        .collect();
    journal.append(&slice).await.unwrap();
    journal.close().unwrap();
    assert_eq!(journal.stats().syncs, 11, "the tail is one group commit");
    ([head, tail].concat(), group_start)
}

/// A power cut during a group commit's sync may leave a later page of it on disk and not an
/// earlier one. Nothing of that group was acknowledged, so it is cut, not called corruption.
#[tokio::test]
async fn damage_inside_the_last_group_commit_is_cut_with_the_rest_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let (written, group_start) = journal_ending_in_a_group(dir.path(), 6).await;
    let last = segments(dir.path()).pop().unwrap();
    // The second record of the group, whole records of the same group after it.
    let second = group_start + record_len(&written[10].1);
    flip_byte(&last, second + 20);

    let (_journal, replayed, report) = open(small_segments(dir.path(), u64::MAX)).unwrap();
    assert_eq!(replayed, written[..11], "everything before the damage");
    let warning = report.torn_tail.expect("the cut is reported");
    assert!(
        warning.contains("same unfinished group commit"),
        "{warning}"
    );
    assert!(warning.contains("4 whole records"), "{warning}");
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        second,
        "cut at the damage"
    );
}

/// Damage followed by a later group commit hit records that were acknowledged: the journal
/// refuses to open; `inspect` says where, and `repair` drops exactly the damaged record,
/// keeping every readable one after it.
#[tokio::test]
async fn damage_before_a_later_group_commit_refuses_to_open_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (written, group_start) = journal_ending_in_a_group(dir.path(), 6).await;
    let last = segments(dir.path()).pop().unwrap();
    // The second-to-last record appended alone, before the group.
    let alone = group_start - record_len(&written[9].1) - record_len(&written[8].1);
    flip_byte(&last, alone + 20);
    assert_corrupt(open(small_segments(dir.path(), u64::MAX)), "a later group");

    let inspection = tally::journal::inspect(dir.path()).unwrap();
    assert!(!inspection.opens());
    let text = inspection.to_string();
    assert!(text.contains("later group commit starts at byte"), "{text}");
    assert!(text.contains("refuses to start"), "{text}");

    let backup = tempfile::tempdir().unwrap();
    let repaired = tally::journal::repair(dir.path(), backup.path()).unwrap();
    let said = repaired.actions.join("\n");
    assert!(
        said.contains("the records with LSNs 9 to 9 (1 records) could not be read"),
        "{said}"
    );
    assert!(said.contains("moved to"), "{said}");
    assert_eq!(
        fs::read_dir(backup.path()).unwrap().count(),
        1,
        "the damaged file was copied first"
    );
    assert!(tally::journal::inspect(dir.path()).unwrap().opens());
    let (_journal, replayed, report) = open(small_segments(dir.path(), u64::MAX)).unwrap();
    let mut expected = written.clone();
    expected.remove(8);
    assert_eq!(replayed, expected, "all but the damaged record");
    assert_eq!(report.gaps.len(), 1, "{report:?}");
}

/// A segment deletion whose directory fsync did not reach the disk, while a later one did,
/// leaves a gap: the journal opens, replays the rest and reports it.
#[tokio::test]
async fn a_missing_segment_is_a_gap_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let written = journal_with_tail(dir.path(), 4).await;
    let files = segments(dir.path());
    let removed = &files[1];
    // The records it held, from a scan of it alone.
    let alone = tempfile::tempdir().unwrap();
    fs::copy(removed, alone.path().join(removed.file_name().unwrap())).unwrap();
    let held = open(small_segments(alone.path(), u64::MAX))
        .unwrap()
        .1
        .len();
    assert!(held > 0);
    fs::remove_file(removed).unwrap();
    let (_journal, replayed, report) = open(small_segments(dir.path(), u64::MAX)).unwrap();
    assert_eq!(replayed.len(), written.len() - held);
    assert_eq!(report.gaps.len(), 1, "{report:?}");
    assert!(report.gaps[0].contains("are missing"), "{:?}", report.gaps);
}

/// Every record carries the epoch of the journal that wrote it; segments of earlier epochs
/// are deleted once `replayed` says PostgreSQL has them, and `epochs` reads them from the
/// headers alone.
#[tokio::test]
async fn records_carry_their_epoch_and_earlier_epochs_go_once_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let with_epoch = |epoch| JournalOptions {
        epoch,
        rotate_on_commit_bytes: u64::MAX,
        ..JournalOptions::new(dir.path())
    };
    let (journal, _) = Journal::open(with_epoch(3), |_| {}).unwrap();
    journal.append_one(BatchSeq::new(1), "a", 1).await.unwrap();
    journal.close().unwrap();
    drop(journal);
    let (journal, _) = Journal::open(with_epoch(5), |_| {}).unwrap();
    journal.append_one(BatchSeq::new(1), "b", 1).await.unwrap();
    journal.close().unwrap();
    drop(journal);
    assert_eq!(
        tally::journal::epochs(dir.path()).unwrap(),
        [3, 5].into_iter().collect()
    );

    let mut seen = Vec::new();
    let (journal, _) = Journal::open(with_epoch(6), |r| {
        seen.push((r.epoch, r.lsn, r.batch.get(), r.key.to_owned()))
    })
    .unwrap();
    assert_eq!(seen, [(3, 1, 1, "a".to_owned()), (5, 2, 1, "b".to_owned())]);
    journal.committed(BatchSeq::new(1));
    journal.settle().await;
    assert_eq!(
        segments(dir.path()).len(),
        3,
        "batch 1 of epoch 6 is not theirs"
    );
    journal.replayed();
    journal.settle().await;
    assert_eq!(
        segments(dir.path()).len(),
        1,
        "only the active segment is left"
    );
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));
}

#[tokio::test]
async fn a_version_1_journal_replays_as_epoch_0() {
    let dir = tempfile::tempdir().unwrap();
    let old = records(0..5);
    fs::write(
        dir.path().join("00000000000000000001.journal"),
        crate::helpers::journal_files::version_1_segment(1, &old),
    )
    .unwrap();
    let mut seen = Vec::new();
    let (journal, report) = Journal::open(JournalOptions::new(dir.path()), |r| {
        seen.push((r.epoch, r.batch.get(), r.key.to_owned(), r.delta))
    })
    .unwrap();
    assert_eq!(report.records, 5);
    let expected: Vec<_> = old.iter().map(|(b, k, d)| (0, *b, k.clone(), *d)).collect();
    assert_eq!(seen, expected);
    journal
        .append_one(BatchSeq::new(7), "new", 1)
        .await
        .unwrap();
    journal.close().unwrap();
    drop(journal);
    let (_journal, replayed, _) = open(JournalOptions::new(dir.path())).unwrap();
    assert_eq!(replayed.len(), 6, "old and new formats side by side");
}

/// Options that write zeros ahead of the records, `preallocate` bytes at a time.
fn preallocated(dir: &Path, segment_bytes: u64, preallocate: u64) -> JournalOptions {
    JournalOptions {
        preallocate_bytes: preallocate,
        ..small_segments(dir, segment_bytes)
    }
}

/// A segment's header and `records`: where its last record ends.
fn records_end(records: &[Rec]) -> u64 {
    40 + records.iter().map(|(_, k, _)| record_len(k)).sum::<u64>()
}

/// What a `kill -9` leaves of a journal whose writer writes zeros ahead of its records: the
/// zeros at the end of the last segment. They are cut at the next start like a torn tail,
/// every record before them replays, and a clean stop leaves none.
#[tokio::test]
async fn zeros_written_ahead_are_cut_after_a_crash_and_every_record_replays() {
    let dir = tempfile::tempdir().unwrap();
    let options = |dir: &Path| preallocated(dir, u64::MAX, 64 << 10);
    let (journal, _, _) = open(options(dir.path())).unwrap();
    let written = records(0..200);
    append_all(&journal, &written).await;
    let last = segments(dir.path()).pop().unwrap();
    let end = records_end(&written);
    assert!(
        fs::metadata(&last).unwrap().len() > end,
        "zeros are written ahead of the records"
    );
    assert_eq!(journal.bytes(), disk_bytes(dir.path()), "and counted");

    // The files as they are while the node runs are what a kill -9 leaves on disk: every
    // append returned, so every record is durable.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    journal.close().unwrap();
    drop(journal);
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        end,
        "a clean stop cuts the zeros"
    );
    let (_journal, replayed, report) = open(options(dir.path())).unwrap();
    assert_eq!(replayed, written);
    assert_eq!(report.torn_tail, None);

    let (journal, replayed, report) = open(options(crashed.path())).unwrap();
    assert_eq!(replayed, written, "every record before the zeros replays");
    let torn = report.torn_tail.expect("the zeros are reported");
    assert!(torn.contains("zeros to the end"), "{torn}");
    assert!(torn.contains(&format!("at byte {end}")), "{torn}");
    let crashed_last = crashed.path().join(last.file_name().unwrap());
    assert_eq!(fs::metadata(&crashed_last).unwrap().len(), end);
    let more = records(200..260);
    append_all(&journal, &more).await;
    journal.close().unwrap();
    drop(journal);
    let (_journal, replayed, report) = open(options(crashed.path())).unwrap();
    assert_eq!(replayed, [written, more].concat());
    assert_eq!(report.torn_tail, None);
}

/// Zeros are cut from a segment before the next one is created, so that only the last segment
/// can end in zeros: damage in an earlier one would refuse to open.
#[tokio::test]
async fn closed_segments_end_with_their_last_record_when_zeros_are_written_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let options = |dir: &Path| preallocated(dir, 4096, 1024);
    let (journal, _, _) = open(options(dir.path())).unwrap();
    let written = records(0..300);
    append_all(&journal, &written).await;
    journal.settle().await;
    assert_eq!(journal.bytes(), disk_bytes(dir.path()));
    let files = segments(dir.path());
    assert!(files.len() > 3, "{files:?}");
    for closed in &files[..files.len() - 1] {
        let bytes = fs::read(closed).unwrap();
        assert_ne!(bytes.last(), Some(&0), "{} ends in zeros", closed.display());
    }

    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    journal.close().unwrap();
    drop(journal);
    let (_journal, replayed, report) = open(options(crashed.path())).unwrap();
    assert_eq!(replayed, written);
    assert!(report.gaps.is_empty(), "{report:?}");
}
