//! What one stored row is: its kind, its checksum, and the conversions of values read back from
//! disk (which are data, never trusted).
//!
//! The checksum is CRC32C over the record kind, the party, the room, the sequence number and
//! the data, each length-prefixed. Binding the key and sequence number means a record copied
//! to another room or position fails its check just like a flipped bit does.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ripple_core::{RoomInfo, RoomKey, StoreError, StoredRoom};

use crate::fsck::RawRecord;

/// Which table a record lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    /// The room's snapshot (at most one per room).
    Snapshot,
    /// One entry of the room's update log.
    Update,
}

impl RecordKind {
    /// The name stored in the quarantine table's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Snapshot => "snapshot",
            RecordKind::Update => "update",
        }
    }

    fn tag(self) -> u8 {
        match self {
            RecordKind::Snapshot => b'S',
            RecordKind::Update => b'U',
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CRC32C of a record: kind, party, room, seq and data.
pub fn checksum(kind: RecordKind, party: &str, room: &str, seq: u64, data: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&[kind.tag()]);
    for part in [party.as_bytes(), room.as_bytes()] {
        crc = crc32c::crc32c_append(crc, &(part.len() as u64).to_le_bytes());
        crc = crc32c::crc32c_append(crc, part);
    }
    crc = crc32c::crc32c_append(crc, &seq.to_le_bytes());
    crc32c::crc32c_append(crc, data)
}

/// The checksum as stored in an `INTEGER`/`BIGINT` column.
pub(crate) fn checksum_column(
    kind: RecordKind,
    party: &str,
    room: &str,
    seq: u64,
    data: &[u8],
) -> i64 {
    i64::from(checksum(kind, party, room, seq, data))
}

/// Checks a record read back from disk; `Err` describes the mismatch.
pub(crate) fn verify(
    kind: RecordKind,
    party: &str,
    room: &str,
    seq: i64,
    data: &[u8],
    stored: i64,
) -> Result<u64, String> {
    let seq = u64::try_from(seq).map_err(|_| format!("{kind} has negative seq {seq}"))?;
    let computed = checksum(kind, party, room, seq, data);
    if stored != i64::from(computed) {
        return Err(format!(
            "{kind} seq {seq}: checksum mismatch (stored {stored:#x}, computed {computed:#x})"
        ));
    }
    Ok(seq)
}

/// A sequence number as stored in a signed 64-bit column.
pub(crate) fn seq_column(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq)
        .map_err(|_| StoreError::Unavailable(format!("sequence number {seq} overflows")))
}

/// Unix milliseconds now (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Refuses a compaction that would go backwards (an older snapshot replacing a newer one whose
/// covered log entries are gone) or claims entries the store never saw.
pub(crate) fn check_compaction(
    room: &RoomKey,
    current_snapshot: Option<i64>,
    last_seq: u64,
    through_seq: u64,
) -> Result<(), StoreError> {
    if let Some(current) = current_snapshot {
        if i128::from(through_seq) < i128::from(current) {
            return Err(StoreError::Conflict(format!(
                "{room}: the snapshot already covers seq {current}; a compaction through \
                 {through_seq} is stale"
            )));
        }
    }
    if through_seq > last_seq {
        return Err(StoreError::Conflict(format!(
            "{room}: compaction through seq {through_seq}, but the log ends at {last_seq}"
        )));
    }
    Ok(())
}

/// Verifies records read for `room` and assembles them. Any mismatch fails the whole load.
pub(crate) fn stored_room(
    room: &RoomKey,
    records: Vec<RawRecord>,
) -> Result<StoredRoom, StoreError> {
    let mut stored = StoredRoom::default();
    for raw in records {
        let seq = verify(
            raw.kind,
            room.party(),
            room.room(),
            raw.seq,
            &raw.data,
            raw.checksum,
        )
        .map_err(|detail| StoreError::Corrupt {
            room: room.to_string(),
            detail,
        })?;
        match raw.kind {
            RecordKind::Snapshot => {
                stored.snapshot = Some(Bytes::from(raw.data));
                stored.snapshot_seq = seq;
            }
            RecordKind::Update => stored.updates.push((seq, Bytes::from(raw.data))),
        }
    }
    Ok(stored)
}

/// A `list` line from stored values; `None` (with a warning) for a key that no longer validates.
pub(crate) fn room_info(
    party: &str,
    room: &str,
    bytes: i64,
    count: i64,
    last_ms: i64,
) -> Option<RoomInfo> {
    match RoomKey::new(party, room, usize::MAX) {
        Ok(key) => Some(RoomInfo {
            key,
            stored_bytes: u64::try_from(bytes).unwrap_or(0),
            update_count: u64::try_from(count).unwrap_or(0),
            last_change_ms: last_ms,
        }),
        Err(e) => {
            tracing::warn!(party, room, error = %e, "skipping a stored room with an invalid key");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_binds_key_seq_and_kind() {
        let base = checksum(RecordKind::Update, "main", "doc", 1, b"data");
        assert_ne!(
            base,
            checksum(RecordKind::Snapshot, "main", "doc", 1, b"data")
        );
        assert_ne!(
            base,
            checksum(RecordKind::Update, "main", "doc-1", 1, b"data")
        );
        assert_ne!(
            base,
            checksum(RecordKind::Update, "main", "doc", 2, b"data")
        );
        assert_ne!(
            base,
            checksum(RecordKind::Update, "main", "doc", 1, b"dat4")
        );
        // Length prefixes keep the party/room boundary unambiguous.
        assert_ne!(
            checksum(RecordKind::Update, "ab", "c", 1, b""),
            checksum(RecordKind::Update, "a", "bc", 1, b"")
        );
    }

    #[test]
    fn verify_reports_mismatch_and_negative_seq() {
        let sum = checksum_column(RecordKind::Update, "p", "r", 3, b"x");
        assert_eq!(verify(RecordKind::Update, "p", "r", 3, b"x", sum), Ok(3));
        assert!(verify(RecordKind::Update, "p", "r", 3, b"y", sum).is_err());
        assert!(verify(RecordKind::Update, "p", "r", -1, b"x", sum).is_err());
    }
}
