//! The Hocuspocus wire protocol (`@hocuspocus/provider` 2.x–4.x) as a pure codec.
//!
//! One WebSocket binary frame is `varString(documentName) varUint(type) payload` (lib0), so one
//! socket carries many documents. For types 0 (sync), 1 (awareness) and 3 (query awareness)
//! everything after the name is byte for byte a y-websocket [`Message`]: a room's output is
//! framed for Hocuspocus by prefixing the name ([`prefix`], [`frame_doc`]), with no re-encoding.
//!
//! Provider 4.x adds a connection-level keep-alive outside this scheme: a frame of the single
//! byte 9 (ping) from the server, answered by the single byte 10 (pong). A one-byte frame can
//! never be a named frame (a name of length 9 or 10 needs more bytes), so the two never collide.
//!
//! Decoding follows the bytes: the name and every string are slices of the frame, nothing is
//! reserved ahead of what arrived. Bytes after an Auth token are ignored (provider 4.x appends
//! its version there); other messages must end where they end.

use bytes::{BufMut, Bytes, BytesMut};

use crate::lib0::{put_var_bytes, put_var_uint, var_uint_len, DecodeError, Reader};
use crate::Message;

/// Type 0: a y-protocols sync message.
pub const SYNC: u64 = 0;
/// Type 1: an awareness update.
pub const AWARENESS: u64 = 1;
/// Type 2: auth (token, permission denied, authenticated).
pub const AUTH: u64 = 2;
/// Type 3: a request for every awareness state.
pub const QUERY_AWARENESS: u64 = 3;
/// Type 4: a sync message the Hocuspocus server sends to itself; providers throw on it, so it
/// is never sent. Accepted from clients as a sync message.
pub const SYNC_REPLY: u64 = 4;
/// Type 5: an application string for the server.
pub const STATELESS: u64 = 5;
/// Type 6: an application string for every connection to the document.
pub const BROADCAST_STATELESS: u64 = 6;
/// Type 7: client → server: close this document; server → client: it was closed (reason).
pub const CLOSE: u64 = 7;
/// Type 8: the server applied (1) or rejected (0) one document update of the client's.
pub const SYNC_STATUS: u64 = 8;
/// Type 9: ping (provider 4.x; connection-level, the whole frame is this byte).
pub const PING: u8 = 9;
/// Type 10: pong (the answer to [`PING`]).
pub const PONG: u8 = 10;

const AUTH_TOKEN: u64 = 0;
const AUTH_PERMISSION_DENIED: u64 = 1;
const AUTH_AUTHENTICATED: u64 = 2;

/// What an authenticated document may do, as the provider's `authorizedScope` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `"read-write"`.
    ReadWrite,
    /// `"readonly"`.
    ReadOnly,
}

impl Scope {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadWrite => "read-write",
            Scope::ReadOnly => "readonly",
        }
    }
}

/// One message for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HpMessage {
    /// Types 0, 1 and 3 (and 4, decoded as 0): the y-protocols message after the name.
    Doc(Message),
    /// Auth/Token with the client's token ("" when it has none). Client → server.
    Token(String),
    /// Auth/Token without a token: "send your token again" (provider 3.3+). Server → client.
    TokenRequest,
    /// Auth/PermissionDenied with a reason. Server → client.
    PermissionDenied(String),
    /// Auth/Authenticated with the scope string (`"read-write"` or `"readonly"`). Server →
    /// client. Kept as a string: the provider exposes whatever it gets.
    Authenticated(String),
    /// An application string.
    Stateless(String),
    /// An application string to relay to every connection to the document.
    BroadcastStateless(String),
    /// Close: `None` from a client (close this document), a reason from the server.
    Close(Option<String>),
    /// Whether one document update was applied.
    SyncStatus(bool),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message for the named document.
    Doc {
        /// The document name, as the provider sent it.
        name: String,
        /// The message.
        message: HpMessage,
    },
    /// Connection-level ping (the byte 9 alone).
    Ping,
    /// Connection-level pong (the byte 10 alone).
    Pong,
}

