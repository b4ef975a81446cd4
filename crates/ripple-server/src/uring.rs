//! Many sockets' non-blocking writes in one system call, through io_uring.
//!
//! A broadcast writes the same frame to every member's socket. With one `writev` each, a room
//! of ten pays ten system calls, and on a small machine ten chances for the woken receiver to
//! preempt the room at the return to user mode (what a loopback benchmark sees, and any host
//! whose clients share its cores). Here the room hands the kernel all its writes at once: one
//! `io_uring_enter` carries a `sendmsg` per socket, each with `MSG_DONTWAIT`, so each completes
//! (or fails with `EAGAIN`) inside that call, and none ever waits in the kernel.
//!
//! Hand-written on the `io-uring` crate rather than tokio-uring or monoio: those replace the
//! runtime and own the sockets, and what is wanted here is one synchronous batch from a tokio
//! worker, on sockets tokio keeps. Each thread that sends gets its own small ring on first use.
//! Where io_uring is missing or forbidden (old kernels, seccomp profiles of container runtimes,
//! `io_uring = false` in the config), [`Writes::write`] says so and the caller writes one
//! socket at a time, as before.
//!
//! The only `unsafe` code in Ripple is here (the workspace denies it elsewhere): handing the
//! kernel pointers to buffers it reads asynchronously. The rule that makes it sound is local to
//! [`imp::write`]: every submitted entry's completion is reaped before it returns.
#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Whether batches may use io_uring (the `io_uring` setting).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns io_uring batching on or off for the whole process (the `io_uring` setting).
pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Relaxed);
}

/// Whether batches should use io_uring ([`set_enabled`]).
pub(crate) fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Writes to several sockets, gathered for one system call. Each entry is one socket and the
/// slices to write to it, in order; the slices are borrowed until [`Writes::write`] returns.
#[derive(Debug, Default)]
pub(crate) struct Writes<'a> {
    fds: Vec<RawFd>,
    iovs: Vec<IoVec>,
    /// Per entry, the end of its slices in `iovs`.
    ends: Vec<usize>,
    _borrow: PhantomData<(&'a [u8], BorrowedFd<'a>)>,
}

/// A slice as the kernel reads it (`struct iovec`).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct IoVec {
    base: *const u8,
    len: usize,
}

