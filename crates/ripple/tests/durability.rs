//! The binary end to end when storage is the question: per-party persistence under a global
//! `persist = "none"`, a data directory that fills up (a real, small tmpfs) and recovers, and
//! SIGTERM under load (every acknowledged update is on disk afterwards).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ripple_client::Client;
use yrs::{GetString, Text, Transact};

mod common;

use common::{listening_port, ripple};

const WAIT: Duration = Duration::from_secs(15);

struct Ripple {
    child: Child,
    port: u16,
}

impl Ripple {
    fn start(args: &[&str]) -> Self {
        let mut child = ripple()
            .args(["serve", "--port", "0"])
            .args(args)
            .env("RIPPLE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ripple");
        let port = listening_port(&mut child);
        Self { child, port }
    }

    fn url(&self, party: &str, room: &str) -> String {
        format!("ws://127.0.0.1:{}/parties/{party}/{room}", self.port)
    }

    async fn client(&self, party: &str, room: &str) -> Client {
        let mut c = Client::connect(&self.url(party, room))
            .await
            .expect("connect");
        c.synced(WAIT).await.expect("synced");
        c
    }

    /// `GET path`: (status, body).
    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).await
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns its status and how long it took.
    fn terminate(mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().to_string();
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                return (exit, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "ripple did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ripple {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection.
async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// Polls `GET path` until it answers `want`, up to `timeout`.
async fn wait_status(server: &Ripple, path: &str, want: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = server.get(path).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {status} {body:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text_of(c: &Client) -> String {
    let t = c.doc().get_or_insert_text("t");
    let s = t.get_string(&c.doc().transact());
    s
}

/// Appends `s` to the text and waits until a second client sees it: what a second client sees
/// was stored first (durable before visible).
async fn write_and_confirm(server: &Ripple, party: &str, room: &str, s: &str) {
    let writer = server.client(party, room).await;
    let t = writer.doc().get_or_insert_text("t");
    writer
        .edit(|txn| {
            let end = t.len(txn);
            t.insert(txn, end, s)
        })
        .expect("edit");
    let mut observer = server.client(party, room).await;
    let want = s.to_owned();
    observer
        .wait_for("edit", WAIT, |_, doc| {
            let t = doc.get_or_insert_text("t");
            t.get_string(&doc.transact()).contains(&want)
        })
        .await
        .expect("observer sees the edit");
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("ripple.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_that_persists_keeps_its_rooms_when_the_global_mode_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &format!(
            "persist = \"none\"\ndata_dir = {:?}\nroom_linger_secs = 0.2\n\n[parties.x]\npersist = \"snapshot\"\n",
            data.display().to_string()
        ),
    );
    let config = config.to_str().expect("path");
    let server = Ripple::start(&["--config", config]);
    write_and_confirm(&server, "x", "kept", "in x").await;
    write_and_confirm(&server, "main", "scratch", "in main").await;
    let (exit, _) = server.terminate(WAIT);
    assert!(exit.success(), "ripple exited with {exit}");

    let server = Ripple::start(&["--config", config]);
    let kept = server.client("x", "kept").await;
    assert_eq!(text_of(&kept), "in x", "party x persists");
    let scratch = server.client("main", "scratch").await;
    assert_eq!(text_of(&scratch), "", "the global mode keeps nothing");
}
