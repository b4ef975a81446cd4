//! Per-connection quotas: token buckets for document messages, document bytes and awareness
//! messages, and a cap on the size of one awareness state. The connection task checks them as
//! it decodes, before a message reaches the room, so a flooding client costs its room nothing.
//!
//! Outcome of going over any of them: the connection is closed with 1008 (policy violation)
//! and a reason naming the limit, and `ripple_rate_limit_closes_total{limit=...}` counts it. The
//! messages of the same read that came before the offending one are delivered; the offending
//! one and what follows are not, and since the client is closed it learns that: y-websocket
//! and y-partykit reconnect and resync (sync step 2 carries every local edit the server lacks),
//! so nothing is silently dropped.

use ripple_proto::{Message, SyncMessage};

use crate::config::Config;

/// Which quota a connection went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Document messages (sync step 1, step 2, update) per second.
    DocMessages,
    /// Bytes of document updates (step 2 and update payloads) per second.
    DocBytes,
    /// Awareness messages (updates and queries) per second.
    Awareness,
    /// One awareness state larger than `max_awareness_state_bytes`.
    AwarenessState,
}

impl Limit {
    /// Every limit, in the order `/metrics` lists them.
    pub(crate) const ALL: [Limit; 4] = [
        Limit::DocMessages,
        Limit::DocBytes,
        Limit::Awareness,
        Limit::AwarenessState,
    ];

    /// The label in `/metrics`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Limit::DocMessages => "doc_messages",
            Limit::DocBytes => "doc_bytes",
            Limit::Awareness => "awareness",
            Limit::AwarenessState => "awareness_state",
        }
    }

    /// The close reason (at most 123 bytes, the WebSocket limit).
    pub(crate) fn reason(self, rates: &Rates) -> String {
        match self {
            Limit::DocMessages => format!(
                "rate limit: over {} document messages/s (burst {}); reconnect to resync",
                rates.doc_per_sec, rates.doc_burst
            ),
            Limit::DocBytes => format!(
                "rate limit: over {} document bytes/s (burst {}); reconnect to resync",
                rates.bytes_per_sec, rates.bytes_burst
            ),
            Limit::Awareness => format!(
                "rate limit: over {} awareness messages/s (burst {})",
                rates.awareness_per_sec, rates.awareness_burst
            ),
            Limit::AwarenessState => {
                format!("awareness state over {} bytes", rates.max_awareness_state)
            }
        }
    }
}

/// The quotas of one server, from its `Config` (0 disables a quota).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rates {
    doc_per_sec: f64,
    doc_burst: f64,
    bytes_per_sec: f64,
    bytes_burst: f64,
    awareness_per_sec: f64,
    awareness_burst: f64,
    max_awareness_state: usize,
}

impl Rates {
    pub(crate) fn of(config: &Config) -> Self {
        // A burst below the rate would refuse a second's worth; one message of the largest
        // accepted size must always fit a full byte bucket, or big pastes could never be sent.
        let burst = |rate: f64, burst: f64| burst.max(rate);
        let bytes_per_sec = config.rate_update_bytes_per_sec as f64;
        Self {
            doc_per_sec: f64::from(config.rate_doc_messages_per_sec),
            doc_burst: burst(
                f64::from(config.rate_doc_messages_per_sec),
                f64::from(config.rate_doc_messages_burst),
            ),
            bytes_per_sec,
            bytes_burst: burst(bytes_per_sec, config.rate_update_bytes_burst as f64)
                .max(config.max_message_bytes as f64),
            awareness_per_sec: f64::from(config.rate_awareness_per_sec),
            awareness_burst: burst(
                f64::from(config.rate_awareness_per_sec),
                f64::from(config.rate_awareness_burst),
            ),
            max_awareness_state: config.max_awareness_state_bytes,
        }
    }
}

/// One connection's buckets, refilled together (32 bytes per connection).
#[derive(Debug, Clone)]
pub(crate) struct Buckets {
    at_ms: u64,
    doc: f64,
    bytes: f64,
    awareness: f64,
}

impl Buckets {
    /// Full buckets at `now_ms`.
    pub(crate) fn new(rates: &Rates, now_ms: u64) -> Self {
        Self {
            at_ms: now_ms,
            doc: rates.doc_burst,
            bytes: rates.bytes_burst,
            awareness: rates.awareness_burst,
        }
    }

