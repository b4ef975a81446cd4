//! End-to-end tests: a real server on port 0, real WebSocket clients speaking y-websocket.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ripple_client::Client;
use ripple_core::room::Access;
use ripple_core::{BoxFuture, MemoryStore, RoomInfo, RoomKey, Store, StoreError, StoredRoom};
use ripple_proto::{Message, SyncMessage};
use ripple_server::auth::{Admission, Rejection, UpgradeRequest};
use ripple_server::{Authorize, Config};
use tokio_tungstenite::tungstenite::protocol::Message as WsMessage;

#[tokio::test]
async fn two_clients_converge_and_a_late_joiner_gets_everything() {
    let server = start(test_config()).await;
    let mut a = server.client("doc-1").await;
    let mut b = server.client("doc-1").await;
    insert_text(&a, 0, "hello");
    wait_text(&mut b, "hello").await;
    insert_text(&b, 5, " world");
    wait_text(&mut a, "hello world").await;
    drop(a);
    drop(b);
    let c = server.client("doc-1").await;
    assert_eq!(text(&c), "hello world");
    assert_eq!(server.stat(|s| &s.rooms_loaded), 1);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn party_paths_and_plain_paths_address_the_same_main_room() {
    let server = start(test_config()).await;
    let mut a = Client::connect(&server.party_url("main", "shared"))
        .await
        .expect("connect");
    a.synced(WAIT).await.expect("synced");
    let mut b = server.client("shared").await;
    insert_text(&a, 0, "x");
    wait_text(&mut b, "x").await;
    // Another party is another room.
    let mut other = Client::connect(&server.party_url("other", "shared"))
        .await
        .expect("connect");
    other.synced(WAIT).await.expect("synced");
    assert_eq!(text(&other), "");
}

#[tokio::test]
async fn rooms_sharing_a_prefix_are_isolated() {
    let server = start(test_config()).await;
    let doc = server.client("doc").await;
    let mut doc1 = server.client("doc-1").await;
    let mut doc10 = server.client("doc-10").await;
    insert_text(&doc, 0, "A");
    insert_text(&doc1, 0, "B");
    insert_text(&doc10, 0, "C");
    wait_text(&mut doc1, "B").await;
    wait_text(&mut doc10, "C").await;
    // doc-1's and doc-10's edits were written to every socket of their rooms before their
    // readers saw them; `doc`'s barrier echo comes after anything misrouted to it.
    let mut doc = doc;
    barrier(&mut doc).await;
    assert_eq!(text(&doc), "A");
    assert_eq!(text(&doc1), "B");
    assert_eq!(text(&doc10), "C");
}

#[tokio::test]
async fn awareness_is_echoed_propagated_and_cleaned_up_after_clean_and_abrupt_close() {
    let server = start(test_config()).await;
    let mut a = server.client("aw").await;
    let mut b = server.client("aw").await;
    let a_id = a.doc().client_id().get();
    a.set_awareness(r#"{"user":"a"}"#).expect("send");
    a.wait_for("echo", WAIT, |o, _| o.awareness.contains_key(&a_id))
        .await
        .expect("sender gets its own awareness echoed");
    b.wait_for("propagation", WAIT, |o, _| o.awareness.contains_key(&a_id))
        .await
        .expect("peer sees awareness");

    // Clean close.
    a.close();
    b.wait_for("removal", WAIT, |o, _| !o.awareness.contains_key(&a_id))
        .await
        .expect("removed after clean close");

    // Abrupt: dropping the client aborts its task and the TCP socket without a close frame.
    let mut c = server.client("aw").await;
    let c_id = c.doc().client_id().get();
    c.set_awareness(r#"{"user":"c"}"#).expect("send");
    b.wait_for("c", WAIT, |o, _| o.awareness.contains_key(&c_id))
        .await
        .expect("peer sees c");
    c.wait_for("c echo", WAIT, |o, _| o.awareness.contains_key(&c_id))
        .await
        .expect("echo");
    drop(c);
    b.wait_for("c removal", WAIT, |o, _| !o.awareness.contains_key(&c_id))
        .await
        .expect("removed after abrupt close");
}

#[tokio::test]
async fn new_connections_get_current_awareness_and_query_awareness_is_answered() {
    let server = start(test_config()).await;
    let mut a = server.client("q").await;
    let a_id = a.doc().client_id().get();
    a.set_awareness(r#"{"n":1}"#).expect("send");
    a.wait_for("echo", WAIT, |o, _| o.awareness.contains_key(&a_id))
        .await
        .expect("echo");
    let mut b = server.client("q").await;
    b.wait_for("greeting awareness", WAIT, |o, _| {
        o.awareness.contains_key(&a_id)
    })
    .await
    .expect("greeting carries awareness");
    drop(b);
    use futures_util::SinkExt;
    // A raw socket, to see the answer itself: after the greeting, a query gets one awareness
    // message carrying every state the room holds (here a's).
    let (mut raw, _) = tokio_tungstenite::connect_async(server.url("q"))
        .await
        .expect("connect");
    let mut greeting_awareness = false;
    while !greeting_awareness {
        match next_message(&mut raw).await {
            Message::Awareness(_) => greeting_awareness = true,
            Message::Sync(_) => {}
            other => panic!("unexpected greeting message {other:?}"),
        }
    }
    raw.send(WsMessage::Binary(Message::QueryAwareness.encode()))
        .await
        .expect("send query");
    let answer = loop {
        match next_message(&mut raw).await {
            Message::Awareness(payload) => break payload,
            // Our step 1 was never sent, so only the greeting's sync messages could precede.
            Message::Sync(_) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    };
    let entries = ripple_proto::awareness::decode_update(answer).expect("awareness update");
    let states: Vec<(u64, &str)> = entries
        .iter()
        .map(|e| (e.client_id, e.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![(a_id, r#"{"n":1}"#)],
        "the answer holds a's state"
    );
}

/// The next y-websocket message on a raw socket (pings and other control frames skipped).
async fn next_message(
    raw: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(WAIT, raw.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("frame");
        if let WsMessage::Binary(bytes) = frame {
            return Message::decode(bytes).expect("a y-websocket message");
        }
    }
}

async fn expect_close(server: &TestServer, room: &str, frame: WsMessage) -> (u16, String) {
    let mut bad = Client::connect(&server.url(room)).await.expect("connect");
    bad.synced(WAIT).await.expect("synced");
    bad.send_raw(frame).expect("send");
    bad.wait_closed(WAIT).await.expect("closed")
}

#[tokio::test]
async fn malformed_frames_close_only_the_offender() {
    let server = start(test_config()).await;
    let a = server.client("m").await;
    let mut b = server.client("m").await;
    let cases: Vec<(WsMessage, u16)> = vec![
        (
            WsMessage::Binary(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef, 0x01])),
            1002,
        ),
        (WsMessage::Binary(Bytes::from_static(&[0x00, 0x80])), 1002),
        (WsMessage::Binary(Bytes::from_static(&[0x63])), 1002),
        (
            WsMessage::Binary(
                Message::Sync(SyncMessage::Update(Bytes::from_static(&[1, 2, 3]))).encode(),
            ),
            1002,
        ),
        (WsMessage::Text("hello".into()), 1003),
    ];
    for (i, (frame, want)) in cases.into_iter().enumerate() {
        let (code, reason) = expect_close(&server, "m", frame).await;
        assert_eq!(code, want, "case {i}: reason {reason}");
        assert!(!reason.is_empty(), "case {i}: a reason is given");
        insert_text(&a, 0, &i.to_string());
        let want_text = text(&a);
        wait_text(&mut b, &want_text).await;
    }
    assert!(a.observed().closed.is_none() && b.observed().closed.is_none());
    assert_eq!(server.stat(|s| &s.protocol_errors), 5);
}

#[tokio::test]
async fn chunked_y_pk_batch_messages_are_reassembled() {
    let server = start(test_config()).await;
    let mut reader = server.client("big").await;
    let writer = server.client("big").await;
    // Build a 2.5 MB update, then send it the way y-partykit does: start marker, 1 MB chunks,
    // end marker.
    let big = "x".repeat(2_500_000);
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    let update = {
        use yrs::Text;
        let mut txn = yrs::Transact::transact_mut(&doc);
        t.insert(&mut txn, 0, &big);
        txn.encode_update_v1()
    };
    let frame = Message::Sync(SyncMessage::Update(update.into())).encode();
    let chunks: Vec<Bytes> = frame
        .chunks(1_000_000)
        .map(Bytes::copy_from_slice)
        .collect();
    let marker = |kind: &str| {
        format!(
            r#"y-pk-batch#{{"id":"b1","type":"{kind}","size":{},"count":{}}}"#,
            frame.len(),
            chunks.len()
        )
    };
    writer
        .send_raw(WsMessage::Text(marker("start").into()))
        .expect("send");
    for chunk in &chunks {
        writer
            .send_raw(WsMessage::Binary(chunk.clone()))
            .expect("send");
    }
    writer
        .send_raw(WsMessage::Text(marker("end").into()))
        .expect("send");
    wait_text(&mut reader, &big).await;
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let config = Config {
        max_message_bytes: 64 * 1024,
        ..test_config()
    };
    let server = start(config).await;
    let frame = WsMessage::Binary(Bytes::from(vec![0u8; 100 * 1024]));
    let (code, _) = expect_close(&server, "o", frame).await;
    assert_eq!(code, 1009);
    // A y-pk-batch announcing too much is refused before any chunk is buffered.
    let marker = r#"y-pk-batch#{"id":"z","type":"start","size":99999999,"count":100}"#;
    let (code, _) = expect_close(&server, "o", WsMessage::Text(marker.into())).await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn hostile_room_ids_are_refused_before_upgrade() {
    let server = start(test_config()).await;
    for path in [
        "..",
        "a%2F..",
        "%00",
        "parties/main/..",
        "a\\b",
        &"a".repeat(300),
    ] {
        let url = format!("ws://{}/{}", server.addr, path);
        let res = Client::connect(&url).await;
        // Raw segments with escapes are opaque ids (PartyKit does not decode them either): they
        // name a room and nothing else. Everything else is refused.
        if path.contains('%') {
            assert!(res.is_ok(), "{path} should be accepted as an opaque id");
        } else {
            let err = res.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("400"), "{path}: {err}");
        }
    }
    server
        .wait_stat("the two opaque ids loaded", |s| &s.rooms_loaded, |n| n == 2)
        .await;
}

#[tokio::test]
async fn concurrent_first_joins_load_the_room_once() {
    let server = Arc::new(start(test_config()).await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let c = server.client("cold").await;
            insert_text(&c, 0, &format!("[{i}]"));
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("task"));
    }
    assert_eq!(server.stat(|s| &s.rooms_loaded), 1);
    // Everyone converges on the same 20 inserts.
    for c in &mut clients {
        c.wait_for("all inserts", WAIT, |_, doc| {
            let t = doc.get_or_insert_text("t");
            let txn = yrs::Transact::transact(doc);
            yrs::GetString::get_string(&t, &txn).matches('[').count() == 20
        })
        .await
        .expect("converged");
    }
    let first = text(&clients[0]);
    assert!(clients.iter().all(|c| text(c) == first));
}

#[tokio::test]
async fn room_full_closes_with_try_again_later() {
    let config = Config {
        max_connections_per_room: 2,
        ..test_config()
    };
    let server = start(config).await;
    let _a = server.client("full").await;
    let _b = server.client("full").await;
    let mut c = Client::connect(&server.url("full")).await.expect("connect");
    let (code, reason) = c.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1013, "{reason}");
    // Another room is unaffected.
    let _d = server.client("not-full").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_others_get_everything() {
    stuck_reader_is_closed(Config {
        outbound_queue_frames: 32,
        ..test_config()
    })
    .await;
}

#[tokio::test]
async fn the_outbound_queue_is_bounded_by_bytes_too() {
    stuck_reader_is_closed(Config {
        outbound_queue_bytes: 256 * 1024,
        ..test_config()
    })
    .await;
}

async fn stuck_reader_is_closed(config: Config) {
    let server = start(config).await;
    let writer = server.client("slow").await;
    let mut good = server.client("slow").await;
    // A raw socket that never reads after the handshake.
    let (stuck, _) = tokio_tungstenite::connect_async(server.url("slow"))
        .await
        .expect("connect");
    let chunk = "y".repeat(64 * 1024);
    // ~19 MB in all: more than the socket buffers plus the queue bound hold. The writer
    // paces itself on the reading client, which therefore never falls behind.
    let rounds = 300;
    for i in 0..rounds {
        insert_text(&writer, (i * chunk.len()) as u32, &chunk);
        let want = (i + 1) * chunk.len();
        good.wait_for("update", WAIT, |_, doc| {
            let t = doc.get_or_insert_text("t");
            let txn = yrs::Transact::transact(doc);
            yrs::Text::len(&t, &txn) as usize == want
        })
        .await
        .expect("the reading client gets every update");
    }
    server
        .wait_stat(
            "slow consumer close",
            |s| &s.slow_consumer_closes,
            |n| n >= 1,
        )
        .await;
    assert_eq!(server.stat(|s| &s.slow_consumer_closes), 1);
    drop(stuck);
}

#[tokio::test]
async fn empty_rooms_are_unloaded_after_the_linger() {
    let server = start(test_config()).await;
    for i in 0..10 {
        let c = server.client(&format!("linger-{i}")).await;
        insert_text(&c, 0, "content");
        server
            .wait_stat("update applied", |s| &s.updates_applied, |n| n == i + 1)
            .await;
    }
    server
        .wait_stat("rooms unloaded", |s| &s.rooms_active, |n| n == 0)
        .await;
    // State came back from the store when reloaded.
    let c = server.client("linger-3").await;
    assert_eq!(text(&c), "content");
}

#[tokio::test]
async fn shutdown_closes_connections_with_going_away() {
    let server = start(test_config()).await;
    let mut a = server.client("bye").await;
    server.stop().await.expect("run returns Ok");
    let (code, _) = a.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1001);
}

/// Admits `ro-*` read-only, rejects `deny-*` with 401, everything else read-write.
struct TestAuth;

impl Authorize for TestAuth {
    fn authorize<'a>(
        &'a self,
        req: &'a UpgradeRequest<'a>,
    ) -> BoxFuture<'a, Result<Admission, Rejection>> {
        let room = req.key.room().to_owned();
        let readonly = req.query.is_some_and(|q| q.contains("readonly"));
        Box::pin(async move {
            if room.starts_with("deny") {
                return Err(Rejection {
                    status: axum::http::StatusCode::UNAUTHORIZED,
                    reason: "bad token".into(),
                });
            }
            Ok(Admission {
                access: if readonly {
                    Access::ReadOnly
                } else {
                    Access::ReadWrite
                },
                user: None,
                subprotocol: None,
                expires_at: None,
            })
        })
    }
}

#[tokio::test]
async fn rejected_upgrades_get_http_errors_and_load_nothing() {
    let server = start_with(
        test_config(),
        Arc::new(MemoryStore::new()),
        Some(Arc::new(TestAuth)),
    )
    .await;
    let err = Client::connect(&server.url("deny-1"))
        .await
        .err()
        .expect("rejected");
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(server.stat(|s| &s.rooms_loaded), 0);
    assert_eq!(server.stat(|s| &s.connections_total), 0);
}

#[tokio::test]
async fn read_only_clients_cannot_change_the_document() {
    let server = start_with(
        test_config(),
        Arc::new(MemoryStore::new()),
        Some(Arc::new(TestAuth)),
    )
    .await;
    let mut rw = server.client("ro-room").await;
    let mut ro = Client::connect(&format!("{}?readonly=1", server.url("ro-room")))
        .await
        .expect("connect");
    ro.synced(WAIT).await.expect("synced");
    insert_text(&ro, 0, "sneaky");
    ro.wait_for("denied", WAIT, |o, _| !o.denied.is_empty())
        .await
        .expect("told it is read-only");
    insert_text(&rw, 0, "ok");
    // The read-only client sees rw's edit; rw never sees the read-only one.
    ro.wait_for("rw edit", WAIT, |_, doc| {
        let t = doc.get_or_insert_text("t");
        let txn = yrs::Transact::transact(doc);
        yrs::GetString::get_string(&t, &txn).contains("ok")
    })
    .await
    .expect("read-only client receives updates");
    // The refused edit was handled (the denial came back) before rw's barrier.
    barrier(&mut rw).await;
    assert_eq!(text(&rw), "ok");
    let stored = server
        .store
        .load(&RoomKey::new("main", "ro-room", 64).expect("key"))
        .await
        .expect("load");
    assert_eq!(
        stored.updates.len(),
        1,
        "only the read-write edit is stored"
    );
    let _ = &mut rw;
}

/// A store that fails or panics on demand, to test isolation.
struct FaultyStore {
    inner: MemoryStore,
}

impl Store for FaultyStore {
    fn load<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<StoredRoom, StoreError>> {
        if room.room() == "corrupt" {
            return Box::pin(async {
                Err(StoreError::Corrupt {
                    room: "main/corrupt".into(),
                    detail: "checksum mismatch".into(),
                })
            });
        }
        self.inner.load(room)
    }
    fn append<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: ripple_core::lease::Epoch,
        updates: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        match room.room() {
            "panics" => panic!("injected panic in room {room}"),
            "disk-full" => Box::pin(async { Err(StoreError::Unavailable("disk full".into())) }),
            _ => self.inner.append(room, epoch, updates),
        }
    }
    fn compact<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: ripple_core::lease::Epoch,
        snapshot: Bytes,
        through_seq: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.compact(room, epoch, snapshot, through_seq)
    }
    fn delete<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: ripple_core::lease::Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete(room, epoch)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, StoreError>> {
        self.inner.list()
    }
}

