//! The inspector's data: two live feeds (Server-Sent Events) and the room actions, every one
//! through [`RoomOps`](crate::ops::RoomOps) (the same room requests as the HTTP API) or the
//! store's listing. Each request is checked with [`super::admit`].
//!
//! - `GET /inspector/rooms`: an event `rooms` every [`TICK`] when something changed: the
//!   server's counters and every room (loaded ones with members, document size and updates per
//!   second; stored ones with stored size, update count and last change).
//! - `GET /inspector/rooms/PARTY/ROOM`: an event `room` when the room changed: members,
//!   awareness, sizes, recent updates ([`RoomView`](crate::room::RoomView)).
//! - `GET .../state`: the document as one Yjs update (the page decodes it for its tree).
//! - `POST .../compact`, `POST .../close`, `DELETE ...`: the actions.
//!
//! Bounded per viewer: a feed computes its next event only when the previous one has been
//! taken by the socket (the body is a stream hyper polls when it can write), so a slow viewer
//! holds one event, never a backlog; an event is a snapshot, so nothing is lost by skipping.
//! At most [`MAX_VIEWERS`] feeds run at once in the process (more get 503), a rooms event lists
//! at most [`MAX_LISTED`] rooms, and asks at most [`MAX_INSPECTED`] of them for details once per
//! [`INSPECT_EVERY`] (member counts come from the registry every tick).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use ripple_core::RoomKey;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::closer::code;
use crate::ops::OpError;
use crate::room::{RequestError, RoomView};
use crate::ServerCtx;

/// How often a feed looks for changes.
const TICK: Duration = Duration::from_millis(250);
/// How often the rooms feed re-reads the store's listing (it reads every stored room).
const LIST_EVERY: Duration = Duration::from_secs(2);
/// A comment line this often keeps proxies from closing an idle feed.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Feeds open at once, across viewers.
const MAX_VIEWERS: usize = 32;
/// Rooms in one rooms event (loaded ones first, then by last change); the event says how many
/// there are in all.
const MAX_LISTED: usize = 500;
/// Loaded rooms asked for their details per rooms event (those with the most members); the
/// others show their member count only.
const MAX_INSPECTED: usize = 100;
/// How often the rooms feed asks those rooms for their details (member counts, which the
/// registry keeps, are read every tick).
const INSPECT_EVERY: Duration = Duration::from_secs(1);

/// The close code and reason the inspector's "close connections" sends (the HTTP API's code:
/// clients reconnect and face auth again).
const CLOSE: (u16, &str) = (
    code::CLOSED_BY_API,
    "connections closed by an operator; reconnect",
);
/// ... and the one "delete" sends (the HTTP API's).
const DELETE: (u16, &str) = (code::ROOM_DELETED, "room deleted by an operator");

/// The feed's routes. Room paths are matched on the raw path (room ids are raw segments, as
/// on the WebSocket endpoints), so they are dispatched here rather than by the router.
pub(super) fn routes() -> Router<Arc<ServerCtx>> {
    Router::new()
        .route("/inspector/rooms", get(rooms_feed))
        .route(
            "/inspector/rooms/{*rest}",
            get(room_get).post(room_post).delete(room_delete),
        )
}

/// The feed permits (one per open feed).
fn viewers() -> &'static Arc<Semaphore> {
    static VIEWERS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    VIEWERS.get_or_init(|| Arc::new(Semaphore::new(MAX_VIEWERS)))
}

fn error(status: StatusCode, error: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": error, "detail": detail.into() })),
    )
        .into_response()
}

fn op_error(e: OpError) -> Response {
    let status = match &e {
        OpError::Request(RequestError::BadInput(_)) => StatusCode::BAD_REQUEST,
        OpError::Request(RequestError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        OpError::Request(RequestError::Unavailable(_) | RequestError::OwnedElsewhere(_))
        | OpError::Room(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, "room", e.to_string())
}

/// The room and what follows it in `/inspector/rooms/PARTY/ROOM[/ACTION]`, from the raw path;
/// the answer to send when the path names no valid room.
fn room_of<'a>(
    ctx: &ServerCtx,
    path: &'a str,
) -> Result<(RoomKey, Option<&'a str>), Box<Response>> {
    let rest = path.strip_prefix("/inspector/rooms/").unwrap_or_default();
    let mut parts = rest.splitn(3, '/');
    let (Some(party), Some(room)) = (parts.next(), parts.next()) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "use /inspector/rooms/PARTY/ROOM",
        )));
    };
    let key = RoomKey::new(party, room, ctx.config.max_room_id_len)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "bad_room", e.to_string())))?;
    Ok((key, parts.next()))
}

