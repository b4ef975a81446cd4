//! `Message::decode` on arbitrary bytes never panics; whatever decodes re-encodes to a frame that
//! decodes to the same message, is no longer than the input (the encoding is canonical: minimal
//! varints), and encodes to itself again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ripple_proto::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let frame = msg.encode();
    assert!(
        frame.len() <= data.len(),
        "canonical encoding is longer than the input"
    );
    let again = Message::decode(frame.clone()).expect("an encoded message decodes");
    assert_eq!(again, msg, "encode -> decode is not the identity");
    assert_eq!(again.encode(), frame, "encoding is not stable");
});
