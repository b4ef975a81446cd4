//! The room actor: one task per loaded room owns its [`Room`] (document and awareness) and the
//! outboxes of its connections. Connections talk to it only through its bounded inbox.
//!
//! Each turn the actor takes every message waiting in its inbox (up to a batch limit), applies
//! them in order, appends all resulting document updates to storage in one call and waits for
//! that to be durable, and only then sends anything: replies, broadcasts, greetings. So an
//! update another client has seen is always on disk (in strict durability), and many updates
//! share one commit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ripple_core::awareness::ConnId;
use ripple_core::room::{fold, Access, Room};
use ripple_core::{RoomKey, Store, StoredRoom};
use ripple_proto::Message;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::closer::{code, Closer};
use crate::config::{Config, PersistMode};
use crate::stats::{inc, Stats};

/// Most inbox messages handled in one turn (one storage commit).
const MAX_BATCH: usize = 512;

/// Where a room sends a connection's frames.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    pub(crate) frames: mpsc::Sender<Bytes>,
    /// Bytes queued and not yet written to the socket (the writer subtracts what it flushed).
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    pub(crate) closer: Closer,
}

/// Why a join was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("room is full ({0} connections)")]
    RoomFull(usize),
    #[error("server holds the maximum of {0} rooms")]
    TooManyRooms(usize),
    #[error("room failed to load: {0}")]
    LoadFailed(String),
    #[error("server is shutting down")]
    ShuttingDown,
}

impl JoinError {
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            JoinError::RoomFull(_) | JoinError::TooManyRooms(_) => code::TRY_AGAIN_LATER,
            JoinError::LoadFailed(_) => code::INTERNAL_ERROR,
            JoinError::ShuttingDown => code::GOING_AWAY,
        }
    }
}

