//! `ripple dev` in an app folder that still has PartyKit's `partykit.json` (and no
//! `ripple.toml`): it listens on that file's `port` and says so, names the keys it does not use,
//! lets `--port` win, points at PartyKit's old state, and ignores the file once a `ripple.toml`
//! exists.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{listening_line, ripple};

/// Starts `ripple dev ARGS` in `app`, reads its listening address, stops it (SIGTERM) and
/// returns (address, stderr).
fn dev_in(app: &Path, args: &[&str]) -> (String, String) {
    let mut child = ripple()
        .current_dir(app)
        .arg("dev")
        .args(args)
        .env("RIPPLE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ripple dev");
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
        .unwrap_or_else(|| panic!("unexpected first line {line:?}: {err}"))
        .to_owned();
    (addr, err)
}

/// A port nothing listens on right now (bound and released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn app_with_partykit_json(port: u16) -> tempfile::TempDir {
    let app = tempfile::tempdir().expect("tempdir");
    let json = format!(
        r#"{{
  "$schema": "node_modules/partykit/schema.json",
  "name": "whiteboard",
  "main": "partykit/server.ts",
  "port": {port},
  "parties": {{ "diagrams": "partykit/diagrams.ts" }},
  "compatibilityDate": "2024-07-18",
  "vars": {{ "CONVEX_URL": "https://example.convex.cloud" }}
}}"#
    );
    std::fs::write(app.path().join("partykit.json"), json).expect("write partykit.json");
    app
}

#[test]
fn dev_listens_on_the_partykit_json_port_and_names_the_keys_it_does_not_use() {
    let port = free_port();
    let app = app_with_partykit_json(port);
    let data = app.path().join("data");
    let (addr, err) = dev_in(app.path(), &["--data-dir", data.to_str().expect("utf-8")]);
    assert_eq!(addr, format!("127.0.0.1:{port}"), "{err}");
    assert!(
        err.contains(&format!(
            "partykit.json found (no ripple.toml): listening on its port {port}"
        )),
        "{err}"
    );
    for key in ["main", "parties", "compatibilityDate", "name", "vars"] {
        assert!(
            err.lines()
                .any(|l| l.contains("partykit.json: not used:") && l.contains(key)),
            "{key} not named in: {err}"
        );
    }
    assert!(!err.contains("$schema"), "{err}");
}

#[test]
fn a_port_flag_beats_partykit_json_and_says_so() {
    let port = free_port();
    let app = app_with_partykit_json(port);
    let data = app.path().join("data");
    let (addr, err) = dev_in(
        app.path(),
        &["--port", "0", "--data-dir", data.to_str().expect("utf-8")],
    );
    assert_ne!(addr, format!("127.0.0.1:{port}"), "{err}");
    assert!(
        err.contains(&format!("its port {port} is overridden by --port")),
        "{err}"
    );
}

#[test]
fn with_a_ripple_toml_partykit_json_is_not_read() {
    let app = app_with_partykit_json(free_port());
    let data = app.path().join("data");
    std::fs::write(
        app.path().join("ripple.toml"),
        format!("port = 0\ndata_dir = {:?}\n", data.to_str().expect("utf-8")),
    )
    .expect("write ripple.toml");
    let (_, err) = dev_in(app.path(), &[]);
    assert!(!err.contains("partykit.json"), "{err}");
}

#[test]
fn old_partykit_state_is_pointed_at() {
    let app = app_with_partykit_json(free_port());
    std::fs::create_dir_all(app.path().join(".partykit/state/party/-PartyKitDurable"))
        .expect("mkdir");
    let data = app.path().join("data");
    let (_, err) = dev_in(
        app.path(),
        &["--port", "0", "--data-dir", data.to_str().expect("utf-8")],
    );
    assert!(
        err.contains("ripple import-partykit .partykit/state"),
        "{err}"
    );
}
