//! [`Authorize`] on top of `ripple_auth`: finds the token on the upgrade request (the `token`
//! query parameter, `Authorization: Bearer`, or a `ripple.token.<token>` entry of
//! `Sec-WebSocket-Protocol`), asks the [`Authenticator`], and turns its answer into an
//! [`Admission`] (with the subprotocol to echo and the expiry) or a 401/403/503 [`Rejection`].
//!
//! Tokens are never logged here; `ripple_auth` logs decisions without them.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use ripple_auth::{
    extract_token, subprotocol_to_echo, Access as Level, AuthConfig, AuthError, AuthRequest,
    Authenticator, ConfigError,
};
use ripple_core::room::Access;
use ripple_core::BoxFuture;

use crate::auth::{Admission, AllowAll, Authorize, Rejection, SharedAuthorize, UpgradeRequest};
use crate::config::AuthSettings;

/// The authorizer `settings` ask for: [`AllowAll`] for mode `none` (no token is looked at),
/// otherwise a [`TokenAuth`].
pub fn authorizer(settings: &AuthSettings) -> Result<SharedAuthorize, ConfigError> {
    Ok(match settings.mode {
        AuthConfig::None => Arc::new(AllowAll),
        ref mode => Arc::new(TokenAuth::new(mode)?),
    })
}

/// Token authentication and room authorization with a [`ripple_auth::Authenticator`].
#[derive(Debug, Clone)]
pub struct TokenAuth {
    authenticator: Authenticator,
    /// Added to a grant's expiry: the JWT leeway. A token is admitted until `exp + leeway`, so
    /// the connection is closed when a reconnect with the same token would be refused, not
    /// before (closing earlier would admit, close, admit ... until the leeway ran out).
    expiry_grace: Duration,
}

impl TokenAuth {
    /// Builds the authenticator for `config` (reads key files and secret variables now).
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        Ok(Self::with_authenticator(
            Authenticator::new(config)?,
            config,
        ))
    }

    /// Wraps an authenticator built from `config` (tests use one with a manual clock).
    pub fn with_authenticator(authenticator: Authenticator, config: &AuthConfig) -> Self {
        let expiry_grace = match config {
            AuthConfig::Jwt(jwt) => jwt.leeway,
            AuthConfig::JwtWebhook(c) => c.jwt.leeway,
            AuthConfig::None | AuthConfig::Webhook(_) => Duration::ZERO,
        };
        Self {
            authenticator,
            expiry_grace,
        }
    }

    /// `"none"`, `"jwt"` or `"webhook"`.
    pub fn mode(&self) -> &'static str {
        self.authenticator.mode()
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every `Sec-WebSocket-Protocol` header, joined with `", "` (browsers send one, but the
/// header may legally repeat).
fn subprotocols(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn rejection(e: &AuthError) -> Rejection {
    let status = match e {
        AuthError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Rejection {
        status,
        reason: e.to_string(),
    }
}

impl Authorize for TokenAuth {
    fn authorize<'a>(
        &'a self,
        req: &'a UpgradeRequest<'a>,
    ) -> BoxFuture<'a, Result<Admission, Rejection>> {
        Box::pin(async move {
            let protocols = subprotocols(req.headers);
            let token = extract_token(
                req.query,
                header_str(req.headers, header::AUTHORIZATION),
                protocols.as_deref(),
            );
            let auth_req = AuthRequest {
                party: req.key.party(),
                room: req.key.room(),
                token: token.as_deref(),
                remote_addr: req.remote_addr,
                origin: header_str(req.headers, header::ORIGIN),
            };
            let grant = self
                .authenticator
                .authorize(auth_req)
                .await
                .map_err(|e| rejection(&e))?;
            Ok(Admission {
                access: match grant.access {
                    Level::Read => Access::ReadOnly,
                    Level::Write => Access::ReadWrite,
                },
                user: grant.user,
                subprotocol: subprotocol_to_echo(protocols.as_deref()).map(str::to_owned),
                expires_at: grant.expires_at.map(|t| t + self.expiry_grace),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn repeated_subprotocol_headers_are_joined() {
        let mut h = HeaderMap::new();
        assert_eq!(subprotocols(&h), None);
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("ripple"),
        );
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("ripple.token.abc"),
        );
        assert_eq!(
            subprotocols(&h).as_deref(),
            Some("ripple, ripple.token.abc")
        );
    }

    #[test]
    fn auth_errors_map_to_their_status_with_the_reason_as_body() {
        let r = rejection(&AuthError::Forbidden("room not in token".into()));
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.reason, "forbidden: room not in token");
        assert_eq!(
            rejection(&AuthError::Unauthorized("x".into())).status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            rejection(&AuthError::Unavailable("x".into())).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
