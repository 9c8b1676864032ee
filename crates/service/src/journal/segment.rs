//! Segment files: their header and names, how one is created, and the scan that replays them.
//!
//! A segment is `<first LSN, 20 digits>.journal`, so lexical order is LSN order: a header
//! (magic, format version, first LSN, the epoch of its records, header checksum) and then
//! records back to back. A segment is created under `.journal.tmp`, fsynced, renamed into
//! place and the directory fsynced, so a segment that exists has a whole header, and a
//! leftover `.tmp` never held a record.
//!
//! Each segment starts where the previous one ended. Only the oldest are deleted, each
//! deletion made durable before the next, so a gap between segments can only mean a deletion
//! that did not reach the disk while a later one did: the scan reports it and goes on.
//!
//! The rules that decide what damage may be cut at start live in [`judge`], used both by the
//! scan at start and by `tally journal check` and `repair` (`repair.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::record::{self, Decoded, Format, GROUP_START, find_valid_record, u32_at, u64_at};
use super::{JournalError, Record};
use crate::batch::BatchSeq;

/// Identifies a Tally journal segment.
const MAGIC: [u8; 8] = *b"TALLYJNL";
/// The format this code writes. Version 1 (no epoch in the header, no flags in records) is
/// still read.
const VERSION: u32 = 2;
/// Bytes of a version 1 header.
const HEADER_LEN_V1: usize = 32;
/// Bytes of the header this code writes.
pub(crate) const HEADER_LEN: usize = 40;
pub(crate) const SUFFIX: &str = ".journal";
const TMP_SUFFIX: &str = ".journal.tmp";
/// Digits of the LSN in a segment's name: enough for any u64, so names sort like numbers.
const NAME_DIGITS: usize = 20;

/// A segment on disk, as the writer keeps account of it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub path: PathBuf,
    /// The epoch of every record in it: the claim of the process that wrote it.
    pub epoch: u64,
    /// Size on disk, header included.
    pub bytes: u64,
    pub records: u64,
    /// The highest batch of its records; `None` while it has none.
    pub max_batch: Option<BatchSeq>,
}

impl Segment {
    pub fn add(&mut self, bytes: u64, records: u64, max_batch: Option<BatchSeq>) {
        self.bytes += bytes;
        self.records += records;
        self.max_batch = self.max_batch.max(max_batch);
    }
}

/// A segment's header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub format: Format,
    pub first_lsn: u64,
    /// 0 for version 1 segments, written before epochs existed.
    pub epoch: u64,
    /// Bytes the header takes.
    pub len: usize,
}

pub(crate) fn file_name(first_lsn: u64) -> String {
    format!("{first_lsn:0NAME_DIGITS$}{SUFFIX}")
}

