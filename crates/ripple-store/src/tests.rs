//! The storage test suite. Each case is written once, against `&dyn Store` where the seam is
//! enough and against a [`Harness`] where it needs what only a backend offers (reopening, raw
//! SQL to damage a record, crash hooks), and runs for SQLite and Postgres.
//!
//! Postgres cases read `RIPPLE_TEST_DATABASE_URL`; each creates a schema of its own and drops
//! it at the end. They are `#[ignore]`d (cargo reports them so) and run with
//! `-- --include-ignored`, which `scripts/test.sh` passes when the variable is set.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ripple_core::{MemoryStore, RoomKey, Store, StoreError, StoredRoom};
use tokio_postgres::NoTls;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::{
    Backend, CompactStep, Durability, PostgresOptions, PostgresStore, Problem, RecordKind,
};

fn key(party: &str, room: &str) -> RoomKey {
    RoomKey::new(party, room, 256).expect("valid test key")
}

/// `text.len()` Yjs updates from one client, each appending one character to text `t`.
fn edits(client: u32, text: &str) -> Vec<Bytes> {
    let doc = Doc::with_client_id(u64::from(client));
    let t = doc.get_or_insert_text("t");
    text.chars()
        .map(|c| {
            let mut txn = doc.transact_mut();
            let len = t.len(&txn);
            t.insert(&mut txn, len, &c.to_string());
            Bytes::from(txn.encode_update_v1())
        })
        .collect()
}

/// One update holding the state of `updates` applied in order (what a compaction stores).
fn snapshot_of(updates: &[Bytes]) -> Bytes {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for data in updates {
            txn.apply_update(Update::decode_v1(data).expect("decodes"))
                .expect("applies");
        }
    }
    let txn = doc.transact();
    Bytes::from(txn.encode_state_as_update_v1(&StateVector::default()))
}

/// The text a loaded room holds.
fn text_of(stored: &StoredRoom) -> String {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    {
        let mut txn = doc.transact_mut();
        let log = stored.updates.iter().map(|(_, u)| u);
        for data in stored.snapshot.iter().chain(log) {
            txn.apply_update(Update::decode_v1(data).expect("decodes"))
                .expect("applies");
        }
    }
    let txn = doc.transact();
    t.get_string(&txn)
}

fn seqs(stored: &StoredRoom) -> Vec<u64> {
    stored.updates.iter().map(|(seq, _)| *seq).collect()
}

// ---------------------------------------------------------------------------------------------
// Harness: one backend, plus the few things a test needs beyond the seam.

enum Env {
    Sqlite { dir: tempfile::TempDir },
    Postgres { url: String, schema: String },
}

struct Harness {
    env: Env,
    durability: Durability,
    backend: Option<Backend>,
}

fn pg_url() -> String {
    crate::testing::database_url()
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("test connection");
    tokio::spawn(connection);
    client
}

