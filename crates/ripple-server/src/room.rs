//! The room actor: one task per loaded room owns its [`Room`] (document and awareness) and the
//! outboxes of its connections. Connections talk to it only through its bounded inbox.
//!
//! Each turn the actor takes every message waiting in its inbox (up to a batch limit), applies
//! them in order, appends all resulting document updates to storage in one call and waits for
//! that to be durable, and only then sends anything: replies, broadcasts, greetings. So an
//! update another client has seen is always on disk (in strict durability), and many updates
//! share one commit.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ripple_core::lease::{Due, Epoch, Holder, LeaseError};
use ripple_core::room::{fold, Access, Room, RoomError};
use ripple_core::{RoomKey, Store, StoreError, StoredRoom};
use ripple_proto::{Message, SyncMessage};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::closer::code;
use crate::config::{Config, PersistMode};
use crate::member::{heard_by, Close, Framing, Member, MemberId, Out, SinkInfo};
use crate::peer::{send_all, Delivery, OutFrame};
use crate::stats::{inc, Stats};

/// Most inbox messages handled in one turn (one storage commit).
const MAX_BATCH: usize = 512;

/// Why a join was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("room is full ({0} connections)")]
    RoomFull(usize),
    #[error("server holds the maximum of {0} rooms")]
    TooManyRooms(usize),
    #[error("room failed to load: {0}")]
    LoadFailed(String),
    /// Another node holds the room's lease (no forwarding yet: the client reconnects, and a
    /// load balancer that hashes by room path sends it to the owner).
    #[error("room is served by another node ({0}); reconnect")]
    OwnedElsewhere(String),
    #[error("server is shutting down")]
    ShuttingDown,
    /// The load hook failed for a room with nothing stored: nothing was stored; try again.
    #[error("{0}; reconnect")]
    SeedFailed(String),
}

impl JoinError {
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            JoinError::RoomFull(_)
            | JoinError::TooManyRooms(_)
            | JoinError::OwnedElsewhere(_)
            | JoinError::SeedFailed(_) => code::TRY_AGAIN_LATER,
            JoinError::LoadFailed(_) => code::INTERNAL_ERROR,
            JoinError::ShuttingDown => code::GOING_AWAY,
        }
    }
}

