//! Room members. A room has members; a member is not a socket (`../shared/DESIGN-NEXT.md`,
//! section 2). A member is one party to one room with its own access, user and expiry, and a
//! [`Sink`] that says where its output goes and how it is framed:
//!
//! - [`SocketSink`]: a y-websocket / y-partykit socket (one member per socket; the message is
//!   the frame);
//! - `hocuspocus::HocuspocusSink`: one document on a Hocuspocus socket (many members per
//!   socket; the document name, then the message);
//! - further kinds (a client forwarded from another node) implement [`Sink`] with their own
//!   [`Framing`].
//!
//! An HTTP request is a member too, for the length of one turn, with no sink at all: its update
//! takes the same turn, the same append and the same broadcast as a client's, and its answer
//! comes from the room's reply (see `room::Request`).
//!
//! The room produces [`Out`] values (y-protocols messages encoded once by core, plus notices
//! such as "read-only" and "applied"); each framing turns them into frames once per turn, and
//! members with equal framings share those frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use ripple_core::awareness::ConnId;
use ripple_core::room::Access;
use ripple_proto::hocuspocus as hp;
use ripple_proto::{ws, Message};
use tokio::time::Instant;

use crate::closer::code;
use crate::peer::{now_ms, OutFrame, Peer, QueueLimits};

/// A member's id in its room: unique in this process for its lifetime (a connection's id for
/// socket members).
pub(crate) type MemberId = ConnId;

/// What a room sends to a member, before framing.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    /// A y-protocols message (sync or awareness) as core encoded it. Shared by every protocol
    /// Ripple speaks; a framing may wrap it (Hocuspocus prefixes the document name).
    Doc(Bytes),
    /// The member is read-only and tried to change the document (sent once per member).
    ReadOnly,
    /// One document update of a read-only member was refused (sent for each, where `ReadOnly`
    /// is sent once): Hocuspocus answers every update with a SyncStatus.
    Rejected,
    /// A document message the member sent in this turn was handled and is durable (it was
    /// appended before anything of this turn was sent): protocols with acknowledgements
    /// (Hocuspocus' SyncStatus) tell the client here.
    Applied,
}

/// A Hocuspocus SyncStatus after the document name: applied, rejected.
const SYNC_STATUS_APPLIED: &[u8] = &[hp::SYNC_STATUS as u8, 1];
const SYNC_STATUS_REJECTED: &[u8] = &[hp::SYNC_STATUS as u8, 0];

/// How a member's messages become WebSocket frames. Members with equal framings in a room
/// share each turn's frames (a broadcast is framed once per framing, not once per member).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Framing {
    /// y-websocket and y-partykit: one message per binary frame.
    YWebsocket,
    /// Hocuspocus: the document name (`prefix`, its lib0 varString, encoded once), then the
    /// message. Members of one room with the same document name share frames.
    Hocuspocus { name: Arc<str>, prefix: Bytes },
    /// A client forwarded from another node (`cluster.rs`). These frames never reach a socket:
    /// the link sink turns them into link frames. A message is shared as is (binary); the
    /// notices are marked by a text opcode and a letter.
    Link,
}

impl Framing {
    /// The frame for `out`, if this protocol sends one for it.
    pub(crate) fn frame(&self, out: &Out) -> Option<OutFrame> {
        match (self, out) {
            (Framing::YWebsocket, Out::Doc(body)) => Some(OutFrame::binary(body.clone())),
            (Framing::YWebsocket, Out::ReadOnly) => Some(OutFrame::binary(
                Message::AuthDenied("read-only access: document updates are refused".into())
                    .encode(),
            )),
            // y-websocket has no acknowledgements.
            (Framing::YWebsocket, Out::Applied | Out::Rejected) => None,
            (Framing::Hocuspocus { prefix, .. }, out) => {
                let body = match out {
                    Out::Doc(body) => return Some(OutFrame::binary(hp::frame_doc(prefix, body))),
                    Out::Applied => SYNC_STATUS_APPLIED,
                    Out::Rejected => SYNC_STATUS_REJECTED,
                    // The Hocuspocus provider has no such notice: each update's SyncStatus says it.
                    Out::ReadOnly => return None,
                };
                Some(OutFrame::binary(hp::frame_doc(prefix, body)))
            }
            (Framing::Link, Out::Doc(body)) => Some(OutFrame::binary(body.clone())),
            (Framing::Link, Out::ReadOnly) => {
                Some(OutFrame::new(ws::opcode::TEXT, Bytes::from_static(b"r")))
            }
            (Framing::Link, Out::Rejected) => {
                Some(OutFrame::new(ws::opcode::TEXT, Bytes::from_static(b"j")))
            }
            (Framing::Link, Out::Applied) => {
                Some(OutFrame::new(ws::opcode::TEXT, Bytes::from_static(b"a")))
            }
        }
    }
}

