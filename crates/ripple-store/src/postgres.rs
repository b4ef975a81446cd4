//! The Postgres store: tokio-postgres on a deadpool connection pool, all tables in one schema
//! (`ripple` by default).
//!
//! Appends go through one writer task that group-commits: it drains everything queued into one
//! transaction of a fixed number of round trips (lock the rooms, read their last seqs, one
//! multi-row `INSERT ... SELECT FROM unnest(...)`, commit), then answers each caller. Compaction
//! and salvage run in their own transactions on pooled connections. Every write takes a
//! transaction-scoped advisory lock per room (in a fixed order), so several Ripple processes
//! can share one database without two of them computing the same sequence number.
//!
//! Rooms are leased ([`ripple_core::lease`]): `leases` holds each room's owner, epoch and
//! expiry, judged by the database's clock. Acquiring a lease takes the room's advisory lock, and
//! so does every append and compaction, which then checks its epoch against `leases` in the same
//! transaction: a stale owner's write is refused as [`LeaseError::Fenced`] and never commits.
//!
//! Connections are plain TCP, or TLS as the URL's `sslmode` asks (`pg_tls.rs`: require,
//! verify-ca, verify-full, with `sslrootcert`); the schema name is validated and is the only thing ever
//! spliced into SQL. Room keys are bound parameters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use ripple_core::lease::{Epoch, Grant, LeaseError};
use ripple_core::{BoxFuture, RoomInfo, RoomKey, Store, StoreError, StoredRoom};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row, Transaction};

use crate::fsck::{self, RawRecord, Report, SalvageReport};
use crate::record::{self, RecordKind};
use crate::{CompactStep, Durability, MAX_BATCH_BYTES, MAX_BATCH_REQUESTS};

/// The schema used by [`PostgresStore::connect`].
pub const DEFAULT_SCHEMA: &str = "ripple";

/// Append requests waiting for the writer. When full, callers wait (backpressure).
const REQUEST_QUEUE: usize = 1024;
/// Attempts for a batch that failed before its commit was sent on a deadlock, serialization
/// failure or duplicate key (another process raced us) or a closed connection: trying again is
/// safe.
const MAX_ATTEMPTS: u32 = 3;
/// How long a caller waits for a free pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// Advisory lock key serializing migrations across processes ("ripple" in ASCII).
const MIGRATION_LOCK: i64 = 0x7269_7070_6c65;

/// Settings for [`PostgresStore::connect_with_options`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The schema holding Ripple's tables; created if absent. An identifier of ASCII letters,
    /// digits and `_`, not starting with a digit, at most 63 bytes.
    pub schema: String,
    /// [`Durability::Strict`] sets `synchronous_commit=on`, `Relaxed` sets it `off`.
    pub durability: Durability,
    /// Pooled connections (the writer uses one; loads and compactions the others).
    pub pool_size: usize,
    /// Limit on establishing a connection, used unless the URL sets `connect_timeout`.
    pub connect_timeout: Duration,
    /// Create the schema and tables when they are missing (the server). `false` (maintenance
    /// commands) refuses a database without Ripple's tables instead of creating empty ones.
    pub create: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            durability: Durability::Strict,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            create: true,
        }
    }
}

/// The Postgres store. See the module docs for the design.
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Sql>,
    schema: String,
    requests: mpsc::Sender<AppendRequest>,
    commits: Arc<AtomicU64>,
    /// Kept for the crash-simulation test hook, which needs a connection outside the pool.
    #[cfg_attr(not(test), allow(dead_code))]
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