    /// Takes what `msg` costs, or says which quota it would exceed (then nothing is taken).
    pub(crate) fn admit(&mut self, rates: &Rates, msg: &Message, now_ms: u64) -> Result<(), Limit> {
        self.refill(rates, now_ms);
        match msg {
            Message::Sync(sync) => {
                let bytes = match sync {
                    SyncMessage::Step1(_) => 0,
                    SyncMessage::Step2(u) | SyncMessage::Update(u) => u.len(),
                };
                if rates.doc_per_sec > 0.0 && self.doc < 1.0 {
                    return Err(Limit::DocMessages);
                }
                if rates.bytes_per_sec > 0.0 && self.bytes < bytes as f64 {
                    return Err(Limit::DocBytes);
                }
                self.doc -= 1.0;
                self.bytes -= bytes as f64;
            }
            Message::Awareness(payload) => {
                if rates.max_awareness_state > 0
                    && payload.len() > rates.max_awareness_state
                    && state_too_large(payload, rates.max_awareness_state)
                {
                    return Err(Limit::AwarenessState);
                }
                self.take_awareness(rates)?;
            }
            Message::QueryAwareness => self.take_awareness(rates)?,
            // Not handled by rooms; cheap to drop.
            Message::AuthDenied(_) => {}
        }
        Ok(())
    }

    fn take_awareness(&mut self, rates: &Rates) -> Result<(), Limit> {
        if rates.awareness_per_sec > 0.0 && self.awareness < 1.0 {
            return Err(Limit::Awareness);
        }
        self.awareness -= 1.0;
        Ok(())
    }

    fn refill(&mut self, rates: &Rates, now_ms: u64) {
        let secs = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.at_ms = now_ms.max(self.at_ms);
        let fill = |level: f64, rate: f64, burst: f64| (level + rate * secs).min(burst);
        self.doc = fill(self.doc, rates.doc_per_sec, rates.doc_burst);
        self.bytes = fill(self.bytes, rates.bytes_per_sec, rates.bytes_burst);
        self.awareness = fill(
            self.awareness,
            rates.awareness_per_sec,
            rates.awareness_burst,
        );
    }
}

/// Whether any state in an awareness update is longer than `max`. Only called for payloads
/// longer than `max` (a shorter payload cannot hold a longer state), so ordinary awareness
/// traffic is never decoded here. A payload that does not decode is left to the room, which
/// closes the connection for it.
fn state_too_large(payload: &bytes::Bytes, max: usize) -> bool {
    ripple_proto::awareness::decode_update(payload.clone())
        .is_ok_and(|entries| entries.iter().any(|e| e.state.len() > max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rates(f: impl FnOnce(&mut Config)) -> Rates {
        let mut config = Config::default();
        f(&mut config);
        Rates::of(&config)
    }

    fn update(len: usize) -> Message {
        Message::Sync(SyncMessage::Update(Bytes::from(vec![0u8; len])))
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills() {
        let r = rates(|c| {
            c.rate_doc_messages_per_sec = 10;
            c.rate_doc_messages_burst = 20;
        });
        let mut b = Buckets::new(&r, 0);
        for _ in 0..20 {
            assert_eq!(b.admit(&r, &update(1), 0), Ok(()));
        }
        assert_eq!(b.admit(&r, &update(1), 0), Err(Limit::DocMessages));
        // 100 ms later one token is back, and only one.
        assert_eq!(b.admit(&r, &update(1), 100), Ok(()));
        assert_eq!(b.admit(&r, &update(1), 100), Err(Limit::DocMessages));
    }

    #[test]
    fn bytes_are_limited_but_one_largest_message_always_fits_a_full_bucket() {
        let r = rates(|c| {
            c.rate_update_bytes_per_sec = 1000;
            c.rate_update_bytes_burst = 1000;
            c.max_message_bytes = 5000;
        });
        let mut b = Buckets::new(&r, 0);
        assert_eq!(b.admit(&r, &update(5000), 0), Ok(()));
        assert_eq!(b.admit(&r, &update(10), 0), Err(Limit::DocBytes));
        assert_eq!(b.admit(&r, &update(10), 1000), Ok(()));
    }

    #[test]
    fn zero_disables_and_awareness_state_size_is_checked_per_state() {
        let r = rates(|c| {
            c.rate_doc_messages_per_sec = 0;
            c.rate_update_bytes_per_sec = 0;
            c.rate_awareness_per_sec = 1;
            c.rate_awareness_burst = 1;
            c.max_awareness_state_bytes = 16;
        });
        let mut b = Buckets::new(&r, 0);
        for _ in 0..10_000 {
            assert_eq!(b.admit(&r, &update(100_000), 0), Ok(()));
        }
        // Two small states in one payload longer than the cap: fine.
        let two = ripple_proto::awareness::encode_update([(1, 1, "{\"a\":1234567}"), (2, 1, "{}")]);
        assert!(two.len() > 16);
        assert_eq!(b.admit(&r, &Message::Awareness(two), 0), Ok(()));
        let big = ripple_proto::awareness::encode_update([(1, 2, "{\"a\":\"0123456789abc\"}")]);
        assert_eq!(
            b.admit(&r, &Message::Awareness(big), 0),
            Err(Limit::AwarenessState)
        );
        assert_eq!(
            b.admit(&r, &Message::QueryAwareness, 0),
            Err(Limit::Awareness),
            "the one awareness token went to the first message"
        );
    }
}
