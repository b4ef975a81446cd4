//! One WebSocket connection: joins its room, then a reader loop (frames → messages → room
//! inbox) and a writer task (room outbox → socket, plus pings). Either side, the room, or server
//! shutdown can end it through the shared [`Closer`], which also carries the close code. When
//! the admission's token expires (and `auth.close_on_expiry` is on) the reader closes it with
//! [`code::TOKEN_EXPIRED`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ripple_core::awareness::ConnId;
use ripple_core::room::Access;
use ripple_core::RoomKey;
use ripple_proto::batch::Reassembler;
use ripple_proto::{DecodeError, Message};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info_span, warn, Instrument};

use crate::auth::Admission;
use crate::closer::{code, fit_reason, Closer};
use crate::registry::RoomHandle;
use crate::room::{JoinError, Outbox, RoomMsg};
use crate::stats::{dec, inc};
use crate::ServerCtx;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Serves one upgraded socket until it closes.
pub(crate) async fn serve(
    socket: WebSocket,
    key: RoomKey,
    admission: Admission,
    ctx: Arc<ServerCtx>,
) {
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("conn", room = %key, conn);
    inc(&ctx.stats.connections_total);
    inc(&ctx.stats.connections_active);
    serve_inner(socket, key, admission, conn, &ctx)
        .instrument(span)
        .await;
    dec(&ctx.stats.connections_active);
}

async fn serve_inner(
    mut socket: WebSocket,
    key: RoomKey,
    admission: Admission,
    conn: ConnId,
    ctx: &Arc<ServerCtx>,
) {
    let expires = admission
        .expires_at
        .filter(|_| ctx.config.auth.close_on_expiry)
        .and_then(deadline);
    let user: Option<Arc<str>> = admission.user.map(Into::into);
    let (frames_tx, frames_rx) = mpsc::channel(ctx.config.outbound_queue_frames);
    let closer = Closer::default();
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let outbox = Outbox {
        frames: frames_tx,
        queued_bytes: queued_bytes.clone(),
        closer: closer.clone(),
    };
    let room = match join(ctx, &key, conn, admission.access, user, outbox).await {
        Ok(room) => room,
        Err(e) => {
            debug!(error = %e, "join refused");
            let frame = CloseFrame {
                code: e.close_code(),
                reason: fit_reason(e.to_string()).into(),
            };
            if socket.send(WsMessage::Close(Some(frame))).await.is_ok() {
                linger_for_close(&mut socket).await;
            }
            return;
        }
    };
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(
        write_loop(sink, frames_rx, queued_bytes, closer.clone(), ctx.clone()).in_current_span(),
    );
    let peer_closed = read_loop(&mut stream, &room, conn, &closer, expires, ctx).await;
    let _ = room.tx.send(RoomMsg::Leave { conn }).await;
    closer.close(code::NORMAL, "");
    let _ = writer.await;
    if !peer_closed {
        linger_for_close(&mut stream).await;
    }
}