async fn faulty_server() -> TestServer {
    let store = Arc::new(FaultyStore {
        inner: MemoryStore::new(),
    });
    start_with(test_config(), store, None).await
}

#[tokio::test]
async fn a_panicking_room_closes_its_connections_and_spares_others() {
    let server = faulty_server().await;
    let mut healthy_a = server.client("healthy").await;
    let mut healthy_b = server.client("healthy").await;
    let mut victim = server.client("panics").await;
    insert_text(&victim, 0, "boom");
    let (code, _) = victim.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1011);
    insert_text(&healthy_a, 0, "still fine");
    wait_text(&mut healthy_b, "still fine").await;
    assert!(healthy_a.observed().closed.is_none());
    let _ = &mut healthy_a;
}

#[tokio::test]
async fn a_failed_commit_closes_the_room_and_nothing_is_broadcast() {
    let window = Duration::from_secs(4);
    let config = Config {
        storage_unready_secs: window.as_secs_f64(),
        ..test_config()
    };
    let store = Arc::new(FaultyStore {
        inner: MemoryStore::new(),
    });
    let server = start_with(config, store, None).await;
    let mut writer = server.client("disk-full").await;
    let mut peer = server.client("disk-full").await;
    insert_text(&writer, 0, "lost?");
    assert_room_failed_unbroadcast(&mut writer, &mut peer, "").await;
    assert_eq!(server.stat(|s| &s.store_failures), 1);
    assert_eq!(
        http_get(server.addr, "/readyz").await.0,
        503,
        "readiness reflects storage"
    );
    let failed_at = tokio::time::Instant::now();
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    // Another room's successful append says nothing about the failing one: still not ready.
    let c = server.client("healthy-again").await;
    insert_text(&c, 0, "x");
    let mut observer = server.client("healthy-again").await;
    wait_text(&mut observer, "x").await;
    let (status, body) = http_get(server.addr, "/readyz").await;
    if failed_at.elapsed() < window {
        assert_eq!(
            status, 503,
            "a success elsewhere does not clear readiness: {body}"
        );
    }
    // Once the window passes without another failure, the server is ready again.
    wait_ready(&server, 200, WAIT).await;
    assert!(failed_at.elapsed() >= window - Duration::from_millis(100));
}

