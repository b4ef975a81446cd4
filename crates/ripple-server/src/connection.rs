//! One WebSocket connection, after the HTTP upgrade: one task that joins the room, then reads
//! (socket bytes → WebSocket frames → y-websocket messages → room inbox) and, when the socket
//! could not take everything at once, writes what its [`Peer`] queued. The room sends to the
//! socket directly through the shared [`Peer`]; it also pings, reaps silent connections and
//! closes those whose token expired (`room.rs`). Any side asks for a close through
//! [`Peer::close`]; this task then sends the close frame and ends.
//!
//! An idle connection holds no buffers: reads go through a stack buffer, and only an
//! incomplete frame is kept, in a buffer sized to it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use ripple_core::room::Access;
use ripple_core::RoomKey;
use ripple_proto::batch::Reassembler;
use ripple_proto::ws::{self, Decoder, Event};
use ripple_proto::{DecodeError, Message};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::auth::Admission;
use crate::closer::code;
use crate::member::{Member, MemberId, SocketSink};
use crate::peer::{now_ms, OutFrame, Peer, QueueLimits, Wake};
use crate::quota::{Buckets, Limit, Rates};
use crate::registry::RoomHandle;
use crate::room::{JoinError, RoomMsg};
use crate::stats::{inc, ConnSlot};
use crate::ServerCtx;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A fresh member id (connections and requests without a socket share the sequence, so ids are
/// unique within a room).
pub(crate) fn next_member_id() -> MemberId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// Bytes read from the socket per system call.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes read in one go before the messages are handed on (backpressure on the room).
const READ_BUDGET: usize = 256 * 1024;
/// A partial-frame buffer larger than this is freed once empty.
const KEEP_BUFFER: usize = 64 * 1024;
/// How long writing our close frame may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long a connection we closed keeps reading (and discarding) what the client still
/// sends, so that our close frame is not destroyed by a reset (see [`finish`]).
const LINGER: Duration = Duration::from_secs(2);
/// The least a lingering close discards before it gives up (at least twice the message limit:
/// a client refused on a frame header may still be sending the whole oversized payload).
const LINGER_MIN_BYTES: usize = 64 << 20;

/// Phase one of a connection, in its own short-lived task: completes the upgrade, takes the
/// socket back from hyper, and joins the room. Phase two, the long-lived task, is then spawned
/// with only what it needs: this phase's futures (the upgrade, the registry and the join) are
/// large, and an idle connection should not carry them.
pub(crate) async fn accept(
    on_upgrade: OnUpgrade,
    key: RoomKey,
    admission: Admission,
    slot: ConnSlot,
    ctx: Arc<ServerCtx>,
) {
    let parts = match on_upgrade.await.map(|u| u.downcast::<TokioIo<TcpStream>>()) {
        Ok(Ok(parts)) => parts,
        Ok(Err(_)) => return debug!("upgraded connection is not a TCP stream"),
        Err(e) => return debug!(error = %e, "upgrade failed"),
    };
    let conn = next_member_id();
    inc(&ctx.stats.connections_total);
    let peer = Arc::new(Peer::new(conn, parts.io.into_inner()));
    // What the client sent after its upgrade request, already read by hyper.
    let mut reader = Reader::new(ctx.config.max_message_bytes, parts.read_buf);
    let expires = admission
        .expires_at
        .filter(|_| ctx.config.auth.close_on_expiry)
        .and_then(deadline);
    let user: Option<Arc<str>> = admission.user.map(Into::into);
    let buckets = Buckets::new(&Rates::of(&ctx.config), now_ms());
    match join(&ctx, &key, &peer, admission.access, user, expires).await {
        Ok(room) => {
            let tracker = ctx.tracker.clone();
            let conn = Conn {
                peer,
                reader,
                room,
                key,
                ctx,
                buckets,
                _slot: slot,
            };
            tracker.spawn(conn.run());
        }
        Err(e) => {
            debug!(room = %key, conn, error = %e, "join refused");
            peer.close(e.close_code(), &e.to_string());
            finish(&peer, &mut reader, Ended::ByUs).await;
            drop(slot);
        }
    }
}

/// How the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Someone asked for a close (room, this task, the server).
    ByUs,
    /// The client sent a close frame (with this code, if any); we answer it.
    ClientClosed(Option<u16>),
    /// The socket ended or failed; nothing more to send.
    SocketGone,
}

