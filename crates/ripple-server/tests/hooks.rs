//! The load hook against a real local HTTP receiver: seeds a new room once, is not called for a
//! room with state, and a failing or slow hook stores nothing and closes joiners with 1013.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::*;
use ripple_auth::Secret;
use ripple_client::Client;
use ripple_core::{MemoryStore, RoomKey, Store};
use ripple_server::closer::code;
use ripple_server::hooks::HooksConfig;
use ripple_server::Config;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

const SECRET: &str = "hook-secret";

/// What the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    Seed,
    Empty,
    Fail,
    Slow,
    Garbage,
}

struct Receiver {
    url: String,
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    bad_signatures: Arc<AtomicUsize>,
}

fn seed_update() -> Vec<u8> {
    let doc = Doc::with_client_id(42);
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, "seeded");
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    update
}

async fn receiver(answer: Answer) -> Receiver {
    let calls = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let bad_signatures = Arc::new(AtomicUsize::new(0));
    let (c, b, bad) = (calls.clone(), bodies.clone(), bad_signatures.clone());
    let app = axum::Router::new().route(
        "/load",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (c, b, bad) = (c.clone(), b.clone(), bad.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let signature = headers
                    .get(ripple_auth::SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !ripple_auth::verify_webhook_signature(
                    SECRET.as_bytes(),
                    signature,
                    &body,
                    SystemTime::now(),
                    Duration::from_secs(60),
                ) {
                    bad.fetch_add(1, Ordering::SeqCst);
                }
                if let Ok(v) = serde_json::from_slice(&body) {
                    b.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
                match answer {
                    Answer::Seed => (StatusCode::OK, seed_update()).into_response(),
                    Answer::Empty => StatusCode::NO_CONTENT.into_response(),
                    Answer::Fail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    Answer::Slow => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        (StatusCode::OK, seed_update()).into_response()
                    }
                    Answer::Garbage => (StatusCode::OK, "not an update").into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver {
        url: format!("http://{addr}/load"),
        calls,
        bodies,
        bad_signatures,
    }
}

fn config_for(r: &Receiver) -> Config {
    Config {
        hooks: HooksConfig {
            load_url: r.url.clone(),
            load_timeout: Duration::from_millis(500),
            secret: Some(Secret::new(SECRET)),
            ..HooksConfig::default()
        },
        ..test_config()
    }
}

fn key(room: &str) -> RoomKey {
    RoomKey::new("main", room, 256).expect("key")
}

/// Waits until the server has counted `n` change deliveries: it counts one when the answer is
/// back, which may be after the hook saw the request.
async fn delivered(server: &TestServer, n: u64) {
    server
        .wait_stat(
            "the deliveries counted",
            |s| &s.hook_change_delivered,
            |d| d == n,
        )
        .await;
}

#[tokio::test]
async fn the_load_hook_seeds_a_new_room_once_before_anyone_syncs() {
    let hook = receiver(Answer::Seed).await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = start_with(config_for(&hook), store.clone(), None).await;
    // The first client's sync already has the seed: it came before the greeting.
    let c = server.client("fresh").await;
    assert_eq!(text(&c), "seeded");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    assert_eq!(hook.bad_signatures.load(Ordering::SeqCst), 0, "signed");
    assert_eq!(
        hook.bodies.lock().expect("bodies")[0],
        serde_json::json!({"party": "main", "room": "fresh"})
    );
    assert!(
        !store.load(&key("fresh")).await.expect("load").is_empty(),
        "stored"
    );
    // Once the room unloads and loads again, it has state: the hook is not called again.
    drop(c);
    server
        .wait_stat("unloaded", |s| &s.rooms_active, |n| n == 0)
        .await;
    let c = server.client("fresh").await;
    assert_eq!(text(&c), "seeded");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1, "called once");
}

#[tokio::test]
async fn the_load_hook_is_not_called_for_a_room_with_state() {
    let hook = receiver(Answer::Seed).await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let doc = Doc::with_client_id(7);
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, "mine");
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    store
        .append(&key("old"), 0, vec![update.into()])
        .await
        .expect("append");
    let server = start_with(config_for(&hook), store, None).await;
    let c = server.client("old").await;
    assert_eq!(text(&c), "mine");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_204_starts_the_room_empty() {
    let hook = receiver(Answer::Empty).await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = start_with(config_for(&hook), store.clone(), None).await;
    let c = server.client("blank").await;
    assert_eq!(text(&c), "");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    assert!(store.load(&key("blank")).await.expect("load").is_empty());
}

#[tokio::test]
async fn a_failing_slow_or_garbage_hook_stores_nothing_and_closes_joiners_with_1013() {
    for answer in [Answer::Fail, Answer::Slow, Answer::Garbage] {
        let hook = receiver(answer).await;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let server = start_with(config_for(&hook), store.clone(), None).await;
        let mut c = Client::connect(&server.url("doc")).await.expect("connect");
        let (close, reason) = c.wait_closed(WAIT).await.expect("closed");
        assert_eq!(close, code::TRY_AGAIN_LATER, "{reason}");
        assert!(reason.contains("load hook"), "{reason}");
        assert!(!c.observed().synced, "never synced an empty room");
        assert!(store.load(&key("doc")).await.expect("load").is_empty());
        assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
        server.stop().await.expect("stops");
    }
}

// ---------------------------------------------------------------------------------------------
// Change webhook
// ---------------------------------------------------------------------------------------------

/// One delivery the change receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    body: serde_json::Value,
    signed: bool,
    at: tokio::time::Instant,
}

/// How the change receiver answers its n-th call (0-based).
type Script = Arc<dyn Fn(usize) -> (StatusCode, Duration) + Send + Sync>;

struct ChangeReceiver {
    url: String,
    calls: Arc<AtomicUsize>,
    /// Deliveries answered 2xx.
    delivered: Arc<Mutex<Vec<Delivery>>>,
}

async fn change_receiver(script: Script) -> ChangeReceiver {
    let calls = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let (c, d) = (calls.clone(), delivered.clone());
    let app = axum::Router::new().route(
        "/change",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (c, d, script) = (c.clone(), d.clone(), script.clone());
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst);
                let (status, delay) = script(n);
                tokio::time::sleep(delay).await;
                let signature = headers
                    .get(ripple_auth::SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let signed = ripple_auth::verify_webhook_signature(
                    SECRET.as_bytes(),
                    signature,
                    &body,
                    SystemTime::now(),
                    Duration::from_secs(60),
                );
                if status.is_success() {
                    d.lock().unwrap_or_else(|e| e.into_inner()).push(Delivery {
                        body: serde_json::from_slice(&body).unwrap_or_default(),
                        signed,
                        at: tokio::time::Instant::now(),
                    });
                }
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    ChangeReceiver {
        url: format!("http://{addr}/change"),
        calls,
        delivered,
    }
}

fn always_ok() -> Script {
    Arc::new(|_| (StatusCode::OK, Duration::ZERO))
}

fn change_config(r: &ChangeReceiver, debounce_ms: u64, max_wait_ms: u64) -> Config {
    Config {
        hooks: HooksConfig {
            change_url: r.url.clone(),
            change_debounce: Duration::from_millis(debounce_ms),
            change_max_wait: Duration::from_millis(max_wait_ms),
            change_timeout: Duration::from_millis(500),
            change_objects: ripple_core::json::parse_kinds("t:text,meta:map").expect("kinds"),
            secret: Some(Secret::new(SECRET)),
            ..HooksConfig::default()
        },
        ..test_config()
    }
}

impl ChangeReceiver {
    fn deliveries(&self) -> Vec<Delivery> {
        self.delivered.lock().expect("deliveries").clone()
    }

    async fn wait_deliveries(&self, n: usize) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let d = self.deliveries();
            if d.len() >= n {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} deliveries, wanted {n}",
                d.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn edits_that_settle_are_sent_once_signed_with_the_configured_objects_and_seq() {
    let hook = change_receiver(always_ok()).await;
    let mut config = change_config(&hook, 300, 10_000);
    config.hooks.change_include_state = true;
    let server = start(config).await;
    let c = server.client("doc").await;
    for (i, s) in ["a", "b", "c"].iter().enumerate() {
        insert_text(&c, i as u32, s);
    }
    server
        .wait_stat("three edits", |s| &s.updates_applied, |n| n == 3)
        .await;
    let last_edit = tokio::time::Instant::now();
    let d = hook.wait_deliveries(1).await;
    // Debounced: one call covering all three edits, sent after the quiet time.
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    assert!(
        d[0].at >= last_edit + Duration::from_millis(250),
        "sent after the debounce"
    );
    assert!(d[0].signed, "the signature verifies");
    let body = &d[0].body;
    assert_eq!(body["party"], "main");
    assert_eq!(body["room"], "doc");
    assert_eq!(body["seq"], 3);
    assert_eq!(
        body["data"],
        serde_json::json!({"t": {"type": "Text", "content": "abc"}, "meta": {"type": "Map", "content": {}}})
    );
    // The whole state, base64: decodes to the same document.
    use base64::Engine as _;
    let state = base64::engine::general_purpose::STANDARD
        .decode(body["state"].as_str().expect("state"))
        .expect("base64");
    let doc = Doc::new();
    {
        use yrs::updates::decoder::Decode;
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&state).expect("update"))
            .expect("applies");
    }
    let t = doc.get_or_insert_text("t");
    assert_eq!(yrs::GetString::get_string(&t, &doc.transact()), "abc");
    delivered(&server, 1).await;
}

#[tokio::test]
async fn edits_that_never_settle_are_sent_after_max_wait() {
    let hook = change_receiver(always_ok()).await;
    let server = start(change_config(&hook, 60_000, 300)).await;
    let c = server.client("doc").await;
    let start = tokio::time::Instant::now();
    // Edit every 20 ms until a delivery arrives: the debounce (60 s) never elapses.
    let mut i = 0;
    while hook.deliveries().is_empty() {
        assert!(start.elapsed() < WAIT, "no delivery while edits go on");
        insert_text(&c, i, "x");
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = hook.deliveries();
    assert!(
        d[0].at - start >= Duration::from_millis(250),
        "not before max_wait"
    );
    assert!(d[0].body["seq"].as_u64().is_some_and(|s| s >= 1));
}

#[tokio::test]
async fn a_500_is_retried_until_it_succeeds() {
    let script: Script = Arc::new(|n| {
        if n < 2 {
            (StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO)
        } else {
            (StatusCode::OK, Duration::ZERO)
        }
    });
    let hook = change_receiver(script).await;
    let server = start(change_config(&hook, 50, 1000)).await;
    let c = server.client("doc").await;
    insert_text(&c, 0, "retry me");
    let d = hook.wait_deliveries(1).await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 3, "two 500s, then 200");
    assert_eq!(d[0].body["data"]["t"]["content"], "retry me");
    delivered(&server, 1).await;
    assert_eq!(server.stat(|s| &s.hook_change_retries), 2);
}

#[tokio::test]
async fn a_timeout_is_retried() {
    // The first call takes longer than change_timeout (500 ms); the second answers at once.
    let script: Script = Arc::new(|n| {
        if n == 0 {
            (StatusCode::OK, Duration::from_secs(2))
        } else {
            (StatusCode::OK, Duration::ZERO)
        }
    });
    let hook = change_receiver(script).await;
    let server = start(change_config(&hook, 50, 1000)).await;
    let c = server.client("doc").await;
    insert_text(&c, 0, "slow");
    // The receiver records the slow call too once it finishes sleeping; wait for the retry's.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.stat(|s| &s.hook_change_delivered) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retried after the timeout"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hook.calls.load(Ordering::SeqCst) >= 2);
    assert_eq!(server.stat(|s| &s.hook_change_retries), 1);
}

#[tokio::test]
async fn a_change_is_flushed_when_the_room_unloads() {
    let hook = change_receiver(always_ok()).await;
    // A debounce far longer than the test: only the unload can send it.
    let server = start(change_config(&hook, 600_000, 600_000)).await;
    let c = server.client("doc").await;
    insert_text(&c, 0, "bye");
    server
        .wait_stat("edit", |s| &s.updates_applied, |n| n == 1)
        .await;
    c.close();
    let d = hook.wait_deliveries(1).await;
    assert_eq!(d[0].body["data"]["t"]["content"], "bye");
    assert_eq!(d[0].body["seq"], 1);
}

#[tokio::test]
async fn a_change_is_flushed_on_shutdown() {
    let hook = change_receiver(always_ok()).await;
    let server = start(change_config(&hook, 600_000, 600_000)).await;
    let c = server.client("doc").await;
    insert_text(&c, 0, "before shutdown");
    server
        .wait_stat("edit", |s| &s.updates_applied, |n| n == 1)
        .await;
    // The graceful stop SIGTERM triggers in the binary; it returns once work has drained.
    server.stop().await.expect("stops");
    let d = hook.deliveries();
    assert_eq!(d.len(), 1, "delivered before the server finished stopping");
    assert_eq!(d[0].body["data"]["t"]["content"], "before shutdown");
    drop(c);
}

#[tokio::test]
async fn a_party_can_turn_the_change_webhook_off_or_point_it_elsewhere() {
    let main_hook = change_receiver(always_ok()).await;
    let other_hook = change_receiver(always_ok()).await;
    let mut config = change_config(&main_hook, 50, 1000);
    config.parties.insert(
        "quiet".into(),
        ripple_server::config::PartyConfig {
            hooks: ripple_server::hooks::PartyHooks {
                change_url: Some(String::new()),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    config.parties.insert(
        "other".into(),
        ripple_server::config::PartyConfig {
            hooks: ripple_server::hooks::PartyHooks {
                change_url: Some(other_hook.url.clone()),
                change_objects: Some(ripple_core::json::parse_kinds("t:text").expect("k")),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let server = start(config).await;
    let mut clients = Vec::new();
    for (i, party) in ["quiet", "other", "main"].into_iter().enumerate() {
        let mut c = Client::connect(&server.party_url(party, "doc"))
            .await
            .expect("connect");
        c.synced(WAIT).await.expect("synced");
        insert_text(&c, 0, party);
        server
            .wait_stat("edit", |s| &s.updates_applied, |n| n == i as u64 + 1)
            .await;
        clients.push(c);
    }
    let other = other_hook.wait_deliveries(1).await;
    assert_eq!(other[0].body["party"], "other");
    assert_eq!(
        other[0].body["data"],
        serde_json::json!({"t": {"type": "Text", "content": "other"}})
    );
    // "quiet" was edited first with the same debounce: had it been sent (to the global URL),
    // it would have arrived before "main".
    let main = main_hook.wait_deliveries(1).await;
    assert_eq!(main[0].body["party"], "main");
    assert!(main_hook
        .deliveries()
        .iter()
        .all(|d| d.body["party"] != "quiet"));
    delivered(&server, 2).await;
}

#[tokio::test]
async fn a_deleted_rooms_unsent_change_is_dropped() {
    let hook = change_receiver(always_ok()).await;
    let server = start(change_config(&hook, 600_000, 600_000)).await;
    let mut c = server.client("doc").await;
    insert_text(&c, 0, "doomed");
    server
        .wait_stat("edit", |s| &s.updates_applied, |n| n == 1)
        .await;
    let client = reqwest::Client::new();
    let resp = client
        .delete(format!("http://{}/api/v1/rooms/main/doc", server.addr))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 200);
    let (close, _) = c.wait_closed(WAIT).await.expect("closed");
    assert_eq!(close, code::ROOM_DELETED);
    // Shutdown sends every pending change at once: none is left for the deleted room.
    server.stop().await.expect("stops");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 0);
}