/// Polls `/readyz` until it answers `want`.
async fn wait_ready(server: &TestServer, want: u16, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, body) = http_get(server.addr, "/readyz").await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still {status} {body:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_room_that_fails_to_load_refuses_with_a_reason_and_others_work() {
    let server = faulty_server().await;
    let mut c = Client::connect(&server.url("corrupt"))
        .await
        .expect("connect");
    let (code, reason) = c.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1011);
    assert!(reason.contains("corrupt"), "{reason}");
    let _ok = server.client("fine").await;
    assert!(server.stat(|s| &s.room_load_failures) >= 1);
}

#[tokio::test]
async fn half_open_connections_are_reaped() {
    let config = Config {
        ping_interval_secs: 0.1,
        idle_timeout_secs: 0.5,
        ..test_config()
    };
    let server = start(config).await;
    let mut live = server.client("reap").await;
    // A socket that completed the handshake and then went silent: never read, so it never
    // answers pings (a peer whose machine vanished looks the same).
    let (silent, _) = tokio_tungstenite::connect_async(server.url("reap"))
        .await
        .expect("connect");
    server
        .wait_stat("two connections", |s| &s.connections_active, |n| n == 2)
        .await;
    server
        .wait_stat("silent one reaped", |s| &s.connections_active, |n| n == 1)
        .await;
    // The live client answers pings (its reader runs) and stays. It connected before the
    // silent one, so had its pongs not counted it would have been reaped by the same check;
    // its barrier echo proves it was not (a close would have come first).
    barrier(&mut live).await;
    assert_eq!(server.stat(|s| &s.connections_active), 1);
    assert!(live.observed().closed.is_none());
    insert_text(&live, 0, "still here");
    let _ = &mut live;
    drop(silent);
}

