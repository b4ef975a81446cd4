//! The `[auth]` table of `ripple.toml`: which mode, and each mode's settings.
//!
//! ```toml
//! [auth]
//! mode = "jwt"                      # "none" | "jwt" | "webhook"
//! secret_env = "RIPPLE_JWT_SECRET"  # HS256; or: secret = "...", public_key_file, jwks_url
//! ```
//!
//! Durations are strings (`"30s"`, `"10m"`, see [`parse_duration`](crate::parse_duration)) or
//! integers (seconds). Unknown keys are refused so typos do not silently weaken auth.
//! Secrets are never printed: [`Secret`]'s `Debug` is redacted.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::Access;

/// How connections are authenticated. Defaults to [`AuthConfig::None`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
// Parsed once at start-up; boxing would only make it clumsier to build in code.
#[allow(clippy::large_enum_variant)]
pub enum AuthConfig {
    /// Admit every connection with write access. For development only.
    #[default]
    None,
    /// Verify a JWT carried by the client.
    Jwt(JwtConfig),
    /// Ask the application's HTTP endpoint.
    Webhook(WebhookConfig),
    /// Verify a JWT locally, then ask the application's endpoint whether that verified user
    /// may open the room (`mode = "jwt+webhook"`, e.g. Convex Auth plus workspace membership).
    #[serde(rename = "jwt+webhook")]
    JwtWebhook(JwtWebhookConfig),
}

/// Settings of `mode = "jwt+webhook"`: `[auth.jwt]` verifies the token (its rooms claims are
/// not used: tokens such as Convex's name no rooms), `[auth.webhook]` decides membership.
///
/// ```toml
/// [auth]
/// mode = "jwt+webhook"
/// [auth.jwt]
/// jwks_url = "https://my-app.convex.site/.well-known/jwks.json"
/// issuer = "https://my-app.convex.site"
/// audience = "convex"
/// [auth.webhook]
/// url = "https://my-app.convex.site/ripple/membership"
/// secret_env = "RIPPLE_WEBHOOK_SECRET"
/// forward_token = true
/// cache_ttl = "1m"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtWebhookConfig {
    /// How the token is verified. `claims.user` names the user (default `sub`); a token
    /// without it is refused (401).
    pub jwt: JwtConfig,
    /// Where membership is asked. Answers are cached per (user, party, room) for `cache_ttl`,
    /// never past the token's `exp`.
    pub webhook: WebhookConfig,
}

/// A secret string from the config file. `Debug` prints `[redacted]`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Names of the claims that carry room access. All are top-level claim names, matched exactly
/// (namespaced names such as `https://example.com/rooms` work as-is).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimNames {
    /// Room patterns: a list `["doc-*", "main:diagram-42"]` (access from the access claim), a
    /// single string, or a map `{"doc-*": "write", "wiki-*": "read"}`. Default `rooms`.
    pub rooms: String,
    /// `"read"` or `"write"`, applying to a list or string rooms claim. Default `access`.
    pub access: String,
    /// The user id ([`Grant::user`](crate::Grant::user)); a string or a number. Default `sub`.
    pub user: String,
    /// Copied whole into [`Grant::user_info`](crate::Grant::user_info) when present. Default
    /// `user`.
    pub user_info: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            rooms: "rooms".into(),
            access: "access".into(),
            user: "sub".into(),
            user_info: "user".into(),
        }
    }
}

