//! fsck and salvage: finding stored records that fail their checksum or do not decode as a Yjs
//! v1 update, and the reports the CLI prints.
//!
//! The backends do the I/O (`SqliteStore::check`, `PostgresStore::salvage`, ...); this module
//! holds what they share: the per-record inspection and the report types. Inspection decodes
//! every record, which is CPU work: callers run it off the async runtime.

use std::collections::BTreeMap;
use std::fmt;

use ripple_core::{RoomKey, Store, StoreError};

use crate::record::{self, RecordKind};

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The stored checksum does not match the record (or its seq is out of range).
    Checksum(String),
    /// The data is not a Yjs v1 update.
    Decode(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Checksum(detail) => write!(f, "checksum: {detail}"),
            Problem::Decode(detail) => write!(f, "not a Yjs v1 update: {detail}"),
        }
    }
}

/// One record that failed inspection. The key is kept as stored (strings), since a damaged
/// database may hold keys that no longer validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The party as stored.
    pub party: String,
    /// The room as stored.
    pub room: String,
    /// Snapshot or log entry.
    pub kind: RecordKind,
    /// The sequence number as stored.
    pub seq: i64,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {} seq {}: {}",
            self.party, self.room, self.kind, self.seq, self.problem
        )
    }
}

/// The result of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Rooms inspected.
    pub rooms_checked: u64,
    /// Records (snapshots and log entries) inspected.
    pub records_checked: u64,
    /// The records that failed, ordered by room, kind and seq.
    pub bad: Vec<BadRecord>,
}

impl Report {
    /// True when no record failed.
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty()
    }

    /// The bad records grouped per room (`(party, room)`).
    pub fn by_room(&self) -> BTreeMap<(&str, &str), Vec<&BadRecord>> {
        let mut rooms: BTreeMap<(&str, &str), Vec<&BadRecord>> = BTreeMap::new();
        for bad in &self.bad {
            rooms
                .entry((bad.party.as_str(), bad.room.as_str()))
                .or_default()
                .push(bad);
        }
        rooms
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} records in {} rooms: {} bad",
            self.records_checked,
            self.rooms_checked,
            self.bad.len()
        )?;
        for ((party, room), bad) in self.by_room() {
            writeln!(f, "{party}/{room}: {} bad", bad.len())?;
            for record in bad {
                writeln!(
                    f,
                    "  {} seq {}: {}",
                    record.kind, record.seq, record.problem
                )?;
            }
        }
        Ok(())
    }
}

/// The result of a salvage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvageReport {
    /// The room salvaged.
    pub room: RoomKey,
    /// Records moved into the quarantine table.
    pub moved: Vec<BadRecord>,
    /// Records left in place (they passed inspection).
    pub kept: u64,
}

/// A record as read from disk, before inspection.
pub(crate) struct RawRecord {
    pub party: String,
    pub room: String,
    pub kind: RecordKind,
    pub seq: i64,
    pub data: Vec<u8>,
    pub checksum: i64,
}

impl RawRecord {
    /// A record of `room` from one row of the per-room query, whose first column is 0 for the
    /// snapshot and 1 for a log entry (both backends select the same columns).
    pub(crate) fn from_row(
        party: &str,
        room: &str,
        kind: i64,
        seq: i64,
        data: Vec<u8>,
        checksum: i64,
    ) -> Self {
        Self {
            party: party.to_owned(),
            room: room.to_owned(),
            kind: if kind == 0 {
                RecordKind::Snapshot
            } else {
                RecordKind::Update
            },
            seq,
            data,
            checksum,
        }
    }
}

/// Checks one record: its checksum first, then whether it decodes as a Yjs v1 update.
pub(crate) fn inspect(raw: &RawRecord) -> Option<Problem> {
    if let Err(detail) = record::verify(
        raw.kind,
        &raw.party,
        &raw.room,
        raw.seq,
        &raw.data,
        raw.checksum,
    ) {
        return Some(Problem::Checksum(detail));
    }
    decode_problem(&raw.data).map(Problem::Decode)
}

/// `Some(reason)` when `data` is not a Yjs v1 update.
pub(crate) fn decode_problem(data: &[u8]) -> Option<String> {
    // The decoder meets arbitrary damaged bytes here; a panic inside it must mark the record
    // bad, not take the process down.
    // The same bounded decode a room load uses: a corrupt count is reported, not allocated.
    match std::panic::catch_unwind(|| ripple_core::room::decode_untrusted(data)) {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("the decoder panicked".to_owned()),
    }
}

/// Inspects records and returns the bad ones.
pub(crate) fn inspect_all(records: &[RawRecord]) -> Vec<BadRecord> {
    records
        .iter()
        .filter_map(|raw| {
            inspect(raw).map(|problem| BadRecord {
                party: raw.party.clone(),
                room: raw.room.clone(),
                kind: raw.kind,
                seq: raw.seq,
                problem,
            })
        })
        .collect()
}

/// A check through the [`Store`] seam alone, for stores without checksums (the memory store):
/// only decoding is checked.
pub(crate) async fn check_through_store(
    store: &dyn Store,
    room: Option<&RoomKey>,
) -> Result<Report, StoreError> {
    let rooms = match room {
        Some(room) => vec![room.clone()],
        None => store
            .list()
            .await?
            .into_iter()
            .map(|info| info.key)
            .collect(),
    };
    let mut report = Report::default();
    for key in rooms {
        let stored = store.load(&key).await?;
        report.rooms_checked += 1;
        let snapshot = stored
            .snapshot
            .map(|data| (RecordKind::Snapshot, stored.snapshot_seq, data));
        let updates = stored
            .updates
            .into_iter()
            .map(|(seq, data)| (RecordKind::Update, seq, data));
        for (kind, seq, data) in snapshot.into_iter().chain(updates) {
            report.records_checked += 1;
            if let Some(detail) = decode_problem(&data) {
                report.bad.push(bad_record(&key, kind, seq, detail));
            }
        }
    }
    Ok(report)
}

fn bad_record(key: &RoomKey, kind: RecordKind, seq: u64, detail: String) -> BadRecord {
    BadRecord {
        party: key.party().to_owned(),
        room: key.room().to_owned(),
        kind,
        seq: i64::try_from(seq).unwrap_or(i64::MAX),
        problem: Problem::Decode(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_flags_checksum_before_decode() {
        let data = vec![0xff, 0xff, 0xff];
        let good_sum = record::checksum_column(RecordKind::Update, "p", "r", 1, &data);
        let raw = RawRecord {
            party: "p".into(),
            room: "r".into(),
            kind: RecordKind::Update,
            seq: 1,
            data,
            checksum: good_sum,
        };
        assert!(matches!(inspect(&raw), Some(Problem::Decode(_))));
        let raw = RawRecord {
            checksum: good_sum ^ 1,
            ..raw
        };
        assert!(matches!(inspect(&raw), Some(Problem::Checksum(_))));
    }

    #[test]
    fn empty_update_decodes() {
        // `[0, 0]`: no structs, empty delete set — the encoding of an empty document.
        assert_eq!(decode_problem(&[0, 0]), None);
    }
}
