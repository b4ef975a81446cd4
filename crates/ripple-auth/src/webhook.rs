//! Webhook mode: ask the application whether a token may open a room.
//!
//! Request: `POST <url>` with `Content-Type: application/json` and body
//! `{"party": "...", "room": "...", "token": "..." | null, "ip": "..." | null, "origin": "..." | null}`,
//! signed in the [`SIGNATURE_HEADER`] header as `t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">` (verify with [`verify_webhook_signature`]; reject stale `t` to stop replays).
//! Redirects are not followed. With `forward_token = true` the token is also sent as
//! `Authorization: Bearer <token>`.
//!
//! Answers:
//! - 2xx with `{"access": "read"|"write", "user": {...}?, "expires_at": <unix secs>?}` admits;
//!   `user.id` (string or number) becomes the user id, the whole `user` value the user info.
//! - 401 / 403 are passed on; a JSON body's `message` or `error` string (≤ 200 chars) becomes
//!   the reason.
//! - Anything else — timeout, connection error, 3xx, other 4xx, 5xx, a body over 64 KiB, and a
//!   2xx whose body is not that JSON — is 503: the decision could not be made, and the client
//!   retries. (A broken 2xx body is an application bug; failing closed with 503 keeps it from
//!   admitting anyone and keeps it out of the cache.)
//!
//! Cache: decisions are cached per (token, party, room) — `ip` and `origin` are informational
//! and not part of the key. Admissions live `cache_ttl` (never past `expires_at`), 401/403
//! `deny_cache_ttl`, 503 not at all. The cache holds at most `cache_max_entries` (oldest
//! evicted first) and keys are SHA-256 digests, so tokens are not kept as map keys.
//! At most `max_concurrent` requests are in flight; others wait inside the same `timeout`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cache::TtlCache;
use crate::clock::{from_unix_secs, unix_secs};
use crate::config::resolve_secret;
use crate::{Access, AuthError, AuthRequest, Clock, ConfigError, Grant, Secret, WebhookConfig};

/// The header carrying the request signature (lower case, as HTTP/2 sends it).
pub const SIGNATURE_HEADER: &str = "x-ripple-signature";

/// Bound on the webhook's answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Bound on a denial reason passed on to the client.
const MAX_REASON_CHARS: usize = 200;

type Decision = Result<Grant, AuthError>;

/// The webhook authorizer built from a [`WebhookConfig`].
pub(crate) struct WebhookAuth {
    url: reqwest::Url,
    client: reqwest::Client,
    secret: Secret,
    timeout: Duration,
    allow_ttl: Duration,
    deny_ttl: Duration,
    // A std Mutex: held for a lookup or insert, never across an await.
    cache: Mutex<TtlCache<[u8; 32], Decision>>,
    slots: tokio::sync::Semaphore,
    max_token_bytes: usize,
    forward_token: bool,
    clock: Arc<dyn Clock>,
}

/// One question for the endpoint.
pub(crate) struct Ask<'a> {
    /// The cache key of the answer.
    pub(crate) key: [u8; 32],
    /// The JSON body to POST.
    pub(crate) body: Value,
    /// The client's token, forwarded as `Authorization: Bearer` when `forward_token` is set.
    pub(crate) token: Option<&'a str>,
    /// An admission is cached no later than this (the token's `exp`).
    pub(crate) not_after: Option<SystemTime>,
    /// Whether a 401 is cached like a 403 (not when the key does not cover the token).
    pub(crate) cache_unauthorized: bool,
}

