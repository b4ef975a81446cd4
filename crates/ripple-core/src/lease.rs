//! Room ownership as a value: a lease with an epoch (fencing token), pure and clocked by the
//! caller.
//!
//! Several nodes may share one database; exactly one of them may write a room at a time. The
//! database keeps, per room, the current owner, its **epoch** and when its lease lapses. A node
//! acquires the lease before it loads the room (taking over a lapsed one bumps the epoch),
//! renews it while it serves the room, and releases it when the room unloads. Every append and
//! every compaction carries the writer's epoch and is refused in the same transaction when the
//! epoch is no longer current ([`crate::StoreError::Fenced`]): a paused or partitioned owner
//! whose lease lapsed can never overwrite its successor, however late it wakes (Kleppmann, "How
//! to do distributed locking": a lock without a fencing token is not enough).
//!
//! Two pieces, both without I/O:
//! - [`LeaseTable`]: the authority's rules (acquire, renew, release, check a write), which the
//!   Postgres store implements in SQL and [`crate::MemoryStore`] runs as is;
//! - [`Holder`]: one node's view of a lease it holds, deciding when to renew and when to stop
//!   serving on its own (self-fencing) because its lease may have lapsed without it hearing so.
//!
//! Times are passed in: the table takes the authority's clock (milliseconds), the holder a
//! monotonic [`Instant`]. Tests drive both with made-up clocks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A fencing token: grows by one each time a room changes hands.
pub type Epoch = u64;

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The epoch every write under this lease carries.
    pub epoch: Epoch,
}

/// Why a lease call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds a live lease on the room.
    #[error("room is owned by node {owner} (epoch {epoch})")]
    Held {
        /// The owner's node id.
        owner: String,
        /// Its epoch.
        epoch: Epoch,
    },
    /// The caller's epoch is no longer current: another node took the room over.
    #[error("fenced: epoch {stale} is stale, the room is at epoch {current}")]
    Fenced {
        /// The epoch the caller presented.
        stale: Epoch,
        /// The current epoch.
        current: Epoch,
    },
}

/// One room's row in the authority.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    owner: String,
    epoch: Epoch,
    expires_ms: i64,
}

/// The authority's lease rules over rooms keyed by `K`, with the authority's own clock passed
/// to each call. The Postgres store runs the same rules in SQL, under the room's lock.
#[derive(Debug)]
pub struct LeaseTable<K> {
    rows: HashMap<K, Row>,
}

impl<K> Default for LeaseTable<K> {
    fn default() -> Self {
        Self {
            rows: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> LeaseTable<K> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            rows: HashMap::new(),
        }
    }

