//! Shared by the binary's tests: run `ripple` with a clean environment and wait for a server's
//! listening line.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command};

/// A `ripple` command whose settings come only from its arguments: no `RIPPLE_*` variables
/// that matter leak in from the caller, and it runs in an empty directory (no ripple.toml).
pub fn ripple() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ripple"));
    for var in [
        "RIPPLE_AUTH_JWT_SECRET",
        "RIPPLE_ADMIN_TOKEN",
        "RIPPLE_CONFIG",
        "RIPPLE_PORT",
        "RIPPLE_HOST",
        "RIPPLE_STORAGE",
        "RIPPLE_DATA_DIR",
        "RIPPLE_PERSIST",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(scratch_dir());
    cmd
}

/// An empty directory of this test process.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ripple-bin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Reads `ripple listening on http://127.0.0.1:PORT` from a spawned server's piped stdout.
pub fn listening_port(child: &mut Child) -> u16 {
    let line = listening_line(child);
    line.trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// The first line a spawned server prints on its piped stdout (its listening line).
pub fn listening_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    line
}

/// Sets key `key` of map `edits` (the tests' edits: one key per edit, so what arrived is a set).
pub fn put(c: &ripple_client::Client, key: &str) {
    use yrs::Map;
    let map = c.doc().get_or_insert_map("edits");
    c.edit(|txn| {
        map.insert(txn, key, true);
    })
    .expect("edit");
}

/// The keys of map `edits` a client holds, sorted.
pub fn keys(c: &ripple_client::Client) -> Vec<String> {
    use yrs::{Map, Transact};
    let map = c.doc().get_or_insert_map("edits");
    let txn = c.doc().transact();
    let mut keys: Vec<String> = map.keys(&txn).map(str::to_owned).collect();
    keys.sort();
    keys
}
