//! The authorization seam at the HTTP upgrade: decided before the WebSocket is accepted and
//! before the room is loaded. A rejection is a plain HTTP response.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use ripple_core::room::Access;
use ripple_core::{BoxFuture, RoomKey};

/// What the authorizer sees of an upgrade request.
#[derive(Debug)]
pub struct UpgradeRequest<'a> {
    /// The room asked for.
    pub key: &'a RoomKey,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The peer's address (the TCP peer; no proxy headers are trusted).
    pub remote_addr: Option<IpAddr>,
}

/// An admitted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// What the connection may do.
    pub access: Access,
    /// The authenticated user id, if any.
    pub user: Option<String>,
    /// A `Sec-WebSocket-Protocol` value to echo back, if the token came in that header.
    pub subprotocol: Option<String>,
    /// When the credential stops being valid. The connection is then closed with
    /// [`code::TOKEN_EXPIRED`](crate::closer::code::TOKEN_EXPIRED) unless
    /// `auth.close_on_expiry` is off. `None`: never.
    pub expires_at: Option<SystemTime>,
}

impl Admission {
    /// Write access, no user, no expiry.
    pub fn read_write() -> Self {
        Self {
            access: Access::ReadWrite,
            user: None,
            subprotocol: None,
            expires_at: None,
        }
    }
}

/// A refusal, sent as an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 401, 403 or 503.
    pub status: StatusCode,
    /// A short reason, sent as the body.
    pub reason: String,
}

/// A token presented inside an open socket (the Hocuspocus Auth message), for one room.
#[derive(Debug)]
pub struct TokenRequest<'a> {
    /// The room asked for (the document).
    pub key: &'a RoomKey,
    /// The token; `None` when the client sent none (the provider sends "").
    pub token: Option<&'a str>,
    /// The socket's `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// The peer's address.
    pub remote_addr: Option<IpAddr>,
}

/// Decides whether an upgrade request may proceed.
pub trait Authorize: Send + Sync + 'static {
    /// Admits or rejects the request.
    fn authorize<'a>(
        &'a self,
        req: &'a UpgradeRequest<'a>,
    ) -> BoxFuture<'a, Result<Admission, Rejection>>;

    /// Admits or rejects a token that arrived inside a socket, by the same rules as an upgrade
    /// carrying it. The default asks [`Authorize::authorize`] with an upgrade request that has
    /// the token as `Authorization: Bearer` and the socket's `Origin`.
    fn authorize_token<'a>(
        &'a self,
        req: &'a TokenRequest<'a>,
    ) -> BoxFuture<'a, Result<Admission, Rejection>> {
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            if let Some(token) = req.token.filter(|t| !t.is_empty()) {
                let value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Rejection {
                        status: StatusCode::UNAUTHORIZED,
                        reason: "unauthorized: token is not a valid header value".into(),
                    })?;
                headers.insert(header::AUTHORIZATION, value);
            }
            if let Some(origin) = req.origin.and_then(|o| HeaderValue::from_str(o).ok()) {
                headers.insert(header::ORIGIN, origin);
            }
            let upgrade = UpgradeRequest {
                key: req.key,
                query: None,
                headers: &headers,
                remote_addr: req.remote_addr,
            };
            self.authorize(&upgrade).await
        })
    }
}

/// Admits everyone with write access (`ripple dev`, or `serve` with no auth configured).
#[derive(Debug, Default)]
pub struct AllowAll;

impl Authorize for AllowAll {
    fn authorize<'a>(
        &'a self,
        _req: &'a UpgradeRequest<'a>,
    ) -> BoxFuture<'a, Result<Admission, Rejection>> {
        Box::pin(async { Ok(Admission::read_write()) })
    }
}

/// A shared authorizer.
pub type SharedAuthorize = Arc<dyn Authorize>;
