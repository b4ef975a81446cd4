//! The binary end to end when storage is the question: per-party persistence under a global
//! `persist = "none"`, a data directory that fills up (a real, small tmpfs) and recovers, and
//! SIGTERM under load (every acknowledged update is on disk afterwards).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped (even when the test
/// fails: declare it before anything that uses it, so it is dropped last).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (after saying so on stderr) when mounting is not possible here; fails the test
    /// instead under `RIPPLE_REQUIRE_SERVICES=1`.
    fn mount(parent: &Path, size: &str) -> Option<Self> {
        let dir = parent.join("small-disk");
        std::fs::create_dir_all(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Self { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                let msg = format!("cannot mount a tmpfs (needs root): {}", why.trim());
                assert!(
                    std::env::var("RIPPLE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "{msg}"
                );
                eprintln!("SKIPPED: {msg}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a child that outlived a failed test): detach it now, freed when idle.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes zeros to `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 16 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
    // What the page cache accepted must really be on the filesystem (tmpfs: it is).
    let _ = f.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_closes_the_room_with_1011_makes_readyz_503_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = Tmpfs::mount(dir.path(), "2m") else {
        return;
    };
    let config = write_config(
        dir.path(),
        &format!(
            "data_dir = {:?}\nroom_linger_secs = 0.2\nstorage_unready_secs = 1.0\n",
            disk.dir.display().to_string()
        ),
    );
    let config = config.to_str().expect("path");
    let server = Ripple::start(&["--config", config]);
    write_and_confirm(&server, "main", "full", "acknowledged;").await;
    wait_status(&server, "/readyz", 200, WAIT).await;

    let filler = disk.dir.join("filler");
    let filled = fill(&filler);
    eprintln!("disk full: filled {filled} bytes");
    let mut writer = server.client("main", "full").await;
    let mut peer = server.client("main", "full").await;
    // Larger than any WAL space SQLite could reuse: the commit needs new pages.
    let big = "x".repeat(300_000);
    let t = writer.doc().get_or_insert_text("t");
    writer
        .edit(|txn| {
            let end = t.len(txn);
            t.insert(txn, end, &big)
        })
        .expect("edit");
    let (code, reason) = writer.wait_closed(WAIT).await.expect("writer closed");
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("storage"), "{reason}");
    let (code, _) = peer.wait_closed(WAIT).await.expect("peer closed");
    assert_eq!(code, 1011);
    assert_eq!(
        text_of(&peer),
        "acknowledged;",
        "the unstored edit was never broadcast"
    );
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");

    // Space comes back: the server recovers on its own.
    std::fs::remove_file(&filler).expect("free space");
    wait_status(&server, "/readyz", 200, WAIT).await;
    let kept = writer.doc().clone();
    drop(writer);
    let mut again = Client::connect_with(&server.url("main", "full"), kept)
        .await
        .expect("reconnect");
    again.synced(WAIT).await.expect("synced");
    let mut fresh = server.client("main", "full").await;
    let want = format!("acknowledged;{big}");
    fresh
        .wait_for("the resynced edit", WAIT, |_, doc| {
            let t = doc.get_or_insert_text("t");
            t.get_string(&doc.transact()) == want
        })
        .await
        .expect("the writer's edit is stored once space is back");
    drop((again, fresh, peer));
    let (exit, _) = server.terminate(WAIT);
    assert!(exit.success(), "ripple exited with {exit}");

    // And it is on disk: a new server has all of it.
    let server = Ripple::start(&["--config", config]);
    let c = server.client("main", "full").await;
    assert_eq!(text_of(&c), want, "nothing acknowledged is lost");
    drop(c);
    let (exit, _) = server.terminate(WAIT);
    assert!(exit.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_acknowledged_update_compacts_and_exits_0_in_time() {
    const ROOMS: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("path");
    let grace = Duration::from_secs(10);
    let server = Ripple::start(&["--data-dir", data_arg]);
    // One writer and one observer per room. What an observer saw was stored before it was
    // sent (durable before visible): that is the acknowledged set.
    let mut writers = Vec::new();
    let mut observers = Vec::new();
    for r in 0..ROOMS {
        writers.push(server.client("main", &format!("load-{r}")).await);
        observers.push(server.client("main", &format!("load-{r}")).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(r, w)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let t = w.doc().get_or_insert_text("t");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && w.observed().closed.is_none() {
                    let tag = format!("r{r}-{n};");
                    if w.edit(|txn| {
                        let end = t.len(txn);
                        t.insert(txn, end, &tag)
                    })
                    .is_err()
                    {
                        break;
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (w, n)
            })
        })
        .collect();
    // Let the load run until every room has acknowledged a good number of edits.
    for o in &mut observers {
        o.wait_for("load", WAIT, |_, doc| {
            let t = doc.get_or_insert_text("t");
            t.get_string(&doc.transact()).matches(';').count() >= 100
        })
        .await
        .expect("edits flow");
    }
    let port = server.port;
    let (exit, took) = tokio::task::spawn_blocking(move || server.terminate(grace + WAIT))
        .await
        .expect("terminate");
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for t in tasks {
        let (_w, n) = t.await.expect("writer");
        sent += n;
    }
    assert!(exit.success(), "ripple exited with {exit}");
    assert!(took < grace, "exit took {took:?}, grace is {grace:?}");
    let mut acknowledged = Vec::new();
    for o in &mut observers {
        let _ = o.wait_closed(WAIT).await;
        acknowledged.push(text_of(o));
    }
    let acked: usize = acknowledged.iter().map(|s| s.matches(';').count()).sum();
    eprintln!("sigterm: {sent} edits sent, {acked} acknowledged, exit 0 after {took:?}");
    assert!(
        http_get_refused(port).await,
        "the server is gone after its exit"
    );

    // Every acknowledged edit is on disk, and every room was folded into its snapshot.
    let db = rusqlite::Connection::open(data.join("ripple.db")).expect("open the store");
    let logged: i64 = db
        .query_row("SELECT count(*) FROM updates", [], |row| row.get(0))
        .expect("count updates");
    assert_eq!(logged, 0, "rooms compacted on shutdown");
    drop(db);
    for (r, seen) in acknowledged.iter().enumerate() {
        let out = ripple()
            .args([
                "export",
                &format!("load-{r}"),
                "--json",
                "--data-dir",
                data_arg,
            ])
            .output()
            .expect("export");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("export --json");
        let stored = json["t"].as_str().unwrap_or_default();
        for tag in seen.split_terminator(';') {
            assert!(
                stored.contains(&format!("{tag};")),
                "acknowledged edit {tag} of room {r} is missing on disk"
            );
        }
    }
}

/// Whether connecting to `port` now fails (nothing listens).
async fn http_get_refused(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
}
