//! Authentication end to end: a real server on port 0 with the real `ripple_auth`
//! authenticator (JWT, or a webhook served by a real local HTTP server), real WebSocket clients.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use ripple_auth::{
    mint_hs256, mint_hs256_with, Access as Level, AuthConfig, JwtConfig, MintOptions, Secret,
    WebhookConfig,
};
use ripple_client::Client;
use ripple_core::{BoxFuture, MemoryStore, RoomInfo, RoomKey, Store, StoreError, StoredRoom};
use ripple_proto::{Message, SyncMessage};
use ripple_server::closer::code;
use ripple_server::config::AuthSettings;
use ripple_server::token_auth::authorizer;
use ripple_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message as WsMessage;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Transact, Update};

const SECRET: &str = "test-secret-for-ripple-auth-tests";

/// A store that counts every call, to prove a rejected client touches no storage.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    calls: AtomicUsize,
}

impl CountingStore {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Store for CountingStore {
    fn load<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<StoredRoom, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.load(room)
    }
    fn append<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: ripple_core::lease::Epoch,
        updates: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.append(room, epoch, updates)
    }
    fn compact<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: ripple_core::lease::Epoch,
        snapshot: Bytes,
        through_seq: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.compact(room, epoch, snapshot, through_seq)
    }
    fn delete<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: ripple_core::lease::Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(room, epoch)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.list()
    }
}

fn jwt_mode() -> AuthConfig {
    AuthConfig::Jwt(JwtConfig {
        secret: Some(Secret::new(SECRET)),
        // Exact expiry, so the expiry tests need not wait out a leeway.
        leeway: Duration::ZERO,
        ..JwtConfig::default()
    })
}

fn jwt_config() -> Config {
    Config {
        auth: AuthSettings::new(jwt_mode()),
        ..test_config()
    }
}

/// Starts a server whose authorizer is built from `config.auth`, as the binary does.
async fn start_auth(config: Config, store: Arc<dyn Store>) -> TestServer {
    let auth = authorizer(&config.auth).expect("auth config");
    start_with(config, store, Some(auth)).await
}

fn token(rooms: &[&str], access: Level, sub: Option<&str>) -> String {
    token_ttl(rooms, access, sub, Duration::from_secs(3600))
}

fn token_ttl(rooms: &[&str], access: Level, sub: Option<&str>, ttl: Duration) -> String {
    let rooms: Vec<String> = rooms.iter().map(|r| (*r).to_owned()).collect();
    mint_hs256(SECRET, &rooms, access, ttl, sub)
}

fn with_token(server: &TestServer, room: &str, token: &str) -> String {
    format!("{}&token={token}", server.party_url("main", room))
}

async fn connect_synced(url: &str) -> Client {
    let mut c = Client::connect(url).await.expect("connect");
    c.synced(WAIT).await.expect("synced");
    c
}

