//! The node-to-node link: how a node that does not own a room forwards its clients to the
//! node that does. One link (a WebSocket between two nodes) carries many **streams**; a stream
//! is one forwarded client in one room, numbered by the forwarding node. Each WebSocket binary
//! message is one [`LinkFrame`]: `varUint(stream)`, one kind byte, then the kind's fields.
//!
//! Forwarder → owner: [`LinkFrame::Join`] opens a stream (room, access, user), then
//! [`LinkFrame::Msg`] carries the client's y-protocols messages in order, and
//! [`LinkFrame::Leave`] ends it. Owner → forwarder: [`LinkFrame::Out`] carries what the room
//! sends that member (a y-protocols message, as the room encoded it), [`LinkFrame::Notice`]
//! the room's notices ("read-only", "applied": the member's update is durable), and
//! [`LinkFrame::Close`] ends the stream with a WebSocket close code and reason, which the
//! forwarder passes on to its client.
//!
//! Pure: bytes in, frames out. Every length is checked against the bytes that follow it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::lib0::{put_var_bytes, put_var_uint, var_uint_len, Reader};
use crate::DecodeError;

/// A stream's number on its link (chosen by the forwarding node).
pub type StreamId = u64;

/// Longest party, room or user name a link frame may carry.
pub const MAX_NAME: usize = 1024;

const JOIN: u8 = 0;
const MSG: u8 = 1;
const LEAVE: u8 = 2;
const OUT: u8 = 3;
const NOTICE: u8 = 4;
const CLOSE: u8 = 5;

/// What the room told a forwarded member besides messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The member is read-only and tried to change the document.
    ReadOnly,
    /// An update the member sent is durable.
    Applied,
}

/// One frame on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFrame {
    /// Opens `stream`: a client of the forwarding node joins `party/room`.
    Join {
        stream: StreamId,
        party: String,
        room: String,
        /// Whether it may change the document.
        write: bool,
        /// The authenticated user, if any.
        user: Option<String>,
    },
    /// A y-protocols message from the stream's client.
    Msg { stream: StreamId, body: Bytes },
    /// The stream's client left.
    Leave { stream: StreamId },
    /// A y-protocols message for the stream's client.
    Out { stream: StreamId, body: Bytes },
    /// A notice for the stream's client.
    Notice { stream: StreamId, notice: Notice },
    /// The owner ended the stream: pass `code` and `reason` on to the client.
    Close {
        stream: StreamId,
        code: u16,
        reason: String,
    },
}

impl LinkFrame {
    /// The stream this frame belongs to.
    pub fn stream(&self) -> StreamId {
        match self {
            LinkFrame::Join { stream, .. }
            | LinkFrame::Msg { stream, .. }
            | LinkFrame::Leave { stream }
            | LinkFrame::Out { stream, .. }
            | LinkFrame::Notice { stream, .. }
            | LinkFrame::Close { stream, .. } => *stream,
        }
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        put_var_uint(&mut out, self.stream());
        match self {
            LinkFrame::Join {
                party,
                room,
                write,
                user,
                ..
            } => {
                out.put_u8(JOIN);
                put_var_bytes(&mut out, party.as_bytes());
                put_var_bytes(&mut out, room.as_bytes());
                out.put_u8(u8::from(*write));
                match user {
                    Some(user) => {
                        out.put_u8(1);
                        put_var_bytes(&mut out, user.as_bytes());
                    }
                    None => out.put_u8(0),
                }
            }
            LinkFrame::Msg { body, .. } => {
                out.put_u8(MSG);
                out.put_slice(body);
            }
            LinkFrame::Leave { .. } => out.put_u8(LEAVE),
            LinkFrame::Out { body, .. } => {
                out.put_u8(OUT);
                out.put_slice(body);
            }
            LinkFrame::Notice { notice, .. } => {
                out.put_u8(NOTICE);
                out.put_u8(match notice {
                    Notice::ReadOnly => 0,
                    Notice::Applied => 1,
                });
            }
            LinkFrame::Close { code, reason, .. } => {
                out.put_u8(CLOSE);
                out.put_u16(*code);
                put_var_bytes(&mut out, reason.as_bytes());
            }
        }
        out.freeze()
    }

    /// The header of an [`LinkFrame::Out`] frame for `stream`: what goes before a message's
    /// bytes (so a sender can write header and shared body without copying the body).
    pub fn out_header(stream: StreamId) -> Bytes {
        let mut out = BytesMut::with_capacity(var_uint_len(stream) + 1);
        put_var_uint(&mut out, stream);
        out.put_u8(OUT);
        out.freeze()
    }

