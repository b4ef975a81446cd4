//! One process owns an embedded data directory: a second server, or a maintenance command that
//! writes, refuses and names the holder; readers still work; kill -9 frees the directory.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn server(dir: &std::path::Path) -> Child {
    ripple()
        .args(["dev", "--port", "0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

/// Runs a command to completion (bounded) and returns (success, stderr).
fn run(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let mut child = ripple()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read");
            return (status.success(), err);
        }
        assert!(Instant::now() < deadline, "{args:?} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_process_on_one_data_dir_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = server(dir.path());
    listening_port(&mut first);
    let holder = format!("pid {}", first.id());

    let (ok, err) = run(&["dev", "--port", "0"], dir.path());
    assert!(!ok, "a second server on the same directory must not start");
    assert!(err.contains("in use by another ripple process"), "{err}");
    assert!(err.contains(&holder), "{err}");

    for cmd in [&["compact"][..], &["fsck", "--salvage"][..]] {
        let (ok, err) = run(cmd, dir.path());
        assert!(
            !ok,
            "{cmd:?} must refuse while the server owns the directory"
        );
        assert!(err.contains(&holder), "{cmd:?}: {err}");
    }
    let update = dir.path().join("update.bin");
    std::fs::write(&update, [0u8, 0]).expect("write");
    let (ok, err) = run(
        &["import", "doc-1", update.to_str().expect("path")],
        dir.path(),
    );
    assert!(
        !ok,
        "import must refuse while the server owns the directory"
    );
    assert!(err.contains(&holder), "{err}");

    // Readers need no lock.
    let (ok, err) = run(&["rooms"], dir.path());
    assert!(ok, "rooms reads beside a running server: {err}");

    // The operating system frees the lock however the holder ends.
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    let mut second = server(dir.path());
    listening_port(&mut second);
    second.kill().expect("kill");
    second.wait().expect("reaped");
}
