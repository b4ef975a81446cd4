//! Many simulated clients in rooms, one task each, stepped through phases by the scenario:
//! connect → run (writers write) → stop (writers report how much they wrote) → drain (everyone
//! reads until it has every write of its room, or the drain timeout) → finish (each task reports
//! its final state vector and counters).
//!
//! Client `l` of room `r` has the global index `r * per_room + l`; that index is its writer id
//! in benchmark keys and (plus one) its yrs client id.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::conn::{Conn, ConnError, Event};
use crate::wire::Protocol;

/// yrs client id of global index 0 (u32-sized ids encode like yjs's).
pub const CLIENT_ID_BASE: u64 = 1_000_000;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// URL template; `{room}` is replaced by the room name and `{conn}` by a unique id
    /// (e.g. `ws://127.0.0.1:1999/parties/main/{room}?_pk={conn}`).
    pub url: String,
    /// Wire protocol.
    pub protocol: Protocol,
}

impl Target {
    /// The URL for one connection. A template may list several URLs, comma-separated (the
    /// nodes of a cluster): a room's connection 0 (fanout's writer, the one that makes its
    /// node the room's owner) uses the first; the others go round-robin over the rest.
    pub fn url_for(&self, room: &str, conn: u64) -> String {
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let template = match (conn, urls.len()) {
            (_, 1) | (0, _) => urls[0],
            (n, len) => urls[1 + ((n - 1) % (len as u64 - 1)) as usize],
        };
        template
            .replace("{room}", room)
            .replace("{conn}", &format!("b{:x}-{conn}", std::process::id()))
    }
}

/// What a client writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WritePlan {
    /// Nothing.
    Idle,
    /// One write every `interval`, starting `offset` after the run starts.
    Rate {
        /// Between writes.
        interval: Duration,
        /// Delay of the first write (spreads writers over the interval).
        offset: Duration,
    },
    /// As fast as it can with at most `window` writes not yet seen by its room neighbour.
    Window(u32),
}

/// Phases, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Connecting and syncing.
    Connect,
    /// Writers write.
    Run,
    /// Writers stop and report their counts.
    Stop,
    /// Read until each room's total (indexed by room) has arrived.
    Drain(Arc<Vec<u64>>),
    /// Report and close.
    Finish,
}

/// What one client task reports at the end.
#[derive(Debug, Clone)]
pub struct ClientReport {
    /// Room index.
    pub room: usize,
    /// Global index.
    pub index: u32,
    /// Time from the start of its connect to sync step 2, or the failure.
    pub connect: Result<Duration, ConnError>,
    /// Writes sent.
    pub writes: u64,
    /// Latency of every write from someone else that arrived, in µs.
    pub latencies_us: Vec<u64>,
    /// When (µs since epoch) the last arrival happened.
    pub last_arrival_us: u64,
    /// Own writes + arrived writes of others.
    pub seen: u64,
    /// Why the connection ended early, if it did (after a successful connect).
    pub ended: Option<ConnError>,
    /// Final encoded state vector (only if it stayed connected).
    pub state_vector: Option<Vec<u8>>,
    /// Update frames received.
    pub updates_in: u64,
}

struct Shared {
    target: Target,
    rooms: Vec<String>,
    per_room: usize,
    sem: Semaphore,
    connect_timeout: Duration,
    awareness: bool,
    ready: AtomicUsize,
    failed: AtomicUsize,
    exited: AtomicUsize,
    writers_done: AtomicUsize,
    drained: AtomicUsize,
    room_sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    ack_notify: Vec<Notify>,
    client_id_base: u64,
}

/// A set of client tasks under one phase signal.
pub struct Session {
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    tasks: Vec<JoinHandle<ClientReport>>,
    writers: usize,
}

/// Session sizing.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// Connection target.
    pub target: Target,
    /// Room names.
    pub rooms: Vec<String>,
    /// Clients per room (fixes global indexes; spawn fewer if you like).
    pub per_room: usize,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Per-connect timeout (handshake + sync).
    pub connect_timeout: Duration,
    /// Whether each client sets an awareness state right after it syncs.
    pub awareness: bool,
}

impl Session {
    /// A session with no clients yet.
    pub fn new(spec: SessionSpec) -> Self {
        let n = spec.rooms.len() * spec.per_room;
        let shared = Shared {
            room_sent: spec.rooms.iter().map(|_| AtomicU64::new(0)).collect(),
            rooms: spec.rooms,
            target: spec.target,
            per_room: spec.per_room.max(1),
            sem: Semaphore::new(spec.connect_concurrency.max(1)),
            connect_timeout: spec.connect_timeout,
            awareness: spec.awareness,
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            exited: AtomicUsize::new(0),
            writers_done: AtomicUsize::new(0),
            drained: AtomicUsize::new(0),
            acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ack_notify: (0..n).map(|_| Notify::new()).collect(),
            // Fixed small ids (rooms are new every run): the same document encodes to the same
            // bytes against every server.
            client_id_base: CLIENT_ID_BASE,
        };
        let (phase, _) = watch::channel(Phase::Connect);
        Self {
            shared: Arc::new(shared),
            phase,
            tasks: Vec::new(),
            writers: 0,
        }
    }

