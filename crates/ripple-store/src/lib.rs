//! Durable room storage for Ripple: the [`Store`] implementations behind the seam defined in
//! `ripple-core`.
//!
//! - [`SqliteStore`]: the embedded default, one file `ripple.db` in the data directory.
//! - [`PostgresStore`]: for deployments that already run Postgres, or several server nodes.
//! - `memory`: [`ripple_core::MemoryStore`], nothing survives the process.
//!
//! Both durable backends share one design:
//!
//! - **Group commit.** One writer (a thread for SQLite, a task for Postgres) takes append
//!   requests from a bounded channel, drains everything queued into one transaction, commits
//!   once (one fsync), then acknowledges each caller. A full channel makes callers wait
//!   (backpressure); nothing is ever dropped.
//! - **Checksums.** Every stored record carries a CRC32C of its kind, key, sequence number and
//!   data ([`record`]). `load` verifies each and answers [`StoreError::Corrupt`] on a mismatch.
//! - **fsck.** [`Backend::check`] finds records that fail their checksum or do not decode as a
//!   Yjs v1 update; [`Backend::salvage`] moves them into a `quarantine` table (never deleting
//!   them) so the room loads again from what is left ([`fsck`]).
//! - **Atomic compaction.** The snapshot and the removal of the log entries it covers are one
//!   transaction; a crash at any point leaves the prior state loadable.
//!
//! Room keys only ever reach SQL as bound parameters.
//!
//! [`Store`]: ripple_core::Store
//! [`StoreError::Corrupt`]: ripple_core::StoreError::Corrupt

pub mod dirlock;
pub mod fsck;
mod pg_tls;
mod postgres;
pub mod record;
pub mod sqlite;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use ripple_core::{MemoryStore, RoomKey, Store, StoreError};

pub use dirlock::DataDirLock;
pub use fsck::{BadRecord, Problem, Report, SalvageReport};
pub use postgres::{PostgresOptions, PostgresStore};
pub use record::RecordKind;
pub use sqlite::SqliteStore;

pub use ripple_core::Durability;

/// At most this many requests share one write transaction...
pub(crate) const MAX_BATCH_REQUESTS: usize = 512;
/// ...and at most about this many payload bytes (a single larger request still goes alone).
pub(crate) const MAX_BATCH_BYTES: usize = 16 << 20;

/// Helpers for tests that need a real database, shared by this workspace's test suites.
///
/// Such tests are marked `#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]`, so that a
/// plain `cargo test` reports them as ignored rather than as passes; `scripts/test.sh` runs them
/// (`-- --include-ignored`) when `RIPPLE_TEST_DATABASE_URL` is set, and fails when it is not
/// but `RIPPLE_REQUIRE_SERVICES=1` (as in CI).
pub mod testing {
    /// Why a Postgres test is ignored; the one text every such `#[ignore]` carries.
    pub const NEEDS_POSTGRES: &str = "needs Postgres (RIPPLE_TEST_DATABASE_URL)";

    /// The Postgres URL tests should use (`RIPPLE_TEST_DATABASE_URL`).
    ///
    /// # Panics
    /// When the variable is unset or empty: a test that asked for Postgres was run on purpose
    /// (`--include-ignored`), and passing without one would be a lie.
    pub fn database_url() -> String {
        match std::env::var("RIPPLE_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => panic!(
                "this test {NEEDS_POSTGRES}: set RIPPLE_TEST_DATABASE_URL, e.g. \
                 postgres://postgres@127.0.0.1:5432/test (plain `cargo test` skips it as ignored)"
            ),
        }
    }
}

/// Whether opening storage may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    /// The server: create the data directory, database and tables as needed.
    CreateIfMissing,
    /// Maintenance: existing Ripple storage only.
    ExistingOnly,
}

/// An opened backend, with the maintenance operations the CLI needs next to the [`Store`] seam.
#[derive(Clone)]
pub enum Backend {
    /// The embedded SQLite store.
    Sqlite(Arc<SqliteStore>),
    /// The Postgres store.
    Postgres(Arc<PostgresStore>),
    /// The in-memory store (nothing survives the process).
    Memory(Arc<MemoryStore>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite(_) => "Backend::Sqlite",
            Backend::Postgres(_) => "Backend::Postgres",
            Backend::Memory(_) => "Backend::Memory",
        })
    }
}

impl Backend {
    /// Opens the backend named by `spec`:
    ///
    /// - `postgres://...` or `postgresql://...`: Postgres (schema `ripple`);
    /// - `sqlite` or empty: SQLite in `data_dir/ripple.db`;
    /// - `memory`: an in-memory store.
    ///
    /// Anything else is refused with [`StoreError::Unavailable`]. Missing storage is created
    /// (the data directory, the database file, the schema and tables).
    pub async fn open(
        spec: &str,
        data_dir: &Path,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        Self::open_with(spec, data_dir, durability, OpenMode::CreateIfMissing, 0).await
    }