impl Frame {
    /// Decodes one binary frame.
    pub fn decode(frame: Bytes) -> Result<Self, DecodeError> {
        match frame.as_ref() {
            [PING] => return Ok(Frame::Ping),
            [PONG] => return Ok(Frame::Pong),
            _ => {}
        }
        let mut r = Reader::new(frame.clone());
        let name = r.var_string()?;
        let start = frame.len() - r.remaining();
        let kind = r.var_uint()?;
        let message = match kind {
            SYNC | AWARENESS | QUERY_AWARENESS => {
                HpMessage::Doc(Message::decode(frame.slice(start..))?)
            }
            SYNC_REPLY => {
                // The same payload as a sync message: decode it as one.
                let mut body = BytesMut::with_capacity(frame.len() - start);
                put_var_uint(&mut body, SYNC);
                body.put_slice(&frame[frame.len() - r.remaining()..]);
                HpMessage::Doc(Message::decode(body.freeze())?)
            }
            AUTH => match r.var_uint()? {
                AUTH_TOKEN if r.remaining() == 0 => HpMessage::TokenRequest,
                // Whatever follows the token (4.x: the provider's version) is not ours to judge.
                AUTH_TOKEN => return Ok(Frame::doc(name, HpMessage::Token(r.var_string()?))),
                AUTH_PERMISSION_DENIED => HpMessage::PermissionDenied(r.var_string()?),
                AUTH_AUTHENTICATED => HpMessage::Authenticated(r.var_string()?),
                _ => return Err(DecodeError::UnknownMessageType(AUTH)),
            },
            STATELESS => HpMessage::Stateless(r.var_string()?),
            BROADCAST_STATELESS => HpMessage::BroadcastStateless(r.var_string()?),
            CLOSE if r.remaining() == 0 => HpMessage::Close(None),
            CLOSE => HpMessage::Close(Some(r.var_string()?)),
            // The provider reads a signed varint; 0 and 1 are the same byte either way.
            SYNC_STATUS => HpMessage::SyncStatus(r.var_uint()? == 1),
            other => return Err(DecodeError::UnknownMessageType(other)),
        };
        if !matches!(message, HpMessage::Doc(_)) {
            r.finish()?;
        }
        Ok(Frame::doc(name, message))
    }

