//! The sending side of one connection, shared by its connection task and its room.
//!
//! The room writes straight to the socket: [`Peer::send`] takes the frames of one turn and
//! hands them to the kernel in one vectored, non-blocking write. Only what the socket does not
//! take at once is queued, and then the connection task is woken to write the rest when the
//! socket drains. So a delivery costs one system call and no task wake-up, and an idle
//! connection holds no buffers at all. A room's turn goes further with [`send_all`]: every
//! member whose queue is empty is written in the same io_uring submission (`uring.rs`), so a
//! broadcast to ten sockets is one system call, not ten. Frames are a header next to a shared payload: a
//! broadcast is encoded once and never copied per recipient.
//!
//! The queue is bounded (frames and bytes); [`Peer::send`] reports a full queue and the room
//! closes that connection with 1013, so the client reconnects and resyncs. Nothing is dropped
//! silently: frames are only discarded once the connection is closing.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use ripple_core::awareness::ConnId;
use ripple_proto::ws::{self, Head};
use tokio::net::TcpStream;

/// Most frames handed to one `writev` (two slices each; Linux allows 1,024).
const MAX_FRAMES_PER_WRITE: usize = 64;

/// Milliseconds since the process's first use of this clock; cheap to store in an atomic.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One server frame: header and shared payload.
#[derive(Debug, Clone)]
pub(crate) struct OutFrame {
    head: Head,
    body: Bytes,
}

impl OutFrame {
    /// A binary frame carrying `body`.
    pub(crate) fn binary(body: Bytes) -> Self {
        Self::new(ws::opcode::BINARY, body)
    }

    pub(crate) fn new(opcode: u8, body: Bytes) -> Self {
        Self {
            head: Head::new(opcode, body.len()),
            body,
        }
    }

    fn len(&self) -> usize {
        self.head.as_bytes().len() + self.body.len()
    }

    /// The frame's opcode.
    pub(crate) fn opcode(&self) -> u8 {
        self.head.as_bytes()[0] & 0x0f
    }

    /// The frame's payload.
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    /// This frame's bytes from `offset` on, as at most two slices.
    fn slices(&self, offset: usize) -> [&[u8]; 2] {
        let head = self.head.as_bytes();
        if offset < head.len() {
            [&head[offset..], &self.body]
        } else {
            [&[], &self.body[offset - head.len()..]]
        }
    }
}

/// Bounds on what may wait for a slow socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
}

impl QueueLimits {
    pub(crate) fn of(config: &crate::Config) -> Self {
        Self {
            frames: config.outbound_queue_frames,
            bytes: config.outbound_queue_bytes,
        }
    }
}

#[derive(Debug, Default)]
struct Out {
    queue: VecDeque<OutFrame>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Bytes in `queue` not yet written.
    queued_bytes: usize,
    /// Set once a close was asked for: code and reason.
    close: Option<(u16, String)>,
    /// The close frame has been queued; nothing more is written after it.
    close_queued: bool,
    /// A write failed: the socket is dead.
    failed: bool,
}

/// The shared half of a connection.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: ConnId,
    stream: TcpStream,
    out: Mutex<Out>,
    /// The connection task: woken when it must write the queue or close.
    task: AtomicWaker,
    /// When the connection last received anything ([`now_ms`]).
    last_heard: AtomicU64,
    /// The client's address (for inspection).
    remote: Option<std::net::SocketAddr>,
}

