//! The HTTP document API end to end: a real server on port 0, a plain HTTP client, and
//! `ripple_client` WebSocket clients in the same rooms.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use ripple_auth::{mint_hs256, Access as Level, AuthConfig, JwtConfig, Secret};
use ripple_client::Client;
use ripple_core::{MemoryStore, RoomKey, Store};
use ripple_server::closer::code;
use ripple_server::config::AuthSettings;
use ripple_server::token_auth::authorizer;
use ripple_server::Config;
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

/// An HTTP answer.
struct Answer {
    status: u16,
    content_type: String,
    body: bytes::Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error answer: the status, JSON `{"error", "detail"}`.
    fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(self.content_type.starts_with("application/json"));
        let v = self.json();
        assert_eq!(v["error"], error, "{v}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    fn new(server: &TestServer) -> Self {
        Self {
            base: format!("http://{}", server.addr),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    fn with_token(&self, token: &str) -> Self {
        Self {
            base: self.base.clone(),
            http: self.http.clone(),
            token: Some(token.to_owned()),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("answer in time")
            .expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.bytes().await.expect("body");
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> Answer {
        self.call(reqwest::Method::POST, path, Some(body.into()))
            .await
    }

    async fn post_json(&self, path: &str, body: Value) -> Answer {
        self.post(path, body.to_string()).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// A Yjs update inserting `s` into text "t" of a fresh document (the same bytes for the same
/// `s`: the client id is derived from it).
fn text_update(s: &str) -> Vec<u8> {
    let id = s
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let doc = Doc::with_client_id(id % (1 << 30) + 1);
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, s);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    update
}

fn doc_from(update: &[u8]) -> Doc {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("decodes"))
        .expect("applies");
    doc
}

fn text_of(doc: &Doc, name: &str) -> String {
    let t = doc.get_or_insert_text(name);
    let s = t.get_string(&doc.transact());
    s
}

async fn stored_text(store: &Arc<dyn Store>, room: &str) -> String {
    let key = RoomKey::new("main", room, 256).expect("key");
    let stored = store.load(&key).await.expect("load");
    let room = ripple_core::room::Room::load(&stored, 0).expect("loads");
    text_of(room.doc(), "t")
}

async fn loaded(server: &TestServer, admin: &Api) -> Vec<Value> {
    let _ = server;
    admin.get("/api/v1/rooms").await.json()["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter(|r| r["loaded"] == true)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_posted_update_is_stored_before_the_answer_and_reaches_connected_clients() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    let mut client = server.client("doc").await;

    let a = api
        .post("/api/v1/rooms/main/doc/update", text_update("hello"))
        .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["changed"], true);
    let seq = v["seq"].as_u64().expect("seq");
    assert!(seq >= 1);
    // Durable before the answer: the store has it now, without waiting.
    assert_eq!(stored_text(&server.store, "doc").await, "hello");
    wait_text(&mut client, "hello").await;

    // The same update again changes nothing: neither stored nor relayed.
    let again = api
        .post("/api/v1/rooms/main/doc/update", text_update("hello"))
        .await
        .json();
    assert_eq!(again, json!({"seq": seq, "changed": false}));
}

#[tokio::test]
async fn an_update_that_does_not_decode_is_refused_and_changes_nothing() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    api.post("/api/v1/rooms/main/doc/update", text_update("ok"))
        .await;
    for bad in [
        &b""[..],
        b"\x00",
        b"not a yjs update",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    ] {
        api.post("/api/v1/rooms/main/doc/update", bad.to_vec())
            .await
            .assert_error(400, "bad_request");
    }
    let key = RoomKey::new("main", "doc", 256).expect("key");
    let stored = server.store.load(&key).await.expect("load");
    assert_eq!(stored.last_seq(), 1, "only the good update is stored");
    assert_eq!(stored_text(&server.store, "doc").await, "ok");
}

#[tokio::test]
async fn state_equals_the_clients_state_and_sv_returns_only_what_it_lacks() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    let mut client = server.client("doc").await;
    insert_text(&client, 0, "from a client");
    api.post("/api/v1/rooms/main/doc/update", text_update("api: "))
        .await;
    let want = {
        let txn = client.doc().transact();
        txn.get_text("t").map(|t| t.get_string(&txn))
    };
    client
        .wait_for("both edits", WAIT, |_, doc| {
            doc.get_or_insert_text("t")
                .get_string(&doc.transact())
                .len()
                == 18
        })
        .await
        .expect("client has both");
    let a = api.get("/api/v1/rooms/main/doc/state").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "application/octet-stream");
    let server_doc = doc_from(&a.body);
    assert_eq!(text_of(&server_doc, "t"), text_of(client.doc(), "t"));
    assert!(want.is_some());

    // A peer that has part of it asks with its state vector and gets only the rest.
    let partial = doc_from(&text_update("api: "));
    let sv = partial.transact().state_vector().encode_v1();
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        let encoded = engine.encode(&sv);
        let q: String = form_urlencoded::byte_serialize(encoded.as_bytes()).collect();
        let diff = api
            .get(&format!("/api/v1/rooms/main/doc/state?sv={q}"))
            .await;
        assert_eq!(diff.status, 200);
        assert!(
            diff.body.len() < a.body.len(),
            "a diff, not the whole state"
        );
        let peer = doc_from(&text_update("api: "));
        peer.transact_mut()
            .apply_update(Update::decode_v1(&diff.body).expect("decodes"))
            .expect("applies");
        assert_eq!(text_of(&peer, "t"), text_of(client.doc(), "t"));
    }
    api.get("/api/v1/rooms/main/doc/state?sv=***")
        .await
        .assert_error(400, "bad_request");
    // Base64 of bytes that are no state vector.
    api.get("/api/v1/rooms/main/doc/state?sv=_____w")
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn reads_of_a_room_with_nothing_stored_are_404_and_do_not_load_it() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    for path in [
        "/api/v1/rooms/main/nothing",
        "/api/v1/rooms/main/nothing/state",
        "/api/v1/rooms/main/nothing/json",
    ] {
        api.get(path).await.assert_error(404, "not_found");
    }
    api.delete("/api/v1/rooms/main/nothing")
        .await
        .assert_error(404, "not_found");
    assert_eq!(server.stat(|s| &s.rooms_loaded), 0, "no room was loaded");
    // Closing a room that is not loaded closes nothing and loads nothing.
    let closed = api.post("/api/v1/rooms/main/nothing/close", "").await;
    assert_eq!(closed.json(), json!({"closed": 0}));
    assert_eq!(server.stat(|s| &s.rooms_loaded), 0);
    // Bad ids are 400.
    let long = "x".repeat(300);
    api.get(&format!("/api/v1/rooms/main/{long}"))
        .await
        .assert_error(400, "bad_request");
    api.get("/api/v1/rooms/main/a%7Cb/state")
        .await
        .assert_error(404, "not_found"); // an escape is part of a valid raw id
}

