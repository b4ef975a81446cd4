//! `hocuspocus::Frame::decode` on arbitrary bytes never panics; whatever decodes re-encodes to a
//! frame that decodes to the same thing, is no longer than the input (varints are minimal, bytes
//! after an Auth token are dropped, a SyncStatus other than 1 is written as 0) and encodes to
//! itself again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ripple_proto::hocuspocus::Frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let bytes = frame.encode();
    assert!(bytes.len() <= data.len(), "encoding grew");
    let again = Frame::decode(bytes.clone()).expect("an encoded frame decodes");
    assert_eq!(again, frame, "encode -> decode is not the identity");
    assert_eq!(again.encode(), bytes, "encoding is not stable");
});