/// After sending a close frame, reads (and discards) until the peer's close arrives or a second
/// passes. Dropping a socket with unread input makes the kernel send a reset, which can destroy
/// our close frame before the client reads it; the client would see 1006 instead of our code.
async fn linger_for_close<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<WsMessage, axum::Error>> + Unpin,
{
    let drain = async {
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(frame, WsMessage::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// Joins the room, retrying once or twice if the actor we were given was retiring.
async fn join(
    ctx: &ServerCtx,
    key: &RoomKey,
    conn: ConnId,
    access: Access,
    user: Option<Arc<str>>,
    outbox: Outbox,
) -> Result<RoomHandle, JoinError> {
    for _ in 0..5 {
        let room = ctx.registry.get(key.clone()).await?;
        let (reply, rx) = oneshot::channel();
        let msg = RoomMsg::Join {
            conn,
            access,
            user: user.clone(),
            outbox: outbox.clone(),
            reply,
        };
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

/// Resolves at `deadline`, or never.
async fn expiry(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads until the connection should end. Returns true when the peer closed (close frame or
/// end of stream), false when we decided to close.
async fn read_loop(
    stream: &mut SplitStream<WebSocket>,
    room: &RoomHandle,
    conn: ConnId,
    closer: &Closer,
    expires: Option<Instant>,
    ctx: &ServerCtx,
) -> bool {
    let mut reassembler = Reassembler::new(ctx.config.max_message_bytes);
    let idle = ctx.config.idle_timeout();
    let expired = expiry(expires);
    tokio::pin!(expired);
    loop {
        let next = tokio::select! {
            _ = closer.closed() => return false,
            _ = &mut expired => {
                debug!("closing connection: token expired");
                closer.close(code::TOKEN_EXPIRED, "token expired");
                return false;
            }
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        let frame = match next {
            Err(_) => {
                closer.close(
                    code::GOING_AWAY,
                    "no message or pong within the idle timeout",
                );
                return false;
            }
            Ok(None) => return true,
            Ok(Some(Err(e))) => {
                if is_capacity_error(e) {
                    closer.close(code::TOO_BIG, "message exceeds max_message_bytes");
                    return false;
                }
                return true;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let assembled = match frame {
            WsMessage::Binary(bytes) => reassembler.binary(bytes),
            WsMessage::Text(text) => reassembler.text(text.as_str()),
            WsMessage::Close(_) => return true,
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
        };
        let msg = match assembled.and_then(|frame| frame.map(Message::decode).transpose()) {
            Ok(Some(msg)) => msg,
            Ok(None) => continue,
            Err(e) => {
                inc(&ctx.stats.protocol_errors);
                warn!(error = %e, "closing connection: malformed frame");
                let code = match e {
                    DecodeError::TooLarge { .. } => code::TOO_BIG,
                    DecodeError::Batch(_) => code::UNSUPPORTED_DATA,
                    _ => code::PROTOCOL_ERROR,
                };
                closer.close(code, e.to_string());
                return false;
            }
        };
        let sent = tokio::select! {
            _ = closer.closed() => return false,
            sent = room.tx.send(RoomMsg::Frame { conn, msg }) => sent,
        };
        if sent.is_err() {
            closer.close(code::INTERNAL_ERROR, "room closed");
            return false;
        }
    }
}

fn is_capacity_error(e: axum::Error) -> bool {
    e.into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut frames: mpsc::Receiver<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    closer: Closer,
    ctx: Arc<ServerCtx>,
) {
    let mut ping = tokio::time::interval(ctx.config.ping_interval());
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        enum Step {
            Frame(Bytes),
            Ping,
        }
        let step = tokio::select! {
            biased;
            _ = closer.closed() => break,
            _ = ctx.shutdown.cancelled() => {
                closer.close(code::GOING_AWAY, "server shutting down");
                break;
            }
            frame = frames.recv() => match frame {
                Some(frame) => Step::Frame(frame),
                None => {
                    // The room dropped our outbox: it failed.
                    closer.close(code::INTERNAL_ERROR, "room closed unexpectedly");
                    break;
                }
            },
            _ = ping.tick() => Step::Ping,
        };
        let io = async {
            match step {
                Step::Frame(frame) => {
                    write_batch(&mut sink, frame, &mut frames, &queued_bytes).await
                }
                Step::Ping => sink.send(WsMessage::Ping(Bytes::new())).await,
            }
        };
        // A client that stops reading blocks the write; the room then closes it through the
        // closer, which must win over the stuck write.
        let written = tokio::select! {
            _ = closer.closed() => break,
            written = io => written,
        };
        if written.is_err() {
            closer.close(code::GOING_AWAY, "write failed");
            return;
        }
    }
    // Send the close frame, unless the socket is stuck (a client that stopped reading).
    if let Some((code, reason)) = closer.reason() {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let send = sink.send(WsMessage::Close(Some(frame)));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
    }
}

/// Writes `first` and whatever else is already queued, then flushes once and takes the written
/// bytes off the queue's byte count.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    first: Bytes,
    frames: &mut mpsc::Receiver<Bytes>,
    queued_bytes: &AtomicUsize,
) -> Result<(), axum::Error> {
    let mut written = first.len();
    sink.feed(WsMessage::Binary(first)).await?;
    for _ in 0..64 {
        match frames.try_recv() {
            Ok(frame) => {
                written += frame.len();
                sink.feed(WsMessage::Binary(frame)).await?;
            }
            Err(_) => break,
        }
    }
    sink.flush().await?;
    queued_bytes.fetch_sub(written, Ordering::Relaxed);
    Ok(())
}
