//! One journal record on disk: its framing, its checksum, and how it is read back.
//!
//! ```text
//! len: u32 LE | crc32c: u32 LE | lsn: u64 LE | batch: u64 LE | delta: i64 LE | flags: u8 | key (UTF-8)
//!               \_______________________ payload: `len` bytes, covered by the CRC _______________/
//! ```
//!
//! That is format version 2. Version 1 (segments written before it) has no `flags` byte; both
//! are read, only version 2 is written.
//!
//! The sequence number (LSN) is inside the checksum, so a record that is intact but in the
//! wrong place (a stale or repeated write) is caught by the LSN check of the segment scan, not
//! accepted as new. A length of zero (preallocated or zero-filled space) and a length beyond
//! [`MAX_PAYLOAD`] are invalid, so garbage never makes the reader skip over good data.
//! Decoding never panics, whatever the bytes.
//!
//! The flag [`GROUP_START`] marks the first record of each group commit (one write and one
//! `fdatasync`). It is what lets a scan tell damage inside the last, never-acknowledged group
//! commit (a power cut mid-sync may leave a later page on disk and not an earlier one) from
//! damage to records that a later group commit proves were acknowledged.

use super::Record;
use crate::batch::BatchSeq;

/// Bytes before the payload: length and checksum.
pub(crate) const FRAME_HEADER: usize = 8;
/// The largest valid payload. Keys are far shorter (Tally accepts 256 bytes); the bound only
/// keeps a damaged length from pointing megabytes ahead.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;
/// The longest key a record can hold.
pub(crate) const MAX_KEY: usize = MAX_PAYLOAD - Format::V2.fixed_payload();
/// The smallest whole record of any version.
pub(crate) const MIN_RECORD: usize = FRAME_HEADER + Format::V1.fixed_payload();

/// Flag of the first record of a group commit.
pub(crate) const GROUP_START: u8 = 1;

/// The record layout of a segment, named by the segment header's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// No flags byte.
    V1,
    /// A flags byte before the key.
    V2,
}

impl Format {
    /// Bytes of the payload before the key.
    pub(crate) const fn fixed_payload(self) -> usize {
        match self {
            Format::V1 => 24,
            Format::V2 => 25,
        }
    }
}

/// Appends one framed record, in the current format (version 2), to `buf`. The key must be at
/// most [`MAX_KEY`] bytes (checked by the caller, so that a batch of records is refused whole).
pub(crate) fn encode(
    buf: &mut Vec<u8>,
    lsn: u64,
    batch: BatchSeq,
    key: &str,
    delta: i64,
    flags: u8,
) {
    debug_assert!(key.len() <= MAX_KEY);
    let len = Format::V2.fixed_payload() + key.len();
    let start = buf.len();
    buf.reserve(FRAME_HEADER + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&batch.get().to_le_bytes());
    buf.extend_from_slice(&delta.to_le_bytes());
    buf.push(flags);
    buf.extend_from_slice(key.as_bytes());
    let crc = crc32c::crc32c(&buf[start + FRAME_HEADER..]);
    buf[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// A record decoded from the front of a byte slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decoded<'a> {
    pub record: Record<'a>,
    /// [`GROUP_START`] or nothing; always 0 in version 1.
    pub flags: u8,
    /// Bytes the record takes, framing included.
    pub size: usize,
}

/// Why the bytes at some offset are not a whole, valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadRecord {
    #[error("{available} bytes left, too few for a record header")]
    ShortHeader { available: usize },
    #[error("invalid record length {len} (a payload is {min} to {MAX_PAYLOAD} bytes)")]
    BadLength { len: u32, min: usize },
    #[error("record of {needed} bytes but only {available} left")]
    ShortRecord { needed: usize, available: usize },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("key is not valid UTF-8")]
    KeyNotUtf8,
}

/// Decodes the record at the front of `bytes`, laid out in `format`. The record's epoch is the
/// segment's, given by the caller.
pub(crate) fn decode(bytes: &[u8], format: Format, epoch: u64) -> Result<Decoded<'_>, BadRecord> {
    let fixed = format.fixed_payload();
    if bytes.len() < FRAME_HEADER {
        return Err(BadRecord::ShortHeader {
            available: bytes.len(),
        });
    }
    let len = u32_at(bytes, 0);
    let payload_len = len as usize;
    if !(fixed..=MAX_PAYLOAD).contains(&payload_len) {
        return Err(BadRecord::BadLength { len, min: fixed });
    }
    let size = FRAME_HEADER + payload_len;
    if bytes.len() < size {
        return Err(BadRecord::ShortRecord {
            needed: size,
            available: bytes.len(),
        });
    }
    let stored = u32_at(bytes, 4);
    let payload = &bytes[FRAME_HEADER..size];
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(BadRecord::Checksum { stored, computed });
    }
    let key = std::str::from_utf8(&payload[fixed..]).map_err(|_| BadRecord::KeyNotUtf8)?;
    Ok(Decoded {
        record: Record {
            epoch,
            lsn: u64_at(payload, 0),
            batch: BatchSeq::new(u64_at(payload, 8)),
            key,
            delta: u64_at(payload, 16) as i64,
        },
        flags: match format {
            Format::V1 => 0,
            Format::V2 => payload[24],
        },
        size,
    })
}

