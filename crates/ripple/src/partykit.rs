//! `ripple import-partykit [DIR]`: moves the rooms a PartyKit dev server kept (its `--persist`
//! folder, `.partykit/state` by default) into Ripple's storage.
//!
//! What PartyKit leaves on disk (partykit 0.0.115, miniflare 3, y-partykit 0.0.33):
//!
//! - `DIR/party/<worker>-<Class>/<hex>.sqlite`: one workerd SQLite file per Durable Object (one
//!   per room), with `-wal`/`-shm` beside it. The worker name is empty in dev, so the folders
//!   are `-PartyKitDurable` (the `main` party) and `-<name>DO` for each entry `<name>` of
//!   `parties` in `partykit.json` (PartyKit binds each party's class as `${name}DO`).
//! - Table `_cf_KV(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID`: the Durable Object's
//!   key-value storage. y-partykit's keys are parts joined by `#`, strings in `"`, numbers
//!   zero-padded to 9 digits, then a chunk number (values are cut into 128 KiB chunks):
//!   `"v1"#"<room>"#"update"#<clock>#<chunk>` (a Yjs v1 update once its chunks are joined) and
//!   `"v1_sv"#"<room>"#<chunk>` (varUint clock, then varUint8Array state vector).
//! - Each value is a V8-serialized `Uint8Array` ([`unwrap_v8`]).
//!
//! The import of one room is all or nothing: every value of the room is read, unwrapped and
//! decoded (with the same bounds as a client's bytes), and the updates merged into one document,
//! before anything is written; then the merged update is appended and folded into the room's
//! snapshot. A room whose data does not decode, or a file that is not a y-partykit store, is
//! reported and skipped; the exit code says whether anything was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use ripple_core::{RoomKey, Store};
use ripple_store::{Backend, Durability};
use yrs::{Doc, ReadTxn, StateVector, Transact};

use crate::settings::{self, StorageArgs};

/// `ripple import-partykit`.
#[derive(Debug, Args)]
pub struct ImportPartykitArgs {
    /// PartyKit's state folder (what `partykit dev --persist` wrote) [default: partykit.json's
    /// `persist` folder if it names one, else .partykit/state].
    pub dir: Option<PathBuf>,
    /// Read and check everything, print what would be imported, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Merge into rooms that already exist in Ripple (Yjs merges lose nothing) instead of
    /// skipping them.
    #[arg(long)]
    pub merge: bool,
    /// Print JSON lines instead of a table: {"party", "room", "status", "updates", "bytes",
    /// "roots", "detail", "source"}.
    #[arg(long)]
    pub json: bool,
    /// Instead of a state folder: a deployed PartyKit project (https://PROJECT.USER.partykit.dev)
    /// whose server answers GET /parties/PARTY/ROOM with the room's Yjs update (an onRequest
    /// export; see docs/migrating-from-partykit.md).
    #[arg(long, value_name = "URL", conflicts_with = "dir")]
    pub from_url: Option<String>,
    /// With --from-url: the rooms to fetch, one per line, PARTY/ROOM or ROOM (party main).
    #[arg(long, value_name = "FILE", requires = "from_url")]
    pub rooms: Option<PathBuf>,
    /// With --from-url: a header for every request, "NAME: VALUE" (e.g. an export token).
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "from_url")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub settings: StorageArgs,
}

// ---------------------------------------------------------------------------------------------
// The format: V8 values, y-partykit keys, folder names. Pure functions of bytes and strings.

/// LEB128 unsigned varint (V8's `WriteVarint`, lib0's `writeVarUint`: the same encoding), at most
/// `max_bytes` long. Advances `pos`.
fn read_varint(bytes: &[u8], pos: &mut usize, max_bytes: usize) -> Result<u64, String> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let byte = *bytes.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(format!("varint longer than {max_bytes} bytes"))
}

/// V8's tags as the structured-clone serializer writes a `Uint8Array`.
const V8_HEADER: u8 = 0xFF;
const V8_PADDING: u8 = 0x00;
const V8_ARRAY_BUFFER: u8 = b'B';
const V8_ARRAY_BUFFER_VIEW: u8 = b'V';
const V8_UINT8_ARRAY: u8 = b'B';

