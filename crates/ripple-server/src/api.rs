//! The HTTP document API (`/api/v1/...`, described by `GET /openapi.json`): what an app's
//! backend does to rooms without a WebSocket or a Yjs library.
//!
//! Every call is a short-lived member of its room (`ops::RoomOps`): an update or a JSON edit is
//! applied in the room's turn, appended with it, answered only once durable, and broadcast to
//! the room's clients like a client's update. Reads of a room with nothing stored that is not
//! loaded answer 404 without loading it.
//!
//! Auth: `Authorization: Bearer <admin token>` may do everything. Otherwise the request goes to
//! the server's authorizer as an upgrade would (a client token in `Authorization: Bearer` or
//! `?token=`): its grant must cover the room, and read access allows only `GET`. Listing rooms
//! needs the admin token when one is configured (like `/metrics`). `ripple dev` admits all.
//!
//! Errors are JSON `{"error": CODE, "detail": TEXT}`: 400 `bad_request`, 401 `unauthorized`,
//! 403 `forbidden`, 404 `not_found`, 405 `method_not_allowed`, 409 `owned_elsewhere`, 413
//! `too_large`, 429 `too_many_requests`, 503 `unavailable`. A request body is bounded by
//! `max_message_bytes`, as a WebSocket message is.

pub(crate) mod openapi;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post, MethodRouter};
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use ripple_core::json::{self, Kinds};
use ripple_core::room::Access;
use ripple_core::RoomKey;
use serde_json::{json, Value};

use crate::auth::UpgradeRequest;
use crate::closer::code;
use crate::ops::OpError;
use crate::peer::now_ms;
use crate::room::{JoinError, RequestError};
use crate::stats::inc;
use crate::ServerCtx;

/// The prefix of every room route.
pub(crate) const ROOMS: &str = "/api/v1/rooms";

/// Most rooms one listing page holds, and the default.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

type Ctx = Arc<ServerCtx>;

/// Every API route as (path, method, handler): the router is built from this list and the
/// OpenAPI document is checked against it.
pub(crate) fn routes() -> Vec<(&'static str, Method, MethodRouter<Ctx>)> {
    const ROOM: &str = "/api/v1/rooms/{party}/{room}";
    vec![
        ("/openapi.json", Method::GET, get(openapi_json)),
        ("/api/v1/rooms", Method::GET, get(list_rooms)),
        (ROOM, Method::GET, get(room_info)),
        (ROOM, Method::DELETE, delete(delete_room)),
        (
            "/api/v1/rooms/{party}/{room}/state",
            Method::GET,
            get(get_state),
        ),
        (
            "/api/v1/rooms/{party}/{room}/update",
            Method::POST,
            post(post_update),
        ),
        (
            "/api/v1/rooms/{party}/{room}/json",
            Method::GET,
            get(get_json),
        ),
        (
            "/api/v1/rooms/{party}/{room}/json",
            Method::POST,
            post(post_json),
        ),
        (
            "/api/v1/rooms/{party}/{room}/close",
            Method::POST,
            post(post_close),
        ),
    ]
}

/// Adds the API's routes to `router`: the routes of [`routes`] (several methods of one path
/// merged), a JSON 405 for other methods, and a JSON 404 for other paths under `/api/`.
/// The API's routes, with forwarding to a room's owner when the node is part of a cluster.
pub(crate) fn router(ctx: &Ctx) -> Router<Ctx> {
    let api = add_routes(Router::new());
    if ctx.cluster.is_some() {
        api.route_layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            forward_to_owner,
        ))
    } else {
        api
    }
}

pub(crate) fn add_routes(mut router: Router<Ctx>) -> Router<Ctx> {
    let mut by_path: BTreeMap<&'static str, MethodRouter<Ctx>> = BTreeMap::new();
    for (path, _, handler) in routes() {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(path, merged);
    }
    for (path, handler) in by_path {
        router = router.route(path, handler.fallback(method_not_allowed));
    }
    router.route("/api/{*rest}", any(not_found))
}

/// An API error: a status and `{"error", "detail"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    detail: String,
    retry_after: Option<u64>,
    /// The node that owns the room, when this node does not (the request is then forwarded
    /// there, see [`forward_to_owner`]).
    owner: Option<String>,
}

