//! Decode work is bounded by a message's size: payloads whose declared counts (clients, blocks,
//! values, map entries, deleted ranges, awareness entries) cannot fit in their bytes close only
//! their sender with 1002, and the server allocates no more for them than for a normal message.
//! The server runs in this process, so a counting allocator sees every byte it reserves.

mod common;

use std::alloc::System;

use bytes::Bytes;
use ripple_proto::{Message, SyncMessage};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

use common::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes the process asked the allocator for so far (attempts that fail count too). The
/// difference across a call bounds the peak of what it held.
fn requested() -> isize {
    GLOBAL.stats().bytes_allocated as isize
}

/// The counter is process-wide: tests in this file take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Most bytes the whole process may request while one crafted message is handled (the client
/// and the server both live in this process): a normal small message costs a few KiB; the bombs
/// asked for hundreds of MB.
const BOUND: isize = 4 << 20;

/// Declared counts to try: the sizes measured in the issue, and the largest varints.
const COUNTS: [u64; 4] = [100_000_000, 400_000_000, u32::MAX as u64, u64::MAX];

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn cat(parts: &[&[u8]]) -> Bytes {
    Bytes::from(parts.concat())
}

/// Every crafted payload, named, for count `n`.
fn bombs(n: u64) -> Vec<(String, Message)> {
    let n = varint(n);
    let step1 = |p: Bytes| Message::Sync(SyncMessage::Step1(p));
    let step2 = |p: Bytes| Message::Sync(SyncMessage::Step2(p));
    let update = |p: Bytes| Message::Sync(SyncMessage::Update(p));
    // One client, one item with no origin in root "a", holding an Any value `tag` + count.
    let any_item = |tag: u8| cat(&[&[1, 1, 9, 0, 8, 1, 1, b'a', 1, tag], &n, &[126, 0]]);
    vec![
        ("state vector entries".into(), step1(cat(&[&n, &[1, 1]]))),
        (
            "update clients (step 2)".into(),
            step2(cat(&[&n, &[0, 1, 0, 0]])),
        ),
        ("update clients".into(), update(cat(&[&n, &[0, 1, 0, 0]]))),
        ("client blocks".into(), update(cat(&[&[1], &n, &[1, 0, 0]]))),
        ("any array".into(), update(any_item(117))),
        ("any map".into(), update(any_item(118))),
        (
            "delete-set clients".into(),
            update(cat(&[&[0], &n, &[1, 1]])),
        ),
        (
            "deleted ranges".into(),
            update(cat(&[&[0, 1, 7], &n, &[1, 1]])),
        ),
        (
            "awareness entries".into(),
            Message::Awareness(cat(&[&n, &[1, 1, 0]])),
        ),
    ]
}

/// Sends `msg` from a fresh connection in `room` and returns (close code, reason, bytes the
/// process requested from the allocator until the close).
async fn send_bomb(server: &TestServer, room: &str, msg: Message) -> (u16, String, isize) {
    let mut c = server.client(room).await;
    let before = requested();
    c.send(msg).expect("send");
    let (code, reason) = c.wait_closed(WAIT).await.expect("closed");
    (code, reason, requested() - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_counts_close_only_the_sender_and_allocate_nothing_big() {
    let _turn = SERIAL.lock().await;
    let server = start(test_config()).await;
    let room = "bombs";
    let mut bystander = server.client(room).await;
    for n in COUNTS {
        for (name, msg) in bombs(n) {
            let (code, reason, cost) = send_bomb(&server, room, msg).await;
            assert_eq!(code, 1002, "{name} ({n}): closed with {code} {reason}");
            assert!(
                cost < BOUND,
                "{name} ({n}): {cost} bytes requested while handling it"
            );
        }
    }
    // The room and its other member carried on.
    let writer = server.client(room).await;
    insert_text(&writer, 0, "still here");
    wait_text(&mut bystander, "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_values_are_refused_without_recursing() {
    let _turn = SERIAL.lock().await;
    let server = start(test_config()).await;
    // 50,000 nested arrays in 100 KB: yrs' recursive decoder would overflow the stack of the
    // thread running the room (aborting the process) before noticing anything.
    let mut payload = vec![1, 1, 9, 0, 8, 1, 1, b'a', 1];
    for _ in 0..50_000 {
        payload.extend([117, 1]);
    }
    payload.extend([126, 0]);
    let msg = Message::Sync(SyncMessage::Update(Bytes::from(payload)));
    let (code, reason, _) = send_bomb(&server, "deep", msg).await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("deeper"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_start_marker_reserves_nothing_before_the_chunks_arrive() {
    use tokio_tungstenite::tungstenite::Message as Ws;
    let _turn = SERIAL.lock().await;
    let server = start(test_config()).await;
    let limit = test_config().max_message_bytes;
    let mut c = server.client("announce").await;
    let before = requested();
    // A marker announcing the whole limit, one small chunk, then an end marker that does not
    // match: the close proves the server handled all three, in order.
    let marker = |kind: &str| {
        format!(r#"y-pk-batch#{{"id":"x","type":"{kind}","size":{limit},"count":32}}"#)
    };
    c.send_raw(Ws::text(marker("start"))).expect("send");
    c.send_raw(Ws::binary(vec![7u8; 1000])).expect("send");
    c.send_raw(Ws::text(marker("end"))).expect("send");
    let (code, reason) = c.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1003, "{reason}");
    let cost = requested() - before;
    assert!(cost < BOUND, "a start marker cost {cost} bytes");
}
