//! lib0 primitives used by the y-protocols: variable-length unsigned integers and length-prefixed
//! byte arrays and strings.

use bytes::{BufMut, Bytes};

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ended in the middle of a value.
    #[error("frame ends in the middle of a value")]
    UnexpectedEnd,
    /// A variable-length integer is longer than lib0 allows (53 bits).
    #[error("variable-length integer overflows 53 bits")]
    VarIntOverflow,
    /// A message type byte we do not know.
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    /// A sync sub-type we do not know.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    /// Bytes left after a complete message (y-websocket sends one message per frame).
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// A string is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A y-pk-batch marker or sequence is malformed.
    #[error("bad y-pk-batch message: {0}")]
    Batch(String),
    /// A node-to-node link frame is malformed.
    #[error("bad link frame: {0}")]
    Link(String),
    /// A reassembled or single message exceeds the size limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The size seen (or announced).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// The largest integer lib0 encodes (JavaScript's `Number.MAX_SAFE_INTEGER`).
const MAX_SAFE: u64 = (1 << 53) - 1;

/// A cursor over a frame.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn var_uint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = *self.buf.get(self.pos).ok_or(DecodeError::UnexpectedEnd)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if value > MAX_SAFE {
                return Err(DecodeError::VarIntOverflow);
            }
            if byte < 0x80 {
                return Ok(value);
            }
            shift += 7;
            if shift > 49 {
                return Err(DecodeError::VarIntOverflow);
            }
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.buf.get(self.pos).ok_or(DecodeError::UnexpectedEnd)?;
        self.pos += 1;
        Ok(byte)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn var_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.var_uint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::UnexpectedEnd)?;
        if len > self.remaining() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    pub(crate) fn var_string(&mut self) -> Result<String, DecodeError> {
        let raw = self.var_bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

pub(crate) fn put_var_uint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

pub(crate) fn put_var_bytes(out: &mut impl BufMut, data: &[u8]) {
    put_var_uint(out, data.len() as u64);
    out.put_slice(data);
}

pub(crate) fn var_uint_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(v: u64) -> u64 {
        let mut out = Vec::new();
        put_var_uint(&mut out, v);
        assert_eq!(out.len(), var_uint_len(v));
        let mut r = Reader::new(Bytes::from(out));
        let got = r.var_uint().expect("decodes");
        assert_eq!(r.remaining(), 0);
        got
    }

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        put_var_uint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(roundtrip(0), 0);
        assert_eq!(roundtrip(MAX_SAFE), MAX_SAFE);
    }

    #[test]
    fn truncated_and_overflowing_varints_are_errors() {
        let mut r = Reader::new(Bytes::from_static(&[0x80]));
        assert_eq!(r.var_uint(), Err(DecodeError::UnexpectedEnd));
        let mut r = Reader::new(Bytes::from_static(&[0xff; 12]));
        assert_eq!(r.var_uint(), Err(DecodeError::VarIntOverflow));
    }

    proptest! {
        #[test]
        fn varuint_roundtrips(v in 0u64..=MAX_SAFE) {
            prop_assert_eq!(roundtrip(v), v);
        }
    }
}