    fn doc(name: String, message: HpMessage) -> Self {
        Frame::Doc { name, message }
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Bytes {
        match self {
            Frame::Ping => Bytes::from_static(&[PING]),
            Frame::Pong => Bytes::from_static(&[PONG]),
            Frame::Doc { name, message } => encode(name, message),
        }
    }
}

/// `varString(name)`: the start of every frame for document `name`.
pub fn prefix(name: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(var_uint_len(name.len() as u64) + name.len());
    put_var_bytes(&mut out, name.as_bytes());
    out.freeze()
}

/// The frame for a y-protocols message `body` (as [`Message::encode`] made it) of the document
/// whose [`prefix`] is `prefix`.
pub fn frame_doc(prefix: &[u8], body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(prefix.len() + body.len());
    out.put_slice(prefix);
    out.put_slice(body);
    out.freeze()
}

/// Encodes `message` for document `name`.
pub fn encode(name: &str, message: &HpMessage) -> Bytes {
    let mut out = BytesMut::new();
    put_var_bytes(&mut out, name.as_bytes());
    match message {
        HpMessage::Doc(msg) => out.put_slice(&msg.encode()),
        HpMessage::Token(token) => {
            put_var_uint(&mut out, AUTH);
            put_var_uint(&mut out, AUTH_TOKEN);
            put_var_bytes(&mut out, token.as_bytes());
        }
        HpMessage::TokenRequest => {
            put_var_uint(&mut out, AUTH);
            put_var_uint(&mut out, AUTH_TOKEN);
        }
        HpMessage::PermissionDenied(reason) => {
            put_var_uint(&mut out, AUTH);
            put_var_uint(&mut out, AUTH_PERMISSION_DENIED);
            put_var_bytes(&mut out, reason.as_bytes());
        }
        HpMessage::Authenticated(scope) => {
            put_var_uint(&mut out, AUTH);
            put_var_uint(&mut out, AUTH_AUTHENTICATED);
            put_var_bytes(&mut out, scope.as_bytes());
        }
        HpMessage::Stateless(payload) => {
            put_var_uint(&mut out, STATELESS);
            put_var_bytes(&mut out, payload.as_bytes());
        }
        HpMessage::BroadcastStateless(payload) => {
            put_var_uint(&mut out, BROADCAST_STATELESS);
            put_var_bytes(&mut out, payload.as_bytes());
        }
        HpMessage::Close(reason) => {
            put_var_uint(&mut out, CLOSE);
            if let Some(reason) = reason {
                put_var_bytes(&mut out, reason.as_bytes());
            }
        }
        HpMessage::SyncStatus(applied) => {
            put_var_uint(&mut out, SYNC_STATUS);
            put_var_uint(&mut out, u64::from(*applied));
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SyncMessage;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        Frame::decode(Bytes::copy_from_slice(bytes))
    }

    fn doc(name: &str, message: HpMessage) -> Frame {
        Frame::Doc {
            name: name.into(),
            message,
        }
    }

    #[test]
    fn decodes_what_the_provider_sends() {
        // Auth/Token "tok" for document "d" (provider 2.x/3.x).
        assert_eq!(
            decode(&[1, b'd', 2, 0, 3, b't', b'o', b'k']),
            Ok(doc("d", HpMessage::Token("tok".into())))
        );
        // Provider 4.x appends its version after the token.
        assert_eq!(
            decode(&[1, b'd', 2, 0, 0, 5, b'4', b'.', b'8', b'.', b'0']),
            Ok(doc("d", HpMessage::Token(String::new())))
        );
        // Sync step 1 with the empty state vector.
        assert_eq!(
            decode(&[1, b'd', 0, 0, 1, 0]),
            Ok(doc(
                "d",
                HpMessage::Doc(Message::Sync(SyncMessage::Step1(Bytes::from_static(&[0]))))
            ))
        );
        // The provider's CLOSE on detach has no reason.
        assert_eq!(decode(&[1, b'd', 7]), Ok(doc("d", HpMessage::Close(None))));
        assert_eq!(decode(&[9]), Ok(Frame::Ping));
        assert_eq!(decode(&[10]), Ok(Frame::Pong));
        // SyncReply is read as a sync message.
        assert_eq!(
            decode(&[0, 4, 2, 1, 7]),
            Ok(doc(
                "",
                HpMessage::Doc(Message::Sync(SyncMessage::Update(Bytes::from_static(&[7]))))
            ))
        );
    }

    #[test]
    fn encodes_what_the_provider_reads() {
        assert_eq!(
            &encode("d", &HpMessage::SyncStatus(true))[..],
            &[1, b'd', 8, 1]
        );
        assert_eq!(
            &encode(
                "d",
                &HpMessage::Authenticated(Scope::ReadOnly.as_str().into())
            )[..],
            &[1, b'd', 2, 2, 8, b'r', b'e', b'a', b'd', b'o', b'n', b'l', b'y']
        );
        assert_eq!(&encode("d", &HpMessage::TokenRequest)[..], &[1, b'd', 2, 0]);
        let body = Message::QueryAwareness.encode();
        assert_eq!(&frame_doc(&prefix("d"), &body)[..], &[1, b'd', 3]);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: &[(&[u8], DecodeError)] = &[
            (&[], DecodeError::UnexpectedEnd),
            (&[5, b'a'], DecodeError::UnexpectedEnd),
            (&[1, b'd'], DecodeError::UnexpectedEnd),
            (&[1, b'd', 11], DecodeError::UnknownMessageType(11)),
            (&[1, b'd', 2, 9, 0], DecodeError::UnknownMessageType(AUTH)),
            (&[1, 0xff, 5, 0], DecodeError::InvalidUtf8),
            (&[1, b'd', 8, 1, 0], DecodeError::TrailingBytes(1)),
            (&[1, b'd', 3, 3], DecodeError::TrailingBytes(1)),
            (&[1, b'd', 0, 9, 0], DecodeError::UnknownSyncType(9)),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(bytes).as_ref(), Err(want), "{bytes:?}");
        }
    }

    fn any_message() -> impl Strategy<Value = HpMessage> {
        let payload = proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from);
        let text = ".{0,40}";
        prop_oneof![
            payload
                .clone()
                .prop_map(|p| HpMessage::Doc(Message::Sync(SyncMessage::Step1(p)))),
            payload
                .clone()
                .prop_map(|p| HpMessage::Doc(Message::Sync(SyncMessage::Update(p)))),
            payload.prop_map(|p| HpMessage::Doc(Message::Awareness(p))),
            Just(HpMessage::Doc(Message::QueryAwareness)),
            // "" is the provider's "no token": it still carries its length byte, unlike a
            // token request.
            text.prop_map(HpMessage::Token),
            Just(HpMessage::TokenRequest),
            text.prop_map(HpMessage::PermissionDenied),
            text.prop_map(HpMessage::Authenticated),
            text.prop_map(HpMessage::Stateless),
            text.prop_map(HpMessage::BroadcastStateless),
            Just(HpMessage::Close(None)),
            text.prop_map(|r| HpMessage::Close(Some(r))),
            any::<bool>().prop_map(HpMessage::SyncStatus),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(name in ".{0,30}", msg in any_message()) {
            let frame = doc(&name, msg);
            prop_assert_eq!(Frame::decode(frame.encode()), Ok(frame));
        }

        #[test]
        fn a_doc_frame_is_the_prefix_then_the_y_websocket_message(
            name in ".{0,30}",
            payload in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let msg = Message::Sync(SyncMessage::Update(payload.into()));
            let framed = frame_doc(&prefix(&name), &msg.encode());
            prop_assert_eq!(&framed, &encode(&name, &HpMessage::Doc(msg.clone())));
            prop_assert_eq!(Frame::decode(framed), Ok(doc(&name, HpMessage::Doc(msg))));
        }

        #[test]
        fn bytes_after_a_token_are_ignored(
            token in ".{0,30}",
            extra in proptest::collection::vec(any::<u8>(), 0..30),
        ) {
            let mut frame = encode("x", &HpMessage::Token(token.clone())).to_vec();
            frame.extend(extra);
            prop_assert_eq!(decode(&frame), Ok(doc("x", HpMessage::Token(token))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(frame) = decode(&bytes) {
                // What decodes re-encodes, no longer, to something that decodes the same.
                prop_assert!(frame.encode().len() <= bytes.len());
                prop_assert_eq!(Frame::decode(frame.encode()), Ok(frame));
            }
        }
    }
}
