//! Awareness updates (y-protocols/awareness): a list of `(client id, clock, state JSON)` entries.
//!
//! The server does not interpret the state JSON; it only needs the ids and clocks to keep the
//! latest state per client, to know which ids a connection introduced, and to announce their
//! removal (`state = null`) when that connection goes away.

use bytes::{Bytes, BytesMut};

use crate::lib0::{put_var_bytes, put_var_uint, DecodeError, Reader};

/// One entry of an awareness update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    /// The Yjs client id the state belongs to.
    pub client_id: u64,
    /// Grows with every change of that client's state.
    pub clock: u64,
    /// The state as JSON text; `"null"` means the client is gone.
    pub state: String,
}

impl AwarenessEntry {
    /// Whether this entry removes the client (`state` is JSON `null`).
    pub fn is_removal(&self) -> bool {
        self.state == "null"
    }
}

/// Parses an awareness update payload (the bytes inside a [`crate::Message::Awareness`]).
pub fn decode_update(payload: Bytes) -> Result<Vec<AwarenessEntry>, DecodeError> {
    let mut r = Reader::new(payload);
    let count = r.var_uint()?;
    // Each entry takes at least 3 bytes; refuse counts the payload cannot hold before allocating.
    if count > (r.remaining() / 3) as u64 {
        return Err(DecodeError::UnexpectedEnd);
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let client_id = r.var_uint()?;
        let clock = r.var_uint()?;
        let state = r.var_string()?;
        entries.push(AwarenessEntry {
            client_id,
            clock,
            state,
        });
    }
    r.finish()?;
    Ok(entries)
}

/// Encodes entries as an awareness update payload.
pub fn encode_update<'a>(entries: impl IntoIterator<Item = (u64, u64, &'a str)>) -> Bytes {
    let entries: Vec<_> = entries.into_iter().collect();
    let mut out = BytesMut::new();
    put_var_uint(&mut out, entries.len() as u64);
    for (client_id, clock, state) in entries {
        put_var_uint(&mut out, client_id);
        put_var_uint(&mut out, clock);
        put_var_bytes(&mut out, state.as_bytes());
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let payload = encode_update([(7, 1, r#"{"user":"a"}"#), (9, 4, "null")]);
        let entries = decode_update(payload).expect("decodes");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].client_id, 7);
        assert_eq!(entries[0].state, r#"{"user":"a"}"#);
        assert!(!entries[0].is_removal());
        assert!(entries[1].is_removal());
        assert_eq!(entries[1].clock, 4);
    }

    #[test]
    fn huge_count_is_refused_without_allocating() {
        // count = 2^40 with nothing behind it
        let payload = Bytes::from_static(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
        assert_eq!(decode_update(payload), Err(DecodeError::UnexpectedEnd));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let payload = Bytes::from_static(&[1, 1, 1, 1, 0xff]);
        assert_eq!(decode_update(payload), Err(DecodeError::InvalidUtf8));
    }
}
