//! The storage seam: what a room actor needs from durable storage.
//!
//! A room's stored state is an optional snapshot (one Yjs update that encodes everything up to
//! some point) followed by a log of updates appended after it, each with a sequence number that
//! grows per room. Loading applies the snapshot and then the log. Compaction replaces the
//! snapshot and the log entries it covers in one atomic step.
//!
//! Implementations live in `ripple-store` (SQLite, Postgres); [`MemoryStore`] here serves tests
//! and the `none` persistence mode.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use std::time::Duration;

use bytes::Bytes;

use crate::lease::{Epoch, Grant, LeaseError, LeaseTable};
use crate::room_id::RoomKey;

/// How hard a durable backend works before it acknowledges an append. Either way an append is
/// acknowledged only after its transaction committed, and nothing is broadcast before that; the
/// difference is what survives a power loss or OS crash (a process crash loses nothing in either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge after commit *and* fsync (SQLite `synchronous=FULL`; Postgres
    /// `synchronous_commit=on`). Nothing acknowledged is ever lost.
    #[default]
    Strict,
    /// Acknowledge after commit and let the OS flush later (SQLite WAL with
    /// `synchronous=NORMAL`; Postgres `synchronous_commit=off`). A power loss may lose the last
    /// moments of acknowledged writes, but never corrupts the database.
    Relaxed,
}

/// A boxed, sendable future, so that `Store` stays object-safe (`Arc<dyn Store>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything stored for one room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredRoom {
    /// A Yjs v1 update holding the state up to and including `snapshot_seq`.
    pub snapshot: Option<Bytes>,
    /// The sequence number the snapshot covers (0 when there is no snapshot).
    pub snapshot_seq: u64,
    /// Updates appended after the snapshot, in order, as `(seq, yjs v1 update)`.
    pub updates: Vec<(u64, Bytes)>,
}

impl StoredRoom {
    /// True when nothing at all is stored for the room.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.updates.is_empty()
    }

    /// The highest sequence number stored (snapshot or log).
    pub fn last_seq(&self) -> u64 {
        self.updates
            .last()
            .map_or(self.snapshot_seq, |(seq, _)| *seq)
    }
}

/// A summary line for `ripple rooms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room.
    pub key: RoomKey,
    /// Bytes stored (snapshot plus log).
    pub stored_bytes: u64,
    /// Number of log entries after the snapshot.
    pub update_count: u64,
    /// Unix milliseconds of the last write.
    pub last_change_ms: i64,
}

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or refused the operation (disk full, database down).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed its checksum or could not be decoded. Nothing was overwritten.
    #[error("stored data for room {room} is corrupt: {detail}")]
    Corrupt {
        /// The room whose data is corrupt.
        room: String,
        /// What was found.
        detail: String,
    },
    /// A compaction raced with appends it did not see (the caller retries later).
    #[error("compaction conflict: {0}")]
    Conflict(String),
    /// The room is owned by another node ([`LeaseError::Held`]), or the caller's epoch is no
    /// longer current ([`LeaseError::Fenced`]): nothing was written.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Durable storage for rooms. All methods are cancel-safe in the sense that a dropped future
/// either committed fully or not at all.
pub trait Store: Send + Sync + 'static {
    /// Loads everything stored for `room` (an empty [`StoredRoom`] when it has never been written).
    fn load<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<StoredRoom, StoreError>>;

    /// Appends updates to the room's log and returns once they are durable (committed and synced
    /// according to the backend's durability setting). Returns the sequence number of the last
    /// appended update. Implementations group commits across rooms.
    ///
    /// `epoch` is the writer's lease ([`Store::acquire`]); the store refuses the append with
    /// [`LeaseError::Fenced`], in the same transaction, unless it is the room's current epoch.
    /// Epoch 0 writes a room that was never leased (tools, single-owner stores).
    fn append<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        updates: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Atomically stores `snapshot` as the state through `through_seq` and removes the log
    /// entries with `seq <= through_seq`. Entries after `through_seq` are kept. Fenced by
    /// `epoch` like [`Store::append`].
    fn compact<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        snapshot: Bytes,
        through_seq: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes everything stored for the room (snapshot and log), fenced by `epoch` like
    /// [`Store::append`]. A later append starts the room again from sequence number 1.
    fn delete<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether other processes may write this store, so that rooms must be leased
    /// ([`Store::acquire`]) before they are written. Stores only one process opens (SQLite
    /// locks its directory, memory is private) answer false, and their writers use epoch 0
    /// without taking or renewing leases.
    fn shared(&self) -> bool {
        false
    }

    /// Makes `owner` the room's only writer for `ttl` (see [`crate::lease`]): granted when the
    /// room is free, its lease lapsed, or `owner` holds it already; each grant is a new epoch.
    /// [`LeaseError::Held`] names the node that owns it. Stores that only one process can open
    /// (SQLite, which locks its directory; memory) grant epoch 0 and need no renewals.
    fn acquire<'a>(
        &'a self,
        room: &'a RoomKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Grant, StoreError>> {
        let _ = (room, owner, ttl);
        Box::pin(async { Ok(Grant { epoch: 0 }) })
    }

    /// Extends the lease of `epoch` by `ttl`; [`LeaseError::Fenced`] if another node took the
    /// room over.
    fn renew<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (room, epoch, ttl);
        Box::pin(async { Ok(()) })
    }

    /// Ends the lease of `epoch` now, so another node may take the room at once.
    fn release<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (room, epoch);
        Box::pin(async { Ok(()) })
    }

    /// Ends every lease `node` holds now, because another node has evidence that it is dead
    /// (its address refuses connections): its rooms can be taken over at once instead of when
    /// the leases lapse. Safe even if the evidence is wrong: a taken-over room gets a new epoch,
    /// so a live former owner's next write is fenced (it then closes its clients). Returns how
    /// many leases ended.
    fn release_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let _ = node;
        Box::pin(async { Ok(0) })
    }

    /// Records where node `node` can be reached by the other nodes sharing this store
    /// (`advertise_url`), so that a node that does not own a room can forward its clients to
    /// the owner. Stores that only one process opens have no other nodes: a no-op.
    fn advertise<'a>(
        &'a self,
        node: &'a str,
        url: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (node, url);
        Box::pin(async { Ok(()) })
    }

    /// Where node `node` said it can be reached ([`Store::advertise`]), if it did.
    fn node_url<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let _ = node;
        Box::pin(async { Ok(None) })
    }

    /// Lists stored rooms.
    fn list(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, StoreError>>;

    /// One stored room's summary, `None` when nothing is stored for it (the HTTP API answers
    /// 404 from this without loading the room). The default scans [`Store::list`]; backends
    /// answer from an index.
    fn info<'a>(
        &'a self,
        room: &'a RoomKey,
    ) -> BoxFuture<'a, Result<Option<RoomInfo>, StoreError>> {
        Box::pin(async move { Ok(self.list().await?.into_iter().find(|i| &i.key == room)) })
    }
}

