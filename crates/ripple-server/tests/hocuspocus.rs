//! Hocuspocus sockets end to end on a real server: raw Hocuspocus frames (the codec in
//! `ripple_proto::hocuspocus`) over tokio-tungstenite, next to y-websocket clients in the same
//! rooms. The real providers are tested in `tests/interop/14-hocuspocus*.test.mjs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use futures_util::{SinkExt, StreamExt};
use ripple_core::room::Access;
use ripple_core::{BoxFuture, MemoryStore, RoomKey, Store};
use ripple_proto::hocuspocus::{Frame, HpMessage};
use ripple_proto::{Message, SyncMessage};
use ripple_server::auth::{Admission, Rejection, UpgradeRequest};
use ripple_server::Authorize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact, Update};

/// One Hocuspocus socket, spoken raw.
struct Hp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Hp {
    async fn connect(server: &TestServer, path: &str) -> Self {
        let url = format!("ws://{}{path}", server.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Self { ws }
    }

    async fn send(&mut self, name: &str, message: HpMessage) {
        let frame = ripple_proto::hocuspocus::encode(name, &message);
        self.ws
            .send(Ws::binary(frame.to_vec()))
            .await
            .expect("send");
    }

    /// Auth with `token`, then sync step 1 with an empty state vector (what a provider sends).
    async fn open(&mut self, name: &str, token: &str) {
        self.send(name, HpMessage::Token(token.into())).await;
        let sv = StateVector::default().encode_v1();
        self.send(
            name,
            HpMessage::Doc(Message::Sync(SyncMessage::Step1(sv.into()))),
        )
        .await;
    }

    /// The next frame for a document (keep-alives for document "" skipped); `Err` with the
    /// close code and reason if the socket closes first.
    async fn next(&mut self) -> Result<(String, HpMessage), (u16, String)> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Ws::Binary(bytes))) => {
                    match Frame::decode(bytes).expect("server frames decode") {
                        Frame::Doc { name, message } if !name.is_empty() => {
                            return Ok((name, message))
                        }
                        _ => continue,
                    }
                }
                Some(Ok(Ws::Close(close))) => {
                    return Err(close.map_or((1005, String::new()), |c| {
                        (u16::from(c.code), c.reason.to_string())
                    }))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err((1006, e.to_string())),
                None => return Err((1006, "ended".into())),
            }
        }
    }

    /// Frames until one for `name` matches `want`; returns the frames before it (for `name`).
    async fn until(&mut self, name: &str, want: impl Fn(&HpMessage) -> bool) -> Vec<HpMessage> {
        let mut before = Vec::new();
        loop {
            let (n, m) = self.next().await.expect("socket open");
            if n != name {
                continue;
            }
            if want(&m) {
                return before;
            }
            before.push(m);
        }
    }

    async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Err(close) = self.next().await {
                return close;
            }
        }
    }
}

fn update_inserting(s: &str) -> Vec<u8> {
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, s);
    let txn = doc.transact();
    txn.encode_state_as_update_v1(&StateVector::default())
}

fn update(bytes: Vec<u8>) -> HpMessage {
    HpMessage::Doc(Message::Sync(SyncMessage::Update(bytes.into())))
}

fn is_status(applied: bool) -> impl Fn(&HpMessage) -> bool {
    move |m| *m == HpMessage::SyncStatus(applied)
}

async fn stored_text(store: &dyn Store, room: &str) -> String {
    let stored = store
        .load(&RoomKey::new("main", room, 256).expect("key"))
        .await
        .expect("load");
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    {
        let mut txn = doc.transact_mut();
        for bytes in stored
            .snapshot
            .iter()
            .chain(stored.updates.iter().map(|(_, u)| u))
        {
            txn.apply_update(Update::decode_v1(bytes).expect("decodes"))
                .expect("applies");
        }
    }
    let txn = doc.transact();
    text.get_string(&txn)
}

