//! The embedded store: SQLite in WAL mode in `DATA_DIR/ripple.db`.
//!
//! One write connection, `Writer`, is shared by every caller, and writes group-commit:
//! everything queued goes into one transaction, one commit, one fsync, and then each caller is
//! answered. Each request runs inside its own savepoint, so one failing request (a compaction
//! conflict) does not fail the others in its batch. Reads (`load`, `list`, `check`) run on a
//! small pool of read connections through `spawn_blocking`; WAL lets them proceed while the
//! writer writes.
//!
//! Who commits: the caller of a small append (at most `INLINE_MAX_BYTES`) that finds the
//! writer idle commits its own batch on its own thread (a tokio worker) and returns; whatever was queued meanwhile is drained by a blocking-pool
//! thread until the queue is empty. So at most one runtime worker is ever inside SQLite, and
//! only for its own commit; compactions, big appends, and every commit on a runtime with a single
//! worker go to the blocking pool, so that neither a whole document's write nor a slow disk can
//! stall the connections. An earlier design handed every
//! write to a dedicated writer thread and woke the caller back: at the rates rooms write (a
//! commit every few milliseconds, each one alone) the two hand-offs cost more CPU than SQLite's
//! own work (on a 2-core VM with the database on tmpfs, fanout CPU per delivered update went
//! from 20.3 to 13.2 µs against 8.2 µs with no persistence: docs/benchmarks.md). Under load the
//! drain thread batches, and its one wake-up is shared by its batches.
//! Checkpoints are kept off that path: the writer never checkpoints below
//! `WRITER_CHECKPOINT_PAGES` and a checkpointer thread of its own copies the WAL back (see
//! `Checkpointer`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ripple_core::{BoxFuture, RoomInfo, RoomKey, Store, StoreError, StoredRoom};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::fsck::{self, RawRecord, Report, SalvageReport};
use crate::record::{self, RecordKind};
use crate::{CompactStep, Durability, MAX_BATCH_BYTES, MAX_BATCH_REQUESTS};

/// The database file inside the data directory.
pub const DB_FILE: &str = "ripple.db";

/// Read connections kept open between reads; more are opened on demand and closed after use.
const MAX_IDLE_READERS: usize = 4;
/// How long a connection waits for a lock held by another connection (another process, or the
/// writer during a checkpoint) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order inside one transaction; `schema_version` records each.
/// Tables are STRICT so a value of the wrong type can never be stored.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE snapshots (
        party TEXT NOT NULL,
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        checksum INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (party, room)
    ) STRICT;
    CREATE TABLE updates (
        party TEXT NOT NULL,
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        checksum INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (party, room, seq)
    ) STRICT;
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        party TEXT NOT NULL,
        room TEXT NOT NULL,
        kind TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        checksum INTEGER NOT NULL,
        stored_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        quarantined_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX quarantine_room ON quarantine (party, room, seq);",
    ),
    // The log as one B-tree ordered by its key: an append writes one page, where a rowid
    // table wrote two (the table, and the index behind its primary key).
    (
        2,
        "CREATE TABLE updates_by_key (
        party TEXT NOT NULL,
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        checksum INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (party, room, seq)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO updates_by_key (party, room, seq, data, checksum, created_ms)
        SELECT party, room, seq, data, checksum, created_ms FROM updates;
    DROP TABLE updates;
    ALTER TABLE updates_by_key RENAME TO updates;",
    ),
];

/// The highest sequence number a room has used, counting the snapshot, the log and the
/// quarantine (so a salvage never lets a sequence number be reused).
const LAST_SEQ: &str = "SELECT max(seq) FROM (
    SELECT max(seq) AS seq FROM updates WHERE party = ?1 AND room = ?2
    UNION ALL SELECT seq FROM snapshots WHERE party = ?1 AND room = ?2
    UNION ALL SELECT max(seq) FROM quarantine WHERE party = ?1 AND room = ?2)";

const INSERT_UPDATE: &str = "INSERT INTO updates (party, room, seq, data, checksum, created_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const ROOM_RECORDS: &str = "SELECT 0 AS kind, seq, data, checksum FROM snapshots
        WHERE party = ?1 AND room = ?2
    UNION ALL
    SELECT 1, seq, data, checksum FROM updates WHERE party = ?1 AND room = ?2
    ORDER BY 1, 2";

