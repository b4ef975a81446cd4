//! The room's awareness table: the latest state per Yjs client id, and which connection
//! introduced each id, so a connection's ids can be removed (and the removal announced) when it
//! goes away, cleanly or not.
//!
//! Ownership: a connection may only change or remove the states of client ids it introduced, or
//! of ids no live connection holds. Taking over an id another live connection introduced is
//! allowed only when both connections belong to the same authenticated user (with auth off every
//! user is `None`, so takeover stays allowed: that is how a y-websocket client that reconnects
//! with the same client id replaces its own half-open socket before the server reaps it).
//! Entries that break this rule are dropped: not applied, not broadcast.
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

/// The client ids one connection introduced, and the user it authenticated as.
#[derive(Debug, Default)]
struct Owner {
    user: Option<Box<str>>,
    ids: HashSet<u64>,
}

/// Latest awareness states of a room.
#[derive(Debug, Default)]
pub struct AwarenessTable {
    /// Known clock per client id, kept after removal.
    clocks: HashMap<u64, u64>,
    /// Present states (JSON text) per client id.
    states: HashMap<u64, String>,
    /// Which connection introduced which client ids, and as which user.
    owners: HashMap<ConnId, Owner>,
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

    /// Clocks kept for clients that are gone, at most; past it they are forgotten (a stale relay
    /// of such a client could then reappear until its owner's next update, a harmless glitch).
    const MAX_TOMBSTONES: usize = 10_000;

    fn prune_tombstones(&mut self) {
        if self.clocks.len() > self.states.len() + Self::MAX_TOMBSTONES {
            let states = &self.states;
            self.clocks.retain(|id, _| states.contains_key(id));
        }
    }

    /// Client ids whose clock is remembered (present states plus recent removals).
    pub fn tracked(&self) -> usize {
        self.clocks.len()
    }