#[tokio::test]
async fn a_connection_that_never_sends_its_request_is_closed() {
    let config = Config {
        handshake_timeout_secs: 0.3,
        ..test_config()
    };
    let server = start(config).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut silent, &mut buf))
        .await
        .expect("the server closes the silent connection well before the test's timeout");
    // Closed (EOF or reset); hyper may write a 408 first.
    if let Ok(n) = read {
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || got.contains("408"), "{got:?}");
    }
    // Normal clients are unaffected.
    let _c = server.client("after-silence").await;
}

#[tokio::test]
async fn websockets_beyond_max_connections_are_refused_with_503() {
    let config = Config {
        max_connections: 2,
        ..test_config()
    };
    let server = start(config).await;
    let _a = server.client("cap-a").await;
    let _b = server.client("cap-b").await;
    server
        .wait_stat("two connections", |s| &s.connections_active, |n| n == 2)
        .await;
    let err = Client::connect(&server.url("cap-c"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("503"), "{err}");
}

/// A WebSocket client written against the raw socket, to send what well-behaved libraries never
/// do (unmasked or fragmented frames, bad UTF-8) and read exactly what the server answers.
struct RawWs {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(server: &TestServer, room: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let req = upgrade_request(&format!("/{room}"));
        stream.write_all(req.as_bytes()).await.expect("request");
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("response");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // RFC 6455's example key has this accept value.
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        buf.drain(..end);
        Self { stream, buf }
    }

    /// Sends one frame; `mask` None sends it unmasked (a protocol violation for a client).
    async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
        use tokio::io::AsyncWriteExt;
        let mut out = ripple_proto::ws::Head::new(opcode, payload.len())
            .as_bytes()
            .to_vec();
        if !fin {
            out[0] &= 0x7f;
        }
        let mut body = payload.to_vec();
        if let Some(m) = mask {
            out[1] |= 0x80;
            out.extend_from_slice(&m);
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        out.extend_from_slice(&body);
        self.stream.write_all(&out).await.expect("send frame");
    }

    /// Reads server frames until one with `opcode` arrives; returns its payload.
    async fn until(&mut self, opcode: u8) -> Vec<u8> {
        read_frame_until(&mut self.stream, &mut self.buf, opcode).await
    }

    /// Reads until the server's close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        let payload = self.until(0x8).await;
        u16::from_be_bytes([payload[0], payload[1]])
    }
}

