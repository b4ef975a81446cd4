//! Several nodes, one owner per room: forwarding. A node whose room is owned by another node
//! (the lease says so) does not refuse that room's clients; it forwards them to the owner over
//! one authenticated link per node pair (`ripple_proto::link`: many streams, one per
//! forwarded client).
//!
//! - **Forwarding side**: the room's actor slot in the registry runs [`proxy`] instead of a
//!   room. Its members are the local clients; each gets a stream on the link to the owner.
//!   What a client sends goes up its stream; what the owner sends comes down and is framed for
//!   the client's protocol here. The proxy has no document and stores nothing.
//! - **Owning side**: [`serve_link`] accepts a link at `/_ripple/link` (the cluster secret as
//!   a bearer token) and joins each stream to the room as a member whose [`Sink`] writes to
//!   the link ([`LinkSink`]). The room treats it like any member: it appends before it sends
//!   anything, so "durable before visible" holds across nodes.
//! - A link that breaks (the owner died, the network cut it, it went silent) closes every
//!   client it carried (1011); they reconnect and resync, against a new owner once the old
//!   lease has lapsed. Nothing diverges silently.
//!
//! Nodes find each other through the store: each advertises its URL at start
//! ([`ripple_core::Store::advertise`]) and the lease names the owner.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use ripple_core::room::Access;
use ripple_core::{RoomKey, Store};
use ripple_proto::link::{LinkFrame, Notice, StreamId};
use ripple_proto::ws::opcode;
use ripple_proto::Message;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::closer::code;
use crate::member::{heard_by, Close, Framing, Member, MemberId, Out, Sink, SinkInfo};
use crate::peer::OutFrame;
use crate::registry::RoomHandle;
use crate::room::{JoinError, RoomEnv, RoomMsg};
use crate::stats::{inc, Stats};
use crate::ServerCtx;

/// The path links connect to.
pub(crate) const LINK_PATH: &str = "/_ripple/link";
/// The header naming the connecting node.
const NODE_HEADER: &str = "x-ripple-node";
/// Link frames waiting to be written, per link (a full queue ends the member that overflowed
/// it on the owning side, or waits on the forwarding side).
const LINK_QUEUE: usize = 8192;
/// Frames from the owner waiting for one proxy.
const PROXY_QUEUE: usize = 4096;
/// A link pings this often...
const LINK_PING: Duration = Duration::from_secs(2);
/// ...and is dead after this long without anything from the other side.
const LINK_SILENCE: Duration = Duration::from_secs(6);
/// Connecting a link may take this long.
const LINK_CONNECT: Duration = Duration::from_secs(3);
/// Largest link frame accepted (a forwarded message plus its header).
const MAX_LINK_FRAME: usize = 64 << 20;
/// Streams waiting for their room to join may queue this many messages each.
const MAX_PENDING_MESSAGES: usize = 1024;
/// An empty proxy retires after this long.
const PROXY_LINGER: Duration = Duration::from_secs(1);

/// This node's part in a cluster: its links to other nodes.
pub(crate) struct Cluster {
    node_id: Arc<str>,
    secret: String,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    shutdown: CancellationToken,
}