/// Opens a WebSocket that the server must refuse; returns the HTTP status and body.
async fn refused(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("{url} was admitted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// The text of "t" in everything stored for `room`.
async fn stored_text(store: &dyn Store, room: &str) -> String {
    let stored = store
        .load(&RoomKey::new("main", room, 64).expect("key"))
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
async fn jwt_valid_token_in_query_admits_and_clients_converge() {
    let server = start_auth(jwt_config(), Arc::new(MemoryStore::new())).await;
    let tok = token(&["doc-*"], Level::Write, Some("alice"));
    let mut a = connect_synced(&with_token(&server, "doc-1", &tok)).await;
    let mut b = connect_synced(&with_token(&server, "doc-1", &tok)).await;
    insert_text(&a, 0, "hello");
    wait_text(&mut b, "hello").await;
    insert_text(&b, 5, " world");
    wait_text(&mut a, "hello world").await;
}

#[tokio::test]
async fn jwt_rejections_are_http_errors_with_reasons_and_touch_no_room_or_storage() {
    let store = Arc::new(CountingStore::default());
    let server = start_auth(jwt_config(), store.clone()).await;
    let hour = Duration::from_secs(3600);
    let rooms = vec!["doc-*".to_owned()];
    let expired = mint_hs256_with(
        SECRET,
        &MintOptions {
            rooms: &rooms,
            access: Level::Write,
            ttl: Duration::from_secs(60),
            sub: None,
            issuer: None,
            audience: None,
            now: SystemTime::now() - hour,
        },
    );
    let wrong_key = mint_hs256("another-secret", &rooms, Level::Write, hour, None);
    let cases = [
        ("no token", server.party_url("main", "doc-1"), 401),
        ("garbage", with_token(&server, "doc-1", "not.a.jwt"), 401),
        ("expired", with_token(&server, "doc-1", &expired), 401),
        (
            "wrong signature",
            with_token(&server, "doc-1", &wrong_key),
            401,
        ),
        (
            "wrong room",
            with_token(&server, "diagram-1", &token(&["doc-*"], Level::Write, None)),
            403,
        ),
    ];
    for (what, url, want) in cases {
        let (status, body) = refused(&url).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(!body.is_empty() && body.len() < 200, "{what}: short reason");
        assert!(!body.contains(SECRET), "{what}: no secret in the body");
    }
    assert_eq!(server.stat(|s| &s.rooms_loaded), 0);
    assert_eq!(server.stat(|s| &s.connections_total), 0);
    assert_eq!(store.calls(), 0, "no storage access for rejected clients");
    let (status, metrics) = http_get(server.addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("ripple_rooms_loaded_total 0"), "{metrics}");
}

#[tokio::test]
async fn read_only_token_edit_never_reaches_other_clients_nor_storage() {
    let server = start_auth(jwt_config(), Arc::new(MemoryStore::new())).await;
    let write = token(&["doc-*"], Level::Write, Some("writer"));
    let read = token(&["doc-*"], Level::Read, Some("reader"));
    let mut writer = connect_synced(&with_token(&server, "doc-ro", &write)).await;
    let mut reader = connect_synced(&with_token(&server, "doc-ro", &read)).await;
    insert_text(&reader, 0, "sneaky");
    reader
        .wait_for("denied", WAIT, |o, _| !o.denied.is_empty())
        .await
        .expect("the reader is told");
    insert_text(&writer, 0, "ok");
    // The reader receives live updates, so its own refused edit was handled before this.
    reader
        .wait_for("writer's edit", WAIT, |_, doc| {
            let t = doc.get_or_insert_text("t");
            let txn = doc.transact();
            t.get_string(&txn).contains("ok")
        })
        .await
        .expect("the reader gets updates");
    let mut late = connect_synced(&with_token(&server, "doc-ro", &write)).await;
    wait_text(&mut late, "ok").await;
    assert_eq!(text(&writer), "ok");
    assert_eq!(stored_text(server.store.as_ref(), "doc-ro").await, "ok");
    assert_eq!(reader.observed().denied.len(), 1, "told once");
    let _ = &mut writer;
}

#[tokio::test]
async fn token_in_subprotocol_is_accepted_and_the_marker_is_echoed() {
    let server = start_auth(jwt_config(), Arc::new(MemoryStore::new())).await;
    let tok = token(&["doc-*"], Level::Write, None);
    let mut req = server
        .party_url("main", "doc-sp")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("ripple, ripple.token.{tok}")).expect("header"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("admitted");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"ripple"[..]),
        "the marker, not the token, is echoed"
    );
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("ok");
    let WsMessage::Binary(bytes) = first else {
        panic!("unexpected {first:?}")
    };
    assert!(matches!(
        Message::decode(bytes).expect("decodes"),
        Message::Sync(SyncMessage::Step1(_))
    ));

    // The same token in a bad subprotocol entry is refused; a Bearer header works.
    let mut bad = server
        .party_url("main", "doc-sp")
        .into_client_request()
        .expect("request");
    bad.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("ripple, ripple.token.nope"),
    );
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let mut bearer = server
        .party_url("main", "doc-sp")
        .into_client_request()
        .expect("request");
    bearer.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {tok}")).expect("header"),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(bearer)
        .await
        .expect("admitted with a Bearer header");
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
}