#[tokio::test]
async fn the_websocket_layer_answers_pings_reassembles_fragments_and_echoes_closes() {
    let server = start(test_config()).await;
    let mut watcher = server.client("raw").await;
    let mut raw = RawWs::connect(&server, "raw").await;
    // A ping is answered with a pong carrying the same payload.
    raw.frame(true, 0x9, b"are you there", Some([1, 2, 3, 4]))
        .await;
    assert_eq!(raw.until(0xA).await, b"are you there");
    // An update split over three fragments, with a ping between them, arrives whole.
    let doc = yrs::Doc::new();
    let update = {
        use yrs::{Text, Transact};
        // The root the test helpers read.
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, "fragmented");
        txn.encode_update_v1()
    };
    let msg = Message::Sync(SyncMessage::Update(update.into())).encode();
    let (a, rest) = msg.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    raw.frame(false, 0x2, a, Some([9, 8, 7, 6])).await;
    raw.frame(true, 0x9, b"", Some([0; 4])).await;
    raw.frame(false, 0x0, b, Some([5, 5, 5, 5])).await;
    raw.frame(true, 0x0, c, Some([1, 0, 1, 0])).await;
    raw.until(0xA).await;
    wait_text(&mut watcher, "fragmented").await;
    // Our close code is echoed, and the connection ends.
    raw.frame(true, 0x8, &4000u16.to_be_bytes(), Some([3; 4]))
        .await;
    assert_eq!(raw.close_code().await, 4000);
}

