//! The command line as a new user meets it: each command's help lists only the flags it uses,
//! maintenance commands name rooms as `ripple rooms` prints them and refuse storage that does
//! not exist, and `ripple dev` stays on 127.0.0.1 unless `--host` moves it (with a warning).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use bytes::Bytes;
use common::{listening_line, ripple};
use ripple_core::RoomKey;
use ripple_store::{Backend, Durability};
use yrs::{Text, Transact};

fn run(args: &[&str]) -> Output {
    ripple().args(args).output().expect("run ripple")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const SERVER_ONLY: [&str; 7] = [
    "--port",
    "--host",
    "--worker-threads",
    "--room-linger-secs",
    "--persist",
    "--max-message-bytes",
    "--durability",
];

#[test]
fn maintenance_help_lists_only_the_storage_flags() {
    for command in ["rooms", "export", "import", "compact", "fsck"] {
        let out = run(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help: {}", stderr(&out));
        let help = stdout(&out);
        for flag in SERVER_ONLY {
            assert!(
                !help.contains(flag),
                "`{command} --help` lists {flag}:\n{help}"
            );
        }
        for flag in ["--data-dir", "--storage", "--config"] {
            assert!(
                help.contains(flag),
                "`{command} --help` lacks {flag}:\n{help}"
            );
        }
    }
    for command in ["dev", "serve"] {
        let out = run(&[command, "--help"]);
        let help = stdout(&out);
        for flag in SERVER_ONLY.iter().chain(&["--data-dir", "--storage"]) {
            assert!(
                help.contains(flag),
                "`{command} --help` lacks {flag}:\n{help}"
            );
        }
    }
}

/// A data dir holding text `t` = "hello" in `main/doc-42` and "there" in `other/x`, stored as
/// the server would store it.
async fn stored_rooms(dir: &Path) {
    let backend = Backend::open("sqlite", dir, Durability::Strict)
        .await
        .expect("create storage");
    for (party, room, text) in [("main", "doc-42", "hello"), ("other", "x", "there")] {
        let doc = yrs::Doc::new();
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, text);
        let update = Bytes::from(txn.encode_update_v1());
        let key = RoomKey::new(party, room, 256).expect("key");
        backend
            .store()
            .append(&key, 0, vec![update])
            .await
            .expect("append");
    }
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    ripple()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run ripple")
}

fn exported_text(dir: &Path, args: &[&str]) -> String {
    let out = run_in(dir, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    json["t"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn rooms_prints_names_that_every_command_accepts_and_readable_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    stored_rooms(dir.path()).await;

    let out = run_in(dir.path(), &["rooms"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("LAST CHANGE (UTC)"), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("main/doc-42"))
        .unwrap_or_else(|| panic!("no main/doc-42 in\n{table}"));
    // The last column is a UTC time of today, e.g. 2026-12-01T09:41:07Z, not milliseconds.
    let today = &time_now_utc()[..10];
    let when = line.split_whitespace().last().unwrap_or_default();
    assert!(
        when.starts_with(today) && when.ends_with('Z') && when.len() == 20,
        "{line}"
    );

    // What `rooms` prints names the room everywhere; ROOM with --party too.
    assert_eq!(
        exported_text(dir.path(), &["export", "main/doc-42", "--json"]),
        "hello"
    );
    assert_eq!(
        exported_text(dir.path(), &["export", "doc-42", "--json"]),
        "hello"
    );
    assert_eq!(
        exported_text(dir.path(), &["export", "other/x", "--json"]),
        "there"
    );
    assert_eq!(
        exported_text(dir.path(), &["export", "x", "--party", "other", "--json"]),
        "there"
    );
    let out = run_in(dir.path(), &["export", "other/x", "--party", "main"]);
    assert!(!out.status.success(), "two parties at once are refused");
    let out = run_in(dir.path(), &["compact", "other/x"]);
    assert!(stdout(&out).contains("other/x"), "{}", stderr(&out));
    let out = run_in(dir.path(), &["fsck", "main/doc-42"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The machine form: one JSON object per room.
    let out = run_in(dir.path(), &["rooms", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rooms: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(rooms.len(), 2, "{rooms:?}");
    assert_eq!(rooms[0]["room"], "main/doc-42");
    assert_eq!(rooms[0]["party"], "main");
    assert_eq!(rooms[0]["id"], "doc-42");
    assert!(rooms[0]["last_change_ms"].as_i64().unwrap_or_default() > 0);
    assert!(
        rooms[0]["last_change"]
            .as_str()
            .is_some_and(|s| s.starts_with(today)),
        "{rooms:?}"
    );
}

/// Now, as `date -u` prints it in RFC 3339 form.
fn time_now_utc() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn maintenance_commands_refuse_storage_that_does_not_exist_and_create_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let typo = root.path().join("typo");
    let update = root.path().join("update.bin");
    std::fs::write(&update, [0u8, 0]).expect("write"); // an empty Yjs update
    let update = update.to_str().expect("path");
    for args in [
        &["rooms"][..],
        &["export", "doc"],
        &["import", "doc", update],
        &["compact"],
        &["fsck"],
    ] {
        let out = run_in(&typo, args);
        assert!(!out.status.success(), "{args:?} exits non-zero");
        let err = stderr(&out);
        assert!(
            err.contains("no Ripple storage") && err.contains(typo.to_str().expect("path")),
            "{args:?}: {err}"
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // (Postgres without Ripple's tables: ripple-store's
    // postgres_open_existing_refuses_a_database_without_ripple_tables.)
    let out = run_in(root.path(), &["rooms", "--storage", "memory"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("memory"), "{}", stderr(&out));
}

/// Starts `ripple dev` with `args` (plus `--port 0` and a fresh data dir), reads its listening
/// address, stops it and returns (address, stderr).
fn dev(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = ripple();
    cmd.args(["dev", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env("RIPPLE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ripple dev");
    let line = listening_line(&mut child);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).expect("stderr");
    }
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "ripple dev exited with {exit}: {err}");
    let addr = line
        .trim()
        .strip_prefix("ripple listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (addr, err)
}

#[test]
fn dev_stays_local_unless_host_is_given_and_then_warns() {
    let (addr, err) = dev(&[], &[("RIPPLE_HOST", "0.0.0.0")]);
    assert!(
        addr.starts_with("127.0.0.1:"),
        "RIPPLE_HOST moved dev to {addr}"
    );
    assert!(!err.contains("AUTHENTICATION OFF"), "{err}");
    assert!(err.contains("RIPPLE_HOST is for `ripple serve`"), "{err}");

    let config = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(config.path(), "host = \"0.0.0.0\"\n").expect("write config");
    let path = config.path().to_str().expect("path");
    let (addr, _) = dev(&["--config", path], &[]);
    assert!(
        addr.starts_with("127.0.0.1:"),
        "ripple.toml moved dev to {addr}"
    );

    let (addr, err) = dev(&["--host", "0.0.0.0"], &[]);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    assert!(
        err.contains("AUTHENTICATION OFF") && err.contains("anyone who can reach"),
        "no loud warning: {err}"
    );
}