/// Looks for a valid record anywhere in `bytes` after a bad one, cheaply: a candidate must
/// have a plausible length and an LSN no lower than `min_lsn` and within reach of it before
/// its checksum is computed. Returns the offset of the first one found.
///
/// This is what tells a torn tail (nothing valid follows the damage) from corruption in the
/// middle of the log (acknowledged records follow it).
pub(crate) fn find_valid_record(bytes: &[u8], min_lsn: u64, format: Format) -> Option<usize> {
    let fixed = format.fixed_payload();
    let last_start = bytes.len().checked_sub(FRAME_HEADER + fixed)?;
    (0..=last_start).find(|&p| {
        let len = u32_at(bytes, p) as usize;
        if !(fixed..=MAX_PAYLOAD).contains(&len) || p + FRAME_HEADER + len > bytes.len() {
            return false;
        }
        // Every record between the damage and this one takes at least MIN_RECORD bytes, which
        // bounds how far its LSN can be from `min_lsn`.
        let lsn = u64_at(bytes, p + FRAME_HEADER);
        let reach = (p / MIN_RECORD) as u64 + 1;
        if lsn < min_lsn || lsn - min_lsn > reach {
            return false;
        }
        decode(&bytes[p..], format, 0).is_ok()
    })
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(lsn: u64, batch: u64, key: &str, delta: i64) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, lsn, BatchSeq::new(batch), key, delta, 0);
        buf
    }

    fn v2(bytes: &[u8]) -> Result<Decoded<'_>, BadRecord> {
        decode(bytes, Format::V2, 3)
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let bytes = one(7, 42, "päge-views", -3);
        assert_eq!(bytes.len(), MIN_RECORD + 1 + "päge-views".len());
        let d = v2(&bytes).unwrap();
        assert_eq!(
            d.record,
            Record {
                epoch: 3,
                lsn: 7,
                batch: BatchSeq::new(42),
                key: "päge-views",
                delta: -3
            }
        );
        assert_eq!(d.flags, 0);
        assert_eq!(d.size, bytes.len());

        let mut first = Vec::new();
        encode(&mut first, 8, BatchSeq::new(42), "k", 1, GROUP_START);
        assert_eq!(v2(&first).unwrap().flags, GROUP_START);

        let extremes = one(u64::MAX, u64::MAX, "", i64::MIN);
        let d = v2(&extremes).unwrap();
        assert_eq!(
            (d.record.lsn, d.record.batch.get(), d.record.delta),
            (u64::MAX, u64::MAX, i64::MIN)
        );
    }

    /// A version 1 record: the layout of segments written before the flags byte existed.
    #[test]
    fn a_version_1_record_reads_back() {
        let key = "old";
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((24 + key.len()) as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        bytes.extend_from_slice(&9i64.to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        let crc = crc32c::crc32c(&bytes[FRAME_HEADER..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        let d = decode(&bytes, Format::V1, 0).unwrap();
        assert_eq!(
            (
                d.record.lsn,
                d.record.batch.get(),
                d.record.delta,
                d.record.key
            ),
            (5, 2, 9, "old")
        );
        assert_eq!(d.flags, 0);
        assert_eq!(find_valid_record(&bytes, 5, Format::V1), Some(0));
    }

    #[test]
    fn zeros_short_bytes_and_huge_lengths_are_refused() {
        assert_eq!(
            v2(&[0; 64]),
            Err(BadRecord::BadLength { len: 0, min: 25 }),
            "zero-filled space is not a record"
        );
        assert_eq!(v2(&[1, 2, 3]), Err(BadRecord::ShortHeader { available: 3 }));
        let mut huge = one(1, 1, "k", 1);
        huge[..4].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(v2(&huge), Err(BadRecord::BadLength { .. })));
        let whole = one(1, 1, "key", 1);
        assert!(matches!(
            v2(&whole[..whole.len() - 1]),
            Err(BadRecord::ShortRecord { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = one(9, 3, "some-key", 5);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    v2(&damaged).is_err(),
                    "bit {bit} of byte {i} flipped went unnoticed"
                );
            }
        }
    }

    #[test]
    fn invalid_utf8_is_refused_even_with_a_good_checksum() {
        let mut bytes = one(1, 1, "ab", 1);
        let n = bytes.len();
        bytes[n - 1] = 0xff;
        let crc = crc32c::crc32c(&bytes[FRAME_HEADER..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(v2(&bytes), Err(BadRecord::KeyNotUtf8));
    }

    #[test]
    fn a_valid_record_is_found_after_garbage_but_not_in_zeros() {
        let mut bytes = vec![0xAB; 13];
        let at = bytes.len();
        bytes.extend(one(10, 1, "k", 1));
        assert_eq!(find_valid_record(&bytes, 10, Format::V2), Some(at));
        assert_eq!(
            find_valid_record(&bytes, 11, Format::V2),
            None,
            "an older LSN is not news"
        );
        assert_eq!(find_valid_record(&[0; 4096], 1, Format::V2), None);
        assert_eq!(find_valid_record(&[], 1, Format::V2), None);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let len = (next() % 100) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 4 && next() % 2 == 0 {
                let plausible = (24 + (next() % 80) as usize) as u32;
                bytes[..4].copy_from_slice(&plausible.to_le_bytes());
            }
            for format in [Format::V1, Format::V2] {
                let _ = decode(&bytes, format, 1);
                let _ = find_valid_record(&bytes, next() % 4, format);
            }
        }
    }
}