impl WebhookAuth {
    pub(crate) fn new(c: &WebhookConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        if c.url.is_empty() {
            return Err(ConfigError::Missing("webhook mode needs url"));
        }
        let url = reqwest::Url::parse(&c.url)
            .map_err(|e| ConfigError::Invalid(format!("webhook url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::Invalid("webhook url must be http(s)".into()));
        }
        let secret = resolve_secret(c.secret.as_ref(), c.secret_env.as_deref())?.ok_or(
            ConfigError::Missing("webhook mode needs secret or secret_env (request signing key)"),
        )?;
        if c.timeout.is_zero() {
            return Err(ConfigError::Invalid("webhook timeout must be > 0".into()));
        }
        if c.max_concurrent == 0 {
            return Err(ConfigError::Invalid(
                "webhook max_concurrent must be > 0".into(),
            ));
        }
        Ok(Self {
            url,
            client: crate::http::client(c.timeout, false)?,
            secret,
            timeout: c.timeout,
            allow_ttl: c.cache_ttl,
            deny_ttl: c.deny_cache_ttl,
            cache: Mutex::new(TtlCache::new(c.cache_max_entries)),
            slots: tokio::sync::Semaphore::new(
                c.max_concurrent.min(tokio::sync::Semaphore::MAX_PERMITS),
            ),
            max_token_bytes: c.max_token_bytes,
            forward_token: c.forward_token,
            clock,
        })
    }

    pub(crate) async fn authorize(&self, req: &AuthRequest<'_>) -> Decision {
        if req.token.is_some_and(|t| t.len() > self.max_token_bytes) {
            return Err(AuthError::unauthorized("token too large"));
        }
        let body = json!({
            "party": req.party,
            "room": req.room,
            "token": req.token,
            "ip": req.remote_addr.map(|a| a.to_string()),
            "origin": req.origin,
        });
        let ask = Ask {
            key: cache_key(req),
            body,
            token: req.token,
            not_after: None,
            cache_unauthorized: true,
        };
        self.decide(req, ask).await
    }

    /// Asks the endpoint (or the cache) one question: POSTs `ask.body`, signed, with the
    /// client's token as `Authorization: Bearer` when `forward_token` is set, and caches the
    /// answer under `ask.key` (admissions never past `ask.not_after`).
    pub(crate) async fn decide(&self, req: &AuthRequest<'_>, ask: Ask<'_>) -> Decision {
        let now = self.clock.now();
        if let Some(hit) = self.lock_cache().get(&ask.key, now) {
            return hit;
        }
        let body = ask.body.to_string().into_bytes();
        let t = u64::try_from(unix_secs(now)).unwrap_or(0);
        let signature = sign_webhook(self.secret.expose(), t, &body);
        let bearer = ask.token.filter(|_| self.forward_token);
        let decision = tokio::time::timeout(self.timeout, self.call(body, signature, bearer))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(party = req.party, room = req.room, "auth webhook timed out");
                Err(AuthError::unavailable("auth webhook timed out"))
            });
        let until =
            |t: Option<SystemTime>| t.map(|t| t.duration_since(now).unwrap_or(Duration::ZERO));
        let ttl = match &decision {
            Ok(grant) => [until(grant.expires_at), until(ask.not_after)]
                .into_iter()
                .flatten()
                .fold(self.allow_ttl, Duration::min),
            Err(AuthError::Unauthorized(_)) if !ask.cache_unauthorized => Duration::ZERO,
            Err(AuthError::Unauthorized(_) | AuthError::Forbidden(_)) => self.deny_ttl,
            Err(AuthError::Unavailable(_)) => Duration::ZERO,
        };
        self.lock_cache()
            .insert(ask.key, decision.clone(), ttl, now);
        decision
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, TtlCache<[u8; 32], Decision>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn call(&self, body: Vec<u8>, signature: String, bearer: Option<&str>) -> Decision {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| AuthError::unavailable("auth webhook closed"))?;
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let resp = request.body(body).send().await.map_err(|e| {
            let timed_out = e.is_timeout();
            tracing::warn!(error = %e.without_url(), "auth webhook request failed");
            if timed_out {
                AuthError::unavailable("auth webhook timed out")
            } else {
                AuthError::unavailable("auth webhook unreachable")
            }
        })?;
        let status = resp.status().as_u16();
        let body = crate::http::read_limited(resp, MAX_ANSWER_BYTES).await;
        match status {
            200..=299 => {
                let body = body.map_err(|error| {
                    tracing::warn!(%error, "auth webhook answer unreadable");
                    AuthError::unavailable("auth webhook answer unreadable")
                })?;
                parse_admission(&body).ok_or_else(|| {
                    tracing::warn!(status, "auth webhook answered malformed JSON");
                    AuthError::unavailable("auth webhook answered malformed JSON")
                })
            }
            401 => Err(AuthError::Unauthorized(
                reason(body.ok().as_deref()).unwrap_or_else(|| "rejected by auth webhook".into()),
            )),
            403 => Err(AuthError::Forbidden(
                reason(body.ok().as_deref()).unwrap_or_else(|| "refused by auth webhook".into()),
            )),
            _ => {
                tracing::warn!(status, "auth webhook answered an unexpected status");
                Err(AuthError::unavailable(format!(
                    "auth webhook answered {status}"
                )))
            }
        }
    }
}