/// A response extension: the room is owned by this node.
#[derive(Debug, Clone)]
struct OwnedBy(String);

impl ApiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            retry_after: None,
            owner: None,
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// The error code for a status.
    fn code(status: StatusCode) -> &'static str {
        match status.as_u16() {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            409 => "owned_elsewhere",
            413 => "too_large",
            429 => "too_many_requests",
            503 => "unavailable",
            _ => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": Self::code(self.status), "detail": self.detail});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(owner) = self.owner {
            response.extensions_mut().insert(OwnedBy(owner));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = self.retry_after {
            if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let status = match &e {
            OpError::Request(RequestError::BadInput(_)) => StatusCode::BAD_REQUEST,
            OpError::Request(RequestError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            OpError::Request(RequestError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            OpError::Request(RequestError::OwnedElsewhere(_)) => StatusCode::CONFLICT,
            OpError::Room(JoinError::OwnedElsewhere(_)) => StatusCode::CONFLICT,
            OpError::Room(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut err = ApiError::new(status, e.to_string());
        if let OpError::Room(JoinError::OwnedElsewhere(owner))
        | OpError::Request(RequestError::OwnedElsewhere(owner)) = &e
        {
            err.owner = Some(owner.clone());
        }
        err
    }
}

/// The header a forwarded request carries, so that it is never forwarded twice.
const FORWARDED: &str = "x-ripple-forwarded-by";

/// In a cluster, any node answers: a request for a room another node owns is sent on to the
/// owner (its advertised URL, the same method, path, query, headers and body, so the owner
/// authorizes it with the caller's own credentials) and the owner's answer is returned. Writes
/// therefore go through the owner, durable there before it answers. A request that was already
/// forwarded is not forwarded again (nodes that disagree about an owner answer 409 instead).
/// Only installed when the node is part of a cluster.
async fn forward_to_owner(
    State(ctx): State<Ctx>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(&ctx, body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let again = Request::from_parts(parts.clone(), Body::from(body.clone()));
    let response = next.run(again).await;
    let Some(OwnedBy(owner)) = response.extensions().get::<OwnedBy>().cloned() else {
        return response;
    };
    let url = match ctx.store.node_url(&owner).await {
        Ok(Some(url)) => url,
        _ => return response,
    };
    let base = url
        .trim_end_matches('/')
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    let target = format!(
        "{base}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
        return response;
    };
    let mut out = ctx.http.request(method, &target).body(body);
    for (name, value) in &parts.headers {
        if matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            continue;
        }
        out = out.header(name.as_str(), value.as_bytes());
    }
    out = out.header(FORWARDED, ctx.node_id.as_ref());
    let answer = match out.send().await {
        Ok(answer) => answer,
        Err(e) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the room is owned by node {owner}, which did not answer: {e}"),
            )
            .into_response()
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading the answer of node {owner}: {e}"),
            )
            .into_response()
        }
    };
    let mut forwarded = (status, bytes).into_response();
    if let Some(ct) = content_type.and_then(|v| header::HeaderValue::from_bytes(v.as_bytes()).ok())
    {
        forwarded.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    forwarded
}

type ApiResult = Result<Response, ApiError>;

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed here (see /openapi.json)"),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API route (see /openapi.json)")
}

/// `GET /openapi.json`. A WebSocket upgrade to `/openapi.json` is a room of that name.
async fn openapi_json(State(ctx): State<Ctx>, req: Request) -> Response {
    if req.headers().contains_key(header::UPGRADE) {
        return crate::http::websocket(State(ctx), req).await;
    }
    axum::Json(openapi::document()).into_response()
}

