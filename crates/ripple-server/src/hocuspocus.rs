//! Hocuspocus sockets (`@hocuspocus/provider` 2.x–4.x, what Tiptap uses), at `/` and
//! `/hocuspocus`. One socket carries many documents; each document is its own room member with
//! its own access, user and expiry, and its own [`HocuspocusSink`] (framing: the document name,
//! then the message). The socket itself is one [`Peer`]: one read loop, one outbound queue, one
//! keep-alive, shared by its documents.
//!
//! A document's life on the socket:
//!
//! 1. **Waiting.** Its first message opens it (at most `max_documents_per_socket`). Messages
//!    other than Auth are queued (`max_pre_auth_messages` per document, `max_pre_auth_bytes`
//!    per socket; over ⇒ the socket is closed with 1008 and the provider reconnects and
//!    resyncs). The Auth/Token message starts authorization with the same `Authorize` rules
//!    as an upgrade, for room (`[hocuspocus] party`, document name; provider 4.x with
//!    `sessionAwareness` names `document\0session`, and the room is the part before the NUL).
//!    A first message that is not Auth starts it without a token: provider 2.x sends no Auth
//!    message when it has no token (3.x and 4.x always send one, first).
//! 2. **Joined.** Authenticated (scope `read-write` or `readonly`) is sent, then the member
//!    joins its room (whose greeting is our sync step 1 and the awareness states), then the
//!    queue is replayed in order. Each document update is answered with one SyncStatus after
//!    the room's durable append (`Out::Applied`), or SyncStatus 0 for a read-only member
//!    (`Out::Rejected`: nothing stored or relayed).
//! 3. **Denied.** PermissionDenied with the reason; the queue is dropped, and so is what still
//!    comes for the document, until a new Auth message tries again. The socket stays open.
//!
//! Ends: the client's CLOSE ends that document's member only. A room that ends a member for the
//! member's own reasons (token expired, an update refused, an admin close) sends PermissionDenied
//! with the reason for that document (not CLOSE: provider 2.x throws on CLOSE, fatally in Node;
//! every version handles PermissionDenied) and the document is denied until a new Auth message;
//! the socket and its other documents carry on. When the cause is not the document's
//! (server shutting down 1001, room failure 1011, the socket reading too slowly 1013) the whole
//! socket is closed with that code, since only a new socket makes the provider resync.
//! Socket-level faults close the socket: bad WebSocket framing or a frame that does not decode
//! (1002), text frames (1003), frames over `max_message_bytes` (1009), quotas (1008). A socket
//! that has authenticated no document `handshake_timeout_secs` after it opened is closed with
//! 4401, one silent past `idle_timeout_secs` with 4408 (Hocuspocus' codes). 4403 is never sent:
//! a refused document gets PermissionDenied and the socket stays open.
//!
//! Keep-alive: the provider reconnects after 30 s without any message, and WebSocket pings are
//! invisible to browser code, so every ping round (at most 15 s apart) sends one WebSocket ping
//! (its pong proves the client alive; silent sockets are closed after `idle_timeout_secs`) and one
//! message every provider version ignores: SyncStatus 0 for the document named "" (2.x–4.x look
//! a frame's document up by name and do nothing for unknown ones; SyncStatus 0 changes nothing
//! even for a provider that has that name). Once per socket, not per document.
//!
//! Stateless messages (type 5) are for server-side hooks in Hocuspocus; Ripple has none, so they
//! are dropped (counted in the debug log). Provider 4.x pings (the byte 9) get a pong (10).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use ripple_core::room::Access;
use ripple_core::RoomKey;
use ripple_proto::hocuspocus::{self as hp, Frame, HpMessage, Scope};
use ripple_proto::ws::{self, Event};
use ripple_proto::{Message, SyncMessage};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::auth::TokenRequest;
use crate::closer::code;
use crate::connection::{self, finish, next_member_id, Ended, Input, ReadError, Reader};
use crate::member::{heard_by, Close, Framing, MemberId, Sink, SinkInfo};
use crate::peer::{now_ms, OutFrame, Peer, QueueLimits, Wake};
use crate::quota::{Buckets, Rates};
use crate::registry::RoomHandle;
use crate::room::RoomMsg;
use crate::stats::{inc, ConnSlot};
use crate::ServerCtx;

