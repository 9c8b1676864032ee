//! Journal files written by hand, for tests of what a node makes of journals it did not write
//! itself: the format of an earlier version.

/// A segment of format version 1, written before epochs and group-commit flags existed.
pub fn version_1_segment(first_lsn: u64, records: &[(u64, String, i64)]) -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    bytes[0..8].copy_from_slice(b"TALLYJNL");
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    bytes[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    for (i, (batch, key, delta)) in records.iter().enumerate() {
        let start = bytes.len();
        bytes.extend_from_slice(&((24 + key.len()) as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&(first_lsn + i as u64).to_le_bytes());
        bytes.extend_from_slice(&batch.to_le_bytes());
        bytes.extend_from_slice(&delta.to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        let crc = crc32c::crc32c(&bytes[start + 8..]);
        bytes[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    bytes
}