impl Harness {
    async fn sqlite(_name: &str, durability: Durability) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut harness = Self {
            env: Env::Sqlite { dir },
            durability,
            backend: None,
        };
        harness.open().await;
        Some(harness)
    }

    async fn postgres(name: &str, durability: Durability) -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let url = pg_url();
        let schema = format!(
            "rt_{name}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut harness = Self {
            env: Env::Postgres { url, schema },
            durability,
            backend: None,
        };
        harness.open().await;
        Some(harness)
    }

    async fn open(&mut self) {
        let backend = match &self.env {
            Env::Sqlite { dir } => Backend::open("sqlite", dir.path(), self.durability).await,
            Env::Postgres { url, schema } => {
                let options = PostgresOptions {
                    schema: schema.clone(),
                    durability: self.durability,
                    ..PostgresOptions::default()
                };
                PostgresStore::connect_with_options(url, &options)
                    .await
                    .map(|s| Backend::Postgres(Arc::new(s)))
            }
        };
        self.backend = Some(backend.expect("open backend"));
    }

    /// Drops the store and opens a new one on the same storage.
    async fn reopen(&mut self) {
        self.backend = None;
        // Let the SQLite writer thread see its channel close and finish.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.open().await;
    }

    fn backend(&self) -> &Backend {
        self.backend.as_ref().expect("backend is open")
    }

    fn store(&self) -> Arc<dyn Store> {
        self.backend().store()
    }

    fn sqlite_path(&self) -> PathBuf {
        match &self.env {
            Env::Sqlite { dir } => dir.path().join(crate::sqlite::DB_FILE),
            Env::Postgres { .. } => unreachable!("not sqlite"),
        }
    }

    /// Flips every bit of the first data byte of one stored record, with raw SQL.
    async fn flip_byte(&self, room: &RoomKey, kind: RecordKind, seq: u64) {
        let table = match kind {
            RecordKind::Snapshot => "snapshots",
            RecordKind::Update => "updates",
        };
        let seq = i64::try_from(seq).expect("small seq");
        match &self.env {
            Env::Sqlite { .. } => {
                let path = self.sqlite_path();
                let (party, name) = (room.party().to_owned(), room.room().to_owned());
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path).expect("raw sqlite");
                    let select =
                        format!("SELECT data FROM {table} WHERE party=?1 AND room=?2 AND seq=?3");
                    let mut data: Vec<u8> = conn
                        .query_row(&select, rusqlite::params![party, name, seq], |r| r.get(0))
                        .expect("record exists");
                    data[0] ^= 0xff;
                    let update =
                        format!("UPDATE {table} SET data=?4 WHERE party=?1 AND room=?2 AND seq=?3");
                    let n = conn
                        .execute(&update, rusqlite::params![party, name, seq, data])
                        .expect("flip");
                    assert_eq!(n, 1);
                })
                .await
                .expect("flip task");
            }
            Env::Postgres { url, schema } => {
                let client = pg_client(url).await;
                let sql = format!(
                    "UPDATE \"{schema}\".{table} SET data = set_byte(data, 0, get_byte(data, 0) # 255)
                     WHERE party = $1 AND room = $2 AND seq = $3"
                );
                let n = client
                    .execute(&sql, &[&room.party(), &room.room(), &seq])
                    .await
                    .expect("flip");
                assert_eq!(n, 1);
            }
        }
    }

    /// Row count of `table` (for `room`, or all rows).
    async fn rows(&self, table: &str, room: Option<&RoomKey>) -> i64 {
        let (party, name) = room.map_or((String::new(), String::new()), |k| {
            (k.party().to_owned(), k.room().to_owned())
        });
        let all = room.is_none();
        match &self.env {
            Env::Sqlite { .. } => {
                let path = self.sqlite_path();
                let sql =
                    format!("SELECT count(*) FROM {table} WHERE ?3 OR (party = ?1 AND room = ?2)");
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path).expect("raw sqlite");
                    conn.query_row(&sql, rusqlite::params![party, name, all], |r| r.get(0))
                        .expect("count")
                })
                .await
                .expect("count task")
            }
            Env::Postgres { url, schema } => {
                let client = pg_client(url).await;
                let sql = format!(
                    "SELECT count(*) FROM \"{schema}\".{table}
                     WHERE $3 OR (party = $1 AND room = $2)"
                );
                let row = client
                    .query_one(&sql, &[&party, &name, &all])
                    .await
                    .expect("count");
                row.get(0)
            }
        }
    }

    async fn crash_mid_compact(
        &self,
        room: &RoomKey,
        snapshot: Bytes,
        through_seq: u64,
        step: CompactStep,
    ) {
        match self.backend() {
            Backend::Sqlite(store) => {
                let (store, room) = (store.clone(), room.clone());
                tokio::task::spawn_blocking(move || {
                    store.crash_mid_compact(&room, &snapshot, through_seq, step)
                })
                .await
                .expect("crash task")
                .expect("crash hook");
            }
            Backend::Postgres(store) => store
                .crash_mid_compact(room, &snapshot, through_seq, step)
                .await
                .expect("crash hook"),
            Backend::Memory(_) => unreachable!("no crash hook for memory"),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.backend = None;
        if let Env::Postgres { url, schema } = &self.env {
            // Drop the test's schema on a thread with a runtime of its own: Drop cannot await.
            let (url, schema) = (url.clone(), schema.clone());
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cleanup runtime");
                runtime.block_on(async {
                    let client = pg_client(&url).await;
                    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                    if let Err(e) = client.batch_execute(&sql).await {
                        eprintln!("dropping test schema {schema}: {e}");
                    }
                });
            });
            drop(cleanup.join());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cases.

async fn case_roundtrip(store: &dyn Store) {
    let room = key("main", "doc");
    assert!(store.load(&room).await.expect("load empty").is_empty());

    let updates = edits(1, "hey");
    assert_eq!(
        store
            .append(&room, 0, updates[..2].to_vec())
            .await
            .expect("append"),
        2
    );
    assert_eq!(
        store
            .append(&room, 0, updates[2..].to_vec())
            .await
            .expect("append"),
        3
    );
    // An empty append writes nothing and reports where the log is.
    assert_eq!(store.append(&room, 0, Vec::new()).await.expect("append"), 3);

    let stored = store.load(&room).await.expect("load");
    assert_eq!(stored.snapshot, None);
    assert_eq!(stored.snapshot_seq, 0);
    assert_eq!(seqs(&stored), vec![1, 2, 3]);
    let data: Vec<Bytes> = stored.updates.iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(data, updates);
    assert_eq!(text_of(&stored), "hey");
    assert_eq!(stored.last_seq(), 3);
}

async fn case_isolation(store: &dyn Store) {
    // Prefix-sharing names, another party, and ids that look hostile but are only data.
    let rooms = [
        key("main", "doc"),
        key("main", "doc-1"),
        key("other", "doc"),
        key("main", "x');DROP%20TABLE%20updates;--"),
        key("main", "%2e%2e%2f%2e%2e%2fetc"),
        key("main", "*"),
        key("main", "a'b(c)$x"),
    ];
    for (i, room) in rooms.iter().enumerate() {
        let payload: Vec<Bytes> = (0..=i)
            .map(|j| Bytes::from(format!("{room}#{j}")))
            .collect();
        assert_eq!(
            store.append(room, 0, payload).await.expect("append"),
            i as u64 + 1,
            "{room}"
        );
    }
    for (i, room) in rooms.iter().enumerate() {
        let stored = store.load(room).await.expect("load");
        let expected: Vec<(u64, Bytes)> = (0..=i)
            .map(|j| (j as u64 + 1, Bytes::from(format!("{room}#{j}"))))
            .collect();
        assert_eq!(stored.updates, expected, "{room}");
    }
    let listed: BTreeMap<RoomKey, u64> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|info| (info.key, info.update_count))
        .collect();
    for (i, room) in rooms.iter().enumerate() {
        assert_eq!(listed.get(room), Some(&(i as u64 + 1)), "{room}");
    }
    assert!(store
        .load(&key("main", "do"))
        .await
        .expect("load")
        .is_empty());
}

