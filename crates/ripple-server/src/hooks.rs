//! Webhooks to the app's backend (`[hooks]`).
//!
//! **Load hook** (`load_url`): when a room with no stored state is first loaded, Ripple POSTs
//! `{"party", "room"}` and applies the answer before any client syncs: `200` with a Yjs v1
//! update body seeds the room (the update is stored first, so it is never asked for again), `204`
//! (or an empty `200`) starts it empty. It is never called for a room that has state. A failure
//! (connection error, timeout `load_timeout`, another status, a body that is not a Yjs update)
//! stores nothing and the room's joiners are closed with 1013: they retry, and the room is never
//! created empty and later saved over real content.
//!
//! Requests are signed like the auth webhook: `X-Ripple-Signature: t=<unix>,v1=<hex HMAC-SHA256
//! of "<t>.<body>">` with `[hooks] secret` (or `secret_env`); verify with
//! `ripple_auth::verify_webhook_signature`. Redirects are not followed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ripple_auth::Secret;
use ripple_core::lease::Epoch;
use ripple_core::{RoomKey, Store, StoredRoom};
use serde::{Deserialize, Deserializer};
use tracing::{info, warn};

/// `[hooks]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Called when a room with no stored state is first loaded (empty: no load hook).
    pub load_url: String,
    /// How long the load hook may take (including reading its answer).
    #[serde(deserialize_with = "duration")]
    pub load_timeout: Duration,
    /// The signing key of every hook request; or `secret_env`.
    pub secret: Option<Secret>,
    /// An environment variable holding the signing key.
    pub secret_env: Option<String>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            load_url: String::new(),
            load_timeout: Duration::from_secs(5),
            secret: None,
            secret_env: None,
        }
    }
}

/// A duration as `"5s"`, `"250ms"` ... or whole seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => ripple_auth::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Why the hooks configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    /// A setting is wrong.
    #[error("[hooks] {0}")]
    Invalid(String),
}

/// The hooks a server calls, built once at start.
pub(crate) struct Hooks {
    client: Option<reqwest::Client>,
    secret: Vec<u8>,
    load: Option<reqwest::Url>,
    load_timeout: Duration,
}

impl Hooks {
    /// No hooks.
    pub(crate) fn none() -> Self {
        Self {
            client: None,
            secret: Vec::new(),
            load: None,
            load_timeout: Duration::ZERO,
        }
    }

    /// The hooks `config` asks for (reads `secret_env` now).
    pub(crate) fn new(config: &HooksConfig) -> Result<Self, HooksError> {
        if config.load_url.is_empty() {
            return Ok(Self::none());
        }
        let url = |what: &str, s: &str| {
            let url =
                reqwest::Url::parse(s).map_err(|e| HooksError::Invalid(format!("{what}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(HooksError::Invalid(format!("{what} must be http(s)")));
            }
            Ok(url)
        };
        let load = Some(url("load_url", &config.load_url)?);
        let secret = match (&config.secret, &config.secret_env) {
            (Some(_), Some(_)) => {
                return Err(HooksError::Invalid(
                    "set either secret or secret_env, not both".into(),
                ))
            }
            (Some(s), None) => s.expose().to_vec(),
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => v.into_bytes(),
                _ => return Err(HooksError::Invalid(format!("secret_env: {var} is not set"))),
            },
            (None, None) => {
                return Err(HooksError::Invalid(
                    "hooks need secret or secret_env (the request signing key)".into(),
                ))
            }
        };
        if config.load_timeout.is_zero() {
            return Err(HooksError::Invalid("load_timeout must be > 0".into()));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ripple/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HooksError::Invalid(format!("http client: {e}")))?;
        Ok(Self {
            client: Some(client),
            secret,
            load,
            load_timeout: config.load_timeout,
        })
    }

    /// A signed POST of `body` to `url`, answered within `timeout`: (status, body up to
    /// `limit` bytes).
    async fn post(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(u16, Bytes), String> {
        let client = self.client.as_ref().ok_or("no hooks configured")?;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = ripple_auth::sign_webhook(&self.secret, t, &body);
        let call = async {
            let mut resp = client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(ripple_auth::SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("request failed: {}", e.without_url()))?;
            let status = resp.status().as_u16();
            if resp.content_length().is_some_and(|n| n > limit as u64) {
                return Err(format!("answer larger than {limit} bytes"));
            }
            let mut buf = bytes::BytesMut::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("reading the answer: {}", e.without_url()))?
            {
                if buf.len() + chunk.len() > limit {
                    return Err(format!("answer larger than {limit} bytes"));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok((status, buf.freeze()))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// Seeds a room that has nothing stored from the load hook, if there is one: the answer is
    /// checked, stored under `epoch`, and returned as what is stored now. `stored` (empty) is
    /// returned unchanged without a load hook or when it answers "start empty".
    pub(crate) async fn seed(
        &self,
        key: &RoomKey,
        store: &dyn Store,
        epoch: Epoch,
        max_bytes: usize,
        stored: StoredRoom,
    ) -> Result<StoredRoom, String> {
        let Some(url) = &self.load else {
            return Ok(stored);
        };
        let body = serde_json::json!({"party": key.party(), "room": key.room()})
            .to_string()
            .into_bytes();
        let (status, update) = self
            .post(url, body, self.load_timeout, max_bytes)
            .await
            .map_err(|e| {
                warn!(room = %key, error = %e, "load hook failed");
                format!("load hook failed: {e}")
            })?;
        match status {
            200 if !update.is_empty() => {}
            200 | 204 => {
                info!(room = %key, "load hook: start empty");
                return Ok(stored);
            }
            other => {
                warn!(room = %key, status = other, "load hook answered an unexpected status");
                return Err(format!("load hook answered {other}"));
            }
        }
        if let Err(e) = ripple_core::room::decode_untrusted(&update) {
            warn!(room = %key, error = %e, "load hook answered something that is not a Yjs update");
            return Err(format!("load hook answer is not a Yjs v1 update: {e}"));
        }
        let seq = store
            .append(key, epoch, vec![update.clone()])
            .await
            .map_err(|e| format!("storing the load hook's answer: {e}"))?;
        info!(room = %key, bytes = update.len(), seq, "room seeded by the load hook");
        Ok(StoredRoom {
            snapshot: None,
            snapshot_seq: 0,
            updates: vec![(seq, update)],
        })
    }
}