#[tokio::test]
async fn an_update_is_acknowledged_once_stored_and_reaches_y_websocket_clients() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = start_with(test_config(), store.clone(), None).await;
    let mut ws_client = server.client("shared").await;
    let mut hp = Hp::connect(&server, "/").await;
    hp.open("shared", "").await;
    // Authenticated first, then our step 1 (the room's greeting), then the answer to theirs.
    let (_, first) = hp.next().await.expect("open");
    assert_eq!(first, HpMessage::Authenticated("read-write".into()));
    let before = hp
        .until("shared", |m| {
            matches!(m, HpMessage::Doc(Message::Sync(SyncMessage::Step2(_))))
        })
        .await;
    assert!(
        before
            .iter()
            .any(|m| matches!(m, HpMessage::Doc(Message::Sync(SyncMessage::Step1(_))))),
        "our step 1 comes before our step 2: {before:?}"
    );

    hp.send("shared", update(update_inserting("hi"))).await;
    hp.until("shared", is_status(true)).await;
    // The acknowledgement came after the append: it is stored already.
    assert_eq!(stored_text(store.as_ref(), "shared").await, "hi");
    wait_text(&mut ws_client, "hi").await;

    // And the other way: a y-websocket edit reaches the Hocuspocus document.
    insert_text(&ws_client, 2, "!");
    hp.until("shared", |m| {
        matches!(m, HpMessage::Doc(Message::Sync(SyncMessage::Update(_))))
    })
    .await;
    server.stop().await.expect("stop");
}

fn awareness(client: u64, clock: u64, state: &str) -> HpMessage {
    HpMessage::Doc(Message::Awareness(ripple_proto::awareness::encode_update(
        [(client, clock, state)],
    )))
}

#[tokio::test]
async fn documents_on_one_socket_are_separate_members_and_close_alone() {
    let server = start(test_config()).await;
    let mut a = server.client("doc-a").await;
    let mut b = server.client("doc-b").await;
    let mut hp = Hp::connect(&server, "/hocuspocus").await;
    for name in ["doc-a", "doc-b"] {
        hp.open(name, "").await;
        hp.until(name, |m| {
            matches!(m, HpMessage::Doc(Message::Sync(SyncMessage::Step2(_))))
        })
        .await;
    }
    hp.send("doc-a", awareness(77, 1, r#"{"who":"hp"}"#)).await;
    a.wait_for("the Hocuspocus awareness", WAIT, |o, _| {
        o.awareness.contains_key(&77)
    })
    .await
    .expect("awareness arrives");
    // The provider's CLOSE ends doc-a's member (its awareness goes with it) ...
    hp.send("doc-a", HpMessage::Close(None)).await;
    a.wait_for("the awareness removal", WAIT, |o, _| {
        !o.awareness.contains_key(&77)
    })
    .await
    .expect("awareness removed");
    // ... and nothing else: doc-b on the same socket still works both ways.
    hp.send("doc-b", update(update_inserting("b"))).await;
    hp.until("doc-b", is_status(true)).await;
    wait_text(&mut b, "b").await;
    insert_text(&b, 1, "!");
    hp.until("doc-b", |m| {
        matches!(m, HpMessage::Doc(Message::Sync(SyncMessage::Update(_))))
    })
    .await;
    server.stop().await.expect("stop");
}

/// Admits rooms by name: `ro-*` read-only, `exp-*` for 300 ms, `no-*` never, others read-write.
struct ByName;

impl Authorize for ByName {
    fn authorize<'a>(
        &'a self,
        req: &'a UpgradeRequest<'a>,
    ) -> BoxFuture<'a, Result<Admission, Rejection>> {
        Box::pin(async move {
            let room = req.key.room();
            let mut admission = Admission::read_write();
            if room.starts_with("no-") {
                return Err(Rejection {
                    status: axum::http::StatusCode::FORBIDDEN,
                    reason: "forbidden: not this one".into(),
                });
            }
            if room.starts_with("ro-") {
                admission.access = Access::ReadOnly;
            }
            if room.starts_with("exp-") {
                admission.expires_at = Some(SystemTime::now() + Duration::from_millis(300));
            }
            Ok(admission)
        })
    }
}

