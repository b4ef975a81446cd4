//! Commands that work on stored rooms directly (no server needed): `rooms`, `export`,
//! `import`, `compact`, `fsck`. They open the storage the configuration names, as `ripple
//! serve` would, but only if it exists: a mistyped `--data-dir` or URL is an error naming it,
//! never a new empty store. Rooms are named as `ripple rooms` prints them (`PARTY/ROOM`), or
//! as `ROOM` with `--party`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use ripple_core::room::{fold, Room};
use ripple_core::RoomKey;
use ripple_store::{Backend, Durability};

use crate::settings::{self, StorageArgs};

/// Names a room.
#[derive(Debug, Args)]
pub struct RoomArg {
    /// The room: PARTY/ROOM as `ripple rooms` prints it, or the room id alone (the raw path
    /// segment clients use) in the party of --party.
    pub room: String,
    /// The party of a ROOM given without one (PartyKit's `parties/PARTY/...`) [default: main].
    #[arg(long)]
    pub party: Option<String>,
}

/// Optionally names a room.
#[derive(Debug, Args)]
pub struct MaybeRoomArg {
    /// The room (PARTY/ROOM, or ROOM with --party); all rooms when left out.
    pub room: Option<String>,
    /// The party of a ROOM given without one [default: main].
    #[arg(long, requires = "room")]
    pub party: Option<String>,
}

/// `ripple export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    room: RoomArg,
    /// Print JSON of the root types instead of the binary Yjs update.
    #[arg(long)]
    json: bool,
    /// With --json: the kind of a root type, NAME=text|map|array|xml (roots that clients never
    /// declared to the server are otherwise guessed: map when they hold no sequence, else text).
    #[arg(long = "type", value_name = "NAME=KIND")]
    types: Vec<String>,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    out: Option<PathBuf>,
    #[command(flatten)]
    settings: StorageArgs,
}

/// `ripple import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    room: RoomArg,
    /// A file holding one Yjs v1 update (what `ripple export` writes).
    file: PathBuf,
    #[command(flatten)]
    settings: StorageArgs,
}

/// `ripple compact` and `ripple fsck`.
#[derive(Debug, Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    room: MaybeRoomArg,
    /// fsck only: move records that fail their checksum or do not decode into quarantine (never
    /// deleted) so the room loads again from what is intact.
    #[arg(long)]
    salvage: bool,
    #[command(flatten)]
    settings: StorageArgs,
}

/// `ripple rooms`.
#[derive(Debug, Args)]
pub struct RoomsArgs {
    /// Print JSON lines instead of a table: {"room", "party", "id", "bytes", "updates",
    /// "last_change" (RFC 3339, UTC), "last_change_ms" (Unix milliseconds)}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: StorageArgs,
}

async fn open(settings: &StorageArgs) -> anyhow::Result<(Backend, usize)> {
    let config = settings::load_storage(settings)?;
    // Maintenance writes (import, compact, salvage) are rare: always synced.
    let backend = Backend::open_existing(&config.storage, &config.data_dir, Durability::Strict)
        .await
        .context("opening storage")?;
    Ok((backend, config.max_room_id_len))
}

/// Opens storage for a command that writes (`import`, `compact`, `fsck --salvage`). An embedded
/// data directory must not be in use by a running server, which owns it: the command refuses,
/// naming that process, rather than race its sequence numbers and compactions.
async fn open_for_writing(
    settings: &StorageArgs,
) -> anyhow::Result<(Backend, usize, Option<ripple_store::DataDirLock>)> {
    let config = settings::load_storage(settings)?;
    // Opened first: storage that does not exist is reported as such (and nothing is created).
    let (backend, max_len) = open(settings).await?;
    let lock = if ripple_store::is_embedded(&config.storage) {
        Some(ripple_store::DataDirLock::acquire(&config.data_dir, false)?)
    } else {
        None
    };
    Ok((backend, max_len, lock))
}

