//! Persistence modes as the room actor applies them: what the store holds after sessions.

mod common;

use std::sync::Arc;

use common::*;
use ripple_core::{MemoryStore, RoomKey, Store, StoredRoom};
use ripple_server::{Config, PersistMode};

fn key(room: &str) -> RoomKey {
    RoomKey::new("main", room, 64).expect("key")
}

async fn stored(store: &Arc<MemoryStore>, room: &str) -> StoredRoom {
    store.load(&key(room)).await.expect("load")
}

fn text_of_stored(stored: &StoredRoom) -> String {
    let update = ripple_core::room::fold(stored, u64::MAX).expect("folds");
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    {
        use yrs::updates::decoder::Decode;
        let mut txn = yrs::Transact::transact_mut(&doc);
        txn.apply_update(yrs::Update::decode_v1(&update).expect("decodes"))
            .expect("applies");
    }
    let txn = yrs::Transact::transact(&doc);
    yrs::GetString::get_string(&t, &txn)
}

async fn session(server: &TestServer, room: &str, edits: usize, tag: &str) {
    let mut c = server.client(room).await;
    let before = server.stat(|s| &s.updates_applied);
    for i in 0..edits {
        insert_text(&c, 0, &format!("{tag}{i};"));
    }
    server
        .wait_stat(
            "edits applied",
            |s| &s.updates_applied,
            |n| n >= before + edits as u64,
        )
        .await;
    c.close();
    let _ = c.wait_closed(WAIT).await;
}

#[tokio::test]
async fn snapshot_mode_folds_the_log_when_the_last_client_leaves() {
    let store = Arc::new(MemoryStore::new());
    let server = start_with(test_config(), store.clone(), None).await;
    for s in 0..3 {
        session(&server, "snap", 5, &format!("s{s}-")).await;
        server
            .wait_stat("compaction", |s| &s.compactions, |n| n > s)
            .await;
        let st = stored(&store, "snap").await;
        assert!(
            st.updates.is_empty(),
            "session {s}: log folded, {} left",
            st.updates.len()
        );
        assert!(st.snapshot.is_some());
        assert_eq!(
            text_of_stored(&st).matches(';').count(),
            5 * (s as usize + 1)
        );
    }
}

#[tokio::test]
async fn snapshot_mode_compacts_a_busy_room_past_the_threshold() {
    let store = Arc::new(MemoryStore::new());
    let config = Config {
        compact_after_bytes: 2_000,
        ..test_config()
    };
    let server = start_with(config, store.clone(), None).await;
    let c = server.client("busy").await;
    let chunk = "x".repeat(300);
    for i in 0..20 {
        insert_text(&c, 0, &chunk);
        server
            .wait_stat("applied", |s| &s.updates_applied, |n| n > i)
            .await;
    }
    server
        .wait_stat("compaction while connected", |s| &s.compactions, |n| n >= 1)
        .await;
    let st = stored(&store, "busy").await;
    let log_bytes: usize = st.updates.iter().map(|(_, u)| u.len()).sum();
    assert!(
        log_bytes <= 2_000 + 400,
        "log stays near the threshold: {log_bytes} bytes"
    );
    assert_eq!(text_of_stored(&st).len(), 20 * 300, "nothing lost");
    drop(c);
}

#[tokio::test]
async fn history_mode_keeps_updates_up_to_the_limit_and_folds_the_oldest() {
    let store = Arc::new(MemoryStore::new());
    let config = Config {
        persist: PersistMode::History,
        history_max_updates: 10,
        ..test_config()
    };
    let server = start_with(config, store.clone(), None).await;
    // Under the limit nothing is folded, even when the room empties.
    session(&server, "hist", 8, "a").await;
    // The room unloads after its final compaction (if any): then look.
    server
        .wait_stat("room unloaded", |s| &s.rooms_active, |n| n == 0)
        .await;
    let st = stored(&store, "hist").await;
    assert_eq!(st.updates.len(), 8);
    assert!(st.snapshot.is_none());
    // Past it, the oldest are folded until half the limit is left.
    session(&server, "hist", 25, "b").await;
    server
        .wait_stat("history compaction", |s| &s.compactions, |n| n >= 1)
        .await;
    let st = stored(&store, "hist").await;
    assert!(st.updates.len() <= 10, "{} updates kept", st.updates.len());
    assert!(st.snapshot.is_some());
    assert_eq!(text_of_stored(&st).matches(';').count(), 33, "nothing lost");
}

#[tokio::test]
async fn none_mode_stores_nothing() {
    let store = Arc::new(MemoryStore::new());
    let mut config = test_config();
    config.parties.insert(
        "scratch".into(),
        ripple_server::config::PartyConfig {
            persist: Some(PersistMode::None),
            ..Default::default()
        },
    );
    let server = start_with(config, store.clone(), None).await;
    let mut c = ripple_client::Client::connect(&server.party_url("scratch", "tmp"))
        .await
        .expect("connect");
    c.synced(WAIT).await.expect("synced");
    insert_text(&c, 0, "ephemeral");
    server
        .wait_stat("applied", |s| &s.updates_applied, |n| n == 1)
        .await;
    let st = store
        .load(&RoomKey::new("scratch", "tmp", 64).expect("key"))
        .await
        .expect("load");
    assert!(st.is_empty(), "party with persist = none stores nothing");
}
