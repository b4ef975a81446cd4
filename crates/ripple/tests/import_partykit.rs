//! `ripple import-partykit` end to end, with the real binary: against a temporary copy of a
//! PartyKit dev server's real state folder (made by partykit 0.0.115 + y-partykit 0.0.33 with
//! real YPartyKitProvider clients; `tests/fixtures/partykit-dev-state`), and against stores
//! this file builds itself with y-partykit's key and value encoding, so the format knowledge is
//! in code and not only in a blob.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::SystemTime;

use bytes::Bytes;
use common::ripple;
use ripple_core::room::Room;
use ripple_core::RoomKey;
use ripple_store::{Backend, Durability};
use serde_json::Value;
use yrs::types::text::YChange;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, GetString, Map, ReadTxn, StateVector, Text, Transact};

/// The fixture (a copy of `../shared/fixtures/partykit-dev-state`, see its README), never
/// written: tests copy it before anything reads it.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/partykit-dev-state")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
            // The fixture is read-only; the copy must be writable for the tests that add files.
            let mut perms = std::fs::metadata(&target).expect("meta").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).expect("chmod");
        }
    }
}

/// A temporary directory with `state/` (a copy of the fixture's) and room for `data/`.
fn fixture_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture().join("state"), &tmp.path().join("state"));
    tmp
}

fn expected() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(fixture().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn import(root: &Path, extra: &[&str]) -> Output {
    ripple()
        .arg("import-partykit")
        .arg(root.join("state"))
        .arg("--data-dir")
        .arg(root.join("data"))
        .args(extra)
        .output()
        .expect("run ripple import-partykit")
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `--json` lines of a run.
fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn status_of(lines: &[Value], party: &str, room: &str) -> String {
    lines
        .iter()
        .find(|l| l["party"] == party && l["room"] == room)
        .map(|l| l["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no line for {party}/{room} in {lines:?}"))
}

/// The stored state of every room of the SQLite data directory `data`, as one Yjs update each.
async fn stored_rooms(data: &Path) -> BTreeMap<String, Vec<u8>> {
    let backend = Backend::open_existing("sqlite", data, Durability::Strict)
        .await
        .expect("open the data dir");
    stored_rooms_of(&backend).await
}

async fn stored_rooms_of(backend: &Backend) -> BTreeMap<String, Vec<u8>> {
    let store = backend.store();
    let mut out = BTreeMap::new();
    for info in store.list().await.expect("list") {
        let stored = store.load(&info.key).await.expect("load");
        let room = Room::load(&stored, 0).expect("the stored room loads");
        let state = room
            .doc()
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        out.insert(info.key.to_string(), state);
    }
    out
}

fn doc_of(state: &[u8]) -> Doc {
    let doc = Doc::new();
    let update = yrs::Update::decode_v1(state).expect("decodes");
    doc.transact_mut().apply_update(update).expect("applies");
    doc
}

fn any_json(any: &yrs::Any) -> Value {
    let mut s = String::new();
    any.to_json(&mut s);
    serde_json::from_str(&s).expect("json")
}

/// JSON numbers compared as numbers (yjs and yrs may spell 382 as 382 or 382.0).
fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), normalized(v))).collect())
        }
        other => other.clone(),
    }
}

/// What yjs' `toDelta()` gives for a text: inserts with their attributes.
fn delta(doc: &Doc, name: &str) -> Value {
    let t = doc.get_or_insert_text(name);
    let txn = doc.transact();
    let parts: Vec<Value> = t
        .diff(&txn, YChange::identity)
        .into_iter()
        .map(|d| {
            let mut part = serde_json::Map::new();
            let insert = match d.insert {
                yrs::Out::Any(any) => any_json(&any),
                other => Value::String(other.to_string(&txn)),
            };
            part.insert("insert".into(), insert);
            if let Some(attrs) = d.attributes {
                let attrs: serde_json::Map<String, Value> = attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), any_json(v)))
                    .collect();
                part.insert("attributes".into(), Value::Object(attrs));
            }
            Value::Object(part)
        })
        .collect();
    Value::Array(parts)
}

