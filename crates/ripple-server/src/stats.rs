//! Process-wide counters, exported at `/metrics` in the Prometheus text format. Plain atomics:
//! no lock is shared between connections or rooms.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::peer::now_ms;
use crate::quota::Limit;

/// Counters and gauges of one server.
#[derive(Debug, Default)]
pub struct Stats {
    /// Rooms loaded since start (each load reads storage once).
    pub rooms_loaded: AtomicU64,
    /// Rooms in memory now.
    pub rooms_active: AtomicU64,
    /// Room loads that failed (corrupt data, storage down).
    pub room_load_failures: AtomicU64,
    /// Open WebSocket connections now, counting upgrades in progress (a place under
    /// `max_connections` is reserved before auth and released when the connection ends).
    pub connections_active: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections closed for a protocol error.
    pub protocol_errors: AtomicU64,
    /// Connections closed because their outbound queue was full.
    pub slow_consumer_closes: AtomicU64,
    /// Document updates that changed a room (and were persisted).
    pub updates_applied: AtomicU64,
    /// Frames queued to connections.
    pub frames_sent: AtomicU64,
    /// Appends that failed (storage unavailable).
    pub store_failures: AtomicU64,
    /// Compactions completed.
    pub compactions: AtomicU64,
    /// Updates refused because the document would pass `max_doc_bytes`.
    pub doc_limit_refusals: AtomicU64,
    /// Documents rebuilt from storage after the CRDT library panicked on a client's update.
    pub room_rebuilds: AtomicU64,
    /// Room leases renewed.
    pub lease_renewals: AtomicU64,
    /// Rooms this node stopped serving because it lost their lease (fenced by a newer owner,
    /// or unable to renew in time).
    pub lease_losses: AtomicU64,
    /// Rooms not served here because another node owns them (joins refused with 1013).
    pub owned_elsewhere: AtomicU64,
    /// Rooms this node owns now (holds the lease of).
    pub rooms_owned: AtomicU64,
    /// Lease renewals that failed or timed out (the room is kept until self-fencing).
    pub lease_renewal_failures: AtomicU64,
    /// Rooms this node took over from a dead owner (its address refused connections, so its
    /// leases were ended instead of waited out).
    pub failovers: AtomicU64,
    /// The last round-trip time measured on a link to another node (ping to pong), in µs.
    pub link_rtt_us: AtomicU64,
    /// Cluster links this node opened to other nodes, and accepted from them.
    pub links_opened: AtomicU64,
    pub links_accepted: AtomicU64,
    /// Links to a room's owner that broke while carrying clients.
    pub link_failures: AtomicU64,
    /// Clients forwarded to another node's room, and the messages forwarded for them.
    pub forwarded_joins: AtomicU64,
    pub forwarded_frames: AtomicU64,
    /// Connections closed for going over a quota, per `quota::Limit` (in `Limit::ALL` order).
    pub rate_limit_closes: [AtomicU64; 4],
    /// Upgrades refused with 429 because the client address failed auth too often.
    pub auth_throttled: AtomicU64,
    /// Upgrades refused with 403 because their `Origin` is not in `allowed_origins`.
    pub origin_refused: AtomicU64,
    /// Change webhook deliveries answered 2xx.
    pub hook_change_delivered: AtomicU64,
    /// Change webhook attempts that failed (non-2xx, timeout, unreachable) and were retried.
    pub hook_change_retries: AtomicU64,
    /// Change webhook deliveries given up after `change_max_attempts` or `change_max_age`.
    pub hook_change_dropped: AtomicU64,
    /// Load hook calls that failed (the room was not loaded; its joiners got 1013).
    pub hook_load_failures: AtomicU64,
    /// When an append last failed, as `now_ms() + 1` (0: never). `/readyz` answers 503 while
    /// that is less than `storage_unready_secs` ago; see [`Stats::storage_failing`].
    pub last_store_failure_ms: AtomicU64,
}

/// Increments a counter.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Decrements a gauge.
pub(crate) fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Relaxed);
}

/// One place under `max_connections`, reserved before the upgrade is answered and held by the
/// connection until it ends; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct ConnSlot(Arc<Stats>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        dec(&self.0.connections_active);
    }
}

/// Reserves a connection place: increment first, then check, so a burst of upgrades can never
/// pass the check together (checking before incrementing let every request of a burst through).
/// `None` (and the increment undone) when `max` places are taken.
pub(crate) fn reserve_connection(stats: &Arc<Stats>, max: u64) -> Option<ConnSlot> {
    let before = stats.connections_active.fetch_add(1, Relaxed);
    if before >= max {
        dec(&stats.connections_active);
        return None;
    }
    Some(ConnSlot(stats.clone()))
}

