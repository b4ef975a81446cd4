//! A one-shot "close this connection with this code" signal, shared by the connection's reader,
//! writer, and its room (which kicks slow or misbehaving connections). The first reason wins.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// WebSocket close codes Ripple sends.
pub mod code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down, or the peer went silent.
    pub const GOING_AWAY: u16 = 1001;
    /// Malformed frame or message.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not a y-pk-batch marker.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Message larger than `max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The room failed (load error, storage down, internal error).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Try again later: room full, server at capacity, or this client read too slowly.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection's token expired (application range 4000-4999). y-websocket and
    /// y-partykit treat it like any close and reconnect; a client whose `params` (or
    /// subprotocol) yield a fresh token is admitted again, a stale one gets HTTP 401.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// Shortens a close reason to the 123 bytes a close frame can carry (at a char boundary).
pub fn fit_reason(mut reason: String) -> String {
    while reason.len() > 123 {
        reason.pop();
    }
    reason
}

#[derive(Debug, Default)]
struct Inner {
    token: CancellationToken,
    reason: Mutex<Option<(u16, String)>>,
}

/// Cheap to clone; all clones share one signal.
#[derive(Debug, Clone, Default)]
pub struct Closer(Arc<Inner>);

impl Closer {
    /// Asks for the connection to close with `code` and `reason` (ignored if already asked).
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        {
            let mut slot = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some((code, fit_reason(reason.into())));
            }
        }
        self.0.token.cancel();
    }

    /// Resolves once a close was asked for.
    pub async fn closed(&self) {
        self.0.token.cancelled().await
    }

    /// Whether a close was asked for.
    pub fn is_closed(&self) -> bool {
        self.0.token.is_cancelled()
    }

    /// The code and reason asked for, if any.
    pub fn reason(&self) -> Option<(u16, String)> {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
