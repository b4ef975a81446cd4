//! The y-websocket wire protocol (v1) as a pure codec: bytes in, messages out, no I/O.
//!
//! One WebSocket binary frame carries exactly one [`Message`] (y-websocket 3.x reads one message
//! per frame, so we never concatenate). Payloads (state vectors, Yjs updates, awareness updates)
//! stay opaque [`Bytes`] slices of the input frame; interpreting them is the room's job, except for
//! awareness entries, which [`awareness`] parses because the server must track which client ids
//! each connection introduced.
//!
//! Also here: [`batch`], the reassembly of y-partykit's chunked messages (`y-pk-batch#...`).
//! [`bounds`] checks the declared counts inside Yjs state vectors and updates against their size
//! before yrs decodes them, so decode work stays proportional to a message's size.
//! And [`ws`], the server side of WebSocket framing, so the whole path from socket bytes to
//! messages is pure.

pub mod awareness;
pub mod batch;
pub mod bounds;
mod lib0;
pub mod link;
mod message;
pub mod ws;

pub use lib0::DecodeError;
pub use message::{Message, SyncMessage, MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC};