async fn case_list(store: &dyn Store, durable: bool) {
    let start_ms = crate::record::now_ms();
    let a = key("main", "list-a");
    let b = key("main", "list-b");
    let updates = edits(3, "abcd");
    store.append(&a, 0, updates.clone()).await.expect("append");
    store
        .append(&b, 0, updates[..1].to_vec())
        .await
        .expect("append");
    let snapshot = snapshot_of(&updates[..2]);
    store
        .compact(&a, 0, snapshot.clone(), 2)
        .await
        .expect("compact");

    let infos = store.list().await.expect("list");
    let info_a = infos.iter().find(|i| i.key == a).expect("a listed");
    let info_b = infos.iter().find(|i| i.key == b).expect("b listed");
    let log_bytes: usize = updates[2..].iter().map(Bytes::len).sum();
    assert_eq!(info_a.stored_bytes, (snapshot.len() + log_bytes) as u64);
    assert_eq!(info_a.update_count, 2);
    assert_eq!(info_b.stored_bytes, updates[0].len() as u64);
    assert_eq!(info_b.update_count, 1);
    if durable {
        assert!(info_a.last_change_ms >= start_ms);
        assert!(info_b.last_change_ms >= start_ms);
    }
    // One room's info is the listing's line; a room never written has none.
    assert_eq!(store.info(&a).await.expect("info").as_ref(), Some(info_a));
    assert_eq!(store.info(&b).await.expect("info").as_ref(), Some(info_b));
    let never = RoomKey::new("main", "never-written", 64).expect("key");
    assert_eq!(store.info(&never).await.expect("info"), None);
}

async fn case_reopen(h: &mut Harness) {
    let room = key("main", "survivor");
    let updates = edits(4, "durable");
    h.store()
        .append(&room, 0, updates[..4].to_vec())
        .await
        .expect("append");
    h.store()
        .compact(&room, 0, snapshot_of(&updates[..3]), 3)
        .await
        .expect("compact");
    h.store()
        .append(&room, 0, updates[4..].to_vec())
        .await
        .expect("append");
    let before = h.store().load(&room).await.expect("load");

    h.reopen().await;
    let after = h.store().load(&room).await.expect("load after reopen");
    assert_eq!(after, before);
    assert_eq!(text_of(&after), "durable");
    assert_eq!(after.snapshot_seq, 3);
    assert_eq!(seqs(&after), vec![4, 5, 6, 7]);
    // The sequence continues where it was.
    let more = edits(5, "!");
    assert_eq!(h.store().append(&room, 0, more).await.expect("append"), 8);
}

async fn case_group_commit(h: &Harness) {
    const ROOMS: usize = 10;
    const PER_ROOM: usize = 10;
    let store = h.store();
    let before = h.backend().commits().expect("durable backend");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PER_ROOM {
        for r in 0..ROOMS {
            let store = store.clone();
            tasks.spawn(async move {
                let room = key("main", &format!("gc-{r}"));
                let payload = Bytes::from(format!("room {r} update {i}"));
                let seq = store
                    .append(&room, 0, vec![payload.clone()])
                    .await
                    .expect("append");
                (room, seq, payload)
            });
        }
    }
    let mut acked: BTreeMap<RoomKey, Vec<(u64, Bytes)>> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (room, seq, payload) = done.expect("task");
        acked.entry(room).or_default().push((seq, payload));
    }
    let commits = h.backend().commits().expect("durable backend") - before;
    let appends = ROOMS * PER_ROOM;
    assert!(
        commits < appends as u64,
        "{commits} commits for {appends} appends: no batching"
    );
    eprintln!("group commit: {appends} appends in {commits} commits");

    assert_eq!(acked.len(), ROOMS);
    for (room, mut acks) in acked {
        acks.sort();
        let stored = store.load(&room).await.expect("load");
        // Every acknowledged append is there, at the seq it was acknowledged with, and the
        // room's seqs run 1..=n without gaps.
        assert_eq!(stored.updates, acks, "{room}");
        assert_eq!(seqs(&stored), (1..=PER_ROOM as u64).collect::<Vec<_>>());
    }
}

async fn case_compact(store: &dyn Store) {
    let room = key("main", "compact");
    let updates = edits(6, "hello");
    store
        .append(&room, 0, updates.clone())
        .await
        .expect("append");
    let snapshot = snapshot_of(&updates[..3]);
    store
        .compact(&room, 0, snapshot.clone(), 3)
        .await
        .expect("compact");

    let stored = store.load(&room).await.expect("load");
    assert_eq!(stored.snapshot.as_ref(), Some(&snapshot));
    assert_eq!(stored.snapshot_seq, 3);
    assert_eq!(seqs(&stored), vec![4, 5]);
    assert_eq!(text_of(&stored), "hello");

    let more = edits(7, "!");
    assert_eq!(store.append(&room, 0, more).await.expect("append"), 6);

    // A stale compaction (older than the stored snapshot) and one claiming entries the store
    // never saw are refused, and change nothing.
    let before = store.load(&room).await.expect("load");
    let stale = store.compact(&room, 0, snapshot_of(&updates[..2]), 2).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let ahead = store.compact(&room, 0, snapshot.clone(), 99).await;
    assert!(matches!(ahead, Err(StoreError::Conflict(_))), "{ahead:?}");
    assert_eq!(store.load(&room).await.expect("load"), before);

    // Compacting everything leaves only the snapshot; appends continue after it.
    let all = snapshot_of(&[updates.clone(), edits(7, "!")].concat());
    store.compact(&room, 0, all, 6).await.expect("compact all");
    let stored = store.load(&room).await.expect("load");
    assert_eq!((stored.snapshot_seq, stored.updates.len()), (6, 0));
    assert_eq!(text_of(&stored), "hello!");
    assert_eq!(
        store.append(&room, 0, edits(8, "?")).await.expect("append"),
        7
    );
}