/// The room `room` names: `PARTY/ROOM` (what `ripple rooms` prints; room ids never contain
/// `/`), or `ROOM` in `party` (default `main`).
fn key(room: &str, party: Option<&str>, max_len: usize) -> anyhow::Result<RoomKey> {
    let (party, room) = match (room.split_once('/'), party) {
        (Some((p, r)), None) => (p, r),
        (Some(_), Some(party)) => bail!(
            "{room:?} already names its party; give PARTY/ROOM or ROOM --party {party}, not both"
        ),
        (None, party) => (party.unwrap_or(ripple_core::DEFAULT_PARTY), room),
    };
    RoomKey::new(party, room, max_len).context("invalid room id")
}

/// `ms` (Unix milliseconds) as UTC in RFC 3339 form, to the second: `2026-12-01T09:41:07Z`.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Lists stored rooms.
pub async fn rooms(args: RoomsArgs) -> anyhow::Result<()> {
    let (backend, _) = open(&args.settings).await?;
    let mut rooms = backend.store().list().await?;
    rooms.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = std::io::stdout().lock();
    if args.json {
        for r in rooms {
            let line = serde_json::json!({
                "room": r.key.to_string(),
                "party": r.key.party(),
                "id": r.key.room(),
                "bytes": r.stored_bytes,
                "updates": r.update_count,
                "last_change": utc(r.last_change_ms),
                "last_change_ms": r.last_change_ms,
            });
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<40} {:>12} {:>8}  LAST CHANGE (UTC)",
        "ROOM", "BYTES", "UPDATES"
    )?;
    for r in rooms {
        writeln!(
            out,
            "{:<40} {:>12} {:>8}  {}",
            r.key.to_string(),
            r.stored_bytes,
            r.update_count,
            utc(r.last_change_ms)
        )?;
    }
    Ok(())
}

/// Writes a room's state as a Yjs update or JSON.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let (backend, max_len) = open(&args.settings).await?;
    let key = key(&args.room.room, args.room.party.as_deref(), max_len)?;
    let stored = backend.store().load(&key).await?;
    if stored.is_empty() {
        bail!("room {key} has no stored state");
    }
    let bytes: Vec<u8> = if args.json {
        let room = Room::load(&stored, 0).with_context(|| format!("loading {key}"))?;
        let json = to_json(room.doc(), &args.types)?;
        let mut text = serde_json::to_string_pretty(&json)?;
        text.push('\n');
        text.into_bytes()
    } else {
        fold(&stored, u64::MAX)
            .with_context(|| format!("loading {key}"))?
            .to_vec()
    };
    match args.out {
        Some(path) => {
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(&bytes)?,
    }
    Ok(())
}

/// The root types as JSON, by the rule `ripple_core::json` shares with the HTTP API.
fn to_json(doc: &yrs::Doc, types: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut kinds = ripple_core::json::Kinds::new();
    for t in types {
        let (name, kind) = t
            .split_once('=')
            .with_context(|| format!("--type wants NAME=KIND, got {t:?}"))?;
        let kind = ripple_core::json::Kind::parse(kind).with_context(|| {
            format!("unknown kind {kind:?} for {name}: use text, map, array or xml")
        })?;
        kinds.insert(name.to_owned(), kind);
    }
    Ok(ripple_core::json::to_json(doc, &kinds).0)
}

/// Appends a Yjs update to a room.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let (backend, max_len, _lock) = open_for_writing(&args.settings).await?;
    let key = key(&args.room.room, args.room.party.as_deref(), max_len)?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    if let Err(e) = ripple_core::room::decode_untrusted(&bytes) {
        bail!("the file is not a Yjs v1 update: {e}");
    }
    let store = backend.store();
    let epoch = take_lease(store.as_ref(), &key).await?;
    let appended = store.append(&key, epoch, vec![Bytes::from(bytes)]).await;
    let _ = store.release(&key, epoch).await;
    println!("imported into {key} as update {}", appended?);
    Ok(())
}

/// How long a command's lease on a room lasts (it releases it when done).
const CLI_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Takes the room's lease for this command, the way a node does before it writes a room, so a
/// command never writes beside a live owner (Postgres; an embedded directory is locked as a
/// whole instead). Returns the epoch to write with.
async fn take_lease(store: &dyn ripple_core::Store, key: &RoomKey) -> anyhow::Result<u64> {
    let owner = format!("ripple-cli-{}", std::process::id());
    match store.acquire(key, &owner, CLI_LEASE).await {
        Ok(grant) => Ok(grant.epoch),
        Err(ripple_core::StoreError::Lease(e)) => bail!(
            "{key}: {e}; a running node writes this room: stop it, or wait until the room is \
             idle (rooms compact on their own when their last client leaves)"
        ),
        Err(e) => Err(e.into()),
    }
}

