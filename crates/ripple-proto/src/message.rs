//! y-websocket messages: decode one frame into a [`Message`], encode a [`Message`] into a frame.

use bytes::{BufMut, Bytes, BytesMut};

use crate::lib0::{put_var_bytes, put_var_uint, var_uint_len, DecodeError, Reader};

/// Message type: document sync (y-protocols/sync).
pub const MSG_SYNC: u64 = 0;
/// Message type: awareness update (y-protocols/awareness).
pub const MSG_AWARENESS: u64 = 1;
/// Message type: auth (y-protocols/auth); the only defined reply is "permission denied".
pub const MSG_AUTH: u64 = 2;
/// Message type: a request for all awareness states.
pub const MSG_QUERY_AWARENESS: u64 = 3;

const SYNC_STEP1: u64 = 0;
const SYNC_STEP2: u64 = 1;
const SYNC_UPDATE: u64 = 2;
const AUTH_PERMISSION_DENIED: u64 = 0;

/// The three sync sub-messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    /// "Here is my state vector; send me what I lack."
    Step1(Bytes),
    /// "Here is what you lack" (a Yjs v1 update).
    Step2(Bytes),
    /// A live Yjs v1 update.
    Update(Bytes),
}

/// One y-websocket protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Document sync.
    Sync(SyncMessage),
    /// An awareness update (opaque here; see [`crate::awareness`]).
    Awareness(Bytes),
    /// Auth: permission denied, with a reason.
    AuthDenied(String),
    /// A request for every awareness state the peer knows.
    QueryAwareness,
}

impl Message {
    /// Decodes exactly one message from a binary frame. Bytes after the message are an error,
    /// as are truncated values and unknown types.
    pub fn decode(frame: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        let msg = match r.var_uint()? {
            MSG_SYNC => {
                let sub = r.var_uint()?;
                let payload = r.var_bytes()?;
                Message::Sync(match sub {
                    SYNC_STEP1 => SyncMessage::Step1(payload),
                    SYNC_STEP2 => SyncMessage::Step2(payload),
                    SYNC_UPDATE => SyncMessage::Update(payload),
                    other => return Err(DecodeError::UnknownSyncType(other)),
                })
            }
            MSG_AWARENESS => Message::Awareness(r.var_bytes()?),
            MSG_AUTH => {
                let kind = r.var_uint()?;
                if kind != AUTH_PERMISSION_DENIED {
                    return Err(DecodeError::UnknownMessageType(MSG_AUTH));
                }
                Message::AuthDenied(r.var_string()?)
            }
            MSG_QUERY_AWARENESS => Message::QueryAwareness,
            other => return Err(DecodeError::UnknownMessageType(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        match self {
            Message::Sync(sync) => {
                put_var_uint(&mut out, MSG_SYNC);
                let (sub, payload) = match sync {
                    SyncMessage::Step1(p) => (SYNC_STEP1, p),
                    SyncMessage::Step2(p) => (SYNC_STEP2, p),
                    SyncMessage::Update(p) => (SYNC_UPDATE, p),
                };
                put_var_uint(&mut out, sub);
                put_var_bytes(&mut out, payload);
            }
            Message::Awareness(payload) => {
                put_var_uint(&mut out, MSG_AWARENESS);
                put_var_bytes(&mut out, payload);
            }
            Message::AuthDenied(reason) => {
                put_var_uint(&mut out, MSG_AUTH);
                put_var_uint(&mut out, AUTH_PERMISSION_DENIED);
                put_var_bytes(&mut out, reason.as_bytes());
            }
            Message::QueryAwareness => out.put_u8(MSG_QUERY_AWARENESS as u8),
        }
        out.freeze()
    }

    fn encoded_len(&self) -> usize {
        let var_bytes = |n: usize| var_uint_len(n as u64) + n;
        1 + match self {
            Message::Sync(
                SyncMessage::Step1(p) | SyncMessage::Step2(p) | SyncMessage::Update(p),
            ) => 1 + var_bytes(p.len()),
            Message::Awareness(p) => var_bytes(p.len()),
            Message::AuthDenied(reason) => 1 + var_bytes(reason.len()),
            Message::QueryAwareness => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_what_yjs_sends() {
        // y-protocols: [messageSync, messageYjsSyncStep1, varUint8Array(stateVector = [0])]
        let frame = Bytes::from_static(&[0, 0, 1, 0]);
        assert_eq!(
            Message::decode(frame),
            Ok(Message::Sync(SyncMessage::Step1(Bytes::from_static(&[0]))))
        );
        assert_eq!(
            Message::decode(Bytes::from_static(&[3])),
            Ok(Message::QueryAwareness)
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: &[(&[u8], DecodeError)] = &[
            (&[], DecodeError::UnexpectedEnd),
            (&[0x00, 0x80], DecodeError::UnexpectedEnd),
            (&[0x63], DecodeError::UnknownMessageType(0x63)),
            (&[0, 7, 0], DecodeError::UnknownSyncType(7)),
            (&[0, 2, 5, 1, 2], DecodeError::UnexpectedEnd),
            (&[3, 3], DecodeError::TrailingBytes(1)),
            (&[1, 1, 0, 9], DecodeError::TrailingBytes(1)),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                Message::decode(Bytes::copy_from_slice(bytes)).as_ref(),
                Err(want),
                "{bytes:?}"
            );
        }
    }

    fn any_message() -> impl Strategy<Value = Message> {
        let payload = proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
        prop_oneof![
            payload
                .clone()
                .prop_map(|p| Message::Sync(SyncMessage::Step1(p))),
            payload
                .clone()
                .prop_map(|p| Message::Sync(SyncMessage::Step2(p))),
            payload
                .clone()
                .prop_map(|p| Message::Sync(SyncMessage::Update(p))),
            payload.prop_map(Message::Awareness),
            ".{0,40}".prop_map(Message::AuthDenied),
            Just(Message::QueryAwareness),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(msg in any_message()) {
            let frame = msg.encode();
            prop_assert_eq!(frame.len(), msg.encoded_len());
            prop_assert_eq!(Message::decode(frame), Ok(msg));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(Bytes::from(bytes));
        }
    }
}