impl Cluster {
    /// The cluster part of a node, when it has one: a shared store and a cluster secret.
    pub(crate) fn new(
        node_id: Arc<str>,
        secret: &str,
        store: Arc<dyn Store>,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> Option<Arc<Self>> {
        if secret.is_empty() || !store.shared() {
            return None;
        }
        Some(Arc::new(Self {
            node_id,
            secret: secret.to_owned(),
            store,
            stats,
            links: Mutex::new(HashMap::new()),
            shutdown,
        }))
    }

    /// Whether `authorization` carries the cluster secret (compared in constant time).
    pub(crate) fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let want = self.secret.as_bytes();
        given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The link to `node`, connecting it if there is none (or the last one broke).
    async fn link_to(self: &Arc<Self>, node: &str) -> Result<Arc<Link>, LinkError> {
        if let Some(link) = self.lock().get(node) {
            if !link.broken.is_cancelled() {
                return Ok(link.clone());
            }
        }
        let url = self
            .store
            .node_url(node)
            .await
            .map_err(|e| LinkError::other(format!("looking up node {node}: {e}")))?
            .ok_or_else(|| LinkError::other(format!("node {node} has not advertised a URL")))?;
        let link = tokio::time::timeout(LINK_CONNECT, self.connect(node, &url))
            .await
            .map_err(|_| LinkError::other(format!("connecting to {node} at {url} timed out")))??;
        self.lock().insert(node.to_owned(), link.clone());
        Ok(link)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Link>>> {
        // Every update of the map is a single insert or lookup: a poisoned lock is still sound.
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn connect(self: &Arc<Self>, node: &str, url: &str) -> Result<Arc<Link>, LinkError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let target = format!("{}{LINK_PATH}", url.trim_end_matches('/'));
        let mut request = target
            .as_str()
            .into_client_request()
            .map_err(|e| LinkError::other(format!("bad advertised URL {url}: {e}")))?;
        let headers = request.headers_mut();
        let bearer = format!("Bearer {}", self.secret);
        headers.insert(
            hyper::header::AUTHORIZATION,
            bearer.parse().map_err(|_| {
                LinkError::other("the cluster secret is not a valid header value".into())
            })?,
        );
        headers.insert(
            NODE_HEADER,
            self.node_id
                .parse()
                .map_err(|_| LinkError::other("the node id is not a valid header value".into()))?,
        );
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true)
                .await
                .map_err(|e| LinkError {
                    refused: matches!(&e, tokio_tungstenite::tungstenite::Error::Io(io)
                        if io.kind() == std::io::ErrorKind::ConnectionRefused),
                    message: format!("connecting to {node} at {url}: {e}"),
                })?;
        let (out_tx, out_rx) = mpsc::channel(LINK_QUEUE);
        let link = Arc::new(Link {
            peer: node.to_owned(),
            out: out_tx,
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            broken: CancellationToken::new(),
        });
        inc(&self.stats.links_opened);
        info!(node, url, "cluster link open");
        tokio::spawn(run_forwarding_link(
            ws,
            out_rx,
            link.clone(),
            self.shutdown.clone(),
            self.stats.clone(),
        ));
        Ok(link)
    }
}

/// Why a link could not be made.
#[derive(Debug)]
struct LinkError {
    /// The node's address refused the connection: nothing listens there (the process is gone,
    /// the host is up).
    refused: bool,
    message: String,
}

impl LinkError {
    fn other(message: String) -> Self {
        Self {
            refused: false,
            message,
        }
    }
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How a proxy ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProxyEnd {
    /// Its work is done (it emptied, its link broke, the server is shutting down).
    Done,
    /// The owner is dead (its address refuses connections) and its leases were ended: the
    /// room's slot may try to take the room at once. Nothing was taken from the inbox.
    OwnerDead,
}

/// Microseconds on a monotonic clock of this process.
fn now_us() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_LINK_FRAME))
        .max_frame_size(Some(MAX_LINK_FRAME))
}

/// A link from this node to a room's owner, as the proxies see it.
pub(crate) struct Link {
    peer: String,
    out: mpsc::Sender<Bytes>,
    /// Where the owner's frames for each stream go.
    streams: Mutex<HashMap<StreamId, Route>>,
    next_stream: AtomicU64,
    /// Cancelled when the link is dead: every stream on it is over.
    broken: CancellationToken,
}

impl Link {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Route>> {
        // Single inserts, removals and lookups: a poisoned lock is still sound.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new stream for the client behind `sink`: the owner's messages go straight to its sink,
    /// its closes to the proxy `to`.
    fn open(&self, sink: Arc<dyn Sink>, to: mpsc::Sender<LinkFrame>) -> StreamId {
        let stream = self.next_stream.fetch_add(1, Relaxed);
        self.streams().insert(stream, Route { sink, proxy: to });
        stream
    }