    /// Grants `owner` the lease on `room` for `ttl_ms` from `now_ms`: when nobody holds it, the
    /// holder's lease lapsed, or `owner` holds it already. Each grant is a new epoch, so a
    /// writer from before it is fenced even when it was the same node.
    pub fn acquire(
        &mut self,
        room: &K,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Grant, LeaseError> {
        let epoch = match self.rows.get(room) {
            Some(row) if row.owner != owner && row.expires_ms > now_ms => {
                return Err(LeaseError::Held {
                    owner: row.owner.clone(),
                    epoch: row.epoch,
                })
            }
            Some(row) => row.epoch + 1,
            None => 1,
        };
        self.rows.insert(
            room.clone(),
            Row {
                owner: owner.to_owned(),
                epoch,
                expires_ms: now_ms.saturating_add(ttl_ms),
            },
        );
        Ok(Grant { epoch })
    }

    /// Extends the lease of `epoch` by `ttl_ms` from `now_ms`. Allowed even after it lapsed, as
    /// long as nobody took the room over meanwhile (the epoch is still current).
    pub fn renew(
        &mut self,
        room: &K,
        epoch: Epoch,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<(), LeaseError> {
        let row = self.current(room, epoch)?;
        row.expires_ms = now_ms.saturating_add(ttl_ms);
        Ok(())
    }

    /// Ends the lease of `epoch` now, so another node may take the room at once. The row (and
    /// its epoch) stays: epochs never go back.
    pub fn release(&mut self, room: &K, epoch: Epoch, now_ms: i64) -> Result<(), LeaseError> {
        let row = self.current(room, epoch)?;
        row.expires_ms = now_ms;
        Ok(())
    }

    /// Whether a write under `epoch` may commit: only the current epoch writes. A room nobody
    /// ever leased accepts epoch 0 (single-owner stores and tools).
    pub fn check_write(&self, room: &K, epoch: Epoch) -> Result<(), LeaseError> {
        match self.rows.get(room) {
            None if epoch == 0 => Ok(()),
            None => Err(LeaseError::Fenced {
                stale: epoch,
                current: 0,
            }),
            Some(row) if row.epoch == epoch => Ok(()),
            Some(row) => Err(LeaseError::Fenced {
                stale: epoch,
                current: row.epoch,
            }),
        }
    }

    fn current(&mut self, room: &K, epoch: Epoch) -> Result<&mut Row, LeaseError> {
        match self.rows.get_mut(room) {
            Some(row) if row.epoch == epoch => Ok(row),
            Some(row) => Err(LeaseError::Fenced {
                stale: epoch,
                current: row.epoch,
            }),
            None => Err(LeaseError::Fenced {
                stale: epoch,
                current: 0,
            }),
        }
    }
}

/// Lease timing, the same on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// How long a grant or renewal lasts at the authority.
    pub ttl: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How much earlier than the authority the holder gives up its lease, for clock rate
    /// differences and the time a renewal's answer took to arrive.
    pub margin: Duration,
}

impl Default for LeaseTimes {
    /// A 10 s lease renewed every 2 s, given up 2 s early: a dead owner's rooms move after at
    /// most 10 s, and a holder survives four lost renewals in a row.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            margin: Duration::from_secs(2),
        }
    }
}

/// What a holder should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing until this instant.
    Wait(Instant),
    /// Send a renewal (the holder keeps serving meanwhile).
    Renew,
    /// The lease may have lapsed at the authority: stop serving the room now.
    SelfFence,
}

/// One node's view of a lease it holds, on its monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The epoch this node's writes carry.
    pub epoch: Epoch,
    times: LeaseTimes,
    /// Until when this node may act as the owner: the send time of the last request that the
    /// authority granted, plus the ttl, less the margin. The authority's lease cannot lapse
    /// before this, because the authority started its ttl after we sent the request.
    valid_until: Instant,
    next_renew: Instant,
}

impl Holder {
    /// A lease granted by a request sent at `sent`.
    pub fn granted(grant: &Grant, sent: Instant, times: LeaseTimes) -> Self {
        Self {
            epoch: grant.epoch,
            times,
            valid_until: sent + times.ttl.saturating_sub(times.margin),
            next_renew: sent + times.renew_every,
        }
    }

    /// What to do at `now`.
    pub fn due(&self, now: Instant) -> Due {
        if now >= self.valid_until {
            Due::SelfFence
        } else if now >= self.next_renew {
            Due::Renew
        } else {
            Due::Wait(self.next_renew.min(self.valid_until))
        }
    }

    /// Whether this node may still act as the owner at `now`.
    pub fn is_valid(&self, now: Instant) -> bool {
        now < self.valid_until
    }

    /// A renewal sent at `sent` was granted.
    pub fn renewed(&mut self, sent: Instant) {
        self.valid_until = self
            .valid_until
            .max(sent + self.times.ttl.saturating_sub(self.times.margin));
        self.next_renew = sent + self.times.renew_every;
    }

