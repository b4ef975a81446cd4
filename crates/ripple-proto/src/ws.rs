//! The server side of WebSocket framing (RFC 6455, no extensions) as a pure codec.
//!
//! [`Decoder`] turns the bytes a client sent into [`Event`]s: whole messages (fragments
//! reassembled), pings, pongs and close frames. It enforces what a server must: client frames
//! are masked, reserved bits are zero, control frames are short and unfragmented, text is UTF-8,
//! and no message exceeds the size limit (checked on each frame's header, before its payload is
//! buffered). Each violation is a [`WsError`] that names the close code to send.
//!
//! [`Head`] is the header of a server frame (never masked). A broadcast is framed once: the
//! header is a few bytes next to the shared payload, so sending one update to many sockets
//! copies nothing.

use bytes::Bytes;

/// Frame opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text message.
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// A protocol violation by the client, and the close code it earns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// RSV1-3 set without a negotiated extension.
    #[error("reserved bits set in a frame header")]
    ReservedBits,
    /// Clients must mask every frame.
    #[error("unmasked client frame")]
    Unmasked,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// Control frames carry at most 125 bytes and are never fragmented.
    #[error("control frame too long or fragmented")]
    BadControl,
    /// A continuation with no message open, or a new message while one is open.
    #[error("fragments out of order")]
    BadFragmentation,
    /// The message (or a frame of it) exceeds the limit.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced or accumulated size.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// A text message or close reason that is not UTF-8.
    #[error("text is not valid UTF-8")]
    BadUtf8,
    /// A close frame with one byte of payload or an invalid code.
    #[error("malformed close frame")]
    BadClose,
}

impl WsError {
    /// The close code RFC 6455 assigns to this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooLarge { .. } => 1009,
            WsError::BadUtf8 => 1007,
            _ => 1002,
        }
    }
}

/// What a client said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole binary message.
    Binary(Bytes),
    /// A whole text message (valid UTF-8).
    Text(Bytes),
    /// A ping; answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame: code and reason, if it had any.
    Close(Option<(u16, String)>),
}

/// A message being assembled from fragments.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: Vec<u8>,
}

/// Per-connection decoding state: holds only a fragmented message in progress.
#[derive(Debug)]
pub struct Decoder {
    limit: usize,
    partial: Option<Box<Partial>>,
}

/// A parsed frame header.
struct FrameHead {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: u64,
}

/// Parses a client frame header; `None` if `buf` does not hold all of it yet.
fn parse_head(buf: &[u8]) -> Result<Option<FrameHead>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Unmasked);
    }
    let (payload_len, ext) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 2)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut n = [0u8; 8];
            n.copy_from_slice(b);
            (u64::from_be_bytes(n), 8)
        }
        n => (u64::from(n), 0),
    };
    let header_len = 2 + ext + 4;
    let Some(m) = buf.get(2 + ext..header_len) else {
        return Ok(None);
    };
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask: [m[0], m[1], m[2], m[3]],
        header_len,
        payload_len,
    }))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

impl Decoder {
    /// A decoder that refuses messages over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            partial: None,
        }
    }

    /// Decodes every whole frame at the start of `buf`, pushing events to `out`. Returns how
    /// many bytes it consumed; the rest is an incomplete frame to feed again with more bytes.
    /// After an error the connection must be closed with [`WsError::close_code`].
    pub fn feed(&mut self, buf: &[u8], out: &mut Vec<Event>) -> Result<usize, WsError> {
        let mut used = 0;
        while let Some(n) = self.frame(&buf[used..], out)? {
            used += n;
        }
        Ok(used)
    }

    /// How many bytes the frame at the start of `buf` needs in all, once its header is in; lets
    /// a reader reserve room for a large frame at once.
    pub fn frame_len(buf: &[u8]) -> Option<u64> {
        match parse_head(buf) {
            Ok(Some(h)) => Some((h.header_len as u64).saturating_add(h.payload_len)),
            _ => None,
        }
    }

    /// Decodes one frame; `None` if it is incomplete.
    fn frame(&mut self, buf: &[u8], out: &mut Vec<Event>) -> Result<Option<usize>, WsError> {
        let Some(h) = parse_head(buf)? else {
            return Ok(None);
        };
        let control = h.opcode & 0x8 != 0;
        if control {
            if !h.fin || h.payload_len > 125 {
                return Err(WsError::BadControl);
            }
        } else {
            let open = self.partial.as_ref().map_or(0, |p| p.data.len() as u64);
            let size = open.saturating_add(h.payload_len);
            if size > self.limit as u64 {
                return Err(WsError::TooLarge {
                    size,
                    limit: self.limit,
                });
            }
        }
        // Bounded by 125 or by the limit above; a limit near usize::MAX still needs the end of
        // the frame to be addressable.
        let Some(total) = usize::try_from(h.payload_len)
            .ok()
            .and_then(|len| len.checked_add(h.header_len))
        else {
            return Err(WsError::TooLarge {
                size: h.payload_len,
                limit: self.limit,
            });
        };
        let Some(raw) = buf.get(h.header_len..total) else {
            return Ok(None);
        };
        let mut payload = raw.to_vec();
        unmask(&mut payload, h.mask);
        match h.opcode {
            opcode::PING => out.push(Event::Ping(payload.into())),
            opcode::PONG => out.push(Event::Pong),
            opcode::CLOSE => out.push(Event::Close(parse_close(&payload)?)),
            opcode::TEXT | opcode::BINARY => {
                if self.partial.is_some() {
                    return Err(WsError::BadFragmentation);
                }
                let text = h.opcode == opcode::TEXT;
                if h.fin {
                    out.push(message(text, payload)?);
                } else {
                    self.partial = Some(Box::new(Partial {
                        text,
                        data: payload,
                    }));
                }
            }
            opcode::CONTINUATION => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(WsError::BadFragmentation);
                };
                p.data.extend_from_slice(&payload);
                if h.fin {
                    if let Some(p) = self.partial.take() {
                        out.push(message(p.text, p.data)?);
                    }
                }
            }
            other => return Err(WsError::UnknownOpcode(other)),
        }
        Ok(Some(total))
    }
}