    fn forget(&self, stream: StreamId) {
        self.streams().remove(&stream);
    }

    /// Queues a frame for the owner; false if the link is gone.
    async fn send(&self, frame: LinkFrame) -> bool {
        if self.broken.is_cancelled() {
            return false;
        }
        self.out.send(frame.encode()).await.is_ok()
    }
}

/// Where one stream's frames from the owner go on the forwarding node.
struct Route {
    /// The client's sink: messages and notices are framed and sent here by the link's reader
    /// itself, with no hop through the proxy task (a delivery costs no task wake-up).
    sink: Arc<dyn Sink>,
    /// The proxy: closes, and a client that cannot keep up.
    proxy: mpsc::Sender<LinkFrame>,
}

/// The forwarding side of a link: writes queued frames and pings; reads the owner's frames and
/// delivers them to the clients (closes through their proxies). Ends (and marks the link broken) on any error or silence.
async fn run_forwarding_link(
    ws: WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    mut out_rx: mpsc::Receiver<Bytes>,
    link: Arc<Link>,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) {
    let (mut write, mut read) = ws.split();
    let writer = async {
        let mut ping = tokio::time::interval(LINK_PING);
        loop {
            let msg = tokio::select! {
                frame = out_rx.recv() => match frame {
                    Some(frame) => WsMessage::Binary(frame),
                    None => break,
                },
                // The ping carries when it was sent; its pong gives the link's round trip.
                _ = ping.tick() => WsMessage::Ping(Bytes::copy_from_slice(&now_us().to_be_bytes())),
                _ = link.broken.cancelled() => break,
            };
            if write.send(msg).await.is_err() {
                break;
            }
        }
        let _ = write.close().await;
    };
    let reader = async {
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(LINK_SILENCE, read.next()) => next,
                _ = shutdown.cancelled() => break,
            };
            let bytes = match next {
                Ok(Some(Ok(WsMessage::Binary(bytes)))) => bytes,
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                Ok(Some(Ok(WsMessage::Pong(payload)))) => {
                    if let Ok(sent) = <[u8; 8]>::try_from(payload.as_ref()) {
                        let rtt = now_us().saturating_sub(u64::from_be_bytes(sent));
                        stats.link_rtt_us.store(rtt, Relaxed);
                    }
                    continue;
                }
                Ok(Some(Ok(_))) => continue, // pings (answered by tungstenite)
                Err(_) => {
                    warn!(node = %link.peer, "cluster link silent; closing it");
                    break;
                }
            };
            let frame = match LinkFrame::decode(bytes) {
                Ok(frame) => frame,
                Err(e) => {
                    warn!(node = %link.peer, error = %e, "bad frame on a cluster link; closing it");
                    break;
                }
            };
            let stream = frame.stream();
            let out = match &frame {
                LinkFrame::Out { body, .. } => Some(Out::Doc(body.clone())),
                LinkFrame::Notice {
                    notice: Notice::ReadOnly,
                    ..
                } => Some(Out::ReadOnly),
                LinkFrame::Notice {
                    notice: Notice::Applied,
                    ..
                } => Some(Out::Applied),
                LinkFrame::Notice {
                    notice: Notice::Rejected,
                    ..
                } => Some(Out::Rejected),
                _ => None,
            };
            let to = {
                let streams = link.streams();
                let Some(route) = streams.get(&stream) else {
                    continue;
                };
                if let Some(out) = &out {
                    let delivered = match route.sink.framing().frame(out) {
                        Some(f) => route.sink.send(&[f]),
                        None => true,
                    };
                    if delivered {
                        continue;
                    }
                }
                route.proxy.clone()
            };
            let frame = match out {
                // Its queue is full: the proxy ends it (it reconnects and resyncs).
                Some(_) => LinkFrame::Close {
                    stream,
                    code: code::TRY_AGAIN_LATER,
                    reason: crate::closer::QUEUE_FULL.to_owned(),
                },
                None => frame,
            };
            // Waits when the proxy is behind: the link pushes back on the owner.
            let _ = to.send(frame).await;
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    link.broken.cancel();
    info!(node = %link.peer, "cluster link closed");
}

/// Runs a room's slot on a node that does not own the room: forwards its clients to `owner`.
/// Returns when it has been empty a moment, when the link breaks, or at shutdown.
pub(crate) async fn proxy(
    key: RoomKey,
    owner: String,
    env: Arc<RoomEnv>,
    inbox: &mut mpsc::Receiver<RoomMsg>,
    count: Arc<AtomicUsize>,
) -> ProxyEnd {
    let Some(cluster) = env.cluster.clone() else {
        return ProxyEnd::Done;
    };
    let link = match cluster.link_to(&owner).await {
        Ok(link) => link,
        Err(e) => {
            if e.refused {
                // Nothing listens where the owner said it would: it died (kill -9, a crash) and
                // its host is up. Its leases are ended now instead of when they lapse; fencing
                // makes this safe even if it is alive after all.
                match env.store.release_node(&owner).await {
                    Ok(n) => {
                        warn!(room = %key, %owner, leases = n, error = %e, "the room's owner refuses connections; ended its leases to take its rooms over");
                        return ProxyEnd::OwnerDead;
                    }
                    Err(err) => {
                        warn!(room = %key, %owner, error = %err, "could not end a dead owner's leases");
                    }
                }
            } else {
                warn!(room = %key, %owner, error = %e, "cannot reach the room's owner; refusing its clients");
            }
            crate::room::linger_refusing(
                inbox,
                JoinError::OwnedElsewhere(format!("{owner}, unreachable: {e}")),
                Duration::from_secs(1),
            )
            .await;
            return ProxyEnd::Done;
        }
    };
    debug!(room = %key, %owner, "forwarding the room's clients to its owner");
    let (down_tx, mut down_rx) = mpsc::channel(PROXY_QUEUE);
    let mut members: HashMap<MemberId, (Member, StreamId)> = HashMap::new();
    let mut streams: HashMap<StreamId, MemberId> = HashMap::new();
    let mut tick = tokio::time::interval(env.config.ping_interval());
    tick.reset();
    let mut empty_since = Some(Instant::now());
    let mut shutting = false;
    // Set when the owner refused or ended a member for a reason other than the member's own
    // doing: it may no longer own the room. The proxy then retires as soon as it is empty, so
    // the next join finds the owner anew (from the lease).
    let mut stale = false;
    let shutdown = env.shutdown.clone();
    loop {
        let linger = if stale { Duration::ZERO } else { PROXY_LINGER };
        let linger_until = empty_since.map(|t| t + linger);
        tokio::select! {
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    RoomMsg::Join { member, reply } => {
                        if member.sink.forwarded() {
                            // Never forward a forwarded client: two nodes that disagree about
                            // the owner must not bounce it between them.
                            let _ = reply.send(Err(JoinError::OwnedElsewhere(owner.clone())));
                            continue;
                        }
                        if shutting {
                            let _ = reply.send(Err(JoinError::ShuttingDown));
                            continue;
                        }
                        let max = env.config.max_connections_per_room;
                        if members.len() >= max {
                            let _ = reply.send(Err(JoinError::RoomFull(max)));
                            continue;
                        }
                        let stream = link.open(member.sink.clone(), down_tx.clone());
                        let join = LinkFrame::Join {
                            stream,
                            party: key.party().to_owned(),
                            room: key.room().to_owned(),
                            write: member.access == Access::ReadWrite,
                            user: member.user.as_deref().map(str::to_owned),
                        };
                        if !link.send(join).await {
                            // The owner went away (it may have handed the room over already):
                            // the client tries again, and meets a proxy that looks up the
                            // owner anew, because this one retires once empty.
                            link.forget(stream);
                            stale = true;
                            let _ = reply.send(Err(JoinError::OwnedElsewhere(format!("{owner}, link lost"))));
                            continue;
                        }
                        if reply.send(Ok(())).is_err() {
                            link.forget(stream);
                            link.send(LinkFrame::Leave { stream }).await;
                            continue;
                        }
                        inc(&env.stats.forwarded_joins);
                        streams.insert(stream, member.id);
                        members.insert(member.id, (member, stream));
                        empty_since = None;
                    }
                    RoomMsg::Frame { conn, msg } => {
                        if let Some((_, stream)) = members.get(&conn) {
                            let frame = LinkFrame::Msg { stream: *stream, body: msg.encode() };
                            if link.send(frame).await {
                                inc(&env.stats.forwarded_frames);
                            }
                        }
                    }
                    RoomMsg::Leave { conn } => {
                        if let Some((_, stream)) = members.remove(&conn) {
                            streams.remove(&stream);
                            link.forget(stream);
                            link.send(LinkFrame::Leave { stream }).await;
                        }
                        if members.is_empty() {
                            empty_since = Some(Instant::now());
                        }
                    }
                    RoomMsg::Request(request) => {
                        // Requests without a socket are answered by the owner.
                        request.refuse(&JoinError::OwnedElsewhere(owner.clone()));
                    }
                }
            }
            Some(frame) = down_rx.recv() => {
                let stream = frame.stream();
                let Some(id) = streams.get(&stream).copied() else { continue };
                let out = match frame {
                    LinkFrame::Out { body, .. } => Out::Doc(body),
                    LinkFrame::Notice { notice: Notice::ReadOnly, .. } => Out::ReadOnly,
                    LinkFrame::Notice { notice: Notice::Applied, .. } => Out::Applied,
                    LinkFrame::Notice { notice: Notice::Rejected, .. } => Out::Rejected,
                    LinkFrame::Close { code, reason, .. } => {
                        if matches!(code, code::TRY_AGAIN_LATER | code::INTERNAL_ERROR | code::GOING_AWAY) {
                            stale = true;
                        }
                        streams.remove(&stream);
                        link.forget(stream);
                        if let Some((m, _)) = members.remove(&id) {
                            m.sink.close(Close::new(code, reason));
                        }
                        // The owner let the member go; this ends the stream on its side too.
                        link.send(LinkFrame::Leave { stream }).await;
                        if members.is_empty() {
                            empty_since = Some(Instant::now());
                        }
                        continue;
                    }
                    _ => continue,
                };
                if let Some((m, _)) = members.get(&id) {
                    let Some(frame) = m.sink.framing().frame(&out) else { continue };
                    if !m.sink.send(&[frame]) {
                        inc(&env.stats.slow_consumer_closes);
                        m.sink.close(Close::new(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL));
                        members.remove(&id);
                        streams.remove(&stream);
                        link.forget(stream);
                        link.send(LinkFrame::Leave { stream }).await;
                    }
                }
            }
            _ = link.broken.cancelled() => {
                inc(&env.stats.link_failures);
                warn!(room = %key, %owner, clients = members.len(), "lost the link to the room's owner; closing its forwarded clients");
                for (_, (m, _)) in members.drain() {
                    m.sink.close(Close::new(code::INTERNAL_ERROR, "lost the link to the room's owner; reconnect"));
                }
                break;
            }
            _ = tick.tick() => {
                let heard_by = heard_by(env.config.idle_timeout().as_millis() as u64);
                let now = Instant::now();
                let mut expired = Vec::new();
                for (m, _) in members.values() {
                    m.sink.keepalive(heard_by);
                    if m.expires.is_some_and(|at| at <= now) {
                        expired.push(m.id);
                    }
                }
                for id in expired {
                    if let Some((m, stream)) = members.remove(&id) {
                        m.sink.close(Close::new(code::TOKEN_EXPIRED, "token expired"));
                        streams.remove(&stream);
                        link.forget(stream);
                        link.send(LinkFrame::Leave { stream }).await;
                    }
                }
            }
            _ = shutdown.cancelled(), if !shutting => {
                shutting = true;
                for (m, _) in members.values() {
                    m.sink.close(Close::new(code::GOING_AWAY, "server shutting down"));
                }
            }
            _ = async { if let Some(at) = linger_until { tokio::time::sleep_until(at).await } },
                if linger_until.is_some() && inbox.is_empty() => break,
        }
        count.store(members.len(), Relaxed);
    }
    for (_, (m, stream)) in members.drain() {
        m.sink.close(Close::new(
            code::INTERNAL_ERROR,
            "the room's forwarding ended; reconnect",
        ));
        link.forget(stream);
        link.send(LinkFrame::Leave { stream }).await;
    }
    count.store(0, Relaxed);
    crate::room::refuse_remaining(inbox, JoinError::OwnedElsewhere(owner)).await;
    ProxyEnd::Done
}