/// The query parameters, decoded (a repeated name keeps its last value).
fn query(req: &Parts) -> HashMap<String, String> {
    req.uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The (party, room) of a room route, raw as in WebSocket paths (not percent-decoded).
fn room_key(ctx: &ServerCtx, req: &Parts) -> Result<RoomKey, ApiError> {
    let rest = req
        .uri
        .path()
        .strip_prefix(ROOMS)
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(|| ApiError::not_found("not a room route"))?;
    let mut segments = rest.split('/');
    let (Some(party), Some(room)) = (segments.next(), segments.next()) else {
        return Err(ApiError::not_found("not a room route"));
    };
    RoomKey::new(party, room, ctx.config.max_room_id_len)
        .map_err(|e| ApiError::bad_request(format!("bad room id: {e}")))
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

/// Who is calling: the admin, or a client admitted by the authorizer.
struct Caller {
    user: Option<String>,
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn remote_ip(req: &Parts) -> Option<std::net::IpAddr> {
    req.extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip())
}

/// Refuses a banned address before any auth work (the same table as WebSocket upgrades).
fn check_throttle(ctx: &ServerCtx, req: &Parts) -> Result<(), ApiError> {
    if let Some(ip) = remote_ip(req) {
        if let Err(retry_after) = ctx.throttle.check(ip, now_ms()) {
            inc(&ctx.stats.auth_throttled);
            let secs = retry_after.as_millis().div_ceil(1000).max(1) as u64;
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed auth attempts from this address; retry in {secs} s"),
            );
            e.retry_after = Some(secs);
            return Err(e);
        }
    }
    Ok(())
}

fn failed_auth(ctx: &ServerCtx, req: &Parts, e: ApiError) -> ApiError {
    if let Some(ip) = remote_ip(req) {
        ctx.throttle.failed(ip, now_ms());
    }
    e
}

/// Decides a room request: the admin token, or the authorizer's grant for `key`.
async fn admit(
    ctx: &ServerCtx,
    req: &Parts,
    key: &RoomKey,
    need: Need,
) -> Result<Caller, ApiError> {
    check_throttle(ctx, req)?;
    let auth_header = authorization(&req.headers);
    if ctx.config.admin.token.is_some() && ctx.config.admin.admits(auth_header) {
        return Ok(Caller { user: None });
    }
    let upgrade = UpgradeRequest {
        key,
        query: req.uri.query(),
        headers: &req.headers,
        remote_addr: remote_ip(req),
    };
    let admission = match ctx.auth.authorize(&upgrade).await {
        Ok(a) => a,
        Err(rejection) => {
            let e = ApiError::new(rejection.status, rejection.reason);
            return Err(match e.status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => failed_auth(ctx, req, e),
                _ => e,
            });
        }
    };
    if need == Need::Write && admission.access == Access::ReadOnly {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read-only access: this token may only GET",
        ));
    }
    Ok(Caller {
        user: admission.user,
    })
}

