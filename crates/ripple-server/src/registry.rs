//! The room registry: an actor that maps room keys to running room actors, starts an actor the
//! first time a room is asked for (single-flight: one load per room, however many clients race
//! for it), and forgets it when it retires. It never waits on a room or on storage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use ripple_core::RoomKey;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::error;

use crate::room::{self, JoinError, Request, RoomEnv, RoomMsg};
use crate::stats::{dec, inc};

/// A handle to a running room actor.
#[derive(Debug, Clone)]
pub(crate) struct RoomHandle {
    pub(crate) tx: mpsc::Sender<RoomMsg>,
    pub(crate) generation: u64,
    /// How many members the room has (kept by its actor; read for listings).
    pub(crate) members: Arc<AtomicUsize>,
}

/// A loaded room, for listings.
#[derive(Debug, Clone)]
pub(crate) struct LoadedRoom {
    pub(crate) key: RoomKey,
    pub(crate) members: usize,
}

enum RegistryMsg {
    Get {
        key: RoomKey,
        reply: oneshot::Sender<Result<RoomHandle, JoinError>>,
    },
    /// A room actor ended (or a connection found its inbox closed).
    Gone { key: RoomKey, generation: u64 },
    /// Every loaded room.
    Loaded {
        reply: oneshot::Sender<Vec<LoadedRoom>>,
    },
}

/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct Registry {
    tx: mpsc::UnboundedSender<RegistryMsg>,
}

impl Registry {
    /// Starts the registry actor. Room actors are spawned on `tracker` so shutdown can wait.
    pub(crate) fn start(env: Arc<RoomEnv>, tracker: TaskTracker) -> Self {
        // Unbounded is safe here: each connection sends at most a few messages per join, and
        // the number of connections is bounded by the accept path.
        let (tx, rx) = mpsc::unbounded_channel();
        let registry = Self { tx: tx.clone() };
        tracker.spawn(run(env, tracker.clone(), rx, tx));
        registry
    }

    /// The running actor for `key`, starting one if needed.
    pub(crate) async fn get(&self, key: RoomKey) -> Result<RoomHandle, JoinError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(RegistryMsg::Get { key, reply })
            .map_err(|_| JoinError::ShuttingDown)?;
        rx.await.map_err(|_| JoinError::ShuttingDown)?
    }

    /// The rooms loaded now, with their member counts.
    pub(crate) async fn loaded(&self) -> Vec<LoadedRoom> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(RegistryMsg::Loaded { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Sends a request to the room's actor (starting it, which loads the room, if needed) and
    /// waits for its answer. `make` builds the request around the reply channel; it is called
    /// again if the actor was retiring and dropped the request unhandled. With `retry` false
    /// (for requests that must not run twice) a dropped request is reported instead: it may
    /// have been applied by an actor that then panicked.
    pub(crate) async fn request<T>(
        &self,
        key: &RoomKey,
        retry: bool,
        make: impl Fn(oneshot::Sender<T>) -> Request,
    ) -> Result<T, JoinError> {
        for _ in 0..5 {
            let room = self.get(key.clone()).await?;
            let (reply, rx) = oneshot::channel();
            if room.tx.send(RoomMsg::Request(make(reply))).await.is_err() {
                // Never delivered: safe to send again.
                self.gone(key.clone(), room.generation);
                continue;
            }
            match rx.await {
                Ok(answer) => return Ok(answer),
                Err(_) if retry => {
                    self.gone(key.clone(), room.generation);
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        Err(JoinError::LoadFailed(
            "the room unloaded while handling the request; retry".into(),
        ))
    }

    /// Reports that the actor `generation` of `key` no longer accepts messages.
    pub(crate) fn gone(&self, key: RoomKey, generation: u64) {
        let _ = self.tx.send(RegistryMsg::Gone { key, generation });
    }
}

async fn run(
    env: Arc<RoomEnv>,
    tracker: TaskTracker,
    mut rx: mpsc::UnboundedReceiver<RegistryMsg>,
    tx: mpsc::UnboundedSender<RegistryMsg>,
) {
    let mut rooms: HashMap<RoomKey, RoomHandle> = HashMap::new();
    let mut next_generation = 0u64;
    loop {
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            // Once shutting down and every room is gone, the registry is done.
            _ = env.shutdown.cancelled(), if rooms.is_empty() => None,
        };
        let Some(msg) = msg else { return };
        match msg {
            RegistryMsg::Get { key, reply } => {
                if let Some(handle) = rooms.get(&key) {
                    if !handle.tx.is_closed() {
                        let _ = reply.send(Ok(handle.clone()));
                        continue;
                    }
                }
                if env.shutdown.is_cancelled() {
                    let _ = reply.send(Err(JoinError::ShuttingDown));
                    continue;
                }
                let max = env.config.max_rooms;
                if rooms.len() >= max && !rooms.contains_key(&key) {
                    let _ = reply.send(Err(JoinError::TooManyRooms(max)));
                    continue;
                }
                next_generation += 1;
                let generation = next_generation;
                let (room_tx, room_rx) = mpsc::channel(env.config.room_inbox);
                let members = Arc::new(AtomicUsize::new(0));
                let handle = RoomHandle {
                    tx: room_tx,
                    generation,
                    members: members.clone(),
                };
                rooms.insert(key.clone(), handle.clone());
                inc(&env.stats.rooms_active);
                let (env2, tx2, key2) = (env.clone(), tx.clone(), key.clone());
                tracker.spawn(async move {
                    let result = std::panic::AssertUnwindSafe(room::run(
                        key2.clone(),
                        env2,
                        room_rx,
                        members,
                    ))
                    .catch_unwind()
                    .await;
                    if result.is_err() {
                        // The actor's state, and with it every connection's outbox, is gone:
                        // those connections close with "internal error". Other rooms go on.
                        error!(room = %key2, "room actor panicked; its connections were closed");
                    }
                    let _ = tx2.send(RegistryMsg::Gone {
                        key: key2,
                        generation,
                    });
                });
                let _ = reply.send(Ok(handle));
            }
            RegistryMsg::Loaded { reply } => {
                let loaded = rooms
                    .iter()
                    .filter(|(_, h)| !h.tx.is_closed())
                    .map(|(key, h)| LoadedRoom {
                        key: key.clone(),
                        members: h.members.load(Ordering::Relaxed),
                    })
                    .collect();
                let _ = reply.send(loaded);
            }
            RegistryMsg::Gone { key, generation } => {
                if rooms.get(&key).is_some_and(|h| h.generation == generation) {
                    rooms.remove(&key);
                    dec(&env.stats.rooms_active);
                }
            }
        }
    }
}