/// Accepts a link from another node (the request was checked: method, secret).
pub(crate) async fn serve_link(on_upgrade: OnUpgrade, ctx: Arc<ServerCtx>, peer: String) {
    let upgraded = match on_upgrade.await.map(|u| u.downcast::<TokioIo<TcpStream>>()) {
        Ok(Ok(parts)) => parts,
        _ => return debug!("cluster link upgrade failed"),
    };
    let remote = upgraded.io.inner().peer_addr().ok();
    let ws = WebSocketStream::from_partially_read(
        upgraded.io.into_inner(),
        upgraded.read_buf.to_vec(),
        Role::Server,
        Some(ws_config()),
    )
    .await;
    inc(&ctx.stats.links_accepted);
    info!(node = %peer, "cluster link accepted");
    let (mut write, mut read) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
    let done = CancellationToken::new();
    let writer = {
        let done = done.clone();
        async move {
            let mut ping = tokio::time::interval(LINK_PING);
            loop {
                let msg = tokio::select! {
                    frame = out_rx.recv() => match frame {
                        Some(frame) => WsMessage::Binary(frame),
                        None => break,
                    },
                    _ = ping.tick() => WsMessage::Ping(Bytes::new()),
                    _ = done.cancelled() => break,
                };
                if write.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = write.close().await;
        }
    };
    let writer = tokio::spawn(writer);
    let mut streams: HashMap<StreamId, Stream> = HashMap::new();
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();
    // At shutdown the rooms end their members (1001), which the forwarding node passes on; the
    // link stays until those streams are gone (or the grace period ends), so every client hears
    // its close and reconnects elsewhere.
    let shutdown = ctx.shutdown.clone();
    let mut draining: Option<Instant> = None;
    loop {
        if let Some(deadline) = draining {
            if streams.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled(), if draining.is_none() => {
                draining = Some(Instant::now() + ctx.config.shutdown_grace());
                continue;
            }
            _ = async { if let Some(at) = draining { tokio::time::sleep_until(at).await } }, if draining.is_some() => continue,
            next = tokio::time::timeout(LINK_SILENCE, read.next()) => {
                let bytes = match next {
                    Ok(Some(Ok(WsMessage::Binary(bytes)))) => bytes,
                    Ok(Some(Ok(WsMessage::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                    Ok(Some(Ok(_))) => continue,
                    Err(_) => {
                        warn!(node = %peer, "cluster link silent; closing it");
                        break;
                    }
                };
                let frame = match LinkFrame::decode(bytes) {
                    Ok(frame) => frame,
                    Err(e) => {
                        warn!(node = %peer, error = %e, "bad frame on a cluster link; closing it");
                        break;
                    }
                };
                match frame {
                    LinkFrame::Join { stream, party, room, write, user } => {
                        let key = match RoomKey::new(&party, &room, ctx.config.max_room_id_len) {
                            Ok(key) => key,
                            Err(e) => {
                                let close = LinkFrame::Close { stream, code: code::PROTOCOL_ERROR, reason: format!("bad room id: {e}") };
                                let _ = out_tx.try_send(close.encode());
                                continue;
                            }
                        };
                        let sink = Arc::new(LinkSink {
                            stream,
                            out: out_tx.clone(),
                            remote,
                            closed: std::sync::atomic::AtomicBool::new(false),
                        });
                        streams.insert(stream, Stream::Joining(Vec::new()));
                        let access = if write { Access::ReadWrite } else { Access::ReadOnly };
                        let ctx = ctx.clone();
                        let joined = joined_tx.clone();
                        tokio::spawn(async move {
                            let result = join(&ctx, &key, sink, access, user.map(Into::into)).await;
                            let _ = joined.send((stream, result));
                        });
                    }
                    LinkFrame::Msg { stream, body } => {
                        let msg = match Message::decode(body) {
                            Ok(msg) => msg,
                            Err(e) => {
                                // The forwarding node decoded it once already: a bad message
                                // here ends only that stream.
                                end_stream(&mut streams, stream, &out_tx, code::PROTOCOL_ERROR, &format!("malformed message: {e}")).await;
                                continue;
                            }
                        };
                        match streams.get_mut(&stream) {
                            Some(Stream::Joining(queue)) if queue.len() < MAX_PENDING_MESSAGES => queue.push(msg),
                            Some(Stream::Joining(_)) => {
                                end_stream(&mut streams, stream, &out_tx, code::TRY_AGAIN_LATER, "too many messages before the join completed").await;
                            }
                            Some(Stream::Joined { room, member }) => {
                                let _ = room.tx.send(RoomMsg::Frame { conn: *member, msg }).await;
                            }
                            None => {}
                        }
                    }
                    LinkFrame::Leave { stream } => {
                        if let Some(Stream::Joined { room, member }) = streams.remove(&stream) {
                            let _ = room.tx.send(RoomMsg::Leave { conn: member }).await;
                        }
                    }
                    _ => {} // owner-to-forwarder frames have no business here
                }
            }
            Some((stream, result)) = joined_rx.recv() => {
                let Some(Stream::Joining(queue)) = streams.remove(&stream) else {
                    // It left while joining.
                    if let Ok((room, member)) = result {
                        let _ = room.tx.send(RoomMsg::Leave { conn: member }).await;
                    }
                    continue;
                };
                match result {
                    Ok((room, member)) => {
                        for msg in queue {
                            let _ = room.tx.send(RoomMsg::Frame { conn: member, msg }).await;
                        }
                        streams.insert(stream, Stream::Joined { room, member });
                    }
                    Err(e) => {
                        // Whatever kept this node from serving the room (it lost the lease, its
                        // storage is down), the client may succeed on retrying: it reconnects,
                        // and finds the room's owner anew.
                        let code = match e {
                            JoinError::ShuttingDown => code::GOING_AWAY,
                            _ => code::TRY_AGAIN_LATER,
                        };
                        let close = LinkFrame::Close { stream, code, reason: e.to_string() };
                        let _ = out_tx.send(close.encode()).await;
                    }
                }
            }
        }
    }
    done.cancel();
    for (_, s) in streams.drain() {
        if let Stream::Joined { room, member } = s {
            let _ = room.tx.send(RoomMsg::Leave { conn: member }).await;
        }
    }
    // Joins still running leave as they complete (their stream is gone).
    drop(joined_tx);
    while let Some((_, result)) = joined_rx.recv().await {
        if let Ok((room, member)) = result {
            let _ = room.tx.send(RoomMsg::Leave { conn: member }).await;
        }
    }
    let _ = writer.await;
    info!(node = %peer, "cluster link ended");
}

enum Stream {
    /// Its join is running; its messages wait here, in order.
    Joining(Vec<Message>),
    Joined {
        room: RoomHandle,
        member: MemberId,
    },
}

async fn end_stream(
    streams: &mut HashMap<StreamId, Stream>,
    stream: StreamId,
    out: &mpsc::Sender<Bytes>,
    code: u16,
    reason: &str,
) {
    if let Some(Stream::Joined { room, member }) = streams.remove(&stream) {
        let _ = room.tx.send(RoomMsg::Leave { conn: member }).await;
    }
    let close = LinkFrame::Close {
        stream,
        code,
        reason: reason.to_owned(),
    };
    let _ = out.send(close.encode()).await;
}

/// Joins a forwarded client to the room, retrying while the actor found was retiring.
async fn join(
    ctx: &ServerCtx,
    key: &RoomKey,
    sink: Arc<LinkSink>,
    access: Access,
    user: Option<Arc<str>>,
) -> Result<(RoomHandle, MemberId), JoinError> {
    for _ in 0..5 {
        let room = ctx.registry.get(key.clone()).await?;
        let id = crate::connection::next_member_id();
        let member = Member {
            id,
            access,
            user: user.clone(),
            expires: None,
            sink: sink.clone(),
            since: SystemTime::now(),
            told_read_only: false,
        };
        let (reply, rx) = oneshot::channel();
        if room.tx.send(RoomMsg::Join { member, reply }).await.is_err() {
            ctx.registry.gone(key.clone(), room.generation);
            continue;
        }
        match rx.await {
            Ok(Ok(())) => return Ok((room, id)),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                ctx.registry.gone(key.clone(), room.generation);
                tokio::task::yield_now().await;
            }
        }
    }
    Err(JoinError::LoadFailed(
        "room kept retiring; try again".into(),
    ))
}

/// A forwarded client, as the owning room sees it: what the room sends it goes down its
/// stream on the link. Its keep-alive is the link's (and the forwarding node's socket's).
#[derive(Debug)]
struct LinkSink {
    stream: StreamId,
    out: mpsc::Sender<Bytes>,
    remote: Option<SocketAddr>,
    closed: std::sync::atomic::AtomicBool,
}

static LINK_FRAMING: Framing = Framing::Link;

impl Sink for LinkSink {
    fn framing(&self) -> &Framing {
        &LINK_FRAMING
    }

    fn send(&self, frames: &[OutFrame]) -> bool {
        if self.closed.load(Relaxed) {
            return true;
        }
        for frame in frames {
            let bytes = if frame.opcode() == opcode::TEXT {
                let notice = match frame.body().as_ref() {
                    b"r" => Notice::ReadOnly,
                    b"j" => Notice::Rejected,
                    _ => Notice::Applied,
                };
                LinkFrame::Notice {
                    stream: self.stream,
                    notice,
                }
                .encode()
            } else {
                let header = LinkFrame::out_header(self.stream);
                let mut bytes = BytesMut::with_capacity(header.len() + frame.body().len());
                bytes.extend_from_slice(&header);
                bytes.extend_from_slice(frame.body());
                bytes.freeze()
            };
            if self.out.try_send(bytes).is_err() {
                // The link cannot keep up (or is gone): this member ends and resyncs.
                return false;
            }
        }
        true
    }

    fn close(&self, close: Close) {
        if self.closed.swap(true, Relaxed) {
            return;
        }
        let frame = LinkFrame::Close {
            stream: self.stream,
            code: close.code,
            reason: close.reason,
        };
        let out = self.out.clone();
        // Off the room's turn: a full link must not stall the room.
        tokio::spawn(async move {
            let _ = out.send(frame.encode()).await;
        });
    }

    fn forwarded(&self) -> bool {
        true
    }

    fn describe(&self) -> SinkInfo {
        SinkInfo {
            protocol: "forwarded",
            remote: self.remote,
            queued_bytes: 0,
        }
    }
}