/// An SSE response over `events`, holding `permit` for as long as the viewer stays, and ending
/// when the server shuts down.
fn sse(
    ctx: &ServerCtx,
    permit: OwnedSemaphorePermit,
    events: impl Stream<Item = Bytes> + Send + 'static,
) -> Response {
    let shutdown = ctx.shutdown.clone();
    let body = events
        .take_until(async move { shutdown.cancelled_owned().await })
        .map(move |event| {
            let _held = &permit;
            Ok::<_, Infallible>(event)
        });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// One SSE event: `event: NAME` and the JSON on one `data:` line (JSON has no raw newlines).
fn event(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// Waits for changes: yields the event `make` builds when it differs from the last one sent,
/// or a keepalive comment when nothing changed for [`KEEPALIVE`]; ends when `make` gives
/// `None`. `make` takes the feed's state and hands it back. Polled only when the socket took
/// the previous event.
fn changes<S, F, Fut>(state: S, make: F) -> impl Stream<Item = Bytes> + Send
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (S, Option<Bytes>)> + Send,
{
    struct Loop<S, F> {
        state: Option<S>,
        make: F,
        last: Option<Bytes>,
        sent_at: Instant,
        first: bool,
    }
    let init = Loop {
        state: Some(state),
        make,
        last: None,
        sent_at: Instant::now(),
        first: true,
    };
    stream::unfold(init, |mut l| async move {
        loop {
            if !l.first {
                tokio::time::sleep(TICK).await;
            }
            l.first = false;
            let state = l.state.take()?;
            let (state, next) = (l.make)(state).await;
            l.state = Some(state);
            let next = next?;
            if l.last.as_ref() != Some(&next) {
                l.last = Some(next.clone());
                l.sent_at = Instant::now();
                return Some((next, l));
            }
            if l.sent_at.elapsed() >= KEEPALIVE {
                l.sent_at = Instant::now();
                return Some((Bytes::from_static(b": keepalive\n\n"), l));
            }
        }
    })
}

/// A row of the rooms list.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct RoomRow {
    party: String,
    room: String,
    loaded: bool,
    /// Members now (loaded rooms).
    members: Option<usize>,
    /// The document's encoded size in memory (loaded rooms that were inspected).
    doc_bytes: Option<u64>,
    /// Bytes stored, and updates in the stored log (as of the last listing).
    stored_bytes: Option<u64>,
    stored_updates: Option<u64>,
    /// Updates per second over the last second or so (inspected rooms).
    updates_per_sec: Option<f64>,
    /// Unix milliseconds of the last change (stored write or recent update).
    last_change_ms: Option<u64>,
}

/// What the rooms feed remembers between events.
struct RoomsState {
    ctx: Arc<ServerCtx>,
    stored: Vec<ripple_core::RoomInfo>,
    listed_at: Option<Instant>,
    list_error: Option<String>,
    inspected_at: Option<Instant>,
    /// Per inspected room, as of the last inspection.
    details: HashMap<RoomKey, Detail>,
}

/// What the rooms list shows of an inspected room.
struct Detail {
    doc_bytes: u64,
    last_change_ms: Option<u64>,
    /// When and at which sequence number it was inspected, and the rate measured then.
    rate: (Instant, u64, f64),
}

async fn rooms_feed(State(ctx): State<Arc<ServerCtx>>, req: Request) -> Response {
    if super::wants_upgrade(req.headers()) {
        return crate::http::websocket(State(ctx), req).await;
    }
    if let Err(refusal) = super::admit(&ctx, req.headers()) {
        return refusal.into_response();
    }
    let Ok(permit) = viewers().clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("at most {MAX_VIEWERS} inspector feeds at once"),
        );
    };
    let state = RoomsState {
        ctx: ctx.clone(),
        stored: Vec::new(),
        listed_at: None,
        list_error: None,
        inspected_at: None,
        details: HashMap::new(),
    };
    sse(
        &ctx,
        permit,
        changes(state, |mut s| async move {
            let event = rooms_event(&mut s).await;
            (s, event)
        }),
    )
}