#[tokio::test]
async fn an_expiring_token_closes_with_4001_and_a_fresh_token_reconnects() {
    let server = start_auth(jwt_config(), Arc::new(MemoryStore::new())).await;
    let short = token_ttl(&["doc-*"], Level::Write, None, Duration::from_secs(2));
    let started = Instant::now();
    let mut c = connect_synced(&with_token(&server, "doc-exp", &short)).await;
    insert_text(&c, 0, "kept");
    let (code, reason) = c.wait_closed(WAIT).await.expect("closed");
    assert_eq!(
        (code, reason.as_str()),
        (code::TOKEN_EXPIRED, "token expired")
    );
    assert_eq!(code, 4001);
    // exp has whole-second resolution: the token lived between 1 and 2 seconds.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not closed early"
    );
    // The stale token is refused now; a fresh one is admitted and finds the edit.
    let (status, _) = refused(&with_token(&server, "doc-exp", &short)).await;
    assert_eq!(status, 401);
    let fresh = token(&["doc-*"], Level::Write, None);
    let mut again = connect_synced(&with_token(&server, "doc-exp", &fresh)).await;
    wait_text(&mut again, "kept").await;
}

#[tokio::test]
async fn with_close_on_expiry_off_a_connection_outlives_its_token() {
    let mut config = jwt_config();
    config.auth.close_on_expiry = false;
    let server = start_auth(config, Arc::new(MemoryStore::new())).await;
    let short = token_ttl(&["doc-*"], Level::Write, None, Duration::from_secs(1));
    let c = connect_synced(&with_token(&server, "doc-keep", &short)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    insert_text(&c, 0, "still here");
    let fresh = token(&["doc-*"], Level::Write, None);
    let mut other = connect_synced(&with_token(&server, "doc-keep", &fresh)).await;
    wait_text(&mut other, "still here").await;
    // Past its expiry; the barrier's echo would come after any close.
    let mut c = c;
    barrier(&mut c).await;
    assert_eq!(c.observed().closed, None);
}

#[tokio::test]
async fn awareness_of_one_user_cannot_be_overwritten_by_another_but_can_by_the_same_user() {
    let server = start_auth(jwt_config(), Arc::new(MemoryStore::new())).await;
    let url = |sub: &str| {
        with_token(
            &server,
            "doc-aw",
            &token(&["doc-*"], Level::Write, Some(sub)),
        )
    };
    let mut alice = connect_synced(&url("alice")).await;
    let mut bob = connect_synced(&url("bob")).await;
    let mut observer = connect_synced(&url("carol")).await;
    let alice_id = alice.doc().client_id().get();
    let bob_id = bob.doc().client_id().get();
    alice.set_awareness(r#"{"name":"alice"}"#).expect("send");
    observer
        .wait_for("alice's state", WAIT, |o, _| {
            o.awareness.contains_key(&alice_id)
        })
        .await
        .expect("alice is present");

    // Bob forges a newer state for Alice's client id, then tries to remove it.
    let forge = |clock, state: &str| {
        Message::Awareness(ripple_proto::awareness::encode_update([(
            alice_id, clock, state,
        )]))
    };
    bob.send(forge(50, r#"{"name":"mallory"}"#)).expect("send");
    bob.send(forge(51, "null")).expect("send");
    // Then his own state: once the observer has it, the forgeries were handled before it.
    bob.set_awareness(r#"{"name":"bob"}"#).expect("send");
    observer
        .wait_for("bob's state", WAIT, |o, _| {
            o.awareness.contains_key(&bob_id)
        })
        .await
        .expect("bob is present");
    let seen = observer.observed().awareness;
    assert_eq!(
        seen.get(&alice_id).map(String::as_str),
        Some(r#"{"name":"alice"}"#)
    );
    assert!(
        bob.observed().closed.is_none(),
        "forging is dropped, not fatal"
    );

    // Alice on a second connection (same user, same client id: a reconnect) may take over.
    let alice2 = connect_synced(&url("alice")).await;
    alice2
        .send(forge(60, r#"{"name":"alice-2"}"#))
        .expect("send");
    observer
        .wait_for("alice's new state", WAIT, |o, _| {
            o.awareness.get(&alice_id).map(String::as_str) == Some(r#"{"name":"alice-2"}"#)
        })
        .await
        .expect("the same user may take over");
    // The old connection leaving no longer removes the id it lost.
    drop(alice);
    bob.set_awareness(r#"{"name":"bob","n":2}"#).expect("send");
    observer
        .wait_for("bob's second state", WAIT, |o, _| {
            o.awareness
                .get(&bob_id)
                .is_some_and(|s| s.contains("\"n\":2"))
        })
        .await
        .expect("bob updates");
    // alice's leave was handled (the room holds only alice2, bob and the observer now); any
    // removal it broadcast reaches the observer before its barrier's echo.
    server
        .wait_stat("alice gone", |s| &s.connections_active, |n| n == 3)
        .await;
    barrier(&mut observer).await;
    assert!(observer.observed().awareness.contains_key(&alice_id));
    drop(alice2);
}

/// The application's auth endpoint: decides by token.
async fn webhook_app(body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match req["token"].as_str().unwrap_or("") {
        "writer" => {
            axum::Json(serde_json::json!({"access": "write", "user": {"id": "u1"}})).into_response()
        }
        "reader" => {
            axum::Json(serde_json::json!({"access": "read", "user": {"id": "u2"}})).into_response()
        }
        "not-member" => (
            axum::http::StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"error": "not a member of this workspace"})),
        )
            .into_response(),
        _ => (axum::http::StatusCode::UNAUTHORIZED, "bad token").into_response(),
    }
}

async fn serve_webhook() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/auth", axum::routing::post(webhook_app));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn webhook_config(url: String) -> Config {
    Config {
        auth: AuthSettings::new(AuthConfig::Webhook(WebhookConfig {
            url,
            secret: Some(Secret::new("webhook-signing-secret")),
            timeout: Duration::from_secs(2),
            ..WebhookConfig::default()
        })),
        ..test_config()
    }
}

#[tokio::test]
async fn webhook_allow_write_allow_read_and_deny_against_a_real_http_server() {
    let hook = serve_webhook().await;
    let store = Arc::new(CountingStore::default());
    let server = start_auth(webhook_config(format!("http://{hook}/auth")), store.clone()).await;

    let (status, body) = refused(&with_token(&server, "doc-wh", "not-member")).await;
    assert_eq!(
        (status, body.contains("not a member")),
        (403, true),
        "{body}"
    );
    let (status, _) = refused(&with_token(&server, "doc-wh", "stolen")).await;
    assert_eq!(status, 401);
    assert_eq!(store.calls(), 0);
    assert_eq!(server.stat(|s| &s.rooms_loaded), 0);

    let mut writer = connect_synced(&with_token(&server, "doc-wh", "writer")).await;
    let mut reader = connect_synced(&with_token(&server, "doc-wh", "reader")).await;
    insert_text(&writer, 0, "from writer");
    wait_text(&mut reader, "from writer").await;
    insert_text(&reader, 0, "from reader");
    reader
        .wait_for("denied", WAIT, |o, _| !o.denied.is_empty())
        .await
        .expect("read access from the webhook is enforced");
    // The refused edit was handled before the writer's barrier.
    barrier(&mut writer).await;
    assert_eq!(text(&writer), "from writer");
    let _ = &mut writer;
}

#[tokio::test]
async fn webhook_down_gives_503_and_loads_nothing() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let store = Arc::new(CountingStore::default());
    let server = start_auth(webhook_config(format!("http://{dead}/auth")), store.clone()).await;
    let (status, body) = refused(&with_token(&server, "doc-down", "writer")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(store.calls(), 0);
    assert_eq!(server.stat(|s| &s.rooms_loaded), 0);
}

#[tokio::test]
async fn metrics_needs_the_admin_token_when_one_is_set_and_health_stays_open() {
    let mut config = jwt_config();
    config.admin.token = Some(Secret::new("admin-s3cret"));
    let server = start_auth(config, Arc::new(MemoryStore::new())).await;
    assert_eq!(http_get(server.addr, "/metrics", None).await.0, 401);
    assert_eq!(
        http_get(server.addr, "/metrics", Some("wrong")).await.0,
        401
    );
    // A client token is not an admin token.
    let client = token(&["*"], Level::Write, None);
    assert_eq!(
        http_get(server.addr, "/metrics", Some(&client)).await.0,
        401
    );
    let (status, body) = http_get(server.addr, "/metrics", Some("admin-s3cret")).await;
    assert_eq!(status, 200);
    assert!(body.contains("ripple_rooms_loaded_total"));
    assert_eq!(http_get(server.addr, "/healthz", None).await.0, 200);
    assert_eq!(http_get(server.addr, "/readyz", None).await.0, 200);

    // Without an admin token /metrics is open (development).
    let open = start(test_config()).await;
    assert_eq!(http_get(open.addr, "/metrics", None).await.0, 200);
}