/// Reads the body, refusing more than `max_message_bytes`.
async fn read_body(ctx: &ServerCtx, body: Body) -> Result<Bytes, ApiError> {
    let limit = ctx.config.max_message_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than max_message_bytes ({limit} bytes)"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Whether the room has anything stored or is loaded (without loading it); its stored info and
/// member count.
async fn find(
    ctx: &ServerCtx,
    key: &RoomKey,
) -> Result<Option<(Option<ripple_core::RoomInfo>, Option<usize>)>, ApiError> {
    let loaded = ctx
        .ops
        .loaded()
        .await
        .into_iter()
        .find(|r| &r.key == key)
        .map(|r| r.members);
    let stored = ctx
        .store
        .info(key)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((stored.is_some() || loaded.is_some()).then_some((stored, loaded)))
}

fn no_such_room(key: &RoomKey) -> ApiError {
    ApiError::not_found(format!("room {key} has no stored state and is not loaded"))
}

fn info_json(
    key: &RoomKey,
    stored: Option<&ripple_core::RoomInfo>,
    members: Option<usize>,
) -> Value {
    json!({
        "party": key.party(),
        "room": key.room(),
        "stored_bytes": stored.map_or(0, |s| s.stored_bytes),
        "update_count": stored.map_or(0, |s| s.update_count),
        "last_change_ms": stored.map(|s| s.last_change_ms),
        "loaded": members.is_some(),
        "connections": members.unwrap_or(0),
    })
}

/// `GET /api/v1/rooms?party=&prefix=&limit=&cursor=`.
async fn list_rooms(State(ctx): State<Ctx>, req: Request) -> ApiResult {
    let (req, _body) = req.into_parts();
    check_throttle(&ctx, &req)?;
    if !ctx.config.admin.admits(authorization(&req.headers)) {
        return Err(failed_auth(
            &ctx,
            &req,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "listing rooms needs the admin token (Authorization: Bearer ...)",
            ),
        ));
    }
    let q = query(&req);
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1..={MAX_LIMIT}")))?,
    };
    let after = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::bad_request("bad cursor"))?),
    };
    let party = q.get("party").map(String::as_str).filter(|p| !p.is_empty());
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    let stored = ctx
        .store
        .list()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut rooms: BTreeMap<RoomKey, (Option<ripple_core::RoomInfo>, Option<usize>)> =
        BTreeMap::new();
    for info in stored {
        rooms.insert(info.key.clone(), (Some(info), None));
    }
    for loaded in ctx.ops.loaded().await {
        rooms.entry(loaded.key).or_default().1 = Some(loaded.members);
    }
    let mut page = Vec::new();
    let mut next = None;
    let matching = rooms.iter().filter(|(key, _)| {
        party.is_none_or(|p| key.party() == p)
            && key.room().starts_with(prefix)
            && after
                .as_ref()
                .is_none_or(|(p, r)| (key.party(), key.room()) > (p.as_str(), r.as_str()))
    });
    for (key, (stored, members)) in matching {
        if page.len() == limit {
            next = page.last().and_then(|v: &Value| {
                Some(encode_cursor(v["party"].as_str()?, v["room"].as_str()?))
            });
            break;
        }
        page.push(info_json(key, stored.as_ref(), *members));
    }
    Ok(axum::Json(json!({"rooms": page, "next_cursor": next})).into_response())
}

fn encode_cursor(party: &str, room: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{party}/{room}"))
}

fn decode_cursor(c: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.trim_end_matches('='))
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (p, r) = text.split_once('/')?;
    Some((p.to_owned(), r.to_owned()))
}

/// `GET /api/v1/rooms/{party}/{room}`.
async fn room_info(State(ctx): State<Ctx>, req: Request) -> ApiResult {
    let (req, _body) = req.into_parts();
    let key = room_key(&ctx, &req)?;
    admit(&ctx, &req, &key, Need::Read).await?;
    let (stored, members) = find(&ctx, &key).await?.ok_or_else(|| no_such_room(&key))?;
    Ok(axum::Json(info_json(&key, stored.as_ref(), members)).into_response())
}

/// Decodes a base64 state vector (standard or URL-safe alphabet, padding optional; a `+` that
/// a query string turned into a space counts as `+`).
fn decode_sv(text: &str) -> Result<Bytes, ApiError> {
    let normal: String = text
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            ' ' | '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(normal)
        .map(Bytes::from)
        .map_err(|e| ApiError::bad_request(format!("sv is not base64: {e}")))
}

/// `GET /api/v1/rooms/{party}/{room}/state?sv=`.
async fn get_state(State(ctx): State<Ctx>, req: Request) -> ApiResult {
    let (req, _body) = req.into_parts();
    let key = room_key(&ctx, &req)?;
    admit(&ctx, &req, &key, Need::Read).await?;
    // An empty sv is no sv: the whole state.
    let sv = query(&req)
        .get("sv")
        .filter(|s| !s.is_empty())
        .map(|s| decode_sv(s))
        .transpose()?;
    find(&ctx, &key).await?.ok_or_else(|| no_such_room(&key))?;
    let state = ctx.ops.state(&key, sv).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], state).into_response())
}

/// `POST /api/v1/rooms/{party}/{room}/update`: a Yjs v1 update, applied like a client's.
async fn post_update(State(ctx): State<Ctx>, req: Request) -> ApiResult {
    let (req, body) = req.into_parts();
    let key = room_key(&ctx, &req)?;
    let caller = admit(&ctx, &req, &key, Need::Write).await?;
    let body = read_body(&ctx, body).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("the body must be a Yjs v1 update"));
    }
    let applied = ctx
        .ops
        .apply(&key, body, caller.user.map(Arc::from))
        .await?;
    Ok(axum::Json(applied).into_response())
}