struct AppendRequest {
    room: RoomKey,
    epoch: Epoch,
    updates: Vec<Bytes>,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// Every statement, with the schema spliced in once.
struct Sql {
    lock_rooms: String,
    lock_room: String,
    last_seqs: String,
    insert_updates: String,
    room_records: String,
    snapshot_seq: String,
    upsert_snapshot: String,
    delete_snapshot: String,
    delete_updates: String,
    delete_through: String,
    move_update: String,
    move_snapshot: String,
    list: String,
    info: String,
    advertise: String,
    node_url: String,
    release_node: String,
    rooms: String,
    acquire: String,
    lease_of: String,
    lease_epochs: String,
    renew: String,
    release: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        Self {
            // Sorted, so that two transactions never wait on each other in opposite orders.
            lock_rooms: format!(
                "SELECT pg_advisory_xact_lock(k) FROM (
                     SELECT DISTINCT hashtextextended('{schema}/' || p || '/' || r, 0) AS k
                     FROM unnest($1::text[], $2::text[]) AS t(p, r) ORDER BY k) AS keys"
            ),
            lock_room: format!(
                "SELECT pg_advisory_xact_lock(
                     hashtextextended('{schema}/' || $1::text || '/' || $2::text, 0))"
            ),
            // Counting the quarantine too, so a salvage never lets a seq be reused.
            last_seqs: format!(
                "SELECT t.p, t.r, GREATEST(
                     (SELECT max(u.seq) FROM {s}.updates u WHERE u.party = t.p AND u.room = t.r),
                     (SELECT n.seq FROM {s}.snapshots n WHERE n.party = t.p AND n.room = t.r),
                     (SELECT max(q.seq) FROM {s}.quarantine q
                          WHERE q.party = t.p AND q.room = t.r))
                 FROM unnest($1::text[], $2::text[]) AS t(p, r)"
            ),
            insert_updates: format!(
                "INSERT INTO {s}.updates (party, room, seq, data, checksum, created_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[],
                                      $5::int8[], $6::int8[])"
            ),
            // One statement, so one consistent view of snapshot and log.
            room_records: format!(
                "SELECT 0::int4 AS kind, seq, data, checksum FROM {s}.snapshots
                     WHERE party = $1 AND room = $2
                 UNION ALL
                 SELECT 1, seq, data, checksum FROM {s}.updates WHERE party = $1 AND room = $2
                 ORDER BY 1, 2"
            ),
            snapshot_seq: format!("SELECT seq FROM {s}.snapshots WHERE party = $1 AND room = $2"),
            upsert_snapshot: format!(
                "INSERT INTO {s}.snapshots (party, room, seq, data, checksum, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (party, room) DO UPDATE SET seq = EXCLUDED.seq,
                     data = EXCLUDED.data, checksum = EXCLUDED.checksum,
                     updated_ms = EXCLUDED.updated_ms"
            ),
            delete_snapshot: format!("DELETE FROM {s}.snapshots WHERE party = $1 AND room = $2"),
            delete_updates: format!("DELETE FROM {s}.updates WHERE party = $1 AND room = $2"),
            delete_through: format!(
                "DELETE FROM {s}.updates WHERE party = $1 AND room = $2 AND seq <= $3"
            ),
            move_update: format!(
                "WITH moved AS (DELETE FROM {s}.updates
                                WHERE party = $1 AND room = $2 AND seq = $3 RETURNING *)
                 INSERT INTO {s}.quarantine (party, room, kind, seq, data, checksum, stored_ms,
                                             reason, quarantined_ms)
                 SELECT party, room, 'update', seq, data, checksum, created_ms, $4, $5
                 FROM moved"
            ),
            move_snapshot: format!(
                "WITH moved AS (DELETE FROM {s}.snapshots
                                WHERE party = $1 AND room = $2 AND seq = $3 RETURNING *)
                 INSERT INTO {s}.quarantine (party, room, kind, seq, data, checksum, stored_ms,
                                             reason, quarantined_ms)
                 SELECT party, room, 'snapshot', seq, data, checksum, updated_ms, $4, $5
                 FROM moved"
            ),
            list: format!(
                "SELECT party, room, sum(bytes)::int8, sum(n)::int8, max(ms)::int8 FROM (
                     SELECT party, room, octet_length(data) AS bytes, 0 AS n, updated_ms AS ms
                     FROM {s}.snapshots
                     UNION ALL
                     SELECT party, room, octet_length(data), 1, created_ms FROM {s}.updates
                 ) AS x GROUP BY party, room ORDER BY party, room"
            ),
            info: format!(
                "SELECT count(*)::int8, sum(bytes)::int8, sum(n)::int8, max(ms)::int8 FROM (
                     SELECT octet_length(data) AS bytes, 0 AS n, updated_ms AS ms
                     FROM {s}.snapshots WHERE party = $1 AND room = $2
                     UNION ALL
                     SELECT octet_length(data), 1, created_ms FROM {s}.updates
                     WHERE party = $1 AND room = $2
                 ) AS x"
            ),
            rooms: format!(
                "SELECT party, room FROM {s}.snapshots UNION SELECT party, room FROM {s}.updates
                 ORDER BY 1, 2"
            ),
            // Granted when free, lapsed, or already ours; every grant is a new epoch. Runs
            // under the room's advisory lock, so it orders with appends and compactions.
            acquire: format!(
                "INSERT INTO {s}.leases AS l (party, room, owner, epoch, expires_at)
                 VALUES ($1, $2, $3, 1, clock_timestamp() + $4::float8 * interval '1 millisecond')
                 ON CONFLICT (party, room) DO UPDATE SET owner = EXCLUDED.owner,
                     epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at
                 WHERE l.expires_at <= clock_timestamp() OR l.owner = EXCLUDED.owner
                 RETURNING epoch"
            ),
            lease_of: format!(
                "SELECT owner, epoch FROM {s}.leases WHERE party = $1 AND room = $2"
            ),
            lease_epochs: format!(
                "SELECT t.p, t.r, l.epoch FROM unnest($1::text[], $2::text[]) AS t(p, r)
                 JOIN {s}.leases l ON l.party = t.p AND l.room = t.r"
            ),
            // A lapsed lease may be renewed while nobody took over (the epoch is current).
            renew: format!(
                "UPDATE {s}.leases SET expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond'
                 WHERE party = $1 AND room = $2 AND epoch = $3"
            ),
            advertise: format!(
                "INSERT INTO {s}.nodes (node, url, updated_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE SET url = EXCLUDED.url,
                     updated_ms = EXCLUDED.updated_ms"
            ),
            node_url: format!("SELECT url FROM {s}.nodes WHERE node = $1"),
            release_node: format!(
                "UPDATE {s}.leases SET expires_at = clock_timestamp()
                 WHERE owner = $1 AND expires_at > clock_timestamp()"
            ),
            // The row stays: epochs never go back.
            release: format!(
                "UPDATE {s}.leases SET expires_at = clock_timestamp()
                 WHERE party = $1 AND room = $2 AND epoch = $3"
            ),
        }
    }
}