/// Asserts that the document `state` holds exactly the root types of `expected` (one room of
/// expected.json: `{NAME: {type, json | xml, delta?}}`) with their contents.
fn assert_room_equals(room: &str, state: &[u8], expected: &Value) {
    let doc = doc_of(state);
    let roots: Vec<String> = {
        let txn = doc.transact();
        let mut r: Vec<String> = txn.root_refs().map(|(n, _)| n.to_owned()).collect();
        r.sort();
        r
    };
    let mut want: Vec<String> = expected
        .as_object()
        .expect("a room is an object")
        .keys()
        .cloned()
        .collect();
    want.sort();
    assert_eq!(roots, want, "{room}: root types");
    for (name, spec) in expected.as_object().expect("object") {
        let what = format!("{room}.{name}");
        match spec["type"].as_str().expect("type") {
            "Text" => {
                let t = doc.get_or_insert_text(name.as_str());
                assert_eq!(
                    Value::String(t.get_string(&doc.transact())),
                    spec["json"],
                    "{what}: text"
                );
                assert_eq!(delta(&doc, name), spec["delta"], "{what}: delta");
            }
            "Map" => {
                let m = doc.get_or_insert_map(name.as_str());
                let got = any_json(&m.to_json(&doc.transact()));
                assert_eq!(normalized(&got), normalized(&spec["json"]), "{what}");
            }
            "Array" => {
                let a = doc.get_or_insert_array(name.as_str());
                let got = any_json(&a.to_json(&doc.transact()));
                assert_eq!(normalized(&got), normalized(&spec["json"]), "{what}");
            }
            "XmlFragment" => {
                let x = doc.get_or_insert_xml_fragment(name.as_str());
                assert_eq!(
                    Value::String(x.get_string(&doc.transact())),
                    spec["xml"],
                    "{what}"
                );
            }
            other => panic!("{what}: unexpected type {other}"),
        }
    }
}

/// Every file under `dir` with its bytes and modification time.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let meta = std::fs::metadata(&path).expect("meta");
                let bytes = std::fs::read(&path).expect("read");
                out.insert(path, (bytes, meta.modified().expect("mtime")));
            }
        }
    }
    out
}

const MAIN: &str = "party/-PartyKitDurable";

/// The keys of a fixture file, read from a copy of the main file alone (`with_wal` false) or
/// with its WAL.
fn fixture_keys(root: &Path, with_wal: bool) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root.join("state").join(MAIN)).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "sqlite") {
            continue;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let copy = tmp.path().join("x.sqlite");
        std::fs::copy(&path, &copy).expect("copy");
        if with_wal {
            std::fs::copy(
                format!("{}-wal", path.display()),
                tmp.path().join("x.sqlite-wal"),
            )
            .expect("copy wal");
        }
        let conn = rusqlite::Connection::open(&copy).expect("open");
        let keys: Vec<String> = match conn.prepare("SELECT key FROM _cf_KV ORDER BY key") {
            Ok(mut stmt) => stmt
                .query_map([], |r| r.get(0))
                .expect("query")
                .map(|k| k.expect("key"))
                .collect(),
            Err(_) => Vec::new(), // no table yet: everything is in the WAL
        };
        out.insert(path.display().to_string(), keys);
    }
    out
}

#[test]
fn the_fixture_is_what_the_tests_claim() {
    // The claims the other tests rest on: there is a chunked value, a room with many
    // un-compacted updates, and every room's data is only in un-checkpointed WALs.
    let root = fixture_copy();
    let with_wal: Vec<String> = fixture_keys(root.path(), true)
        .into_values()
        .flatten()
        .collect();
    assert!(
        with_wal
            .iter()
            .any(|k| k.contains("\"wb-big\"") && k.ends_with("#001")),
        "wb-big has a second chunk: {with_wal:?}"
    );
    let live = with_wal
        .iter()
        .filter(|k| k.starts_with("\"v1\"#\"wb-live\"#\"update\""))
        .count();
    assert!(live > 100, "wb-live holds {live} un-compacted updates");
    let without: Vec<String> = fixture_keys(root.path(), false)
        .into_values()
        .flatten()
        .collect();
    assert!(without.is_empty(), "the main files alone hold {without:?}");
}

