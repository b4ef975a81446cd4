//! A cached JWKS: the issuer's public keys, fetched over HTTP on first use and kept.
//!
//! Refetch policy: when the copy is older than `refresh`, or a token names a `kid` the copy
//! lacks (key rotation), but never more often than once per `min_refetch` (so tokens with
//! made-up `kid`s cannot make us hammer the issuer). Fetches are single-flight: one request at a
//! time; tasks that need the new keys wait for it, tasks that merely see a stale copy use it.
//! A failed fetch keeps the old keys; with no keys at all, requests get 503.
//!
//! Only asymmetric keys are taken (`kty` RSA, EC, OKP); `oct` (HMAC) keys and keys marked
//! `"use": "enc"` are ignored, so a JWKS can never turn on HMAC verification.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

use crate::{AuthError, Clock, ConfigError};

/// Bound on a JWKS document.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One usable key of the set.
struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// A fetched key set.
pub(crate) struct KeySet {
    keys: Vec<Key>,
    fetched_at: SystemTime,
}

impl KeySet {
    /// Keys that may verify a token with header `kid` and `alg`: same `kid` if the token names
    /// one, same algorithm family, and the key's own `alg` (if any) equal to `alg`.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(move |k| k.key.family() == alg.family())
            .filter(move |k| k.alg.is_none_or(|a| a == alg))
            .map(|k| &k.key)
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// See the module docs.
pub(crate) struct JwksCache {
    url: String,
    client: reqwest::Client,
    refresh: Duration,
    min_refetch: Duration,
    clock: Arc<dyn Clock>,
    // A std lock: held only to clone or swap the Arc, never across an await.
    current: RwLock<Option<Arc<KeySet>>>,
    /// Single-flight fetch guard; holds the time of the last fetch attempt.
    last_attempt: tokio::sync::Mutex<Option<SystemTime>>,
}

impl JwksCache {
    pub(crate) fn new(
        url: &str,
        refresh: Duration,
        min_refetch: Duration,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| ConfigError::Invalid(format!("jwks_url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::Invalid("jwks_url must be http(s)".into()));
        }
        if parsed.scheme() == "http"
            && !matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
        {
            tracing::warn!(
                url,
                "jwks_url is plain http: keys can be swapped in transit"
            );
        }
        Ok(Self {
            url: url.to_owned(),
            client: crate::http::client(timeout, true)?,
            refresh,
            min_refetch,
            clock,
            current: RwLock::new(None),
            last_attempt: tokio::sync::Mutex::new(None),
        })
    }

    /// The key set to verify a token naming `kid` with, fetching first if needed.
    pub(crate) async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, AuthError> {
        if let Some(set) = self.current() {
            let kid_missing = kid.is_some_and(|k| !set.has_kid(k));
            if !kid_missing {
                if self.is_stale(&set) {
                    // Refresh if nobody else is; otherwise the stale copy is good enough.
                    if let Ok(guard) = self.last_attempt.try_lock() {
                        self.fetch_locked(guard, kid).await;
                        return self.current().ok_or_else(unavailable);
                    }
                }
                return Ok(set);
            }
        }
        let guard = self.last_attempt.lock().await;
        self.fetch_locked(guard, kid).await;
        self.current().ok_or_else(unavailable)
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn is_stale(&self, set: &KeySet) -> bool {
        elapsed(set.fetched_at, self.clock.now()) >= self.refresh
    }

    fn wants_fetch(&self, kid: Option<&str>) -> bool {
        match self.current() {
            None => true,
            Some(set) => self.is_stale(&set) || kid.is_some_and(|k| !set.has_kid(k)),
        }
    }

    /// Fetches unless another task just did or the rate limit says no.
    async fn fetch_locked(
        &self,
        mut last_attempt: tokio::sync::MutexGuard<'_, Option<SystemTime>>,
        kid: Option<&str>,
    ) {
        let now = self.clock.now();
        // Another task may have fetched while we waited for the lock.
        if !self.wants_fetch(kid) {
            return;
        }
        if last_attempt.is_some_and(|t| elapsed(t, now) < self.min_refetch) {
            return;
        }
        *last_attempt = Some(now);
        match self.fetch_once().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: now,
                });
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(set);
            }
            Err(error) => tracing::warn!(url = %self.url, %error, "JWKS fetch failed"),
        }
    }

    async fn fetch_once(&self) -> Result<Vec<Key>, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = crate::http::read_limited(resp, MAX_JWKS_BYTES).await?;
        parse_jwks(&body)
    }
}

fn unavailable() -> AuthError {
    AuthError::unavailable("signing keys unavailable")
}

/// Time from `from` to `now`; a clock that went backwards counts as "long ago", which lets a
/// fetch reset the timestamps instead of freezing the cache.
fn elapsed(from: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(from).unwrap_or(Duration::MAX)
}

fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys: Vec<Key> = raw.keys.into_iter().filter_map(parse_key).collect();
    if keys.is_empty() {
        return Err("JWKS has no usable signing keys".into());
    }
    Ok(keys)
}

/// One entry, or `None` to skip it (unparseable, symmetric, encryption-only, unknown `alg`).
fn parse_key(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
        || jwk.common.public_key_use == Some(PublicKeyUse::Encryption)
    {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(ka) => Some(Algorithm::from_str(&ka.to_string()).ok()?),
        None => None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    if key.family() == AlgorithmFamily::Hmac {
        return None;
    }
    if alg.is_some_and(|a| a.family() != key.family()) {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id,
        alg,
        key,
    })
}
