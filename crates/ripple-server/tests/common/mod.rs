//! Test harness: a real server on 127.0.0.1:0 in this process, and helpers around
//! `ripple_client::Client`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ripple_client::Client;
use ripple_core::{MemoryStore, Store};
use ripple_server::{Authorize, Config, Server, Stats};
use tokio::sync::oneshot;
use yrs::{GetString, Text, Transact};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub store: Arc<dyn Store>,
    stop: Option<oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub fn test_config() -> Config {
    Config {
        port: 0,
        room_linger_secs: 0.2,
        ..Config::default()
    }
}

pub async fn start(config: Config) -> TestServer {
    start_with(config, Arc::new(MemoryStore::new()), None).await
}

pub async fn start_with(
    config: Config,
    store: Arc<dyn Store>,
    auth: Option<Arc<dyn Authorize>>,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut server = Server::new(config, store.clone());
    if let Some(auth) = auth {
        server.auth = auth;
    }
    let stats = server.stats.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        stats,
        store,
        stop: Some(stop),
        handle,
    }
}

impl TestServer {
    pub fn url(&self, room: &str) -> String {
        format!("ws://{}/{}", self.addr, room)
    }

    pub fn party_url(&self, party: &str, room: &str) -> String {
        format!("ws://{}/parties/{}/{}?_pk=test", self.addr, party, room)
    }

    pub async fn client(&self, room: &str) -> Client {
        let mut c = Client::connect(&self.url(room)).await.expect("connect");
        c.synced(WAIT).await.expect("synced");
        c
    }

    pub fn stat(&self, f: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.stats).load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn wait_stat(
        &self,
        what: &str,
        f: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64,
        pred: impl Fn(u64) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(self.stat(&f)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} (now {})",
                self.stat(&f)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("server stops in time")
            .expect("server task")
    }
}

pub fn insert_text(c: &Client, at: u32, s: &str) {
    let text = c.doc().get_or_insert_text("t");
    c.edit(|txn| text.insert(txn, at, s)).expect("edit");
}

pub fn text(c: &Client) -> String {
    let t = c.doc().get_or_insert_text("t");
    let txn = c.doc().transact();
    t.get_string(&txn)
}

pub async fn wait_text(c: &mut Client, want: &str) {
    let t = c.doc().get_or_insert_text("t");
    let want = want.to_owned();
    let res = c
        .wait_for("text", WAIT, |_, doc| {
            let txn = doc.transact();
            t.get_string(&txn) == want
        })
        .await;
    assert!(res.is_ok(), "text is {:?}, wanted {:?}", text(c), want);
}

/// A plain HTTP/1.0 GET; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.expect("read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Asserts what a room does when it cannot store an edit: the writer and its peer are both
/// closed with 1011, and the peer never received the edit (its text is still `peer_text`).
pub async fn assert_room_failed_unbroadcast(
    writer: &mut Client,
    peer: &mut Client,
    peer_text: &str,
) {
    let (code, reason) = writer.wait_closed(WAIT).await.expect("writer closed");
    assert_eq!(code, 1011, "{reason}");
    let (code, _) = peer.wait_closed(WAIT).await.expect("peer closed");
    assert_eq!(code, 1011);
    assert_eq!(
        text(peer),
        peer_text,
        "an update that was not stored is never broadcast"
    );
}

/// An RFC 6455 upgrade request for `path`, with the RFC's example key (whose accept value is
/// `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`), for tests that speak WebSocket on a raw socket.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Waits until every frame the server sent `c` before this call has arrived: `c` sends an
/// awareness update with a fresh value and waits for its echo. A room handles a connection's
/// messages in order and writes to each socket in order, so anything the room sent `c` while
/// handling what came earlier arrives before the echo. A negative assertion ("`c` never got
/// X") after this checks something that really had its chance to arrive, unlike one after a
/// fixed sleep.
pub async fn barrier(c: &mut Client) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let state = format!(r#"{{"barrier":{n}}}"#);
    c.set_awareness(&state).expect("send barrier");
    let id = c.doc().client_id().get();
    c.wait_for("barrier echo", WAIT, |o, _| {
        o.awareness.get(&id) == Some(&state)
    })
    .await
    .expect("the barrier's awareness is echoed");
}
