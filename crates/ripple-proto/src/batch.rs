//! Reassembly of y-partykit's chunked messages.
//!
//! y-partykit's client splits any message over 1,000,000 bytes: a text frame
//! `y-pk-batch#{"id":..,"type":"start","size":TOTAL,"count":CHUNKS}`, then CHUNKS binary frames,
//! then `y-pk-batch#{"id":..,"type":"end","size":TOTAL,"count":CHUNKS}`. [`Reassembler`] is the
//! per-connection state machine that turns that back into one message, bounded by a size limit
//! that is checked against the announced size *before* any chunk is buffered.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::lib0::DecodeError;

const SENTINEL: &str = "y-pk-batch#";

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum MarkerType {
    Start,
    End,
}

#[derive(Debug, Deserialize)]
struct Marker {
    id: String,
    #[serde(rename = "type")]
    kind: MarkerType,
    size: u64,
    count: u64,
}

#[derive(Debug)]
struct Pending {
    id: String,
    size: usize,
    count: usize,
    received: usize,
    buf: BytesMut,
}

/// Per-connection reassembly state.
#[derive(Debug)]
pub struct Reassembler {
    limit: usize,
    /// Boxed: a reassembler sits in every connection, a batch in progress in few.
    pending: Option<Box<Pending>>,
}

fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError::Batch(msg.into())
}

impl Reassembler {
    /// A reassembler that refuses messages larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            pending: None,
        }
    }

    /// Whether a chunked message is in progress.
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Feeds a binary frame. Returns the frame itself when no batch is open, or `None` while a
    /// batch is collecting chunks.
    pub fn binary(&mut self, frame: Bytes) -> Result<Option<Bytes>, DecodeError> {
        let Some(p) = self.pending.as_mut() else {
            if frame.len() > self.limit {
                return Err(DecodeError::TooLarge {
                    size: frame.len(),
                    limit: self.limit,
                });
            }
            return Ok(Some(frame));
        };
        p.received += 1;
        if p.received > p.count || p.buf.len() + frame.len() > p.size {
            return Err(bad("more data than the start marker announced"));
        }
        p.buf.extend_from_slice(&frame);
        Ok(None)
    }

    /// Feeds a text frame: only y-pk-batch markers are valid. Returns the reassembled message
    /// on a matching end marker.
    pub fn text(&mut self, text: &str) -> Result<Option<Bytes>, DecodeError> {
        let json = text
            .strip_prefix(SENTINEL)
            .ok_or_else(|| bad("text frame is not a y-pk-batch marker"))?;
        let marker: Marker =
            serde_json::from_str(json).map_err(|e| bad(format!("marker is not valid: {e}")))?;
        match marker.kind {
            MarkerType::Start => {
                if self.pending.is_some() {
                    return Err(bad("start marker inside an open batch"));
                }
                let size = usize::try_from(marker.size).unwrap_or(usize::MAX);
                if size > self.limit {
                    return Err(DecodeError::TooLarge {
                        size,
                        limit: self.limit,
                    });
                }
                let count = usize::try_from(marker.count).unwrap_or(usize::MAX);
                if count == 0 || count > size.max(1) {
                    return Err(bad("chunk count does not fit the size"));
                }
                self.pending = Some(Box::new(Pending {
                    id: marker.id,
                    size,
                    count,
                    received: 0,
                    // Grows with what arrives, not with what the marker announces: a start
                    // marker of a few dozen bytes must not reserve the size limit.
                    buf: BytesMut::new(),
                }));
                Ok(None)
            }
            MarkerType::End => {
                let p = self
                    .pending
                    .take()
                    .ok_or_else(|| bad("end marker without a start"))?;
                if marker.id != p.id
                    || marker.count as usize != p.count
                    || marker.size as usize != p.size
                {
                    return Err(bad("end marker does not match the start marker"));
                }
                if p.received != p.count || p.buf.len() != p.size {
                    return Err(bad(format!(
                        "received {} chunks / {} bytes, announced {} / {}",
                        p.received,
                        p.buf.len(),
                        p.count,
                        p.size
                    )));
                }
                Ok(Some(p.buf.freeze()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(kind: &str, size: usize, count: usize) -> String {
        format!(r#"y-pk-batch#{{"id":"abc","type":"{kind}","size":{size},"count":{count}}}"#)
    }

    #[test]
    fn reassembles_chunks() {
        let mut r = Reassembler::new(100);
        assert_eq!(r.text(&marker("start", 5, 2)), Ok(None));
        assert_eq!(r.binary(Bytes::from_static(b"abc")), Ok(None));
        assert_eq!(r.binary(Bytes::from_static(b"de")), Ok(None));
        assert_eq!(
            r.text(&marker("end", 5, 2)),
            Ok(Some(Bytes::from_static(b"abcde")))
        );
        assert!(!r.in_progress());
        // Plain frames pass through.
        assert_eq!(
            r.binary(Bytes::from_static(b"x")),
            Ok(Some(Bytes::from_static(b"x")))
        );
    }

    #[test]
    fn refuses_oversized_announcements_before_buffering() {
        let mut r = Reassembler::new(10);
        assert!(matches!(
            r.text(&marker("start", 11, 1)),
            Err(DecodeError::TooLarge {
                size: 11,
                limit: 10
            })
        ));
        assert!(matches!(
            r.binary(Bytes::from(vec![0; 11])),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_start_marker_reserves_nothing_before_chunks_arrive() {
        let mut r = Reassembler::new(32 << 20);
        r.text(&marker("start", 32 << 20, 32)).expect("start");
        let pending = r.pending.as_ref().expect("open");
        assert_eq!(pending.buf.capacity(), 0);
        r.binary(Bytes::from(vec![7; 1000])).expect("chunk");
        let pending = r.pending.as_ref().expect("open");
        assert!(pending.buf.capacity() < 4096, "{}", pending.buf.capacity());
    }

    #[test]
    fn refuses_inconsistent_batches() {
        let mut r = Reassembler::new(100);
        assert!(r.text("hello").is_err());
        assert!(r.text("y-pk-batch#{not json").is_err());
        assert!(r.text(&marker("end", 1, 1)).is_err());

        let mut r = Reassembler::new(100);
        r.text(&marker("start", 4, 1)).expect("start");
        assert!(r.binary(Bytes::from_static(b"12345")).is_err());

        let mut r = Reassembler::new(100);
        r.text(&marker("start", 4, 2)).expect("start");
        r.binary(Bytes::from_static(b"12")).expect("chunk");
        assert!(r.text(&marker("end", 4, 2)).is_err(), "missing chunk");
    }
}