#[tokio::test]
async fn websocket_violations_close_with_their_rfc_codes() {
    let server = start(test_config()).await;
    let mut watcher = server.client("rfc").await;
    /// (what, fin, opcode, payload, mask, expected close code)
    type Case = (&'static str, bool, u8, Vec<u8>, Option<[u8; 4]>, u16);
    let cases: Vec<Case> = vec![
        ("unmasked frame", true, 0x2, vec![0, 0], None, 1002),
        (
            "text that is not UTF-8",
            true,
            0x1,
            vec![0xff, 0xfe],
            Some([1; 4]),
            1007,
        ),
        ("unknown opcode", true, 0x3, vec![], Some([1; 4]), 1002),
        ("fragmented ping", false, 0x9, vec![], Some([1; 4]), 1002),
        ("stray continuation", true, 0x0, vec![1], Some([1; 4]), 1002),
    ];
    for (i, (name, fin, op, payload, mask, want)) in cases.into_iter().enumerate() {
        let mut raw = RawWs::connect(&server, "rfc").await;
        raw.frame(fin, op, &payload, mask).await;
        assert_eq!(raw.close_code().await, want, "{name}");
        // The room and its other client are unaffected.
        insert_text(&watcher, 0, &i.to_string());
        let want_text = text(&watcher);
        let mut check = server.client("rfc").await;
        wait_text(&mut check, &want_text).await;
    }
    let _ = &mut watcher;
    // An oversized frame is refused on its header alone, before its payload is sent.
    let config = Config {
        max_message_bytes: 1024,
        ..test_config()
    };
    let small = start(config).await;
    let mut raw = RawWs::connect(&small, "big").await;
    let mut head = ripple_proto::ws::Head::new(0x2, 10_000_000)
        .as_bytes()
        .to_vec();
    head[1] |= 0x80;
    head.extend_from_slice(&[0; 4]);
    tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &head)
        .await
        .expect("header");
    assert_eq!(raw.close_code().await, 1009);
}

