//! `jwt+webhook` mode: the token proves who the user is, the application says what that user
//! may do in the room. This is `onBeforeConnect` that validates a Convex (or Clerk, Auth0 ...)
//! token and then checks workspace membership, in one configuration.
//!
//! 1. The token is verified locally exactly as in `jwt` mode (signature, algorithm, `iss`,
//!    `aud`, `exp`, `nbf`; a JWKS without `kid`s works: every key of the right type is tried).
//!    A token that fails is refused (401) without calling the endpoint; a JWKS that cannot be
//!    fetched is 503. The token's rooms claims are not read.
//! 2. The verified user (`claims.user`, default `sub`; a token without it is 401) is looked up
//!    in the cache under (user, party, room). On a miss the endpoint gets
//!    `POST {"party", "room", "user": "<id>", "claims": {...verified claims...}, "ip", "origin"}`,
//!    signed like webhook mode, plus `Authorization: Bearer <token>` with `forward_token`.
//!    Its answers mean what they mean in webhook mode (2xx `{"access": "read"|"write", "user"?,
//!    "expires_at"?}` admits; 401/403 pass on; anything else is 503).
//! 3. Admissions are cached for `cache_ttl`, never past the token's `exp` (nor the answer's
//!    `expires_at`); 403s for `deny_cache_ttl`; 401s and 503s are not cached (a 401 is about
//!    the token, and the key names the user). The cache is bounded by `cache_max_entries`.
//!
//! The grant's user is the verified user; its user info is the endpoint's `user` object, or
//! else the token's user-info claim; it expires at the earlier of the token's `exp` and the
//! answer's `expires_at`.

use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::clock::from_unix_secs;
use crate::jwt::JwtAuth;
use crate::webhook::{Ask, WebhookAuth};
use crate::{AuthError, AuthRequest, Clock, ConfigError, Grant, JwtWebhookConfig};

/// The `jwt+webhook` authorizer.
pub(crate) struct MembershipAuth {
    jwt: JwtAuth,
    hook: WebhookAuth,
}

impl MembershipAuth {
    pub(crate) fn new(c: &JwtWebhookConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        Ok(Self {
            jwt: JwtAuth::new(&c.jwt, clock.clone())?,
            hook: WebhookAuth::new(&c.webhook, clock)?,
        })
    }

    pub(crate) async fn authorize(&self, req: &AuthRequest<'_>) -> Result<Grant, AuthError> {
        let (claims, exp) = self.jwt.verify(req).await?;
        let user = self
            .jwt
            .user_of(&claims)
            .ok_or_else(|| AuthError::unauthorized("token names no user"))?;
        let token_expires = exp.and_then(from_unix_secs);
        let ask = Ask {
            key: member_key(&user, req.party, req.room),
            body: json!({
                "party": req.party,
                "room": req.room,
                "user": user,
                "claims": Value::Object(claims.clone()),
                "ip": req.remote_addr.map(|a| a.to_string()),
                "origin": req.origin,
            }),
            token: req.token,
            not_after: token_expires,
            cache_unauthorized: false,
        };
        let mut grant = self.hook.decide(req, ask).await?;
        grant.user = Some(user);
        if grant.user_info.is_none() {
            grant.user_info = self.jwt.user_info_of(&claims);
        }
        grant.expires_at = match (grant.expires_at, token_expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(grant)
    }
}

/// SHA-256 over length-prefixed (user, party, room): a cache key that is not the user id.
fn member_key(user: &str, party: &str, room: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"member");
    for field in [user, party, room] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_keys_separate_fields() {
        assert_ne!(member_key("ab", "main", "c"), member_key("a", "main", "bc"));
        assert_ne!(member_key("u", "main", "r"), member_key("u", "mai", "nr"));
        assert_eq!(member_key("u", "main", "r"), member_key("u", "main", "r"));
    }
}