impl<'a> Writes<'a> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a write of `slices`, in order, to `socket`.
    pub(crate) fn push(
        &mut self,
        socket: BorrowedFd<'a>,
        slices: impl IntoIterator<Item = &'a [u8]>,
    ) {
        self.fds.push(socket.as_raw_fd());
        for s in slices {
            if !s.is_empty() {
                self.iovs.push(IoVec {
                    base: s.as_ptr(),
                    len: s.len(),
                });
            }
        }
        self.ends.push(self.iovs.len());
    }

    /// Writes each entry once, without blocking, all in one system call (or a few, past 64
    /// entries). Returns, per entry in order, the bytes the socket took (possibly fewer than
    /// given, 0 when its buffer is full) or the error that ended it. `None` when io_uring is
    /// not available on this thread: then nothing was written.
    pub(crate) fn write(self) -> Option<Vec<io::Result<usize>>> {
        if self.fds.is_empty() {
            return None;
        }
        imp::write(&self.fds, &self.iovs, &self.ends)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::RawFd;
    use std::sync::Once;

    use io_uring::{opcode, types, IoUring};

    use super::IoVec;

    /// Entries per ring: a batch larger than this goes in several calls.
    const RING_ENTRIES: u32 = 64;
    /// How often a transient failure to submit (`EINTR`, `EAGAIN`, `EBUSY`) is retried before
    /// the process gives up (see [`fatal`]).
    const RETRIES: u32 = 100_000;

    enum Slot {
        Untried,
        Ready(Box<IoUring>),
        Unavailable,
    }

    thread_local! {
        static RING: RefCell<Slot> = const { RefCell::new(Slot::Untried) };
    }

    fn open() -> io::Result<IoUring> {
        // Single issuer and cooperative task running (Linux 6.0, 5.19) spare the kernel work;
        // without them the ring works the same. Submit-all (5.18): one bad entry does not stop
        // the others from being submitted.
        IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_submit_all()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::builder().setup_submit_all().build(RING_ENTRIES))
            .or_else(|_| IoUring::new(RING_ENTRIES))
    }

    /// A state the kernel's interface rules out. Buffers of a submitted write may still be
    /// read by the kernel, so returning (and freeing them) would be unsound: stop the process.
    #[cold]
    fn fatal(what: &str, e: &io::Error) -> ! {
        eprintln!("ripple: io_uring {what} failed ({e}); stopping, as its writes' buffers may still be in use");
        std::process::abort()
    }

    fn transient(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
        )
    }

    pub(super) fn write(
        fds: &[RawFd],
        iovs: &[IoVec],
        ends: &[usize],
    ) -> Option<Vec<io::Result<usize>>> {
        RING.with(|slot| {
            let mut slot = slot.borrow_mut();
            if let Slot::Untried = *slot {
                *slot = match open() {
                    Ok(ring) => Slot::Ready(Box::new(ring)),
                    Err(e) => {
                        static SAID: Once = Once::new();
                        SAID.call_once(|| {
                            tracing::info!(error = %e, "io_uring is not available: each socket is written with its own system call");
                        });
                        Slot::Unavailable
                    }
                };
            }
            let Slot::Ready(ring) = &mut *slot else {
                return None;
            };
            Some(run(ring, fds, iovs, ends))
        })
    }

    fn run(
        ring: &mut IoUring,
        fds: &[RawFd],
        iovs: &[IoVec],
        ends: &[usize],
    ) -> Vec<io::Result<usize>> {
        // The message headers the kernel reads; allocated once, never moved while in use.
        let mut msgs: Vec<libc::msghdr> = Vec::with_capacity(fds.len());
        let mut start = 0;
        for &end in ends {
            // SAFETY: msghdr is plain data; all zero is a valid, empty header.
            let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
            m.msg_iov = iovs[start..end].as_ptr() as *mut libc::iovec;
            m.msg_iovlen = (end - start) as _;
            msgs.push(m);
            start = end;
        }
        let mut results: Vec<Option<io::Result<usize>>> = (0..fds.len()).map(|_| None).collect();
        let flags = (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32;
        let chunk = RING_ENTRIES as usize;
        let mut first = 0;
        while first < fds.len() {
            let last = (first + chunk).min(fds.len());
            {
                let mut sq = ring.submission();
                for (i, (&fd, msg)) in fds[first..last].iter().zip(&msgs[first..last]).enumerate() {
                    let entry = opcode::SendMsg::new(types::Fd(fd), msg)
                        .flags(flags)
                        .build()
                        .user_data((first + i) as u64);
                    // SAFETY: the header, its slices and the socket outlive the write: this
                    // function waits below for every entry's completion before it returns.
                    if unsafe { sq.push(&entry) }.is_err() {
                        // The ring is drained between chunks and a chunk fits it.
                        fatal("queueing", &io::Error::other("submission queue full"));
                    }
                }
            }
            let mut pending = last - first;
            let mut tries = 0;
            // Hand every entry to the kernel first: waiting for more completions than were
            // submitted would never end.
            while !ring.submission().is_empty() {
                if let Err(e) = ring.submit() {
                    tries += 1;
                    if !transient(&e) || tries > RETRIES {
                        fatal("submission", &e);
                    }
                }
            }
            while pending > 0 {
                let got: Vec<(u64, i32)> = ring
                    .completion()
                    .map(|c| (c.user_data(), c.result()))
                    .collect();
                for (who, result) in got {
                    let Some(slot) = results.get_mut(who as usize) else {
                        continue;
                    };
                    *slot = Some(outcome(result));
                    pending -= 1;
                }
                if pending == 0 {
                    break;
                }
                if let Err(e) = ring.submit_and_wait(pending) {
                    tries += 1;
                    if !transient(&e) || tries > RETRIES {
                        fatal("wait", &e);
                    }
                }
            }
            first = last;
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("io_uring lost a completion"))))
            .collect()
    }

    /// A completion's result: bytes written, 0 if the socket could take nothing now (or the
    /// call was interrupted: the caller queues the bytes and writes them later), or the error.
    fn outcome(result: i32) -> io::Result<usize> {
        if result >= 0 {
            return Ok(result as usize);
        }
        match -result {
            libc::EAGAIN | libc::EINTR => Ok(0),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::os::fd::RawFd;

    use super::IoVec;

    pub(super) fn write(_: &[RawFd], _: &[IoVec], _: &[usize]) -> Option<Vec<io::Result<usize>>> {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failure here is the test failing
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use super::*;

    /// Without io_uring these tests have nothing to test (peer.rs tests the fallback): in CI
    /// (`RIPPLE_REQUIRE_SERVICES=1`) that is a failure, elsewhere it is said.
    fn unavailable() {
        assert!(
            std::env::var("RIPPLE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "io_uring is not available here, so the batched write path is untested"
        );
        eprintln!("SKIPPED: io_uring is not available on this machine");
    }

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    #[test]
    fn one_batch_writes_every_socket_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pairs: Vec<_> = (0..70).map(|_| pair(&listener)).collect();
        let bodies: Vec<Vec<u8>> = (0..pairs.len())
            .map(|i| format!("body {i}").into_bytes())
            .collect();
        let mut writes = Writes::new();
        for ((server, _), body) in pairs.iter().zip(&bodies) {
            writes.push(server.as_fd(), [&b"head:"[..], &body[..], &b""[..]]);
        }
        let Some(results) = writes.write() else {
            return unavailable();
        };
        for (i, ((_, client), result)) in pairs.iter().zip(results).enumerate() {
            let expected = [&b"head:"[..], &bodies[i][..]].concat();
            assert_eq!(result.unwrap(), expected.len());
            let mut got = vec![0; expected.len()];
            let mut client = client;
            client.read_exact(&mut got).unwrap();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_full_socket_takes_part_and_a_dead_one_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (full, _full_client) = pair(&listener);
        let (dead, dead_client) = pair(&listener);
        socket2::SockRef::from(&full)
            .set_send_buffer_size(4096)
            .unwrap();
        drop(dead_client);
        // The reset arrives once the peer's socket sees data; write until the kernel says so.
        let big = vec![7u8; 8 << 20];
        let mut taken_first = None;
        let mut dead_error = None;
        for _ in 0..50 {
            let mut writes = Writes::new();
            writes.push(full.as_fd(), [&big[..]]);
            writes.push(dead.as_fd(), [&b"hello"[..]]);
            let Some(mut results) = writes.write() else {
                return unavailable();
            };
            let dead_result = results.pop().unwrap();
            let full_result = results.pop().unwrap().unwrap();
            taken_first.get_or_insert(full_result);
            if let Err(e) = dead_result {
                dead_error = Some(e);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let taken = taken_first.unwrap();
        assert!(
            taken > 0 && taken < big.len(),
            "a full socket takes part of it: {taken}"
        );
        let e = dead_error.expect("a write to a closed peer fails");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
}
