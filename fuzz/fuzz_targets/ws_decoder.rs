//! The RFC 6455 decoder fed the same bytes whole and split at arbitrary points must say the same
//! thing: the same events in the same order, then the same error (or the same unconsumed tail).
//! Also: what a reader reserves for an incomplete frame (`Decoder::frame_len` of the tail) stays
//! within the limit (or 125 bytes for a control frame), and no message exceeds it.
//!
//! Input layout: byte 0 picks the limit, byte 1 the number of split points (0..=15), then two
//! bytes per split point (an offset into the stream, modulo its length + 1), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ripple_proto::ws::{Decoder, Event, WsError};

/// Header of the longest frame: 2 + 8 (length) + 4 (mask).
const MAX_HEADER: u64 = 14;

struct Outcome {
    events: Vec<Event>,
    /// The error, or the bytes left unconsumed.
    end: Result<Vec<u8>, WsError>,
}

fn check_events(events: &[Event], limit: usize) {
    for e in events {
        match e {
            Event::Binary(b) => assert!(b.len() <= limit, "message over limit"),
            Event::Text(b) => {
                assert!(b.len() <= limit, "message over limit");
                assert!(std::str::from_utf8(b).is_ok(), "text is not UTF-8");
            }
            Event::Ping(b) => assert!(b.len() <= 125, "ping payload over 125"),
            Event::Pong => {}
            Event::Close(reason) => {
                if let Some((_, r)) = reason {
                    assert!(r.len() <= 123, "close reason over 123 bytes");
                }
            }
        }
    }
}

fn check_tail(tail: &[u8], limit: usize) {
    if let Some(n) = Decoder::frame_len(tail) {
        assert!(
            n <= MAX_HEADER.saturating_add(limit.max(125) as u64),
            "incomplete frame would reserve {n} bytes, limit {limit}"
        );
        assert!(n > tail.len() as u64, "a whole frame was left unconsumed");
    }
}

fn whole(limit: usize, stream: &[u8]) -> Outcome {
    let mut d = Decoder::new(limit);
    let mut events = Vec::new();
    let end = d.feed(stream, &mut events).map(|used| {
        assert!(used <= stream.len());
        stream[used..].to_vec()
    });
    Outcome { events, end }
}

fn split(limit: usize, stream: &[u8], mut points: Vec<usize>) -> Outcome {
    points.push(stream.len());
    points.sort_unstable();
    let mut d = Decoder::new(limit);
    let mut events = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut last = 0;
    for p in points {
        pending.extend_from_slice(&stream[last..p]);
        last = p;
        match d.feed(&pending, &mut events) {
            Ok(used) => {
                assert!(used <= pending.len());
                pending.drain(..used);
                check_tail(&pending, limit);
            }
            Err(e) => {
                return Outcome {
                    events,
                    end: Err(e),
                }
            }
        }
    }
    Outcome {
        events,
        end: Ok(pending),
    }
}

fuzz_target!(|data: &[u8]| {
    let [lim, n, rest @ ..] = data else {
        return;
    };
    // Small limits reach the size checks; a few large ones let real frames through.
    let limit = match lim >> 6 {
        0 => usize::from(*lim & 0x3f),
        1 => 125 + usize::from(*lim & 0x3f),
        2 => 1 << 16,
        _ => usize::MAX,
    };
    let n = usize::from(n & 0x0f);
    if rest.len() < 2 * n {
        return;
    }
    let (cuts, stream) = rest.split_at(2 * n);
    let points: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();

    let _ = Decoder::frame_len(stream);
    let a = whole(limit, stream);
    check_events(&a.events, limit);
    if let Ok(tail) = &a.end {
        check_tail(tail, limit);
    }
    if let Err(e) = &a.end {
        let _ = e.close_code();
        let _ = e.to_string();
    }
    let b = split(limit, stream, points);
    assert_eq!(a.events, b.events, "events differ between whole and split");
    assert_eq!(a.end, b.end, "outcome differs between whole and split");
});
