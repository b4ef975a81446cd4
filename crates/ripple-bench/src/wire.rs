//! Framing for the two protocols the load generator speaks.
//!
//! - **y-websocket** (Ripple, `@y/websocket-server`, y-partykit): one [`Message`] per binary
//!   frame, encoded by `ripple-proto`.
//! - **Hocuspocus** (checked against `@hocuspocus/server` and `@hocuspocus/provider` 3.4.4): every
//!   frame starts with the document name as a lib0 varString, then a varUint message type. Types
//!   0 (sync), 1 (awareness) and 3 (query awareness) have the y-websocket layout after the name;
//!   4 (SyncReply) is a sync message the client must answer like type 0; 2 is auth with its own
//!   sub-types (0 token, 1 permission denied, 2 authenticated + scope); 5/6 stateless, 7 close,
//!   8 sync status (the server's acknowledgement of each applied update).

use bytes::{BufMut, Bytes, BytesMut};
use ripple_proto::{DecodeError, Message};

/// Which wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// y-websocket v1 (also what y-partykit speaks).
    Yws,
    /// Hocuspocus: document name before every message, auth as a message.
    Hocuspocus,
}

/// A frame from the server, decoded.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A y-websocket message (for Hocuspocus: types 0, 1, 3 and 4).
    Msg(Message),
    /// Hocuspocus: authentication accepted.
    Authenticated,
    /// Authentication refused, with the reason.
    Denied(String),
    /// Hocuspocus: the server applied (true) or refused (false) one of our updates.
    SyncStatus(bool),
    /// Hocuspocus: the server closes this document's connection.
    Close(String),
    /// Something we do not act on (stateless messages, token requests).
    Ignored,
}

/// Why a server frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame is malformed.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// A lib0 value ran past the end of the frame.
    #[error("truncated frame")]
    Truncated,
    /// An unknown Hocuspocus message type.
    #[error("unknown message type {0}")]
    UnknownType(u64),
}

/// Encodes one outgoing message for `doc` (the document name, used by Hocuspocus only).
pub fn encode(protocol: Protocol, doc: &str, msg: &Message) -> Bytes {
    match protocol {
        Protocol::Yws => msg.encode(),
        Protocol::Hocuspocus => {
            let body = msg.encode();
            let mut out = BytesMut::with_capacity(body.len() + doc.len() + 5);
            put_var_string(&mut out, doc);
            out.extend_from_slice(&body);
            out.freeze()
        }
    }
}

/// The Hocuspocus authentication message (`[doc, Auth=2, Token=0, token]`); the provider sends
/// it first on every connection, with an empty token when none is configured.
pub fn hocuspocus_auth(doc: &str, token: &str) -> Bytes {
    let mut out = BytesMut::new();
    put_var_string(&mut out, doc);
    put_var_uint(&mut out, 2);
    put_var_uint(&mut out, 0);
    put_var_string(&mut out, token);
    out.freeze()
}

/// Decodes one binary frame from the server.
pub fn decode(protocol: Protocol, doc: &str, frame: Bytes) -> Result<Incoming, WireError> {
    match protocol {
        Protocol::Yws => Ok(match Message::decode(frame)? {
            Message::AuthDenied(reason) => Incoming::Denied(reason),
            msg => Incoming::Msg(msg),
        }),
        Protocol::Hocuspocus => decode_hocuspocus(doc, frame),
    }
}