/// Schema migrations, in order; `schema_version` records each one applied.
fn migrations(schema: &str) -> Vec<(i32, String)> {
    let s = format!("\"{schema}\"");
    vec![
        (
            1,
            format!(
                "CREATE TABLE {s}.snapshots (
                party TEXT COLLATE \"C\" NOT NULL,
                room TEXT COLLATE \"C\" NOT NULL,
                seq BIGINT NOT NULL,
                data BYTEA NOT NULL,
                checksum BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                PRIMARY KEY (party, room)
            );
            CREATE TABLE {s}.updates (
                party TEXT COLLATE \"C\" NOT NULL,
                room TEXT COLLATE \"C\" NOT NULL,
                seq BIGINT NOT NULL,
                data BYTEA NOT NULL,
                checksum BIGINT NOT NULL,
                created_ms BIGINT NOT NULL,
                PRIMARY KEY (party, room, seq)
            );
            CREATE TABLE {s}.quarantine (
                id BIGSERIAL PRIMARY KEY,
                party TEXT COLLATE \"C\" NOT NULL,
                room TEXT COLLATE \"C\" NOT NULL,
                kind TEXT NOT NULL,
                seq BIGINT NOT NULL,
                data BYTEA NOT NULL,
                checksum BIGINT NOT NULL,
                stored_ms BIGINT NOT NULL,
                reason TEXT NOT NULL,
                quarantined_ms BIGINT NOT NULL
            );
            CREATE INDEX quarantine_room ON {s}.quarantine (party, room, seq);"
            ),
        ),
        (
            2,
            format!(
                "CREATE TABLE {s}.leases (
                party TEXT COLLATE \"C\" NOT NULL,
                room TEXT COLLATE \"C\" NOT NULL,
                owner TEXT NOT NULL,
                epoch BIGINT NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (party, room)
            );"
            ),
        ),
        (
            3,
            format!(
                "CREATE TABLE {s}.nodes (
                node TEXT COLLATE \"C\" PRIMARY KEY,
                url TEXT NOT NULL,
                updated_ms BIGINT NOT NULL
            );"
            ),
        ),
    ]
}

/// Describes a driver error with its causes (the driver's own `Display` omits them) and, for
/// server errors, the SQLSTATE and message.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "postgres: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
    }
    let mut text = format!("postgres: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_err(e),
        other => StoreError::Unavailable(format!("postgres pool: {other}")),
    }
}

/// A value read from a row; a type mismatch means the table is not what we created.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx).map_err(pg_err)
}

fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && schema.len() <= 63 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "invalid postgres schema name {schema:?}: use ASCII letters, digits and _"
        )))
    }
}

