//! The change webhook with the real binary: a change whose debounce has not elapsed is still
//! sent when the server gets SIGTERM, before it exits.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::{listening_port, ripple};
use ripple_client::Client;
use yrs::{GetString, Text, Transact};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_change_is_sent_on_sigterm() {
    // The receiver: records signed bodies.
    let got: Arc<Mutex<Vec<(bool, serde_json::Value)>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/change",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let signed = headers
                    .get("x-ripple-signature")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|sig| {
                        ripple_auth::verify_webhook_signature(
                            b"sigterm-secret",
                            sig,
                            &body,
                            std::time::SystemTime::now(),
                            Duration::from_secs(60),
                        )
                    });
                let value = serde_json::from_slice(&body).unwrap_or_default();
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((signed, value));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ripple.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n\n[hooks]\nsecret = \"sigterm-secret\"\nchange_url = \"http://{hook}/change\"\n\
             change_debounce = \"10m\"\nchange_max_wait = \"10m\"\nchange_objects = {{ t = \"text\" }}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("config");
    let mut child = ripple()
        .args(["serve", "--port", "0", "--config"])
        .arg(&config)
        .env("RIPPLE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ripple");
    let port = listening_port(&mut child);
    let url = format!("ws://127.0.0.1:{port}/parties/main/doc");
    let mut writer = Client::connect(&url).await.expect("connect");
    writer.synced(WAIT).await.expect("synced");
    let t = writer.doc().get_or_insert_text("t");
    writer.edit(|txn| t.insert(txn, 0, "unsent")).expect("edit");
    // Through the room's turn (so stored) once another client sees it.
    let mut observer = Client::connect(&url).await.expect("connect");
    observer.synced(WAIT).await.expect("synced");
    observer
        .wait_for("edit", WAIT, |_, doc| {
            let t = doc.get_or_insert_text("t");
            t.get_string(&doc.transact()) == "unsent"
        })
        .await
        .expect("observer sees the edit");
    assert!(
        got.lock().expect("got").is_empty(),
        "debounced: nothing sent yet"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(started.elapsed() < WAIT, "ripple exits after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "ripple exited with {exit}");
    let got = got.lock().expect("got").clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (signed, body) = &got[0];
    assert!(signed, "signed");
    assert_eq!(body["data"]["t"]["content"], "unsent");
    assert!(body["seq"].as_u64().is_some_and(|s| s >= 1));
}