    /// Opens the backend named by `spec` as [`Backend::open`] does, but only storage that
    /// already holds Ripple's tables: what the maintenance commands use, so that a mistyped
    /// `--data-dir` or URL is an error naming it rather than a new, empty store. The memory
    /// store holds nothing between processes and is refused too.
    pub async fn open_existing(
        spec: &str,
        data_dir: &Path,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        Self::open_with(spec, data_dir, durability, OpenMode::ExistingOnly, 0).await
    }

    /// `pool_size`: Postgres connections (0: the default, [`PostgresOptions::default`]).
    async fn open_with(
        spec: &str,
        data_dir: &Path,
        durability: Durability,
        mode: OpenMode,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        let create = mode == OpenMode::CreateIfMissing;
        let spec = spec.trim();
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            let defaults = PostgresOptions::default();
            let options = PostgresOptions {
                durability,
                create,
                pool_size: if pool_size == 0 {
                    defaults.pool_size
                } else {
                    pool_size
                },
                ..defaults
            };
            let store = PostgresStore::connect_with_options(spec, &options).await?;
            return Ok(Backend::Postgres(Arc::new(store)));
        }
        match spec {
            "" | "sqlite" => {
                // Opening may create the directory, and runs migrations: blocking file I/O.
                let dir = data_dir.to_path_buf();
                let store = tokio::task::spawn_blocking(move || {
                    if create {
                        SqliteStore::open(&dir, durability)
                    } else {
                        SqliteStore::open_existing(&dir, durability)
                    }
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("sqlite open: {e}")))??;
                Ok(Backend::Sqlite(Arc::new(store)))
            }
            "memory" if !create => Err(StoreError::Unavailable(
                "storage is \"memory\": it keeps nothing between processes, so there are no \
                 stored rooms to work on"
                    .into(),
            )),
            "memory" => Ok(Backend::Memory(Arc::new(MemoryStore::new()))),
            other => {
                // Print only the scheme: a mistyped URL may still carry a password.
                let scheme = other.split(':').next().unwrap_or_default();
                Err(StoreError::Unavailable(format!(
                    "unknown store {scheme:?}: expected postgres://..., sqlite or memory"
                )))
            }
        }
    }

    /// The backend as the storage seam the server uses.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(s) => s.clone(),
            Backend::Postgres(s) => s.clone(),
            Backend::Memory(s) => s.clone(),
        }
    }

    /// Finds records that fail their checksum or do not decode as a Yjs v1 update, in one room
    /// or (with `None`) everywhere. Reads only.
    pub async fn check(&self, room: Option<&RoomKey>) -> Result<Report, StoreError> {
        match self {
            Backend::Sqlite(s) => s.check(room).await,
            Backend::Postgres(s) => s.check(room).await,
            Backend::Memory(s) => fsck::check_through_store(s.as_ref(), room).await,
        }
    }

    /// Moves the bad records of `room` into quarantine so that the room loads again from the
    /// records that are intact. Nothing is deleted. The memory store has no quarantine and
    /// refuses.
    pub async fn salvage(&self, room: &RoomKey) -> Result<SalvageReport, StoreError> {
        match self {
            Backend::Sqlite(s) => s.salvage(room).await,
            Backend::Postgres(s) => s.salvage(room).await,
            Backend::Memory(_) => Err(StoreError::Unavailable(
                "the memory store has no quarantine to salvage into".into(),
            )),
        }
    }

    /// Number of write transactions committed since the backend was opened (`None` for the
    /// memory store). Appends per commit shows how well group commit batches.
    pub fn commits(&self) -> Option<u64> {
        match self {
            Backend::Sqlite(s) => Some(s.commits()),
            Backend::Postgres(s) => Some(s.commits()),
            Backend::Memory(_) => None,
        }
    }
}

/// Whether `spec` names the embedded SQLite store (whose data directory one process owns at a
/// time, see [`DataDirLock`]).
pub fn is_embedded(spec: &str) -> bool {
    matches!(spec.trim(), "" | "sqlite")
}

/// Opens the store named by `spec` (see [`Backend::open`]) as the seam the server uses, with
/// at most `pool_size` Postgres connections (0: the default).
pub async fn open_store(
    spec: &str,
    data_dir: &Path,
    durability: Durability,
    pool_size: usize,
) -> Result<Arc<dyn Store>, StoreError> {
    let mode = OpenMode::CreateIfMissing;
    Ok(
        Backend::open_with(spec, data_dir, durability, mode, pool_size)
            .await?
            .store(),
    )
}

/// Where the crash-simulation test hooks stop a compaction: after which step the "process dies"
/// before the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum CompactStep {
    /// After the snapshot was written, before the covered log entries were deleted.
    Snapshot,
    /// After both steps, before the commit.
    Delete,
}