/// Writes `frames` (the first from `offset` on) in as few calls as the kernel allows, until
/// all are written or the socket would block. Returns the bytes written.
fn write_frames<'a>(
    stream: &TcpStream,
    frames: impl Iterator<Item = &'a OutFrame> + Clone,
    offset: usize,
) -> io::Result<usize> {
    let mut written = 0;
    loop {
        // Skip what earlier rounds wrote.
        let mut skip = offset + written;
        let mut slices = [IoSlice::new(&[]); 2 * MAX_FRAMES_PER_WRITE];
        let mut count = 0;
        for frame in frames.clone() {
            if count + 2 > slices.len() {
                break;
            }
            let len = frame.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            for s in frame.slices(skip) {
                if !s.is_empty() {
                    slices[count] = IoSlice::new(s);
                    count += 1;
                }
            }
            skip = 0;
        }
        if count == 0 {
            return Ok(written);
        }
        match stream.try_write_vectored(&slices[..count]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Out {
    /// The answer to a send of `frames` that need not touch the socket: discarded (closing),
    /// refused (the queue would pass `limits`) or queued behind what waits. `None`: the queue
    /// is empty, so the caller writes them now.
    fn admit(&mut self, frames: &[OutFrame], limits: QueueLimits) -> Option<bool> {
        if self.close.is_some() || self.failed {
            return Some(true);
        }
        if self.queue.is_empty() {
            return None;
        }
        let bytes: usize = frames.iter().map(OutFrame::len).sum();
        let too_many = self.queue.len() + frames.len() > limits.frames;
        if too_many || self.queued_bytes + bytes > limits.bytes {
            return Some(false);
        }
        self.queue.extend(frames.iter().cloned());
        self.queued_bytes += bytes;
        Some(true)
    }

    /// Takes `n` written bytes off the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.queued_bytes = self.queued_bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                self.offset = 0;
                self.queue.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > 16 {
            // A burst is over; an idle connection keeps no queue memory.
            self.queue = VecDeque::new();
        }
    }
}

impl Peer {
    pub(crate) fn new(id: ConnId, stream: TcpStream) -> Self {
        Self {
            id,
            remote: stream.peer_addr().ok(),
            stream,
            out: Mutex::new(Out::default()),
            task: AtomicWaker::new(),
            last_heard: AtomicU64::new(now_ms()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Out> {
        // A panic while holding the lock leaves the queue consistent (every update is done
        // before anything that can panic), so a poisoned lock is still usable.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `frames` in order after whatever is queued. Returns false, queuing nothing, if they
    /// would take the queue past `limits` (a frame bigger than the byte limit still goes to an
    /// empty queue, so a large initial sync is possible). Frames for a closing connection are
    /// discarded: it resyncs when it reconnects.
    pub(crate) fn send(&self, frames: &[OutFrame], limits: QueueLimits) -> bool {
        if frames.is_empty() {
            return true;
        }
        let mut out = self.lock();
        if let Some(answer) = out.admit(frames, limits) {
            return answer;
        }
        // Nothing waiting: write now, queue only the remainder.
        let written = write_frames(&self.stream, frames.iter(), 0);
        self.wrote(out, frames, written)
    }

    /// Finishes a send that found the queue empty and wrote `frames` directly: queues what the
    /// socket did not take (the connection task writes it when the socket drains), or, if the
    /// write failed, closes. Returns [`Peer::send`]'s answer.
    fn wrote(
        &self,
        mut out: MutexGuard<'_, Out>,
        frames: &[OutFrame],
        written: io::Result<usize>,
    ) -> bool {
        let bytes: usize = frames.iter().map(OutFrame::len).sum();
        let written = match written {
            Ok(n) => n,
            Err(_) => {
                out.failed = true;
                drop(out);
                self.close(crate::closer::code::GOING_AWAY, "write failed");
                return true;
            }
        };
        if written >= bytes {
            return true;
        }
        // Part of it may be on the wire: the rest must follow, whatever the limits say (they
        // apply to the next send).
        out.queue.extend(frames.iter().cloned());
        out.queued_bytes = bytes;
        out.advance(written);
        drop(out);
        self.task.wake();
        true
    }

    /// Asks the connection to close with `code` and `reason` (the first request wins). Queued
    /// frames are dropped, except one already partly written.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        {
            let mut out = self.lock();
            if out.close.is_some() {
                return;
            }
            out.close = Some((code, reason.to_owned()));
        }
        self.task.wake();
    }

    /// The client's address, if the socket knew it.
    pub(crate) fn remote(&self) -> Option<std::net::SocketAddr> {
        self.remote
    }

    /// Bytes waiting for the socket.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().queued_bytes
    }

    pub(crate) fn last_heard(&self) -> u64 {
        self.last_heard.load(Relaxed)
    }

    pub(crate) fn heard(&self) {
        self.last_heard.store(now_ms(), Relaxed);
    }

    /// What the connection task must do next: close (if asked to), write (if frames wait and
    /// the socket can take them), or read (when the socket has input).
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Wake> {
        self.task.register(cx.waker());
        {
            let out = self.lock();
            if out.close.is_some() {
                return Poll::Ready(Wake::Close);
            }
            if !out.queue.is_empty() {
                if let Poll::Ready(ready) = self.stream.poll_write_ready(cx) {
                    return Poll::Ready(match ready {
                        Ok(()) => Wake::Writable,
                        Err(_) => Wake::Failed,
                    });
                }
            }
        }
        match self.stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Wake::Readable),
            Poll::Ready(Err(_)) => Poll::Ready(Wake::Failed),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes as much of the queue as the socket takes now.
    pub(crate) fn write_queued(&self) -> io::Result<()> {
        let mut out = self.lock();
        let result = write_frames(&self.stream, out.queue.iter(), out.offset);
        match result {
            Ok(n) => {
                out.advance(n);
                Ok(())
            }
            Err(e) => {
                out.failed = true;
                Err(e)
            }
        }
    }

    /// Starts the closing handshake: keeps only a partly written frame, queues a close frame
    /// with the requested code (or `fallback` if none was asked for), and stops all other
    /// writes. Returns the code sent.
    pub(crate) fn queue_close(&self, fallback: (u16, &str)) -> u16 {
        let mut out = self.lock();
        if out.close.is_none() {
            out.close = Some((fallback.0, fallback.1.to_owned()));
        }
        let (code, reason) = out.close.clone().unwrap_or_default();
        if out.close_queued || out.failed {
            return code;
        }
        let keep = usize::from(out.offset > 0);
        while out.queue.len() > keep {
            out.queue.pop_back();
        }
        out.queued_bytes = out.queue.front().map_or(0, |f| f.len() - out.offset);
        let frame = OutFrame::new(ws::opcode::CLOSE, ws::close_payload(code, &reason));
        out.queued_bytes += frame.len();
        out.queue.push_back(frame);
        out.close_queued = true;
        code
    }

    /// Shuts down the sending direction (the TCP FIN), after the close frame is written. Errors
    /// are ignored: the socket may already be gone, and the connection is ending either way.
    pub(crate) fn shutdown_write(&self) {
        // tokio's shutdown wants the stream mutably; the room may still hold this peer.
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
    }

    /// Resolves once the queue is written out (or the socket failed).
    pub(crate) async fn drain(&self) {
        std::future::poll_fn(|cx| {
            let out = self.lock();
            if out.queue.is_empty() || out.failed {
                return Poll::Ready(());
            }
            match self.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {
                    drop(out);
                    if self.write_queued().is_err() {
                        return Poll::Ready(());
                    }
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Ready(Err(_)) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// One member's share of a room's turn, for [`send_all`].
#[derive(Debug)]
pub(crate) struct Delivery<'a> {
    pub(crate) peer: &'a Peer,
    pub(crate) frames: &'a [OutFrame],
    pub(crate) limits: QueueLimits,
}

/// Sends each delivery as [`Peer::send`] would and returns its answers, in order. The sockets
/// with nothing queued are written together: in one system call where io_uring is available
/// (`uring.rs`), else one `writev` each. The others queue their frames, or, if another send
/// holds their lock right now, take the ordinary path afterwards.
pub(crate) fn send_all(deliveries: &[Delivery<'_>]) -> Vec<bool> {
    send_batch(deliveries, crate::uring::enabled())
}

/// [`send_all`], with io_uring (where the kernel offers it) or without.
fn send_batch(deliveries: &[Delivery<'_>], uring: bool) -> Vec<bool> {
    let mut answers = vec![true; deliveries.len()];
    // Deliveries for the ordinary path, after the batch.
    let mut each = Vec::new();
    // Sockets with an empty queue, locked until their write is accounted for.
    let mut held: Vec<(usize, MutexGuard<'_, Out>)> = Vec::new();
    for (i, d) in deliveries.iter().enumerate() {
        if d.frames.is_empty() {
            continue;
        }
        if deliveries.len() == 1 || d.frames.len() > MAX_FRAMES_PER_WRITE {
            each.push(i);
            continue;
        }
        // Never wait for a lock while holding others: one socket may carry several members
        // (a Hocuspocus socket, one per document), and another room may be sending to it.
        let mut out = match d.peer.out.try_lock() {
            Ok(out) => out,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                each.push(i);
                continue;
            }
        };
        match out.admit(d.frames, d.limits) {
            Some(answer) => answers[i] = answer,
            None => held.push((i, out)),
        }
    }
    let batched = if uring && held.len() > 1 {
        let mut writes = crate::uring::Writes::new();
        for (i, _) in &held {
            let d = &deliveries[*i];
            writes.push(
                d.peer.stream.as_fd(),
                d.frames.iter().flat_map(|f| f.slices(0)),
            );
        }
        writes.write()
    } else {
        None
    };
    match batched {
        Some(written) => {
            for ((i, out), written) in held.into_iter().zip(written) {
                let d = &deliveries[i];
                answers[i] = d.peer.wrote(out, d.frames, written);
            }
        }
        None => {
            for (i, out) in held {
                let d = &deliveries[i];
                let written = write_frames(&d.peer.stream, d.frames.iter(), 0);
                answers[i] = d.peer.wrote(out, d.frames, written);
            }
        }
    }
    for i in each {
        let d = &deliveries[i];
        answers[i] = d.peer.send(d.frames, d.limits);
    }
    answers
}

/// What woke the connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    Close,
    Writable,
    Readable,
    Failed,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failure here is the test failing
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    const ROOMY: QueueLimits = QueueLimits {
        frames: 1024,
        bytes: 64 << 20,
    };

    /// `n` peers (server sides) and their clients.
    async fn peers(n: usize) -> (Vec<Peer>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut servers, mut clients) = (Vec::new(), Vec::new());
        for i in 0..n {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (s, _) = listener.accept().await.unwrap();
            servers.push(Peer::new(i as ConnId, s));
        }
        (servers, clients)
    }

    fn to<'a>(peer: &'a Peer, frames: &'a [OutFrame], limits: QueueLimits) -> Delivery<'a> {
        Delivery {
            peer,
            frames,
            limits,
        }
    }

    /// The frame `OutFrame::binary(body)` as a client reads it.
    fn wire(body: &[u8]) -> Vec<u8> {
        let f = OutFrame::binary(Bytes::copy_from_slice(body));
        let [a, b] = f.slices(0);
        [a, b].concat()
    }

    async fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        client.read_exact(&mut got).await.unwrap();
        got
    }

    /// Every delivery of a batch arrives, in order, and counts as sent; both with io_uring and
    /// with one writev per socket. One socket carrying two members (Hocuspocus) gets both.
    #[tokio::test]
    async fn a_batch_delivers_to_every_socket_in_order() {
        for uring in [true, false] {
            let (servers, mut clients) = peers(5).await;
            let frames: Vec<Vec<OutFrame>> = (0..5)
                .map(|i| {
                    vec![
                        OutFrame::binary(Bytes::from(format!("a{i}"))),
                        OutFrame::binary(Bytes::from(format!("b{i}"))),
                    ]
                })
                .collect();
            let mut deliveries: Vec<Delivery<'_>> = servers
                .iter()
                .zip(&frames)
                .map(|(peer, frames)| to(peer, frames, ROOMY))
                .collect();
            let again = [OutFrame::binary(Bytes::from_static(b"again"))];
            deliveries.push(to(&servers[2], &again, ROOMY));
            assert_eq!(send_batch(&deliveries, uring), vec![true; 6]);
            for (i, client) in clients.iter_mut().enumerate() {
                let mut expected = [
                    wire(format!("a{i}").as_bytes()),
                    wire(format!("b{i}").as_bytes()),
                ]
                .concat();
                if i == 2 {
                    expected.extend(wire(b"again"));
                }
                assert_eq!(
                    read_exactly(client, expected.len()).await,
                    expected,
                    "uring {uring}, socket {i}"
                );
                assert_eq!(servers[i].queued_bytes(), 0);
            }
        }
    }

    /// What a full socket does not take is queued (and written once it drains); a socket with
    /// a queue gets its frames queued behind, and a queue over its limits refuses the frames;
    /// a dead socket closes. A batch treats each socket as `Peer::send` alone would.
    #[tokio::test]
    async fn a_batch_queues_the_rest_refuses_over_limits_and_closes_dead_sockets() {
        for uring in [true, false] {
            let (servers, mut clients) = peers(3).await;
            socket2::SockRef::from(servers[0].stream())
                .set_send_buffer_size(4096)
                .unwrap();
            let big = vec![OutFrame::binary(Bytes::from(vec![1u8; 4 << 20]))];
            let small = vec![OutFrame::binary(Bytes::from_static(b"small"))];
            let first = [to(&servers[0], &big, ROOMY), to(&servers[1], &small, ROOMY)];
            assert_eq!(send_batch(&first, uring), vec![true, true]);
            let queued = servers[0].queued_bytes();
            assert!(
                queued > 0 && queued < big[0].len(),
                "uring {uring}: the rest is queued ({queued})"
            );
            assert_eq!(servers[1].queued_bytes(), 0);

            // Behind a queue: queued if it fits, refused (nothing queued) if not.
            let tight = QueueLimits {
                frames: 2,
                bytes: 64 << 20,
            };
            let two = vec![small[0].clone(), small[0].clone()];
            let second = [
                to(&servers[0], &small, tight),
                to(&servers[0], &two, tight),
                to(&servers[1], &small, ROOMY),
            ];
            assert_eq!(send_batch(&second, uring), vec![true, false, true]);
            assert_eq!(servers[0].queued_bytes(), queued + small[0].len());

            // The connection task's part: write the queue as the client reads.
            let expected = [wire(&vec![1u8; 4 << 20]), wire(b"small")].concat();
            let reader = read_exactly(&mut clients[0], expected.len());
            let writer = async {
                while servers[0].queued_bytes() > 0 {
                    servers[0].stream().writable().await.unwrap();
                    servers[0].write_queued().unwrap();
                }
            };
            let (got, ()) = tokio::join!(reader, writer);
            assert!(
                got == expected,
                "uring {uring}: the big frame, then the small one"
            );
            let two_small = [wire(b"small"), wire(b"small")].concat();
            assert_eq!(
                read_exactly(&mut clients[1], two_small.len()).await,
                two_small
            );

            // A dead socket: the write fails (at once, or once the reset is in) and the peer
            // closes; the answer is not "too slow".
            let dead = peers(2).await;
            let (dead_servers, mut dead_clients) = dead;
            drop(dead_clients.remove(0));
            let mut closed = false;
            for _ in 0..200 {
                let d = [
                    to(&dead_servers[0], &small, ROOMY),
                    to(&dead_servers[1], &small, ROOMY),
                ];
                assert_eq!(send_batch(&d, uring), vec![true, true]);
                if dead_servers[0].lock().close.is_some() {
                    closed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(closed, "uring {uring}: a write to a dead socket closes it");
            assert!(dead_servers[0].lock().failed);
        }
    }
}