impl PostgresStore {
    /// Connects with [`PostgresOptions::default`] (schema `ripple`, strict durability).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_options(url, &PostgresOptions::default()).await
    }

    /// Connects using tables in `schema` (created if absent); tests use a schema of their own.
    pub async fn connect_with_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        let options = PostgresOptions {
            schema: schema.to_owned(),
            ..PostgresOptions::default()
        };
        Self::connect_with_options(url, &options).await
    }

    /// Connects, creates the schema and tables if absent (idempotent, safe to run from several
    /// processes at once), and starts the writer task. A database that cannot be reached gives
    /// [`StoreError::Unavailable`] within the connect timeout.
    pub async fn connect_with_options(
        url: &str,
        options: &PostgresOptions,
    ) -> Result<Self, StoreError> {
        validate_schema(&options.schema)?;
        let (url, verify, root) = crate::pg_tls::split_url(url)?;
        let tls = crate::pg_tls::connector(&verify, root.as_deref())?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!("invalid postgres url: {}", describe(&e)))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("ripple");
        }
        let commit_mode = match options.durability {
            Durability::Strict => "-c synchronous_commit=on",
            Durability::Relaxed => "-c synchronous_commit=off",
        };
        let session_options = match config.get_options() {
            Some(existing) => format!("{existing} {commit_mode}"),
            None => commit_mode.to_owned(),
        };
        config.options(session_options);

        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(config.clone(), tls, manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))?;
        migrate(&pool, &options.schema, options.create).await?;

        let sql = Arc::new(Sql::new(&options.schema));
        let commits = Arc::new(AtomicU64::new(0));
        let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
        tokio::spawn(writer(pool.clone(), sql.clone(), rx, commits.clone()));
        Ok(Self {
            pool,
            sql,
            schema: options.schema.clone(),
            requests,
            commits,
            config,
        })
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Write transactions committed since the store was connected.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Inspects every record of `room` (or of all rooms): checksum, then Yjs decoding.
    pub async fn check(&self, room: Option<&RoomKey>) -> Result<Report, StoreError> {
        retrying(|| self.try_check(room)).await
    }

    /// Moves the records of `room` that fail inspection into the `quarantine` table, in one
    /// transaction. Nothing is deleted; the room then loads from the records that are intact.
    pub async fn salvage(&self, room: &RoomKey) -> Result<SalvageReport, StoreError> {
        retrying(|| self.try_salvage(room)).await
    }

    async fn try_check(&self, room: Option<&RoomKey>) -> Result<Report, Failure> {
        let client = self.pool.get().await.map_err(pool_failure)?;
        let rooms: Vec<(String, String)> = match room {
            Some(key) => vec![(key.party().to_owned(), key.room().to_owned())],
            None => {
                let rows = client
                    .query(self.sql.rooms.as_str(), &[])
                    .await
                    .map_err(classify)?;
                rows.iter()
                    .map(|row| Ok((column(row, 0)?, column(row, 1)?)))
                    .collect::<Result<_, StoreError>>()?
            }
        };
        let stmt = client
            .prepare_cached(self.sql.room_records.as_str())
            .await
            .map_err(classify)?;
        let mut report = Report::default();
        for (party, room) in rooms {
            let rows = client
                .query(&stmt, &[&party, &room])
                .await
                .map_err(classify)?;
            let records = raw_records(&party, &room, &rows)?;
            report.rooms_checked += 1;
            report.records_checked += records.len() as u64;
            report.bad.extend(inspect_off_runtime(records).await?.1);
        }
        Ok(report)
    }

    async fn try_salvage(&self, room: &RoomKey) -> Result<SalvageReport, Failure> {
        let mut client = self.pool.get().await.map_err(pool_failure)?;
        let tx = client.transaction().await.map_err(classify)?;
        lock_room(&tx, &self.sql, room).await?;
        let rows = tx
            .query(
                self.sql.room_records.as_str(),
                &[&room.party(), &room.room()],
            )
            .await
            .map_err(classify)?;
        let records = raw_records(room.party(), room.room(), &rows)?;
        let (total, moved) = inspect_off_runtime(records).await?;
        let now = record::now_ms();
        for bad in &moved {
            let stmt = match bad.kind {
                RecordKind::Snapshot => self.sql.move_snapshot.as_str(),
                RecordKind::Update => self.sql.move_update.as_str(),
            };
            let reason = bad.problem.to_string();
            let n = tx
                .execute(
                    stmt,
                    &[&room.party(), &room.room(), &bad.seq, &reason, &now],
                )
                .await
                .map_err(classify)?;
            if n != 1 {
                return Err(Failure::Fatal(StoreError::Conflict(format!(
                    "{room}: {} seq {} changed during salvage",
                    bad.kind, bad.seq
                ))));
            }
        }
        commit(tx).await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(SalvageReport {
            room: room.clone(),
            kept: (total - moved.len()) as u64,
            moved,
        })
    }

    async fn append_request(
        &self,
        room: &RoomKey,
        epoch: Epoch,
        updates: Vec<Bytes>,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            room: room.clone(),
            epoch,
            updates,
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| StoreError::Unavailable("the postgres writer has stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("the postgres writer stopped before answering".into())
        })?
    }

    async fn try_load(&self, room: &RoomKey) -> Result<StoredRoom, Failure> {
        let client = self.pool.get().await.map_err(pool_failure)?;
        let stmt = client
            .prepare_cached(self.sql.room_records.as_str())
            .await
            .map_err(classify)?;
        let rows = client
            .query(&stmt, &[&room.party(), &room.room()])
            .await
            .map_err(classify)?;
        let records = raw_records(room.party(), room.room(), &rows)?;
        Ok(record::stored_room(room, records)?)
    }

    async fn try_compact(
        &self,
        room: &RoomKey,
        epoch: Epoch,
        snapshot: &[u8],
        through_seq: u64,
    ) -> Result<(), Failure> {
        let mut client = self.pool.get().await.map_err(pool_failure)?;
        let tx = client.transaction().await.map_err(classify)?;
        lock_room(&tx, &self.sql, room).await?;
        let current = lease_epoch(&tx, &self.sql, room).await?;
        check_epoch(current, epoch)?;
        compact_steps(&tx, &self.sql, room, snapshot, through_seq, None).await?;
        commit(tx).await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn try_delete(&self, room: &RoomKey, epoch: Epoch) -> Result<(), Failure> {
        let mut client = self.pool.get().await.map_err(pool_failure)?;
        let tx = client.transaction().await.map_err(classify)?;
        lock_room(&tx, &self.sql, room).await?;
        let current = lease_epoch(&tx, &self.sql, room).await?;
        check_epoch(current, epoch)?;
        let (party, name) = (room.party(), room.room());
        tx.execute(self.sql.delete_snapshot.as_str(), &[&party, &name])
            .await
            .map_err(classify)?;
        tx.execute(self.sql.delete_updates.as_str(), &[&party, &name])
            .await
            .map_err(classify)?;
        commit(tx).await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn try_acquire(
        &self,
        room: &RoomKey,
        owner: &str,
        ttl_ms: f64,
    ) -> Result<Grant, Failure> {
        let mut client = self.pool.get().await.map_err(pool_failure)?;
        let tx = client.transaction().await.map_err(classify)?;
        lock_room(&tx, &self.sql, room).await?;
        let granted = tx
            .query_opt(
                self.sql.acquire.as_str(),
                &[&room.party(), &room.room(), &owner, &ttl_ms],
            )
            .await
            .map_err(classify)?;
        let result = match granted {
            Some(row) => Ok(Grant {
                epoch: epoch_column(&row, 0)?,
            }),
            None => {
                let row = tx
                    .query_one(self.sql.lease_of.as_str(), &[&room.party(), &room.room()])
                    .await
                    .map_err(classify)?;
                Err(LeaseError::Held {
                    owner: column(&row, 0)?,
                    epoch: epoch_column(&row, 1)?,
                })
            }
        };
        commit(tx).await?;
        result.map_err(|e| Failure::Fatal(e.into()))
    }

    /// Renews or releases (`ttl_ms` = None) the lease of `epoch`.
    async fn try_extend(
        &self,
        room: &RoomKey,
        epoch: Epoch,
        ttl_ms: Option<f64>,
    ) -> Result<(), Failure> {
        let client = self.pool.get().await.map_err(pool_failure)?;
        let epoch_col = i64::try_from(epoch).map_err(|_| Failure::Fatal(fenced(epoch, 0)))?;
        let (party, name) = (room.party(), room.room());
        let updated = match &ttl_ms {
            Some(ttl) => {
                client
                    .execute(self.sql.renew.as_str(), &[&party, &name, &epoch_col, ttl])
                    .await
            }
            None => {
                client
                    .execute(self.sql.release.as_str(), &[&party, &name, &epoch_col])
                    .await
            }
        }
        .map_err(classify)?;
        if updated == 1 {
            return Ok(());
        }
        let current = match client
            .query_opt(self.sql.lease_of.as_str(), &[&room.party(), &room.room()])
            .await
            .map_err(classify)?
        {
            Some(row) => epoch_column(&row, 1)?,
            None => 0,
        };
        Err(Failure::Fatal(fenced(epoch, current)))
    }

    async fn try_info(&self, key: &RoomKey) -> Result<Option<RoomInfo>, Failure> {
        let client = self.pool.get().await.map_err(pool_failure)?;
        let row = client
            .query_one(self.sql.info.as_str(), &[&key.party(), &key.room()])
            .await
            .map_err(classify)?;
        let rows: i64 = column(&row, 0)?;
        if rows == 0 {
            return Ok(None);
        }
        let bytes: Option<i64> = column(&row, 1)?;
        let count: Option<i64> = column(&row, 2)?;
        let last_ms: Option<i64> = column(&row, 3)?;
        Ok(record::room_info(
            key.party(),
            key.room(),
            bytes.unwrap_or(0),
            count.unwrap_or(0),
            last_ms.unwrap_or(0),
        ))
    }

    async fn try_advertise(&self, node: &str, url: &str) -> Result<(), Failure> {
        let client = self.pool.get().await.map_err(pool_failure)?;
        client
            .execute(
                self.sql.advertise.as_str(),
                &[&node, &url, &record::now_ms()],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn try_release_node(&self, node: &str) -> Result<u64, Failure> {
        let client = self.pool.get().await.map_err(pool_failure)?;
        client
            .execute(self.sql.release_node.as_str(), &[&node])
            .await
            .map_err(classify)
    }

    async fn try_node_url(&self, node: &str) -> Result<Option<String>, Failure> {
        let client = self.pool.get().await.map_err(pool_failure)?;
        let row = client
            .query_opt(self.sql.node_url.as_str(), &[&node])
            .await
            .map_err(classify)?;
        match row {
            Some(row) => Ok(Some(column(&row, 0)?)),
            None => Ok(None),
        }
    }

    async fn try_list(&self) -> Result<Vec<RoomInfo>, Failure> {
        let client = self.pool.get().await.map_err(pool_failure)?;
        let rows = client
            .query(self.sql.list.as_str(), &[])
            .await
            .map_err(classify)?;
        let mut infos = Vec::with_capacity(rows.len());
        for row in &rows {
            let party: String = column(row, 0)?;
            let room: String = column(row, 1)?;
            let bytes: Option<i64> = column(row, 2)?;
            let count: Option<i64> = column(row, 3)?;
            let last_ms: Option<i64> = column(row, 4)?;
            if let Some(info) = record::room_info(
                &party,
                &room,
                bytes.unwrap_or(0),
                count.unwrap_or(0),
                last_ms.unwrap_or(0),
            ) {
                infos.push(info);
            }
        }
        Ok(infos)
    }

    /// Test hook: whether a pooled connection is encrypted (TLS).
    #[cfg(test)]
    pub(crate) async fn pooled_ssl(&self) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }

    /// Test hook: runs a compaction on a connection of its own up to `stop_after`, then
    /// "crashes": the socket closes with the transaction open and no ROLLBACK sent.
    #[cfg(test)]
    pub(crate) async fn crash_mid_compact(
        &self,
        room: &RoomKey,
        snapshot: &[u8],
        through_seq: u64,
        stop_after: CompactStep,
    ) -> Result<(), StoreError> {
        let (mut client, connection) = self.config.connect(NoTls).await.map_err(pg_err)?;
        let connection = tokio::spawn(connection);
        let tx = client.transaction().await.map_err(pg_err)?;
        lock_room(&tx, &self.sql, room)
            .await
            .map_err(Failure::into_error)?;
        let current = lease_epoch(&tx, &self.sql, room)
            .await
            .map_err(Failure::into_error)?;
        check_epoch(current, 0)?;
        compact_steps(
            &tx,
            &self.sql,
            room,
            snapshot,
            through_seq,
            Some(stop_after),
        )
        .await
        .map_err(Failure::into_error)?;
        std::mem::forget(tx);
        connection.abort();
        drop(client);
        Ok(())
    }
}

impl Store for PostgresStore {
    fn load<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<StoredRoom, StoreError>> {
        Box::pin(retrying(move || self.try_load(room)))
    }

    fn append<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        updates: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.append_request(room, epoch, updates))
    }

    fn compact<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        snapshot: Bytes,
        through_seq: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(
            async move { retrying(|| self.try_compact(room, epoch, &snapshot, through_seq)).await },
        )
    }

    fn delete<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(retrying(move || self.try_delete(room, epoch)))
    }

    fn shared(&self) -> bool {
        true
    }

    fn acquire<'a>(
        &'a self,
        room: &'a RoomKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Grant, StoreError>> {
        let ttl_ms = ttl.as_secs_f64() * 1000.0;
        Box::pin(retrying(move || self.try_acquire(room, owner, ttl_ms)))
    }

    fn renew<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let ttl_ms = ttl.as_secs_f64() * 1000.0;
        Box::pin(retrying(move || self.try_extend(room, epoch, Some(ttl_ms))))
    }

    fn release<'a>(
        &'a self,
        room: &'a RoomKey,
        epoch: Epoch,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(retrying(move || self.try_extend(room, epoch, None)))
    }

    fn advertise<'a>(
        &'a self,
        node: &'a str,
        url: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(retrying(move || self.try_advertise(node, url)))
    }

    fn node_url<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(retrying(move || self.try_node_url(node)))
    }

    fn release_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(retrying(move || self.try_release_node(node)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, StoreError>> {
        Box::pin(retrying(move || self.try_list()))
    }

    fn info<'a>(
        &'a self,
        room: &'a RoomKey,
    ) -> BoxFuture<'a, Result<Option<RoomInfo>, StoreError>> {
        Box::pin(retrying(move || self.try_info(room)))
    }
}