/// SHA-256 over length-prefixed fields, so ("ab","c") and ("a","bc") differ and an absent token
/// differs from an empty one.
fn cache_key(req: &AuthRequest<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    match req.token {
        Some(t) => {
            h.update([1u8]);
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        None => h.update([0u8]),
    }
    for field in [req.party, req.room] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

fn parse_admission(body: &[u8]) -> Option<Grant> {
    #[derive(Deserialize)]
    struct Answer {
        access: Access,
        #[serde(default)]
        user: Value,
        #[serde(default)]
        expires_at: Option<i64>,
    }
    let a: Answer = serde_json::from_slice(body).ok()?;
    let user = match a.user.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let expires_at = match a.expires_at {
        Some(secs) => Some(from_unix_secs(secs)?),
        None => None,
    };
    Some(Grant {
        access: a.access,
        user,
        user_info: (!a.user.is_null()).then_some(a.user),
        expires_at,
    })
}

/// The `message` or `error` string of a JSON denial, without control characters, truncated.
fn reason(body: Option<&[u8]>) -> Option<String> {
    let v: Value = serde_json::from_slice(body?).ok()?;
    let text = v
        .get("message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)?;
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign_webhook(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let mac = crate::hmac_sha256(secret, &[t.as_bytes(), b".", body]);
    format!("t={t},v1={}", hex::encode(mac))
}

/// Checks a [`SIGNATURE_HEADER`] value against `body` in constant time, refusing timestamps
/// more than `tolerance` away from `now`. Any one of several `v1=` entries may match (secret
/// rotation). For applications written in Rust, and for tests.
pub fn verify_webhook_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> bool {
    use hmac::{Mac, SimpleHmac};
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => sigs.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some((t_str, t)) = t.and_then(|s| Some((s, s.parse::<i64>().ok()?))) else {
        return false;
    };
    if unix_secs(now).abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    sigs.iter().any(|sig| {
        let Ok(mut mac) = <SimpleHmac<Sha256> as Mac>::new_from_slice(secret) else {
            return false;
        };
        mac.update(t_str.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(sig).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trip_and_tamper() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = sign_webhook(b"k", 1_700_000_000, b"{}");
        let tol = Duration::from_secs(300);
        assert!(verify_webhook_signature(b"k", &h, b"{}", now, tol));
        assert!(!verify_webhook_signature(b"other", &h, b"{}", now, tol));
        assert!(!verify_webhook_signature(b"k", &h, b"{ }", now, tol));
        let late = now + Duration::from_secs(301);
        assert!(!verify_webhook_signature(b"k", &h, b"{}", late, tol));
        assert!(!verify_webhook_signature(b"k", "garbage", b"{}", now, tol));
    }

    #[test]
    fn cache_keys_separate_fields() {
        let a = AuthRequest::new("main", "ab", Some("c"));
        let b = AuthRequest::new("main", "a", Some("bc"));
        let none = AuthRequest::new("main", "a", None);
        let empty = AuthRequest::new("main", "a", Some(""));
        assert_ne!(cache_key(&a), cache_key(&b));
        assert_ne!(cache_key(&none), cache_key(&empty));
    }

    #[test]
    fn admissions_parse() {
        let g = parse_admission(br#"{"access":"read","user":{"id":7,"name":"A"}}"#);
        let g = g.expect("valid");
        assert_eq!(g.access, Access::Read);
        assert_eq!(g.user.as_deref(), Some("7"));
        assert!(parse_admission(br#"{"access":"admin"}"#).is_none());
        assert!(parse_admission(br#"{"user":{}}"#).is_none());
        assert!(parse_admission(b"ok").is_none());
    }
}