async fn case_compact_crash(h: &mut Harness) {
    let room = key("main", "crashy");
    let updates = edits(9, "crash");
    h.store()
        .append(&room, 0, updates[..2].to_vec())
        .await
        .expect("append");
    h.store()
        .compact(&room, 0, snapshot_of(&updates[..1]), 1)
        .await
        .expect("compact");
    h.store()
        .append(&room, 0, updates[2..].to_vec())
        .await
        .expect("append");
    let before = h.store().load(&room).await.expect("load");
    assert_eq!((before.snapshot_seq, seqs(&before)), (1, vec![2, 3, 4, 5]));

    for step in [CompactStep::Snapshot, CompactStep::Delete] {
        h.crash_mid_compact(&room, snapshot_of(&updates[..4]), 4, step)
            .await;
        let after = h.store().load(&room).await.expect("load after crash");
        assert_eq!(after, before, "crash after {step:?}");
    }
    h.reopen().await;
    let after = h.store().load(&room).await.expect("load after reopen");
    assert_eq!(after, before);
    assert_eq!(text_of(&after), "crash");

    // The real compaction still goes through afterwards (no lock or row left behind).
    h.store()
        .compact(&room, 0, snapshot_of(&updates[..4]), 4)
        .await
        .expect("compact");
    let stored = h.store().load(&room).await.expect("load");
    assert_eq!((stored.snapshot_seq, seqs(&stored)), (4, vec![5]));
    assert_eq!(text_of(&stored), "crash");
}

