//! The pages beside the WebSocket endpoints: plain GETs of `/`, `/demo/ROOM` and `/assets/...`
//! are pages, upgrades on those paths and every room path behave as before, and the inspector's
//! data needs the admin token unless it is open. (The pages themselves are driven in Chromium
//! by `tests/browser`.)

mod common;

use std::time::Duration;

use common::*;
use ripple_auth::Secret;
use ripple_server::{Config, InspectorAccess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` raw and returns the status and the whole response text (until the server
/// closes or `wait` passes without more bytes).
async fn raw(addr: std::net::SocketAddr, request: &str, wait: Duration) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(wait, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn pages_are_served_on_plain_gets_and_upgrades_are_untouched() {
    let server = start(Config {
        inspector: InspectorAccess::Open,
        ..test_config()
    })
    .await;
    let wait = Duration::from_secs(5);
    let (status, text) = raw(server.addr, &get("/demo/room-x", ""), wait).await;
    assert_eq!(status, 200);
    assert!(text.contains("text/html") && text.contains("/assets/demo.js"));
    let (status, text) = raw(server.addr, &get("/", ""), wait).await;
    assert_eq!(status, 200);
    assert!(text.contains("/assets/inspector.js"));
    let (status, text) = raw(server.addr, &get("/assets/demo.js", ""), wait).await;
    assert_eq!(status, 200);
    assert!(text.contains("text/javascript"));
    let etag = text
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an etag")
        .to_owned();
    let (status, _) = raw(
        server.addr,
        &get("/assets/demo.js", &format!("If-None-Match: {etag}\r\n")),
        wait,
    )
    .await;
    assert_eq!(status, 304);
    assert_eq!(
        raw(server.addr, &get("/assets/nope.js", ""), wait).await.0,
        404
    );

    // Room paths: a plain GET still asks for an upgrade; an upgrade still joins.
    assert_eq!(raw(server.addr, &get("/room-x", ""), wait).await.0, 426);
    assert_eq!(raw(server.addr, &get("/demo", ""), wait).await.0, 426);
    let (status, _) = raw(
        server.addr,
        &upgrade_request("/demo"),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(status, 101, "/demo is still a room");
    let mut c = server.client("room-x").await;
    assert!(c.synced(WAIT).await.is_ok());
    // An upgrade on `/` is the Hocuspocus endpoint (issue 13), not the inspector page.
    let (status, _) = raw(
        server.addr,
        &upgrade_request("/"),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(status, 101, "an upgrade on / is a Hocuspocus socket");
    // An upgrade on another page path goes to the room endpoint, which has no room there (as
    // before).
    for path in [
        "/demo/room-x",
        "/assets/demo.js",
        "/inspector/rooms",
        "/inspector/rooms/main/room-x",
    ] {
        // (The connection stays open after the answer: read for a moment only.)
        let (status, _) = raw(
            server.addr,
            &upgrade_request(path),
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(status, 404, "{path}");
    }
    // A bad room name on the demo is refused with the reason.
    let long = "x".repeat(Config::default().max_room_id_len + 1);
    let (status, text) = raw(server.addr, &get(&format!("/demo/{long}"), ""), wait).await;
    assert_eq!(status, 400);
    assert!(text.contains("bad room id"));
}

#[tokio::test]
async fn the_inspector_needs_the_admin_token_unless_open() {
    let wait = Duration::from_secs(5);
    // Default (`ripple serve`): no admin token configured, so nobody.
    let locked = start(test_config()).await;
    let mut c = locked.client("secret-room").await;
    assert!(c.synced(WAIT).await.is_ok());
    let (status, text) = raw(locked.addr, &get("/", ""), wait).await;
    assert_eq!(status, 401);
    assert!(!text.contains("secret-room"));
    let (status, text) = raw(locked.addr, &get("/inspector/rooms", ""), wait).await;
    assert_eq!(status, 401);
    assert!(text.contains("no_admin_token") && !text.contains("secret-room"));

    // With a token: only with it.
    let server = start(Config {
        admin: ripple_server::config::AdminConfig {
            token: Some(Secret::new("adm1n")),
        },
        ..test_config()
    })
    .await;
    let mut c = server.client("secret-room").await;
    assert!(c.synced(WAIT).await.is_ok());
    for path in [
        "/inspector/rooms",
        "/inspector/rooms/main/secret-room",
        "/inspector/rooms/main/secret-room/state",
    ] {
        let (status, text) = raw(server.addr, &get(path, ""), wait).await;
        assert_eq!(status, 401, "{path}");
        assert!(!text.contains("secret-room"), "{path}: {text}");
        let (status, _) = raw(
            server.addr,
            &get(path, "Authorization: Bearer wrong\r\n"),
            wait,
        )
        .await;
        assert_eq!(status, 401, "{path}");
    }
    // The feed, with the token: an event listing the room.
    let (status, text) = raw(
        server.addr,
        &get("/inspector/rooms", "Authorization: Bearer adm1n\r\n"),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.contains("text/event-stream") && text.contains("event: rooms"));
    assert!(text.contains("\"room\":\"secret-room\""), "{text}");
    // Actions need the header no cross-site request carries, besides the token.
    let post = |headers: &str| {
        format!(
            "POST /inspector/rooms/main/secret-room/close HTTP/1.1\r\nHost: test\r\n{headers}\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let (status, _) = raw(server.addr, &post("Authorization: Bearer adm1n\r\n"), wait).await;
    assert_eq!(status, 403);
    let (status, text) = raw(
        server.addr,
        &post("Authorization: Bearer adm1n\r\nX-Ripple-Inspector: 1\r\n"),
        wait,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"closed\":1"), "{text}");
    let (code, _) = c.wait_closed(WAIT).await.expect("closed by the inspector");
    assert_eq!(code, 4002, "the HTTP API's close code");
}