async fn rooms_event(s: &mut RoomsState) -> Option<Bytes> {
    let ctx = s.ctx.clone();
    if s.listed_at.is_none_or(|at| at.elapsed() >= LIST_EVERY) {
        s.listed_at = Some(Instant::now());
        match ctx.store.list().await {
            Ok(list) => {
                s.stored = list;
                s.list_error = None;
            }
            Err(e) => s.list_error = Some(e.to_string()),
        }
    }
    let mut loaded = ctx.ops.loaded().await;
    loaded.sort_by(|a, b| b.members.cmp(&a.members).then_with(|| a.key.cmp(&b.key)));
    if s.inspected_at
        .is_none_or(|at| at.elapsed() >= INSPECT_EVERY)
    {
        s.inspected_at = Some(Instant::now());
        let views = futures_util::future::join_all(
            loaded
                .iter()
                .take(MAX_INSPECTED)
                .map(|l| ctx.ops.inspect(&l.key)),
        )
        .await;
        let now = Instant::now();
        let mut details = HashMap::new();
        for (l, view) in loaded.iter().zip(views) {
            let Ok(view) = view else { continue };
            let last = s.details.get(&l.key).map(|d| &d.rate);
            details.insert(
                l.key.clone(),
                Detail {
                    doc_bytes: view.doc_bytes,
                    last_change_ms: view.recent.last().map(|u| u.at_ms),
                    rate: update_rate(last, now, &view),
                },
            );
        }
        s.details = details;
    }
    let mut rows: HashMap<RoomKey, RoomRow> = HashMap::new();
    for l in &loaded {
        let detail = s.details.get(&l.key);
        rows.insert(
            l.key.clone(),
            RoomRow {
                party: l.key.party().to_owned(),
                room: l.key.room().to_owned(),
                loaded: true,
                members: Some(l.members),
                doc_bytes: detail.map(|d| d.doc_bytes),
                stored_bytes: None,
                stored_updates: None,
                updates_per_sec: detail.map(|d| d.rate.2),
                last_change_ms: detail.and_then(|d| d.last_change_ms),
            },
        );
    }
    for info in &s.stored {
        let row = rows.entry(info.key.clone()).or_insert_with(|| RoomRow {
            party: info.key.party().to_owned(),
            room: info.key.room().to_owned(),
            loaded: false,
            members: None,
            doc_bytes: None,
            stored_bytes: None,
            stored_updates: None,
            updates_per_sec: None,
            last_change_ms: None,
        });
        row.stored_bytes = Some(info.stored_bytes);
        row.stored_updates = Some(info.update_count);
        let stored_change = u64::try_from(info.last_change_ms).ok();
        row.last_change_ms = row.last_change_ms.max(stored_change);
    }
    let total = rows.len();
    let mut rows: Vec<RoomRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        (b.loaded, b.last_change_ms, &a.party, &a.room).cmp(&(
            a.loaded,
            a.last_change_ms,
            &b.party,
            &b.room,
        ))
    });
    rows.truncate(MAX_LISTED);
    let stats = &ctx.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let data = json!({
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "connections": load(&stats.connections_active),
            "rooms_loaded": load(&stats.rooms_active),
            "updates_applied": load(&stats.updates_applied),
            "storage_failing": stats.storage_failing(ctx.config.storage_unready()),
            "list_error": s.list_error,
        },
        "total": total,
        "rooms": rows,
    });
    Some(event("rooms", &data))
}

/// The room's update rate: sequence numbers per second since the last look (persisted rooms),
/// else updates among the recent ones in the last second. Returns what to remember.
fn update_rate(
    last: Option<&(Instant, u64, f64)>,
    now: Instant,
    view: &RoomView,
) -> (Instant, u64, f64) {
    match last {
        // Less than a second since: keep measuring from the older look.
        Some(&(at, seq, rate)) if now.duration_since(at) < Duration::from_secs(1) => {
            (at, seq, rate)
        }
        Some(&(at, seq, _)) if view.seq > 0 => {
            let secs = now.duration_since(at).as_secs_f64().max(0.001);
            (now, view.seq, view.seq.saturating_sub(seq) as f64 / secs)
        }
        _ => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let since = now_ms.saturating_sub(1000);
            let n = view.recent.iter().filter(|u| u.at_ms >= since).count();
            (now, view.seq, n as f64)
        }
    }
}

/// `GET /inspector/rooms/PARTY/ROOM` (the room feed) and `.../state` (the document).
async fn room_get(State(ctx): State<Arc<ServerCtx>>, req: Request) -> Response {
    if super::wants_upgrade(req.headers()) {
        return crate::http::websocket(State(ctx), req).await;
    }
    if let Err(refusal) = super::admit(&ctx, req.headers()) {
        return refusal.into_response();
    }
    let (key, action) = match room_of(&ctx, req.uri().path()) {
        Ok(v) => v,
        Err(response) => return *response,
    };
    match action {
        None => room_feed(ctx, key),
        Some("state") => match ctx.ops.state(&key, None).await {
            Ok(state) => {
                let file = format!("{}-{}.bin", key.party(), key.room());
                (
                    [
                        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                        (header::CACHE_CONTROL, "no-store".to_owned()),
                        (
                            header::CONTENT_DISPOSITION,
                            format!("attachment; filename=\"{file}\""),
                        ),
                    ],
                    state,
                )
                    .into_response()
            }
            Err(e) => op_error(e),
        },
        Some(other) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {other:?} here: GET the room or .../state"),
        ),
    }
}