async fn migrate(pool: &Pool, schema: &str, create: bool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    if !create {
        // A maintenance command pointed at the wrong database must say so, not create an
        // empty Ripple schema there and report no rooms.
        let table = format!("\"{schema}\".schema_version");
        let found = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map_err(pg_err)?;
        if !column::<bool>(&found, 0)? {
            return Err(StoreError::Unavailable(format!(
                "no Ripple storage in this Postgres database: schema \"{schema}\" has no \
                 Ripple tables (`ripple serve` with this storage creates them)"
            )));
        }
    }
    // Checked first so that a pre-created schema works without the CREATE privilege.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(pg_err)?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .map_err(pg_err)?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".schema_version (
            version INTEGER NOT NULL,
            applied_ms BIGINT NOT NULL
        )"
    ))
    .await
    .map_err(pg_err)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .map_err(pg_err)?;
    let current: i32 = column(&row, 0)?;
    let all = migrations(schema);
    let latest = all.last().map_or(0, |(version, _)| *version);
    if current > latest {
        return Err(StoreError::Unavailable(format!(
            "the database schema is version {current}; this build knows up to {latest}"
        )));
    }
    for (version, ddl) in all.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(ddl).await.map_err(pg_err)?;
        tx.execute(
            &format!(
                "INSERT INTO \"{schema}\".schema_version (version, applied_ms) VALUES ($1, $2)"
            ),
            &[version, &record::now_ms()],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)
}