fn decode_hocuspocus(doc: &str, frame: Bytes) -> Result<Incoming, WireError> {
    let mut pos = 0;
    let name_len =
        usize::try_from(var_uint(&frame, &mut pos)?).map_err(|_| WireError::Truncated)?;
    let name_end = pos.checked_add(name_len).ok_or(WireError::Truncated)?;
    let name = frame.get(pos..name_end).ok_or(WireError::Truncated)?;
    if name != doc.as_bytes() {
        // The provider routes frames by name and drops those for documents it does not have
        // (Ripple's keep-alive is one, for document "").
        return Ok(Incoming::Ignored);
    }
    pos = name_end;
    let body_start = pos;
    let kind = var_uint(&frame, &mut pos)?;
    match kind {
        0 | 1 | 3 => Ok(Incoming::Msg(Message::decode(frame.slice(body_start..))?)),
        4 => {
            // SyncReply: the same sync payload under another type byte.
            let mut body = BytesMut::with_capacity(frame.len() - pos + 1);
            body.put_u8(0);
            body.extend_from_slice(&frame[pos..]);
            Ok(Incoming::Msg(Message::decode(body.freeze())?))
        }
        2 => match var_uint(&frame, &mut pos)? {
            0 => Ok(Incoming::Ignored),
            1 => Ok(Incoming::Denied(var_string(&frame, &mut pos)?)),
            2 => Ok(Incoming::Authenticated),
            other => Err(WireError::UnknownType(200 + other)),
        },
        5 | 6 => Ok(Incoming::Ignored),
        7 => Ok(Incoming::Close(var_string(&frame, &mut pos)?)),
        8 => Ok(Incoming::SyncStatus(var_uint(&frame, &mut pos)? == 1)),
        other => Err(WireError::UnknownType(other)),
    }
}

fn put_var_uint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn put_var_string(out: &mut BytesMut, s: &str) {
    put_var_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn var_uint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut n = 0u64;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or(WireError::Truncated)?;
        *pos += 1;
        if shift > 63 {
            return Err(WireError::Truncated);
        }
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(n);
        }
        shift += 7;
    }
}

fn var_string(buf: &[u8], pos: &mut usize) -> Result<String, WireError> {
    let len = usize::try_from(var_uint(buf, pos)?).map_err(|_| WireError::Truncated)?;
    let end = pos.checked_add(len).ok_or(WireError::Truncated)?;
    let s = buf.get(*pos..end).ok_or(WireError::Truncated)?;
    *pos = end;
    Ok(String::from_utf8_lossy(s).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ripple_proto::SyncMessage;

    #[test]
    fn hocuspocus_frames_carry_the_document_name() {
        let msg = Message::Sync(SyncMessage::Update(Bytes::from_static(&[1, 2, 3])));
        let frame = encode(Protocol::Hocuspocus, "doc", &msg);
        assert_eq!(&frame[..4], &[3, b'd', b'o', b'c']);
        assert_eq!(
            decode(Protocol::Hocuspocus, "doc", frame).ok(),
            Some(Incoming::Msg(msg))
        );
    }

    #[test]
    fn hocuspocus_sync_reply_decodes_as_sync() {
        // [name "d", SyncReply=4, Step1=0, varUint8Array([0])]
        let frame = Bytes::from_static(&[1, b'd', 4, 0, 1, 0]);
        assert_eq!(
            decode(Protocol::Hocuspocus, "d", frame).ok(),
            Some(Incoming::Msg(Message::Sync(SyncMessage::Step1(
                Bytes::from_static(&[0])
            ))))
        );
    }

    #[test]
    fn hocuspocus_auth_and_status_messages() {
        let auth = hocuspocus_auth("d", "");
        assert_eq!(&auth[..], &[1, b'd', 2, 0, 0]);
        let ok = Bytes::from_static(&[1, b'd', 2, 2, 2, b'r', b'w']);
        assert_eq!(
            decode(Protocol::Hocuspocus, "d", ok).ok(),
            Some(Incoming::Authenticated)
        );
        let status = Bytes::from_static(&[1, b'd', 8, 1]);
        assert_eq!(
            decode(Protocol::Hocuspocus, "d", status).ok(),
            Some(Incoming::SyncStatus(true))
        );
        // Frames for other documents are dropped, as the provider does.
        let other = Bytes::from_static(&[0, 8, 0]);
        assert_eq!(
            decode(Protocol::Hocuspocus, "d", other).ok(),
            Some(Incoming::Ignored)
        );
        assert!(decode(Protocol::Hocuspocus, "d", Bytes::from_static(&[5, b'd'])).is_err());
    }
}