/// The bytes of a V8-serialized `Uint8Array`, as workerd stores Durable Object values:
/// `FF <version>` then `B <varint length> <bytes>` (the ArrayBuffer) then `V B <varint offset>
/// <varint length>` (the view; from version 14 on, a varint of flags follows). V8 may put
/// padding bytes (0x00) before a tag. Anything else, including any other JS value, trailing
/// bytes or a view reaching past its buffer, is an error: y-partykit only ever stores
/// `Uint8Array`s, so something else means this is not its data.
pub fn unwrap_v8(value: &[u8]) -> Result<&[u8], String> {
    let mut pos = 0;
    let tag = |pos: &mut usize| -> Result<u8, String> {
        while value.get(*pos) == Some(&V8_PADDING) {
            *pos += 1;
        }
        let t = *value.get(*pos).ok_or("truncated V8 value")?;
        *pos += 1;
        Ok(t)
    };
    if value.first() != Some(&V8_HEADER) {
        return Err("not a V8-serialized value (no FF header)".into());
    }
    pos += 1;
    let version = read_varint(value, &mut pos, 5)?;
    if !(13..=15).contains(&version) {
        return Err(format!(
            "V8 serialization version {version} (expected 13 to 15)"
        ));
    }
    let t = tag(&mut pos)?;
    if t != V8_ARRAY_BUFFER {
        return Err(format!(
            "the V8 value is not a Uint8Array (tag {t:#04x}, expected an ArrayBuffer)"
        ));
    }
    let len = usize::try_from(read_varint(value, &mut pos, 5)?).map_err(|e| e.to_string())?;
    let buffer = value
        .get(pos..)
        .and_then(|rest| rest.get(..len))
        .ok_or_else(|| format!("the V8 ArrayBuffer claims {len} bytes, more than stored"))?;
    pos += len;
    let t = tag(&mut pos)?;
    if t != V8_ARRAY_BUFFER_VIEW {
        return Err(format!(
            "the V8 ArrayBuffer is not wrapped in a view (tag {t:#04x})"
        ));
    }
    let sub = *value.get(pos).ok_or("truncated V8 view")?;
    pos += 1;
    if sub != V8_UINT8_ARRAY {
        return Err(format!(
            "the V8 view is not a Uint8Array (subtag {sub:#04x})"
        ));
    }
    let offset = usize::try_from(read_varint(value, &mut pos, 5)?).map_err(|e| e.to_string())?;
    let length = usize::try_from(read_varint(value, &mut pos, 5)?).map_err(|e| e.to_string())?;
    if version >= 14 {
        read_varint(value, &mut pos, 5)?; // flags (length-tracking, resizable): none matter here
    }
    if pos != value.len() {
        return Err(format!(
            "{} bytes after the V8 Uint8Array",
            value.len() - pos
        ));
    }
    offset
        .checked_add(length)
        .and_then(|end| buffer.get(offset..end))
        .ok_or_else(|| {
            format!("the Uint8Array view ({offset}+{length}) reaches past its {len}-byte buffer")
        })
}

/// A y-partykit storage key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `"v1"#"<room>"#"update"#<clock>#<chunk>`.
    Update {
        /// The room (y-partykit's document name: the room id).
        room: String,
        /// The update's position in the room's log.
        clock: u64,
        /// Which 128 KiB piece of the value this is.
        chunk: u32,
    },
    /// `"v1_sv"#"<room>"#<chunk>`.
    StateVector {
        /// The room.
        room: String,
        /// Which piece of the value.
        chunk: u32,
    },
}

const UPDATE_PREFIX: &str = "\"v1\"#\"";
const SV_PREFIX: &str = "\"v1_sv\"#\"";

/// Splits `rest` at its last `#` into (before, number after), the number being 1 to `max_digits`
/// ASCII digits.
fn split_number(rest: &str, max_digits: usize) -> Option<(&str, u64)> {
    let (before, digits) = rest.rsplit_once('#')?;
    if digits.is_empty() || digits.len() > max_digits || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((before, digits.parse().ok()?))
}

/// Parses a key of y-partykit's: `Ok(None)` for keys that are not (the app's own storage, say),
/// an error for a key that starts like one of y-partykit's but is not well-formed. Parts are
/// taken from both ends, so a room id containing `#` or `"` (y-partykit does not escape them)
/// still parses.
pub fn parse_key(key: &str) -> Result<Option<Key>, String> {
    let bad = || format!("malformed y-partykit key {key:?}");
    if let Some(rest) = key.strip_prefix(UPDATE_PREFIX) {
        let (rest, chunk) = split_number(rest, 9).ok_or_else(bad)?;
        // y-partykit pads clocks to 9 digits; its clocks go up to 2^32 (10 digits).
        let (rest, clock) = split_number(rest, 10).ok_or_else(bad)?;
        let room = rest.strip_suffix("\"#\"update\"").ok_or_else(bad)?;
        if room.is_empty() {
            return Err(bad());
        }
        let chunk = u32::try_from(chunk).map_err(|_| bad())?;
        return Ok(Some(Key::Update {
            room: room.to_owned(),
            clock,
            chunk,
        }));
    }
    if let Some(rest) = key.strip_prefix(SV_PREFIX) {
        let (rest, chunk) = split_number(rest, 9).ok_or_else(bad)?;
        let room = rest.strip_suffix('"').ok_or_else(bad)?;
        if room.is_empty() {
            return Err(bad());
        }
        let chunk = u32::try_from(chunk).map_err(|_| bad())?;
        return Ok(Some(Key::StateVector {
            room: room.to_owned(),
            chunk,
        }));
    }
    Ok(None)
}

