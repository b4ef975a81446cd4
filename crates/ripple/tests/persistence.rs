//! The binary end to end: state survives restarts (SQLite and Postgres), the maintenance
//! commands work on what the server stored, and corrupt records are reported, refused and
//! salvaged without deleting anything.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ripple_client::Client;
use yrs::{GetString, Map, Text, Transact};

const WAIT: Duration = Duration::from_secs(15);

struct Ripple {
    child: Child,
    port: u16,
}

mod common;

use common::{listening_port, ripple};

impl Ripple {
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = ripple()
            .args(["serve", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(["--room-linger-secs", "0.2"])
            .args(extra)
            .env("RIPPLE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ripple");
        let port = listening_port(&mut child);
        Self { child, port }
    }

    fn url(&self, room: &str) -> String {
        format!("ws://127.0.0.1:{}/parties/main/{room}", self.port)
    }

    async fn client(&self, room: &str) -> Client {
        let mut c = Client::connect(&self.url(room)).await.expect("connect");
        c.synced(WAIT).await.expect("synced");
        c
    }

    /// SIGTERM and wait; the exit status must be success.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "ripple exited with {exit}");
    }
}

impl Drop for Ripple {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text_of(c: &Client) -> String {
    let t = c.doc().get_or_insert_text("t");
    let s = t.get_string(&c.doc().transact());
    s
}

async fn write_and_confirm(server: &Ripple, room: &str, s: &str) {
    let writer = server.client(room).await;
    let t = writer.doc().get_or_insert_text("t");
    writer.edit(|txn| t.insert(txn, 0, s)).expect("edit");
    // A second client seeing the edit means the server stored it (durable before visible).
    let mut observer = server.client(room).await;
    let want = s.to_owned();
    observer
        .wait_for("edit", WAIT, |_, doc| {
            let t = doc.get_or_insert_text("t");
            t.get_string(&doc.transact()).contains(&want)
        })
        .await
        .expect("observer sees the edit");
}

fn run_ok(args: &[&str], data_dir: &Path) -> String {
    let out = ripple()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run ripple");
    assert!(
        out.status.success(),
        "ripple {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_state_survives_restarts_and_cli_sees_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Ripple::start(dir.path(), &[]);
    write_and_confirm(&server, "doc-1", "hello").await;
    {
        let mut c = server.client("doc-1").await;
        let m = c.doc().get_or_insert_map("meta");
        c.edit(|txn| {
            m.insert(txn, "title", "Notes");
        })
        .expect("edit");
        // The close frame queues behind the edit, so the server reads the edit first.
        c.close();
        c.wait_closed(WAIT).await.expect("closed");
    }
    write_and_confirm(&server, "doc-2", "other").await;
    server.stop();

    let server = Ripple::start(dir.path(), &[]);
    let c = server.client("doc-1").await;
    assert_eq!(text_of(&c), "hello");
    let c2 = server.client("doc-2").await;
    assert_eq!(text_of(&c2), "other");
    drop((c, c2));
    server.stop();

    let rooms = run_ok(&["rooms"], dir.path());
    assert!(
        rooms.contains("main/doc-1") && rooms.contains("main/doc-2"),
        "{rooms}"
    );
    let json = run_ok(&["export", "doc-1", "--json"], dir.path());
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(value["t"], "hello", "{json}");
    assert_eq!(value["meta"]["title"], "Notes", "{json}");

    // export → import into a new room → the new room has the same content.
    let file = dir.path().join("doc-1.bin");
    run_ok(
        &["export", "doc-1", "--out", file.to_str().expect("path")],
        dir.path(),
    );
    run_ok(
        &["import", "copy", file.to_str().expect("path")],
        dir.path(),
    );
    let json = run_ok(&["export", "copy", "--json"], dir.path());
    assert!(json.contains("hello"), "{json}");

    let out = run_ok(&["compact"], dir.path());
    assert!(out.contains("main/copy"), "{out}");
    let fsck = run_ok(&["fsck"], dir.path());
    assert!(fsck.contains("ok"), "{fsck}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn postgres_state_survives_restarts() {
    let url = ripple_store::testing::database_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let room = format!("restart-{}", std::process::id());
    let server = Ripple::start(dir.path(), &["--storage", &url]);
    write_and_confirm(&server, &room, "in postgres").await;
    server.stop();
    let server = Ripple::start(dir.path(), &["--storage", &url]);
    let c = server.client(&room).await;
    assert_eq!(text_of(&c), "in postgres");
    drop(c);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_refused_reported_and_salvaged_never_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Ripple::start(dir.path(), &["--persist", "history"]);
    write_and_confirm(&server, "victim", "first").await;
    write_and_confirm(&server, "victim", "second").await;
    write_and_confirm(&server, "bystander", "fine").await;
    server.stop();

    // Flip a byte inside the newest stored update of `victim`.
    let db = dir.path().join("ripple.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("open db");
        let changed = conn
            .execute(
                "UPDATE updates SET data = CAST(X'00FF' || data AS BLOB) \
                 WHERE room = 'victim' AND seq = (SELECT MAX(seq) FROM updates WHERE room = 'victim')",
                [],
            )
            .expect("corrupt");
        assert_eq!(changed, 1);
    }

    let fsck = ripple()
        .args(["fsck", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("fsck");
    let report = String::from_utf8_lossy(&fsck.stdout);
    assert!(!fsck.status.success(), "fsck exits non-zero on problems");
    assert!(report.contains("victim"), "{report}");
    assert!(!report.contains("bystander"), "{report}");

    // The server refuses the corrupt room with a reason, serves the other.
    let server = Ripple::start(dir.path(), &["--persist", "history"]);
    let mut c = Client::connect(&server.url("victim"))
        .await
        .expect("connect");
    let (code, reason) = c.wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1011, "{reason}");
    assert!(
        reason.contains("corrupt") || reason.contains("checksum"),
        "{reason}"
    );
    let ok = server.client("bystander").await;
    assert_eq!(text_of(&ok), "fine");
    drop(ok);
    server.stop();

    // Salvage moves the bad record aside; the room loads from what is intact.
    let out = run_ok(&["fsck", "victim", "--salvage"], dir.path());
    assert!(out.contains("moved 1"), "{out}");
    {
        let conn = rusqlite::Connection::open(&db).expect("open db");
        let quarantined: i64 = conn
            .query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))
            .expect("count");
        assert_eq!(quarantined, 1, "the bad record is kept, not deleted");
    }
    let server = Ripple::start(dir.path(), &["--persist", "history"]);
    let c = server.client("victim").await;
    assert!(text_of(&c).contains("first"), "{}", text_of(&c));
    drop(c);
    server.stop();
}