impl Stats {
    /// Records a failed write to storage: an append (any room), or a lease taken or renewed
    /// (a node that cannot lease rooms cannot own them).
    pub(crate) fn append_failed(&self) {
        self.last_store_failure_ms.store(now_ms() + 1, Relaxed);
    }

    /// Whether an append failed in the last `window`. A success in another room does not clear
    /// it (one room's storage can fail while another's works, e.g. a full tablespace or a
    /// quarantined file); it clears only once `window` passes without any failure, so a server
    /// whose storage keeps failing stays unready as long as its clients keep trying to write,
    /// and one that got no traffic to prove it healthy again does not stay unready forever.
    pub fn storage_failing(&self, window: Duration) -> bool {
        match self.last_store_failure_ms.load(Relaxed) {
            0 => false,
            at => now_ms().saturating_sub(at - 1) < window.as_millis() as u64,
        }
    }

    /// The Prometheus text exposition of every counter; `storage_window` is
    /// `storage_unready_secs` (for the `ripple_storage_failing` gauge).
    pub fn render(&self, storage_window: Duration) -> String {
        let storage_failing = AtomicU64::new(self.storage_failing(storage_window).into());
        let rows: [(&str, &str, &AtomicU64); 32] = [
            ("ripple_rooms_loaded_total", "counter", &self.rooms_loaded),
            ("ripple_rooms_active", "gauge", &self.rooms_active),
            (
                "ripple_room_load_failures_total",
                "counter",
                &self.room_load_failures,
            ),
            (
                "ripple_connections_active",
                "gauge",
                &self.connections_active,
            ),
            (
                "ripple_connections_total",
                "counter",
                &self.connections_total,
            ),
            (
                "ripple_protocol_errors_total",
                "counter",
                &self.protocol_errors,
            ),
            (
                "ripple_slow_consumer_closes_total",
                "counter",
                &self.slow_consumer_closes,
            ),
            (
                "ripple_updates_applied_total",
                "counter",
                &self.updates_applied,
            ),
            ("ripple_frames_sent_total", "counter", &self.frames_sent),
            (
                "ripple_store_failures_total",
                "counter",
                &self.store_failures,
            ),
            ("ripple_compactions_total", "counter", &self.compactions),
            (
                "ripple_doc_limit_refusals_total",
                "counter",
                &self.doc_limit_refusals,
            ),
            ("ripple_room_rebuilds_total", "counter", &self.room_rebuilds),
            (
                "ripple_lease_renewals_total",
                "counter",
                &self.lease_renewals,
            ),
            ("ripple_lease_losses_total", "counter", &self.lease_losses),
            (
                "ripple_rooms_owned_elsewhere_total",
                "counter",
                &self.owned_elsewhere,
            ),
            ("ripple_rooms_owned", "gauge", &self.rooms_owned),
            (
                "ripple_lease_renewal_failures_total",
                "counter",
                &self.lease_renewal_failures,
            ),
            ("ripple_failovers_total", "counter", &self.failovers),
            ("ripple_link_rtt_microseconds", "gauge", &self.link_rtt_us),
            ("ripple_links_opened_total", "counter", &self.links_opened),
            (
                "ripple_links_accepted_total",
                "counter",
                &self.links_accepted,
            ),
            ("ripple_link_failures_total", "counter", &self.link_failures),
            (
                "ripple_forwarded_joins_total",
                "counter",
                &self.forwarded_joins,
            ),
            (
                "ripple_forwarded_frames_total",
                "counter",
                &self.forwarded_frames,
            ),
            ("ripple_storage_failing", "gauge", &storage_failing),
            (
                "ripple_auth_throttled_total",
                "counter",
                &self.auth_throttled,
            ),
            (
                "ripple_origin_refused_total",
                "counter",
                &self.origin_refused,
            ),
            (
                "ripple_hook_change_delivered_total",
                "counter",
                &self.hook_change_delivered,
            ),
            (
                "ripple_hook_change_retries_total",
                "counter",
                &self.hook_change_retries,
            ),
            (
                "ripple_hook_change_dropped_total",
                "counter",
                &self.hook_change_dropped,
            ),
            (
                "ripple_hook_load_failures_total",
                "counter",
                &self.hook_load_failures,
            ),
        ];
        let mut out = String::new();
        for (name, kind, value) in rows {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {}", value.load(Relaxed));
        }
        let _ = writeln!(out, "# TYPE ripple_rate_limit_closes_total counter");
        for (limit, value) in Limit::ALL.iter().zip(&self.rate_limit_closes) {
            let _ = writeln!(
                out,
                "ripple_rate_limit_closes_total{{limit=\"{}\"}} {}",
                limit.label(),
                value.load(Relaxed)
            );
        }
        out
    }
}