fn fenced(stale: Epoch, current: Epoch) -> StoreError {
    LeaseError::Fenced { stale, current }.into()
}

fn epoch_column(row: &Row, i: usize) -> Result<Epoch, StoreError> {
    let epoch: i64 = column(row, i)?;
    u64::try_from(epoch)
        .map_err(|_| StoreError::Unavailable(format!("negative lease epoch {epoch}")))
}

/// The room's current epoch (0 when it was never leased). Call under the room's lock.
async fn lease_epoch(tx: &Transaction<'_>, sql: &Sql, room: &RoomKey) -> Result<Epoch, Failure> {
    match tx
        .query_opt(sql.lease_of.as_str(), &[&room.party(), &room.room()])
        .await
        .map_err(classify)?
    {
        Some(row) => Ok(epoch_column(&row, 1)?),
        None => Ok(0),
    }
}

/// Only the current epoch writes ([`ripple_core::lease::LeaseTable::check_write`]).
fn check_epoch(current: Epoch, epoch: Epoch) -> Result<(), StoreError> {
    if current == epoch {
        Ok(())
    } else {
        Err(fenced(epoch, current))
    }
}

async fn lock_room(tx: &Transaction<'_>, sql: &Sql, room: &RoomKey) -> Result<(), Failure> {
    tx.execute(sql.lock_room.as_str(), &[&room.party(), &room.room()])
        .await
        .map_err(classify)?;
    Ok(())
}

