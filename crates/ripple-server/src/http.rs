//! The HTTP front: health, readiness and metrics endpoints, and the WebSocket entry points
//! `/parties/:party/:room`, `/party/:room` (legacy, party `main`) and `/:room` (y-websocket,
//! y-partykit), and `/` and `/hocuspocus` (Hocuspocus: auth inside the socket, `hocuspocus.rs`).
//! Room ids are the raw path segments, as PartyKit treats them; authorization runs here, before the upgrade.
//! `/metrics` needs the admin token when one is configured; `/healthz` and `/readyz` are open.
//! The HTTP API's routes (`/api/v1/...`, `/openapi.json`) come from `api.rs`; none of them is a
//! WebSocket room path (a WebSocket upgrade to `/openapi.json` still reaches room
//! `openapi.json`).
//! Plain GETs of `/`, `/demo/ROOM` and `/assets/...` are pages (`pages.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::upgrade::OnUpgrade;
use ripple_core::{RoomKey, DEFAULT_PARTY};

use crate::auth::UpgradeRequest;
use crate::peer::now_ms;
use crate::stats::{inc, reserve_connection};
use crate::ServerCtx;
use crate::{connection, hocuspocus};

/// The router of a server.
pub(crate) fn router(ctx: Arc<ServerCtx>) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::pages::routes())
        .route(crate::cluster::LINK_PATH, get(link));
    router
        .merge(crate::api::router(&ctx))
        .fallback(websocket)
        .with_state(ctx)
}

async fn ready(State(ctx): State<Arc<ServerCtx>>) -> Response {
    if ctx.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if ctx.stats.storage_failing(ctx.config.storage_unready()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage unavailable: an append or a lease renewal failed recently; this node cannot own rooms",
        )
            .into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(ctx): State<Arc<ServerCtx>>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !ctx.config.admin.admits(authorization) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized: /metrics needs the admin token (Authorization: Bearer ...)",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.stats.render(ctx.config.storage_unready()),
    )
        .into_response()
}

/// A link from another node of the cluster (`cluster.rs`): the cluster secret as a bearer
/// token, the node's id in `X-Ripple-Node`.
async fn link(State(ctx): State<Arc<ServerCtx>>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let Some(cluster) = ctx.cluster.clone() else {
        return reject(StatusCode::NOT_FOUND, "this node is not part of a cluster");
    };
    if !cluster.admits(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    ) {
        return reject(
            StatusCode::UNAUTHORIZED,
            "cluster links need the cluster secret (Authorization: Bearer ...)",
        );
    }
    let peer = parts
        .headers
        .get("x-ripple-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unnamed")
        .to_owned();
    let (accept, on_upgrade) = match websocket_handshake(&mut parts) {
        Ok(v) => v,
        Err((status, reason)) => return reject(status, reason),
    };
    let tracker = ctx.tracker.clone();
    tracker.spawn(crate::cluster::serve_link(on_upgrade, ctx, peer));
    switching_protocols(&accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| reject(StatusCode::INTERNAL_SERVER_ERROR, "bad response"))
}

/// Splits a request path into (party, room), raw.
fn room_path(uri: &Uri) -> Option<(&str, &str)> {
    let path = uri.path().strip_prefix('/')?;
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        ["parties", party, room] => Some((party, room)),
        ["party", room] => Some((DEFAULT_PARTY, room)),
        [room] if !room.is_empty() => Some((DEFAULT_PARTY, room)),
        _ => None,
    }
}

fn reject(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, reason.into()).into_response()
}

/// Whether `uri` is a Hocuspocus entry point: `/` or `/hocuspocus` (y-websocket clients always
/// put a room in the path).
fn is_hocuspocus_path(uri: &Uri) -> bool {
    matches!(uri.path(), "/" | "/hocuspocus" | "/hocuspocus/")
}

pub(crate) async fn websocket(State(ctx): State<Arc<ServerCtx>>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    if is_hocuspocus_path(&parts.uri) {
        return hocuspocus_upgrade(ctx, parts);
    }
    let Some((party, room)) = room_path(&parts.uri) else {
        return reject(
            StatusCode::NOT_FOUND,
            "not found: use /parties/PARTY/ROOM or /ROOM",
        );
    };
    let key = match RoomKey::new(party, room, ctx.config.max_room_id_len) {
        Ok(key) => key,
        Err(e) => return reject(StatusCode::BAD_REQUEST, format!("bad room id: {e}")),
    };
    let Upgrade {
        remote_ip,
        slot,
        accept,
        on_upgrade,
    } = match admit_upgrade(&ctx, &mut parts) {
        Ok(upgrade) => upgrade,
        Err(response) => return response,
    };
    let auth_req = UpgradeRequest {
        key: &key,
        query: parts.uri.query(),
        headers: &parts.headers,
        remote_addr: remote_ip,
    };
    let admission = match ctx.auth.authorize(&auth_req).await {
        Ok(admission) => admission,
        Err(rejection) => {
            // 401/403 are the client's doing; 503 (auth backend down) is not counted.
            if let (Some(ip), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) =
                (remote_ip, rejection.status)
            {
                ctx.throttle.failed(ip, now_ms());
            }
            return reject(rejection.status, rejection.reason);
        }
    };
    let mut response = switching_protocols(&accept);
    if let Some(protocol) = admission.subprotocol.as_deref() {
        match HeaderValue::from_str(protocol) {
            Ok(value) => response = response.header(header::SEC_WEBSOCKET_PROTOCOL, value),
            Err(_) => return reject(StatusCode::BAD_REQUEST, "unusable subprotocol"),
        }
    }
    let tracker = ctx.tracker.clone();
    tracker.spawn(connection::accept(on_upgrade, key, admission, slot, ctx));
    response
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| reject(StatusCode::INTERNAL_SERVER_ERROR, "bad response"))
}

