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
use ripple_core::awareness::ConnId;
use ripple_core::lease::{Due, Epoch, Holder, LeaseError};
use ripple_core::room::{fold, Access, Room, RoomError};
use ripple_core::{RoomKey, Store, StoreError, StoredRoom};
use ripple_proto::{ws, Message};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::closer::code;
use crate::config::{Config, PersistMode};
use crate::peer::{now_ms, OutFrame, Peer, QueueLimits};
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
}

impl JoinError {
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            JoinError::RoomFull(_) | JoinError::TooManyRooms(_) | JoinError::OwnedElsewhere(_) => {
                code::TRY_AGAIN_LATER
            }
            JoinError::LoadFailed(_) => code::INTERNAL_ERROR,
            JoinError::ShuttingDown => code::GOING_AWAY,
        }
    }
}

/// A message to a room actor.
#[derive(Debug)]
pub(crate) enum RoomMsg {
    Join {
        peer: Arc<Peer>,
        access: Access,
        /// The authenticated user id, if any (decides awareness ownership).
        user: Option<Arc<str>>,
        /// When the connection's token expires (it is then closed with 4001).
        expires: Option<Instant>,
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
    /// This node's id in room leases.
    pub(crate) node_id: Arc<str>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: CancellationToken,
}

struct ConnState {
    peer: Arc<Peer>,
    access: Access,
    user: Option<Arc<str>>,
    told_read_only: bool,
    expires: Option<Instant>,
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
    /// The room's lease, when it is persisted: every write carries its epoch.
    lease: Option<Holder>,
    out: Vec<(Target, Bytes)>,
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
            c.peer
                .close(code::INTERNAL_ERROR, "room closed unexpectedly");
        }
    }
}