#[tokio::test]
async fn a_client_that_pings_without_reading_is_closed_not_buffered_for() {
    let config = Config {
        outbound_queue_frames: 8,
        ..test_config()
    };
    let server = start(config).await;
    let mut raw = RawWs::connect(&server, "pinger").await;
    // Far more pongs than the socket buffers and the 8-frame queue hold, never read.
    let flood = async {
        for _ in 0..200_000 {
            let ping = [7u8; 125];
            let frame = {
                let mut out = ripple_proto::ws::Head::new(0x9, ping.len())
                    .as_bytes()
                    .to_vec();
                out[1] |= 0x80;
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&ping);
                out
            };
            if tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &frame)
                .await
                .is_err()
            {
                break;
            }
        }
    };
    // The server stops reading once it closed us, so the flood may block: bound it.
    let _ = tokio::time::timeout(Duration::from_secs(5), flood).await;
    server
        .wait_stat(
            "closed as a slow consumer",
            |s| &s.slow_consumer_closes,
            |n| n == 1,
        )
        .await;
    server
        .wait_stat("connection gone", |s| &s.connections_active, |n| n == 0)
        .await;
}

/// Reads server frames from `stream` (after what is already in `buf`) until one with `opcode`
/// arrives; returns its payload.
async fn read_frame_until(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    opcode: u8,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let read = async {
        loop {
            if buf.len() >= 2 {
                let (len, at) = match buf[1] & 0x7f {
                    126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                    127 if buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&buf[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
                if len != usize::MAX && buf.len() >= at + len {
                    let op = buf[0] & 0x0f;
                    let payload = buf[at..at + len].to_vec();
                    buf.drain(..at + len);
                    if op == opcode {
                        return payload;
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "socket ended before opcode {opcode:#x} arrived");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("frame in time")
}

#[tokio::test]
async fn an_oversized_message_still_being_sent_gets_its_1009_close_frame_and_a_fin() {
    // The server refuses the frame on its header while the client is still sending the payload.
    // Closing with that payload unread would make the kernel reset the connection and destroy
    // the close frame (the client saw 1006); a lingering close delivers it every time.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LIMIT: usize = 1 << 20;
    const SENT: usize = 8 << 20;
    let config = Config {
        max_message_bytes: LIMIT,
        ..test_config()
    };
    let server = start(config).await;
    for attempt in 0..3 {
        let RawWs { stream, mut buf } = RawWs::connect(&server, "too-big").await;
        let (mut read_half, mut write_half) = stream.into_split();
        let writer = tokio::spawn(async move {
            let mut head = ripple_proto::ws::Head::new(0x2, SENT).as_bytes().to_vec();
            head[1] |= 0x80;
            head.extend_from_slice(&[0; 4]);
            // The server stops taking bytes at some point; a failed write is expected then.
            if write_half.write_all(&head).await.is_err() {
                return write_half;
            }
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..SENT / chunk.len() {
                if write_half.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            write_half
        });
        let close = read_frame_until(&mut read_half, &mut buf, 0x8).await;
        assert_eq!(
            u16::from_be_bytes([close[0], close[1]]),
            1009,
            "attempt {attempt}"
        );
        // After the close frame the server shuts down its side: an orderly end, not a reset.
        let mut rest = [0u8; 64];
        let end = tokio::time::timeout(WAIT, read_half.read(&mut rest))
            .await
            .expect("the server ends its side in time");
        assert!(
            matches!(end, Ok(0)),
            "attempt {attempt}: wanted end of stream, got {end:?}"
        );
        drop(writer.await.expect("writer"));
    }
}

#[tokio::test]
async fn websocket_keys_that_are_not_base64_of_16_bytes_get_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(test_config()).await;
    let good = "dGhlIHNhbXBsZSBub25jZQ==";
    for key in [
        "x",
        "",
        "eHl6",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZSE=",
    ] {
        let req = upgrade_request("/keys").replace(good, key);
        assert!(req.contains(&format!("Sec-WebSocket-Key: {key}\r\n")));
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        stream.write_all(req.as_bytes()).await.expect("request");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, async {
            let mut chunk = [0u8; 1024];
            // Headers and the short body come together; stop once the reason is in.
            while !answer.windows(4).any(|w| w == b"\r\n\r\n")
                || !String::from_utf8_lossy(&answer).contains("16 bytes")
            {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                }
            }
        });
        read.await.expect("answer in time");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "key {key:?}: {answer}");
        assert!(
            answer.contains("Sec-WebSocket-Key must be the base64 of 16 bytes"),
            "key {key:?}: {answer}"
        );
    }
    // The RFC's example key is accepted.
    let _ = RawWs::connect(&server, "keys").await;
}