    /// Decodes one frame.
    pub fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let stream = r.var_uint()?;
        let kind = r.u8()?;
        let frame = match kind {
            JOIN => {
                let party = name(&mut r)?;
                let room = name(&mut r)?;
                let write = match r.u8()? {
                    0 => false,
                    1 => true,
                    other => return Err(DecodeError::Link(format!("access flag {other}"))),
                };
                let user = match r.u8()? {
                    0 => None,
                    1 => Some(name(&mut r)?),
                    other => return Err(DecodeError::Link(format!("user flag {other}"))),
                };
                r.finish()?;
                LinkFrame::Join {
                    stream,
                    party,
                    room,
                    write,
                    user,
                }
            }
            MSG => LinkFrame::Msg {
                stream,
                body: r.rest(),
            },
            LEAVE => {
                r.finish()?;
                LinkFrame::Leave { stream }
            }
            OUT => LinkFrame::Out {
                stream,
                body: r.rest(),
            },
            NOTICE => {
                let notice = match r.u8()? {
                    0 => Notice::ReadOnly,
                    1 => Notice::Applied,
                    other => return Err(DecodeError::Link(format!("notice {other}"))),
                };
                r.finish()?;
                LinkFrame::Notice { stream, notice }
            }
            CLOSE => {
                let code = u16::from(r.u8()?) << 8 | u16::from(r.u8()?);
                let reason = r.var_string()?;
                r.finish()?;
                LinkFrame::Close {
                    stream,
                    code,
                    reason,
                }
            }
            other => return Err(DecodeError::Link(format!("link frame kind {other}"))),
        };
        Ok(frame)
    }
}

fn name(r: &mut Reader) -> Result<String, DecodeError> {
    let s = r.var_string()?;
    if s.len() > MAX_NAME {
        return Err(DecodeError::Link(format!(
            "name of {} bytes (at most {MAX_NAME})",
            s.len()
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_SAFE: u64 = (1 << 53) - 1;

    fn frames() -> impl Strategy<Value = LinkFrame> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop_oneof![
            (
                0..MAX_SAFE,
                ".{0,20}",
                ".{0,20}",
                any::<bool>(),
                proptest::option::of(".{0,20}")
            )
                .prop_map(|(stream, party, room, write, user)| LinkFrame::Join {
                    stream,
                    party,
                    room,
                    write,
                    user
                }),
            (0..MAX_SAFE, bytes.clone()).prop_map(|(stream, body)| LinkFrame::Msg { stream, body }),
            (0..MAX_SAFE).prop_map(|stream| LinkFrame::Leave { stream }),
            (0..MAX_SAFE, bytes).prop_map(|(stream, body)| LinkFrame::Out { stream, body }),
            (0..MAX_SAFE, any::<bool>()).prop_map(|(stream, applied)| LinkFrame::Notice {
                stream,
                notice: if applied {
                    Notice::Applied
                } else {
                    Notice::ReadOnly
                }
            }),
            (0..MAX_SAFE, any::<u16>(), ".{0,40}").prop_map(|(stream, code, reason)| {
                LinkFrame::Close {
                    stream,
                    code,
                    reason,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in frames()) {
            prop_assert_eq!(LinkFrame::decode(frame.encode())?, frame);
        }

        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = LinkFrame::decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn an_out_header_plus_a_body_is_an_out_frame() {
        let mut framed = BytesMut::from(&LinkFrame::out_header(300)[..]);
        framed.put_slice(b"\x00\x01\x02");
        assert_eq!(
            LinkFrame::decode(framed.freeze()).ok(),
            Some(LinkFrame::Out {
                stream: 300,
                body: Bytes::from_static(b"\x00\x01\x02")
            })
        );
    }

    #[test]
    fn truncated_and_unknown_frames_are_errors() {
        assert!(LinkFrame::decode(Bytes::new()).is_err());
        assert!(LinkFrame::decode(Bytes::from_static(&[1])).is_err());
        assert!(LinkFrame::decode(Bytes::from_static(&[1, 9])).is_err());
        assert!(LinkFrame::decode(Bytes::from_static(&[1, LEAVE, 0])).is_err());
        // A join whose party claims more bytes than follow.
        assert!(LinkFrame::decode(Bytes::from_static(&[1, JOIN, 200, 1, b'a'])).is_err());
    }
}