/// The Ripple party of a folder under `DIR/party/`: miniflare names it `<worker>-<Class>`
/// (worker name empty in PartyKit dev); the main party's class is `PartyKitDurable`, the
/// class of each `parties` entry `<name>` is `<name>DO`. `None` for any other class.
pub fn party_of_folder(folder: &str) -> Option<String> {
    // Class names are JS identifiers (no `-`); the worker name may contain `-`.
    let class = folder.rsplit_once('-').map_or(folder, |(_, class)| class);
    if class == "PartyKitDurable" {
        return Some(ripple_core::DEFAULT_PARTY.to_owned());
    }
    class
        .strip_suffix("DO")
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// One file: what it holds, and each room's merged state.

/// What y-partykit stored for one room, as read (values still V8-wrapped, chunks apart).
#[derive(Debug, Default)]
struct RawRoom {
    /// clock -> chunk -> value.
    updates: BTreeMap<u64, BTreeMap<u32, Vec<u8>>>,
    /// chunk -> value.
    state_vector: BTreeMap<u32, Vec<u8>>,
}

/// The y-partykit rooms of one file.
#[derive(Debug, Default)]
struct FileRooms {
    rooms: BTreeMap<String, RawRoom>,
    /// Keys that are not y-partykit's (left alone).
    other_keys: usize,
}

/// A room's state, ready to store.
#[derive(Debug)]
pub struct MergedRoom {
    /// Updates found (after reassembling chunks).
    pub updates: usize,
    /// The whole document as one Yjs v1 update.
    pub state: Vec<u8>,
    /// Names of the root types.
    pub roots: Vec<String>,
    /// Things worth knowing that did not stop the import.
    pub warnings: Vec<String>,
}

/// Joins the chunks `0..n` of one value, unwrapping each; a gap is an error.
fn join_chunks(what: &str, chunks: &BTreeMap<u32, Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (expected, (chunk, value)) in chunks.iter().enumerate() {
        if u64::from(*chunk) != expected as u64 {
            return Err(format!("{what}: chunk {expected} is missing"));
        }
        let bytes = unwrap_v8(value).map_err(|e| format!("{what}, chunk {chunk}: {e}"))?;
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// Decodes y-partykit's state-vector value: varUint clock, varUint8Array of a Yjs state vector
/// (varUint count, then count pairs of varUint client, varUint clock). Returns the entries.
fn decode_stored_state_vector(bytes: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let mut pos = 0;
    read_varint(bytes, &mut pos, 10)?; // the update clock it was written at
    let len = usize::try_from(read_varint(bytes, &mut pos, 10)?).map_err(|e| e.to_string())?;
    let sv = bytes
        .get(pos..)
        .and_then(|rest| rest.get(..len))
        .ok_or("state vector longer than its value")?;
    if pos + len != bytes.len() {
        return Err("bytes after the state vector".into());
    }
    let mut p = 0;
    let count = read_varint(sv, &mut p, 10)?;
    // Each entry takes at least 2 bytes: a count beyond that is a lie, not an allocation.
    if count > (sv.len() as u64) / 2 {
        return Err(format!(
            "state vector claims {count} entries in {} bytes",
            sv.len()
        ));
    }
    let mut entries = Vec::new();
    for _ in 0..count {
        let client = read_varint(sv, &mut p, 10)?;
        let clock = read_varint(sv, &mut p, 10)?;
        entries.push((client, clock));
    }
    if p != sv.len() {
        return Err("bytes after the state vector's entries".into());
    }
    Ok(entries)
}

/// The merged document of `updates` (applied in order, in one transaction): its state as one
/// update, its root names, its state vector, and whether some updates wait for missing ones.
type Merged = (
    Vec<u8>,
    Vec<String>,
    std::collections::HashMap<u64, u32>,
    bool,
);

fn merge_updates(updates: Vec<yrs::Update>) -> Result<Merged, String> {
    // yrs has panicked on crafted updates (see fuzz/): a panic costs this room, not the run.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            for (i, update) in updates.into_iter().enumerate() {
                txn.apply_update(update)
                    .map_err(|e| format!("update #{i} does not apply: {e}"))?;
            }
        }
        let txn = doc.transact();
        let state = txn.encode_state_as_update_v1(&StateVector::default());
        let mut roots: Vec<String> = txn.root_refs().map(|(name, _)| name.to_owned()).collect();
        roots.sort();
        let have = txn
            .state_vector()
            .iter()
            .map(|(client, clock)| (client.get(), *clock))
            .collect();
        Ok((state, roots, have, txn.has_missing_updates()))
    }))
    .map_err(|_| "yrs panicked while merging the updates".to_owned())?
}