/// A message to a room actor.
#[derive(Debug)]
pub(crate) enum RoomMsg {
    Join {
        conn: ConnId,
        access: Access,
        /// The authenticated user id, if any (decides awareness ownership).
        user: Option<Arc<str>>,
        outbox: Outbox,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Frame {
        conn: ConnId,
        msg: Message,
    },
    Leave {
        conn: ConnId,
    },
}

/// Everything a room actor needs from the server.
pub(crate) struct RoomEnv {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: CancellationToken,
}

struct ConnState {
    outbox: Outbox,
    access: Access,
    user: Option<Arc<str>>,
    told_read_only: bool,
}

/// Where a frame goes when the turn's output is flushed.
enum Target {
    One(ConnId),
    AllBut(ConnId),
    All,
}

struct Actor {
    key: RoomKey,
    env: Arc<RoomEnv>,
    persist: PersistMode,
    room: Room,
    conns: HashMap<ConnId, ConnState>,
    /// Last sequence number stored for this room.
    last_seq: u64,
    /// The stored log after the snapshot: `(seq, bytes)` per update, oldest first.
    log: VecDeque<(u64, u64)>,
    /// Sum of the sizes in `log`.
    log_bytes: u64,
    /// A compaction running in the background, if any.
    compaction: Option<tokio::task::JoinHandle<()>>,
    out: Vec<(Target, Bytes)>,
}

/// Runs a room until it has been empty for the linger time (or the server shuts down and it
/// empties), or its storage fails.
pub(crate) async fn run(key: RoomKey, env: Arc<RoomEnv>, mut inbox: mpsc::Receiver<RoomMsg>) {
    let persist = env.config.persist_for(key.party());
    let loaded = load(&key, &env, persist).await;
    let (room, stored_seq, log) = match loaded {
        Ok(v) => v,
        Err(reason) => {
            inc(&env.stats.room_load_failures);
            error!(room = %key, %reason, "room failed to load; refusing its connections");
            // Stay a while to answer joins with the reason (and to keep reconnecting clients
            // from turning into a reload storm), then retire.
            let err = JoinError::LoadFailed(reason);
            let linger = env.config.room_linger().max(Duration::from_secs(1));
            while let Ok(Some(msg)) = tokio::time::timeout(linger, inbox.recv()).await {
                if let RoomMsg::Join { reply, .. } = msg {
                    let _ = reply.send(Err(err.clone()));
                }
            }
            refuse_all(&mut inbox, err).await;
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
        last_seq: stored_seq,
        log_bytes: log.iter().map(|(_, len)| len).sum(),
        log,
        compaction: None,
        out: Vec::new(),
    };
    actor.run(&mut inbox).await;
}

type Loaded = (Room, u64, VecDeque<(u64, u64)>);

async fn load(key: &RoomKey, env: &RoomEnv, persist: PersistMode) -> Result<Loaded, String> {
    let max_aw = env.config.max_awareness_per_conn;
    if persist == PersistMode::None {
        return Ok((Room::new(max_aw), 0, VecDeque::new()));
    }
    let stored: StoredRoom = env.store.load(key).await.map_err(|e| e.to_string())?;
    let seq = stored.last_seq();
    let log = stored
        .updates
        .iter()
        .map(|(seq, u)| (*seq, u.len() as u64))
        .collect();
    // Decoding a large document is CPU work; keep it off the async workers.
    let room = tokio::task::spawn_blocking(move || Room::load(&stored, max_aw))
        .await
        .map_err(|e| format!("load task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok((room, seq, log))
}

/// Answers every join waiting in the inbox with `err`, then closes the inbox.
async fn refuse_all(inbox: &mut mpsc::Receiver<RoomMsg>, err: JoinError) {
    inbox.close();
    while let Some(msg) = inbox.recv().await {
        if let RoomMsg::Join { reply, .. } = msg {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

impl Actor {
    async fn run(&mut self, inbox: &mut mpsc::Receiver<RoomMsg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let first = if self.conns.is_empty() {
                let linger = if self.env.shutdown.is_cancelled() {
                    Duration::ZERO
                } else {
                    self.env.config.room_linger()
                };
                tokio::select! {
                    msg = inbox.recv() => msg,
                    _ = tokio::time::sleep(linger) => {
                        if self.try_retire(inbox).await {
                            return;
                        }
                        continue;
                    }
                    _ = self.env.shutdown.cancelled(), if linger > Duration::ZERO => continue,
                }
            } else {
                inbox.recv().await
            };
            let Some(first) = first else {
                // Every sender is gone: the server is shutting down.
                self.finish().await;
                return;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            if !self.turn(&mut batch).await {
                // Storage failed: every connection was closed; unload so the next join reloads
                // what is really on disk.
                inbox.close();
                refuse_all(inbox, JoinError::LoadFailed("storage failed".into())).await;
                return;
            }
        }
    }

    /// One turn: apply the batch, persist, then deliver. Returns false if storage failed.
    async fn turn(&mut self, batch: &mut Vec<RoomMsg>) -> bool {
        let mut updates = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                RoomMsg::Join {
                    conn,
                    access,
                    user,
                    outbox,
                    reply,
                } => self.join(conn, access, user, outbox, reply),
                RoomMsg::Frame { conn, msg } => {
                    if let Some(update) = self.frame(conn, msg) {
                        updates.push(update);
                    }
                }
                RoomMsg::Leave { conn } => self.leave(conn),
            }
        }
        if !updates.is_empty() {
            let count = updates.len() as u64;
            let sizes: Vec<u64> = updates.iter().map(|u| u.len() as u64).collect();
            if self.persist != PersistMode::None {
                match self.env.store.append(&self.key, updates).await {
                    Ok(seq) => {
                        self.env.stats.storage_failing.store(0, Relaxed);
                        // One append stores its updates under consecutive sequence numbers.
                        let first = seq + 1 - count;
                        for (i, len) in sizes.into_iter().enumerate() {
                            self.log.push_back((first + i as u64, len));
                            self.log_bytes += len;
                        }
                        self.last_seq = seq;
                    }
                    Err(e) => {
                        inc(&self.env.stats.store_failures);
                        self.env.stats.storage_failing.store(1, Relaxed);
                        error!(room = %self.key, error = %e, "append failed; closing the room");
                        self.out.clear();
                        for (_, c) in self.conns.drain() {
                            c.outbox
                                .closer
                                .close(code::INTERNAL_ERROR, "storage unavailable; retry later");
                        }
                        return false;
                    }
                }
            }
            self.env.stats.updates_applied.fetch_add(count, Relaxed);
        }
        self.flush();
        // Snapshot mode folds the log as soon as the last client has left.
        self.maybe_compact(self.conns.is_empty());
        true
    }

    fn join(
        &mut self,
        conn: ConnId,
        access: Access,
        user: Option<Arc<str>>,
        outbox: Outbox,
        reply: oneshot::Sender<Result<(), JoinError>>,
    ) {
        let max = self.env.config.max_connections_per_room;
        if self.conns.len() >= max {
            let _ = reply.send(Err(JoinError::RoomFull(max)));
            return;
        }
        if reply.send(Ok(())).is_err() {
            return; // the connection gave up waiting
        }
        for frame in self.room.greeting() {
            self.out.push((Target::One(conn), frame));
        }
        self.conns.insert(
            conn,
            ConnState {
                outbox,
                access,
                user,
                told_read_only: false,
            },
        );
    }

    /// Handles one message; returns the document update to persist, if any.
    fn frame(&mut self, conn: ConnId, msg: Message) -> Option<Bytes> {
        let c = self.conns.get(&conn)?;
        match self.room.handle(conn, c.access, c.user.as_deref(), msg) {
            Ok(fx) => {
                if fx.denied {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        if !c.told_read_only {
                            c.told_read_only = true;
                            let deny = Message::AuthDenied(
                                "read-only access: document updates are refused".into(),
                            );
                            self.out.push((Target::One(conn), deny.encode()));
                        }
                    }
                }
                for frame in fx.reply {
                    self.out.push((Target::One(conn), frame));
                }
                if let Some(frame) = fx.to_others {
                    self.out.push((Target::AllBut(conn), frame));
                }
                if let Some(frame) = fx.to_all {
                    self.out.push((Target::All, frame));
                }
                fx.update
            }
            Err(e) => {
                inc(&self.env.stats.protocol_errors);
                warn!(room = %self.key, conn, error = %e, "closing connection: bad message");
                if let Some(c) = self.conns.get(&conn) {
                    c.outbox.closer.close(code::PROTOCOL_ERROR, e.to_string());
                }
                self.leave(conn);
                None
            }
        }
    }

    fn leave(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            if let Some(frame) = self.room.disconnect(conn) {
                self.out.push((Target::All, frame));
            }
        }
    }

    /// Delivers the turn's frames. A connection whose queue is full is closed (it reconnects
    /// and resyncs); nothing is dropped silently.
    fn flush(&mut self) {
        let max_bytes = self.env.config.outbound_queue_bytes;
        while !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let mut slow = Vec::new();
            for (target, frame) in out {
                match target {
                    Target::One(id) => {
                        if let Some(c) = self.conns.get(&id) {
                            if !deliver(&self.env.stats, c, &frame, max_bytes) {
                                slow.push(id);
                            }
                        }
                    }
                    Target::AllBut(skip) => {
                        for (id, c) in &self.conns {
                            if *id != skip && !deliver(&self.env.stats, c, &frame, max_bytes) {
                                slow.push(*id);
                            }
                        }
                    }
                    Target::All => {
                        for (id, c) in &self.conns {
                            if !deliver(&self.env.stats, c, &frame, max_bytes) {
                                slow.push(*id);
                            }
                        }
                    }
                }
            }
            slow.sort_unstable();
            slow.dedup();
            for id in slow {
                if let Some(c) = self.conns.get(&id) {
                    inc(&self.env.stats.slow_consumer_closes);
                    info!(room = %self.key, conn = id, "closing a connection that reads too slowly");
                    c.outbox.closer.close(
                        code::TRY_AGAIN_LATER,
                        "outbound queue full; reconnect to resync",
                    );
                }
                // May queue an awareness removal: the loop delivers it.
                self.leave(id);
            }
        }
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
        // Joins that raced in between are refused without a reply; the connection asks the
        // registry again and gets a fresh actor that loads what we just stored.
        inbox.close();
        while let Ok(msg) = inbox.try_recv() {
            drop(msg);
        }
        true
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
            .compact(key, snapshot, self.through)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Queues `frame` for `c`; false when its queue is full (by frames, or by bytes: a frame that
/// would take the queue past `max_bytes` counts as full unless the queue is empty, so one large
/// frame, such as a big initial sync, still goes through).
fn deliver(stats: &Stats, c: &ConnState, frame: &Bytes, max_bytes: usize) -> bool {
    let queued = c.outbox.queued_bytes.load(Relaxed);
    if queued > 0 && queued + frame.len() > max_bytes {
        return false;
    }
    match c.outbox.frames.try_send(frame.clone()) {
        Ok(()) => {
            c.outbox.queued_bytes.fetch_add(frame.len(), Relaxed);
            inc(&stats.frames_sent);
            true
        }
        Err(TrySendError::Full(_)) => false,
        // The connection is already gone; its Leave is on the way.
        Err(TrySendError::Closed(_)) => true,
    }
}
