//! Process-wide counters, exported at `/metrics` in the Prometheus text format. Plain atomics:
//! no lock is shared between connections or rooms.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters and gauges of one server.
#[derive(Debug, Default)]
pub struct Stats {
    /// Rooms loaded since start (each load reads storage once).
    pub rooms_loaded: AtomicU64,
    /// Rooms in memory now.
    pub rooms_active: AtomicU64,
    /// Room loads that failed (corrupt data, storage down).
    pub room_load_failures: AtomicU64,
    /// Open WebSocket connections now.
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
    /// 1 while the last append failed (storage down or full), 0 once one succeeds again.
    pub storage_failing: AtomicU64,
}

/// Increments a counter.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Decrements a gauge.
pub(crate) fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Relaxed);
}

impl Stats {
    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 17] = [
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
            ("ripple_storage_failing", "gauge", &self.storage_failing),
        ];
        let mut out = String::new();
        for (name, kind, value) in rows {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {}", value.load(Relaxed));
        }
        out
    }
}