    /// A renewal failed without an answer (the authority is unreachable): try again soon; the
    /// lease stays valid until it may have lapsed.
    pub fn renewal_failed(&mut self, now: Instant) {
        let retry = (self.times.renew_every / 4).max(Duration::from_millis(50));
        self.next_renew = now + retry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 10_000;

    #[test]
    fn acquire_renew_expire_steal_and_a_stale_write() {
        let mut t = LeaseTable::new();
        let room = "main/doc";
        let a = t.acquire(&room, "node-a", TTL, 0).expect("free room");
        assert_eq!(a.epoch, 1);
        // A live lease is not stolen.
        assert_eq!(
            t.acquire(&room, "node-b", TTL, 5_000),
            Err(LeaseError::Held {
                owner: "node-a".into(),
                epoch: 1
            })
        );
        // Renewed at 8 s: still held at 15 s.
        t.renew(&room, 1, TTL, 8_000).expect("renew");
        assert!(t.acquire(&room, "node-b", TTL, 15_000).is_err());
        t.check_write(&room, 1).expect("the owner writes");
        // Lapsed at 18 s: node b takes over with a new epoch.
        let b = t
            .acquire(&room, "node-b", TTL, 18_001)
            .expect("lapsed lease");
        assert_eq!(b.epoch, 2);
        // Node a wakes up late: its write, its renewal and its release are all fenced.
        let fenced = Err(LeaseError::Fenced {
            stale: 1,
            current: 2,
        });
        assert_eq!(t.check_write(&room, 1), fenced);
        assert_eq!(t.renew(&room, 1, TTL, 18_002), fenced);
        assert_eq!(t.release(&room, 1, 18_003), fenced);
        t.check_write(&room, 2).expect("the new owner writes");
    }

    #[test]
    fn release_hands_over_at_once_and_epochs_never_go_back() {
        let mut t = LeaseTable::new();
        let room = 7u32;
        let a = t.acquire(&room, "a", TTL, 0).expect("free");
        t.release(&room, a.epoch, 100).expect("release");
        let b = t.acquire(&room, "b", TTL, 100).expect("released room");
        assert_eq!(b.epoch, a.epoch + 1);
        // The same node taking a room again gets a new epoch too.
        let b2 = t.acquire(&room, "b", TTL, 200).expect("own lease");
        assert_eq!(b2.epoch, b.epoch + 1);
        assert!(t.check_write(&room, b.epoch).is_err());
        // A lapsed lease may still be renewed while nobody took over.
        t.renew(&room, b2.epoch, TTL, 1_000_000)
            .expect("renew after lapse");
    }

    #[test]
    fn unleased_rooms_accept_only_epoch_zero() {
        let t: LeaseTable<&str> = LeaseTable::new();
        t.check_write(&"r", 0).expect("single-owner writes");
        assert!(t.check_write(&"r", 3).is_err());
    }

    #[test]
    fn a_holder_renews_on_schedule_and_fences_itself_before_the_authority_could_lapse() {
        let times = LeaseTimes {
            ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            margin: Duration::from_secs(2),
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = Holder::granted(&Grant { epoch: 4 }, t0, times);
        assert_eq!(h.due(t0), Due::Wait(t0 + s(2)));
        assert_eq!(h.due(t0 + s(2)), Due::Renew);
        h.renewed(t0 + s(2));
        assert_eq!(h.due(t0 + s(3)), Due::Wait(t0 + s(4)));
        // The authority becomes unreachable from 4 s on: retries, still valid until 2+8 s.
        h.renewal_failed(t0 + s(4));
        assert_eq!(
            h.due(t0 + s(4)),
            Due::Wait(t0 + s(4) + Duration::from_millis(500))
        );
        for i in 0..10 {
            let now = t0 + s(4) + Duration::from_millis(500 * (i + 1));
            if now < t0 + s(10) {
                assert_eq!(h.due(now), Due::Renew, "{i}");
                h.renewal_failed(now);
            }
        }
        assert!(h.is_valid(t0 + s(10) - Duration::from_millis(1)));
        assert_eq!(h.due(t0 + s(10)), Due::SelfFence);
        assert!(!h.is_valid(t0 + s(10)));
        // The authority's lease (renewed at 2 s for 10 s) lapses at 12 s: the holder stopped
        // 2 s before any other node could take over.
    }

    #[test]
    fn a_late_renewal_answer_does_not_extend_past_its_send_time() {
        let times = LeaseTimes::default();
        let t0 = Instant::now();
        let mut h = Holder::granted(&Grant { epoch: 1 }, t0, times);
        // Sent at 2 s, answered at 7 s: valid until 2 + 10 - 2 = 10 s, not 15.
        h.renewed(t0 + Duration::from_secs(2));
        assert!(h.is_valid(t0 + Duration::from_secs(9)));
        assert!(!h.is_valid(t0 + Duration::from_secs(10)));
    }
}