    /// Number of present states.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no state is present.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Applies entries sent by `conn`, authenticated as `user`; returns the encoded update of
    /// the entries that took effect (to broadcast to everyone, the sender included), or `None`
    /// if none did. Entries for client ids owned by another live connection of a different
    /// user are dropped (see the module docs).
    pub fn apply(
        &mut self,
        conn: ConnId,
        user: Option<&str>,
        entries: Vec<AwarenessEntry>,
    ) -> Result<Option<Bytes>, AwarenessError> {
        let mut applied: Vec<AwarenessEntry> = Vec::new();
        for entry in entries {
            if !self.may_change(conn, user, entry.client_id) {
                continue;
            }
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
                    // Removing a client nobody knows: nothing to announce, nothing to remember
                    // (remembering would let a client grow the table with made-up ids).
                    continue;
                }
                self.states.remove(&entry.client_id);
                self.disown(entry.client_id);
            } else {
                if self.owner_of.get(&entry.client_id) != Some(&conn) {
                    let owned = self.owners.get(&conn).map_or(0, |o| o.ids.len());
                    if owned >= self.max_per_conn {
                        return Err(AwarenessError::TooManyClients(self.max_per_conn));
                    }
                    self.disown(entry.client_id);
                    self.owners
                        .entry(conn)
                        .or_insert_with(|| Owner {
                            user: user.map(Into::into),
                            ids: HashSet::new(),
                        })
                        .ids
                        .insert(entry.client_id);
                    self.owner_of.insert(entry.client_id, conn);
                }
                self.states.insert(entry.client_id, entry.state.clone());
            }
            self.clocks.insert(entry.client_id, entry.clock);
            applied.push(entry);
        }
        self.prune_tombstones();
        if applied.is_empty() {
            return Ok(None);
        }
        Ok(Some(encode_update(
            applied
                .iter()
                .map(|e| (e.client_id, e.clock, e.state.as_str())),
        )))
    }

    /// Whether `conn`, authenticated as `user`, may change the state of `client_id`: it owns
    /// the id, nobody does, or the owner is a connection of the same user.
    fn may_change(&self, conn: ConnId, user: Option<&str>, client_id: u64) -> bool {
        match self.owner_of.get(&client_id) {
            None => true,
            Some(&owner) if owner == conn => true,
            Some(owner) => self
                .owners
                .get(owner)
                .is_none_or(|o| o.user.as_deref() == user),
        }
    }

    fn disown(&mut self, client_id: u64) {
        if let Some(prev) = self.owner_of.remove(&client_id) {
            if let Some(owner) = self.owners.get_mut(&prev) {
                owner.ids.remove(&client_id);
                if owner.ids.is_empty() {
                    self.owners.remove(&prev);
                }
            }
        }
    }

    /// Removes every state `conn` introduced; returns the removal update to broadcast, if any.
    pub fn remove_conn(&mut self, conn: ConnId) -> Option<Bytes> {
        let ids = self.owners.remove(&conn)?.ids;
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

    /// Every present state: client id, clock, state (JSON text).
    pub fn states(&self) -> Vec<(u64, u64, String)> {
        self.states
            .iter()
            .map(|(id, state)| {
                let clock = self.clocks.get(id).copied().unwrap_or(0);
                (*id, clock, state.to_string())
            })
            .collect()
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
            .apply(1, None, vec![entry(10, 2, "{\"a\":1}")])
            .expect("ok")
            .is_some());
        assert!(t
            .apply(2, None, vec![entry(10, 1, "{\"a\":0}")])
            .expect("ok")
            .is_none());
        assert!(t
            .apply(2, None, vec![entry(10, 2, "{\"a\":9}")])
            .expect("ok")
            .is_none());
        let full = decode_update(t.full_update().expect("one state")).expect("decodes");
        assert_eq!(full, vec![entry(10, 2, "{\"a\":1}")]);
    }

    #[test]
    fn closing_a_connection_removes_only_its_clients() {
        let mut t = AwarenessTable::new(8);
        t.apply(1, None, vec![entry(10, 1, "{}"), entry(11, 1, "{}")])
            .expect("ok");
        t.apply(2, None, vec![entry(20, 5, "{}")]).expect("ok");
        let removal = decode_update(t.remove_conn(1).expect("removal")).expect("decodes");
        let mut ids: Vec<_> = removal.iter().map(|e| (e.client_id, e.clock)).collect();
        ids.sort();
        assert_eq!(ids, vec![(10, 2), (11, 2)]);
        assert!(removal.iter().all(AwarenessEntry::is_removal));
        assert_eq!(t.len(), 1);
        assert!(t.remove_conn(1).is_none());
        // A relayed stale copy cannot resurrect a removed client.
        assert!(t
            .apply(2, None, vec![entry(10, 1, "{}")])
            .expect("ok")
            .is_none());
    }

    #[test]
    fn a_client_removing_itself_is_broadcast_once() {
        let mut t = AwarenessTable::new(8);
        t.apply(1, None, vec![entry(10, 1, "{}")]).expect("ok");
        assert!(t
            .apply(1, None, vec![entry(10, 2, "null")])
            .expect("ok")
            .is_some());
        assert!(t.is_empty());
        assert!(t.remove_conn(1).is_none());
    }

    fn states(t: &AwarenessTable) -> Vec<AwarenessEntry> {
        t.full_update()
            .map(|u| decode_update(u).expect("decodes"))
            .unwrap_or_default()
    }

    #[test]
    fn another_users_connection_cannot_overwrite_or_remove_a_clients_state() {
        let mut t = AwarenessTable::new(8);
        t.apply(1, Some("alice"), vec![entry(10, 1, "{\"n\":\"alice\"}")])
            .expect("ok");
        // Bob forges a newer state, then a removal, for Alice's client id: both dropped.
        let forged = t
            .apply(2, Some("bob"), vec![entry(10, 5, "{\"n\":\"evil\"}")])
            .expect("ok");
        assert!(forged.is_none(), "a forged state is not broadcast");
        assert!(t
            .apply(2, Some("bob"), vec![entry(10, 6, "null")])
            .expect("ok")
            .is_none());
        // An anonymous connection cannot either.
        assert!(t
            .apply(3, None, vec![entry(10, 7, "{}")])
            .expect("ok")
            .is_none());
        assert_eq!(states(&t), vec![entry(10, 1, "{\"n\":\"alice\"}")]);
        // Bob's own entries in the same update still apply.
        let mixed = t
            .apply(2, Some("bob"), vec![entry(10, 8, "{}"), entry(20, 1, "{}")])
            .expect("ok")
            .map(|u| decode_update(u).expect("decodes"));
        assert_eq!(mixed, Some(vec![entry(20, 1, "{}")]));
        // Bob leaving does not touch Alice's state; Alice's own newer clock still wins.
        t.remove_conn(2);
        assert!(t
            .apply(1, Some("alice"), vec![entry(10, 2, "{}")])
            .expect("ok")
            .is_some());
    }

    #[test]
    fn the_same_user_may_take_over_a_client_id_from_another_connection() {
        let mut t = AwarenessTable::new(8);
        t.apply(1, Some("alice"), vec![entry(10, 1, "{\"tab\":1}")])
            .expect("ok");
        // Alice reconnects with the same client id before her old socket is reaped.
        assert!(t
            .apply(2, Some("alice"), vec![entry(10, 2, "{\"tab\":2}")])
            .expect("ok")
            .is_some());
        // The id now belongs to the new connection: closing the old one removes nothing.
        assert!(t.remove_conn(1).is_none());
        assert_eq!(states(&t), vec![entry(10, 2, "{\"tab\":2}")]);
        assert!(t.remove_conn(2).is_some());
    }

    #[test]
    fn without_auth_every_connection_may_take_over() {
        let mut t = AwarenessTable::new(8);
        t.apply(1, None, vec![entry(10, 1, "{}")]).expect("ok");
        assert!(t
            .apply(2, None, vec![entry(10, 2, "{\"new\":1}")])
            .expect("ok")
            .is_some());
        assert!(t.remove_conn(1).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn an_id_whose_owner_left_may_be_claimed_by_anyone_with_a_newer_clock() {
        let mut t = AwarenessTable::new(8);
        t.apply(1, Some("alice"), vec![entry(10, 1, "{}")])
            .expect("ok");
        assert!(t.remove_conn(1).is_some());
        assert!(t
            .apply(2, Some("bob"), vec![entry(10, 3, "{}")])
            .expect("ok")
            .is_some());
        assert_eq!(states(&t), vec![entry(10, 3, "{}")]);
    }

    #[test]
    fn ids_per_connection_are_bounded() {
        let mut t = AwarenessTable::new(2);
        t.apply(1, None, vec![entry(1, 1, "{}"), entry(2, 1, "{}")])
            .expect("ok");
        assert_eq!(
            t.apply(1, None, vec![entry(3, 1, "{}")]),
            Err(AwarenessError::TooManyClients(2))
        );
    }

    #[test]
    fn made_up_removals_and_churn_cannot_grow_the_table_without_bound() {
        let mut t = AwarenessTable::new(4);
        // Removals of ids nobody introduced leave nothing behind.
        let removals = (0..50_000).map(|id| entry(id, 1, "null")).collect();
        assert!(t.apply(1, None, removals).expect("ok").is_none());
        assert_eq!(t.tracked(), 0);
        // Introduce-and-remove churn keeps at most MAX_TOMBSTONES clocks of gone clients.
        for id in 0..30_000u64 {
            t.apply(1, None, vec![entry(id, 1, "{}")]).expect("ok");
            t.apply(1, None, vec![entry(id, 2, "null")]).expect("ok");
        }
        assert!(
            t.tracked() <= AwarenessTable::MAX_TOMBSTONES + 1,
            "{}",
            t.tracked()
        );
        assert_eq!(t.len(), 0);
    }
}
