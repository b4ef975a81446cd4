//! `LinkFrame::decode` (the node-to-node link, `ripple_proto::link`) on arbitrary bytes never
//! panics; whatever decodes re-encodes to bytes that decode to the same frame, and encodes to
//! itself again. (A peer node is authenticated, but its bytes are still untrusted input.)
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ripple_proto::link::LinkFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = LinkFrame::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let bytes = frame.encode();
    let again = LinkFrame::decode(bytes.clone()).expect("an encoded frame decodes");
    assert_eq!(again, frame, "encode -> decode is not the identity");
    assert_eq!(again.encode(), bytes, "encoding is not stable");
});
