//! The WebSocket close codes Ripple sends, and when. A connection is closed through
//! `Peer::close` (by its own task, its room, or the server); the first reason wins.

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
    /// Policy violation: over a per-connection quota (`rate_*`, `max_awareness_state_bytes`), or
    /// an update that would take the document past `max_doc_bytes`; the reason says which.
    pub const POLICY_VIOLATION: u16 = 1008;
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
    /// Closed through the HTTP API (`POST /api/v1/rooms/{party}/{room}/close`, all or one
    /// user's connections): clients reconnect and face auth again.
    pub const CLOSED_BY_API: u16 = 4002;
    /// The room was deleted (`DELETE /api/v1/rooms/{party}/{room}`); a client that reconnects
    /// starts it again, empty (and may bring its own copy back).
    pub const ROOM_DELETED: u16 = 4004;
}

/// The reason sent with [`code::TRY_AGAIN_LATER`] to a connection whose outbound queue is full.
pub const QUEUE_FULL: &str = "outbound queue full; reconnect to resync";