/// An in-memory store: nothing survives the process. Used by tests and by `persist = "none"`.
/// It keeps real leases ([`LeaseTable`]) for callers that take them, though it is not
/// [`Store::shared`], so a server never does.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rooms: Mutex<BTreeMap<RoomKey, StoredRoom>>,
    leases: Mutex<LeaseTable<RoomKey>>,
}

/// Milliseconds on this process's monotonic clock: the memory store's authority clock.
fn monotonic_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_rooms<T>(&self, f: impl FnOnce(&mut BTreeMap<RoomKey, StoredRoom>) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-call; the map itself is always
        // left consistent by the short critical sections below.
        let mut guard = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn with_leases<T>(&self, f: impl FnOnce(&mut LeaseTable<RoomKey>) -> T) -> T {
        // As above. Lock order: leases, then rooms (a fenced write checks under both).
        let mut guard = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<StoredRoom, StoreError>> {
        let stored = self.with_rooms(|rooms| rooms.get(room).cloned().unwrap_or_default());
        Box::pin(async move { Ok(stored) })
    }

    fn append<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        updates: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let result = self.with_leases(|leases| {
            leases.check_write(room, epoch)?;
            Ok(self.with_rooms(|rooms| {
                let entry = rooms.entry(room.clone()).or_default();
                let mut seq = entry.last_seq();
                for update in updates {
                    seq += 1;
                    entry.updates.push((seq, update));
                }
                seq
            }))
        });
        Box::pin(async move { result })
    }

    fn compact<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        snapshot: Bytes,
        through_seq: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.with_leases(|leases| {
            leases.check_write(room, epoch)?;
            self.with_rooms(|rooms| {
                let entry = rooms.entry(room.clone()).or_default();
                entry.updates.retain(|(seq, _)| *seq > through_seq);
                entry.snapshot = Some(snapshot);
                entry.snapshot_seq = through_seq;
            });
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn delete<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.with_leases(|leases| {
            leases.check_write(room, epoch)?;
            self.with_rooms(|rooms| rooms.remove(room));
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn acquire<'a>(
        &'a self,
        room: &'a RoomKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Grant, StoreError>> {
        let result = self
            .with_leases(|l| l.acquire(room, owner, ttl_ms(ttl), monotonic_ms()))
            .map_err(StoreError::from);
        Box::pin(async move { result })
    }

    fn renew<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self
            .with_leases(|l| l.renew(room, epoch, ttl_ms(ttl), monotonic_ms()))
            .map_err(StoreError::from);
        Box::pin(async move { result })
    }

    fn release<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self
            .with_leases(|l| l.release(room, epoch, monotonic_ms()))
            .map_err(StoreError::from);
        Box::pin(async move { result })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, StoreError>> {
        let infos = self.with_rooms(|rooms| {
            rooms
                .iter()
                .map(|(key, stored)| RoomInfo {
                    key: key.clone(),
                    stored_bytes: stored.snapshot.as_ref().map_or(0, |s| s.len() as u64)
                        + stored
                            .updates
                            .iter()
                            .map(|(_, u)| u.len() as u64)
                            .sum::<u64>(),
                    update_count: stored.updates.len() as u64,
                    last_change_ms: 0,
                })
                .collect()
        });
        Box::pin(async move { Ok(infos) })
    }
}
