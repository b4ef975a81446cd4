//! The pages the binary serves to people: the inspector at `/`, the demo editor at
//! `/demo/ROOM`, and their assets under `/assets/`, all embedded at compile time (the
//! JavaScript is bundled by `web/build.mjs` and committed, so building needs no npm). Plain GETs
//! only: a WebSocket upgrade to any of these paths goes to the room endpoint, as before.
//!
//! Who may see the inspector is `Config::inspector`: `ripple dev` opens it; `ripple serve` shows
//! it only to requests carrying the admin token, and to nobody when no admin token is set. The
//! page itself holds nothing about rooms (it is the same bytes for everyone); what it shows
//! comes from [`feed`], which checks the token on every request.

mod feed;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ripple_core::{RoomKey, DEFAULT_PARTY};
use serde::{Deserialize, Serialize};

use crate::ServerCtx;

/// Who may open the inspector (`inspector` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InspectorAccess {
    /// Requests with the admin token (`Authorization: Bearer ...`); nobody when no admin token
    /// is configured. The default, and what `ripple serve` uses.
    #[default]
    Admin,
    /// Everyone who can reach the server (`ripple dev`, which binds 127.0.0.1).
    Open,
    /// Nobody: `/` answers 404.
    Off,
}

/// An embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "demo.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/demo.js"),
    },
    Asset {
        name: "inspector.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/inspector.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../assets/icon.svg"),
    },
    Asset {
        name: "licenses.txt",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/licenses.txt"),
    },
];

const DEMO_HTML: &str = include_str!("../assets/demo.html");
const INSPECTOR_HTML: &str = include_str!("../assets/inspector.html");

/// Scripts and styles from this server only; the editor sets inline styles (remote cursors'
/// colours). Live data and the demo's WebSocket go back to this server (`'self'` covers
/// `ws:`/`wss:` on the same host in CSP 3). No framing: the inspector has buttons.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// The page routes, merged into the server's router.
pub(crate) fn routes() -> Router<Arc<ServerCtx>> {
    Router::new()
        .route("/", get(inspector_page))
        .route("/demo/{room}", get(demo_page))
        .route("/assets/{name}", get(asset))
        .merge(feed::routes())
}

/// Whether a request asks for a WebSocket (it then goes to the room endpoint, unchanged).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// Whether this request may see the inspector's data; the refusal otherwise.
pub(crate) fn admit(ctx: &ServerCtx, headers: &HeaderMap) -> Result<(), Refusal> {
    match ctx.config.inspector {
        InspectorAccess::Open => Ok(()),
        InspectorAccess::Off => Err(Refusal::Off),
        InspectorAccess::Admin if ctx.config.admin.token.is_none() => Err(Refusal::NoToken),
        InspectorAccess::Admin => {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if ctx.config.admin.admits(authorization) {
                Ok(())
            } else {
                Err(Refusal::Unauthorized)
            }
        }
    }
}

/// Why the inspector's data is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `inspector = "off"`.
    Off,
    /// `inspector = "admin"` but no admin token is configured.
    NoToken,
    /// The admin token is missing or wrong.
    Unauthorized,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::Off => StatusCode::NOT_FOUND,
            Refusal::NoToken | Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Refusal::Off => "the inspector is off (inspector = \"off\")",
            Refusal::NoToken => {
                "the inspector needs an admin token: set [admin] token or RIPPLE_ADMIN_TOKEN"
            }
            Refusal::Unauthorized => "the inspector needs the admin token (Authorization: Bearer)",
        }
    }
}

impl IntoResponse for Refusal {
    /// JSON, as the HTTP API answers errors. `code` tells the page which form to show.
    fn into_response(self) -> Response {
        let code = match self {
            Refusal::Off => "off",
            Refusal::NoToken => "no_admin_token",
            Refusal::Unauthorized => "unauthorized",
        };
        let body = serde_json::json!({ "error": code, "detail": self.detail() });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if self != Refusal::Off {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `GET /`: the inspector's page, with 200 when this request may see the data and 401 when
/// not (the same page then shows its sign-in form; it holds no room data either way).
async fn inspector_page(State(ctx): State<Arc<ServerCtx>>, req: Request) -> Response {
    if wants_upgrade(req.headers()) {
        return crate::http::websocket(State(ctx), req).await;
    }
    let status = match admit(&ctx, req.headers()) {
        Ok(()) => StatusCode::OK,
        Err(Refusal::Off) => return Refusal::Off.into_response(),
        Err(refusal) => refusal.status(),
    };
    page(status, INSPECTOR_HTML)
}

/// `GET /demo/ROOM`: the demo editor on room ROOM of party `main`.
async fn demo_page(
    State(ctx): State<Arc<ServerCtx>>,
    Path(room): Path<String>,
    req: Request,
) -> Response {
    if wants_upgrade(req.headers()) {
        return crate::http::websocket(State(ctx), req).await;
    }
    // The page connects to /parties/main/ROOM with the raw segment; check it as the upgrade
    // will, so a bad name fails here with the reason rather than as a socket that never opens.
    let raw = req.uri().path().trim_start_matches("/demo/");
    if let Err(e) = RoomKey::new(DEFAULT_PARTY, raw, ctx.config.max_room_id_len) {
        return (
            StatusCode::BAD_REQUEST,
            format!("bad room id {room:?}: {e}"),
        )
            .into_response();
    }
    page(StatusCode::OK, DEMO_HTML)
}

fn page(status: StatusCode, html: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

/// `GET /assets/NAME`: an embedded file, revalidated by ETag (a new binary may carry new
/// bytes under the same name).
async fn asset(
    State(ctx): State<Arc<ServerCtx>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    if wants_upgrade(req.headers()) {
        return crate::http::websocket(State(ctx), req).await;
    }
    let headers = req.headers();
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let common = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    if fresh {
        return (
            StatusCode::NOT_MODIFIED,
            common,
            [(header::ETAG, etag.as_str())],
        )
            .into_response();
    }
    (
        common,
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::ETAG, etag.as_str()),
        ],
        asset.bytes,
    )
        .into_response()
}

/// One ETag per asset, from its bytes (computed once).
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut h = DefaultHasher::new();
                a.bytes.hash(&mut h);
                format!("\"{:016x}\"", h.finish())
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_name_only_assets_that_exist() {
        for html in [DEMO_HTML, INSPECTOR_HTML] {
            for part in html.split("/assets/").skip(1) {
                let name = part.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "a page refers to /assets/{name}, which is not embedded"
                );
            }
        }
    }

    #[test]
    fn bundles_are_built() {
        // An empty bundle means `web/build.mjs` was not run before committing.
        for a in ASSETS {
            assert!(a.bytes.len() > 100, "{} is empty", a.name);
        }
    }
}