#[tokio::test]
async fn room_info_and_the_listing_cover_stored_and_loaded_rooms_with_pages() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    for room in ["a1", "a2", "a3", "b1"] {
        api.post(
            &format!("/api/v1/rooms/main/{room}/update"),
            text_update(room),
        )
        .await;
    }
    api.post("/api/v1/rooms/other/a9/update", text_update("x"))
        .await;
    let _client = server.client("a2").await;

    let info = api.get("/api/v1/rooms/main/a2").await.json();
    assert_eq!(info["party"], "main");
    assert_eq!(info["room"], "a2");
    assert_eq!(info["loaded"], true);
    assert_eq!(info["connections"], 1);
    assert!(info["stored_bytes"].as_u64().is_some_and(|n| n > 0));
    // Snapshot mode folded the log when the room emptied after the post.
    assert!(info["update_count"].as_u64().is_some());
    assert!(info["last_change_ms"].as_i64().is_some());

    let page = api
        .get("/api/v1/rooms?party=main&prefix=a&limit=2")
        .await
        .json();
    let names: Vec<&str> = page["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["room"].as_str())
        .collect();
    assert_eq!(names, ["a1", "a2"]);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let page2 = api
        .get(&format!(
            "/api/v1/rooms?party=main&prefix=a&limit=2&cursor={cursor}"
        ))
        .await
        .json();
    let names: Vec<&str> = page2["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["room"].as_str())
        .collect();
    assert_eq!(names, ["a3"]);
    assert_eq!(page2["next_cursor"], Value::Null);
    let all = api.get("/api/v1/rooms").await.json();
    assert_eq!(all["rooms"].as_array().map(Vec::len), Some(5));
    api.get("/api/v1/rooms?limit=0")
        .await
        .assert_error(400, "bad_request");
    api.get("/api/v1/rooms?cursor=%%%")
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn json_reads_follow_declared_kinds_and_state_the_guess() {
    let mut config = test_config();
    config.parties.insert(
        "main".into(),
        ripple_server::config::PartyConfig {
            types: ripple_core::json::parse_kinds("items:array").expect("kinds"),
            ..Default::default()
        },
    );
    let server = start(config).await;
    let api = Api::new(&server);
    let doc = Doc::new();
    let (content, meta) = (
        doc.get_or_insert_text("content"),
        doc.get_or_insert_map("meta"),
    );
    let (items, shapes) = (
        doc.get_or_insert_array("items"),
        doc.get_or_insert_array("shapes"),
    );
    {
        let mut txn = doc.transact_mut();
        content.insert(&mut txn, 0, "Hello");
        meta.insert(&mut txn, "title", "Q3");
        yrs::Array::push_back(&items, &mut txn, 1);
        yrs::Array::push_back(&shapes, &mut txn, "square");
    }
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    api.post("/api/v1/rooms/main/doc/update", update).await;

    let v = api.get("/api/v1/rooms/main/doc/json").await.json();
    assert_eq!(v["data"]["content"], "Hello");
    assert_eq!(v["data"]["meta"], json!({"title": "Q3"}));
    assert_eq!(
        v["data"]["items"],
        json!([1]),
        "declared in [parties.main] types"
    );
    assert_eq!(
        v["kinds"]["items"],
        json!({"kind": "array", "guessed": false})
    );
    assert_eq!(
        v["kinds"]["content"],
        json!({"kind": "text", "guessed": true})
    );
    assert!(v["guess_rule"].as_str().is_some_and(|r| r.contains("map")));
    // ?types= adds to the configured kinds.
    let v = api
        .get("/api/v1/rooms/main/doc/json?types=shapes:array")
        .await
        .json();
    assert_eq!(v["data"]["shapes"], json!(["square"]));
    api.get("/api/v1/rooms/main/doc/json?types=shapes:blob")
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn every_json_edit_op_applies_in_one_transaction_and_reaches_clients() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    let mut client = server.client("doc").await;
    let a = api
        .post_json(
            "/api/v1/rooms/main/doc/json",
            json!({"ops": [
                {"map": "meta", "set": {"title": "Q3 plan", "draft": true}},
                {"map": "meta", "delete": ["draft"]},
                {"text": "content", "insert": "Hello world", "at": 0},
                {"text": "content", "delete": 6, "at": 5},
                {"text": "content", "insert": "!"},
                {"array": "items", "push": [{"id": 1}, {"id": 2}]},
                {"array": "items", "insert": ["first"], "at": 0},
                {"array": "items", "delete": 1, "at": 2},
            ]}),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.json());
    assert_eq!(a.json()["changed"], true);
    assert_eq!(
        server
            .store
            .load(&RoomKey::new("main", "doc", 256).expect("key"))
            .await
            .expect("load")
            .updates
            .len(),
        1,
        "one transaction, one stored update"
    );
    client
        .wait_for("edit", WAIT, |_, doc| {
            doc.get_or_insert_text("content")
                .get_string(&doc.transact())
                == "Hello!"
        })
        .await
        .expect("the client sees the edit");
    let title = {
        let meta = client.doc().get_or_insert_map("meta");
        let txn = client.doc().transact();
        meta.get(&txn, "title").map(|v| v.to_string(&txn))
    };
    assert_eq!(title.as_deref(), Some("Q3 plan"));
    let v = api
        .get("/api/v1/rooms/main/doc/json?types=items:array")
        .await
        .json();
    assert_eq!(
        v["data"],
        json!({"meta": {"title": "Q3 plan"}, "content": "Hello!", "items": ["first", {"id": 1}]})
    );
}

#[tokio::test]
async fn bad_json_edits_are_400_and_apply_nothing() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    api.post_json(
        "/api/v1/rooms/main/doc/json",
        json!({"ops": [{"map": "meta", "set": {"k": 1}}, {"text": "content", "insert": "abc"}]}),
    )
    .await;
    let before = api.get("/api/v1/rooms/main/doc/state").await.body;
    for body in [
        "not json".to_owned(),
        json!({"ops": [{"map": "meta", "frobnicate": 1}]}).to_string(),
        json!({"ops": [{"xml": "meta", "set": {}}]}).to_string(),
        // Valid first op, then a type mismatch: nothing of either applies.
        json!({"ops": [{"map": "meta", "set": {"x": 2}}, {"text": "meta", "insert": "x"}]})
            .to_string(),
        json!({"ops": [{"map": "content", "set": {"x": 2}}]}).to_string(),
        json!({"ops": [{"map": "meta", "set": {"x": 2}}, {"text": "content", "delete": 10, "at": 0}]})
            .to_string(),
        json!({"ops": [{"text": "content", "insert": "x", "at": 99}]}).to_string(),
    ] {
        api.post("/api/v1/rooms/main/doc/json", body.clone())
            .await
            .assert_error(400, "bad_request");
        let after = api.get("/api/v1/rooms/main/doc/state").await.body;
        assert_eq!(before, after, "{body} changed the document");
    }
    // A declared kind is enforced: content declared a map, used as text.
    api.post_json(
        "/api/v1/rooms/main/doc/json?types=content:map",
        json!({"ops": [{"text": "content", "insert": "x"}]}),
    )
    .await
    .assert_error(400, "bad_request");
}

#[tokio::test]
async fn bodies_over_max_message_bytes_are_413() {
    let config = Config {
        max_message_bytes: 1024,
        ..test_config()
    };
    let server = start(config).await;
    let api = Api::new(&server);
    api.post("/api/v1/rooms/main/doc/update", vec![0u8; 2048])
        .await
        .assert_error(413, "too_large");
    let big = json!({"ops": [{"text": "t", "insert": "x".repeat(2000)}]});
    api.post_json("/api/v1/rooms/main/doc/json", big)
        .await
        .assert_error(413, "too_large");
    assert_eq!(
        server.stat(|s| &s.rooms_loaded),
        0,
        "refused before the room"
    );
}

#[tokio::test]
async fn an_update_past_max_doc_bytes_is_413() {
    let config = Config {
        max_doc_bytes: 256,
        ..test_config()
    };
    let server = start(config).await;
    let api = Api::new(&server);
    api.post(
        "/api/v1/rooms/main/doc/update",
        text_update(&"y".repeat(1000)),
    )
    .await
    .assert_error(413, "too_large");
}

#[tokio::test]
async fn close_ends_connections_and_they_can_reconnect() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    let mut a = server.client("doc").await;
    let mut b = server.client("doc").await;
    let closed = api.post("/api/v1/rooms/main/doc/close", "").await.json();
    assert_eq!(closed, json!({"closed": 2}));
    for c in [&mut a, &mut b] {
        let (code, _) = c.wait_closed(WAIT).await.expect("closed");
        assert_eq!(code, code::CLOSED_BY_API);
    }
    let _again = server.client("doc").await;
}