/// Sends our close frame (if the socket still works), then closes the way RFC 6455 §7.1.1 and
/// HTTP servers' "lingering close" do. Closing a socket whose input is unread makes the kernel
/// send a reset, and a reset destroys what the client has not read yet: our close frame. That
/// is exactly the case of a client refused mid-message (1009 on a frame header): it is still
/// sending the payload. So after the close frame we shut down our write side (a FIN: the
/// client's WebSocket sees the end and closes too) and, when we started the close, read and
/// discard what still arrives, for a bounded time and number of bytes, until the client's
/// close frame or the end of its stream.
async fn finish(peer: &Peer, reader: &mut Reader, ended: Ended) {
    if ended == Ended::SocketGone {
        return;
    }
    let echo = match ended {
        Ended::ClientClosed(Some(code)) => code,
        _ => code::NORMAL,
    };
    peer.queue_close((echo, ""));
    if tokio::time::timeout(CLOSE_WAIT, peer.drain())
        .await
        .is_err()
    {
        // The client does not even read our close frame: nothing to wait for.
        return;
    }
    peer.shutdown_write();
    if ended == Ended::ByUs {
        let _ = tokio::time::timeout(LINGER, reader.linger(peer)).await;
    }
}

/// Joins the room, retrying once or twice if the actor we were given was retiring.
async fn join(
    ctx: &ServerCtx,
    key: &RoomKey,
    peer: &Arc<Peer>,
    access: Access,
    user: Option<Arc<str>>,
    expires: Option<Instant>,
) -> Result<RoomHandle, JoinError> {
    for _ in 0..5 {
        let room = ctx.registry.get(key.clone()).await?;
        let (reply, rx) = oneshot::channel();
        let sink = SocketSink::new(peer.clone(), QueueLimits::of(&ctx.config));
        let member = Member {
            id: peer.id,
            access,
            user: user.clone(),
            expires,
            sink: Arc::new(sink),
            since: SystemTime::now(),
            told_read_only: false,
        };
        let msg = RoomMsg::Join { member, reply };
        if room.tx.send(msg).await.is_err() {
            ctx.registry.gone(key.clone(), room.generation);
            continue;
        }
        match rx.await {
            Ok(Ok(())) => return Ok(room),
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

/// The monotonic instant of wall-clock time `at` (now if it has passed); `None` if it is too far
/// away to represent (it then never comes).
fn deadline(at: SystemTime) -> Option<Instant> {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now().checked_add(left)
}

/// A joined connection: everything its long-lived task holds.
struct Conn {
    peer: Arc<Peer>,
    reader: Reader,
    room: RoomHandle,
    key: RoomKey,
    ctx: Arc<ServerCtx>,
    /// Its quotas (`quota.rs`), checked before a message is handed to the room.
    buckets: Buckets,
    /// This connection's place under `max_connections`, given back when the task ends.
    _slot: ConnSlot,
}

impl Conn {
    /// Phase two: serves the connection until it closes, then leaves the room. (A plain fn
    /// returning an `async move` block: an `async fn` taking `self` would store it twice.)
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let ended = self.read_loop().await;
            if let Forward::Wait(wait) = self.forward(RoomMsg::Leave { conn: self.peer.id }) {
                wait.await;
            }
            // Boxed: the closing handshake's timers are large, and only needed at the end.
            Box::pin(finish(&self.peer, &mut self.reader, ended)).await;
        }
    }

    /// Reads until the connection should end.
    async fn read_loop(&mut self) -> Ended {
        // Input that came with the upgrade request is decoded first.
        let mut step = if self.reader.has_input() {
            Wake::Readable
        } else {
            Wake::Writable
        };
        loop {
            match step {
                Wake::Close => return Ended::ByUs,
                Wake::Failed => return Ended::SocketGone,
                Wake::Writable => {
                    if self.peer.write_queued().is_err() {
                        return Ended::SocketGone;
                    }
                }
                Wake::Readable => {
                    let (msgs, end) = self.read_messages();
                    for msg in msgs {
                        let msg = RoomMsg::Frame {
                            conn: self.peer.id,
                            msg,
                        };
                        let sent = match self.forward(msg) {
                            Forward::Sent => true,
                            Forward::RoomGone => false,
                            Forward::Wait(wait) => wait.await,
                        };
                        if !sent {
                            self.peer.close(code::INTERNAL_ERROR, "room closed");
                            return Ended::ByUs;
                        }
                    }
                    if let Some(end) = end {
                        return end;
                    }
                }
            }
            step = std::future::poll_fn(|cx| self.peer.poll_next(cx)).await;
        }
    }

    /// Hands a message to the room; false if the room is gone. Waiting for room in its inbox
    /// is the rare case: that wait is boxed, so the task stays small.
    fn forward(&self, msg: RoomMsg) -> Forward<'_> {
        match self.room.tx.try_send(msg) {
            Ok(()) => Forward::Sent,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                Forward::Wait(Box::pin(
                    async move { self.room.tx.send(msg).await.is_ok() },
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Forward::RoomGone,
        }
    }

    /// Reads what the socket has and turns it into messages for the room, answering pings on
    /// the way. Also returns how the connection ends, if this read ended it (the messages that
    /// came before are still delivered).
    fn read_messages(&mut self) -> (Vec<Message>, Option<Ended>) {
        let rates = Rates::of(&self.ctx.config);
        let now = now_ms();
        let mut events = Vec::new();
        let mut end = match self.reader.read(&self.peer, &mut events) {
            Ok(Input::Open) => None,
            Ok(Input::Eof) => Some(Ended::SocketGone),
            Err(ReadError::Io(_)) => Some(Ended::SocketGone),
            Err(ReadError::Protocol(e)) => {
                self.protocol_error(e.close_code(), &e.to_string());
                Some(Ended::ByUs)
            }
        };
        let mut msgs = Vec::new();
        for event in events {
            let assembled = match event {
                Event::Binary(bytes) => self.reader.batch.binary(bytes),
                Event::Text(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(text) => self.reader.batch.text(text),
                    Err(_) => Err(DecodeError::Batch("text frame is not UTF-8".into())),
                },
                Event::Ping(payload) => {
                    // Pongs count against the queue like any frame: a client that pings
                    // without reading is a slow consumer.
                    let pong = [OutFrame::new(ws::opcode::PONG, payload)];
                    if !self.peer.send(&pong, QueueLimits::of(&self.ctx.config)) {
                        inc(&self.ctx.stats.slow_consumer_closes);
                        self.peer
                            .close(code::TRY_AGAIN_LATER, crate::closer::QUEUE_FULL);
                        end = Some(Ended::ByUs);
                        break;
                    }
                    continue;
                }
                Event::Pong => continue,
                Event::Close(close) => {
                    end = Some(Ended::ClientClosed(close.map(|(c, _)| c)));
                    break;
                }
            };
            match assembled.and_then(|frame| frame.map(Message::decode).transpose()) {
                Ok(Some(msg)) => {
                    if let Err(limit) = self.buckets.admit(&rates, &msg, now) {
                        self.over_quota(limit, &rates);
                        end = Some(Ended::ByUs);
                        break;
                    }
                    msgs.push(msg)
                }
                Ok(None) => {}
                Err(e) => {
                    let code = match e {
                        DecodeError::TooLarge { .. } => code::TOO_BIG,
                        DecodeError::Batch(_) => code::UNSUPPORTED_DATA,
                        _ => code::PROTOCOL_ERROR,
                    };
                    self.protocol_error(code, &e.to_string());
                    end = Some(Ended::ByUs);
                    break;
                }
            }
        }
        (msgs, end)
    }

    /// Closes the connection for going over a quota (see `quota.rs` for why closing is the
    /// outcome, not dropping or slowing down).
    fn over_quota(&self, limit: Limit, rates: &Rates) {
        if let Some(i) = Limit::ALL.iter().position(|l| *l == limit) {
            inc(&self.ctx.stats.rate_limit_closes[i]);
        }
        let reason = limit.reason(rates);
        warn!(room = %self.key, conn = self.peer.id, reason, "closing connection: over a quota");
        self.peer.close(code::POLICY_VIOLATION, &reason);
    }

    fn protocol_error(&self, code: u16, reason: &str) {
        inc(&self.ctx.stats.protocol_errors);
        warn!(room = %self.key, conn = self.peer.id, error = reason, "closing connection: malformed frame");
        self.peer.close(code, reason);
    }
}

/// How handing a message to the room went.
enum Forward<'a> {
    Sent,
    RoomGone,
    /// The inbox is full: wait for room.
    Wait(Pin<Box<dyn Future<Output = bool> + Send + 'a>>),
}

/// What a read found.
enum Input {
    /// The socket is open (it may have had nothing more to read).
    Open,
    /// The client closed its side.
    Eof,
}

enum ReadError {
    Io(#[allow(dead_code)] io::Error),
    Protocol(ws::WsError),
}

/// The reading side's state: WebSocket and y-pk-batch reassembly, and an incomplete frame.
struct Reader {
    decoder: Decoder,
    batch: Reassembler,
    /// Bytes of an incomplete frame; empty (and unallocated) between frames.
    partial: Vec<u8>,
    /// `max_message_bytes`, for the lingering close's budget.
    limit: usize,
    /// False once the decoder refused input: the bytes that follow are no longer at a frame
    /// boundary (e.g. the payload of a refused oversized frame), so they can only be discarded.
    in_sync: bool,
}

impl Reader {
    fn new(limit: usize, leftover: Bytes) -> Self {
        Self {
            decoder: Decoder::new(limit),
            batch: Reassembler::new(limit),
            partial: leftover.to_vec(),
            limit,
            in_sync: true,
        }
    }

    /// Feeds the decoder; an error leaves the stream out of sync for good.
    fn feed(&mut self, input: &[u8], events: &mut Vec<Event>) -> Result<usize, ReadError> {
        self.decoder.feed(input, events).map_err(|e| {
            self.in_sync = false;
            ReadError::Protocol(e)
        })
    }

    fn has_input(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Reads what the socket has (up to a budget) and decodes it into `events`.
    fn read(&mut self, peer: &Peer, events: &mut Vec<Event>) -> Result<Input, ReadError> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut total = 0;
        // Input that arrived with the upgrade request.
        if !self.partial.is_empty() {
            self.decode_partial(events)?;
        }
        loop {
            let n = match peer.stream().try_read(&mut chunk) {
                Ok(0) => return Ok(Input::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            };
            peer.heard();
            total += n;
            let input = &chunk[..n];
            if self.partial.is_empty() {
                let used = self.feed(input, events)?;
                self.keep(&input[used..]);
            } else {
                self.partial.extend_from_slice(input);
                self.decode_partial(events)?;
            }
            if total >= READ_BUDGET || n < chunk.len() {
                // Either enough for one round, or the socket is probably drained: a further
                // read would most likely just say so. Readiness stays set if it is not.
                return Ok(Input::Open);
            }
        }
    }

    /// Decodes from the partial-frame buffer.
    fn decode_partial(&mut self, events: &mut Vec<Event>) -> Result<(), ReadError> {
        let partial = std::mem::take(&mut self.partial);
        let fed = self.feed(&partial, events);
        self.partial = partial;
        let used = fed?;
        self.partial.drain(..used);
        if self.partial.is_empty() && self.partial.capacity() > KEEP_BUFFER {
            self.partial = Vec::new();
        }
        Ok(())
    }

    /// Keeps the start of an incomplete frame. Room for the whole frame is reserved only up to
    /// [`KEEP_BUFFER`] ahead of what arrived: a header alone may announce the size limit, and
    /// memory should follow the bytes a client sent, not the ones it promised (beyond that the
    /// buffer grows by doubling, so a big frame is still copied only a few times).
    fn keep(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        let want = Decoder::frame_len(rest)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(rest.len());
        self.partial
            .reserve_exact(want.min(KEEP_BUFFER).max(rest.len()));
        self.partial.extend_from_slice(rest);
    }

    /// After our close frame: reads until the client's close frame or the end of its stream.
    /// While the stream is in sync, frames are decoded (and dropped) so the client's close
    /// frame ends the wait early; once it is not, raw bytes are discarded unread, at most
    /// `max(2 × max_message_bytes, 64 MiB)` of them. The caller bounds the time.
    async fn linger(&mut self, peer: &Peer) {
        let budget = self.limit.saturating_mul(2).max(LINGER_MIN_BYTES);
        let mut discarded = 0usize;
        let mut events = Vec::new();
        loop {
            if std::future::poll_fn(|cx| peer.stream().poll_read_ready(cx))
                .await
                .is_err()
            {
                return;
            }
            if self.in_sync {
                events.clear();
                match self.read(peer, &mut events) {
                    Ok(Input::Open) => {}
                    Ok(Input::Eof) | Err(ReadError::Io(_)) => return,
                    // Now out of sync: the next rounds discard.
                    Err(ReadError::Protocol(_)) => {}
                }
                if events.iter().any(|e| matches!(e, Event::Close(_))) {
                    return;
                }
            } else {
                // A partial frame of a stream out of sync means nothing.
                self.partial = Vec::new();
                match discard(peer) {
                    Some(n) => discarded = discarded.saturating_add(n),
                    None => return,
                }
                if discarded >= budget {
                    return;
                }
            }
        }
    }
}

/// Reads and drops what the socket has now. Returns the bytes dropped, or `None` at the end of
/// the stream or on an error.
fn discard(peer: &Peer) -> Option<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut total = 0;
    loop {
        match peer.stream().try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(total),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_reserves_at_most_keep_buffer_ahead_of_its_bytes() {
        let limit = 32 << 20;
        let mut reader = Reader::new(limit, Bytes::new());
        // A masked binary frame announcing nearly the limit, with 100 bytes of payload so far.
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend(((limit - 1) as u64).to_be_bytes());
        frame.extend([0u8; 4 + 100]);
        reader.keep(&frame);
        assert_eq!(reader.partial.len(), frame.len());
        assert!(
            reader.partial.capacity() <= KEEP_BUFFER,
            "reserved {} bytes for {} received",
            reader.partial.capacity(),
            frame.len()
        );
    }
}
