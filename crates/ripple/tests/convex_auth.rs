//! `ripple serve` with `[auth] mode = "jwt+webhook"` from ripple.toml, against a stand-in
//! Convex deployment (RS256 keys at `/.well-known/jwks.json` without `kid`, Convex Auth's
//! claims, and a membership HTTP action): the upgrade is answered 101 for members and viewers,
//! 403 for strangers, 401 for expired or missing tokens, 503 when the endpoint is down; a
//! viewer's edits are not applied. The whole chain, as the binary wires it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ripple_client::Client;
use serde_json::{json, Value};
use yrs::{GetString, Text, WriteTxn};

use common::{listening_port, ripple};

const SECRET: &str = "convex-membership-secret";
const WAIT: Duration = Duration::from_secs(10);

fn rsa_private() -> EncodingKey {
    let pem = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../ripple-auth/tests/fixtures/rsa1_private.pem"),
    )
    .expect("fixture key");
    EncodingKey::from_rsa_pem(&pem).expect("rsa key")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
}

/// The stand-in deployment: JWKS (one key, no kid) and the membership action. Returns its
/// site URL.
async fn convex_site() -> String {
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa_private(), Algorithm::RS256).expect("jwk");
    jwk.common.key_id = None;
    let jwks = json!({ "keys": [jwk] });
    let router = axum::Router::new()
        .route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        )
        .route(
            "/ripple/membership",
            axum::routing::post(|headers: HeaderMap, body: axum::body::Bytes| async move {
                let signature = headers
                    .get(ripple_auth::SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !ripple_auth::verify_webhook_signature(
                    SECRET.as_bytes(),
                    signature,
                    &body,
                    SystemTime::now(),
                    Duration::from_secs(300),
                ) {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                let req: Value = serde_json::from_slice(&body).unwrap_or_default();
                let user = req["user"]
                    .as_str()
                    .unwrap_or("")
                    .split('|')
                    .next()
                    .unwrap_or("");
                let room = req["room"].as_str().unwrap_or("");
                match (user, room.starts_with("doc-w1-")) {
                    ("alice", true) => axum::Json(json!({"access": "write"})).into_response(),
                    ("bob", true) => axum::Json(json!({"access": "read"})).into_response(),
                    _ => (StatusCode::FORBIDDEN, "not a member").into_response(),
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

fn token(site: &str, user: &str, ttl: i64) -> String {
    let claims = json!({
        "sub": format!("{user}|session1"),
        "iss": site,
        "aud": "convex",
        "iat": now(),
        "exp": now() + ttl,
    });
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &rsa_private()).expect("sign")
}

struct Serve {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ripple serve` with a ripple.toml that sets `jwt+webhook` for `site`, membership at
/// `membership_url`.
fn serve(site: &str, membership_url: &str) -> Serve {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ripple.toml");
    std::fs::write(
        &config,
        format!(
            r#"persist = "none"

[auth]
mode = "jwt+webhook"

[auth.jwt]
jwks_url = "{site}/.well-known/jwks.json"
issuer = "{site}"
audience = "convex"

[auth.webhook]
url = "{membership_url}"
secret = "{SECRET}"
forward_token = true
cache_ttl = "1m"
"#
        ),
    )
    .expect("write ripple.toml");
    let mut child = ripple()
        .args(["serve", "--port", "0", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ripple serve");
    let port = listening_port(&mut child);
    Serve {
        child,
        port,
        _dir: dir,
    }
}

impl Serve {
    fn upgrade_status(&self, path: &str) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("status line");
        line.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
    }

    fn url(&self, room: &str, token: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/parties/main/{room}?token={token}",
            self.port
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_write_viewers_read_strangers_are_refused() {
    let site = convex_site().await;
    let server = serve(&site, &format!("{site}/ripple/membership"));
    let alice = token(&site, "alice", 3600);
    let bob = token(&site, "bob", 3600);
    let mallory = token(&site, "mallory", 3600);
    let expired = token(&site, "alice", -3600);
    let room = "/parties/main/doc-w1-plan";
    assert_eq!(server.upgrade_status(&format!("{room}?token={alice}")), 101);
    assert_eq!(server.upgrade_status(&format!("{room}?token={bob}")), 101);
    assert_eq!(
        server.upgrade_status(&format!("{room}?token={mallory}")),
        403
    );
    assert_eq!(
        server.upgrade_status(&format!("{room}?token={expired}")),
        401
    );
    assert_eq!(server.upgrade_status(room), 401);
    assert_eq!(
        server.upgrade_status(&format!("/parties/main/doc-w2-plan?token={alice}")),
        403
    );

    // Alice's edit reaches Bob; Bob's edit is not applied (read access).
    let mut a = Client::connect(&server.url("doc-w1-plan", &alice))
        .await
        .expect("alice connects");
    a.synced(WAIT).await.expect("alice synced");
    let mut b = Client::connect(&server.url("doc-w1-plan", &bob))
        .await
        .expect("bob connects");
    b.synced(WAIT).await.expect("bob synced");
    let text = |c: &Client| {
        let doc = c.doc();
        let t = doc.get_or_insert_text("t");
        let txn = yrs::Transact::transact(doc);
        t.get_string(&txn)
    };
    a.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, 0, "from alice");
    })
    .expect("edit");
    b.wait_for("alice's edit", WAIT, |_, doc| {
        let t = doc.get_or_insert_text("t");
        t.get_string(&yrs::Transact::transact(doc)) == "from alice"
    })
    .await
    .expect("bob sees alice's edit");
    b.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, 0, "bob: ");
    })
    .expect("edit");
    // The close frame queues behind the edit: once bob is closed, the server has handled it.
    b.close();
    b.wait_closed(WAIT).await.expect("bob closed");
    // A client joining later sees only what the server accepted.
    let mut c = Client::connect(&server.url("doc-w1-plan", &alice))
        .await
        .expect("connects");
    c.synced(WAIT).await.expect("synced");
    assert_eq!(text(&c), "from alice", "the viewer's edit was not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_endpoint_that_is_down_is_503() {
    let site = convex_site().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let server = serve(&site, &format!("http://{dead}/ripple/membership"));
    let alice = token(&site, "alice", 3600);
    assert_eq!(
        server.upgrade_status(&format!("/parties/main/doc-w1-plan?token={alice}")),
        503
    );
}