#[tokio::test]
async fn every_room_of_the_fixture_imports_exactly_including_the_chunked_and_the_killed_one() {
    let root = fixture_copy();
    let started = std::time::Instant::now();
    let out = import(root.path(), &["--json"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let lines = lines(&out);
    let expected = expected();
    assert_eq!(lines.len(), expected.len(), "one line per room: {lines:?}");
    for room in expected.keys() {
        assert_eq!(status_of(&lines, "main", room), "imported");
    }
    let big = lines
        .iter()
        .find(|l| l["room"] == "wb-big")
        .expect("wb-big");
    assert_eq!(big["roots"], serde_json::json!(["text-body"]));
    let live = lines
        .iter()
        .find(|l| l["room"] == "wb-live")
        .expect("wb-live");
    assert!(live["updates"].as_u64().unwrap_or(0) > 100, "{live}");

    let stored = stored_rooms(&root.path().join("data")).await;
    assert_eq!(
        stored.keys().cloned().collect::<Vec<_>>(),
        expected
            .keys()
            .map(|r| format!("main/{r}"))
            .collect::<Vec<_>>()
    );
    for (room, want) in &expected {
        assert_room_equals(room, &stored[&format!("main/{room}")], want);
    }
    eprintln!("imported the fixture in {took:?}");
}

#[test]
fn the_cli_export_path_shows_the_imported_text() {
    let root = fixture_copy();
    let out = import(root.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ROOT TYPES"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("imported") && l.contains("main/wb-big")),
        "{table}"
    );
    let out = ripple()
        .args(["export", "main/wb-big", "--json", "--data-dir"])
        .arg(root.path().join("data"))
        .output()
        .expect("export");
    assert!(out.status.success(), "{}", text(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["text-body"], expected()["wb-big"]["text-body"]["json"]);
}

#[test]
fn the_originals_are_left_untouched() {
    let root = fixture_copy();
    let before = tree(&root.path().join("state"));
    for args in [&["--dry-run"][..], &[], &["--merge"]] {
        let out = import(root.path(), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let after = tree(&root.path().join("state"));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "no file appeared or vanished (no -shm rebuilt, no WAL checkpointed away)"
    );
    for (path, (bytes, mtime)) in &before {
        let (b, m) = &after[path];
        assert!(b == bytes, "{} changed", path.display());
        assert_eq!(m, mtime, "{} was written", path.display());
    }
}

#[tokio::test]
async fn a_dry_run_stores_nothing() {
    let root = fixture_copy();
    let out = import(root.path(), &["--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    for line in lines(&out) {
        assert_eq!(line["status"], "would-import", "{line}");
    }
    assert!(
        !root.path().join("data").exists(),
        "a dry run into no storage creates none"
    );

    // Into existing storage: nothing written there either.
    let backend = Backend::open("sqlite", &root.path().join("data"), Durability::Strict)
        .await
        .expect("create");
    let key = RoomKey::new("main", "other", 256).expect("key");
    backend
        .store()
        .append(&key, 0, vec![text_update("t", "hi")])
        .await
        .expect("append");
    drop(backend);
    let before = rooms_json(root.path());
    let out = import(root.path(), &["--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rooms_json(root.path()), before);
}

fn text_update(name: &str, s: &str) -> Bytes {
    let doc = Doc::new();
    let t = doc.get_or_insert_text(name);
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, s);
    Bytes::from(txn.encode_update_v1())
}

/// `ripple rooms --json`: every stored room with its size, update count and last write.
fn rooms_json(root: &Path) -> String {
    let out = ripple()
        .args(["rooms", "--json", "--data-dir"])
        .arg(root.join("data"))
        .output()
        .expect("rooms");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_second_run_changes_nothing_with_or_without_merge() {
    let root = fixture_copy();
    let out = import(root.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let first = rooms_json(root.path());
    assert_eq!(first.lines().count(), 4, "{first}");
    for args in [&["--json"][..], &["--json", "--merge"]] {
        let out = import(root.path(), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        for line in lines(&out) {
            assert_eq!(line["status"], "skipped", "{args:?}: {line}");
        }
        // Same rooms, sizes, update counts and last-write times: nothing was written.
        assert_eq!(rooms_json(root.path()), first, "{args:?}");
    }
}

#[tokio::test]
async fn an_existing_room_is_skipped_unless_merge_and_then_keeps_both() {
    let root = fixture_copy();
    let data = root.path().join("data");
    let backend = Backend::open("sqlite", &data, Durability::Strict)
        .await
        .expect("create");
    let key = RoomKey::new("main", "wb-doc", 256).expect("key");
    backend
        .store()
        .append(&key, 0, vec![text_update("notes", "written in Ripple")])
        .await
        .expect("append");
    drop(backend);

    let out = import(root.path(), &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let l = lines(&out);
    assert_eq!(status_of(&l, "main", "wb-doc"), "skipped");
    assert_eq!(status_of(&l, "main", "wb-big"), "imported");
    let doc = doc_of(&stored_rooms(&data).await["main/wb-doc"]);
    let roots: Vec<String> = doc
        .transact()
        .root_refs()
        .map(|(n, _)| n.to_owned())
        .collect();
    assert_eq!(roots, vec!["notes".to_owned()], "skipped means untouched");

    let out = import(root.path(), &["--json", "--merge"]);
    assert!(out.status.success(), "{}", text(&out));
    let l = lines(&out);
    assert_eq!(status_of(&l, "main", "wb-doc"), "merged");
    assert_eq!(status_of(&l, "main", "wb-big"), "skipped");
    let state = &stored_rooms(&data).await["main/wb-doc"];
    let doc = doc_of(state);
    let notes = doc.get_or_insert_text("notes");
    assert_eq!(notes.get_string(&doc.transact()), "written in Ripple");
    // Everything PartyKit had is there too, exactly.
    let mut want = expected()["wb-doc"].clone();
    want.as_object_mut()
        .expect("object")
        .insert("notes".into(), serde_json::json!({"type": "Text", "json": "written in Ripple", "delta": [{"insert": "written in Ripple"}]}));
    assert_room_equals("wb-doc", state, &want);
    // And it is one snapshot, as after a server's compaction.
    let rooms = rooms_json(root.path());
    let line = rooms
        .lines()
        .find(|l| l.contains("\"main/wb-doc\""))
        .expect("listed");
    assert!(line.contains("\"updates\":0"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Stores built here, with y-partykit's encoding.

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A `Uint8Array` as V8's serializer (version 15) writes it, as workerd stores it.
fn v8_uint8array(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0xFF, 0x0F, b'B'];
    varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"VB");
    varint(&mut out, 0); // byte offset
    varint(&mut out, bytes.len() as u64);
    varint(&mut out, 0); // flags
    out
}

const CHUNK: usize = 128 * 1024;

/// y-partykit's `levelPut`: the value cut into 128 KiB chunks under `KEY#000`, `KEY#001`, ...
fn put_value(rows: &mut Vec<(String, Vec<u8>)>, key: &str, value: &[u8]) {
    let chunks: Vec<&[u8]> = if value.is_empty() {
        vec![value]
    } else {
        value.chunks(CHUNK).collect()
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        rows.push((format!("{key}#{i:03}"), v8_uint8array(chunk)));
    }
}

fn update_key(room: &str, clock: u64) -> String {
    format!("\"v1\"#\"{room}\"#\"update\"#{clock:09}")
}

/// y-partykit's `writeStateVector`: varUint clock, varUint8Array state vector.
fn put_state_vector(rows: &mut Vec<(String, Vec<u8>)>, room: &str, doc: &Doc, clock: u64) {
    let sv = yrs::updates::encoder::Encode::encode_v1(&doc.transact().state_vector());
    let mut value = Vec::new();
    varint(&mut value, clock);
    varint(&mut value, sv.len() as u64);
    value.extend_from_slice(&sv);
    put_value(rows, &format!("\"v1_sv\"#\"{room}\""), &value);
}

/// Writes `rows` into a new workerd-style SQLite file.
fn write_store(path: &Path, rows: &[(String, Vec<u8>)]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let conn = rusqlite::Connection::open(path).expect("create sqlite");
    conn.execute_batch("CREATE TABLE _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID;")
        .expect("create table");
    for (k, v) in rows {
        conn.execute("INSERT INTO _cf_KV (key, value) VALUES (?1, ?2)", (k, v))
            .expect("insert");
    }
}

/// A room as y-partykit logs it while clients edit: each update under the next clock, the
/// state vector written at the first one. Returns the rows and the document they make.
fn edited_room(room: &str, edits: &[&dyn Fn(&Doc)]) -> (Vec<(String, Vec<u8>)>, Doc) {
    let doc = Doc::new();
    let mut rows = Vec::new();
    for (clock, edit) in edits.iter().enumerate() {
        let before = doc.transact().state_vector();
        edit(&doc);
        let update = doc.transact().encode_state_as_update_v1(&before);
        if clock == 0 {
            put_state_vector(&mut rows, room, &doc, 0);
        }
        put_value(&mut rows, &update_key(room, clock as u64), &update);
    }
    (rows, doc)
}

#[tokio::test]
async fn a_store_built_here_imports_with_chunks_and_another_party() {
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("state");
    // A value over 128 KiB (three chunks) between two small updates.
    let big: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (rows, doc) = edited_room(
        "doc-1",
        &[
            &|d: &Doc| {
                let t = d.get_or_insert_text("body");
                t.insert(&mut d.transact_mut(), 0, "start ");
            },
            &|d: &Doc| {
                let t = d.get_or_insert_text("body");
                t.insert(&mut d.transact_mut(), 6, &big);
            },
            &|d: &Doc| {
                let m = d.get_or_insert_map("meta");
                m.insert(&mut d.transact_mut(), "title", "Chunked");
            },
        ],
    );
    assert!(
        rows.iter()
            .any(|(k, _)| k == &format!("{}#002", update_key("doc-1", 1))),
        "the big update is split into three chunks"
    );
    write_store(&state.join(MAIN).join("aa01.sqlite"), &rows);
    // A party `diagrams` (partykit.json `parties: { diagrams: ... }`): class diagramsDO.
    let (rows2, doc2) = edited_room(
        "diagram-7",
        &[&|d: &Doc| {
            let a = d.get_or_insert_array("shapes");
            a.push_back(&mut d.transact_mut(), "circle");
        }],
    );
    write_store(&state.join("party/-diagramsDO").join("bb02.sqlite"), &rows2);

    let out = import(root.path(), &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let l = lines(&out);
    assert_eq!(status_of(&l, "main", "doc-1"), "imported");
    assert_eq!(status_of(&l, "diagrams", "diagram-7"), "imported");
    let line = l.iter().find(|x| x["room"] == "doc-1").expect("line");
    assert_eq!(line["updates"], 3);
    assert_eq!(line["roots"], serde_json::json!(["body", "meta"]));

    let stored = stored_rooms(&root.path().join("data")).await;
    let got = doc_of(&stored["main/doc-1"]);
    let body = got.get_or_insert_text("body");
    assert_eq!(body.get_string(&got.transact()), format!("start {big}"));
    let want = doc.get_or_insert_text("body");
    assert_eq!(want.get_string(&doc.transact()), format!("start {big}"));
    let meta = got.get_or_insert_map("meta");
    assert_eq!(
        any_json(&meta.to_json(&got.transact())),
        serde_json::json!({"title": "Chunked"})
    );
    let got2 = doc_of(&stored["diagrams/diagram-7"]);
    let shapes = got2.get_or_insert_array("shapes");
    assert_eq!(
        any_json(&shapes.to_json(&got2.transact())),
        any_json(&doc2.get_or_insert_array("shapes").to_json(&doc2.transact()))
    );
}

#[tokio::test]
async fn corrupt_and_foreign_files_are_reported_and_skipped_and_nothing_is_half_imported() {
    let root = fixture_copy();
    let dir = root.path().join("state").join(MAIN);
    // Not SQLite at all.
    std::fs::write(
        dir.join("0bad.sqlite"),
        b"this is not a database, just bytes",
    )
    .expect("write");
    // SQLite, but some other program's.
    {
        let conn = rusqlite::Connection::open(dir.join("1other.sqlite")).expect("sqlite");
        conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            .expect("table");
    }
    // A Durable Object store of a party that is not y-partykit (the app's own keys).
    write_store(
        &dir.join("2chat.sqlite"),
        &[("messages".into(), v8_uint8array(b"[]"))],
    );
    // A y-partykit room whose second update's value is not a V8 Uint8Array: the first one is
    // fine, and still nothing of the room may be imported.
    let (mut rows, _) = edited_room(
        "broken-value",
        &[
            &|d: &Doc| {
                let t = d.get_or_insert_text("t");
                t.insert(&mut d.transact_mut(), 0, "first");
            },
            &|d: &Doc| {
                let t = d.get_or_insert_text("t");
                t.insert(&mut d.transact_mut(), 5, " second");
            },
        ],
    );
    let second = format!("{}#000", update_key("broken-value", 1));
    for (k, v) in rows.iter_mut() {
        if *k == second {
            *v = b"\"a JS string, not a Uint8Array\"".to_vec();
        }
    }
    write_store(&dir.join("3broken.sqlite"), &rows);
    // A room whose value unwraps but is not a Yjs update.
    let mut rows = Vec::new();
    put_value(&mut rows, &update_key("not-yjs", 0), &[0xFF; 40]);
    write_store(&dir.join("4notyjs.sqlite"), &rows);

    let out = import(root.path(), &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "errors set the exit code: {}",
        text(&out)
    );
    let l = lines(&out);
    let errors: Vec<&Value> = l.iter().filter(|x| x["status"] == "error").collect();
    assert_eq!(errors.len(), 5, "{errors:?}");
    let detail_of = |needle: &str| -> String {
        errors
            .iter()
            .find(|x| x["source"].as_str().unwrap_or_default().contains(needle))
            .map(|x| x["detail"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no error for {needle}: {errors:?}"))
    };
    assert!(
        detail_of("0bad").contains("not a SQLite database"),
        "{}",
        detail_of("0bad")
    );
    assert!(
        detail_of("1other").contains("no _cf_KV"),
        "{}",
        detail_of("1other")
    );
    assert!(
        detail_of("2chat").contains("not a y-partykit store"),
        "{}",
        detail_of("2chat")
    );
    assert!(
        detail_of("3broken").contains("update 1"),
        "{}",
        detail_of("3broken")
    );
    assert!(
        detail_of("4notyjs").contains("not a Yjs v1 update"),
        "{}",
        detail_of("4notyjs")
    );
    // The good rooms went in; the broken ones left no trace.
    let stored = stored_rooms(&root.path().join("data")).await;
    assert_eq!(stored.len(), 4, "{:?}", stored.keys());
    assert!(!stored.contains_key("main/broken-value"));
    assert!(!stored.contains_key("main/not-yjs"));
    for (room, want) in expected() {
        assert_room_equals(&room, &stored[&format!("main/{room}")], &want);
    }
}

#[test]
fn a_folder_without_partykit_state_is_an_error_naming_what_was_expected() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("state")).expect("mkdir");
    let out = import(root.path(), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("-PartyKitDurable"), "{}", text(&out));
    assert!(!root.path().join("data").exists(), "nothing created");
}

// ---------------------------------------------------------------------------------------------
// Postgres.

#[tokio::test]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn the_fixture_imports_into_postgres_under_leases() {
    let admin_url = ripple_store::testing::database_url();
    let name = format!("ripple_import_pk_{}", std::process::id());
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("drop");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("no database name in {admin_url}"),
    };

    let root = fixture_copy();
    let out = import(root.path(), &["--json", "--storage", &url]);
    assert!(out.status.success(), "{}", text(&out));
    for line in lines(&out) {
        assert_eq!(line["status"], "imported", "{line}");
    }
    let backend = Backend::open_existing(&url, Path::new("."), Durability::Strict)
        .await
        .expect("open");
    let stored = stored_rooms_of(&backend).await;
    for (room, want) in expected() {
        assert_room_equals(&room, &stored[&format!("main/{room}")], &want);
    }
    // A room leased by a live node is refused (reported, not written beside it).
    let key = RoomKey::new("main", "wb-doc", 256).expect("key");
    let grant = backend
        .store()
        .acquire(&key, "a-live-node", std::time::Duration::from_secs(60))
        .await
        .expect("lease");
    let out = import(root.path(), &["--json", "--merge", "--storage", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let l = lines(&out);
    assert_eq!(status_of(&l, "main", "wb-doc"), "error");
    assert_eq!(status_of(&l, "main", "wb-big"), "skipped");
    backend
        .store()
        .release(&key, grant.epoch)
        .await
        .expect("release");
    // Again, with the room free: nothing new, nothing written.
    let out = import(root.path(), &["--json", "--merge", "--storage", &url]);
    assert!(out.status.success(), "{}", text(&out));
    for line in lines(&out) {
        assert_eq!(line["status"], "skipped", "{line}");
    }
    drop(backend);
    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

// ---------------------------------------------------------------------------------------------
// A deployed project, through its export route.

/// A stand-in for a deployed PartyKit project whose `onRequest` exports rooms: GET
/// `/parties/PARTY/ROOM` with the right bearer token answers `Y.encodeStateAsUpdate`.
async fn deployed_project(rooms: Vec<(&'static str, Vec<u8>)>) -> String {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let rooms: std::sync::Arc<BTreeMap<&'static str, Vec<u8>>> =
        std::sync::Arc::new(rooms.into_iter().collect());
    let router = axum::Router::new().route(
        "/parties/{party}/{room}",
        axum::routing::get(
            move |axum::extract::Path((party, room)): axum::extract::Path<(String, String)>,
                  headers: HeaderMap| {
                let rooms = rooms.clone();
                async move {
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some("Bearer export-secret")
                    {
                        return StatusCode::FORBIDDEN.into_response();
                    }
                    let key = format!("{party}/{room}");
                    match rooms.get(key.as_str()) {
                        Some(bytes) => bytes.clone().into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_imports_the_rooms_a_deployed_project_exports() {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("body");
    t.insert(&mut doc.transact_mut(), 0, "deployed text");
    let doc_state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let diagram = Doc::new();
    let shapes = diagram.get_or_insert_array("shapes");
    shapes.push_back(&mut diagram.transact_mut(), "square");
    let diagram_state = diagram
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let url = deployed_project(vec![
        ("main/doc-1", doc_state),
        ("diagrams/diagram-9", diagram_state),
        ("main/garbage", vec![0xFF; 16]),
    ])
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let list = root.path().join("rooms.txt");
    std::fs::write(
        &list,
        "# rooms to move\ndoc-1\ndiagrams/diagram-9\nmain/missing\nmain/garbage\n",
    )
    .expect("write");
    let run = |extra: &[&str]| {
        ripple()
            .arg("import-partykit")
            .args(["--from-url", &url, "--rooms"])
            .arg(&list)
            .args(["--header", "Authorization: Bearer export-secret", "--json"])
            .arg("--data-dir")
            .arg(root.path().join("data"))
            .args(extra)
            .output()
            .expect("run")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let l = lines(&out);
    assert_eq!(status_of(&l, "main", "doc-1"), "imported");
    assert_eq!(status_of(&l, "diagrams", "diagram-9"), "imported");
    assert_eq!(status_of(&l, "main", "missing"), "error");
    assert_eq!(status_of(&l, "main", "garbage"), "error");
    let stored = stored_rooms(&root.path().join("data")).await;
    assert_eq!(stored.len(), 2, "{:?}", stored.keys());
    let got = doc_of(&stored["main/doc-1"]);
    assert_eq!(
        got.get_or_insert_text("body").get_string(&got.transact()),
        "deployed text"
    );
    let got = doc_of(&stored["diagrams/diagram-9"]);
    assert_eq!(
        any_json(&got.get_or_insert_array("shapes").to_json(&got.transact())),
        serde_json::json!(["square"])
    );
    // Twice: nothing changes.
    let out = run(&[]);
    let l = lines(&out);
    assert_eq!(status_of(&l, "main", "doc-1"), "skipped");
    assert_eq!(status_of(&l, "diagrams", "diagram-9"), "skipped");
}