/// The compaction, as steps: checks, write the snapshot, delete the covered log entries. The
/// caller's transaction makes them atomic; `stop_after` exists for the crash tests.
async fn compact_steps(
    tx: &Transaction<'_>,
    sql: &Sql,
    room: &RoomKey,
    snapshot: &[u8],
    through_seq: u64,
    stop_after: Option<CompactStep>,
) -> Result<(), Failure> {
    let (party, name) = (room.party(), room.room());
    let current: Option<i64> = match tx
        .query_opt(sql.snapshot_seq.as_str(), &[&party, &name])
        .await
        .map_err(classify)?
    {
        Some(row) => Some(column(&row, 0)?),
        None => None,
    };
    let rows = tx
        .query(sql.last_seqs.as_str(), &[&vec![party], &vec![name]])
        .await
        .map_err(classify)?;
    let last = match rows.first() {
        Some(row) => last_seq_from(room, column(row, 2)?)?,
        None => 0,
    };
    record::check_compaction(room, current, last, through_seq)?;
    let through = record::seq_column(through_seq)?;
    let sum = record::checksum_column(RecordKind::Snapshot, party, name, through_seq, snapshot);
    tx.execute(
        sql.upsert_snapshot.as_str(),
        &[&party, &name, &through, &snapshot, &sum, &record::now_ms()],
    )
    .await
    .map_err(classify)?;
    if stop_after == Some(CompactStep::Snapshot) {
        return Ok(());
    }
    tx.execute(sql.delete_through.as_str(), &[&party, &name, &through])
        .await
        .map_err(classify)?;
    Ok(())
}

fn last_seq_from(room: &RoomKey, stored: Option<i64>) -> Result<u64, StoreError> {
    u64::try_from(stored.unwrap_or(0)).map_err(|_| StoreError::Corrupt {
        room: room.to_string(),
        detail: format!("negative sequence number {stored:?}"),
    })
}

fn raw_records(party: &str, room: &str, rows: &[Row]) -> Result<Vec<RawRecord>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok(RawRecord::from_row(
                party,
                room,
                i64::from(column::<i32>(row, 0)?),
                column(row, 1)?,
                column(row, 2)?,
                column(row, 3)?,
            ))
        })
        .collect()
}

/// Decoding every record is CPU work: it runs on the blocking pool, not the runtime.
async fn inspect_off_runtime(
    records: Vec<RawRecord>,
) -> Result<(usize, Vec<fsck::BadRecord>), StoreError> {
    tokio::task::spawn_blocking(move || (records.len(), fsck::inspect_all(&records)))
        .await
        .map_err(|e| StoreError::Unavailable(format!("inspection task: {e}")))
}

/// The writer task: one batch per loop, until every sender is gone.
async fn writer(
    pool: Pool,
    sql: Arc<Sql>,
    mut rx: mpsc::Receiver<AppendRequest>,
    commits: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes: usize = first.updates.iter().map(Bytes::len).sum();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(request) => {
                    bytes += request.updates.iter().map(Bytes::len).sum::<usize>();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        match append_batch(&pool, &sql, &batch).await {
            Ok(results) => {
                commits.fetch_add(1, Ordering::Relaxed);
                for (request, result) in batch.into_iter().zip(results) {
                    // A caller that went away is fine: the append committed either way.
                    drop(request.reply.send(result));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(
                    requests = batch.len(),
                    "postgres append batch failed: {msg}"
                );
                for request in batch {
                    drop(
                        request
                            .reply
                            .send(Err(StoreError::Unavailable(msg.clone()))),
                    );
                }
            }
        }
    }
}

/// Why an operation failed, and whether running it again is safe and may help.
enum Failure {
    /// Failed before any commit was sent, on a race with another process (deadlock,
    /// serialization failure, duplicate key) or a dead connection (Postgres restarted).
    Retry(StoreError),
    /// Anything else, including a commit whose outcome is unknown.
    Fatal(StoreError),
}

impl Failure {
    fn into_error(self) -> StoreError {
        match self {
            Failure::Retry(e) | Failure::Fatal(e) => e,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Fatal(e)
    }
}

fn classify(e: tokio_postgres::Error) -> Failure {
    // Class 08 is "connection exception", class 57P "operator intervention" (the server is
    // shutting down or terminated our backend): a fresh connection may well succeed.
    let retry = e.is_closed()
        || e.code().is_some_and(|code| {
            *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::UNIQUE_VIOLATION
                || code.code().starts_with("08")
                || code.code().starts_with("57P")
        });
    if retry {
        Failure::Retry(pg_err(e))
    } else {
        Failure::Fatal(pg_err(e))
    }
}

fn pool_failure(e: PoolError) -> Failure {
    match e {
        PoolError::Backend(e) => classify(e),
        other => Failure::Fatal(pool_err(other)),
    }
}

/// Commits. The outcome of a failed COMMIT is unknown, so it is never retried (a retried
/// append could be stored twice).
async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<(), Failure> {
    tx.commit().await.map_err(|e| Failure::Fatal(pg_err(e)))
}

/// Runs `op` until it succeeds, fails for good, or has failed [`MAX_ATTEMPTS`] times.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(Failure::Retry(e)) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, "retrying a postgres operation: {e}");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(failure) => return Err(failure.into_error()),
        }
    }
}

