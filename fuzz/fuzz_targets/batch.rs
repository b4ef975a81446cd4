//! y-pk-batch reassembly fed a sequence of text and binary frames with a small limit: never
//! panics, never yields a message over the limit, and a batch that reassembles without an error
//! along the way yields exactly the chunks it was sent, in order, of the announced size.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ripple_proto::batch::Reassembler;

#[derive(Arbitrary, Debug)]
enum Frame {
    /// A well-formed marker (ids from a small set so start and end can match).
    Marker {
        start: bool,
        id: u8,
        size: u16,
        count: u16,
    },
    /// A marker with arbitrary JSON values (big numbers, negative, floats, strings).
    LooseMarker {
        start: bool,
        size: String,
        count: String,
        extra: bool,
    },
    /// Any text, with the sentinel or without.
    Text { sentinel: bool, body: String },
    /// A binary frame.
    Binary(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    limit: u8,
    frames: Vec<Frame>,
}

fn text_of(f: &Frame) -> Option<String> {
    Some(match f {
        Frame::Marker {
            start,
            id,
            size,
            count,
        } => format!(
            r#"y-pk-batch#{{"id":"{}","type":"{}","size":{size},"count":{count}}}"#,
            id % 3,
            if *start { "start" } else { "end" }
        ),
        Frame::LooseMarker {
            start,
            size,
            count,
            extra,
        } => format!(
            r#"y-pk-batch#{{"id":"0","type":"{}","size":{size},"count":{count}{}}}"#,
            if *start { "start" } else { "end" },
            if *extra { r#","x":[1]"# } else { "" }
        ),
        Frame::Text { sentinel, body } => {
            format!("{}{body}", if *sentinel { "y-pk-batch#" } else { "" })
        }
        Frame::Binary(_) => return None,
    })
}

fuzz_target!(|input: Input| {
    let limit = usize::from(input.limit);
    let mut r = Reassembler::new(limit);
    // What we fed since the last accepted start marker, if nothing failed since.
    let mut model: Option<Vec<u8>> = None;
    for f in &input.frames {
        let (out, from_batch) = match text_of(f) {
            Some(t) => {
                let was_open = r.in_progress();
                let res = r.text(&t);
                if !was_open && r.in_progress() {
                    model = Some(Vec::new());
                }
                (res, true)
            }
            None => {
                let Frame::Binary(b) = f else { unreachable!() };
                let open = r.in_progress();
                let res = r.binary(Bytes::copy_from_slice(b));
                match (&res, open) {
                    (Ok(Some(m)), _) => {
                        assert!(!open, "a binary frame passed through an open batch");
                        assert_eq!(&m[..], &b[..], "a plain frame was altered");
                    }
                    (Ok(None), true) => {
                        if let Some(m) = model.as_mut() {
                            m.extend_from_slice(b);
                        }
                    }
                    (Ok(None), false) => panic!("a plain frame was swallowed"),
                    (Err(_), _) => model = None,
                }
                (res, false)
            }
        };
        match out {
            Ok(Some(m)) => {
                assert!(m.len() <= limit, "yielded {} bytes, limit {limit}", m.len());
                if from_batch {
                    assert!(!r.in_progress(), "batch still open after its end");
                    if let Some(want) = model.take() {
                        assert_eq!(
                            &m[..],
                            &want[..],
                            "reassembled bytes differ from the chunks"
                        );
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = e.to_string();
                if from_batch {
                    model = None;
                }
            }
        }
    }
});