/// The first LSN a segment's file name announces, if it is a segment's name.
pub(crate) fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// ```text
/// magic: 8 bytes | version: u32 LE | flags: u32 LE (none defined) | first LSN: u64 LE |
/// epoch: u64 LE | crc32c of the 32 bytes before: u32 LE | zero: 4 bytes
/// ```
pub(crate) fn encode_header(first_lsn: u64, epoch: u64) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    h[24..32].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c::crc32c(&h[..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A header of `format` for a segment starting at `first_lsn`: what `repair` writes when it
/// moves the records after damage into a segment of their own, in their original format.
pub(crate) fn encode_header_as(format: Format, first_lsn: u64, epoch: u64) -> Vec<u8> {
    match format {
        Format::V2 => encode_header(first_lsn, epoch).to_vec(),
        Format::V1 => {
            let mut h = vec![0; HEADER_LEN_V1];
            h[0..8].copy_from_slice(&MAGIC);
            h[8..12].copy_from_slice(&1u32.to_le_bytes());
            h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
            let crc = crc32c::crc32c(&h[..24]);
            h[24..28].copy_from_slice(&crc.to_le_bytes());
            h
        }
    }
}

/// The header at the front of `h`, or why it is not a valid one.
pub(crate) fn decode_header(h: &[u8]) -> Result<Header, String> {
    if h.len() < 12 {
        return Err(format!("{} bytes, too short for a segment header", h.len()));
    }
    if h[0..8] != MAGIC {
        return Err("not a Tally journal segment (bad magic)".into());
    }
    let version = u32_at(h, 8);
    let (format, len, crc_at) = match version {
        1 => (Format::V1, HEADER_LEN_V1, 24),
        2 => (Format::V2, HEADER_LEN, 32),
        _ => {
            return Err(format!(
                "segment format version {version}; this Tally reads versions 1 and {VERSION}"
            ));
        }
    };
    if h.len() < len {
        return Err(format!("{} bytes, too short for a segment header", h.len()));
    }
    let stored = u32_at(h, crc_at);
    let computed = crc32c::crc32c(&h[..crc_at]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok(Header {
        format,
        first_lsn: u64_at(h, 16),
        epoch: if format == Format::V1 {
            0
        } else {
            u64_at(h, 24)
        },
        len,
    })
}

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_owned();
    move |source| JournalError::Io {
        action,
        path,
        source,
    }
}

/// Makes the directory's entries (created, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

/// Creates the segment that starts at `first_lsn` for records of `epoch` and returns it open
/// for appending, its header durable and its name durable in the directory. An existing file
/// of that name (an empty segment from an earlier run) is replaced in one step.
pub(crate) fn create(
    dir: &Path,
    first_lsn: u64,
    epoch: u64,
) -> Result<(File, Segment), JournalError> {
    let (file, path) = create_with(dir, first_lsn, &encode_header(first_lsn, epoch), &[])?;
    let segment = Segment {
        path,
        epoch,
        bytes: HEADER_LEN as u64,
        records: 0,
        max_batch: None,
    };
    Ok((file, segment))
}

/// Writes `header` and `body` to a new segment named for `first_lsn`, durably, and returns it
/// open for appending.
pub(crate) fn create_with(
    dir: &Path,
    first_lsn: u64,
    header: &[u8],
    body: &[u8],
) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(file_name(first_lsn));
    let tmp = dir.join(format!("{first_lsn:0NAME_DIGITS$}{TMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    file.write_all(header).map_err(io_error("write", &tmp))?;
    file.write_all(body).map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_error("rename into place", &tmp))?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// The segments in `dir`, oldest first. Leftover temporary files are removed when
/// `remove_tmp`: a segment is renamed into place before its first record is written, so they
/// hold nothing.
pub(crate) fn list(dir: &Path, remove_tmp: bool) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut segments = Vec::new();
    let mut removed = false;
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(lsn) = parse_name(&name, SUFFIX) {
            segments.push((lsn, entry.path()));
        } else if remove_tmp && parse_name(&name, TMP_SUFFIX).is_some() {
            fs::remove_file(entry.path()).map_err(io_error("remove", &entry.path()))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    segments.sort_unstable_by_key(|&(lsn, _)| lsn);
    Ok(segments)
}

/// The epochs of the segments in `dir`, read from their headers only; a header that cannot be
/// read is left to the scan to judge. Empty when the directory does not exist.
pub(crate) fn epochs(dir: &Path) -> Result<std::collections::BTreeSet<u64>, JournalError> {
    let mut epochs = std::collections::BTreeSet::new();
    if !dir.is_dir() {
        return Ok(epochs);
    }
    for (_, path) in list(dir, false)? {
        let mut head = Vec::with_capacity(HEADER_LEN);
        File::open(&path)
            .and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut head))
            .map_err(io_error("read", &path))?;
        if let Ok(header) = decode_header(&head) {
            epochs.insert(header.epoch);
        }
    }
    Ok(epochs)
}

/// A stretch of a segment that holds no whole, valid record in LSN order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Where it starts.
    pub offset: usize,
    /// Where the next valid record starts, or the end of the file.
    pub end: usize,
    /// What is wrong at `offset`.
    pub reason: String,
    /// The LSN the first record in the damage should have had.
    pub first_lsn: u64,
    /// The LSN of the valid record after it; `None` when nothing valid follows.
    pub next_lsn: Option<u64>,
}

/// What [`walk`] found in one segment.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Damaged stretches, in file order.
    pub damages: Vec<Damage>,
    /// Valid records after the first damage.
    pub records_after_damage: u64,
    /// Offset of the first record after the first damage that starts a group commit.
    pub group_start_after_damage: Option<usize>,
    /// The LSN a record appended after the last valid one would carry.
    pub next_lsn: u64,
}

