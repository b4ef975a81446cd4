//! A room protects itself from one client's update: a document size cap, and a guard around
//! the CRDT library that rebuilds the document if it panics. Either way only the sender is
//! closed; the others carry on and nothing stored or acknowledged is lost.

mod common;

use bytes::Bytes;
use ripple_core::room::PANIC_PILL;
use ripple_proto::{Message, SyncMessage};

use common::*;

#[tokio::test]
async fn an_update_past_the_document_cap_closes_only_its_sender() {
    let config = ripple_server::Config {
        max_doc_bytes: 20_000,
        ..test_config()
    };
    let server = start(config).await;
    let room = "capped";
    let writer = server.client(room).await;
    let mut peer = server.client(room).await;
    insert_text(&writer, 0, &"a".repeat(10_000));
    wait_text(&mut peer, &"a".repeat(10_000)).await;

    let mut big = server.client(room).await;
    insert_text(&big, 0, &"b".repeat(15_000));
    let (code, reason) = big.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("size limit of 20000"), "{reason}");
    assert_eq!(server.stat(|s| &s.doc_limit_refusals), 1);

    // The others carry on: a small edit goes through, and the refused one never arrived
    // before it (frames of a room reach a client in order).
    insert_text(&writer, 0, "c");
    let want = format!("c{}", "a".repeat(10_000));
    wait_text(&mut peer, &want).await;
    let fresh = server.client(room).await;
    assert_eq!(
        text(&fresh),
        want,
        "nothing of the refused update was stored"
    );
}

#[tokio::test]
async fn a_panic_while_applying_closes_only_the_sender_and_rebuilds_the_document() {
    let server = start(test_config()).await;
    let room = "panics";
    let writer = server.client(room).await;
    let mut peer = server.client(room).await;
    insert_text(&writer, 0, "hello");
    wait_text(&mut peer, "hello").await;

    let mut bad = server.client(room).await;
    bad.send(Message::Sync(SyncMessage::Update(Bytes::from_static(
        PANIC_PILL,
    ))))
    .expect("send");
    let (code, reason) = bad.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("panicked"), "{reason}");
    server
        .wait_stat("rebuilt", |s| &s.room_rebuilds, |n| n == 1)
        .await;

    // Same room, same connections: edits flow both ways and joiners see everything.
    insert_text(&writer, 5, " world");
    wait_text(&mut peer, "hello world").await;
    insert_text(&peer, 0, ">");
    let mut writer = writer;
    wait_text(&mut writer, ">hello world").await;
    let fresh = server.client(room).await;
    assert_eq!(text(&fresh), ">hello world");
}

#[tokio::test]
async fn without_storage_a_panic_resets_the_room_and_clients_bring_their_state_back() {
    let config = ripple_server::Config {
        persist: ripple_server::PersistMode::None,
        ..test_config()
    };
    let server = start(config).await;
    let room = "panics-none";
    let mut writer = server.client(room).await;
    insert_text(&writer, 0, "kept by the client");
    let mut bad = server.client(room).await;
    wait_text(&mut bad, "kept by the client").await;
    bad.send(Message::Sync(SyncMessage::Update(Bytes::from_static(
        PANIC_PILL,
    ))))
    .expect("send");
    let (code, _) = bad.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1002);
    let (code, reason) = writer.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1011, "{reason}");
    // The writer reconnects with its document (as y-websocket does) and syncs it back.
    let mut back = ripple_client::Client::connect_with(&server.url(room), writer.doc().clone())
        .await
        .expect("reconnect");
    back.synced(WAIT).await.expect("synced");
    let mut fresh = server.client(room).await;
    wait_text(&mut fresh, "kept by the client").await;
}