fn message(text: bool, data: Vec<u8>) -> Result<Event, WsError> {
    if text {
        if std::str::from_utf8(&data).is_err() {
            return Err(WsError::BadUtf8);
        }
        Ok(Event::Text(data.into()))
    } else {
        Ok(Event::Binary(data.into()))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::BadClose),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(WsError::BadClose);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::BadUtf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// The header of a server frame: final, unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    bytes: [u8; 10],
    len: u8,
}

impl Head {
    /// The header of a final frame with `opcode` and `payload_len` bytes of payload.
    pub fn new(opcode: u8, payload_len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | (opcode & 0x0f);
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(n) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&n.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The payload of a close frame: code, then the reason cut to fit 125 bytes (at a char
/// boundary).
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let head = Head::new(opcode, payload.len());
        let mut out = head.as_bytes().to_vec();
        if !fin {
            out[0] &= 0x7f;
        }
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    fn decode_all(limit: usize, bytes: &[u8]) -> Result<(Vec<Event>, usize), WsError> {
        let mut d = Decoder::new(limit);
        let mut out = Vec::new();
        let used = d.feed(bytes, &mut out)?;
        Ok((out, used))
    }

    #[test]
    fn header_lengths_cover_all_three_encodings() {
        assert_eq!(Head::new(opcode::BINARY, 0).as_bytes(), &[0x82, 0]);
        assert_eq!(Head::new(opcode::BINARY, 125).as_bytes(), &[0x82, 125]);
        assert_eq!(
            Head::new(opcode::BINARY, 126).as_bytes(),
            &[0x82, 126, 0, 126]
        );
        assert_eq!(
            Head::new(opcode::BINARY, 70_000).as_bytes(),
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn masked_frames_of_every_length_class_decode() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = client_frame(true, opcode::BINARY, &payload, [1, 2, 3, 4]);
            let (events, used) = decode_all(1 << 20, &frame).expect("decodes");
            assert_eq!(used, frame.len());
            assert_eq!(events, vec![Event::Binary(payload.into())]);
        }
    }

    #[test]
    fn fragments_reassemble_around_control_frames() {
        let mut bytes = client_frame(false, opcode::BINARY, b"hel", [9, 9, 9, 9]);
        bytes.extend(client_frame(true, opcode::PING, b"p", [1, 1, 1, 1]));
        bytes.extend(client_frame(
            false,
            opcode::CONTINUATION,
            b"lo ",
            [2, 0, 2, 0],
        ));
        bytes.extend(client_frame(
            true,
            opcode::CONTINUATION,
            b"you",
            [0, 7, 0, 7],
        ));
        let (events, _) = decode_all(100, &bytes).expect("decodes");
        assert_eq!(
            events,
            vec![
                Event::Ping(Bytes::from_static(b"p")),
                Event::Binary(Bytes::from_static(b"hello you")),
            ]
        );
    }

    #[test]
    fn violations_map_to_their_close_codes() {
        let unmasked = {
            let mut f = Head::new(opcode::BINARY, 1).as_bytes().to_vec();
            f.push(0);
            f
        };
        let mut rsv = client_frame(true, opcode::BINARY, b"x", [0; 4]);
        rsv[0] |= 0x40;
        let long_ping = client_frame(true, opcode::PING, &[0; 126], [0; 4]);
        let split_ping = client_frame(false, opcode::PING, b"", [0; 4]);
        let stray = client_frame(true, opcode::CONTINUATION, b"x", [0; 4]);
        let mut nested = client_frame(false, opcode::BINARY, b"x", [0; 4]);
        nested.extend(client_frame(true, opcode::BINARY, b"y", [0; 4]));
        let bad_text = client_frame(true, opcode::TEXT, &[0xff, 0xfe], [0; 4]);
        let big = client_frame(true, opcode::BINARY, &[0; 11], [0; 4]);
        let mut big_in_parts = client_frame(false, opcode::BINARY, &[0; 6], [0; 4]);
        big_in_parts.extend(client_frame(true, opcode::CONTINUATION, &[0; 6], [0; 4]));
        let odd_close = client_frame(true, opcode::CLOSE, &[3], [0; 4]);
        let bad_code = client_frame(true, opcode::CLOSE, &1005u16.to_be_bytes(), [0; 4]);
        let unknown = client_frame(true, 0x3, b"", [0; 4]);
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked", unmasked, 1002),
            ("reserved bits", rsv, 1002),
            ("long ping", long_ping, 1002),
            ("fragmented ping", split_ping, 1002),
            ("stray continuation", stray, 1002),
            ("message inside a message", nested, 1002),
            ("bad utf-8", bad_text, 1007),
            ("over the limit", big, 1009),
            ("over the limit in fragments", big_in_parts, 1009),
            ("one-byte close", odd_close, 1002),
            ("reserved close code", bad_code, 1002),
            ("unknown opcode", unknown, 1002),
        ];
        for (name, bytes, code) in cases {
            let err = decode_all(10, &bytes).expect_err(name);
            assert_eq!(err.close_code(), code, "{name}: {err}");
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_on_its_header_alone() {
        let mut head = Head::new(opcode::BINARY, 5_000_000).as_bytes().to_vec();
        head[1] |= 0x80;
        head.extend_from_slice(&[0; 4]);
        assert!(matches!(
            decode_all(1 << 20, &head),
            Err(WsError::TooLarge {
                size: 5_000_000,
                ..
            })
        ));
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let frame = client_frame(true, opcode::CLOSE, &close_payload(4001, "bye"), [5; 4]);
        let (events, _) = decode_all(10, &frame).expect("decodes");
        assert_eq!(events, vec![Event::Close(Some((4001, "bye".into())))]);
        let empty = client_frame(true, opcode::CLOSE, b"", [5; 4]);
        assert_eq!(
            decode_all(10, &empty).expect("ok").0,
            vec![Event::Close(None)]
        );
        let long = "é".repeat(100);
        let payload = close_payload(1000, &long);
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    /// Found by fuzz/ws_decoder: with a limit of `usize::MAX` (`max_message_bytes` is any
    /// usize), a frame announcing 2^64 - 1 bytes passed the limit check and `header_len + len`
    /// overflowed.
    #[test]
    fn frame_longer_than_memory_is_too_large_even_without_a_limit() {
        let bytes = [
            0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
        ];
        let mut d = Decoder::new(usize::MAX);
        let err = d.feed(&bytes, &mut Vec::new()).expect_err("refused");
        assert_eq!(err.close_code(), 1009, "{err}");
        assert_eq!(Decoder::frame_len(&bytes), Some(u64::MAX));
    }

    proptest! {
        /// However the bytes are split into reads, the same events come out.
        #[test]
        fn any_split_of_a_stream_gives_the_same_events(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            mask in any::<[u8; 4]>(),
        ) {
            let mut stream = Vec::new();
            for m in &msgs {
                // Split each message into up to three fragments.
                let a = m.len() / 3;
                let b = 2 * m.len() / 3;
                stream.extend(client_frame(false, opcode::BINARY, &m[..a], mask));
                stream.extend(client_frame(false, opcode::CONTINUATION, &m[a..b], mask));
                stream.extend(client_frame(true, opcode::CONTINUATION, &m[b..], mask));
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(stream.len());
            points.sort_unstable();
            let mut d = Decoder::new(1 << 16);
            let mut events = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut last = 0;
            for p in points {
                pending.extend_from_slice(&stream[last..p]);
                last = p;
                let used = d.feed(&pending, &mut events).expect("valid stream");
                pending.drain(..used);
            }
            prop_assert!(pending.is_empty());
            let want: Vec<Event> = msgs.into_iter().map(|m| Event::Binary(m.into())).collect();
            prop_assert_eq!(events, want);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = Decoder::new(256);
            let mut out = Vec::new();
            let _ = d.feed(&bytes, &mut out);
        }
    }
}
