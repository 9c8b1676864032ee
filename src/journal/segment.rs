//! Segment files: their header and names, how one is created, and the scan that replays them.
//!
//! A segment is `<first LSN, 20 digits>.journal`, so lexical order is LSN order: a 32-byte
//! header (magic, format version, first LSN, header checksum) and then records back to back.
//! A segment is created under `.journal.tmp`, fsynced, renamed into place and the directory
//! fsynced, so a segment that exists has a whole header, and a leftover `.tmp` never held a
//! record. The segments on disk are contiguous in LSN: each starts where the previous ended
//! (only the oldest are deleted), so a missing or misplaced file is detected, not skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::record::{self, find_valid_record, u32_at, u64_at};
use super::{JournalError, Record};

/// Identifies a Tally journal segment.
const MAGIC: [u8; 8] = *b"TALLYJNL";
/// The format this code writes and reads; a segment of another version is refused.
const VERSION: u32 = 1;
/// Bytes of the segment header.
pub(crate) const HEADER_LEN: usize = 32;
const SUFFIX: &str = ".journal";
const TMP_SUFFIX: &str = ".journal.tmp";
/// Digits of the LSN in a segment's name: enough for any u64, so names sort like numbers.
const NAME_DIGITS: usize = 20;

/// A segment on disk, as the writer keeps account of it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub path: PathBuf,
    /// Size on disk, header included.
    pub bytes: u64,
    pub records: u64,
    /// The highest batch of its records; `None` while it has none.
    pub max_batch: Option<u64>,
}

impl Segment {
    pub fn add(&mut self, bytes: u64, records: u64, max_batch: Option<u64>) {
        self.bytes += bytes;
        self.records += records;
        self.max_batch = self.max_batch.max(max_batch);
    }
}

pub(crate) fn file_name(first_lsn: u64) -> String {
    format!("{first_lsn:0NAME_DIGITS$}{SUFFIX}")
}

/// The first LSN a segment's file name announces, if it is a segment's name.
fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn encode_header(first_lsn: u64) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    // 12..16: flags, none defined yet.
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first LSN a header announces, or why it is not a valid header.
fn decode_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < HEADER_LEN {
        return Err(format!("{} bytes, too short for a segment header", h.len()));
    }
    if h[0..8] != MAGIC {
        return Err("not a Tally journal segment (bad magic)".into());
    }
    let stored = u32_at(h, 24);
    let computed = crc32c::crc32c(&h[..24]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let version = u32_at(h, 8);
    if version != VERSION {
        return Err(format!(
            "segment format version {version}; this Tally reads version {VERSION}"
        ));
    }
    Ok(u64_at(h, 16))
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

/// Creates the segment that starts at `first_lsn` and returns it open for appending, its
/// header durable and its name durable in the directory. An existing file of that name (an
/// empty segment from an earlier run) is replaced in one step.
pub(crate) fn create(dir: &Path, first_lsn: u64) -> Result<(File, Segment), JournalError> {
    let path = dir.join(file_name(first_lsn));
    let tmp = dir.join(format!("{first_lsn:0NAME_DIGITS$}{TMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    file.write_all(&encode_header(first_lsn))
        .map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_error("rename into place", &tmp))?;
    sync_dir(dir)?;
    let segment = Segment {
        path,
        bytes: HEADER_LEN as u64,
        records: 0,
        max_batch: None,
    };
    Ok((file, segment))
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
}

/// The segments in `dir`, oldest first. Leftover temporary files are removed: a segment is
/// renamed into place before its first record is written, so they hold nothing.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut segments = Vec::new();
    let mut removed = false;
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(lsn) = parse_name(&name, SUFFIX) {
            segments.push((lsn, entry.path()));
        } else if parse_name(&name, TMP_SUFFIX).is_some() {
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

/// Reads every segment in LSN order and calls `visit` for each whole record.
///
/// Damage at the very end of the last segment is a torn tail (a write that a crash cut short,
/// never acknowledged): the file is cut at the last whole record and fsynced. Damage anywhere
/// else, or followed by a valid record, is corruption: acknowledged records may be behind it,
/// so the scan fails rather than guess.
pub(crate) fn scan(dir: &Path, mut visit: impl FnMut(Record<'_>)) -> Result<Scan, JournalError> {
    let names = list(dir)?;
    let mut scan = Scan {
        segments: Vec::with_capacity(names.len()),
        read: names.len(),
        records: 0,
        next_lsn: 1,
        torn_tail: None,
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

        let first_lsn = match decode_header(&data) {
            Ok(lsn) => lsn,
            // Only a crash between creating and renaming could leave this, and renaming comes
            // after the header is durable; still, such a file holds no record.
            Err(reason) if last && data.len() < HEADER_LEN => {
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
        if first_lsn != *name_lsn {
            return Err(corrupt(
                path,
                16,
                format!(
                    "the header says the segment starts at LSN {first_lsn}, its name says {name_lsn}"
                ),
            ));
        }
        if let Some(expected) = expected
            && first_lsn != expected
        {
            return Err(corrupt(
                path,
                16,
                format!(
                    "the segment starts at LSN {first_lsn} but the previous one ends before LSN {expected}: a segment is missing or out of place"
                ),
            ));
        }

        let mut segment = Segment {
            path: path.clone(),
            bytes: 0,
            records: 0,
            max_batch: None,
        };
        let mut lsn = first_lsn;
        let mut offset = HEADER_LEN;
        while offset < data.len() {
            let reason = match record::decode(&data[offset..]) {
                Ok(d) if d.lsn == lsn => {
                    visit(d.record);
                    segment.add(0, 1, Some(d.record.batch));
                    offset += d.size;
                    lsn += 1;
                    continue;
                }
                Ok(d) => format!("record has LSN {} where {lsn} was expected", d.lsn),
                Err(bad) => bad.to_string(),
            };
            if !last {
                return Err(corrupt(
                    path,
                    offset,
                    format!("{reason} (not the last segment)"),
                ));
            }
            if let Some(at) = find_valid_record(&data[offset + 1..], lsn) {
                let at = offset + 1 + at;
                return Err(corrupt(
                    path,
                    offset,
                    format!("{reason}, yet a valid record follows at byte {at}"),
                ));
            }
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_error("open", path))?;
            file.set_len(offset as u64)
                .map_err(io_error("truncate", path))?;
            file.sync_all().map_err(io_error("fsync", path))?;
            scan.torn_tail = Some(format!(
                "{}: cut {} bytes at byte {offset}, after LSN {}: {reason}",
                path.display(),
                data.len() - offset,
                lsn - 1,
            ));
            break;
        }
        segment.bytes = offset.min(data.len()) as u64;
        scan.records += segment.records;
        expected = Some(lsn);
        scan.segments.push(segment);
    }
    scan.next_lsn = expected.unwrap_or(1);
    Ok(scan)
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
        let h = encode_header(77);
        assert_eq!(decode_header(&h), Ok(77));
        let mut bad = h;
        bad[17] ^= 1;
        assert!(decode_header(&bad).unwrap_err().contains("checksum"));
        let mut other = h;
        other[0] = b'X';
        assert!(decode_header(&other).unwrap_err().contains("magic"));
        let mut newer = h;
        newer[8] = 2;
        let crc = crc32c::crc32c(&newer[..24]);
        newer[24..28].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_header(&newer).unwrap_err().contains("version 2"));
        assert!(decode_header(&h[..10]).is_err());
    }
}