#[tokio::test]
async fn delete_closes_connections_and_removes_what_is_stored() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    let mut client = server.client("doc").await;
    insert_text(&client, 0, "gone soon");
    api.get("/api/v1/rooms/main/doc/state").await;
    server
        .wait_stat("applied", |s| &s.updates_applied, |n| n == 1)
        .await;
    let a = api.delete("/api/v1/rooms/main/doc").await;
    assert_eq!(a.json(), json!({"deleted": true}));
    let (code, _) = client.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, code::ROOM_DELETED);
    let key = RoomKey::new("main", "doc", 256).expect("key");
    assert!(server.store.load(&key).await.expect("load").is_empty());
    // Once the room unloaded, it is gone for reads.
    let admin = Api::new(&server);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !loaded(&server, &admin).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "room unloads");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    api.get("/api/v1/rooms/main/doc/state")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_and_websocket_paths_still_work() {
    let server = start(test_config()).await;
    let api = Api::new(&server);
    api.get("/api/v1/nope").await.assert_error(404, "not_found");
    api.get("/api/v1/rooms/main/doc/nope")
        .await
        .assert_error(404, "not_found");
    api.post("/api/v1/rooms/main/doc/state", "")
        .await
        .assert_error(405, "method_not_allowed");
    api.call(reqwest::Method::PUT, "/api/v1/rooms/main/doc", None)
        .await
        .assert_error(405, "method_not_allowed");
    let spec = api.get("/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json()["openapi"], "3.1.0");
    // Rooms keep their WebSocket paths, including one named like the document.
    for url in [
        server.url("openapi.json"),
        server.url("api"),
        server.party_url("main", "doc"),
        format!("ws://{}/party/doc", server.addr),
    ] {
        let mut c = Client::connect(&url).await.expect("connect");
        c.synced(WAIT).await.expect("synced");
    }
}

const SECRET: &str = "api-test-secret";

fn jwt_config() -> Config {
    let mut config = Config {
        auth: AuthSettings::new(AuthConfig::Jwt(JwtConfig {
            secret: Some(Secret::new(SECRET)),
            leeway: Duration::ZERO,
            ..JwtConfig::default()
        })),
        ..test_config()
    };
    config.admin.token = Some(Secret::new("admin-token"));
    config
}

fn token(rooms: &[&str], access: Level, sub: Option<&str>) -> String {
    let rooms: Vec<String> = rooms.iter().map(|r| (*r).to_owned()).collect();
    mint_hs256(SECRET, &rooms, access, Duration::from_secs(3600), sub)
}

#[tokio::test]
async fn auth_admin_write_read_only_and_wrong_room() {
    let config = jwt_config();
    let auth = authorizer(&config.auth).expect("auth");
    let server = start_with(config, Arc::new(MemoryStore::new()), Some(auth)).await;
    let anon = Api::new(&server);
    let admin = anon.with_token("admin-token");
    let writer = anon.with_token(&token(&["doc"], Level::Write, Some("w")));
    let reader = anon.with_token(&token(&["doc"], Level::Read, Some("r")));
    let elsewhere = anon.with_token(&token(&["other"], Level::Write, None));
    let update = "/api/v1/rooms/main/doc/update";

    anon.post(update, text_update("x"))
        .await
        .assert_error(401, "unauthorized");
    anon.with_token("garbage")
        .get("/api/v1/rooms/main/doc/state")
        .await
        .assert_error(401, "unauthorized");
    elsewhere
        .post(update, text_update("x"))
        .await
        .assert_error(403, "forbidden");
    reader
        .post(update, text_update("x"))
        .await
        .assert_error(403, "forbidden");
    reader
        .post_json(
            "/api/v1/rooms/main/doc/json",
            json!({"ops": [{"map": "m", "set": {"a": 1}}]}),
        )
        .await
        .assert_error(403, "forbidden");
    reader
        .delete("/api/v1/rooms/main/doc")
        .await
        .assert_error(403, "forbidden");
    assert_eq!(server.stat(|s| &s.rooms_loaded), 0, "refusals load nothing");

    assert_eq!(writer.post(update, text_update("w")).await.status, 200);
    assert_eq!(admin.post(update, text_update("a")).await.status, 200);
    // Read access may GET.
    let state = reader.get("/api/v1/rooms/main/doc/state").await;
    assert_eq!(state.status, 200);
    let doc = doc_from(&state.body);
    assert_eq!(text_of(&doc, "t").len(), 2);
    assert_eq!(reader.get("/api/v1/rooms/main/doc/json").await.status, 200);
    // A token given as ?token= works too (as y-partykit sends it).
    let t = token(&["doc"], Level::Read, None);
    assert_eq!(
        anon.get(&format!("/api/v1/rooms/main/doc?token={t}"))
            .await
            .status,
        200
    );
    // Listing needs the admin token; a client token is not one.
    writer
        .get("/api/v1/rooms")
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(admin.get("/api/v1/rooms").await.status, 200);
}

#[tokio::test]
async fn close_with_user_revokes_only_that_users_sessions() {
    let config = jwt_config();
    let auth = authorizer(&config.auth).expect("auth");
    let server = start_with(config, Arc::new(MemoryStore::new()), Some(auth)).await;
    let admin = Api::new(&server).with_token("admin-token");
    let connect = |user: &'static str| {
        let url = format!(
            "{}&token={}",
            server.party_url("main", "doc"),
            token(&["doc"], Level::Write, Some(user))
        );
        async move {
            let mut c = Client::connect(&url).await.expect("connect");
            c.synced(WAIT).await.expect("synced");
            c
        }
    };
    let mut alice = connect("alice").await;
    let mut alice2 = connect("alice").await;
    let mut bob = connect("bob").await;
    let closed = admin
        .post("/api/v1/rooms/main/doc/close?user=alice", "")
        .await
        .json();
    assert_eq!(closed, json!({"closed": 2}));
    for c in [&mut alice, &mut alice2] {
        let (code, _) = c.wait_closed(WAIT).await.expect("closed");
        assert_eq!(code, code::CLOSED_BY_API);
    }
    // Bob is still in: an edit of his reaches the room.
    insert_text(&bob, 0, "bob here");
    server
        .wait_stat("bob's edit", |s| &s.updates_applied, |n| n >= 1)
        .await;
    assert!(bob
        .wait_for("still open", Duration::from_millis(1), |o, _| o
            .closed
            .is_none())
        .await
        .is_ok());
}