async fn case_corruption(h: &Harness) {
    let store = h.store();
    let backend = h.backend();
    let a = key("main", "damaged");
    let b = key("main", "damaged-not");
    let c = key("main", "garbage");
    let d = key("main", "bad-snapshot");
    store.append(&a, 0, edits(10, "abc")).await.expect("append");
    store.append(&b, 0, edits(11, "xy")).await.expect("append");
    let mut c_log = edits(12, "ok");
    c_log.push(Bytes::from_static(&[0xff, 0xfe, 0x01])); // checksummed, but not Yjs
    store.append(&c, 0, c_log).await.expect("append");
    let d_log = edits(13, "snap");
    store.append(&d, 0, d_log.clone()).await.expect("append");
    store
        .compact(&d, 0, snapshot_of(&d_log[..3]), 3)
        .await
        .expect("compact");

    h.flip_byte(&a, RecordKind::Update, 3).await;
    h.flip_byte(&d, RecordKind::Snapshot, 3).await;

    match store.load(&a).await {
        Err(StoreError::Corrupt { room, detail }) => {
            assert_eq!(room, "main/damaged");
            assert!(detail.contains("seq 3"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.load(&d).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(text_of(&store.load(&b).await.expect("b loads")), "xy");

    let report = backend.check(None).await.expect("check");
    let found: Vec<(String, RecordKind, i64, bool)> = report
        .bad
        .iter()
        .map(|bad| {
            let checksum = matches!(bad.problem, Problem::Checksum(_));
            (bad.room.clone(), bad.kind, bad.seq, checksum)
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("bad-snapshot".to_owned(), RecordKind::Snapshot, 3, true),
            ("damaged".to_owned(), RecordKind::Update, 3, true),
            ("garbage".to_owned(), RecordKind::Update, 3, false),
        ],
        "{report}"
    );
    assert_eq!(report.rooms_checked, 4);
    assert!(backend.check(Some(&b)).await.expect("check b").is_clean());

    // Salvage moves the bad record into quarantine; nothing is deleted.
    let rows_before = h.rows("updates", Some(&a)).await;
    assert_eq!(rows_before, 3);
    let salvaged = backend.salvage(&a).await.expect("salvage");
    assert_eq!((salvaged.moved.len(), salvaged.kept), (1, 2));
    assert_eq!(h.rows("quarantine", None).await, 1);
    assert_eq!(h.rows("updates", Some(&a)).await, 2);
    let stored = store.load(&a).await.expect("a loads again");
    assert_eq!(seqs(&stored), vec![1, 2]);
    assert_eq!(text_of(&stored), "ab");
    assert!(backend.check(Some(&a)).await.expect("check").is_clean());
    // The quarantined seq is never handed out again.
    assert_eq!(
        store.append(&a, 0, edits(14, "d")).await.expect("append"),
        4
    );

    let salvaged = backend.salvage(&c).await.expect("salvage garbage");
    assert_eq!(salvaged.moved.len(), 1);
    assert_eq!(text_of(&store.load(&c).await.expect("c loads")), "ok");

    let salvaged = backend.salvage(&d).await.expect("salvage snapshot");
    assert_eq!(salvaged.moved[0].kind, RecordKind::Snapshot);
    let stored = store.load(&d).await.expect("d loads");
    assert_eq!((stored.snapshot.clone(), seqs(&stored)), (None, vec![4]));
    assert_eq!(
        store.append(&d, 0, edits(15, "!")).await.expect("append"),
        5
    );

    assert_eq!(h.rows("quarantine", None).await, 3);
    assert!(backend.check(None).await.expect("check").is_clean());
    // Salvaging a clean room moves nothing.
    let salvaged = backend.salvage(&b).await.expect("salvage clean");
    assert!(salvaged.moved.is_empty());
}

// ---------------------------------------------------------------------------------------------
// The suite, once per backend.

macro_rules! suite {
    ($backend:ident, $make:path $(, #[$attr:meta])*) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn roundtrip() {
                let Some(h) = $make("roundtrip", Durability::Strict).await else {
                    return;
                };
                case_roundtrip(h.store().as_ref()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn roundtrip_relaxed() {
                let Some(h) = $make("relaxed", Durability::Relaxed).await else {
                    return;
                };
                case_roundtrip(h.store().as_ref()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn rooms_are_isolated() {
                let Some(h) = $make("isolation", Durability::Strict).await else {
                    return;
                };
                case_isolation(h.store().as_ref()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn list_reports_sizes() {
                let Some(h) = $make("list", Durability::Strict).await else {
                    return;
                };
                case_list(h.store().as_ref(), true).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn survives_reopen() {
                let Some(mut h) = $make("reopen", Durability::Strict).await else {
                    return;
                };
                case_reopen(&mut h).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn group_commit_batches() {
                let Some(h) = $make("groupcommit", Durability::Strict).await else {
                    return;
                };
                case_group_commit(&h).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn group_commit_batches_relaxed() {
                let Some(h) = $make("groupcommit_r", Durability::Relaxed).await else {
                    return;
                };
                case_group_commit(&h).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn compact() {
                let Some(h) = $make("compact", Durability::Strict).await else {
                    return;
                };
                case_compact(h.store().as_ref()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn compact_crash_keeps_prior_state() {
                let Some(mut h) = $make("crash", Durability::Strict).await else {
                    return;
                };
                case_compact_crash(&mut h).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn corruption_check_salvage() {
                let Some(h) = $make("corrupt", Durability::Strict).await else {
                    return;
                };
                case_corruption(&h).await;
            }
        }
    };
}

suite!(sqlite, Harness::sqlite);
suite!(
    postgres,
    Harness::postgres,
    #[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
);

// ---------------------------------------------------------------------------------------------
// The reference: the memory store passes the cases that do not depend on durability.

#[tokio::test]
async fn memory_store_matches_the_seam() {
    case_roundtrip(&MemoryStore::new()).await;
    case_isolation(&MemoryStore::new()).await;
    case_list(&MemoryStore::new(), false).await;
}

// ---------------------------------------------------------------------------------------------
// Backend-specific behaviour.

#[tokio::test]
async fn postgres_down_is_unavailable_quickly() {
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        PostgresStore::connect("postgres://postgres@127.0.0.1:1/test"),
    )
    .await
    .expect("connect must not hang");
    match result {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("postgres"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn open_store_specs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = crate::open_store("memory", dir.path(), Durability::Strict, 0)
        .await
        .expect("memory");
    case_roundtrip(memory.as_ref()).await;

    let data_dir = dir.path().join("nested").join("data");
    let sqlite = crate::open_store("", &data_dir, Durability::Strict, 0)
        .await
        .expect("sqlite");
    case_roundtrip(sqlite.as_ref()).await;
    assert!(data_dir.join("ripple.db").exists());

    let err = crate::open_store(
        "mysql://user:hunter2@db/x",
        dir.path(),
        Durability::Strict,
        0,
    )
    .await
    .err()
    .expect("unknown spec is refused");
    let msg = err.to_string();
    assert!(msg.contains("mysql") && !msg.contains("hunter2"), "{msg}");

    let err = PostgresStore::connect_with_schema("postgres://127.0.0.1:1/x", "bad-name; --")
        .await
        .expect_err("bad schema name is refused");
    assert!(err.to_string().contains("schema"), "{err}");
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(crate::SqliteStore::open(dir.path(), Durability::Strict).expect("open"));
    let conn = rusqlite::Connection::open(dir.path().join("ripple.db")).expect("raw");
    conn.execute(
        "INSERT INTO schema_version (version, applied_ms) VALUES (99, 0)",
        [],
    )
    .expect("bump version");
    drop(conn);
    let err =
        crate::SqliteStore::open(dir.path(), Durability::Strict).expect_err("newer schema refused");
    assert!(err.to_string().contains("99"), "{err}");
}

#[tokio::test]
async fn sqlite_migrations_are_idempotent() {
    let dir = tempfile::tempdir().expect("temp dir");
    for _ in 0..3 {
        let store = crate::SqliteStore::open(dir.path(), Durability::Strict).expect("open");
        store
            .append(&key("main", "m"), 0, edits(16, "a"))
            .await
            .expect("append");
    }
    let store = crate::SqliteStore::open(dir.path(), Durability::Strict).expect("open");
    let stored = store.load(&key("main", "m")).await.expect("load");
    assert_eq!(seqs(&stored), vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn postgres_survives_killed_connections() {
    let Some(mut h) = Harness::postgres("killed", Durability::Strict).await else {
        return;
    };
    let Env::Postgres { url, schema } = &h.env else {
        unreachable!("postgres harness");
    };
    // A store whose connections can be told apart from every other test's.
    let app = schema.clone();
    let sep = if url.contains('?') { '&' } else { '?' };
    let tagged = format!("{url}{sep}application_name={app}");
    let options = PostgresOptions {
        schema: schema.clone(),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with_options(&tagged, &options)
        .await
        .expect("connect");
    let admin = pg_client(url).await;
    h.backend = Some(Backend::Postgres(Arc::new(store)));
    let room = key("main", "phoenix");
    let updates = edits(17, "abc");
    h.store()
        .append(&room, 0, updates[..1].to_vec())
        .await
        .expect("append");

    // Kill every server connection of the store's pool, as a Postgres restart would.
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(killed >= 1);

    // The dead pooled connections are replaced; appends, loads and compactions go on.
    for update in &updates[1..] {
        h.store()
            .append(&room, 0, vec![update.clone()])
            .await
            .expect("append after kill");
    }
    let stored = h.store().load(&room).await.expect("load after kill");
    assert_eq!(seqs(&stored), vec![1, 2, 3]);
    assert_eq!(text_of(&stored), "abc");
}

/// Two writers on one database (a server and `ripple import`, say): the one whose remembered
/// last seq went stale fails one append cleanly, then looks the number up again. No update is
/// lost or stored under another's sequence number.
#[tokio::test]
async fn sqlite_a_second_writer_makes_the_first_fail_once_then_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = crate::SqliteStore::open(dir.path(), Durability::Strict).expect("open a");
    let b = crate::SqliteStore::open(dir.path(), Durability::Strict).expect("open b");
    let room = key("main", "shared");
    let up = |s: &str| Bytes::from(s.as_bytes().to_vec());
    assert_eq!(
        a.append(&room, 0, vec![up("a1"), up("a2")])
            .await
            .expect("a"),
        2
    );
    assert_eq!(b.append(&room, 0, vec![up("b3")]).await.expect("b"), 3);
    assert!(
        a.append(&room, 0, vec![up("a-stale")]).await.is_err(),
        "a's remembered seq (2) is stale: its append must fail, not overwrite"
    );
    assert_eq!(
        a.append(&room, 0, vec![up("a4")]).await.expect("a again"),
        4
    );
    let stored = a.load(&room).await.expect("load");
    let log: Vec<(u64, Bytes)> = stored.updates;
    assert_eq!(
        log,
        vec![(1, up("a1")), (2, up("a2")), (3, up("b3")), (4, up("a4"))]
    );
}

/// A database written by a build before migration 2 (the log as a rowid table) opens with every
/// record intact, checksums included, and its log is then one key-ordered B-tree.
#[tokio::test]
async fn sqlite_migration_2_keeps_the_log_and_drops_the_rowid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let room = key("main", "old");
    let log = edits(21, "migrated");
    {
        let conn = rusqlite::Connection::open(dir.path().join("ripple.db")).expect("raw");
        let (version, sql) = crate::sqlite::MIGRATIONS[0];
        assert_eq!(version, 1);
        conn.execute_batch(sql).expect("schema 1");
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL, applied_ms INTEGER NOT NULL)
                 STRICT;
             INSERT INTO schema_version VALUES (1, 0);",
        )
        .expect("version 1");
        for (i, data) in log.iter().enumerate() {
            let seq = i as u64 + 1;
            let sum = crate::record::checksum_column(RecordKind::Update, "main", "old", seq, data);
            conn.execute(
                "INSERT INTO updates VALUES ('main', 'old', ?1, ?2, ?3, 0)",
                rusqlite::params![seq as i64, &data[..], sum],
            )
            .expect("old row");
        }
    }
    let store = crate::SqliteStore::open(dir.path(), Durability::Strict).expect("migrates");
    let stored = store.load(&room).await.expect("load after migration");
    assert_eq!(text_of(&stored), "migrated");
    assert_eq!(seqs(&stored), (1..=log.len() as u64).collect::<Vec<_>>());
    assert!(store.check(None).await.expect("check").is_clean());
    assert_eq!(
        store
            .append(&room, 0, edits(22, "!"))
            .await
            .expect("append"),
        log.len() as u64 + 1
    );
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("ripple.db")).expect("raw");
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'updates'",
            [],
            |r| r.get(0),
        )
        .expect("updates table");
    assert!(sql.contains("WITHOUT ROWID"), "{sql}");
    let version: i64 = conn
        .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, 2);
}

/// Commits run on the callers' threads and SQLite's own checkpoint is only a far-off safety
/// valve, so the checkpointer thread must keep copying the WAL back: after thousands of commits
/// the WAL file stays near SQLite's usual size instead of growing to the valve's 32 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpointer_keeps_the_wal_small() {
    const COMMITS: usize = 6000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = crate::SqliteStore::open(dir.path(), Durability::Relaxed).expect("open");
    let wal = dir.path().join("ripple.db-wal");
    let mut largest = 0;
    for i in 0..COMMITS {
        let room = key("main", &format!("wal-{}", i % 10));
        store
            .append(&room, 0, vec![Bytes::from(vec![b'x'; 200])])
            .await
            .expect("append");
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert_eq!(store.commits(), COMMITS as u64);
    eprintln!("largest WAL over {COMMITS} commits: {largest} bytes");
    // One commit adds one or two 4 KiB pages: without the checkpointer 6,000 commits take the
    // WAL to the valve (8,192 pages, 32 MiB: seen at 34.9 MB when the second step was missing);
    // with it the WAL restarts every ~320 commits (8-13 MB seen; the margin is for a loaded
    // machine, where the checkpointer thread may lag).
    assert!(
        largest < 24 << 20,
        "WAL reached {largest} bytes after {COMMITS} commits: the checkpointer is not running"
    );
    for r in 0..10 {
        let stored = store
            .load(&key("main", &format!("wal-{r}")))
            .await
            .expect("load");
        assert_eq!(stored.updates.len(), COMMITS / 10);
    }
}

/// Many rooms appending at once from several threads: the first caller commits inline, the rest
/// queue and are drained in batches; every append is answered with its own consecutive
/// sequence numbers and nothing is lost, whoever committed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_appends_are_all_answered_in_order() {
    const ROOMS: usize = 40;
    const PER_ROOM: u64 = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(crate::SqliteStore::open(dir.path(), Durability::Relaxed).expect("open"));
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..ROOMS {
        let store = store.clone();
        tasks.spawn(async move {
            let room = key("main", &format!("c-{r}"));
            for i in 1..=PER_ROOM {
                let two = vec![
                    Bytes::from(format!("{r}.{i}.a")),
                    Bytes::from(format!("{r}.{i}.b")),
                ];
                let last = store.append(&room, 0, two).await.expect("append");
                assert_eq!(last, 2 * i, "room {r}: append {i} got seq {last}");
            }
            room
        });
    }
    while let Some(done) = tasks.join_next().await {
        let room = done.expect("task");
        let stored = store.load(&room).await.expect("load");
        assert_eq!(stored.updates.len() as u64, 2 * PER_ROOM);
        assert!(stored
            .updates
            .iter()
            .enumerate()
            .all(|(n, (seq, _))| *seq == n as u64 + 1));
    }
    let commits = store.commits();
    let appends = ROOMS as u64 * PER_ROOM;
    eprintln!("{appends} concurrent appends in {commits} commits");
    assert!(commits <= appends);
}

// ---------------------------------------------------------------------------------------------
// Opening existing storage only (the maintenance commands).

/// The error text of a refused `open_existing`.
async fn refused(spec: &str, dir: &std::path::Path) -> String {
    match Backend::open_existing(spec, dir, Durability::Strict).await {
        Ok(backend) => panic!("{spec} at {} opened: {backend:?}", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn sqlite_open_existing_creates_nothing_and_names_the_path() {
    let root = tempfile::tempdir().expect("tempdir");
    let missing = root.path().join("typo");
    let e = refused("sqlite", &missing).await;
    assert!(e.contains("no Ripple storage") && e.contains("typo"), "{e}");
    assert!(!missing.exists(), "the mistyped directory was created");

    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let e = refused("sqlite", &empty).await;
    assert!(
        e.contains("ripple.db") && e.contains("does not exist"),
        "{e}"
    );
    assert!(
        !empty.join("ripple.db").exists(),
        "an empty database was created"
    );

    let foreign = root.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    rusqlite::Connection::open(foreign.join("ripple.db"))
        .and_then(|c| c.execute_batch("CREATE TABLE other (x INTEGER)"))
        .expect("foreign db");
    let e = refused("sqlite", &foreign).await;
    assert!(e.contains("not a Ripple database"), "{e}");

    let e = refused("memory", root.path()).await;
    assert!(e.contains("memory"), "{e}");

    // What the server created opens, with what it stored.
    let real = root.path().join("real");
    let room = key("main", "kept");
    {
        let backend = Backend::open("sqlite", &real, Durability::Strict)
            .await
            .expect("create");
        backend
            .store()
            .append(&room, 0, edits(1, "ab"))
            .await
            .expect("append");
    }
    let backend = Backend::open_existing("sqlite", &real, Durability::Strict)
        .await
        .expect("open existing");
    let stored = backend.store().load(&room).await.expect("load");
    assert_eq!(text_of(&stored), "ab");
}

#[tokio::test]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn postgres_open_existing_refuses_a_database_without_ripple_tables() {
    let url = pg_url();
    let schema = format!("rt_existing_{}", std::process::id());
    let admin = pg_client(&url).await;
    let drop_schema = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    admin.batch_execute(&drop_schema).await.expect("clean");
    let options = |create| PostgresOptions {
        schema: schema.clone(),
        create,
        ..PostgresOptions::default()
    };
    let e = match PostgresStore::connect_with_options(&url, &options(false)).await {
        Ok(_) => panic!("a missing schema was opened"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("no Ripple storage"), "{e}");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .expect("query")
        .is_some();
    assert!(!exists, "refusing must not create the schema");

    // Once the server created it, maintenance opens it.
    drop(
        PostgresStore::connect_with_options(&url, &options(true))
            .await
            .expect("create"),
    );
    let store = PostgresStore::connect_with_options(&url, &options(false))
        .await
        .expect("open existing");
    assert!(store.list().await.expect("list").is_empty());
    admin.batch_execute(&drop_schema).await.expect("clean");
}

/// Two stores on one schema stand for two nodes: leases decide which one writes a room, and a
/// stale owner's appends and compactions are refused in the same transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn postgres_leases_fence_a_stale_owner() {
    use ripple_core::lease::LeaseError;
    let Some(h) = Harness::postgres("leases", Durability::Strict).await else {
        return;
    };
    let Env::Postgres { url, schema } = &h.env else {
        unreachable!("postgres harness");
    };
    let a = h.store();
    let b = PostgresStore::connect_with_schema(url, schema)
        .await
        .expect("second node");
    let room = key("main", "leased");
    let ttl = Duration::from_millis(400);
    let updates = edits(30, "abcd");

    let ga = a.acquire(&room, "node-a", ttl).await.expect("free room");
    assert_eq!(ga.epoch, 1);
    match b.acquire(&room, "node-b", ttl).await {
        Err(StoreError::Lease(LeaseError::Held { owner, epoch })) => {
            assert_eq!((owner.as_str(), epoch), ("node-a", 1));
        }
        other => panic!("a live lease must not be taken: {other:?}"),
    }
    a.append(&room, ga.epoch, updates[..1].to_vec())
        .await
        .expect("owner appends");
    // Epoch 0 (an unleased tool) is refused on a leased room.
    assert!(matches!(
        b.append(&room, 0, updates[1..2].to_vec()).await,
        Err(StoreError::Lease(LeaseError::Fenced { .. }))
    ));
    a.renew(&room, ga.epoch, ttl).await.expect("renew");

    // Node a stops renewing (paused); after the lease lapses node b takes over.
    let gb = loop {
        match b.acquire(&room, "node-b", ttl).await {
            Ok(g) => break g,
            Err(StoreError::Lease(LeaseError::Held { .. })) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(gb.epoch, 2);
    b.append(&room, gb.epoch, updates[1..2].to_vec())
        .await
        .expect("new owner appends");

    // Node a wakes: its append, compaction and renewal are fenced; nothing of them landed.
    let fenced = |r: Result<(), StoreError>| {
        matches!(
            r,
            Err(StoreError::Lease(LeaseError::Fenced {
                stale: 1,
                current: 2
            }))
        )
    };
    assert!(fenced(
        a.append(&room, ga.epoch, updates[2..3].to_vec())
            .await
            .map(drop)
    ));
    assert!(fenced(
        a.compact(&room, ga.epoch, snapshot_of(&updates[..1]), 1)
            .await
    ));
    assert!(fenced(a.renew(&room, ga.epoch, ttl).await));
    let stored = b.load(&room).await.expect("load");
    assert_eq!(seqs(&stored), vec![1, 2]);
    assert_eq!(text_of(&stored), "ab");

    // A release hands the room over at once, with a new epoch.
    b.release(&room, gb.epoch).await.expect("release");
    let ga2 = a
        .acquire(&room, "node-a", ttl)
        .await
        .expect("released room");
    assert_eq!(ga2.epoch, 3);
    a.compact(&room, ga2.epoch, snapshot_of(&updates[..2]), 2)
        .await
        .expect("the current owner compacts");
}

/// TLS as the URL's sslmode asks: `require` encrypts (the server's certificate unverified, as
/// libpq does), `verify-full` checks the chain and the name, and a certificate that does not
/// verify is refused with the reason. Against the test server's own certificate (Debian's
/// PostgreSQL has TLS on with a self-signed "snakeoil" certificate for `localhost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn postgres_connects_with_tls_as_the_url_asks() {
    let base = crate::testing::database_url();
    let (client, conn) = tokio_postgres::connect(&base, NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let ssl: String = client
        .query_one("SHOW ssl", &[])
        .await
        .expect("show ssl")
        .get(0);
    assert_eq!(
        ssl, "on",
        "the test Postgres must have TLS enabled for this test"
    );
    let cert: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .expect("show ssl_cert_file")
        .get(0);
    let schema = format!("tls_{}", std::process::id());
    let with = |query: &str| {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}{query}")
    };

    // require: encrypted.
    let store = PostgresStore::connect_with_schema(&with("sslmode=require"), &schema)
        .await
        .expect("sslmode=require connects");
    assert!(
        store.pooled_ssl().await.expect("ssl"),
        "sslmode=require must encrypt"
    );

    // verify-full against the certificate the server uses, under the name it carries.
    let cn_url =
        with(&format!("sslmode=verify-full&sslrootcert={cert}")).replace("127.0.0.1", "localhost");
    if cn_url.contains("localhost") {
        let store = PostgresStore::connect_with_schema(&cn_url, &schema)
            .await
            .expect("verify-full with the server's certificate as root, by its name");
        assert!(store.pooled_ssl().await.expect("ssl"));
    }
    // verify-full under another name: refused, saying why.
    let wrong_name =
        with(&format!("sslmode=verify-full&sslrootcert={cert}")).replace("localhost", "127.0.0.1");
    let Err(err) = PostgresStore::connect_with_schema(&wrong_name, &schema).await else {
        panic!("a certificate for another name is refused");
    };
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "the error names the certificate: {err}"
    );
    // verify-full against the public roots: a self-signed certificate is refused.
    let Err(err) = PostgresStore::connect_with_schema(&with("sslmode=verify-full"), &schema).await
    else {
        panic!("a self-signed certificate does not verify against the public roots");
    };
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // An unknown mode is a clear error.
    let Err(err) = PostgresStore::connect_with_schema(&with("sslmode=sometimes"), &schema).await
    else {
        panic!("unknown sslmode");
    };
    assert!(err.to_string().contains("sslmode=sometimes"), "{err}");
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
}