/// Settings of `mode = "jwt"`. Exactly one key source: `secret`/`secret_env` (HMAC),
/// `public_key_pem`/`public_key_file` (RSA, EC P-256 or Ed25519 SPKI PEM), or `jwks_url`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `alg` values (`HS256`, `RS256`, `ES256`, `EdDSA`, ...). Empty means inferred:
    /// `HS256` for a secret, the key's own algorithm for a PEM, `RS256`+`ES256`+`EdDSA` for a
    /// JWKS. HMAC algorithms are accepted only with a secret and never with public keys.
    pub algorithms: Vec<String>,
    /// HMAC shared secret (UTF-8 bytes as written).
    pub secret: Option<Secret>,
    /// Name of an environment variable holding the HMAC secret, read at start-up.
    pub secret_env: Option<String>,
    /// A public key in PEM.
    pub public_key_pem: Option<String>,
    /// Path of a public key PEM file, read at start-up.
    pub public_key_file: Option<PathBuf>,
    /// URL of a JWKS document (`{"keys": [...]}`), e.g. `https://issuer/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// Refetch the JWKS when the copy is older than this. Default 10 min.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub jwks_refresh: Duration,
    /// Never fetch the JWKS more often than this, even for unknown `kid`s. Default 30 s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub jwks_min_refetch: Duration,
    /// Timeout of one JWKS fetch. Default 5 s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub jwks_timeout: Duration,
    /// Accepted `iss` values; when set, `iss` is required. A string or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub issuer: Vec<String>,
    /// Accepted `aud` values; when set, `aud` is required. When empty `aud` is not checked.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Clock-skew allowance for `exp` and `nbf`. Default 30 s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub leeway: Duration,
    /// Refuse tokens without `exp`. Default true.
    pub require_exp: bool,
    /// Claim names.
    pub claims: ClaimNames,
    /// Room patterns used when the token has no rooms claim. Default none (such tokens get 403);
    /// `["*"]` admits any valid token to every room.
    pub default_rooms: Vec<String>,
    /// Access when the token has no access claim. Default `write`.
    pub default_access: Access,
    /// Longer tokens are refused without parsing. Default 16 KiB.
    pub max_token_bytes: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithms: Vec::new(),
            secret: None,
            secret_env: None,
            public_key_pem: None,
            public_key_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(600),
            jwks_min_refetch: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            issuer: Vec::new(),
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            require_exp: true,
            claims: ClaimNames::default(),
            default_rooms: Vec::new(),
            default_access: Access::Write,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        }
    }
}

/// Default bound on token length.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Settings of `mode = "webhook"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST. Required.
    pub url: String,
    /// HMAC-SHA256 key for the `X-Ripple-Signature` header. This or `secret_env` is required.
    pub secret: Option<Secret>,
    /// Name of an environment variable holding the signing secret.
    pub secret_env: Option<String>,
    /// Whole-request deadline, including waiting for a concurrency slot. Default 2.5 s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub timeout: Duration,
    /// How long an admission is cached per (token, party, room). Default 5 s; 0 disables.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub cache_ttl: Duration,
    /// How long a 401/403 is cached. Default 1 s (absorbs reconnect storms); 0 disables.
    /// Failures (503) are never cached.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub deny_cache_ttl: Duration,
    /// Bound on cached decisions. Default 10,000; oldest evicted first.
    pub cache_max_entries: usize,
    /// Bound on webhook requests in flight; more wait (within `timeout`). Default 64.
    pub max_concurrent: usize,
    /// Longer tokens are refused without calling the webhook. Default 16 KiB.
    pub max_token_bytes: usize,
    /// Also send the client's token as `Authorization: Bearer <token>`, so the endpoint can
    /// verify it with its own auth library (a Convex HTTP action: `ctx.auth.getUserIdentity()`).
    /// Default false.
    pub forward_token: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: None,
            secret_env: None,
            timeout: Duration::from_millis(2500),
            cache_ttl: Duration::from_secs(5),
            deny_cache_ttl: Duration::from_secs(1),
            cache_max_entries: 10_000,
            max_concurrent: 64,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            forward_token: false,
        }
    }
}

/// A config value that is invalid, or a key/secret that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("auth config: {0}")]
    Missing(&'static str),
    /// Settings that contradict each other or an invalid value.
    #[error("auth config: {0}")]
    Invalid(String),
    /// The named environment variable is unset or not UTF-8.
    #[error("auth config: environment variable {0} is not set")]
    Env(String),
    /// A key file could not be read.
    #[error("auth config: cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("auth config: HTTP client: {0}")]
    Http(String),
}

/// Resolves `secret` / `secret_env` (exactly one may be set).
pub(crate) fn resolve_secret(
    secret: Option<&Secret>,
    env: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    match (secret, env) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(
            "set either secret or secret_env, not both".into(),
        )),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
            _ => Err(ConfigError::Env(var.to_owned())),
        },
        (None, None) => Ok(None),
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}