/// Reassembles, unwraps, decodes and merges one room's updates (in clock order, as y-partykit
/// loads them). Nothing here writes anything; any error means the room is skipped whole.
fn merge_room(raw: &RawRoom) -> Result<MergedRoom, String> {
    let mut updates = Vec::with_capacity(raw.updates.len());
    for (clock, chunks) in &raw.updates {
        let bytes = join_chunks(&format!("update {clock}"), chunks)?;
        let update = ripple_core::room::decode_untrusted(&bytes)
            .map_err(|e| format!("update {clock} is not a Yjs v1 update: {e}"))?;
        updates.push(update);
    }
    let mut warnings = Vec::new();
    let stored_sv = if raw.state_vector.is_empty() {
        None
    } else {
        let bytes = join_chunks("the state vector", &raw.state_vector)?;
        Some(
            decode_stored_state_vector(&bytes)
                .map_err(|e| format!("the stored state vector does not decode: {e}"))?,
        )
    };
    let count = updates.len();
    let merged = merge_updates(updates)?;
    let (state, roots, have, missing) = merged;
    if missing {
        warnings.push(
            "some updates wait for others that were never stored (kept as they are, as PartyKit \
             would)"
                .into(),
        );
    }
    if let Some(entries) = stored_sv {
        let behind = entries
            .iter()
            .filter(|(client, clock)| u64::from(*have.get(client).unwrap_or(&0)) < *clock)
            .count();
        if behind > 0 {
            warnings.push(format!(
                "the stored state vector names {behind} client(s) further ahead than the updates \
                 found (PartyKit lost those edits itself; imported what it would have loaded)"
            ));
        }
    }
    Ok(MergedRoom {
        updates: count,
        state,
        roots,
        warnings,
    })
}