/// Why a room ends a membership: the close code a socket protocol sends, and the reason.
#[derive(Debug, Clone)]
pub(crate) struct Close {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

impl Close {
    pub(crate) fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// What a room may ask of a member's sink.
pub(crate) trait Sink: Send + Sync + std::fmt::Debug {
    /// How this member's frames are made.
    fn framing(&self) -> &Framing;
    /// Delivers one turn's frames for this member, in order. False: the member cannot keep up
    /// (its bounded queue is full); the room then ends the membership (the client reconnects
    /// and resyncs), so nothing is dropped silently.
    fn send(&self, frames: &[OutFrame]) -> bool;
    /// The socket and bounds, when [`Sink::send`] is exactly `Peer::send` on them right now:
    /// the room then writes such members together (`peer::send_all`, one system call for a
    /// broadcast where the kernel allows).
    fn direct(&self) -> Option<(&Peer, QueueLimits)> {
        None
    }
    /// Ends this membership (for a socket with one member, the socket). The first close wins.
    fn close(&self, close: Close);
    /// The room's keep-alive round: a sink that owns its socket pings it, or closes it when the
    /// client has been silent since `heard_by` ([`now_ms`] time). Sinks whose socket is kept
    /// alive elsewhere (a shared socket pings once, not once per document) do nothing.
    fn keepalive(&self, _heard_by: u64) {}
    /// Whether this member was forwarded by another node (such a member is never forwarded
    /// again: nodes that disagree about a room's owner must not bounce clients between them).
    fn forwarded(&self) -> bool {
        false
    }
    /// For inspection: the protocol, remote address and what waits in the outbound queue.
    fn describe(&self) -> SinkInfo;
}

/// What a sink says about itself (the inspector and the HTTP API show it).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SinkInfo {
    /// "y-websocket", "hocuspocus", "forwarded", …
    pub(crate) protocol: &'static str,
    /// The client's address, if the member has a socket.
    pub(crate) remote: Option<SocketAddr>,
    /// Bytes waiting for the socket.
    pub(crate) queued_bytes: usize,
}

/// One member of a room, as the room actor keeps it.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: MemberId,
    pub(crate) access: Access,
    /// The authenticated user id, if any: decides whose awareness states it may change, and
    /// which members `close ?user=` ends.
    pub(crate) user: Option<Arc<str>>,
    /// When its token expires: the membership is then ended with 4001.
    pub(crate) expires: Option<Instant>,
    pub(crate) sink: Arc<dyn Sink>,
    /// Wall-clock time it joined (for inspection).
    pub(crate) since: SystemTime,
    /// It was told it is read-only (once).
    pub(crate) told_read_only: bool,
}

/// A y-websocket / y-partykit socket: one member, the message is the frame.
#[derive(Debug)]
pub(crate) struct SocketSink {
    peer: Arc<Peer>,
    limits: QueueLimits,
    framing: Framing,
}

impl SocketSink {
    pub(crate) fn new(peer: Arc<Peer>, limits: QueueLimits) -> Self {
        Self {
            peer,
            limits,
            framing: Framing::YWebsocket,
        }
    }
}

impl Sink for SocketSink {
    fn framing(&self) -> &Framing {
        &self.framing
    }

    fn send(&self, frames: &[OutFrame]) -> bool {
        self.peer.send(frames, self.limits)
    }

    fn direct(&self) -> Option<(&Peer, QueueLimits)> {
        Some((&self.peer, self.limits))
    }

    fn close(&self, close: Close) {
        self.peer.close(close.code, &close.reason);
    }

    fn keepalive(&self, heard_by: u64) {
        keepalive(&self.peer, self.limits, heard_by);
    }

    fn describe(&self) -> SinkInfo {
        SinkInfo {
            protocol: "y-websocket",
            remote: self.peer.remote(),
            queued_bytes: self.peer.queued_bytes(),
        }
    }
}

/// Pings `peer`, or closes it when it has been silent since `heard_by` (a peer that vanished
/// never answers). Shared by every sink that owns a socket.
pub(crate) fn keepalive(peer: &Peer, limits: QueueLimits, heard_by: u64) {
    if peer.last_heard() < heard_by {
        peer.close(
            code::GOING_AWAY,
            "no message or pong within the idle timeout",
        );
    } else if !peer.send(&[OutFrame::new(ws::opcode::PING, Bytes::new())], limits) {
        peer.close(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL);
    }
}

/// The `heard_by` of a keep-alive round with idle timeout `idle_ms`, now.
pub(crate) fn heard_by(idle_ms: u64) -> u64 {
    now_ms().saturating_sub(idle_ms)
}
