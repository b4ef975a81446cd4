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
