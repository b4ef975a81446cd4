//! The HTTP front: health, readiness and metrics endpoints, and the WebSocket entry points
//! `/parties/:party/:room`, `/party/:room` (legacy, party `main`) and `/:room`. Room ids are the
//! raw path segments, as PartyKit treats them; authorization runs here, before the upgrade.
//! `/metrics` needs the admin token when one is configured; `/healthz` and `/readyz` are open.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ripple_core::{RoomKey, DEFAULT_PARTY};

use crate::auth::UpgradeRequest;
use crate::connection;
use crate::ServerCtx;

/// The router of a server.
pub(crate) fn router(ctx: Arc<ServerCtx>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(websocket)
        .with_state(ctx)
}

async fn ready(State(ctx): State<Arc<ServerCtx>>) -> Response {
    if ctx.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if ctx
        .stats
        .storage_failing
        .load(std::sync::atomic::Ordering::Relaxed)
        != 0
    {
        (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable").into_response()
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
        ctx.stats.render(),
    )
        .into_response()
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

async fn websocket(State(ctx): State<Arc<ServerCtx>>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
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
    if ctx.shutdown.is_cancelled() {
        return reject(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    let max = ctx.config.max_connections as u64;
    if ctx
        .stats
        .connections_active
        .load(std::sync::atomic::Ordering::Relaxed)
        >= max
    {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server at its limit of {max} connections"),
        );
    }
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &ctx).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let auth_req = UpgradeRequest {
        key: &key,
        query: parts.uri.query(),
        headers: &parts.headers,
        remote_addr: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip()),
    };
    let admission = match ctx.auth.authorize(&auth_req).await {
        Ok(admission) => admission,
        Err(rejection) => return reject(rejection.status, rejection.reason),
    };
    // tungstenite's default 128 KiB read buffer per socket (zero-filled on reads) dominated the
    // memory of an idle connection and cost CPU on every read; 4 KiB keeps an idle socket
    // small, and larger messages are still assembled whole (up to max_message_bytes).
    let mut upgrade = upgrade
        .read_buffer_size(4 * 1024)
        .max_message_size(ctx.config.max_message_bytes)
        .max_frame_size(ctx.config.max_message_bytes);
    if let Some(protocol) = admission.subprotocol.clone() {
        upgrade = upgrade.protocols([protocol]);
    }
    let tracker = ctx.tracker.clone();
    upgrade.on_upgrade(move |socket| {
        tracker.track_future(connection::serve(socket, key, admission, ctx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