async fn room_keys(
    backend: &Backend,
    arg: &MaybeRoomArg,
    max_len: usize,
) -> anyhow::Result<Vec<RoomKey>> {
    Ok(match &arg.room {
        Some(room) => vec![key(room, arg.party.as_deref(), max_len)?],
        None => backend
            .store()
            .list()
            .await?
            .into_iter()
            .map(|info| info.key)
            .collect(),
    })
}

/// Folds each room's log into its snapshot.
pub async fn compact(args: MaintainArgs) -> anyhow::Result<()> {
    let (backend, max_len, _lock) = open_for_writing(&args.settings).await?;
    let store = backend.store();
    for key in room_keys(&backend, &args.room, max_len).await? {
        // Leased before loading: no owner can append between the load and the compaction.
        let epoch = take_lease(store.as_ref(), &key).await?;
        let result = compact_one(store.as_ref(), &key, epoch).await;
        let _ = store.release(&key, epoch).await;
        result?;
    }
    Ok(())
}

async fn compact_one(
    store: &dyn ripple_core::Store,
    key: &RoomKey,
    epoch: u64,
) -> anyhow::Result<()> {
    let stored = store.load(key).await?;
    if stored.updates.is_empty() {
        println!("{key}: nothing to compact");
        return Ok(());
    }
    let through = stored.last_seq();
    let snapshot = fold(&stored, through).with_context(|| format!("loading {key}"))?;
    let size = snapshot.len();
    store.compact(key, epoch, snapshot, through).await?;
    println!(
        "{key}: folded {} updates into a {size}-byte snapshot",
        stored.updates.len()
    );
    Ok(())
}

/// Reports (and optionally salvages) records that fail their checksum or do not decode.
/// Exits non-zero when problems remain.
pub async fn fsck(args: MaintainArgs) -> anyhow::Result<bool> {
    let (backend, max_len, _lock) = if args.salvage {
        open_for_writing(&args.settings).await?
    } else {
        let (backend, max_len) = open(&args.settings).await?;
        (backend, max_len, None)
    };
    let one = match &args.room.room {
        Some(room) => Some(key(room, args.room.party.as_deref(), max_len)?),
        None => None,
    };
    let report = backend.check(one.as_ref()).await?;
    if report.is_clean() {
        println!("ok: no bad records");
        return Ok(true);
    }
    for r in &report.bad {
        println!("{r}");
    }
    if !args.salvage {
        println!("run with --salvage to move bad records into quarantine (nothing is deleted)");
        return Ok(false);
    }
    let rooms: Vec<(String, String)> = report
        .by_room()
        .keys()
        .map(|(p, r)| ((*p).to_owned(), (*r).to_owned()))
        .collect();
    for (party, room) in rooms {
        let key = RoomKey::new(&party, &room, max_len).context("invalid room id")?;
        let salvaged = backend.salvage(&key).await?;
        println!(
            "{key}: moved {} records into quarantine, kept {}",
            salvaged.moved.len(),
            salvaged.kept
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_named_as_ripple_rooms_prints_them_or_with_party() {
        let k = |room: &str, party: Option<&str>| key(room, party, 256).map(|k| k.to_string());
        assert_eq!(k("main/doc-42", None).ok().as_deref(), Some("main/doc-42"));
        assert_eq!(k("doc-42", None).ok().as_deref(), Some("main/doc-42"));
        assert_eq!(k("doc-42", Some("p")).ok().as_deref(), Some("p/doc-42"));
        assert_eq!(k("p/doc-42", None).ok().as_deref(), Some("p/doc-42"));
        assert!(k("p/doc-42", Some("q")).is_err(), "two parties");
        assert!(k("a/b/c", None).is_err(), "a room id has no /");
        assert!(k("/doc", None).is_err(), "empty party");
    }

    #[test]
    fn last_changes_read_as_utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_118_067_999), "2026-12-01T09:41:07Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
    }
}