/// Decodes every record of a segment's bytes in order, calling `on_record` with each valid one,
/// its offset, and whether damage came before it. Damage is skipped to the next valid record
/// of a plausible LSN, so that everything readable is seen and every damaged stretch named.
pub(crate) fn walk(
    data: &[u8],
    header: &Header,
    mut on_record: impl FnMut(&Decoded<'_>, usize, bool),
) -> Walk {
    let mut walk = Walk {
        next_lsn: header.first_lsn,
        ..Walk::default()
    };
    let mut offset = header.len;
    while offset < data.len() {
        let reason = match record::decode(&data[offset..], header.format, header.epoch) {
            Ok(d) if d.record.lsn == walk.next_lsn => {
                let after_damage = !walk.damages.is_empty();
                if after_damage {
                    walk.records_after_damage += 1;
                    if d.flags & GROUP_START != 0 && walk.group_start_after_damage.is_none() {
                        walk.group_start_after_damage = Some(offset);
                    }
                }
                on_record(&d, offset, after_damage);
                offset += d.size;
                walk.next_lsn += 1;
                continue;
            }
            Ok(d) => format!(
                "record has LSN {} where {} was expected",
                d.record.lsn, walk.next_lsn
            ),
            Err(bad) => bad.to_string(),
        };
        let found = find_valid_record(&data[offset + 1..], walk.next_lsn, header.format)
            .map(|at| offset + 1 + at);
        // The writer writes zeros ahead of its records (`writer.rs`, `zero_ahead`): a crash
        // leaves them at the end of the last segment, where the rules cut them as a torn tail.
        let reason = if found.is_none() && data[offset..].iter().all(|&b| b == 0) {
            format!(
                "{reason}: zeros to the end of the file (space written ahead for records that never came, or blocks that never reached the disk)"
            )
        } else {
            reason
        };
        let next_lsn = found.map(|at| u64_at(data, at + record::FRAME_HEADER));
        walk.damages.push(Damage {
            offset,
            end: found.unwrap_or(data.len()),
            reason,
            first_lsn: walk.next_lsn,
            next_lsn,
        });
        match (found, next_lsn) {
            (Some(at), Some(lsn)) => {
                offset = at;
                walk.next_lsn = lsn;
            }
            _ => break,
        }
    }
    walk
}

/// What the rules make of a segment's damage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No damage.
    Whole,
    /// Damage that no acknowledged record can be behind: cut the file at `offset`.
    Cut {
        offset: usize,
        /// Why that is safe, for the log.
        why: String,
    },
    /// Damage that acknowledged records may be behind: the node must not start.
    Corrupt { offset: usize, reason: String },
}

/// Decides what may be done about a segment's damage.
///
/// Only the last segment can hold records that were never acknowledged: a write is synced
/// before the next one starts, and a segment is closed only after its last write was synced.
/// In it, damage is cut when nothing valid follows it (a torn write), or, in the current
/// format, when every valid record after it belongs to the same group commit as the damage
/// (none starts a new group): that group's sync never finished, so none of it was
/// acknowledged, and a power cut may have written its pages in any order. A record that
/// starts a later group after the damage proves the damaged one was synced and acknowledged.
pub(crate) fn judge(walk: &Walk, format: Format, last: bool) -> Verdict {
    let Some(first) = walk.damages.first() else {
        return Verdict::Whole;
    };
    let corrupt = |reason: String| Verdict::Corrupt {
        offset: first.offset,
        reason,
    };
    if !last {
        return corrupt(format!("{} (not the last segment)", first.reason));
    }
    if walk.records_after_damage == 0 {
        return Verdict::Cut {
            offset: first.offset,
            why: first.reason.clone(),
        };
    }
    match (format, walk.group_start_after_damage) {
        (Format::V2, None) => Verdict::Cut {
            offset: first.offset,
            why: format!(
                "{}; the {} whole records after it belong to the same unfinished group commit, never acknowledged",
                first.reason, walk.records_after_damage
            ),
        },
        (Format::V2, Some(at)) => corrupt(format!(
            "{}, yet a later group commit starts at byte {at}, so the damaged records were acknowledged",
            first.reason
        )),
        (Format::V1, _) => corrupt(format!(
            "{}, yet a valid record follows at byte {}",
            first.reason, first.end
        )),
    }
}

/// What a scan found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Segments that remain on disk, oldest first.
    pub segments: Vec<Segment>,
    /// Segment files read.
    pub read: usize,
    pub records: u64,
    /// The LSN the next record must carry.
    pub next_lsn: u64,
    pub torn_tail: Option<String>,
    /// LSN ranges missing between segments, described.
    pub gaps: Vec<String>,
}