/// Runs one batch, retrying races and dead connections; returns each request's own result.
async fn append_batch(
    pool: &Pool,
    sql: &Sql,
    batch: &[AppendRequest],
) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    retrying(|| try_append_batch(pool, sql, batch)).await
}

async fn try_append_batch(
    pool: &Pool,
    sql: &Sql,
    batch: &[AppendRequest],
) -> Result<Vec<Result<u64, StoreError>>, Failure> {
    let mut client = pool.get().await.map_err(pool_failure)?;
    let tx = client.transaction().await.map_err(classify)?;

    let mut rooms: Vec<&RoomKey> = batch.iter().map(|r| &r.room).collect();
    rooms.sort();
    rooms.dedup();
    let parties: Vec<&str> = rooms.iter().map(|k| k.party()).collect();
    let names: Vec<&str> = rooms.iter().map(|k| k.room()).collect();
    let lock = tx
        .prepare_cached(sql.lock_rooms.as_str())
        .await
        .map_err(classify)?;
    let last_seqs = tx
        .prepare_cached(sql.last_seqs.as_str())
        .await
        .map_err(classify)?;
    tx.execute(&lock, &[&parties, &names])
        .await
        .map_err(classify)?;
    let rows = tx
        .query(&last_seqs, &[&parties, &names])
        .await
        .map_err(classify)?;
    let mut last: HashMap<(String, String), Option<i64>> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let key = (column(row, 0)?, column(row, 1)?);
        last.insert(key, column(row, 2)?);
    }
    // Under the same locks: each room's current epoch (rooms never leased are absent: 0).
    let epoch_rows = tx
        .query(sql.lease_epochs.as_str(), &[&parties, &names])
        .await
        .map_err(classify)?;
    let mut epochs: HashMap<(String, String), Epoch> = HashMap::with_capacity(epoch_rows.len());
    for row in &epoch_rows {
        epochs.insert((column(row, 0)?, column(row, 1)?), epoch_column(row, 2)?);
    }

    let now = record::now_ms();
    let total: usize = batch.iter().map(|r| r.updates.len()).sum();
    let mut col_party: Vec<&str> = Vec::with_capacity(total);
    let mut col_room: Vec<&str> = Vec::with_capacity(total);
    let mut col_seq: Vec<i64> = Vec::with_capacity(total);
    let mut col_data: Vec<&[u8]> = Vec::with_capacity(total);
    let mut col_sum: Vec<i64> = Vec::with_capacity(total);
    let mut next: HashMap<&RoomKey, u64> = HashMap::with_capacity(rooms.len());
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        let room = &request.room;
        let current = epochs
            .get(&(room.party().to_owned(), room.room().to_owned()))
            .copied()
            .unwrap_or(0);
        if let Err(e) = check_epoch(current, request.epoch) {
            // A stale owner: its updates are refused; the other rooms go ahead.
            results.push(Err(e));
            continue;
        }
        let mut seq = match next.get(room) {
            Some(seq) => *seq,
            None => {
                let stored = last
                    .get(&(room.party().to_owned(), room.room().to_owned()))
                    .copied()
                    .flatten();
                match last_seq_from(room, stored) {
                    Ok(seq) => seq,
                    Err(e) => {
                        // This room's stored seqs are damaged; the other rooms go ahead.
                        results.push(Err(e));
                        continue;
                    }
                }
            }
        };
        for data in &request.updates {
            seq += 1;
            col_party.push(room.party());
            col_room.push(room.room());
            col_seq.push(record::seq_column(seq)?);
            col_data.push(data);
            col_sum.push(record::checksum_column(
                RecordKind::Update,
                room.party(),
                room.room(),
                seq,
                data,
            ));
        }
        next.insert(room, seq);
        results.push(Ok(seq));
    }
    if !col_data.is_empty() {
        let col_ms = vec![now; col_data.len()];
        let insert = tx
            .prepare_cached(sql.insert_updates.as_str())
            .await
            .map_err(classify)?;
        tx.execute(
            &insert,
            &[
                &col_party, &col_room, &col_seq, &col_data, &col_sum, &col_ms,
            ],
        )
        .await
        .map_err(classify)?;
    }
    commit(tx).await?;
    Ok(results)
}