/// Runs a room until it has been empty for the linger time (or the server shuts down and it
/// empties), or its storage fails.
pub(crate) async fn run(key: RoomKey, env: Arc<RoomEnv>, mut inbox: mpsc::Receiver<RoomMsg>) {
    let persist = env.config.persist_for(key.party());
    let loaded = load(&key, &env, persist).await;
    let (room, stored_seq, log, lease) = match loaded {
        Ok(v) => v,
        Err(err) => {
            if let JoinError::OwnedElsewhere(owner) = &err {
                inc(&env.stats.owned_elsewhere);
                info!(room = %key, %owner, "room is owned by another node; refusing its connections");
            } else {
                inc(&env.stats.room_load_failures);
                error!(room = %key, reason = %err, "room failed to load; refusing its connections");
            }
            // Stay a while to answer joins with the reason (and to keep reconnecting clients
            // from turning into a reload storm), then retire. A fixed deadline: clients that
            // keep retrying must not keep a refusal alive after the cause went away (for a
            // room owned elsewhere, about a second).
            let linger = match err {
                JoinError::OwnedElsewhere(_) => Duration::from_secs(1),
                _ => env.config.room_linger().max(Duration::from_secs(1)),
            };
            let until = Instant::now() + linger;
            while let Ok(Some(msg)) = tokio::time::timeout_at(until, inbox.recv()).await {
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
        lease,
        out: Vec::new(),
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
        let (room, seq, log) = load_stored(key, env, max_aw, max_doc)
            .await
            .map_err(JoinError::LoadFailed)?;
        return Ok((room, seq, log, None));
    }
    let times = env.config.lease_times();
    let sent = Instant::now().into_std();
    let lease = match env.store.acquire(key, &env.node_id, times.ttl).await {
        Ok(grant) => Holder::granted(&grant, sent, times),
        Err(StoreError::Lease(LeaseError::Held { owner, .. })) => {
            return Err(JoinError::OwnedElsewhere(owner))
        }
        Err(e) => return Err(JoinError::LoadFailed(e.to_string())),
    };
    let loaded = load_stored(key, env, max_aw, max_doc).await;
    if loaded.is_err() {
        let _ = env.store.release(key, lease.epoch).await;
    }
    let (room, seq, log) = loaded.map_err(JoinError::LoadFailed)?;
    Ok((room, seq, log, Some(lease)))
}

async fn load_stored(
    key: &RoomKey,
    env: &RoomEnv,
    max_aw: usize,
    max_doc: u64,
) -> Result<(Room, u64, VecDeque<(u64, u64)>), String> {
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
                            c.peer.close(code::GOING_AWAY, "server shutting down");
                        }
                        continue;
                    }
                }
            };
            let Some(first) = first else {
                // Every sender is gone: the server is shutting down.
                self.finish().await;
                self.release_lease().await;
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

    /// One turn: apply the batch, persist, then deliver. Returns false if storage failed.
    async fn turn(&mut self, batch: &mut Vec<RoomMsg>) -> bool {
        let mut updates = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                RoomMsg::Join {
                    peer,
                    access,
                    user,
                    expires,
                    reply,
                } => self.join(peer, access, user, expires, reply),
                RoomMsg::Frame { conn, msg } => match self.frame(conn, msg) {
                    Handled::Update(update) => updates.push(update),
                    Handled::Done => {}
                    Handled::Poisoned => {
                        if !self.rebuild(&updates).await {
                            return false;
                        }
                    }
                },
                RoomMsg::Leave { conn } => self.leave(conn),
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
                        self.out.clear();
                        for (_, c) in self.conns.drain() {
                            c.peer
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
        peer: Arc<Peer>,
        access: Access,
        user: Option<Arc<str>>,
        expires: Option<Instant>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    ) {
        if self.shutting_down {
            let _ = reply.send(Err(JoinError::ShuttingDown));
            return;
        }
        let conn = peer.id;
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
        if self.conns.is_empty() {
            // The first connection after a quiet spell: the ping rounds start now.
            self.schedule_ping();
        }
        if let Some(at) = expires {
            if at < self.tick.deadline() {
                self.tick.as_mut().reset(at);
            }
        }
        self.conns.insert(
            conn,
            ConnState {
                peer,
                access,
                user,
                told_read_only: false,
                expires,
            },
        );
    }

    /// Handles one message: its document update to persist, if any, or whether the document
    /// must be rebuilt.
    fn frame(&mut self, conn: ConnId, msg: Message) -> Handled {
        let Some(c) = self.conns.get(&conn) else {
            return Handled::Done;
        };
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
                fx.update.map_or(Handled::Done, Handled::Update)
            }
            Err(e) => {
                let (close, outcome) = match &e {
                    RoomError::DocTooLarge { .. } => {
                        inc(&self.env.stats.doc_limit_refusals);
                        (code::POLICY_VIOLATION, Handled::Done)
                    }
                    RoomError::Panicked(_) => {
                        error!(room = %self.key, conn, error = %e, "a client's update made the CRDT library panic; closing that client and rebuilding the document");
                        (code::PROTOCOL_ERROR, Handled::Poisoned)
                    }
                    _ => {
                        inc(&self.env.stats.protocol_errors);
                        (code::PROTOCOL_ERROR, Handled::Done)
                    }
                };
                warn!(room = %self.key, conn, error = %e, "closing connection: message refused");
                if let Some(c) = self.conns.get(&conn) {
                    c.peer.close(close, &e.to_string());
                }
                self.leave(conn);
                outcome
            }
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
                self.out.clear();
                for (_, c) in self.conns.drain() {
                    c.peer
                        .close(code::INTERNAL_ERROR, "room reset; reconnect to resync");
                }
                false
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

    /// Delivers the turn's frames: each connection gets the frames addressed to it, in order,
    /// in one write. A connection whose queue is full is closed (it reconnects and resyncs);
    /// nothing is dropped silently.
    fn flush(&mut self) {
        let limits = QueueLimits::of(&self.env.config);
        let mut mine: Vec<OutFrame> = Vec::new();
        while !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            // Framed once; each recipient shares the payload.
            let framed: Vec<(Target, OutFrame)> = out
                .into_iter()
                .map(|(target, body)| (target, OutFrame::binary(body)))
                .collect();
            let mut slow = Vec::new();
            for (id, c) in &self.conns {
                mine.clear();
                for (target, frame) in &framed {
                    let to_me = match target {
                        Target::One(one) => one == id,
                        Target::AllBut(skip) => skip != id,
                        Target::All => true,
                    };
                    if to_me {
                        mine.push(frame.clone());
                    }
                }
                if mine.is_empty() {
                    continue;
                }
                if c.peer.send(&mine, limits) {
                    self.env
                        .stats
                        .frames_sent
                        .fetch_add(mine.len() as u64, Relaxed);
                } else {
                    slow.push(*id);
                }
            }
            for id in slow {
                if let Some(c) = self.conns.get(&id) {
                    inc(&self.env.stats.slow_consumer_closes);
                    info!(room = %self.key, conn = id, "closing a connection that reads too slowly");
                    c.peer
                        .close(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL);
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
        self.lease = None;
        self.compaction = None;
        self.log.clear();
        self.out.clear();
        for (_, c) in self.conns.drain() {
            c.peer.close(
                code::INTERNAL_ERROR,
                "room moved to another node; reconnect",
            );
        }
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
                        warn!(room = %self.key, error = %e, "lease renewal failed; retrying");
                        if let Some(lease) = self.lease.as_mut() {
                            lease.renewal_failed(Instant::now().into_std());
                        }
                    }
                    Err(_) => {
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
            let idle_ms = self.env.config.idle_timeout().as_millis() as u64;
            let ping = [OutFrame::new(ws::opcode::PING, Bytes::new())];
            let limits = QueueLimits::of(&self.env.config);
            let heard_by = now_ms().saturating_sub(idle_ms);
            for c in self.conns.values() {
                if c.peer.last_heard() < heard_by {
                    c.peer.close(
                        code::GOING_AWAY,
                        "no message or pong within the idle timeout",
                    );
                } else if !c.peer.send(&ping, limits) {
                    c.peer
                        .close(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL);
                }
            }
            self.next_ping = now + self.env.config.ping_interval();
        }
        let mut next = self.next_ping;
        for c in self.conns.values() {
            match c.expires {
                Some(at) if at <= now => {
                    debug!(room = %self.key, conn = c.peer.id, "closing connection: token expired");
                    c.peer.close(code::TOKEN_EXPIRED, "token expired");
                }
                Some(at) => next = next.min(at),
                None => {}
            }
        }
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