/// A message to a room actor.
#[derive(Debug)]
pub(crate) enum RoomMsg {
    /// A member joins (it gets the greeting in this turn's output).
    Join {
        member: Member,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// A message from a member.
    Frame { conn: MemberId, msg: Message },
    /// A member leaves.
    Leave { conn: MemberId },
    /// A request without a socket (the HTTP API, the inspector): a member for one turn.
    Request(Request),
}

/// What a room answers without a socket. Each is handled in the room's turn like a member's
/// message: an `Apply` or `Edit` takes the same path as a client's update (applied, appended
/// with the turn, then broadcast), and its reply is sent only after the append is durable.
pub(crate) enum Request {
    /// Apply a Yjs v1 update as `user`.
    Apply {
        update: Bytes,
        user: Option<Arc<str>>,
        reply: oneshot::Sender<Result<Applied, RequestError>>,
    },
    /// Run a server-side edit as one transaction (see `Room::edit`).
    Edit {
        edit: Edit,
        reply: oneshot::Sender<Result<Applied, RequestError>>,
    },
    /// The document as one update, or only what the state vector `sv` lacks.
    State {
        sv: Option<Bytes>,
        reply: oneshot::Sender<Result<Bytes, RequestError>>,
    },
    /// What the room holds and who is in it.
    Inspect {
        reply: oneshot::Sender<Result<RoomView, RequestError>>,
    },
    /// Ends the memberships of `user` (every member when `None`) with `close`; replies with
    /// how many were ended.
    Close {
        user: Option<String>,
        close: Close,
        reply: oneshot::Sender<Result<usize, RequestError>>,
    },
    /// Folds the log into the snapshot now (awaited).
    Compact {
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// Ends every membership with `close`, deletes the stored state, and unloads the room.
    Delete {
        close: Close,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
}

impl Request {
    /// Answers the request with `err` (the room could not load or is going away).
    pub(crate) fn refuse(self, err: &JoinError) {
        let e = match err {
            JoinError::OwnedElsewhere(owner) => RequestError::OwnedElsewhere(owner.clone()),
            _ => RequestError::Unavailable(err.to_string()),
        };
        match self {
            Request::Apply { reply, .. } | Request::Edit { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Request::State { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Request::Inspect { reply } => {
                let _ = reply.send(Err(e));
            }
            Request::Close { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Request::Compact { reply } | Request::Delete { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Request::Apply { .. } => "Apply",
            Request::Edit { .. } => "Edit",
            Request::State { .. } => "State",
            Request::Inspect { .. } => "Inspect",
            Request::Close { .. } => "Close",
            Request::Compact { .. } => "Compact",
            Request::Delete { .. } => "Delete",
        };
        f.write_str(name)
    }
}

/// A server-side edit: runs in one transaction; an `Err` commits nothing (see `Room::edit`).
pub(crate) type Edit = Box<dyn FnOnce(&mut yrs::TransactionMut<'_>) -> Result<(), String> + Send>;

/// A request's update was handled: durable (when the room persists) before this is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Applied {
    /// The last sequence number stored for the room once this update was (unchanged when the
    /// update changed nothing, and 0 without persistence).
    pub(crate) seq: u64,
    /// Whether it changed the document (an update the room already had changes nothing and
    /// is neither stored nor relayed).
    pub(crate) changed: bool,
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RequestError {
    /// The input does not decode or does not fit the document (400).
    #[error("{0}")]
    BadInput(String),
    /// The document would pass `max_doc_bytes` (413).
    #[error("{0}")]
    TooLarge(String),
    /// Storage failed, or the room is unloading or moved (503).
    #[error("{0}")]
    Unavailable(String),
    /// Another node owns the room (named here): the HTTP API forwards the request there.
    #[error("room is served by another node ({0})")]
    OwnedElsewhere(String),
}

impl RequestError {
    fn of(e: &RoomError) -> Self {
        match e {
            RoomError::DocTooLarge { .. } => RequestError::TooLarge(e.to_string()),
            RoomError::Panicked(_) => RequestError::Unavailable(e.to_string()),
            _ => RequestError::BadInput(e.to_string()),
        }
    }
}

/// A room as the inspector and the HTTP API see it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RoomView {
    pub(crate) party: String,
    pub(crate) room: String,
    pub(crate) members: Vec<MemberView>,
    /// Awareness states: client id, clock, and the state as JSON text.
    pub(crate) awareness: Vec<AwarenessView>,
    /// The document's encoded size in bytes.
    pub(crate) doc_bytes: u64,
    /// The last stored sequence number.
    pub(crate) seq: u64,
    /// Updates in the stored log after the snapshot, and their bytes.
    pub(crate) log_updates: u64,
    pub(crate) log_bytes: u64,
    /// The last document updates (newest last), at most [`RECENT_UPDATES`].
    pub(crate) recent: Vec<RecentUpdate>,
}

/// One member, for inspection.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct MemberView {
    pub(crate) id: MemberId,
    pub(crate) user: Option<String>,
    pub(crate) access: &'static str,
    /// Unix milliseconds.
    pub(crate) since_ms: u64,
    #[serde(flatten)]
    pub(crate) sink: SinkInfo,
}

/// One awareness state, for inspection.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct AwarenessView {
    pub(crate) client: u64,
    pub(crate) clock: u64,
    /// The state as the client set it (JSON text).
    pub(crate) state: String,
}

/// A recent document update, for inspection.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RecentUpdate {
    pub(crate) bytes: u64,
    /// The member that sent it (`None`: a request without a socket).
    pub(crate) member: Option<MemberId>,
    /// Unix milliseconds.
    pub(crate) at_ms: u64,
}

/// How many recent updates a room remembers for inspection.
pub(crate) const RECENT_UPDATES: usize = 32;

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything a room actor needs from the server.
pub(crate) struct RoomEnv {
    pub(crate) config: Arc<Config>,
    /// This node's id in room leases.
    pub(crate) node_id: Arc<str>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: CancellationToken,
    /// The app's webhooks (the load hook seeds rooms with nothing stored).
    pub(crate) hooks: Arc<crate::hooks::Hooks>,
    /// This node's links to other nodes, when it is part of a cluster (a shared store and a
    /// cluster secret): rooms owned elsewhere are then forwarded, not refused.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// What handling one message left to do.
enum Handled {
    /// Nothing more.
    Done,
    /// This document update must be persisted.
    Update(Bytes),
    /// The CRDT library panicked: the document must be rebuilt before the next message.
    Poisoned,
}

/// Where a frame goes when the turn's output is flushed.
enum Target {
    One(MemberId),
    AllBut(MemberId),
    All,
}

/// What waits for this turn's append: a request's reply, sent once the turn's updates are
/// durable (or refused if they are not).
enum Waiting {
    Applied {
        reply: oneshot::Sender<Result<Applied, RequestError>>,
        changed: bool,
    },
    Compact(oneshot::Sender<Result<(), RequestError>>),
    Delete(Close, oneshot::Sender<Result<(), RequestError>>),
}

impl Waiting {
    /// The turn's append failed (or the room is going): nothing was stored.
    fn refuse(self, why: &str) {
        let err = RequestError::Unavailable(why.to_owned());
        match self {
            Waiting::Applied { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Waiting::Compact(reply) | Waiting::Delete(_, reply) => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

struct Actor {
    key: RoomKey,
    env: Arc<RoomEnv>,
    persist: PersistMode,
    room: Room,
    conns: HashMap<MemberId, Member>,
    /// `conns.len()`, published for listings.
    members: Arc<std::sync::atomic::AtomicUsize>,
    /// Last sequence number stored for this room.
    last_seq: u64,
    /// The stored log after the snapshot: `(seq, bytes)` per update, oldest first.
    log: VecDeque<(u64, u64)>,
    /// Sum of the sizes in `log`.
    log_bytes: u64,
    /// A compaction running in the background, if any.
    compaction: Option<tokio::task::JoinHandle<()>>,
    /// The room's lease, when it is persisted: every write carries its epoch.
    lease: Option<Holder>,
    out: Vec<(Target, Out)>,
    /// Replies that wait for this turn's append.
    waiting: Vec<Waiting>,
    /// The last document updates, for inspection.
    recent: VecDeque<RecentUpdate>,
    /// Set by a `Delete` request: the room unloads after this turn.
    deleted: bool,
    /// The next ping round (and idle check), or the next token expiry if sooner.
    tick: Pin<Box<Sleep>>,
    next_ping: Instant,
    /// Shutdown was seen: connections were told to go, joins are refused.
    shutting_down: bool,
}

impl Drop for Actor {
    /// However the actor ends (a panic included), its connections are not left hanging: each
    /// is closed (a no-op for those already closing) and reconnects to a fresh actor.
    fn drop(&mut self) {
        for c in self.conns.values() {
            c.sink
                .close(Close::new(code::INTERNAL_ERROR, "room closed unexpectedly"));
        }
        for w in self.waiting.drain(..) {
            w.refuse("room closed unexpectedly");
        }
    }
}

/// Runs a room until it has been empty for the linger time (or the server shuts down and it
/// empties), or its storage fails.
pub(crate) async fn run(
    key: RoomKey,
    env: Arc<RoomEnv>,
    mut inbox: mpsc::Receiver<RoomMsg>,
    members: Arc<std::sync::atomic::AtomicUsize>,
) {
    let persist = env.config.persist_for(key.party());
    let mut loaded = load(&key, &env, persist).await;
    if let (Err(JoinError::OwnedElsewhere(owner)), Some(_)) = (&loaded, &env.cluster) {
        inc(&env.stats.owned_elsewhere);
        let owner = owner.clone();
        let end =
            crate::cluster::proxy(key.clone(), owner, env.clone(), &mut inbox, members.clone())
                .await;
        if end != crate::cluster::ProxyEnd::OwnerDead {
            return;
        }
        // The owner died and its leases were ended: take the room (once).
        loaded = load(&key, &env, persist).await;
        if loaded.is_ok() {
            inc(&env.stats.failovers);
        }
        if let Err(JoinError::OwnedElsewhere(owner)) = &loaded {
            let owner = owner.clone();
            crate::cluster::proxy(key, owner, env, &mut inbox, members).await;
            return;
        }
    }
    let (room, stored_seq, log, lease) = match loaded {
        Ok(v) => v,
        Err(err) => {
            if let JoinError::OwnedElsewhere(owner) = &err {
                inc(&env.stats.owned_elsewhere);
                info!(room = %key, %owner, "room is owned by another node; refusing its connections (no cluster secret: no forwarding)");
            } else {
                inc(&env.stats.room_load_failures);
                error!(room = %key, reason = %err, "room failed to load; refusing its connections");
            }
            // Stay a while to answer joins with the reason (and to keep reconnecting clients
            // from turning into a reload storm), then retire. A fixed deadline: clients that
            // keep retrying must not keep a refusal alive after the cause went away (for a
            // room owned elsewhere, about a second).
            let linger = match err {
                JoinError::OwnedElsewhere(_) | JoinError::SeedFailed(_) => Duration::from_secs(1),
                _ => env.config.room_linger().max(Duration::from_secs(1)),
            };
            linger_refusing(&mut inbox, err, linger).await;
            return;
        }
    };
    inc(&env.stats.rooms_loaded);
    debug!(room = %key, seq = stored_seq, "room loaded");
    let mut actor = Actor {
        key,
        env,
        persist,
        room,
        conns: HashMap::new(),
        members,
        last_seq: stored_seq,
        log_bytes: log.iter().map(|(_, len)| len).sum(),
        log,
        compaction: None,
        lease,
        out: Vec::new(),
        waiting: Vec::new(),
        recent: VecDeque::new(),
        deleted: false,
        tick: Box::pin(tokio::time::sleep(Duration::ZERO)),
        next_ping: Instant::now(),
        shutting_down: false,
    };
    actor.schedule_ping();
    // Schedules the first renewal (the lease was granted just now).
    if !actor.lease_tick().await {
        actor.unload_lost(&mut inbox).await;
        return;
    }
    actor.run(&mut inbox).await;
}

type Loaded = (Room, u64, VecDeque<(u64, u64)>, Option<Holder>);

/// Takes the room's lease (another node may own it), then loads what is stored. The lease comes
/// first: once it is granted, no other node can append, so the load sees every stored update.
async fn load(key: &RoomKey, env: &RoomEnv, persist: PersistMode) -> Result<Loaded, JoinError> {
    let max_aw = env.config.max_awareness_per_conn;
    let max_doc = env.config.max_doc_bytes;
    if persist == PersistMode::None {
        return Ok((
            Room::new(max_aw).with_max_doc_bytes(max_doc),
            0,
            VecDeque::new(),
            None,
        ));
    }
    if !env.store.shared() {
        // One process owns this storage: no lease to take or renew (epoch 0).
        let (room, seq, log) = load_stored(key, env, 0, max_aw, max_doc).await?;
        return Ok((room, seq, log, None));
    }
    let times = env.config.lease_times();
    let sent = Instant::now().into_std();
    let lease = match env.store.acquire(key, &env.node_id, times.ttl).await {
        Ok(grant) => {
            inc(&env.stats.rooms_owned);
            Holder::granted(&grant, sent, times)
        }
        Err(StoreError::Lease(LeaseError::Held { owner, .. })) => {
            return Err(JoinError::OwnedElsewhere(owner))
        }
        Err(e) => {
            // This node cannot take leases now: it cannot own rooms (`/readyz` says so).
            env.stats.append_failed();
            return Err(JoinError::LoadFailed(e.to_string()));
        }
    };
    let loaded = load_stored(key, env, lease.epoch, max_aw, max_doc).await;
    if loaded.is_err() {
        crate::stats::dec(&env.stats.rooms_owned);
        let _ = env.store.release(key, lease.epoch).await;
    }
    let (room, seq, log) = loaded?;
    Ok((room, seq, log, Some(lease)))
}

async fn load_stored(
    key: &RoomKey,
    env: &RoomEnv,
    epoch: Epoch,
    max_aw: usize,
    max_doc: u64,
) -> Result<(Room, u64, VecDeque<(u64, u64)>), JoinError> {
    let failed = |e: String| JoinError::LoadFailed(e);
    let mut stored: StoredRoom = env
        .store
        .load(key)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if stored.is_empty() {
        // Nothing stored: the load hook (if any) seeds the room before anyone syncs.
        let limit = usize::try_from(max_doc).unwrap_or(usize::MAX);
        stored = env
            .hooks
            .seed(key, env.store.as_ref(), epoch, limit, stored)
            .await
            .map_err(JoinError::SeedFailed)?;
    }
    let seq = stored.last_seq();
    let log = stored
        .updates
        .iter()
        .map(|(seq, u)| (*seq, u.len() as u64))
        .collect();
    // Decoding a large document is CPU work; keep it off the async workers.
    let room = tokio::task::spawn_blocking(move || Room::load(&stored, max_aw))
        .await
        .map_err(|e| failed(format!("load task failed: {e}")))?
        .map_err(|e| failed(e.to_string()))?;
    Ok((room.with_max_doc_bytes(max_doc), seq, log))
}

/// Moves what waits in the inbox into `batch`, up to [`MAX_BATCH`].
fn drain_into(inbox: &mut mpsc::Receiver<RoomMsg>, batch: &mut Vec<RoomMsg>) {
    while batch.len() < MAX_BATCH {
        match inbox.try_recv() {
            Ok(msg) => batch.push(msg),
            Err(_) => break,
        }
    }
}

/// Answers joins and requests with `err` for `linger`, then closes the inbox.
pub(crate) async fn linger_refusing(
    inbox: &mut mpsc::Receiver<RoomMsg>,
    err: JoinError,
    linger: Duration,
) {
    let until = Instant::now() + linger;
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, inbox.recv()).await {
        match msg {
            RoomMsg::Join { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
            RoomMsg::Request(request) => request.refuse(&err),
            _ => {}
        }
    }
    refuse_all(inbox, err).await;
}

/// Closes the inbox and answers what still waits in it with `err`.
pub(crate) async fn refuse_remaining(inbox: &mut mpsc::Receiver<RoomMsg>, err: JoinError) {
    refuse_all(inbox, err).await;
}

/// Answers every join waiting in the inbox with `err`, then closes the inbox.
async fn refuse_all(inbox: &mut mpsc::Receiver<RoomMsg>, err: JoinError) {
    inbox.close();
    while let Some(msg) = inbox.recv().await {
        match msg {
            RoomMsg::Join { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
            RoomMsg::Request(request) => request.refuse(&err),
            _ => {}
        }
    }
}

impl Actor {
    async fn run(&mut self, inbox: &mut mpsc::Receiver<RoomMsg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // When an empty room retires: fixed when it empties, so lease ticks do not extend it.
        let mut retire_at: Option<Instant> = None;
        loop {
            let first = if self.conns.is_empty() {
                let shutting = self.env.shutdown.is_cancelled();
                let until = if shutting {
                    Instant::now()
                } else {
                    *retire_at.get_or_insert_with(|| Instant::now() + self.env.config.room_linger())
                };
                tokio::select! {
                    msg = inbox.recv() => msg,
                    _ = tokio::time::sleep_until(until) => {
                        retire_at = None;
                        if self.try_retire(inbox).await {
                            return;
                        }
                        continue;
                    }
                    // A lingering room keeps its lease alive until it retires.
                    _ = self.tick.as_mut(), if self.lease.is_some() => {
                        self.on_tick();
                        if !self.lease_tick().await {
                            self.unload_lost(inbox).await;
                            return;
                        }
                        continue;
                    }
                    _ = self.env.shutdown.cancelled(), if !shutting => continue,
                }
            } else {
                retire_at = None;
                let shutdown = self.env.shutdown.clone();
                tokio::select! {
                    msg = inbox.recv() => msg,
                    _ = self.tick.as_mut() => {
                        self.on_tick();
                        if !self.lease_tick().await {
                            self.unload_lost(inbox).await;
                            return;
                        }
                        continue;
                    }
                    _ = shutdown.cancelled(), if !self.shutting_down => {
                        self.shutting_down = true;
                        for c in self.conns.values() {
                            c.sink
                                .close(Close::new(code::GOING_AWAY, "server shutting down"));
                        }
                        continue;
                    }
                }
            };
            let Some(first) = first else {
                // Every sender is gone: the server is shutting down.
                self.finish().await;
                self.release_lease().await;
                self.hand_over_change();
                return;
            };
            batch.push(first);
            drain_into(inbox, &mut batch);
            if !self.turn(&mut batch).await {
                // Storage failed or the lease was lost: every connection was closed; unload so
                // the next join reloads what is really stored (here or on the owner).
                inbox.close();
                refuse_all(inbox, JoinError::LoadFailed("storage failed".into())).await;
                self.release_lease().await;
                return;
            }
        }
    }

    /// One turn: apply the batch, persist, then deliver. Returns false if the room must unload
    /// (storage failed, the lease was lost, or the room was deleted).
    async fn turn(&mut self, batch: &mut Vec<RoomMsg>) -> bool {
        let mut updates = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                RoomMsg::Join { member, reply } => self.join(member, reply),
                RoomMsg::Frame { conn, msg } => match self.frame(conn, msg) {
                    Handled::Update(update) => {
                        self.remember(Some(conn), &update);
                        updates.push(update);
                    }
                    Handled::Done => {}
                    Handled::Poisoned => {
                        if !self.rebuild(&updates).await {
                            return false;
                        }
                    }
                },
                RoomMsg::Leave { conn } => self.leave(conn),
                RoomMsg::Request(request) => match self.request(request).await {
                    Handled::Update(update) => {
                        self.remember(None, &update);
                        updates.push(update);
                    }
                    Handled::Done => {}
                    Handled::Poisoned => {
                        if !self.rebuild(&updates).await {
                            return false;
                        }
                    }
                },
            }
        }
        if !updates.is_empty() {
            let count = updates.len() as u64;
            let sizes: Vec<u64> = updates.iter().map(|u| u.len() as u64).collect();
            if self.persist != PersistMode::None {
                match self
                    .env
                    .store
                    .append(&self.key, self.epoch(), updates)
                    .await
                {
                    Ok(seq) => {
                        // One append stores its updates under consecutive sequence numbers.
                        let first = seq + 1 - count;
                        for (i, len) in sizes.into_iter().enumerate() {
                            self.log.push_back((first + i as u64, len));
                            self.log_bytes += len;
                        }
                        self.last_seq = seq;
                    }
                    Err(StoreError::Lease(e)) => {
                        // Another node owns the room now: nothing of this turn was stored, so
                        // nothing of it is sent; the clients reconnect and resync there.
                        self.lose_lease(&e.to_string());
                        return false;
                    }
                    Err(e) => {
                        inc(&self.env.stats.store_failures);
                        self.env.stats.append_failed();
                        error!(room = %self.key, error = %e, "append failed; closing the room");
                        self.close_all(Close::new(
                            code::INTERNAL_ERROR,
                            "storage unavailable; retry later",
                        ));
                        return false;
                    }
                }
            }
            self.env.stats.updates_applied.fetch_add(count, Relaxed);
            // Durable: the change webhook (if any) hears of it, without waiting.
            self.env.hooks.changed(&self.key, self.last_seq);
        }
        // Durable: the requests that waited for this turn's append get their answer.
        let seq = self.last_seq;
        let mut after = Vec::new();
        for w in std::mem::take(&mut self.waiting) {
            match w {
                Waiting::Applied { reply, changed } => {
                    let _ = reply.send(Ok(Applied { seq, changed }));
                }
                other => after.push(other),
            }
        }
        self.flush();
        self.members.store(self.conns.len(), Relaxed);
        for w in after {
            match w {
                Waiting::Compact(reply) => {
                    let result = self.compact_now().await;
                    let _ = reply.send(result);
                }
                Waiting::Delete(close, reply) => {
                    let result = self.delete(close).await;
                    let _ = reply.send(result);
                }
                Waiting::Applied { .. } => {}
            }
        }
        if self.deleted {
            return false;
        }
        // Snapshot mode folds the log as soon as the last client has left.
        self.maybe_compact(self.conns.is_empty());
        true
    }

    fn join(&mut self, member: Member, reply: oneshot::Sender<Result<(), JoinError>>) {
        if self.shutting_down {
            let _ = reply.send(Err(JoinError::ShuttingDown));
            return;
        }
        let max = self.env.config.max_connections_per_room;
        if self.conns.len() >= max {
            let _ = reply.send(Err(JoinError::RoomFull(max)));
            return;
        }
        if reply.send(Ok(())).is_err() {
            return; // the connection gave up waiting
        }
        let id = member.id;
        for frame in self.room.greeting() {
            self.out.push((Target::One(id), Out::Doc(frame)));
        }
        if self.conns.is_empty() {
            // The first connection after a quiet spell: the ping rounds start now.
            self.schedule_ping();
        }
        if let Some(at) = member.expires {
            if at < self.tick.deadline() {
                self.tick.as_mut().reset(at);
            }
        }
        self.conns.insert(id, member);
    }

    /// Handles one message from a member: its document update to persist, if any, or whether
    /// the document must be rebuilt.
    fn frame(&mut self, conn: MemberId, msg: Message) -> Handled {
        let Some(c) = self.conns.get(&conn) else {
            return Handled::Done;
        };
        let is_doc_update = matches!(
            msg,
            Message::Sync(SyncMessage::Step2(_) | SyncMessage::Update(_))
        );
        match self.room.handle(conn, c.access, c.user.as_deref(), msg) {
            Ok(fx) => {
                if fx.denied {
                    // Every refused update is answered (Hocuspocus: SyncStatus 0); the
                    // read-only notice goes once.
                    self.out.push((Target::One(conn), Out::Rejected));
                    if let Some(c) = self.conns.get_mut(&conn) {
                        if !c.told_read_only {
                            c.told_read_only = true;
                            self.out.push((Target::One(conn), Out::ReadOnly));
                        }
                    }
                } else if is_doc_update {
                    // Sent after this turn's append: an acknowledgement means "on disk".
                    self.out.push((Target::One(conn), Out::Applied));
                }
                self.push_effects(conn, fx.reply, fx.to_others, fx.to_all);
                fx.update.map_or(Handled::Done, Handled::Update)
            }
            Err(e) => {
                let (close, outcome) = self.refusal(&e);
                warn!(room = %self.key, conn, error = %e, "closing connection: message refused");
                if let Some(c) = self.conns.get(&conn) {
                    c.sink.close(Close::new(close, e.to_string()));
                }
                self.leave(conn);
                outcome
            }
        }
    }

    /// The close code for a refused message and what it leaves to do; counts it.
    fn refusal(&self, e: &RoomError) -> (u16, Handled) {
        match e {
            RoomError::DocTooLarge { .. } => {
                inc(&self.env.stats.doc_limit_refusals);
                (code::POLICY_VIOLATION, Handled::Done)
            }
            RoomError::Panicked(_) => {
                error!(room = %self.key, error = %e, "an update made the CRDT library panic; refusing it and rebuilding the document");
                (code::PROTOCOL_ERROR, Handled::Poisoned)
            }
            _ => {
                inc(&self.env.stats.protocol_errors);
                (code::PROTOCOL_ERROR, Handled::Done)
            }
        }
    }

    fn push_effects(
        &mut self,
        from: MemberId,
        reply: Vec<Bytes>,
        to_others: Option<Bytes>,
        to_all: Option<Bytes>,
    ) {
        for frame in reply {
            self.out.push((Target::One(from), Out::Doc(frame)));
        }
        if let Some(frame) = to_others {
            self.out.push((Target::AllBut(from), Out::Doc(frame)));
        }
        if let Some(frame) = to_all {
            self.out.push((Target::All, Out::Doc(frame)));
        }
    }

    /// Remembers a document update for inspection.
    fn remember(&mut self, member: Option<MemberId>, update: &Bytes) {
        if self.recent.len() == RECENT_UPDATES {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentUpdate {
            bytes: update.len() as u64,
            member,
            at_ms: unix_ms(std::time::SystemTime::now()),
        });
    }

    /// Handles a request without a socket. Updates take the same path as a member's: the room
    /// applies them, the turn appends them, and the reply waits for that append.
    async fn request(&mut self, request: Request) -> Handled {
        match request {
            Request::Apply {
                update,
                user,
                reply,
            } => {
                // A member for this one message: an id no socket has, nothing to greet.
                let id = crate::connection::next_member_id();
                let msg = Message::Sync(SyncMessage::Update(update));
                match self
                    .room
                    .handle(id, Access::ReadWrite, user.as_deref(), msg)
                {
                    Ok(fx) => self.applied(id, fx, reply),
                    Err(e) => {
                        let (_, outcome) = self.refusal(&e);
                        let _ = reply.send(Err(RequestError::of(&e)));
                        outcome
                    }
                }
            }
            Request::Edit { edit, reply } => match self.room.edit(edit) {
                Ok(Ok(fx)) => {
                    let id = crate::connection::next_member_id();
                    self.applied(id, fx, reply)
                }
                Ok(Err(detail)) => {
                    let _ = reply.send(Err(RequestError::BadInput(detail)));
                    Handled::Done
                }
                Err(e) => {
                    let (_, outcome) = self.refusal(&e);
                    let _ = reply.send(Err(RequestError::of(&e)));
                    outcome
                }
            },
            Request::State { sv, reply } => {
                let state = self
                    .room
                    .state(sv.as_deref())
                    .map_err(|e| RequestError::of(&e));
                let _ = reply.send(state);
                Handled::Done
            }
            Request::Inspect { reply } => {
                let _ = reply.send(Ok(self.view()));
                Handled::Done
            }
            Request::Close { user, close, reply } => {
                let ids: Vec<MemberId> = self
                    .conns
                    .values()
                    .filter(|m| user.is_none() || m.user.as_deref() == user.as_deref())
                    .map(|m| m.id)
                    .collect();
                for id in &ids {
                    if let Some(m) = self.conns.get(id) {
                        m.sink.close(close.clone());
                    }
                    self.leave(*id);
                }
                let _ = reply.send(Ok(ids.len()));
                Handled::Done
            }
            // Both act on what is stored, so they run after this turn's append.
            Request::Compact { reply } => {
                self.waiting.push(Waiting::Compact(reply));
                Handled::Done
            }
            Request::Delete { close, reply } => {
                self.waiting.push(Waiting::Delete(close, reply));
                Handled::Done
            }
        }
    }

    /// A request's update was applied: it is broadcast like a client's, and its reply waits
    /// for the turn's append.
    fn applied(
        &mut self,
        id: MemberId,
        fx: ripple_core::room::Effects,
        reply: oneshot::Sender<Result<Applied, RequestError>>,
    ) -> Handled {
        self.push_effects(id, Vec::new(), fx.to_others, fx.to_all);
        self.waiting.push(Waiting::Applied {
            reply,
            changed: fx.update.is_some(),
        });
        fx.update.map_or(Handled::Done, Handled::Update)
    }

    /// The room as the inspector and the API see it.
    fn view(&mut self) -> RoomView {
        let members = self
            .conns
            .values()
            .map(|m| MemberView {
                id: m.id,
                user: m.user.as_deref().map(str::to_owned),
                access: match m.access {
                    Access::ReadOnly => "read",
                    Access::ReadWrite => "write",
                },
                since_ms: unix_ms(m.since),
                sink: m.sink.describe(),
            })
            .collect();
        let awareness = self
            .room
            .awareness_states()
            .into_iter()
            .map(|(client, clock, state)| AwarenessView {
                client,
                clock,
                state,
            })
            .collect();
        RoomView {
            party: self.key.party().to_owned(),
            room: self.key.room().to_owned(),
            members,
            awareness,
            doc_bytes: self.room.encode_state().len() as u64,
            seq: self.last_seq,
            log_updates: self.log.len() as u64,
            log_bytes: self.log_bytes,
            recent: self.recent.iter().cloned().collect(),
        }
    }

    /// Folds the whole log into the snapshot now and waits for it (a request's "compact").
    async fn compact_now(&mut self) -> Result<(), RequestError> {
        if let Some(h) = self.compaction.take() {
            let _ = h.await;
        }
        if self.persist == PersistMode::None || self.log.is_empty() {
            return Ok(());
        }
        let snapshot = self.room.encode_state();
        let through = self.last_seq;
        let task = Compaction {
            through,
            epoch: self.epoch(),
            snapshot: Some(snapshot),
        };
        match task.run(self.env.store.as_ref(), &self.key).await {
            Ok(()) => {
                inc(&self.env.stats.compactions);
                self.log.clear();
                self.log_bytes = 0;
                Ok(())
            }
            Err(e) => Err(RequestError::Unavailable(e)),
        }
    }

    /// Ends every membership and deletes what is stored; the room then unloads (the next
    /// join starts it empty).
    async fn delete(&mut self, close: Close) -> Result<(), RequestError> {
        self.close_all(close);
        self.deleted = true;
        // What the change webhook has not sent yet is gone with the room.
        self.env.hooks.forget(&self.key);
        if let Some(h) = self.compaction.take() {
            let _ = h.await;
        }
        self.log.clear();
        self.log_bytes = 0;
        let result = if self.persist == PersistMode::None {
            Ok(())
        } else {
            self.env
                .store
                .delete(&self.key, self.epoch())
                .await
                .map_err(|e| RequestError::Unavailable(e.to_string()))
        };
        info!(room = %self.key, ok = result.is_ok(), "room deleted by request");
        result
    }

    /// Ends every membership with `close`, and refuses what waits for this turn's append.
    fn close_all(&mut self, close: Close) {
        self.out.clear();
        for (_, c) in self.conns.drain() {
            c.sink.close(close.clone());
        }
        for w in self.waiting.drain(..) {
            w.refuse(&close.reason);
        }
    }

    /// After a panic mid-apply the document may be half-changed: it is rebuilt from storage
    /// plus this turn's accepted updates (not stored yet; nothing of the failed update was).
    /// Without storage (`persist = "none"`) there is nothing to rebuild from: the room closes
    /// every connection (1011) and unloads, and clients bring their state back on reconnect.
    /// Returns false when the room must unload.
    async fn rebuild(&mut self, pending: &[Bytes]) -> bool {
        inc(&self.env.stats.room_rebuilds);
        let stored = if self.persist == PersistMode::None {
            Err("no storage to rebuild from".to_owned())
        } else {
            self.env
                .store
                .load(&self.key)
                .await
                .map_err(|e| e.to_string())
        };
        let rebuilt = match stored {
            Ok(stored) => {
                // Off the async workers, like a load; the room comes back with the result.
                let mut room = std::mem::replace(&mut self.room, Room::new(0));
                let pending = pending.to_vec();
                tokio::task::spawn_blocking(move || {
                    let res = room.rebuild(&stored, &pending);
                    (room, res)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|(room, res)| {
                    self.room = room;
                    res.map_err(|e| e.to_string())
                })
            }
            Err(e) => Err(e),
        };
        match rebuilt {
            Ok(()) => {
                info!(room = %self.key, "document rebuilt from storage");
                true
            }
            Err(e) => {
                error!(room = %self.key, error = %e, "could not rebuild the document; closing the room");
                self.close_all(Close::new(
                    code::INTERNAL_ERROR,
                    "room reset; reconnect to resync",
                ));
                false
            }
        }
    }

    fn leave(&mut self, conn: MemberId) {
        if self.conns.remove(&conn).is_some() {
            if let Some(frame) = self.room.disconnect(conn) {
                self.out.push((Target::All, Out::Doc(frame)));
            }
        }
    }

    /// Delivers the turn's output: each member gets what is addressed to it, in order, in one
    /// send. Each message is framed once per framing and the frames are shared (a broadcast
    /// costs one encoding however many members get it). A member whose queue is full is ended
    /// (it reconnects and resyncs); nothing is dropped silently.
    fn flush(&mut self) {
        // Every member's frames of one round, back to back; `direct` members' ranges in it.
        let mut frames: Vec<OutFrame> = Vec::new();
        let mut direct: Vec<(MemberId, std::ops::Range<usize>)> = Vec::new();
        // Per framing seen this turn: the frame of each output message (built when first
        // needed). Rooms rarely have more than two framings.
        let mut framed: Vec<(Framing, Vec<Option<Option<OutFrame>>>)> = Vec::new();
        while !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            framed.clear();
            frames.clear();
            direct.clear();
            let mut slow = Vec::new();
            for (id, c) in &self.conns {
                let framing = c.sink.framing();
                let slot = match framed.iter().position(|(f, _)| f == framing) {
                    Some(i) => i,
                    None => {
                        framed.push((framing.clone(), vec![None; out.len()]));
                        framed.len() - 1
                    }
                };
                let cache = &mut framed[slot].1;
                let start = frames.len();
                for (i, (target, msg)) in out.iter().enumerate() {
                    let to_me = match target {
                        Target::One(one) => one == id,
                        Target::AllBut(skip) => skip != id,
                        Target::All => true,
                    };
                    if to_me {
                        let frame = cache[i].get_or_insert_with(|| framing.frame(msg));
                        if let Some(frame) = frame {
                            frames.push(frame.clone());
                        }
                    }
                }
                if frames.len() == start {
                    continue;
                }
                if c.sink.direct().is_some() {
                    // Written below, with the other sockets, in one go.
                    direct.push((*id, start..frames.len()));
                    continue;
                }
                let mine = &frames[start..];
                if c.sink.send(mine) {
                    self.env
                        .stats
                        .frames_sent
                        .fetch_add(mine.len() as u64, Relaxed);
                } else {
                    slow.push(*id);
                }
                frames.truncate(start);
            }
            let mut ids = Vec::with_capacity(direct.len());
            let mut deliveries = Vec::with_capacity(direct.len());
            for (id, range) in &direct {
                let Some((peer, limits)) = self.conns.get(id).and_then(|c| c.sink.direct()) else {
                    continue;
                };
                ids.push(*id);
                deliveries.push(Delivery {
                    peer,
                    frames: &frames[range.clone()],
                    limits,
                });
            }
            let answers = send_all(&deliveries);
            let mut sent = 0;
            for ((id, d), ok) in ids.into_iter().zip(&deliveries).zip(answers) {
                if ok {
                    sent += d.frames.len();
                } else {
                    slow.push(id);
                }
            }
            drop(deliveries);
            self.env.stats.frames_sent.fetch_add(sent as u64, Relaxed);
            for id in slow {
                if let Some(c) = self.conns.get(&id) {
                    inc(&self.env.stats.slow_consumer_closes);
                    info!(room = %self.key, conn = id, "closing a connection that reads too slowly");
                    c.sink
                        .close(Close::new(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL));
                }
                // May queue an awareness removal: the loop delivers it.
                self.leave(id);
            }
        }
    }

    /// The epoch this room's writes carry (0 without a lease).
    fn epoch(&self) -> Epoch {
        self.lease.as_ref().map_or(0, |l| l.epoch)
    }

    /// This node may no longer serve the room: every connection is closed (they reconnect and
    /// resync against the owner), nothing more is sent or stored, and the actor unloads.
    fn lose_lease(&mut self, why: &str) {
        inc(&self.env.stats.lease_losses);
        warn!(room = %self.key, why, "lost the room's lease; closing its connections");
        if self.lease.take().is_some() {
            crate::stats::dec(&self.env.stats.rooms_owned);
        }
        self.compaction = None;
        self.log.clear();
        self.close_all(Close::new(
            code::INTERNAL_ERROR,
            "room moved to another node; reconnect",
        ));
    }

    /// Renews the lease when due; false when the room must unload because the lease is lost
    /// (fenced by a newer owner) or may have lapsed (self-fencing: no renewal got through in
    /// time). Also keeps the tick no later than the lease's next due time.
    async fn lease_tick(&mut self) -> bool {
        let Some(lease) = self.lease.as_mut() else {
            return true;
        };
        let now = Instant::now().into_std();
        match lease.due(now) {
            Due::Wait(at) => {
                let at = Instant::from_std(at);
                if at < self.tick.deadline() {
                    self.tick.as_mut().reset(at);
                }
                true
            }
            Due::SelfFence => {
                // No renewal got through in time: this node cannot own rooms now, even when the
                // tick came too late to see a renewal fail (a busy machine), so `/readyz` says so.
                self.env.stats.append_failed();
                self.lose_lease("no renewal got through before the lease could lapse");
                false
            }
            Due::Renew => {
                let times = self.env.config.lease_times();
                let epoch = lease.epoch;
                let renewal = self.env.store.renew(&self.key, epoch, times.ttl);
                // Bounded: a hanging database must not stall the room past its lease.
                match tokio::time::timeout(times.renew_every, renewal).await {
                    Ok(Ok(())) => {
                        inc(&self.env.stats.lease_renewals);
                        if let Some(lease) = self.lease.as_mut() {
                            lease.renewed(now);
                        }
                    }
                    Ok(Err(StoreError::Lease(e))) => {
                        self.lose_lease(&e.to_string());
                        return false;
                    }
                    Ok(Err(e)) => {
                        inc(&self.env.stats.lease_renewal_failures);
                        self.env.stats.append_failed();
                        warn!(room = %self.key, error = %e, "lease renewal failed; retrying");
                        if let Some(lease) = self.lease.as_mut() {
                            lease.renewal_failed(Instant::now().into_std());
                        }
                    }
                    Err(_) => {
                        inc(&self.env.stats.lease_renewal_failures);
                        self.env.stats.append_failed();
                        warn!(room = %self.key, "lease renewal timed out; retrying");
                        if let Some(lease) = self.lease.as_mut() {
                            lease.renewal_failed(Instant::now().into_std());
                        }
                    }
                }
                // Schedule the next due time (or fence at once if it already passed).
                Box::pin(self.lease_tick()).await
            }
        }
    }

    /// Ends the lease so another node may take the room at once (after the final compaction).
    async fn release_lease(&mut self) {
        if let Some(lease) = self.lease.take() {
            crate::stats::dec(&self.env.stats.rooms_owned);
            if let Err(e) = self.env.store.release(&self.key, lease.epoch).await {
                debug!(room = %self.key, error = %e, "lease release failed (it lapses on its own)");
            }
        }
    }

    /// Sets the next ping round one interval from now.
    fn schedule_ping(&mut self) {
        self.next_ping = Instant::now() + self.env.config.ping_interval();
        self.tick_by(self.next_ping);
    }

    /// Makes the tick fire no later than `at` (an earlier deadline, such as a lease renewal,
    /// stays).
    fn tick_by(&mut self, at: Instant) {
        if self.tick.is_elapsed() || at < self.tick.deadline() {
            self.tick.as_mut().reset(at);
        }
    }

    /// After the lease was lost: refuses what waits in the inbox and lets the actor end.
    async fn unload_lost(&mut self, inbox: &mut mpsc::Receiver<RoomMsg>) {
        refuse_all(
            inbox,
            JoinError::LoadFailed("room moved to another node; reconnect".into()),
        )
        .await;
    }

    /// Pings every connection once an interval and closes those not heard from within the idle
    /// timeout (a peer that vanished never answers), and closes connections whose token
    /// expired. Then sets the next tick.
    fn on_tick(&mut self) {
        let now = Instant::now();
        if now >= self.next_ping {
            let heard_by = heard_by(self.env.config.idle_timeout().as_millis() as u64);
            for c in self.conns.values() {
                c.sink.keepalive(heard_by);
            }
            self.next_ping = now + self.env.config.ping_interval();
        }
        let mut next = self.next_ping;
        let mut expired = Vec::new();
        for c in self.conns.values() {
            match c.expires {
                Some(at) if at <= now => expired.push(c.id),
                Some(at) => next = next.min(at),
                None => {}
            }
        }
        for id in expired {
            debug!(room = %self.key, conn = id, "ending membership: token expired");
            if let Some(c) = self.conns.get(&id) {
                c.sink
                    .close(Close::new(code::TOKEN_EXPIRED, "token expired"));
            }
            self.leave(id);
        }
        // The awareness removals of expired members go out now.
        self.flush();
        self.tick.as_mut().reset(next);
    }

    /// Starts a background compaction when the mode asks for one (`force`: the room emptied).
    ///
    /// Snapshot mode folds the whole log into the snapshot, from the document in memory (which
    /// holds exactly the snapshot plus every stored update). History mode folds only the oldest
    /// entries, until what is left fits in half the limits; it rebuilds that prefix from storage
    /// in the background task.
    fn maybe_compact(&mut self, force: bool) {
        if self.persist == PersistMode::None || self.log.is_empty() {
            return;
        }
        if self.compaction.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let cfg = &self.env.config;
        let (store, stats, key) = (
            self.env.store.clone(),
            self.env.stats.clone(),
            self.key.clone(),
        );
        let task = match self.persist {
            PersistMode::Snapshot => {
                if !force && self.log_bytes <= cfg.compact_after_bytes {
                    return;
                }
                let snapshot = self.room.encode_state();
                let through = self.last_seq;
                self.log.clear();
                self.log_bytes = 0;
                Compaction {
                    through,
                    epoch: self.epoch(),
                    snapshot: Some(snapshot),
                }
            }
            PersistMode::History => {
                let (max_bytes, max_updates) = (cfg.history_max_bytes, cfg.history_max_updates);
                if self.log_bytes <= max_bytes && self.log.len() as u64 <= max_updates {
                    return;
                }
                let mut through = 0;
                while self.log_bytes > max_bytes / 2 || self.log.len() as u64 > max_updates / 2 {
                    let Some((seq, len)) = self.log.pop_front() else {
                        break;
                    };
                    self.log_bytes -= len;
                    through = seq;
                }
                Compaction {
                    through,
                    epoch: self.epoch(),
                    snapshot: None,
                }
            }
            PersistMode::None => return,
        };
        self.compaction = Some(tokio::spawn(async move {
            let through = task.through;
            match task.run(store.as_ref(), &key).await {
                Ok(()) => {
                    inc(&stats.compactions);
                    debug!(room = %key, through, "compacted");
                }
                // The log is still complete; a later compaction covers it.
                Err(e) => warn!(room = %key, through, error = %e, "compaction failed"),
            }
        }));
    }

    /// The room has been empty for the linger time: compact and unload unless someone joined
    /// meanwhile. Returns true when the actor should exit.
    async fn try_retire(&mut self, inbox: &mut mpsc::Receiver<RoomMsg>) -> bool {
        self.finish().await;
        if !inbox.is_empty() {
            return false;
        }
        // Compacted and about to close the inbox: another node may take the room at once.
        self.release_lease().await;
        self.hand_over_change();
        // Joins that raced in between are refused without a reply; the connection asks the
        // registry again and gets a fresh actor that loads what we just stored.
        inbox.close();
        while let Ok(msg) = inbox.try_recv() {
            drop(msg);
        }
        true
    }

    /// The room unloads: an unsent change goes to the change webhook now, with the final state.
    fn hand_over_change(&mut self) {
        let room = &mut self.room;
        self.env.hooks.unloading(&self.key, || room.encode_state());
    }

    /// Final compaction, awaited.
    async fn finish(&mut self) {
        self.maybe_compact(true);
        if let Some(handle) = self.compaction.take() {
            let _ = handle.await;
        }
    }
}

/// A compaction through `through`: with the snapshot already built, or rebuilt from storage.
struct Compaction {
    through: u64,
    /// The lease it writes under: a compaction from an owner that was superseded is fenced.
    epoch: Epoch,
    snapshot: Option<Bytes>,
}

impl Compaction {
    async fn run(self, store: &dyn Store, key: &RoomKey) -> Result<(), String> {
        let snapshot = match self.snapshot {
            Some(snapshot) => snapshot,
            None => {
                let stored = store.load(key).await.map_err(|e| e.to_string())?;
                let through = self.through;
                tokio::task::spawn_blocking(move || fold(&stored, through))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
        };
        store
            .compact(key, self.epoch, snapshot, self.through)
            .await
            .map_err(|e| e.to_string())
    }
}