    /// Spawns client `local` of room `room`.
    pub fn spawn(&mut self, room: usize, local: usize, plan: WritePlan) {
        let index = (room * self.shared.per_room + local) as u32;
        if plan != WritePlan::Idle {
            self.writers += 1;
        }
        let shared = self.shared.clone();
        let phase = self.phase.subscribe();
        self.tasks.push(tokio::spawn(client_task(
            shared, room, local, index, plan, phase,
        )));
    }

    /// Writes acknowledged by room neighbours (window writers only).
    pub fn acked_total(&self) -> u64 {
        self.shared
            .acked
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .sum()
    }

    /// Clients spawned.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no client was spawned.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits until every spawned client is synced or failed. Returns (ready, failed).
    pub async fn wait_connected(&self) -> (usize, usize) {
        loop {
            let ready = self.shared.ready.load(Ordering::Acquire);
            let failed = self.shared.failed.load(Ordering::Acquire);
            if ready + failed >= self.tasks.len() {
                return (ready, failed);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Sets the phase.
    pub fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Stops the writers and waits (up to `timeout`) for their counts. Returns the writes per
    /// room.
    pub async fn stop(&self, timeout: Duration) -> Vec<u64> {
        self.set(Phase::Stop);
        let deadline = Instant::now() + timeout;
        while self.shared.writers_done.load(Ordering::Acquire) < self.writers
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.shared
            .room_sent
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    }

    /// Enters the drain phase and waits until every live client has every write of its room, or
    /// `timeout`. Returns whether all drained.
    pub async fn drain(&self, expected: Vec<u64>, timeout: Duration) -> bool {
        self.set(Phase::Drain(Arc::new(expected)));
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.shared.drained.load(Ordering::Acquire)
                + self.shared.exited.load(Ordering::Acquire);
            if done >= self.tasks.len() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Finishes: every task reports and closes.
    pub async fn finish(self) -> Vec<ClientReport> {
        self.set(Phase::Finish);
        let mut out = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            match t.await {
                Ok(r) => out.push(r),
                Err(e) => out.push(ClientReport {
                    room: 0,
                    index: u32::MAX,
                    connect: Err(ConnError::Protocol(format!("client task failed: {e}"))),
                    writes: 0,
                    latencies_us: Vec::new(),
                    last_arrival_us: 0,
                    seen: 0,
                    ended: None,
                    state_vector: None,
                    updates_in: 0,
                }),
            }
        }
        out
    }
}

struct Task {
    shared: Arc<Shared>,
    room: usize,
    local: usize,
    index: u32,
    plan: WritePlan,
    writes: u64,
    seen: u64,
    latencies: Vec<u64>,
    last_arrival_us: u64,
    updates_in: u64,
    writer_reported: bool,
    drained: bool,
}

impl Task {
    fn report_writes(&mut self) {
        if self.plan != WritePlan::Idle && !self.writer_reported {
            self.writer_reported = true;
            self.shared.room_sent[self.room].fetch_add(self.writes, Ordering::AcqRel);
            self.shared.writers_done.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn collect(&mut self, conn: &Conn) {
        let per_room = self.shared.per_room as u32;
        let arrivals = conn.take_arrivals();
        if arrivals.iter().any(|a| a.writer != self.index) {
            self.last_arrival_us = crate::conn::now_us();
        }
        for a in arrivals {
            if a.writer == self.index {
                // The observer also sees our own local writes.
                continue;
            }
            self.seen += 1;
            self.latencies.push(a.latency_us);
            // The writer's room neighbour acknowledges for the write window.
            let writer_local = a.writer % per_room;
            if (writer_local + 1) % per_room == self.local as u32 {
                if let Some(acked) = self.shared.acked.get(a.writer as usize) {
                    acked.fetch_max(u64::from(a.seq) + 1, Ordering::AcqRel);
                    self.shared.ack_notify[a.writer as usize].notify_one();
                }
            }
        }
    }

    fn check_drained(&mut self, phase: &Phase) {
        if let Phase::Drain(expected) = phase {
            if !self.drained && self.seen >= expected.get(self.room).copied().unwrap_or(0) {
                self.drained = true;
                self.shared.drained.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

async fn client_task(
    shared: Arc<Shared>,
    room: usize,
    local: usize,
    index: u32,
    plan: WritePlan,
    mut phase: watch::Receiver<Phase>,
) -> ClientReport {
    let mut t = Task {
        shared: shared.clone(),
        room,
        local,
        index,
        plan,
        writes: 0,
        seen: 0,
        latencies: Vec::new(),
        last_arrival_us: 0,
        updates_in: 0,
        writer_reported: false,
        drained: false,
    };
    let room_name = shared.rooms[room].clone();
    let (conn, started) = {
        let _permit = shared.sem.acquire().await;
        // Connect time counts from the permit: waiting for a turn is the driver's queue.
        let started = Instant::now();
        let url = shared.target.url_for(&room_name, u64::from(index));
        let conn = Conn::open_synced(
            &url,
            shared.target.protocol,
            &room_name,
            shared.client_id_base + u64::from(index),
            shared.connect_timeout,
        )
        .await;
        (conn, started)
    };
    let conn = match conn {
        Ok(mut c) if shared.awareness => {
            let state = format!(
                r##"{{"user":{{"name":"bench-{index}","color":"#30bced"}},"cursor":null}}"##
            );
            c.set_awareness(&state).await.map(|()| c)
        }
        other => other,
    };
    let mut conn = match conn {
        Ok(c) => {
            shared.ready.fetch_add(1, Ordering::AcqRel);
            c
        }
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::AcqRel);
            shared.exited.fetch_add(1, Ordering::AcqRel);
            t.report_writes();
            return t.finish(Err(e), None, None);
        }
    };
    let connect_time = started.elapsed();
    // Writes from others that arrived with the initial sync are not latency samples.
    conn.take_arrivals();
    let ended = run(&mut t, &mut conn, &mut phase).await;
    t.report_writes();
    match ended {
        Err(e) => {
            shared.exited.fetch_add(1, Ordering::AcqRel);
            t.finish(Ok(connect_time), Some(e), None)
        }
        Ok(()) => {
            let sv = conn.state_vector();
            t.updates_in = conn.frames_in;
            conn.close().await;
            t.finish(Ok(connect_time), None, Some(sv))
        }
    }
}

impl Task {
    fn finish(
        self,
        connect: Result<Duration, ConnError>,
        ended: Option<ConnError>,
        state_vector: Option<Vec<u8>>,
    ) -> ClientReport {
        ClientReport {
            room: self.room,
            index: self.index,
            connect,
            writes: self.writes,
            latencies_us: self.latencies,
            last_arrival_us: self.last_arrival_us,
            seen: self.seen,
            ended,
            state_vector,
            updates_in: self.updates_in,
        }
    }
}

/// The client's loop after sync, until `Finish` (Ok) or the connection ends (Err).
async fn run(
    t: &mut Task,
    conn: &mut Conn,
    phase: &mut watch::Receiver<Phase>,
) -> Result<(), ConnError> {
    let shared = t.shared.clone();
    let mut current = phase.borrow_and_update().clone();
    let mut ticker: Option<tokio::time::Interval> = None;
    loop {
        let writing = current == Phase::Run;
        if writing && ticker.is_none() {
            if let WritePlan::Rate { interval, offset } = t.plan {
                let mut iv =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker = Some(iv);
            }
        }
        let window_open = match t.plan {
            WritePlan::Window(w) => {
                writing
                    && t.writes
                        < shared.acked[t.index as usize].load(Ordering::Acquire) + u64::from(w)
            }
            _ => false,
        };
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                current = phase.borrow_and_update().clone();
                match &current {
                    Phase::Stop => {
                        ticker = None;
                        t.report_writes();
                    }
                    Phase::Drain(_) => t.check_drained(&current),
                    Phase::Finish => return Ok(()),
                    Phase::Connect | Phase::Run => {}
                }
            }
            ev = conn.recv() => {
                if ev? == Event::Update {
                    t.updates_in += 1;
                }
                t.collect(conn);
                t.check_drained(&current);
            }
            _ = tick(&mut ticker), if writing && ticker.is_some() => {
                conn.write_key(t.index, t.writes as u32).await?;
                t.writes += 1;
                t.seen += 1;
            }
            _ = async {}, if window_open => {
                conn.write_key(t.index, t.writes as u32).await?;
                t.writes += 1;
                t.seen += 1;
            }
            _ = shared.ack_notify[t.index as usize].notified(), if writing && !window_open && matches!(t.plan, WritePlan::Window(_)) => {}
        }
    }
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(iv) => {
            iv.tick().await;
        }
        None => std::future::pending().await,
    }
}