/// Reads every segment in LSN order and calls `visit` for each whole record.
///
/// Damage is judged by [`judge`]: what may be cut is cut (the file is truncated and fsynced,
/// and the cut reported as a torn tail); anything else fails the scan with
/// [`JournalError::Corrupt`], since acknowledged records may be behind it.
pub(crate) fn scan(dir: &Path, mut visit: impl FnMut(Record<'_>)) -> Result<Scan, JournalError> {
    let names = list(dir, true)?;
    let mut scan = Scan {
        segments: Vec::with_capacity(names.len()),
        read: names.len(),
        records: 0,
        next_lsn: 1,
        torn_tail: None,
        gaps: Vec::new(),
    };
    let corrupt = |path: &Path, offset: usize, reason: String| JournalError::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        reason,
    };
    let mut expected: Option<u64> = None;
    let mut data = Vec::new();
    for (i, (name_lsn, path)) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        data.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io_error("read", path))?;

        let header = match decode_header(&data) {
            Ok(header) => header,
            // Only a crash between creating and renaming could leave this, and renaming comes
            // after the header is durable; still, such a file holds no record.
            Err(reason) if last && is_short_header(&data) => {
                fs::remove_file(path).map_err(io_error("remove", path))?;
                sync_dir(dir)?;
                scan.torn_tail = Some(format!(
                    "{}: removed a segment with a partial header ({reason})",
                    path.display()
                ));
                expected = expected.or(Some(*name_lsn));
                break;
            }
            Err(reason) => return Err(corrupt(path, 0, reason)),
        };
        if header.first_lsn != *name_lsn {
            return Err(corrupt(
                path,
                16,
                format!(
                    "the header says the segment starts at LSN {}, its name says {name_lsn}",
                    header.first_lsn
                ),
            ));
        }
        if let Some(expected) = expected {
            if header.first_lsn < expected {
                return Err(corrupt(
                    path,
                    16,
                    format!(
                        "the segment starts at LSN {} but the previous one ends at LSN {}: segments overlap",
                        header.first_lsn,
                        expected - 1
                    ),
                ));
            }
            if header.first_lsn > expected {
                scan.gaps.push(format!(
                    "LSNs {expected} to {} are missing before {}",
                    header.first_lsn - 1,
                    path.display()
                ));
            }
        }

        let mut segment = Segment {
            path: path.clone(),
            epoch: header.epoch,
            bytes: data.len() as u64,
            records: 0,
            max_batch: None,
        };
        let walked = walk(&data, &header, |d, _, after_damage| {
            if !after_damage {
                visit(d.record);
                segment.add(0, 1, Some(d.record.batch));
            }
        });
        let mut next_lsn = walked.next_lsn;
        match judge(&walked, header.format, last) {
            Verdict::Whole => {}
            Verdict::Corrupt { offset, reason } => return Err(corrupt(path, offset, reason)),
            Verdict::Cut { offset, why } => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error("open", path))?;
                file.set_len(offset as u64)
                    .map_err(io_error("truncate", path))?;
                file.sync_all().map_err(io_error("fsync", path))?;
                next_lsn = walked.damages[0].first_lsn;
                scan.torn_tail = Some(format!(
                    "{}: cut {} bytes at byte {offset}, after LSN {}: {why}",
                    path.display(),
                    data.len() - offset,
                    next_lsn - 1,
                ));
                segment.bytes = offset as u64;
            }
        }
        scan.records += segment.records;
        expected = Some(next_lsn);
        scan.segments.push(segment);
    }
    scan.next_lsn = expected.unwrap_or(1);
    Ok(scan)
}

/// Whether `data` is too short to hold the header it begins.
pub(crate) fn is_short_header(data: &[u8]) -> bool {
    let len = match data.get(8..12).map(|v| u32_at(v, 0)) {
        Some(1) => HEADER_LEN_V1,
        _ => HEADER_LEN,
    };
    data.len() < len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_like_lsns_and_only_segment_names_parse() {
        assert_eq!(file_name(1), "00000000000000000001.journal");
        assert_eq!(parse_name(&file_name(u64::MAX), SUFFIX), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        assert_eq!(parse_name("1.journal", SUFFIX), None);
        assert_eq!(parse_name("0000000000000000000x.journal", SUFFIX), None);
        assert_eq!(parse_name("00000000000000000001.journal.tmp", SUFFIX), None);
        assert_eq!(
            parse_name("00000000000000000001.journal.tmp", TMP_SUFFIX),
            Some(1)
        );
    }

    #[test]
    fn a_header_reads_back_and_damage_is_named() {
        let h = encode_header(77, 5);
        assert_eq!(
            decode_header(&h),
            Ok(Header {
                format: Format::V2,
                first_lsn: 77,
                epoch: 5,
                len: HEADER_LEN
            })
        );
        let mut bad = h;
        bad[17] ^= 1;
        assert!(decode_header(&bad).unwrap_err().contains("checksum"));
        let mut bad_epoch = h;
        bad_epoch[25] ^= 1;
        assert!(decode_header(&bad_epoch).unwrap_err().contains("checksum"));
        let mut other = h;
        other[0] = b'X';
        assert!(decode_header(&other).unwrap_err().contains("magic"));
        let mut newer = h;
        newer[8] = 3;
        assert!(decode_header(&newer).unwrap_err().contains("version 3"));
        assert!(decode_header(&h[..10]).is_err());
        assert!(decode_header(&h[..30]).is_err());
    }

    #[test]
    fn a_version_1_header_reads_as_epoch_0() {
        let h = encode_header_as(Format::V1, 9, 4);
        assert_eq!(
            decode_header(&h),
            Ok(Header {
                format: Format::V1,
                first_lsn: 9,
                epoch: 0,
                len: HEADER_LEN_V1
            })
        );
    }
}