fn room_feed(ctx: Arc<ServerCtx>, key: RoomKey) -> Response {
    let Ok(permit) = viewers().clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("at most {MAX_VIEWERS} inspector feeds at once"),
        );
    };
    let events = changes((ctx.clone(), key), |(ctx, key)| async move {
        let data = match ctx.ops.inspect(&key).await {
            Ok(view) => json!({ "room": view }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        ((ctx, key), Some(event("room", &data)))
    });
    sse(&ctx, permit, events)
}

/// Actions change things: besides the admin check they need a header no cross-site form or
/// simple request can carry (so another site open in the same browser cannot press them,
/// even on an open `ripple dev`).
/// Returns the refusal to send, if any.
///
/// On an open inspector (`ripple dev`) there is no token, so a page of another site that got
/// its name to resolve to this machine (DNS rebinding) would be same-origin and could send the
/// header: open actions are answered only when the request names the server by an IP address
/// or `localhost`, which such a page cannot do.
fn check_action(ctx: &ServerCtx, headers: &HeaderMap) -> Option<Response> {
    if let Err(refusal) = super::admit(ctx, headers) {
        return Some(refusal.into_response());
    }
    if ctx.config.inspector == super::InspectorAccess::Open && !names_this_machine(headers) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "on an open inspector, actions need the server named by address or localhost \
             (e.g. http://127.0.0.1:1999/), not by a host name",
        ));
    }
    if !headers.contains_key("x-ripple-inspector") {
        return Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "inspector actions need the X-Ripple-Inspector header",
        ));
    }
    None
}

/// Whether the `Host` header is an IP address or `localhost` (with any port).
fn names_this_machine(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
}

/// `POST .../compact` and `POST .../close`.
async fn room_post(State(ctx): State<Arc<ServerCtx>>, req: Request) -> Response {
    if let Some(refused) = check_action(&ctx, req.headers()) {
        return refused;
    }
    let (key, action) = match room_of(&ctx, req.uri().path()) {
        Ok(v) => v,
        Err(response) => return *response,
    };
    match action {
        Some("compact") => match ctx.ops.compact(&key).await {
            Ok(()) => Json(json!({ "compacted": true })).into_response(),
            Err(e) => op_error(e),
        },
        Some("close") => match ctx.ops.close(&key, None, CLOSE.0, CLOSE.1).await {
            Ok(closed) => Json(json!({ "closed": closed })).into_response(),
            Err(e) => op_error(e),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "POST .../compact or .../close",
        ),
    }
}

/// `DELETE /inspector/rooms/PARTY/ROOM`.
async fn room_delete(State(ctx): State<Arc<ServerCtx>>, req: Request) -> Response {
    if let Some(refused) = check_action(&ctx, req.headers()) {
        return refused;
    }
    let (key, action) = match room_of(&ctx, req.uri().path()) {
        Ok(v) => v,
        Err(response) => return *response,
    };
    if action.is_some() || req.method() != Method::DELETE {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "DELETE /inspector/rooms/PARTY/ROOM",
        );
    }
    match ctx.ops.delete(&key, DELETE.0, DELETE.1).await {
        Ok(()) => Json(json!({ "deleted": true })).into_response(),
        Err(e) => op_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_actions_want_the_server_named_by_address() {
        let with_host = |host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().expect("header"));
            h
        };
        for ok in [
            "127.0.0.1:1999",
            "localhost:1999",
            "LOCALHOST",
            "10.0.0.5",
            "[::1]:1999",
            "app.localhost:3000",
        ] {
            assert!(names_this_machine(&with_host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:1999",
            "evil.example",
            "127.0.0.1.evil.example",
            "[nope]:1",
        ] {
            assert!(!names_this_machine(&with_host(bad)), "{bad}");
        }
        assert!(!names_this_machine(&HeaderMap::new()));
    }

    /// A viewer that stops reading costs nothing: the feed builds an event only when asked for
    /// the next one, so after a long pause it sends the state of now, not a backlog.
    #[tokio::test]
    async fn an_unread_feed_builds_nothing_and_resumes_with_the_latest_state() {
        let built = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = built.clone();
        let feed = changes(0u64, move |n| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (n + 1, Some(Bytes::from(format!("{n}"))))
            }
        });
        tokio::pin!(feed);
        assert_eq!(feed.next().await, Some(Bytes::from("0")));
        // The viewer reads nothing for four ticks: no event is built meanwhile.
        tokio::time::sleep(TICK * 4).await;
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(feed.next().await, Some(Bytes::from("1")));
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