/// The declared kinds for a room: `[parties.NAME] types`, then `?types=`.
fn kinds_for(
    ctx: &ServerCtx,
    key: &RoomKey,
    q: &HashMap<String, String>,
) -> Result<Kinds, ApiError> {
    let mut kinds = ctx.config.types_for(key.party());
    if let Some(spec) = q.get("types") {
        kinds.extend(
            json::parse_kinds(spec).map_err(|e| ApiError::bad_request(format!("types: {e}")))?,
        );
    }
    Ok(kinds)
}

/// `GET /api/v1/rooms/{party}/{room}/json?types=`.
async fn get_json(State(ctx): State<Ctx>, req: Request) -> ApiResult {
    let (req, _body) = req.into_parts();
    let key = room_key(&ctx, &req)?;
    admit(&ctx, &req, &key, Need::Read).await?;
    let kinds = kinds_for(&ctx, &key, &query(&req))?;
    find(&ctx, &key).await?.ok_or_else(|| no_such_room(&key))?;
    let state = ctx.ops.state(&key, None).await?;
    // Read from a copy, off the async workers: reading a root as a kind registers that kind,
    // which must not touch the live document, and a large document takes a while.
    let read = tokio::task::spawn_blocking(move || {
        use yrs::updates::decoder::Decode;
        use yrs::Transact;
        let doc = yrs::Doc::new();
        let update = yrs::Update::decode_v1(&state).map_err(|e| e.to_string())?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(json::to_json(&doc, &kinds))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let (data, read_as) = read;
    Ok(axum::Json(json!({
        "party": key.party(),
        "room": key.room(),
        "data": data,
        "kinds": read_as,
        "guess_rule": json::GUESS_RULE,
    }))
    .into_response())
}

/// `POST /api/v1/rooms/{party}/{room}/json`: `{"ops": [...]}`, one transaction.
async fn post_json(State(ctx): State<Ctx>, req: Request) -> ApiResult {
    let (req, body) = req.into_parts();
    let key = room_key(&ctx, &req)?;
    admit(&ctx, &req, &key, Need::Write).await?;
    let kinds = Arc::new(kinds_for(&ctx, &key, &query(&req))?);
    let body = read_body(&ctx, body).await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let ops = Arc::new(json::parse_ops(&value).map_err(ApiError::bad_request)?);
    let applied = ctx
        .ops
        .edit(&key, move || {
            let (ops, kinds) = (ops.clone(), kinds.clone());
            Box::new(move |txn: &mut yrs::TransactionMut<'_>| json::apply_ops(txn, &ops, &kinds))
        })
        .await?;
    Ok(axum::Json(applied).into_response())
}

/// `POST /api/v1/rooms/{party}/{room}/close?user=`: ends connections (a room that is not
/// loaded has none, and is not loaded for this).
async fn post_close(State(ctx): State<Ctx>, req: Request) -> ApiResult {
    let (req, _body) = req.into_parts();
    let key = room_key(&ctx, &req)?;
    admit(&ctx, &req, &key, Need::Write).await?;
    let user = query(&req).remove("user");
    let loaded = ctx.ops.loaded().await.iter().any(|r| r.key == key);
    let closed = if loaded {
        let reason = match &user {
            Some(_) => "sessions revoked; reconnect to authenticate again",
            None => "closed by the server; reconnect to authenticate again",
        };
        ctx.ops
            .close(&key, user, code::CLOSED_BY_API, reason)
            .await?
    } else {
        0
    };
    Ok(axum::Json(json!({"closed": closed})).into_response())
}

/// `DELETE /api/v1/rooms/{party}/{room}`: closes its connections (4004) and deletes what is
/// stored.
async fn delete_room(State(ctx): State<Ctx>, req: Request) -> ApiResult {
    let (req, _body) = req.into_parts();
    let key = room_key(&ctx, &req)?;
    admit(&ctx, &req, &key, Need::Write).await?;
    find(&ctx, &key).await?.ok_or_else(|| no_such_room(&key))?;
    ctx.ops
        .delete(&key, code::ROOM_DELETED, "room deleted")
        .await?;
    Ok(axum::Json(json!({"deleted": true})).into_response())
}