/// A Hocuspocus socket: the same checks as a room upgrade (shutdown, failed-auth ban, origin,
/// connection cap, handshake), but no auth: tokens arrive inside the socket, per document.
fn hocuspocus_upgrade(ctx: Arc<ServerCtx>, mut parts: Parts) -> Response {
    let Upgrade {
        remote_ip,
        slot,
        accept,
        on_upgrade,
    } = match admit_upgrade(&ctx, &mut parts) {
        Ok(upgrade) => upgrade,
        Err(response) => return response,
    };
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let client = hocuspocus::Client {
        ip: remote_ip,
        origin,
    };
    let tracker = ctx.tracker.clone();
    tracker.spawn(hocuspocus::accept(on_upgrade, client, slot, ctx));
    switching_protocols(&accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| reject(StatusCode::INTERNAL_SERVER_ERROR, "bad response"))
}

/// A WebSocket upgrade that passed the checks every kind of socket gets before its own auth.
struct Upgrade {
    remote_ip: Option<std::net::IpAddr>,
    /// Its place under `max_connections`, reserved (increment, then check).
    slot: crate::stats::ConnSlot,
    accept: String,
    on_upgrade: OnUpgrade,
}

/// The checks before any auth work, in order of cost: shutting down, the client address's
/// failed-auth ban (a table lookup), `allowed_origins`, the connection cap, the RFC 6455
/// handshake. `Err` is the answer to send.
#[allow(clippy::result_large_err)] // the refusal is the response itself, sent at once
fn admit_upgrade(ctx: &ServerCtx, parts: &mut Parts) -> Result<Upgrade, Response> {
    if ctx.shutdown.is_cancelled() {
        return Err(reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "server shutting down",
        ));
    }
    let remote_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip());
    if let Some(ip) = remote_ip {
        if let Err(retry_after) = ctx.throttle.check(ip, now_ms()) {
            inc(&ctx.stats.auth_throttled);
            // Rounded up: a client retrying after Retry-After must find the ban over.
            let secs = retry_after.as_millis().div_ceil(1000).max(1);
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                format!("too many failed auth attempts from this address; retry in {secs} s"),
            )
                .into_response());
        }
    }
    if !ctx
        .origins
        .allows(parts.headers.get(header::ORIGIN).map(HeaderValue::as_bytes))
    {
        inc(&ctx.stats.origin_refused);
        return Err(reject(
            StatusCode::FORBIDDEN,
            "origin not allowed: this page's Origin is not in the server's allowed_origins",
        ));
    }
    let max = ctx.config.max_connections as u64;
    let Some(slot) = reserve_connection(&ctx.stats, max) else {
        return Err(reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server at its limit of {max} connections"),
        ));
    };
    let (accept, on_upgrade) =
        websocket_handshake(parts).map_err(|(status, reason)| reject(status, reason))?;
    Ok(Upgrade {
        remote_ip,
        slot,
        accept,
        on_upgrade,
    })
}

/// The start of a `101 Switching Protocols` answer to a WebSocket upgrade.
fn switching_protocols(accept: &str) -> axum::http::response::Builder {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
}

/// Checks an RFC 6455 opening handshake. Returns the `Sec-WebSocket-Accept` value and the
/// upgrade future, or the HTTP error to answer with.
fn websocket_handshake(
    parts: &mut Parts,
) -> Result<(String, OnUpgrade), (StatusCode, &'static str)> {
    fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
    if parts.method != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "rooms are WebSocket endpoints: use GET with Upgrade: websocket",
        ));
    }
    let headers = &parts.headers;
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: send Connection: upgrade and Upgrade: websocket",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key missing"));
    };
    if !is_websocket_key(key.as_bytes()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be the base64 of 16 bytes (24 characters ending in ==)",
        ));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded",
        ));
    };
    Ok((accept, on_upgrade))
}

/// Whether `key` is what RFC 6455 §4.2.1 asks for: the base64 of exactly 16 bytes, i.e. 22
/// characters of the base64 alphabet and `==`. (The two spare bits of the last character are not
/// checked: a lenient decoder still gets 16 bytes out of it.)
fn is_websocket_key(key: &[u8]) -> bool {
    let is_b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key[..22].iter().all(is_b64) && &key[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_must_be_base64_of_16_bytes() {
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_websocket_key(b"AAAAAAAAAAAAAAAAAAAA+/==")); // all of the alphabet's specials
        for bad in [
            &b""[..],
            b"x",
            b"eHl6",                        // 3 bytes
            b"dGhlIHNhbXBsZSBub25jZQ",      // 16 bytes, padding missing
            b"dGhlIHNhbXBsZSBub25jZQ==x",   // too long
            b"dGhlIHNhbXBsZSBub25jZSE=",    // 17 bytes
            b"dGhlIHNhbXBsZSBub25j*Q==",    // not base64
            b"dGhlIHNhbXBsZSBub25jZQ=\x00", // padding wrong
        ] {
            assert!(!is_websocket_key(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn paths_map_to_party_and_raw_room() {
        let cases = [
            ("/doc-1", Some(("main", "doc-1"))),
            ("/parties/main/doc-1?_pk=x", Some(("main", "doc-1"))),
            ("/parties/other/caf%C3%A9", Some(("other", "caf%C3%A9"))),
            ("/party/doc-1", Some(("main", "doc-1"))),
            ("/", None),
            ("/a/b/c/d", None),
            ("/parties/main", None),
        ];
        for (path, want) in cases {
            let uri: Uri = path.parse().expect("uri");
            assert_eq!(room_path(&uri), want, "{path}");
        }
    }
}