/// Close code: the socket authenticated nothing in time (Hocuspocus' `Unauthorized`).
pub(crate) const UNAUTHORIZED: u16 = 4401;
/// Close code: the client was silent past `idle_timeout_secs` (Hocuspocus' `ConnectionTimeout`).
pub(crate) const CONNECTION_TIMEOUT: u16 = 4408;
/// The provider reconnects after 30 s without a message; rounds are at most this far apart.
const MAX_KEEPALIVE: Duration = Duration::from_secs(15);
/// The keep-alive message: SyncStatus 0 for document "".
const KEEPALIVE: &[u8] = &[0, hp::SYNC_STATUS as u8, 0];

/// The room id of a document name: the name with every byte outside the room-id alphabet (and
/// `%` itself) percent-encoded, so a y-websocket client reaches the same room at the URL whose
/// path segment is the name, URL-encoded ("a b" ⇔ `/a%20b`).
pub(crate) fn room_id(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the sinks of one socket tell its task.
#[derive(Debug, Default)]
struct Shared {
    /// Members their room ended (the sink already told the client).
    ended: Mutex<Vec<MemberId>>,
    wake: Notify,
}

/// One document on a Hocuspocus socket, as its room sees it.
#[derive(Debug)]
pub(crate) struct HocuspocusSink {
    id: MemberId,
    peer: Arc<Peer>,
    limits: QueueLimits,
    framing: Framing,
    /// The membership ended: what the room still sends is discarded.
    ended: AtomicBool,
    shared: Arc<Shared>,
}

impl Sink for HocuspocusSink {
    fn framing(&self) -> &Framing {
        &self.framing
    }

    fn send(&self, frames: &[OutFrame]) -> bool {
        self.ended.load(Ordering::Acquire) || self.peer.send(frames, self.limits)
    }

    fn direct(&self) -> Option<(&Peer, QueueLimits)> {
        // An ended document's frames are discarded (`send`).
        (!self.ended.load(Ordering::Acquire)).then_some((&*self.peer, self.limits))
    }

    fn close(&self, close: Close) {
        if matches!(
            close.code,
            code::GOING_AWAY | code::INTERNAL_ERROR | code::TRY_AGAIN_LATER
        ) {
            // Not this document's doing: a new socket is how the provider resyncs.
            self.peer.close(close.code, &close.reason);
            return;
        }
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let Framing::Hocuspocus { name, .. } = &self.framing else {
            return;
        };
        // PermissionDenied, not CLOSE: provider 2.x throws on a CLOSE message (an uncaught
        // exception in its socket's message handler, fatal in Node), while every version
        // handles PermissionDenied (authenticationFailed fires with the reason).
        let frame = hp::encode(name, &HpMessage::PermissionDenied(close.reason));
        if !self.peer.send(&[OutFrame::binary(frame)], self.limits) {
            self.peer
                .close(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL);
        }
        lock(&self.shared.ended).push(self.id);
        self.shared.wake.notify_one();
    }

    fn describe(&self) -> SinkInfo {
        SinkInfo {
            protocol: "hocuspocus",
            remote: self.peer.remote(),
            queued_bytes: self.peer.queued_bytes(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the upgrade knew about the client.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) ip: Option<IpAddr>,
    pub(crate) origin: Option<String>,
}

/// Phase one (short-lived task): completes the upgrade and starts the socket's task.
pub(crate) async fn accept(
    on_upgrade: OnUpgrade,
    client: Client,
    slot: ConnSlot,
    ctx: Arc<ServerCtx>,
) {
    let parts = match on_upgrade.await.map(|u| u.downcast::<TokioIo<TcpStream>>()) {
        Ok(Ok(parts)) => parts,
        Ok(Err(_)) => return debug!("upgraded connection is not a TCP stream"),
        Err(e) => return debug!(error = %e, "upgrade failed"),
    };
    inc(&ctx.stats.connections_total);
    let peer = Arc::new(Peer::new(next_member_id(), parts.io.into_inner()));
    let reader = Reader::new(ctx.config.max_message_bytes, parts.read_buf);
    let socket = Socket {
        limits: QueueLimits::of(&ctx.config),
        buckets: Buckets::new(&Rates::of(&ctx.config), now_ms()),
        deadline: Some(Instant::now() + ctx.config.handshake_timeout()),
        peer,
        reader,
        ctx,
        client,
        docs: HashMap::new(),
        queued_bytes: 0,
        auth_attempts: 0,
        deciding: FuturesUnordered::new(),
        shared: Arc::new(Shared::default()),
        _slot: slot,
    };
    let tracker = socket.ctx.tracker.clone();
    tracker.spawn(socket.run());
}

/// A document's state on its socket.
enum Doc {
    /// Not joined yet: its messages wait (`authorizing`: its Auth message is being decided).
    Waiting {
        queue: VecDeque<Message>,
        since: Instant,
        authorizing: bool,
        /// The client closed it while it was being decided.
        cancelled: bool,
    },
    Joined {
        id: MemberId,
        room: RoomHandle,
    },
    Denied,
}

/// How deciding a document's Auth message ended.
enum Decision {
    Joined { id: MemberId, room: RoomHandle },
    Denied(String),
}

type Deciding = Pin<Box<dyn Future<Output = (Arc<str>, Decision)> + Send>>;

struct Socket {
    peer: Arc<Peer>,
    reader: Reader,
    ctx: Arc<ServerCtx>,
    client: Client,
    limits: QueueLimits,
    /// The socket's quotas, shared by its documents.
    buckets: Buckets,
    docs: HashMap<Arc<str>, Doc>,
    /// Bytes of document messages queued before their auth was decided.
    queued_bytes: usize,
    /// Auth messages acted on (bounded: each may cost a webhook call).
    auth_attempts: usize,
    /// Auth decisions (and joins) in flight.
    deciding: FuturesUnordered<Deciding>,
    /// Until a document is authenticated: when the socket is closed for authenticating nothing.
    deadline: Option<Instant>,
    shared: Arc<Shared>,
    _slot: ConnSlot,
}

/// A socket-level fault: close the socket with this code and reason.
struct Fault(u16, String);

impl Socket {
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let ended = self.read_loop().await;
            for doc in std::mem::take(&mut self.docs).into_values() {
                if let Doc::Joined { id, room, .. } = doc {
                    let _ = room.tx.send(RoomMsg::Leave { conn: id }).await;
                }
            }
            Box::pin(finish(&self.peer, &mut self.reader, ended)).await;
            // Decisions still in flight may join: let them end (auth has its own timeouts),
            // then leave.
            while let Some((_, decision)) = self.deciding.next().await {
                if let Decision::Joined { id, room, .. } = decision {
                    let _ = room.tx.send(RoomMsg::Leave { conn: id }).await;
                }
            }
        }
    }

    fn keepalive_interval(&self) -> Duration {
        self.ctx.config.ping_interval().min(MAX_KEEPALIVE)
    }

    async fn read_loop(&mut self) -> Ended {
        let peer = self.peer.clone();
        let shared = self.shared.clone();
        // Rooms close their members at shutdown; a socket with no document must hear it too.
        let shutdown = self.ctx.shutdown.clone();
        let mut step = if self.reader.has_input() {
            Some(Wake::Readable)
        } else {
            None
        };
        let mut next_ping = Instant::now() + self.keepalive_interval();
        loop {
            if let Some(wake) = step.take() {
                match wake {
                    Wake::Close => return Ended::ByUs,
                    Wake::Failed => return Ended::SocketGone,
                    Wake::Writable => {
                        if peer.write_queued().is_err() {
                            return Ended::SocketGone;
                        }
                    }
                    Wake::Readable => {
                        if let Some(end) = self.read().await {
                            return end;
                        }
                    }
                }
            }
            let timer = self.next_timer(next_ping);
            tokio::select! {
                wake = std::future::poll_fn(|cx| peer.poll_next(cx)) => step = Some(wake),
                Some((name, decision)) = self.deciding.next(), if !self.deciding.is_empty() => {
                    if let Err(Fault(code, reason)) = self.decided(name, decision).await {
                        peer.close(code, &reason);
                    }
                }
                _ = shared.wake.notified() => self.reap_ended().await,
                _ = shutdown.cancelled() => peer.close(code::GOING_AWAY, "server shutting down"),
                _ = tokio::time::sleep_until(timer) => {
                    let now = Instant::now();
                    if now >= next_ping {
                        self.keepalive();
                        next_ping = now + self.keepalive_interval();
                    }
                    self.check_deadlines(now);
                }
            }
        }
    }

    /// The earliest of the next keep-alive, the pre-auth deadline and the oldest waiting
    /// document's deadline.
    fn next_timer(&self, next_ping: Instant) -> Instant {
        let mut at = next_ping;
        // While a decision is in flight the deadline waits for it (the loop comes back here
        // when it ends).
        if let (Some(d), true) = (self.deadline, self.deciding.is_empty()) {
            at = at.min(d);
        }
        let wait = self.ctx.config.handshake_timeout();
        for doc in self.docs.values() {
            if let Doc::Waiting {
                since,
                authorizing: false,
                ..
            } = doc
            {
                at = at.min(*since + wait);
            }
        }
        at
    }

    fn keepalive(&self) {
        let heard_by = heard_by(self.ctx.config.idle_timeout().as_millis() as u64);
        if self.peer.last_heard() < heard_by {
            self.peer.close(
                CONNECTION_TIMEOUT,
                "Connection Timeout: no message or pong within the idle timeout",
            );
            return;
        }
        let frames = [
            OutFrame::new(ws::opcode::PING, Bytes::new()),
            OutFrame::binary(Bytes::from_static(KEEPALIVE)),
        ];
        if !self.peer.send(&frames, self.limits) {
            self.peer
                .close(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL);
        }
    }

    /// Closes a socket that authenticated nothing in time, and forgets documents that sent
    /// messages but never an Auth message within the same time.
    fn check_deadlines(&mut self, now: Instant) {
        if let Some(d) = self.deadline {
            if now >= d && self.deciding.is_empty() {
                let secs = self.ctx.config.handshake_timeout().as_secs_f64();
                debug!(
                    conn = self.peer.id,
                    "closing a Hocuspocus socket that authenticated nothing"
                );
                self.peer.close(
                    UNAUTHORIZED,
                    &format!("Unauthorized: no document authenticated within {secs} s"),
                );
                return;
            }
        }
        let wait = self.ctx.config.handshake_timeout();
        let mut freed = 0;
        self.docs.retain(|_, doc| match doc {
            Doc::Waiting {
                since,
                authorizing: false,
                queue,
                ..
            } if *since + wait <= now => {
                freed += queue.iter().map(message_bytes).sum::<usize>();
                false
            }
            _ => true,
        });
        self.queued_bytes -= freed;
    }

    /// Members their room ended: they become denied (the sink told the client) and the room
    /// is sure to have let them go.
    async fn reap_ended(&mut self) {
        let ended = std::mem::take(&mut *lock(&self.shared.ended));
        let mut gone = Vec::new();
        for doc in self.docs.values_mut() {
            if let Doc::Joined { id, room } = doc {
                if ended.contains(id) {
                    gone.push((*id, room.clone()));
                    // What still comes for it is dropped; a new Auth message may try again.
                    *doc = Doc::Denied;
                }
            }
        }
        for (id, room) in gone {
            let _ = room.tx.send(RoomMsg::Leave { conn: id }).await;
        }
    }

    /// Reads what the socket has and handles it. Returns how the socket ends, if it does.
    async fn read(&mut self) -> Option<Ended> {
        let mut events = Vec::new();
        let mut end = match self.reader.read(&self.peer, &mut events) {
            Ok(Input::Open) => None,
            Ok(Input::Eof) | Err(ReadError::Io(_)) => Some(Ended::SocketGone),
            Err(ReadError::Protocol(e)) => {
                self.fault(Fault(e.close_code(), e.to_string()));
                Some(Ended::ByUs)
            }
        };
        for event in events {
            let result = match event {
                Event::Binary(bytes) => match Frame::decode(bytes) {
                    Ok(frame) => self.handle(frame).await,
                    Err(e) => Err(Fault(
                        code::PROTOCOL_ERROR,
                        format!("bad Hocuspocus frame: {e}"),
                    )),
                },
                Event::Text(_) => Err(Fault(
                    code::UNSUPPORTED_DATA,
                    "Hocuspocus frames are binary".into(),
                )),
                Event::Ping(payload) => {
                    let pong = [OutFrame::new(ws::opcode::PONG, payload)];
                    if self.peer.send(&pong, self.limits) {
                        Ok(())
                    } else {
                        Err(Fault(
                            code::TRY_AGAIN_LATER,
                            crate::closer::QUEUE_FULL.into(),
                        ))
                    }
                }
                Event::Pong => Ok(()),
                Event::Close(close) => {
                    end = Some(Ended::ClientClosed(close.map(|(c, _)| c)));
                    break;
                }
            };
            if let Err(fault) = result {
                self.fault(fault);
                return Some(Ended::ByUs);
            }
        }
        end
    }

    fn fault(&self, Fault(code, reason): Fault) {
        if code != code::POLICY_VIOLATION {
            inc(&self.ctx.stats.protocol_errors);
        }
        warn!(
            conn = self.peer.id,
            code,
            error = reason,
            "closing Hocuspocus socket"
        );
        self.peer.close(code, &reason);
    }

    /// Handles one frame from the client.
    async fn handle(&mut self, frame: Frame) -> Result<(), Fault> {
        let (name, message) = match frame {
            Frame::Ping => {
                let pong = [OutFrame::binary(Frame::Pong.encode())];
                if !self.peer.send(&pong, self.limits) {
                    return Err(Fault(
                        code::TRY_AGAIN_LATER,
                        crate::closer::QUEUE_FULL.into(),
                    ));
                }
                return Ok(());
            }
            Frame::Pong => return Ok(()),
            Frame::Doc { name, message } => (name, message),
        };
        if let HpMessage::Doc(msg) = &message {
            let rates = Rates::of(&self.ctx.config);
            if let Err(limit) = self.buckets.admit(&rates, msg, now_ms()) {
                if let Some(i) = crate::quota::Limit::ALL.iter().position(|l| *l == limit) {
                    inc(&self.ctx.stats.rate_limit_closes[i]);
                }
                return Err(Fault(code::POLICY_VIOLATION, limit.reason(&rates)));
            }
        }
        let name: Arc<str> = name.into();
        if !self.docs.contains_key(&name) {
            if !opens_document(&message) {
                // A reply to something we sent a closed document, or noise: nothing to do.
                return Ok(());
            }
            let max = self.ctx.config.hocuspocus.max_documents_per_socket;
            if self.docs.len() >= max {
                return Err(Fault(
                    code::POLICY_VIOLATION,
                    format!("more than {max} documents on one socket"),
                ));
            }
            self.docs.insert(
                name.clone(),
                Doc::Waiting {
                    queue: VecDeque::new(),
                    since: Instant::now(),
                    authorizing: false,
                    cancelled: false,
                },
            );
            if !matches!(message, HpMessage::Token(_)) {
                // Provider 2.x sends no Auth message when it has no token: its first message
                // asks for the document without one (denied unless the rules admit that).
                self.authorize(name.clone(), String::new())?;
            }
        }
        let max_messages = self.ctx.config.hocuspocus.max_pre_auth_messages;
        let max_bytes = self.ctx.config.hocuspocus.max_pre_auth_bytes;
        let Some(doc) = self.docs.get_mut(&name) else {
            return Ok(());
        };
        match (doc, message) {
            (Doc::Joined { id, room, .. }, HpMessage::Doc(msg)) => {
                let (id, room) = (*id, room.clone());
                if room
                    .tx
                    .send(RoomMsg::Frame { conn: id, msg })
                    .await
                    .is_err()
                {
                    // The room is gone: like a room failure, only a new socket resyncs.
                    return Err(Fault(code::INTERNAL_ERROR, "room closed".into()));
                }
            }
            (Doc::Joined { id, room, .. }, HpMessage::Close(_)) => {
                let (id, room) = (*id, room.clone());
                self.docs.remove(&name);
                let _ = room.tx.send(RoomMsg::Leave { conn: id }).await;
            }
            (Doc::Waiting { queue, .. }, HpMessage::Doc(msg)) => {
                let bytes = message_bytes(&msg);
                if queue.len() >= max_messages {
                    return Err(Fault(
                        code::POLICY_VIOLATION,
                        format!("more than {max_messages} messages for a document before its authentication"),
                    ));
                }
                if self.queued_bytes + bytes > max_bytes {
                    return Err(Fault(
                        code::POLICY_VIOLATION,
                        format!("more than {max_bytes} bytes queued before authentication"),
                    ));
                }
                self.queued_bytes += bytes;
                queue.push_back(msg);
            }
            (
                Doc::Waiting {
                    authorizing: false, ..
                }
                | Doc::Denied,
                HpMessage::Token(token),
            ) => self.authorize(name, token)?,
            (
                Doc::Waiting {
                    authorizing: true,
                    cancelled,
                    ..
                },
                HpMessage::Close(_),
            ) => *cancelled = true,
            (Doc::Waiting { queue, .. }, HpMessage::Close(_)) => {
                let freed: usize = queue.iter().map(message_bytes).sum();
                self.queued_bytes -= freed;
                self.docs.remove(&name);
            }
            (Doc::Denied, HpMessage::Close(_)) => {
                self.docs.remove(&name);
            }
            (_, HpMessage::Stateless(_) | HpMessage::BroadcastStateless(_)) => {
                debug!(
                    conn = self.peer.id,
                    "dropping a Stateless message (no server hooks)"
                );
            }
            // Auth while joined or being decided; a denied document's messages; what only a
            // server sends. Nothing to do.
            _ => {}
        }
        Ok(())
    }

    /// Starts deciding document `name`'s Auth message.
    fn authorize(&mut self, name: Arc<str>, token: String) -> Result<(), Fault> {
        let max = 2 * self.ctx.config.hocuspocus.max_documents_per_socket;
        self.auth_attempts += 1;
        if self.auth_attempts > max {
            return Err(Fault(
                code::POLICY_VIOLATION,
                format!("more than {max} authentication attempts on one socket"),
            ));
        }
        match self.docs.get_mut(&name) {
            Some(Doc::Waiting { authorizing, .. }) => *authorizing = true,
            Some(doc @ Doc::Denied) => {
                *doc = Doc::Waiting {
                    queue: VecDeque::new(),
                    since: Instant::now(),
                    authorizing: true,
                    cancelled: false,
                }
            }
            _ => return Ok(()),
        }
        let ctx = self.ctx.clone();
        let peer = self.peer.clone();
        let shared = self.shared.clone();
        let client = self.client.clone();
        let limits = self.limits;
        self.deciding.push(Box::pin(async move {
            let decision = decide(&ctx, &peer, shared, &client, limits, &name, &token).await;
            (name, decision)
        }));
        Ok(())
    }

    /// A document's Auth message was decided (and, if admitted, its member joined).
    async fn decided(&mut self, name: Arc<str>, decision: Decision) -> Result<(), Fault> {
        let Some(Doc::Waiting {
            queue, cancelled, ..
        }) = self.docs.get_mut(&name)
        else {
            // Cannot happen (only deciding documents wait for a decision); leave if joined.
            if let Decision::Joined { id, room, .. } = decision {
                let _ = room.tx.send(RoomMsg::Leave { conn: id }).await;
            }
            return Ok(());
        };
        let queue = std::mem::take(queue);
        let cancelled = *cancelled;
        self.queued_bytes -= queue.iter().map(message_bytes).sum::<usize>();
        match decision {
            Decision::Joined { id, room } => {
                self.deadline = None;
                if cancelled {
                    self.docs.remove(&name);
                    let _ = room.tx.send(RoomMsg::Leave { conn: id }).await;
                    return Ok(());
                }
                self.docs.insert(
                    name,
                    Doc::Joined {
                        id,
                        room: room.clone(),
                    },
                );
                for msg in queue {
                    if room
                        .tx
                        .send(RoomMsg::Frame { conn: id, msg })
                        .await
                        .is_err()
                    {
                        return Err(Fault(code::INTERNAL_ERROR, "room closed".into()));
                    }
                }
            }
            Decision::Denied(reason) => {
                if cancelled {
                    self.docs.remove(&name);
                } else {
                    self.docs.insert(name, Doc::Denied);
                }
                debug!(conn = self.peer.id, reason, "Hocuspocus document denied");
            }
        }
        Ok(())
    }
}

/// Whether a message for a document the socket does not have opens it: Auth does, and so do the
/// sync and awareness messages a provider sends right after it without waiting (they are
/// queued). Anything else for an unknown document is dropped.
fn opens_document(message: &HpMessage) -> bool {
    matches!(message, HpMessage::Token(_) | HpMessage::Doc(_))
}

/// What a queued message costs against `max_pre_auth_bytes`.
fn message_bytes(msg: &Message) -> usize {
    match msg {
        Message::Sync(SyncMessage::Step1(b) | SyncMessage::Step2(b) | SyncMessage::Update(b))
        | Message::Awareness(b) => b.len() + 8,
        _ => 8,
    }
}

/// Authorizes document `name` with `token`, tells the client, and joins the room.
async fn decide(
    ctx: &ServerCtx,
    peer: &Arc<Peer>,
    shared: Arc<Shared>,
    client: &Client,
    limits: QueueLimits,
    name: &str,
    token: &str,
) -> Decision {
    let denied = |reason: String| {
        let frame = hp::encode(name, &HpMessage::PermissionDenied(reason.clone()));
        if !peer.send(&[OutFrame::binary(frame)], limits) {
            peer.close(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL);
        }
        Decision::Denied(reason)
    };
    let party = &ctx.config.hocuspocus.party;
    // Provider 4.x with `sessionAwareness` sends `name\0session` as the name: the room is the
    // document; replies keep the whole key (the provider routes by it).
    let document = name.split('\0').next().unwrap_or(name);
    let key = match RoomKey::new(party, &room_id(document), ctx.config.max_room_id_len) {
        Ok(key) => key,
        Err(e) => return denied(format!("bad document name: {e}")),
    };
    if let Some(ip) = client.ip {
        if ctx.throttle.check(ip, now_ms()).is_err() {
            inc(&ctx.stats.auth_throttled);
            return denied("too many failed auth attempts from this address".into());
        }
    }
    let req = TokenRequest {
        key: &key,
        token: Some(token).filter(|t| !t.is_empty()),
        origin: client.origin.as_deref(),
        remote_addr: client.ip,
    };
    let admission = match ctx.auth.authorize_token(&req).await {
        Ok(admission) => admission,
        Err(rejection) => {
            if let (Some(ip), 401 | 403) = (client.ip, rejection.status.as_u16()) {
                ctx.throttle.failed(ip, now_ms());
            }
            return denied(rejection.reason);
        }
    };
    let scope = match admission.access {
        Access::ReadWrite => Scope::ReadWrite,
        Access::ReadOnly => Scope::ReadOnly,
    };
    // Before the join: the room's greeting (its step 1, awareness) follows it on the socket.
    let frame = hp::encode(name, &HpMessage::Authenticated(scope.as_str().into()));
    if !peer.send(&[OutFrame::binary(frame)], limits) {
        peer.close(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL);
    }
    let id = next_member_id();
    let sink = Arc::new(HocuspocusSink {
        id,
        peer: peer.clone(),
        limits,
        framing: Framing::Hocuspocus {
            name: name.into(),
            prefix: hp::prefix(name),
        },
        ended: AtomicBool::new(false),
        shared,
    });
    let expires = admission
        .expires_at
        .filter(|_| ctx.config.auth.close_on_expiry)
        .and_then(connection::deadline);
    let user = admission.user.map(Into::into);
    match connection::join(ctx, &key, id, sink, admission.access, user, expires).await {
        Ok(room) => Decision::Joined { id, room },
        Err(e) => denied(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_names_map_to_url_encoded_room_ids() {
        assert_eq!(room_id("doc-1"), "doc-1");
        assert_eq!(room_id("a b"), "a%20b");
        assert_eq!(room_id("50%"), "50%25");
        assert_eq!(room_id("team/notes"), "team%2Fnotes");
        assert_eq!(room_id("café"), "caf%C3%A9");
    }
}
