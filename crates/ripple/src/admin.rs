//! Commands that work on stored rooms directly (no server needed): `rooms`, `export`,
//! `import`, `compact`, `fsck`. They open the storage the configuration names, exactly as
//! `ripple serve` would.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use ripple_core::room::{fold, Room};
use ripple_core::RoomKey;
use ripple_store::Backend;
use yrs::types::ToJson;
use yrs::{GetString, ReadTxn, Transact};

use crate::settings::{self, ServeArgs};

/// Names a room.
#[derive(Debug, Args)]
pub struct RoomArg {
    /// The room id (the raw path segment clients use).
    pub room: String,
    /// The party (PartyKit's `parties/PARTY/...`).
    #[arg(long, default_value = ripple_core::DEFAULT_PARTY)]
    pub party: String,
}

/// Optionally names a room.
#[derive(Debug, Args)]
pub struct MaybeRoomArg {
    /// The room id; all rooms when left out.
    pub room: Option<String>,
    /// The party of ROOM.
    #[arg(long, default_value = ripple_core::DEFAULT_PARTY)]
    pub party: String,
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
    settings: ServeArgs,
}

/// `ripple import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    room: RoomArg,
    /// A file holding one Yjs v1 update (what `ripple export` writes).
    file: PathBuf,
    #[command(flatten)]
    settings: ServeArgs,
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
    settings: ServeArgs,
}

/// `ripple rooms`.
#[derive(Debug, Args)]
pub struct RoomsArgs {
    #[command(flatten)]
    settings: ServeArgs,
}

async fn open(settings: &ServeArgs) -> anyhow::Result<(Backend, usize)> {
    let config = settings::load(settings, false)?;
    let backend = Backend::open(&config.storage, &config.data_dir, config.durability)
        .await
        .context("opening storage")?;
    Ok((backend, config.max_room_id_len))
}

/// Opens storage for a command that writes (`import`, `compact`, `fsck --salvage`). An embedded
/// data directory must not be in use by a running server, which owns it: the command refuses,
/// naming that process, rather than race its sequence numbers and compactions.
async fn open_for_writing(
    settings: &ServeArgs,
) -> anyhow::Result<(Backend, usize, Option<ripple_store::DataDirLock>)> {
    let config = settings::load(settings, false)?;
    let lock = if ripple_store::is_embedded(&config.storage) {
        Some(ripple_store::DataDirLock::acquire(&config.data_dir, false)?)
    } else {
        None
    };
    let (backend, max_len) = open(settings).await?;
    Ok((backend, max_len, lock))
}

fn key(party: &str, room: &str, max_len: usize) -> anyhow::Result<RoomKey> {
    RoomKey::new(party, room, max_len).context("invalid room id")
}

/// Lists stored rooms.
pub async fn rooms(args: RoomsArgs) -> anyhow::Result<()> {
    let (backend, _) = open(&args.settings).await?;
    let mut rooms = backend.store().list().await?;
    rooms.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<40} {:>12} {:>8} {:>14}",
        "ROOM", "BYTES", "UPDATES", "LAST CHANGE (ms)"
    )?;
    for r in rooms {
        writeln!(
            out,
            "{:<40} {:>12} {:>8} {:>14}",
            r.key.to_string(),
            r.stored_bytes,
            r.update_count,
            r.last_change_ms
        )?;
    }
    Ok(())
}

/// Writes a room's state as a Yjs update or JSON.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let (backend, max_len) = open(&args.settings).await?;
    let key = key(&args.room.party, &args.room.room, max_len)?;
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

fn to_json(doc: &yrs::Doc, types: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut kinds = std::collections::HashMap::new();
    for t in types {
        let (name, kind) = t
            .split_once('=')
            .with_context(|| format!("--type wants NAME=KIND, got {t:?}"))?;
        kinds.insert(name.to_owned(), kind.to_owned());
    }
    let names: Vec<(String, bool)> = {
        let txn = doc.transact();
        txn.root_refs()
            .map(|(name, value)| {
                let has_sequence = match &value {
                    yrs::Out::UndefinedRef(branch) => branch.len() > 0,
                    _ => true,
                };
                (name.to_owned(), has_sequence)
            })
            .collect()
    };
    let mut out = serde_json::Map::new();
    for (name, has_sequence) in names {
        let guess = if has_sequence { "text" } else { "map" };
        let kind = kinds.get(&name).map_or(guess, String::as_str);
        let value = match kind {
            "text" => {
                let t = doc.get_or_insert_text(name.as_str());
                serde_json::Value::String(t.get_string(&doc.transact()))
            }
            "xml" => {
                let x = doc.get_or_insert_xml_fragment(name.as_str());
                serde_json::Value::String(x.get_string(&doc.transact()))
            }
            "map" => any_to_json(
                &doc.get_or_insert_map(name.as_str())
                    .to_json(&doc.transact()),
            )?,
            "array" => any_to_json(
                &doc.get_or_insert_array(name.as_str())
                    .to_json(&doc.transact()),
            )?,
            other => bail!("unknown kind {other:?} for {name}: use text, map, array or xml"),
        };
        out.insert(name, value);
    }
    Ok(serde_json::Value::Object(out))
}

fn any_to_json(any: &yrs::Any) -> anyhow::Result<serde_json::Value> {
    let mut text = String::new();
    any.to_json(&mut text);
    serde_json::from_str(&text).context("converting to JSON")
}

/// Appends a Yjs update to a room.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let (backend, max_len, _lock) = open_for_writing(&args.settings).await?;
    let key = key(&args.room.party, &args.room.room, max_len)?;
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
        Some(room) => vec![key(&arg.party, room, max_len)?],
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
        Some(room) => Some(key(&args.room.party, room, max_len)?),
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
        let key = key(&party, &room, max_len)?;
        let salvaged = backend.salvage(&key).await?;
        println!(
            "{key}: moved {} records into quarantine, kept {}",
            salvaged.moved.len(),
            salvaged.kept
        );
    }
    Ok(true)
}