/// The embedded SQLite store. See the module docs for the threading design.
pub struct SqliteStore {
    path: PathBuf,
    durability: Durability,
    writer: Arc<Writer>,
    readers: Arc<Readers>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// A write request for the writer thread.
enum Request {
    Append {
        room: RoomKey,
        updates: Vec<Bytes>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Compact {
        room: RoomKey,
        snapshot: Bytes,
        through_seq: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Salvage {
        room: RoomKey,
        reply: oneshot::Sender<Result<SalvageReport, StoreError>>,
    },
    Delete {
        room: RoomKey,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Request {
    /// An append small enough to commit on the caller's thread. Compactions (a whole
    /// document), salvages and deletes always go to the blocking pool.
    fn is_small_append(&self) -> bool {
        matches!(self, Request::Append { .. }) && self.payload_len() <= INLINE_MAX_BYTES
    }

    fn payload_len(&self) -> usize {
        match self {
            Request::Append { updates, .. } => updates.iter().map(Bytes::len).sum(),
            Request::Compact { snapshot, .. } => snapshot.len(),
            Request::Salvage { .. } | Request::Delete { .. } => 0,
        }
    }
}

/// A request carried out inside the batch transaction, waiting for the commit to be answered.
enum Done {
    Append(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
    Compact(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Salvage(
        oneshot::Sender<Result<SalvageReport, StoreError>>,
        Result<SalvageReport, StoreError>,
    ),
    Delete(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
}

impl Done {
    /// Whether the request failed.
    fn is_err(&self) -> bool {
        match self {
            Done::Append(_, r) => r.is_err(),
            Done::Compact(_, r) | Done::Delete(_, r) => r.is_err(),
            Done::Salvage(_, r) => r.is_err(),
        }
    }

    /// Answers the caller. A caller that went away (its future was dropped) is fine to ignore:
    /// the work committed either way.
    fn answer(self) {
        match self {
            Done::Append(reply, result) => drop(reply.send(result)),
            Done::Compact(reply, result) | Done::Delete(reply, result) => drop(reply.send(result)),
            Done::Salvage(reply, result) => drop(reply.send(result)),
        }
    }

    /// Answers with `error` instead of the result: the transaction did not commit.
    fn fail(self, error: &str) {
        match self {
            Done::Append(reply, _) => drop(reply.send(failed(error))),
            Done::Compact(reply, _) | Done::Delete(reply, _) => drop(reply.send(failed(error))),
            Done::Salvage(reply, _) => drop(reply.send(failed(error))),
        }
    }

    fn unstarted(request: Request) -> Self {
        match request {
            Request::Append { reply, .. } => Done::Append(reply, failed("not run")),
            Request::Compact { reply, .. } => Done::Compact(reply, failed("not run")),
            Request::Salvage { reply, .. } => Done::Salvage(reply, failed("not run")),
            Request::Delete { reply, .. } => Done::Delete(reply, failed("not run")),
        }
    }
}

fn failed<T>(error: &str) -> Result<T, StoreError> {
    Err(StoreError::Unavailable(error.to_owned()))
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// Maps an error met while reading a room: damage SQLite itself detects is corruption.
fn read_error(room: &RoomKey, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            room: room.to_string(),
            detail: format!("sqlite: {e}"),
        },
        _ => unavailable(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/ripple.db`, runs migrations and starts the writer
    /// thread. Blocking: call it from a blocking context (as [`crate::Backend::open`] does).
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("creating {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = open_writer(&path, durability, true)?;
        migrate(&mut conn)?;
        Self::start(path, conn, durability)
    }

    /// Opens an existing `data_dir/ripple.db` only (the maintenance commands): a missing
    /// directory or database file, or a file without Ripple's tables, is an error naming the
    /// path, and nothing is created. Blocking, like [`SqliteStore::open`].
    pub fn open_existing(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !data_dir.is_dir() {
            return Err(StoreError::Unavailable(format!(
                "no Ripple storage at {}: the directory does not exist (check --data-dir / \
                 data_dir)",
                data_dir.display()
            )));
        }
        if !path.is_file() {
            return Err(StoreError::Unavailable(format!(
                "no Ripple storage at {}: {} does not exist (check --data-dir / data_dir)",
                data_dir.display(),
                path.display()
            )));
        }
        let mut conn = open_writer(&path, durability, false)?;
        let ours: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                 WHERE type = 'table' AND name = 'schema_version')",
                [],
                |row| row.get(0),
            )
            .map_err(unavailable)?;
        if !ours {
            return Err(StoreError::Unavailable(format!(
                "{} is not a Ripple database (it has no schema_version table)",
                path.display()
            )));
        }
        migrate(&mut conn)?;
        Self::start(path, conn, durability)
    }

    /// Starts the readers and the writer thread on a migrated database.
    fn start(path: PathBuf, conn: Connection, durability: Durability) -> Result<Self, StoreError> {
        let readers = Arc::new(Readers {
            path: path.clone(),
            idle: Mutex::new(Vec::new()),
        });
        // Open one reader now so that a problem shows at startup, not at the first load.
        readers.with(|_| Ok(()))?;

        let (checkpointer, nudged) = Checkpointer::new();
        let writer = Arc::new(Writer {
            state: Mutex::new(WriterState {
                conn: Some(WriterConn {
                    conn,
                    last_seqs: LastSeqs::default(),
                    since_checkpoint: 0,
                }),
                queue: VecDeque::new(),
                checkpoint_wanted: None,
            }),
            commits: AtomicU64::new(0),
            checkpointer,
        });
        Checkpointer::spawn(&path, nudged, Arc::downgrade(&writer))?;
        Ok(Self {
            path,
            durability,
            writer,
            readers,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability this store was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Write transactions committed since the store was opened.
    pub fn commits(&self) -> u64 {
        self.writer.commits.load(Ordering::Relaxed)
    }

    /// Inspects every record of `room` (or of all rooms): checksum, then Yjs decoding.
    pub async fn check(&self, room: Option<&RoomKey>) -> Result<Report, StoreError> {
        let room = room.cloned();
        self.read(move |conn| check_blocking(conn, room.as_ref()))
            .await
    }

    /// Moves the records of `room` that fail inspection into the `quarantine` table, in one
    /// transaction. Nothing is deleted; the room then loads from the records that are intact.
    pub async fn salvage(&self, room: &RoomKey) -> Result<SalvageReport, StoreError> {
        let room = room.clone();
        self.write(|reply| Request::Salvage { room, reply }).await
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = make(reply);
        let small = request.is_small_append();
        if let Some(conn) = self.writer.submit(request) {
            // The writer was idle: this caller commits (its own request is in the batch).
            Writer::lead(&self.writer, conn, small);
        }
        answer.await.map_err(|_| {
            StoreError::Unavailable("the sqlite writer stopped before answering".into())
        })?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("sqlite read task: {e}")))?
    }

    /// Test hook: runs a compaction on a connection of its own up to `stop_after`, then "crashes"
    /// (the connection goes away without committing).
    #[cfg(test)]
    pub(crate) fn crash_mid_compact(
        &self,
        room: &RoomKey,
        snapshot: &[u8],
        through_seq: u64,
        stop_after: CompactStep,
    ) -> Result<(), StoreError> {
        let mut conn = open_writer(&self.path, self.durability, false)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        compact_steps(&tx, room, snapshot, through_seq, Some(stop_after))?;
        // No orderly ROLLBACK: forget the guard and close the connection with the transaction
        // open. The WAL never receives a commit frame, exactly as when the process dies here.
        std::mem::forget(tx);
        drop(conn);
        Ok(())
    }
}

impl Store for SqliteStore {
    fn load<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<StoredRoom, StoreError>> {
        let room = room.clone();
        Box::pin(self.read(move |conn| load_blocking(conn, &room)))
    }

    // Epochs are not checked: one process owns the data directory (`DataDirLock`), so every
    // writer holds the default lease, epoch 0.
    fn append<'a>(
        &'a self,
        room: &'a RoomKey,
        _epoch: ripple_core::lease::Epoch,
        updates: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let room = room.clone();
        Box::pin(self.write(|reply| Request::Append {
            room,
            updates,
            reply,
        }))
    }

    fn compact<'a>(
        &'a self,
        room: &'a RoomKey,
        _epoch: ripple_core::lease::Epoch,
        snapshot: Bytes,
        through_seq: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let room = room.clone();
        Box::pin(self.write(move |reply| Request::Compact {
            room,
            snapshot,
            through_seq,
            reply,
        }))
    }

    fn delete<'a>(
        &'a self,
        room: &'a RoomKey,
        _epoch: ripple_core::lease::Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let room = room.clone();
        Box::pin(self.write(move |reply| Request::Delete { room, reply }))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, StoreError>> {
        Box::pin(self.read(list_blocking))
    }

    fn info<'a>(
        &'a self,
        room: &'a RoomKey,
    ) -> BoxFuture<'a, Result<Option<RoomInfo>, StoreError>> {
        let key = room.clone();
        Box::pin(self.read(move |conn| info_blocking(conn, &key)))
    }
}

fn open_writer(
    path: &Path,
    durability: Durability,
    create: bool,
) -> Result<Connection, StoreError> {
    // `Connection::open`'s flags, less CREATE when only an existing file will do.
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(unavailable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{} cannot use WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    let synchronous = match durability {
        Durability::Strict => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(unavailable)?;
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
        .map_err(unavailable)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER NOT NULL,
            applied_ms INTEGER NOT NULL
        ) STRICT",
    )
    .map_err(unavailable)?;
    let current: i64 = tx
        .query_row(
            "SELECT coalesce(max(version), 0) FROM schema_version",
            [],
            |row| row.get(0),
        )
        .map_err(unavailable)?;
    if current > latest {
        return Err(StoreError::Unavailable(format!(
            "the database schema is version {current}; this build knows up to {latest}"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES (?1, ?2)",
            params![version, record::now_ms()],
        )
        .map_err(unavailable)?;
    }
    tx.commit().map_err(unavailable)
}

/// The write connection and the requests waiting for it. See the module docs for who commits.
struct Writer {
    state: Mutex<WriterState>,
    commits: AtomicU64,
    checkpointer: Checkpointer,
}

struct WriterState {
    /// `None` while someone is committing with it.
    conn: Option<WriterConn>,
    /// Requests waiting for the next batch. Not capped here: every caller waits for its answer,
    /// so this holds at most one request per concurrent caller (a room has at most an append
    /// and a compaction in flight, and rooms in memory are capped by `max_rooms`).
    queue: VecDeque<Request>,
    /// The checkpointer has copied most of the WAL back and asks whoever holds the connection
    /// for the rest (see [`Checkpointer`]); the sender is answered once that has run, so that
    /// the checkpointer never runs beside it.
    checkpoint_wanted: Option<std::sync::mpsc::SyncSender<()>>,
}

/// The write connection with what belongs to it.
struct WriterConn {
    conn: Connection,
    last_seqs: LastSeqs,
    /// Commits since the checkpointer was last nudged.
    since_checkpoint: u32,
}

/// What the holder of the connection does next.
enum Work {
    Batch(Vec<Request>),
    /// Answer on the sender once it has run.
    Checkpoint(std::sync::mpsc::SyncSender<()>),
    /// Nothing waits: the connection has been given back.
    Idle,
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `request`. Returns the connection if the writer was idle: the caller commits.
    fn submit(&self, request: Request) -> Option<WriterConn> {
        let mut state = self.lock();
        state.queue.push_back(request);
        state.conn.take()
    }

    /// Commits what is queued now (the caller's request among it) on the caller's thread, then
    /// leaves whatever arrived meanwhile, and a wanted checkpoint, to a blocking-pool thread, so
    /// that a room's turn is never held up by other rooms' commits. With `small` false (the
    /// caller's request is not a small append) everything goes to the blocking pool.
    fn lead(this: &Arc<Self>, conn: WriterConn, small: bool) {
        let mut held = Held {
            writer: this.clone(),
            conn: Some(conn),
        };
        let runtime = tokio::runtime::Handle::try_current();
        // Only where another worker can go on meanwhile: on a runtime with one thread, a commit
        // inline would stall every connection for as long as the disk takes.
        let inline = small
            && runtime
                .as_ref()
                .map_or(true, |r| r.metrics().num_workers() > 1);
        if let (false, Ok(runtime)) = (inline, &runtime) {
            drop(runtime.spawn_blocking(move || held.drain()));
            return;
        }
        match held.next(false) {
            Work::Batch(batch) => held.run(batch),
            Work::Checkpoint(_) | Work::Idle => return,
        }
        {
            let mut state = this.lock();
            if state.queue.is_empty() && state.checkpoint_wanted.is_none() {
                state.conn = held.conn.take();
                return;
            }
        }
        match runtime {
            // If the runtime is shutting down the closure is dropped unrun; `Held`'s drop gives
            // the connection back either way.
            Ok(runtime) => drop(runtime.spawn_blocking(move || held.drain())),
            Err(_) => held.drain(),
        }
    }
}

/// The connection while someone commits with it. Dropping it gives the connection back, so a
/// panic or an unrun task cannot lose it.
struct Held {
    writer: Arc<Writer>,
    conn: Option<WriterConn>,
}

impl Held {
    /// The next batch; else the wanted checkpoint (if `checkpoints`); else gives the
    /// connection back.
    fn next(&mut self, checkpoints: bool) -> Work {
        let mut state = self.writer.lock();
        if state.queue.is_empty() {
            if checkpoints {
                if let Some(done) = state.checkpoint_wanted.take() {
                    return Work::Checkpoint(done);
                }
            }
            state.conn = self.conn.take();
            return Work::Idle;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            let Some(request) = state.queue.pop_front() else {
                break;
            };
            bytes += request.payload_len();
            batch.push(request);
        }
        Work::Batch(batch)
    }

    fn run(&mut self, batch: Vec<Request>) {
        if let Some(conn) = self.conn.as_mut() {
            if conn.run(batch, &self.writer.commits) {
                conn.since_checkpoint += 1;
                if conn.since_checkpoint >= CHECKPOINT_EVERY_COMMITS {
                    conn.since_checkpoint = 0;
                    self.writer.checkpointer.nudge();
                }
            }
        }
    }

    /// Commits batches and runs the wanted checkpoint until nothing waits. Not on a runtime
    /// thread: a checkpoint may write many pages.
    fn drain(&mut self) {
        loop {
            match self.next(true) {
                Work::Batch(batch) => self.run(batch),
                Work::Checkpoint(done) => {
                    if let Some(conn) = self.conn.as_ref() {
                        // With the connection held no commit can slip in, so this copies
                        // everything left and the next commit starts the WAL over.
                        checkpoint(&conn.conn);
                    }
                    let _ = done.send(());
                }
                Work::Idle => return,
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.writer.lock().conn = Some(conn);
        }
    }
}

impl WriterConn {
    /// Returns whether the batch committed.
    fn run(&mut self, batch: Vec<Request>, commits: &AtomicU64) -> bool {
        run_batch(&mut self.conn, batch, commits, &mut self.last_seqs)
    }
}

/// The largest append committed on the caller's thread; a bigger one (a pasted document) goes to
/// the blocking pool, as compactions do.
const INLINE_MAX_BYTES: usize = 64 << 10;
/// The writer asks the checkpointer to run after this many commits (a commit adds two or three
/// pages to the WAL, so about SQLite's default of 1,000 pages).
const CHECKPOINT_EVERY_COMMITS: u32 = 320;
/// The writer's own automatic checkpoint, only a safety valve (should the checkpointer be
/// unable to run): SQLite checkpoints inside the commit that takes the WAL past this many
/// pages (32 MiB of 4 KiB pages).
const WRITER_CHECKPOINT_PAGES: u32 = 8192;

/// Copies the WAL back into the database off the commit path. SQLite's automatic checkpoint
/// runs inside the commit that crosses its threshold, and commits run on callers' threads.
///
/// In two steps, on a thread of its own: first a PASSIVE checkpoint on a connection of its own,
/// which copies nearly everything while commits go on; then the rest with the write connection
/// held (taken when idle, or asked of whoever holds it: [`WriterState::checkpoint_wanted`]),
/// because SQLite starts the WAL over only when a commit finds all of it copied back, which a
/// concurrent checkpoint rarely leaves under steady writes.
struct Checkpointer {
    nudge: std::sync::mpsc::SyncSender<()>,
}

impl Checkpointer {
    fn new() -> (Self, std::sync::mpsc::Receiver<()>) {
        let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
        (Self { nudge }, nudged)
    }

    /// Starts the thread. It ends when the store is gone (the writer holds the only sender).
    fn spawn(
        path: &Path,
        nudged: std::sync::mpsc::Receiver<()>,
        writer: std::sync::Weak<Writer>,
    ) -> Result<(), StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Unavailable(format!("opening {}: {e}", path.display())))?;
        std::thread::Builder::new()
            .name("ripple-sqlite-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    checkpoint(&conn);
                    let Some(writer) = writer.upgrade() else {
                        return;
                    };
                    let (done, finished) = std::sync::mpsc::sync_channel(1);
                    let idle = {
                        let mut state = writer.lock();
                        state.checkpoint_wanted = Some(done);
                        state.conn.take()
                    };
                    if let Some(conn) = idle {
                        // Not on a runtime thread: whatever queues meanwhile is drained here.
                        Held {
                            writer,
                            conn: Some(conn),
                        }
                        .drain();
                    } else {
                        drop(writer);
                    }
                    // Until the second step has run (or the store is gone), no first step.
                    let _ = finished.recv();
                }
            })
            .map(drop)
            .map_err(|e| StoreError::Unavailable(format!("starting the checkpointer: {e}")))
    }

    /// Asks for a checkpoint; one already asked for and not yet started covers this one too.
    fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}

/// A PASSIVE checkpoint: never waits for, nor blocks, readers or other writers.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!("sqlite: checkpoint failed: {e}");
    }
}

/// Each room's last stored sequence number, as this writer committed it, so that an append
/// does not have to look it up (the lookup is re-prepared on every use). Cleared whenever a
/// transaction does not commit. Should another process append to the same database meanwhile
/// (`ripple import` beside a running server), the stale number collides with the primary key:
/// that append fails cleanly, the cache is cleared, and the next one looks the number up.
#[derive(Default)]
struct LastSeqs(HashMap<RoomKey, u64>);

impl LastSeqs {
    /// Rooms remembered at most; past it the map starts over.
    const MAX_ROOMS: usize = 100_000;

    fn get(&self, room: &RoomKey) -> Option<u64> {
        self.0.get(room).copied()
    }

    fn set(&mut self, room: RoomKey, seq: u64) {
        if self.0.len() >= Self::MAX_ROOMS && !self.0.contains_key(&room) {
            self.0.clear();
        }
        self.0.insert(room, seq);
    }

    fn forget(&mut self, room: &RoomKey) {
        self.0.remove(room);
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Runs one statement that takes no parameters, prepared once per connection. BEGIN, COMMIT and
/// the savepoint statements run for every batch; `execute_batch` would parse them every time.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Ends a transaction that will not commit. A failure here leaves nothing to do but log.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = exec_cached(conn, "ROLLBACK") {
            tracing::warn!("sqlite: rollback failed: {e}");
        }
    }
}

/// Runs a batch of requests in one transaction, commits once, then answers every caller.
/// Returns whether it committed.
fn run_batch(
    conn: &mut Connection,
    batch: Vec<Request>,
    commits: &AtomicU64,
    last_seqs: &mut LastSeqs,
) -> bool {
    if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
        let msg = format!("sqlite: starting a transaction: {e}");
        tracing::warn!("{msg}");
        batch
            .into_iter()
            .for_each(|request| Done::unstarted(request).fail(&msg));
        return false;
    }
    // A lone request needs no savepoint: if it fails, the whole transaction is rolled back.
    let isolate = batch.len() > 1;
    let mut done = Vec::with_capacity(batch.len());
    let mut requests = batch.into_iter();
    let mut aborted = None;
    for request in requests.by_ref() {
        done.push(apply(conn, request, last_seqs, isolate));
        // SQLite rolls the whole transaction back by itself on some errors (disk full, I/O
        // error). Then nothing above is in it any more, whatever the savepoints said.
        if conn.is_autocommit() {
            aborted = Some("sqlite rolled back the transaction (disk full or I/O error?)");
            break;
        }
    }
    if let Some(msg) = aborted {
        last_seqs.clear();
        tracing::warn!("{msg}");
        done.extend(requests.map(Done::unstarted));
        done.into_iter().for_each(|d| d.fail(msg));
        return false;
    }
    if !isolate && done.iter().any(Done::is_err) {
        // The lone request failed part-way: none of it may commit.
        rollback(conn);
        last_seqs.clear();
        done.into_iter().for_each(Done::answer);
        return false;
    }
    match exec_cached(conn, "COMMIT") {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            done.into_iter().for_each(Done::answer);
            true
        }
        Err(e) => {
            rollback(conn);
            last_seqs.clear();
            let msg = format!("sqlite: commit failed: {e}");
            tracing::warn!("{msg}");
            done.into_iter().for_each(|d| d.fail(&msg));
            false
        }
    }
}

/// Runs one request, inside its own savepoint when `isolate` (several requests share the
/// transaction, and one failing must not undo the others).
fn apply(conn: &Connection, request: Request, last_seqs: &mut LastSeqs, isolate: bool) -> Done {
    match request {
        Request::Append {
            room,
            updates,
            reply,
        } => {
            let cached = last_seqs.get(&room);
            let result = if isolate {
                in_savepoint(conn, |c| append_rows(c, &room, &updates, cached))
            } else {
                append_rows(conn, &room, &updates, cached)
            };
            match result {
                Ok(last) => last_seqs.set(room, last),
                Err(_) => last_seqs.forget(&room),
            }
            Done::Append(reply, result)
        }
        Request::Compact {
            room,
            snapshot,
            through_seq,
            reply,
        } => {
            let result = if isolate {
                in_savepoint(conn, |c| {
                    compact_steps(c, &room, &snapshot, through_seq, None)
                })
            } else {
                compact_steps(conn, &room, &snapshot, through_seq, None)
            };
            Done::Compact(reply, result)
        }
        Request::Salvage { room, reply } => {
            let result = if isolate {
                in_savepoint(conn, |c| salvage_steps(c, &room))
            } else {
                salvage_steps(conn, &room)
            };
            Done::Salvage(reply, result)
        }
        Request::Delete { room, reply } => {
            let result = if isolate {
                in_savepoint(conn, |c| delete_rows(c, &room))
            } else {
                delete_rows(conn, &room)
            };
            // The next append starts the room again from 1.
            last_seqs.forget(&room);
            Done::Delete(reply, result)
        }
    }
}

/// Removes the room's snapshot and log.
fn delete_rows(conn: &Connection, room: &RoomKey) -> Result<(), StoreError> {
    let key = params![room.party(), room.room()];
    conn.execute("DELETE FROM snapshots WHERE party = ?1 AND room = ?2", key)
        .map_err(unavailable)?;
    conn.execute("DELETE FROM updates WHERE party = ?1 AND room = ?2", key)
        .map_err(unavailable)?;
    Ok(())
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    exec_cached(conn, "SAVEPOINT batch_request").map_err(unavailable)?;
    match f(conn) {
        Ok(value) => {
            exec_cached(conn, "RELEASE batch_request").map_err(unavailable)?;
            Ok(value)
        }
        Err(e) => {
            // Undo this request only; the transaction goes on for the others.
            let _ = exec_cached(conn, "ROLLBACK TO batch_request");
            let _ = exec_cached(conn, "RELEASE batch_request");
            Err(e)
        }
    }
}

fn last_seq(conn: &Connection, room: &RoomKey) -> Result<u64, StoreError> {
    let last: Option<i64> = conn
        .prepare_cached(LAST_SEQ)
        .and_then(|mut stmt| stmt.query_row(params![room.party(), room.room()], |r| r.get(0)))
        .map_err(unavailable)?;
    u64::try_from(last.unwrap_or(0)).map_err(|_| StoreError::Corrupt {
        room: room.to_string(),
        detail: format!("negative sequence number {last:?}"),
    })
}

fn append_rows(
    conn: &Connection,
    room: &RoomKey,
    updates: &[Bytes],
    cached_last: Option<u64>,
) -> Result<u64, StoreError> {
    let mut seq = match cached_last {
        Some(seq) => seq,
        None => last_seq(conn, room)?,
    };
    let now = record::now_ms();
    let mut insert = conn.prepare_cached(INSERT_UPDATE).map_err(unavailable)?;
    for data in updates {
        seq += 1;
        let sum = record::checksum_column(RecordKind::Update, room.party(), room.room(), seq, data);
        insert
            .execute(params![
                room.party(),
                room.room(),
                record::seq_column(seq)?,
                &data[..],
                sum,
                now
            ])
            .map_err(unavailable)?;
    }
    Ok(seq)
}

/// The compaction, as steps: checks, write the snapshot, delete the covered log entries. The
/// caller's transaction makes them atomic; `stop_after` exists for the crash tests.
fn compact_steps(
    conn: &Connection,
    room: &RoomKey,
    snapshot: &[u8],
    through_seq: u64,
    stop_after: Option<CompactStep>,
) -> Result<(), StoreError> {
    let key = params![room.party(), room.room()];
    let current: Option<i64> = conn
        .query_row(
            "SELECT seq FROM snapshots WHERE party = ?1 AND room = ?2",
            key,
            |r| r.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    record::check_compaction(room, current, last_seq(conn, room)?, through_seq)?;
    let through = record::seq_column(through_seq)?;

    let sum = record::checksum_column(
        RecordKind::Snapshot,
        room.party(),
        room.room(),
        through_seq,
        snapshot,
    );
    conn.execute(
        "INSERT INTO snapshots (party, room, seq, data, checksum, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (party, room) DO UPDATE SET seq = excluded.seq, data = excluded.data,
             checksum = excluded.checksum, updated_ms = excluded.updated_ms",
        params![
            room.party(),
            room.room(),
            through,
            snapshot,
            sum,
            record::now_ms()
        ],
    )
    .map_err(unavailable)?;
    if stop_after == Some(CompactStep::Snapshot) {
        return Ok(());
    }
    conn.execute(
        "DELETE FROM updates WHERE party = ?1 AND room = ?2 AND seq <= ?3",
        params![room.party(), room.room(), through],
    )
    .map_err(unavailable)?;
    Ok(())
}

fn read_room_records(
    conn: &Connection,
    party: &str,
    room: &str,
) -> rusqlite::Result<Vec<RawRecord>> {
    let mut stmt = conn.prepare_cached(ROOM_RECORDS)?;
    let rows = stmt.query_map(params![party, room], |row| {
        Ok(RawRecord::from_row(
            party,
            room,
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
        ))
    })?;
    rows.collect()
}

fn load_blocking(conn: &mut Connection, room: &RoomKey) -> Result<StoredRoom, StoreError> {
    // One read transaction: a compaction committing between the snapshot read and the log
    // read must not be seen half.
    let tx = conn.transaction().map_err(|e| read_error(room, e))?;
    let records =
        read_room_records(&tx, room.party(), room.room()).map_err(|e| read_error(room, e))?;
    tx.finish().map_err(|e| read_error(room, e))?;
    record::stored_room(room, records)
}

fn list_blocking(conn: &mut Connection) -> Result<Vec<RoomInfo>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT party, room, sum(bytes), sum(n), max(ms) FROM (
                SELECT party, room, length(data) AS bytes, 0 AS n, updated_ms AS ms FROM snapshots
                UNION ALL
                SELECT party, room, length(data), 1, created_ms FROM updates)
             GROUP BY party, room ORDER BY party, room",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })
        .map_err(unavailable)?;
    let mut infos = Vec::new();
    for row in rows {
        let (party, room, bytes, count, last_ms) = row.map_err(unavailable)?;
        if let Some(info) = record::room_info(&party, &room, bytes, count, last_ms) {
            infos.push(info);
        }
    }
    Ok(infos)
}

fn info_blocking(conn: &mut Connection, key: &RoomKey) -> Result<Option<RoomInfo>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT count(*), sum(bytes), sum(n), max(ms) FROM (
                SELECT length(data) AS bytes, 0 AS n, updated_ms AS ms FROM snapshots
                    WHERE party = ?1 AND room = ?2
                UNION ALL
                SELECT length(data), 1, created_ms FROM updates WHERE party = ?1 AND room = ?2)",
        )
        .map_err(unavailable)?;
    let (rows, bytes, count, last_ms) = stmt
        .query_row([key.party(), key.room()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Option<i64>>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, Option<i64>>(3)?,
            ))
        })
        .map_err(unavailable)?;
    if rows == 0 {
        return Ok(None);
    }
    Ok(record::room_info(
        key.party(),
        key.room(),
        bytes.unwrap_or(0),
        count.unwrap_or(0),
        last_ms.unwrap_or(0),
    ))
}

fn check_blocking(conn: &mut Connection, room: Option<&RoomKey>) -> Result<Report, StoreError> {
    let rooms: Vec<(String, String)> = match room {
        Some(key) => vec![(key.party().to_owned(), key.room().to_owned())],
        None => {
            let mut stmt = conn
                .prepare(
                    "SELECT party, room FROM snapshots UNION SELECT party, room FROM updates
                     ORDER BY 1, 2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<_>>().map_err(unavailable)?
        }
    };
    let mut report = Report::default();
    for (party, room) in rooms {
        // One short read transaction per room keeps WAL checkpoints moving on a big database.
        let tx = conn.transaction().map_err(unavailable)?;
        let records = read_room_records(&tx, &party, &room).map_err(unavailable)?;
        tx.finish().map_err(unavailable)?;
        report.rooms_checked += 1;
        report.records_checked += records.len() as u64;
        report.bad.extend(fsck::inspect_all(&records));
    }
    Ok(report)
}

fn salvage_steps(conn: &Connection, room: &RoomKey) -> Result<SalvageReport, StoreError> {
    let records = read_room_records(conn, room.party(), room.room()).map_err(unavailable)?;
    let moved = fsck::inspect_all(&records);
    let now = record::now_ms();
    for bad in &moved {
        let (table, stamp) = match bad.kind {
            RecordKind::Snapshot => ("snapshots", "updated_ms"),
            RecordKind::Update => ("updates", "created_ms"),
        };
        let copied = conn
            .execute(
                &format!(
                    "INSERT INTO quarantine (party, room, kind, seq, data, checksum, stored_ms,
                         reason, quarantined_ms)
                     SELECT party, room, ?4, seq, data, checksum, {stamp}, ?5, ?6 FROM {table}
                     WHERE party = ?1 AND room = ?2 AND seq = ?3"
                ),
                params![
                    room.party(),
                    room.room(),
                    bad.seq,
                    bad.kind.as_str(),
                    bad.problem.to_string(),
                    now
                ],
            )
            .map_err(unavailable)?;
        let deleted = conn
            .execute(
                &format!("DELETE FROM {table} WHERE party = ?1 AND room = ?2 AND seq = ?3"),
                params![room.party(), room.room(), bad.seq],
            )
            .map_err(unavailable)?;
        if copied != 1 || deleted != 1 {
            return Err(StoreError::Conflict(format!(
                "{room}: {} seq {} changed during salvage",
                bad.kind, bad.seq
            )));
        }
    }
    Ok(SalvageReport {
        room: room.clone(),
        kept: (records.len() - moved.len()) as u64,
        moved,
    })
}

/// Read connections, reused between reads.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Runs `f` on an idle read connection (or a new one). Blocking.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A poisoned lock only means a reader panicked while pushing or popping; the Vec is
        // still a valid list of connections.
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let result = f(&mut conn);
        // A connection left inside a transaction by an error is closed, not reused.
        if conn.is_autocommit() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        result
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(unavailable)?;
    Ok(conn)
}