/// Copies `db` (with its `-wal`) into `into` and returns the copy's path.
///
/// Why a copy: SQLite cannot read a WAL database without writing beside it (it builds the
/// wal-index in `-shm`), a read-write open would checkpoint and delete the WAL on close, and
/// `immutable=1` would ignore the WAL altogether — where a SIGKILLed PartyKit leaves its last
/// edits. So the main file and its WAL are copied (not the `-shm`: SQLite rebuilds the index
/// from the WAL, reading exactly the frames that were committed) and the copy is opened. The
/// originals are only ever read. Each file is copied until its size and modification time are
/// the same before and after, so a PartyKit still writing is noticed.
fn copy_store(db: &Path, into: &Path) -> Result<PathBuf, String> {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let copy = into.join("room.sqlite");
    let copy_wal = into.join("room.sqlite-wal");
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    for _ in 0..5 {
        let before = (stamp(db), stamp(&wal));
        std::fs::copy(db, &copy).map_err(|e| format!("copying: {e}"))?;
        let _ = std::fs::remove_file(&copy_wal);
        if wal.exists() {
            std::fs::copy(&wal, &copy_wal).map_err(|e| format!("copying its WAL: {e}"))?;
        }
        if (stamp(db), stamp(&wal)) == before {
            return Ok(copy);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("the file keeps changing while it is read: stop `partykit dev` first".into())
}

/// Reads the y-partykit keys of one workerd SQLite file (through a copy, see [`copy_store`]).
fn read_file(db: &Path) -> Result<FileRooms, String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let copy = copy_store(db, tmp.path())?;
    let conn = rusqlite::Connection::open_with_flags(
        &copy,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("not a SQLite database: {e}"))?;
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_cf_KV'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| format!("not a SQLite database: {e}"))?;
    if !has_table {
        return Err("not a Durable Object store (no _cf_KV table)".into());
    }
    let mut stmt = conn
        .prepare("SELECT key, value FROM _cf_KV ORDER BY key")
        .map_err(|e| format!("reading _cf_KV: {e}"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
        })
        .map_err(|e| format!("reading _cf_KV: {e}"))?;
    let mut out = FileRooms::default();
    for row in rows {
        let (key, value) = row.map_err(|e| format!("reading _cf_KV: {e}"))?;
        let Some(parsed) = parse_key(&key)? else {
            out.other_keys += 1;
            continue;
        };
        let value = value.unwrap_or_default();
        match parsed {
            Key::Update { room, clock, chunk } => {
                out.rooms
                    .entry(room)
                    .or_default()
                    .updates
                    .entry(clock)
                    .or_default()
                    .insert(chunk, value);
            }
            Key::StateVector { room, chunk } => {
                out.rooms
                    .entry(room)
                    .or_default()
                    .state_vector
                    .insert(chunk, value);
            }
        }
    }
    if out.rooms.is_empty() {
        return Err(format!(
            "not a y-partykit store: none of its {} keys is y-partykit's",
            out.other_keys
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The command.

/// How one room (or file) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Imported,
    Merged,
    WouldImport,
    WouldMerge,
    /// Already in Ripple (without --merge), or --merge found nothing new.
    Skipped,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Imported => "imported",
            Status::Merged => "merged",
            Status::WouldImport => "would-import",
            Status::WouldMerge => "would-merge",
            Status::Skipped => "skipped",
            Status::Error => "error",
        }
    }
}

/// One output line.
struct Line {
    status: Status,
    party: String,
    room: String,
    updates: usize,
    bytes: usize,
    roots: Vec<String>,
    detail: String,
    /// The file (or URL) the room came from.
    source: String,
}

struct Printer {
    json: bool,
    header_done: bool,
}

impl Printer {
    fn print(&mut self, line: &Line) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.json {
            let v = serde_json::json!({
                "status": line.status.as_str(),
                "party": line.party,
                "room": line.room,
                "updates": line.updates,
                "bytes": line.bytes,
                "roots": line.roots,
                "detail": line.detail,
                "source": line.source,
            });
            return writeln!(out, "{v}");
        }
        if !self.header_done {
            self.header_done = true;
            writeln!(
                out,
                "{:<12} {:<32} {:>8} {:>10}  ROOT TYPES",
                "STATUS", "ROOM", "UPDATES", "BYTES"
            )?;
        }
        let name = if line.room.is_empty() {
            line.source.clone()
        } else {
            format!("{}/{}", line.party, line.room)
        };
        let mut text = format!(
            "{:<12} {:<32} {:>8} {:>10}  {}",
            line.status.as_str(),
            name,
            line.updates,
            line.bytes,
            line.roots.join(", ")
        );
        if !line.detail.is_empty() {
            text.push_str(if line.roots.is_empty() { "(" } else { " (" });
            text.push_str(&line.detail);
            text.push(')');
        }
        writeln!(out, "{}", text.trim_end())
    }
}

/// Every `*.sqlite` under `DIR/party/*/`, with the party its folder maps to.
fn find_files(dir: &Path) -> anyhow::Result<Vec<(Result<String, String>, PathBuf)>> {
    let party_dir = dir.join("party");
    if !party_dir.is_dir() {
        let hint = if dir.join("state").join("party").is_dir() {
            format!(" (did you mean {}?)", dir.join("state").display())
        } else {
            String::new()
        };
        bail!(
            "{} holds no PartyKit Durable Object state: expected {}/-PartyKitDurable/*.sqlite{hint}",
            dir.display(),
            party_dir.display()
        );
    }
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&party_dir)
        .with_context(|| format!("reading {}", party_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let mut files = Vec::new();
    for folder in folders {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let party = party_of_folder(&name).ok_or_else(|| {
            format!(
                "folder {name:?} is not a PartyKit party (expected -PartyKitDurable or -<party>DO)"
            )
        });
        let mut dbs: Vec<PathBuf> = std::fs::read_dir(&folder)
            .with_context(|| format!("reading {}", folder.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sqlite"))
            .collect();
        dbs.sort();
        for db in dbs {
            files.push((party.clone(), db));
        }
    }
    Ok(files)
}

/// The storage to import into: created if missing (a migration starts from nothing), with the
/// data directory's lock held as `ripple import` holds it. For a dry run, only what exists, read
/// only (`None` when there is no storage yet).
async fn open_target(
    config: &ripple_server::Config,
    dry_run: bool,
) -> anyhow::Result<(Option<Backend>, Option<ripple_store::DataDirLock>)> {
    let embedded = ripple_store::is_embedded(&config.storage);
    if config.storage.trim() == "memory" {
        bail!("storage is \"memory\": an import into it would vanish with this process");
    }
    if dry_run {
        if embedded && !config.data_dir.join(ripple_store::sqlite::DB_FILE).exists() {
            return Ok((None, None));
        }
        let backend = Backend::open_existing(&config.storage, &config.data_dir, Durability::Strict)
            .await
            .context("opening storage")?;
        return Ok((Some(backend), None));
    }
    // Locked before opening: no server can start on the directory mid-import.
    let lock = if embedded {
        Some(ripple_store::DataDirLock::acquire(&config.data_dir, true)?)
    } else {
        None
    };
    let backend = Backend::open(&config.storage, &config.data_dir, Durability::Strict)
        .await
        .context("opening storage")?;
    Ok((Some(backend), lock))
}

/// How long this command's lease on a room lasts (released when the room is done).
const LEASE_TTL: Duration = Duration::from_secs(60);

/// Writes one merged room: appends the imported state and folds the room (what was there, if
/// anything, plus the import) into its snapshot. On a shared store (Postgres) the room's lease
/// is taken first, as a node takes it, so nothing is written beside a live owner and nobody
/// appends between the load and the compaction. Returns the status, or an error message.
async fn store_room(
    store: &dyn Store,
    key: &RoomKey,
    merged: &MergedRoom,
    merge: bool,
    dry_run: bool,
) -> Result<(Status, String), String> {
    let epoch = if store.shared() && !dry_run {
        let owner = format!("ripple-import-partykit-{}", std::process::id());
        match store.acquire(key, &owner, LEASE_TTL).await {
            Ok(grant) => grant.epoch,
            Err(ripple_core::StoreError::Lease(e)) => {
                return Err(format!(
                    "{e}; a running node serves this room: try when it is idle"
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    } else {
        0
    };
    let result = store_leased(store, key, merged, merge, dry_run, epoch).await;
    if epoch != 0 {
        let _ = store.release(key, epoch).await;
    }
    result
}

async fn store_leased(
    store: &dyn Store,
    key: &RoomKey,
    merged: &MergedRoom,
    merge: bool,
    dry_run: bool,
    epoch: u64,
) -> Result<(Status, String), String> {
    let existing = store.load(key).await.map_err(|e| e.to_string())?;
    let snapshot: Vec<u8> = if existing.is_empty() {
        if dry_run {
            return Ok((Status::WouldImport, String::new()));
        }
        merged.state.clone()
    } else {
        if !merge {
            return Ok((
                Status::Skipped,
                "already in Ripple; --merge merges into it".into(),
            ));
        }
        let imported = ripple_core::room::decode_untrusted(&merged.state)?;
        let combined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let room = ripple_core::room::Room::load(&existing, 0).map_err(|e| e.to_string())?;
            let doc = room.doc();
            let before = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            doc.transact_mut()
                .apply_update(imported)
                .map_err(|e| e.to_string())?;
            let after = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            Ok::<_, String>((before != after).then_some(after))
        }))
        .map_err(|_| "yrs panicked while merging into the stored room".to_owned())??;
        match combined {
            None => {
                return Ok((
                    Status::Skipped,
                    "already in Ripple, nothing new to merge".into(),
                ))
            }
            Some(_) if dry_run => return Ok((Status::WouldMerge, String::new())),
            Some(after) => after,
        }
    };
    let seq = store
        .append(key, epoch, vec![Bytes::from(merged.state.clone())])
        .await
        .map_err(|e| e.to_string())?;
    // The room is complete from here on (its log holds the import); the fold only makes it one
    // snapshot, as the server's compaction would.
    store
        .compact(key, epoch, Bytes::from(snapshot), seq)
        .await
        .map_err(|e| format!("imported as update {seq}, but folding it failed: {e}"))?;
    Ok((
        if existing.is_empty() {
            Status::Imported
        } else {
            Status::Merged
        },
        String::new(),
    ))
}

/// Where the rooms come from, and the counts of what happened to them.
struct Run {
    store: Option<std::sync::Arc<dyn Store>>,
    max_len: usize,
    /// The server's `max_doc_bytes`: a larger room is imported, with a warning.
    max_doc_bytes: u64,
    merge: bool,
    dry_run: bool,
    printer: Printer,
    counts: BTreeMap<&'static str, usize>,
}

impl Run {
    fn emit(&mut self, line: &Line) -> anyhow::Result<()> {
        *self.counts.entry(line.status.as_str()).or_default() += 1;
        self.printer.print(line)?;
        Ok(())
    }

    fn errors(&self) -> usize {
        self.counts
            .get(Status::Error.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Imports one room whose data was read (`merged`, or why it could not be), and prints its
    /// line. `found` is the number of updates found, for the line when merging failed.
    async fn room(
        &mut self,
        party: &str,
        room: &str,
        found: usize,
        merged: Result<MergedRoom, String>,
        source: &str,
    ) -> anyhow::Result<()> {
        let mut line = Line {
            status: Status::Error,
            party: party.to_owned(),
            room: room.to_owned(),
            updates: found,
            bytes: 0,
            roots: Vec::new(),
            detail: String::new(),
            source: source.to_owned(),
        };
        let key = match RoomKey::new(party, room, self.max_len) {
            Ok(k) => k,
            Err(e) => {
                line.detail = format!("not a Ripple room id: {e}");
                return self.emit(&line);
            }
        };
        let merged = match merged {
            Ok(m) => m,
            Err(e) => {
                line.detail = e;
                return self.emit(&line);
            }
        };
        line.updates = merged.updates;
        line.bytes = merged.state.len();
        line.roots = merged.roots.clone();
        let mut notes = merged.warnings.clone();
        if merged.state.len() as u64 > self.max_doc_bytes {
            notes.push(format!(
                "larger than max_doc_bytes ({}): clients can read it, but edits that grow it are \
                 refused until max_doc_bytes is raised",
                self.max_doc_bytes
            ));
        }
        match &self.store {
            None => line.status = Status::WouldImport,
            Some(store) => {
                match store_room(store.as_ref(), &key, &merged, self.merge, self.dry_run).await {
                    Ok((status, detail)) => {
                        line.status = status;
                        if !detail.is_empty() {
                            notes.insert(0, detail);
                        }
                    }
                    Err(e) => {
                        line.status = Status::Error;
                        notes.insert(0, e);
                    }
                }
            }
        }
        line.detail = notes.join("; ");
        self.emit(&line)
    }

    /// A line for a whole file (or URL) that yielded no room.
    fn failed(&mut self, source: &str, detail: String) -> anyhow::Result<()> {
        self.emit(&Line {
            status: Status::Error,
            party: String::new(),
            room: String::new(),
            updates: 0,
            bytes: 0,
            roots: Vec::new(),
            detail,
            source: source.to_owned(),
        })
    }
}

/// Runs `ripple import-partykit`. Returns whether everything found was imported or deliberately
/// skipped (false: something was skipped because of an error).
pub async fn run(args: ImportPartykitArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    // Everything that can fail before a room is looked at fails here, before storage opens.
    let from_url = match &args.from_url {
        Some(url) => Some(remote::Source::new(
            url,
            args.rooms.as_deref(),
            &args.headers,
        )?),
        None => None,
    };
    let files = match from_url {
        Some(_) => Vec::new(),
        None => {
            let dir = match &args.dir {
                Some(dir) => dir.clone(),
                None => match crate::partykit_json::read(Path::new(".")) {
                    Some(Ok(crate::partykit_json::Adopted {
                        persist_dir: Some(dir),
                        ..
                    })) => PathBuf::from(dir),
                    _ => PathBuf::from(crate::partykit_json::DEFAULT_STATE_DIR),
                },
            };
            find_files(&dir)?
        }
    };
    let config = settings::load_storage(&args.settings)?;
    let (backend, _lock) = open_target(&config, args.dry_run).await?;
    let max_doc_bytes = config.max_doc_bytes;
    let mut run = Run {
        store: backend.as_ref().map(Backend::store),
        max_len: config.max_room_id_len,
        max_doc_bytes,
        merge: args.merge,
        dry_run: args.dry_run,
        printer: Printer {
            json: args.json,
            header_done: false,
        },
        counts: BTreeMap::new(),
    };
    if let Some(source) = from_url {
        for (party, room) in source.rooms.clone() {
            let url = source.room_url(&party, &room);
            let merged = source.fetch(&url, max_doc_bytes).await;
            run.room(&party, &room, 1, merged, &url).await?;
        }
    }
    for (party, file) in files {
        let source = file.display().to_string();
        let party = match party {
            Ok(p) => p,
            Err(e) => {
                run.failed(&source, e)?;
                continue;
            }
        };
        let path = file.clone();
        let read = tokio::task::spawn_blocking(move || read_file(&path))
            .await
            .context("reading a file")?;
        match read {
            Ok(contents) => {
                for (room, raw) in &contents.rooms {
                    run.room(&party, room, raw.updates.len(), merge_room(raw), &source)
                        .await?;
                }
            }
            Err(e) => run.failed(&source, e)?,
        }
    }
    let summary: Vec<String> = run.counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let summary = if summary.is_empty() {
        "no rooms found".to_owned()
    } else {
        summary.join(", ")
    };
    eprintln!(
        "{summary} in {:.2} s{}",
        started.elapsed().as_secs_f64(),
        if args.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    Ok(run.errors() == 0)
}

/// `--from-url`: rooms of a deployed PartyKit project, fetched one by one from an export route
/// added to its server (`onRequest` answering `Y.encodeStateAsUpdate`; see
/// docs/migrating-from-partykit.md).
mod remote {
    use std::path::Path;
    use std::time::Duration;

    use anyhow::{bail, Context};

    use super::MergedRoom;

    /// The project and the rooms to fetch.
    pub(super) struct Source {
        base: String,
        client: reqwest::Client,
        headers: reqwest::header::HeaderMap,
        pub(super) rooms: Vec<(String, String)>,
    }

    /// Bound on one fetch.
    const TIMEOUT: Duration = Duration::from_secs(60);

    impl Source {
        pub(super) fn new(
            url: &str,
            rooms: Option<&Path>,
            headers: &[String],
        ) -> anyhow::Result<Self> {
            let parsed = reqwest::Url::parse(url).with_context(|| format!("--from-url {url:?}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("--from-url must be an http(s) URL");
            }
            let Some(list) = rooms else {
                bail!("--from-url needs --rooms FILE: PartyKit cannot list a project's rooms");
            };
            let text = std::fs::read_to_string(list)
                .with_context(|| format!("reading {}", list.display()))?;
            let mut rooms = Vec::new();
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (party, room) = line
                    .split_once('/')
                    .unwrap_or((ripple_core::DEFAULT_PARTY, line));
                rooms.push((party.to_owned(), room.to_owned()));
            }
            let mut map = reqwest::header::HeaderMap::new();
            for h in headers {
                let (name, value) = h
                    .split_once(':')
                    .with_context(|| format!("--header wants NAME: VALUE, got {h:?}"))?;
                let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                    .with_context(|| format!("--header name {name:?}"))?;
                let value = reqwest::header::HeaderValue::from_str(value.trim())
                    .context("--header value")?;
                map.append(name, value);
            }
            let client = reqwest::Client::builder()
                .timeout(TIMEOUT)
                .user_agent(concat!(
                    "ripple-import-partykit/",
                    env!("CARGO_PKG_VERSION")
                ))
                .build()
                .context("building the HTTP client")?;
            Ok(Self {
                base: url.trim_end_matches('/').to_owned(),
                client,
                headers: map,
                rooms,
            })
        }

        /// Where PartyKit serves `party`/`room` (the room id is used as written: it is the raw
        /// path segment, as clients send it).
        pub(super) fn room_url(&self, party: &str, room: &str) -> String {
            format!("{}/parties/{party}/{room}", self.base)
        }

        /// GETs one room's state and merges it, refusing more than `limit` bytes.
        pub(super) async fn fetch(&self, url: &str, limit: u64) -> Result<MergedRoom, String> {
            let mut resp = self
                .client
                .get(url)
                .headers(self.headers.clone())
                .send()
                .await
                .map_err(|e| format!("fetching: {}", e.without_url()))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!(
                    "the server answered {status} (does its onRequest export the room?)"
                ));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("reading: {}", e.without_url()))?
            {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(format!("larger than max_doc_bytes ({limit} bytes)"));
                }
                body.extend_from_slice(&chunk);
            }
            let update = ripple_core::room::decode_untrusted(&body)
                .map_err(|e| format!("the answer is not a Yjs v1 update: {e}"))?;
            let (state, roots, _, missing) = super::merge_updates(vec![update])?;
            let mut warnings = Vec::new();
            if missing {
                warnings.push("the update waits for missing ones (kept as it is)".to_owned());
            }
            Ok(MergedRoom {
                updates: 1,
                state,
                roots,
                warnings,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Uint8Array` the way V8 (version 15) serializes it.
    fn v8(bytes: &[u8]) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, mut v: usize) {
            while v >= 0x80 {
                out.push((v as u8 & 0x7f) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut out = vec![0xFF, 0x0F, b'B'];
        varint(&mut out, bytes.len());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"VB");
        varint(&mut out, 0);
        varint(&mut out, bytes.len());
        varint(&mut out, 0);
        out
    }

    #[test]
    fn v8_uint8_arrays_unwrap_and_nothing_else_does() {
        let big = vec![7u8; 200_000];
        assert_eq!(unwrap_v8(&v8(b"hello")).ok(), Some(&b"hello"[..]));
        assert_eq!(unwrap_v8(&v8(&big)).ok(), Some(&big[..]));
        assert_eq!(unwrap_v8(&v8(b"")).ok(), Some(&b""[..]));
        // A view into part of its buffer yields that part.
        let sub = [0xFF, 0x0F, b'B', 4, 1, 2, 3, 4, b'V', b'B', 1, 2, 0];
        assert_eq!(unwrap_v8(&sub).ok(), Some(&[2u8, 3][..]));
        // Version 13 has no flags varint.
        let old = [0xFF, 0x0D, b'B', 2, 9, 8, b'V', b'B', 0, 2];
        assert_eq!(unwrap_v8(&old).ok(), Some(&[9u8, 8][..]));
        let mut trailing = v8(b"x");
        trailing.push(1);
        let mut short = v8(b"hello");
        short.truncate(6);
        let past = [0xFF, 0x0F, b'B', 2, 1, 2, b'V', b'B', 1, 2, 0];
        let string = [0xFF, 0x0F, b'"', 2, b'h', b'i'];
        let int16 = [0xFF, 0x0F, b'B', 2, 1, 2, b'V', b'w', 0, 2, 0];
        for bad in [
            &trailing[..],
            &short[..],
            &past[..],
            &string[..],
            &int16[..],
            b"",
            b"\x00\x0f",
            &[0xFF, 0x0F, b'B', 0xFF, 0xFF, 0xFF, 0xFF, 0x0F][..],
            &[0xFF, 0x0F, b'B', 0x80, 0x80, 0x80, 0x80, 0x80, 0x01][..],
        ] {
            assert!(unwrap_v8(bad).is_err(), "{bad:?} unwrapped");
        }
    }

    #[test]
    fn y_partykit_keys_parse_from_both_ends() {
        assert_eq!(
            parse_key(r##""v1"#"doc-1"#"update"#000000007#000"##),
            Ok(Some(Key::Update {
                room: "doc-1".into(),
                clock: 7,
                chunk: 0
            }))
        );
        assert_eq!(
            parse_key(r##""v1"#"a#"b"#"update"#4294967295#12"##),
            Ok(Some(Key::Update {
                room: "a#\"b".into(),
                clock: 4_294_967_295,
                chunk: 12
            }))
        );
        assert_eq!(
            parse_key(r##""v1_sv"#"doc-1"#001"##),
            Ok(Some(Key::StateVector {
                room: "doc-1".into(),
                chunk: 1
            }))
        );
        assert_eq!(parse_key("counter"), Ok(None));
        assert_eq!(parse_key(r##""v2"#"x"#000"##), Ok(None));
        for bad in [
            r##""v1"#"doc"#"update"#000000007"##,
            r##""v1"#"doc"#"update"#0000000x7#000"##,
            r##""v1"#"doc"#"meta"#000000007#000"##,
            r##""v1"#""#"update"#000000007#000"##,
            r##""v1_sv"#"doc"#"##,
            r##""v1_sv"#"doc#000"##,
        ] {
            assert!(parse_key(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn folders_map_to_parties() {
        assert_eq!(party_of_folder("-PartyKitDurable").as_deref(), Some("main"));
        assert_eq!(party_of_folder("-diagramsDO").as_deref(), Some("diagrams"));
        assert_eq!(party_of_folder("my-app-chatDO").as_deref(), Some("chat"));
        assert_eq!(party_of_folder("-DO"), None);
        assert_eq!(party_of_folder("-SomethingElse"), None);
    }

    #[test]
    fn chunks_join_in_order_and_gaps_are_errors() {
        let mut chunks = BTreeMap::new();
        chunks.insert(0, v8(b"ab"));
        chunks.insert(1, v8(b"cd"));
        assert_eq!(join_chunks("u", &chunks).ok(), Some(b"abcd".to_vec()));
        chunks.insert(3, v8(b"ef"));
        assert!(join_chunks("u", &chunks).is_err());
    }
}
