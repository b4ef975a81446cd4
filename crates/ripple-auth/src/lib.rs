//! Authentication and per-room authorization, decided on the HTTP upgrade request before the
//! WebSocket is accepted (Ripple's replacement for PartyKit's `onBeforeConnect`).
//!
//! The server's upgrade handler calls [`extract_token`], builds an [`AuthRequest`] and awaits
//! [`Authenticator::authorize`]: a [`Grant`] admits the connection (read-only or read-write),
//! an [`AuthError`] answers the upgrade with [`AuthError::status`] (401, 403 or 503). If the
//! client offered subprotocols, the server echoes [`subprotocol_to_echo`].
//!
//! Modes ([`AuthConfig`]): `none` admits everyone with write access; `jwt` verifies a signed
//! token whose claims list the rooms it opens; `webhook` asks the application over HTTP;
//! `jwt+webhook` verifies the token locally and asks the application whether that verified
//! user may open the room (cached per user and room).
//!
//! Invariants: tokens and secrets never appear in logs or error messages; every cache and
//! in-flight count is bounded; all time-dependent logic reads an injectable [`Clock`].

mod cache;
mod clock;
mod config;
mod duration;
mod extract;
mod http;
mod jwks;
mod jwt;
mod membership;
mod pattern;
mod webhook;

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    AuthConfig, ClaimNames, ConfigError, JwtConfig, JwtWebhookConfig, Secret, WebhookConfig,
    DEFAULT_MAX_TOKEN_BYTES,
};
pub use duration::{parse_duration, DurationError};
pub use extract::{
    extract_token, redact_query, subprotocol_to_echo, SUBPROTOCOL, TOKEN_QUERY_PARAM,
    TOKEN_SUBPROTOCOL_PREFIX,
};
pub use jwt::{mint_hs256, mint_hs256_with, MintOptions};
pub use pattern::RoomPattern;
pub use webhook::{sign_webhook, verify_webhook_signature, SIGNATURE_HEADER};

/// What a connection may do in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Receive the document and awareness; its document updates are dropped.
    Read,
    /// Read and edit.
    Write,
}

/// HMAC-SHA256 of the concatenated `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{Mac, SimpleHmac};
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl Access {
    /// Whether document updates from this connection are applied.
    pub fn can_write(self) -> bool {
        self == Access::Write
    }

    /// `"read"` or `"write"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is neither `read` nor `write`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access must be \"read\" or \"write\"")]
pub struct ParseAccessError;

impl FromStr for Access {
    type Err = ParseAccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            _ => Err(ParseAccessError),
        }
    }
}

/// The facts of one upgrade request that authorization may look at.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthRequest<'a> {
    /// The party (`main` for plain y-websocket paths).
    pub party: &'a str,
    /// The room id, the raw path segment.
    pub room: &'a str,
    /// The token found by [`extract_token`], if any.
    pub token: Option<&'a str>,
    /// The client's address (after any trusted proxy handling); forwarded to the webhook.
    pub remote_addr: Option<IpAddr>,
    /// The `Origin` header; forwarded to the webhook.
    pub origin: Option<&'a str>,
}

impl<'a> AuthRequest<'a> {
    /// A request for `party`/`room` with an optional token and no other facts.
    pub fn new(party: &'a str, room: &'a str, token: Option<&'a str>) -> Self {
        Self {
            party,
            room,
            token,
            remote_addr: None,
            origin: None,
        }
    }
}

/// An admission: what the connection may do and who it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Read-only or read-write.
    pub access: Access,
    /// The user id (JWT `sub`, webhook `user.id`).
    pub user: Option<String>,
    /// Extra user data (JWT `user` claim, webhook `user` object), e.g. for awareness.
    pub user_info: Option<serde_json::Value>,
    /// When the credential stops being valid (JWT `exp`). The server may close the connection
    /// then; a client reconnecting with a fresh token is admitted again.
    pub expires_at: Option<SystemTime>,
}

impl Grant {
    /// Write access for an anonymous user that never expires (mode `none`).
    pub fn anonymous_write() -> Self {
        Self {
            access: Access::Write,
            user: None,
            user_info: None,
            expires_at: None,
        }
    }
}

/// Why a connection was refused. Messages are safe to send to the client: they never contain
/// the token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No valid credential (HTTP 401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A valid credential that does not open this room (HTTP 403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The decision could not be made: webhook or JWKS unreachable, slow or broken (HTTP 503).
    #[error("authorization unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status to answer the upgrade request with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Unauthorized(_) => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::Unavailable(_) => 503,
        }
    }

    /// The message without the status prefix.
    pub fn message(&self) -> &str {
        match self {
            AuthError::Unauthorized(m) | AuthError::Forbidden(m) | AuthError::Unavailable(m) => m,
        }
    }

    pub(crate) fn unauthorized(m: impl Into<String>) -> Self {
        AuthError::Unauthorized(m.into())
    }

    pub(crate) fn forbidden(m: impl Into<String>) -> Self {
        AuthError::Forbidden(m.into())
    }

    pub(crate) fn unavailable(m: impl Into<String>) -> Self {
        AuthError::Unavailable(m.into())
    }
}

/// Decides upgrade requests according to an [`AuthConfig`]. Cheap to clone (shared state);
/// `Send + Sync`.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

enum Inner {
    None,
    Jwt(jwt::JwtAuth),
    Webhook(webhook::WebhookAuth),
    // Boxed: it holds both of the others. Built once, behind an Arc.
    JwtWebhook(Box<membership::MembershipAuth>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds an authenticator on the system clock. Reads key files and secret environment
    /// variables now; fetches nothing over the network (the JWKS is fetched on first use).
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// Like [`Authenticator::new`] with an explicit clock (tests).
    pub fn with_clock(config: &AuthConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let inner = match config {
            AuthConfig::None => {
                tracing::warn!("auth mode \"none\": every connection gets write access");
                Inner::None
            }
            AuthConfig::Jwt(c) => Inner::Jwt(jwt::JwtAuth::new(c, clock)?),
            AuthConfig::Webhook(c) => Inner::Webhook(webhook::WebhookAuth::new(c, clock)?),
            AuthConfig::JwtWebhook(c) => {
                Inner::JwtWebhook(Box::new(membership::MembershipAuth::new(c, clock)?))
            }
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// `"none"`, `"jwt"`, `"webhook"` or `"jwt+webhook"`.
    pub fn mode(&self) -> &'static str {
        match &*self.inner {
            Inner::None => "none",
            Inner::Jwt(_) => "jwt",
            Inner::Webhook(_) => "webhook",
            Inner::JwtWebhook(_) => "jwt+webhook",
        }
    }

    /// Decides one upgrade request.
    pub async fn authorize(&self, req: AuthRequest<'_>) -> Result<Grant, AuthError> {
        let result = match &*self.inner {
            Inner::None => Ok(Grant::anonymous_write()),
            Inner::Jwt(j) => j.authorize(&req).await,
            Inner::Webhook(w) => w.authorize(&req).await,
            Inner::JwtWebhook(m) => m.authorize(&req).await,
        };
        match &result {
            Ok(g) => tracing::debug!(
                party = req.party,
                room = req.room,
                access = %g.access,
                user = g.user.as_deref().unwrap_or(""),
                "auth: admitted"
            ),
            Err(e) => tracing::debug!(
                party = req.party,
                room = req.room,
                status = e.status(),
                reason = e.message(),
                "auth: refused"
            ),
        }
        result
    }
}
