//! The room's awareness table: the latest state per Yjs client id, and which connection
//! introduced each id, so a connection's ids can be removed (and the removal announced) when it
//! goes away, cleanly or not.
//!
//! The rules follow y-protocols' `applyAwarenessUpdate`: an entry wins when its clock is newer,
//! or when it is a removal with the same clock as a state we hold. Clocks of removed clients are
//! remembered so that a late, stale update cannot bring them back.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use ripple_proto::awareness::{encode_update, AwarenessEntry};

/// Identifies one connection within a room.
pub type ConnId = u64;

/// Why an awareness update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwarenessError {
    /// The connection introduced more client ids than allowed.
    #[error("connection introduced more than {0} awareness client ids")]
    TooManyClients(usize),
}

/// Latest awareness states of a room.
#[derive(Debug, Default)]
pub struct AwarenessTable {
    /// Known clock per client id, kept after removal.
    clocks: HashMap<u64, u64>,
    /// Present states (JSON text) per client id.
    states: HashMap<u64, String>,
    /// Which connection introduced which client ids.
    owners: HashMap<ConnId, HashSet<u64>>,
    /// Reverse of `owners`.
    owner_of: HashMap<u64, ConnId>,
    max_per_conn: usize,
}

impl AwarenessTable {
    /// A table that lets one connection introduce at most `max_per_conn` client ids.
    pub fn new(max_per_conn: usize) -> Self {
        Self {
            max_per_conn,
            ..Self::default()
        }
    }

    /// Number of present states.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no state is present.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Applies entries sent by `conn`; returns the encoded update of the entries that took
    /// effect (to broadcast to everyone, the sender included), or `None` if none did.
    pub fn apply(
        &mut self,
        conn: ConnId,
        entries: Vec<AwarenessEntry>,
    ) -> Result<Option<Bytes>, AwarenessError> {
        let mut applied: Vec<AwarenessEntry> = Vec::new();
        for entry in entries {
            let known = self.clocks.get(&entry.client_id).copied();
            let present = self.states.contains_key(&entry.client_id);
            let wins = match known {
                None => true,
                Some(clock) => {
                    clock < entry.clock || (clock == entry.clock && entry.is_removal() && present)
                }
            };
            if !wins {
                continue;
            }
            if entry.is_removal() {
                if !present && known.is_none() {
                    // Removing a client nobody knows: nothing to announce.
                    self.clocks.insert(entry.client_id, entry.clock);
                    continue;
                }
                self.states.remove(&entry.client_id);
                self.disown(entry.client_id);
            } else {
                if self.owner_of.get(&entry.client_id) != Some(&conn) {
                    let owned = self.owners.get(&conn).map_or(0, HashSet::len);
                    if owned >= self.max_per_conn {
                        return Err(AwarenessError::TooManyClients(self.max_per_conn));
                    }
                    self.disown(entry.client_id);
                    self.owners.entry(conn).or_default().insert(entry.client_id);
                    self.owner_of.insert(entry.client_id, conn);
                }
                self.states.insert(entry.client_id, entry.state.clone());
            }
            self.clocks.insert(entry.client_id, entry.clock);
            applied.push(entry);
        }
        if applied.is_empty() {
            return Ok(None);
        }
        Ok(Some(encode_update(
            applied
                .iter()
                .map(|e| (e.client_id, e.clock, e.state.as_str())),
        )))
    }

    fn disown(&mut self, client_id: u64) {
        if let Some(prev) = self.owner_of.remove(&client_id) {
            if let Some(set) = self.owners.get_mut(&prev) {
                set.remove(&client_id);
                if set.is_empty() {
                    self.owners.remove(&prev);
                }
            }
        }
    }

    /// Removes every state `conn` introduced; returns the removal update to broadcast, if any.
    pub fn remove_conn(&mut self, conn: ConnId) -> Option<Bytes> {
        let ids = self.owners.remove(&conn)?;
        let mut removed = Vec::new();
        for id in ids {
            self.owner_of.remove(&id);
            if self.states.remove(&id).is_some() {
                let clock = self.clocks.get(&id).copied().unwrap_or(0) + 1;
                self.clocks.insert(id, clock);
                removed.push((id, clock));
            }
        }
        if removed.is_empty() {
            return None;
        }
        Some(encode_update(
            removed.iter().map(|(id, clock)| (*id, *clock, "null")),
        ))
    }

    /// An update holding every present state, or `None` when there is none.
    pub fn full_update(&self) -> Option<Bytes> {
        if self.states.is_empty() {
            return None;
        }
        Some(encode_update(self.states.iter().map(|(id, state)| {
            (
                *id,
                self.clocks.get(id).copied().unwrap_or(0),
                state.as_str(),
            )
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ripple_proto::awareness::decode_update;

    fn entry(client_id: u64, clock: u64, state: &str) -> AwarenessEntry {
        AwarenessEntry {
            client_id,
            clock,
            state: state.to_owned(),
        }
    }

    #[test]
    fn newer_clock_wins_and_stale_is_ignored() {
        let mut t = AwarenessTable::new(8);
        assert!(t
            .apply(1, vec![entry(10, 2, "{\"a\":1}")])
            .expect("ok")
            .is_some());
        assert!(t
            .apply(2, vec![entry(10, 1, "{\"a\":0}")])
            .expect("ok")
            .is_none());
        assert!(t
            .apply(2, vec![entry(10, 2, "{\"a\":9}")])
            .expect("ok")
            .is_none());
        let full = decode_update(t.full_update().expect("one state")).expect("decodes");
        assert_eq!(full, vec![entry(10, 2, "{\"a\":1}")]);
    }

    #[test]
    fn closing_a_connection_removes_only_its_clients() {
        let mut t = AwarenessTable::new(8);
        t.apply(1, vec![entry(10, 1, "{}"), entry(11, 1, "{}")])
            .expect("ok");
        t.apply(2, vec![entry(20, 5, "{}")]).expect("ok");
        let removal = decode_update(t.remove_conn(1).expect("removal")).expect("decodes");
        let mut ids: Vec<_> = removal.iter().map(|e| (e.client_id, e.clock)).collect();
        ids.sort();
        assert_eq!(ids, vec![(10, 2), (11, 2)]);
        assert!(removal.iter().all(AwarenessEntry::is_removal));
        assert_eq!(t.len(), 1);
        assert!(t.remove_conn(1).is_none());
        // A relayed stale copy cannot resurrect a removed client.
        assert!(t.apply(2, vec![entry(10, 1, "{}")]).expect("ok").is_none());
    }

    #[test]
    fn a_client_removing_itself_is_broadcast_once() {
        let mut t = AwarenessTable::new(8);
        t.apply(1, vec![entry(10, 1, "{}")]).expect("ok");
        assert!(t
            .apply(1, vec![entry(10, 2, "null")])
            .expect("ok")
            .is_some());
        assert!(t.is_empty());
        assert!(t.remove_conn(1).is_none());
    }

    #[test]
    fn ids_per_connection_are_bounded() {
        let mut t = AwarenessTable::new(2);
        t.apply(1, vec![entry(1, 1, "{}"), entry(2, 1, "{}")])
            .expect("ok");
        assert_eq!(
            t.apply(1, vec![entry(3, 1, "{}")]),
            Err(AwarenessError::TooManyClients(2))
        );
    }
}