#[tokio::test]
async fn read_only_documents_get_sync_status_0_and_store_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = start_with(test_config(), store.clone(), Some(Arc::new(ByName))).await;
    let mut watcher = server.client("ro-1").await;
    let mut hp = Hp::connect(&server, "/").await;
    hp.open("ro-1", "").await;
    let (_, first) = hp.next().await.expect("open");
    assert_eq!(first, HpMessage::Authenticated("readonly".into()));
    hp.send("ro-1", update(update_inserting("nope"))).await;
    hp.until("ro-1", is_status(false)).await;
    barrier(&mut watcher).await;
    assert_eq!(text(&watcher), "", "a read-only update was relayed");
    assert_eq!(stored_text(store.as_ref(), "ro-1").await, "");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_denied_or_expired_document_ends_alone_and_the_socket_carries_on() {
    let server = start_with(
        test_config(),
        Arc::new(MemoryStore::new()),
        Some(Arc::new(ByName)),
    )
    .await;
    let mut hp = Hp::connect(&server, "/").await;
    hp.open("no-1", "tok").await;
    let (name, denied) = hp.next().await.expect("open");
    assert_eq!(
        (name.as_str(), denied),
        (
            "no-1",
            HpMessage::PermissionDenied("forbidden: not this one".into())
        )
    );
    hp.open("exp-1", "tok").await;
    hp.open("doc-ok", "tok").await;
    hp.until(
        "exp-1",
        |m| matches!(m, HpMessage::PermissionDenied(r) if r.contains("expired")),
    )
    .await;
    hp.send("doc-ok", update(update_inserting("still"))).await;
    hp.until("doc-ok", is_status(true)).await;
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_malformed_frame_closes_the_socket_with_1002_and_nothing_else() {
    let server = start(test_config()).await;
    let mut other = Hp::connect(&server, "/").await;
    other.open("doc-m", "").await;
    other
        .until("doc-m", |m| matches!(m, HpMessage::Authenticated(_)))
        .await;
    let mut bad = Hp::connect(&server, "/").await;
    bad.ws
        .send(Ws::binary(vec![1, b'd', 42]))
        .await
        .expect("send");
    let (code, reason) = bad.closed().await;
    assert_eq!(code, u16::from(CloseCode::Protocol), "{reason}");
    other.send("doc-m", update(update_inserting("ok"))).await;
    other.until("doc-m", is_status(true)).await;
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn stateless_messages_are_dropped_not_relayed() {
    let server = start(test_config()).await;
    let mut a = Hp::connect(&server, "/").await;
    let mut b = Hp::connect(&server, "/").await;
    for hp in [&mut a, &mut b] {
        hp.open("doc-s", "").await;
        hp.until("doc-s", |m| {
            matches!(m, HpMessage::Doc(Message::Sync(SyncMessage::Step2(_))))
        })
        .await;
    }
    a.send(
        "doc-s",
        HpMessage::Stateless("private to the server".into()),
    )
    .await;
    a.send("doc-s", update(update_inserting("after"))).await;
    a.until("doc-s", is_status(true)).await;
    // b gets a's update, which a sent after its stateless message; nothing stateless before it.
    let before = b
        .until("doc-s", |m| {
            matches!(m, HpMessage::Doc(Message::Sync(SyncMessage::Update(_))))
        })
        .await;
    assert!(
        !before.iter().any(|m| matches!(m, HpMessage::Stateless(_))),
        "{before:?}"
    );
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_socket_without_documents_is_closed_at_shutdown() {
    let server = start(test_config()).await;
    let mut hp = Hp::connect(&server, "/").await;
    hp.open("doc-x", "").await;
    hp.until("doc-x", |m| matches!(m, HpMessage::Authenticated(_)))
        .await;
    hp.send("doc-x", HpMessage::Close(None)).await;
    let stopping = tokio::spawn(server.stop());
    let (code, reason) = hp.closed().await;
    assert_eq!(code, 1001, "{reason}");
    stopping.await.expect("join").expect("stop");
}

#[tokio::test]
async fn a_frame_over_the_message_limit_closes_the_socket_with_1009_and_a_silent_one_gets_4408() {
    let config = ripple_server::Config {
        max_message_bytes: 1000,
        ping_interval_secs: 0.1,
        idle_timeout_secs: 0.5,
        ..test_config()
    };
    let server = start(config).await;
    let mut big = Hp::connect(&server, "/").await;
    big.open("doc-big", "").await;
    big.send("doc-big", update(vec![0; 2000])).await;
    let (code, reason) = big.closed().await;
    assert_eq!(code, 1009, "{reason}");
    // A client that answers no ping: tungstenite answers pings only while it is read, so not
    // reading it for a while (the sleep is the silence under test, not a wait for a result)
    // makes it silent; the server gives up after idle_timeout_secs.
    let mut silent = Hp::connect(&server, "/").await;
    silent.open("doc-silent", "").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, reason) = silent.closed().await;
    assert_eq!(code, 4408, "{reason}");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_provider_4_ping_gets_a_pong() {
    let server = start(test_config()).await;
    let mut hp = Hp::connect(&server, "/").await;
    hp.ws.send(Ws::binary(vec![9])).await.expect("send");
    loop {
        let msg = tokio::time::timeout(WAIT, hp.ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("ok");
        if let Ws::Binary(bytes) = msg {
            if Frame::decode(bytes) == Ok(Frame::Pong) {
                break;
            }
        }
    }
    server.stop().await.expect("stop");
}
