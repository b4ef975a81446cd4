//! JWT mode: verify the token's signature and registered claims, then read room access from
//! its claims; and [`mint_hs256`] for `ripple token`.
//!
//! Algorithm safety: the token header's `alg` must be one of the configured algorithms, and the
//! key is chosen by the configuration, never by the token. So `alg: none` is refused, and an
//! HS256 token "signed" with an RSA public key fails when RS256 is configured. HMAC algorithms
//! can only be configured with a shared secret; public keys (PEM or JWKS) only ever verify
//! asymmetric signatures. Tokens with a `crit` header are refused (no extensions are supported).
//!
//! Claims (names configurable, see [`ClaimNames`](crate::ClaimNames)):
//! - `exp` (required unless `require_exp = false`), `nbf`: checked against the injected clock
//!   with `leeway`; `exp` becomes [`Grant::expires_at`](crate::Grant::expires_at).
//! - `iss`, `aud`: required and checked when `issuer` / `audience` are configured.
//! - `rooms`: `["doc-*", "main:diagram-42"]`, `"doc-*"` or `{"doc-*": "write", "x": "read"}`
//!   (see [`RoomPattern`](crate::RoomPattern)); when several patterns match, the highest access
//!   wins. No matching pattern → 403.
//! - `access`: `"read"` | `"write"` for the list/string forms; anything else → 403.
//! - `sub` → [`Grant::user`](crate::Grant::user); `user` → [`Grant::user_info`](crate::Grant::user_info).

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::clock::{from_unix_secs, unix_secs};
use crate::config::resolve_secret;
use crate::jwks::JwksCache;
use crate::{
    Access, AuthError, AuthRequest, ClaimNames, Clock, ConfigError, Grant, JwtConfig, RoomPattern,
};

pub(crate) type Claims = Map<String, Value>;

enum Keys {
    /// One configured key: an HMAC secret or a PEM public key.
    Static(DecodingKey),
    /// Keys from a JWKS URL.
    Jwks(JwksCache),
}

/// The JWT authorizer built from a [`JwtConfig`].
pub(crate) struct JwtAuth {
    algorithms: Vec<Algorithm>,
    keys: Keys,
    issuer: Vec<String>,
    audience: Vec<String>,
    leeway_secs: i64,
    require_exp: bool,
    claims: ClaimNames,
    default_rooms: Vec<RoomPattern>,
    default_access: Access,
    max_token_bytes: usize,
    clock: Arc<dyn Clock>,
}

impl JwtAuth {
    pub(crate) fn new(c: &JwtConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let secret = resolve_secret(c.secret.as_ref(), c.secret_env.as_deref())?;
        let pem = match (&c.public_key_pem, &c.public_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "set either public_key_pem or public_key_file, not both".into(),
                ))
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(path)) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            (None, None) => None,
        };
        let sources = usize::from(secret.is_some())
            + usize::from(pem.is_some())
            + usize::from(c.jwks_url.is_some());
        if sources == 0 {
            return Err(ConfigError::Missing(
                "jwt mode needs a key: secret, secret_env, public_key_pem, public_key_file or jwks_url",
            ));
        }
        if sources > 1 {
            return Err(ConfigError::Invalid(
                "jwt mode takes exactly one key source (secret, public key or jwks_url)".into(),
            ));
        }
        let configured = c
            .algorithms
            .iter()
            .map(|a| {
                Algorithm::from_str(a)
                    .map_err(|_| ConfigError::Invalid(format!("unknown JWT algorithm {a:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let or_default = |default: &[Algorithm]| {
            if configured.is_empty() {
                default.to_vec()
            } else {
                configured.clone()
            }
        };

        let (keys, algorithms) = if let Some(secret) = secret {
            if secret.expose().len() < 32 {
                tracing::warn!("JWT secret is shorter than 32 bytes; use a long random secret");
            }
            let algs = or_default(&[Algorithm::HS256]);
            require_family(&algs, AlgorithmFamily::Hmac, "a secret")?;
            (
                Keys::Static(DecodingKey::from_secret(secret.expose())),
                algs,
            )
        } else if let Some(pem) = pem {
            let key = parse_public_pem(pem.as_bytes())?;
            let default = match key.family() {
                AlgorithmFamily::Ec => Algorithm::ES256,
                AlgorithmFamily::Ed => Algorithm::EdDSA,
                _ => Algorithm::RS256,
            };
            let algs = or_default(&[default]);
            require_family(&algs, key.family(), "this public key")?;
            (Keys::Static(key), algs)
        } else {
            let url = c.jwks_url.as_deref().unwrap_or_default();
            let algs = or_default(&[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
            if algs.iter().any(|a| a.family() == AlgorithmFamily::Hmac) {
                return Err(ConfigError::Invalid(
                    "HMAC algorithms cannot be used with a JWKS".into(),
                ));
            }
            let jwks = JwksCache::new(
                url,
                c.jwks_refresh,
                c.jwks_min_refetch,
                c.jwks_timeout,
                clock.clone(),
            )?;
            (Keys::Jwks(jwks), algs)
        };
        if c.audience.is_empty()
            && !matches!(keys, Keys::Static(ref k) if k.family() == AlgorithmFamily::Hmac)
        {
            tracing::warn!(
                "jwt audience not configured: tokens issued for other services are accepted"
            );
        }
        Ok(Self {
            algorithms,
            keys,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway_secs: i64::try_from(c.leeway.as_secs()).unwrap_or(i64::MAX),
            require_exp: c.require_exp,
            claims: c.claims.clone(),
            default_rooms: c
                .default_rooms
                .iter()
                .map(|p| RoomPattern::parse(p))
                .collect(),
            default_access: c.default_access,
            max_token_bytes: c.max_token_bytes,
            clock,
        })
    }

    pub(crate) async fn authorize(&self, req: &AuthRequest<'_>) -> Result<Grant, AuthError> {
        let (claims, exp) = self.verify(req).await?;
        self.grant(&claims, req, exp)
    }

    /// The user id claim (`claims.user`, default `sub`) of verified `claims`.
    pub(crate) fn user_of(&self, claims: &Claims) -> Option<String> {
        match claims.get(&self.claims.user) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The user info claim (`claims.user_info`, default `user`) of verified `claims`.
    pub(crate) fn user_info_of(&self, claims: &Claims) -> Option<Value> {
        claims
            .get(&self.claims.user_info)
            .filter(|v| !v.is_null())
            .cloned()
    }

    /// Verifies the request's token (signature, algorithm, `iss`, `aud`, `exp`, `nbf`) and
    /// returns its claims and `exp`; room access is not looked at.
    pub(crate) async fn verify(
        &self,
        req: &AuthRequest<'_>,
    ) -> Result<(Claims, Option<i64>), AuthError> {
        let token = req
            .token
            .ok_or_else(|| AuthError::unauthorized("missing token"))?;
        if token.len() > self.max_token_bytes {
            return Err(AuthError::unauthorized("token too large"));
        }
        let header = peek_header(token)?;
        let alg = Algorithm::from_str(&header.alg)
            .ok()
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| AuthError::unauthorized("token algorithm not accepted"))?;
        let validation = self.validation(alg);
        let claims = match &self.keys {
            Keys::Static(key) => decode(token, key, &validation).map_err(map_jwt_error)?,
            Keys::Jwks(jwks) => {
                let kid = header.kid.as_deref();
                let set = jwks.keys_for(kid).await?;
                let mut result = Err(AuthError::unauthorized("unknown signing key"));
                for key in set.candidates(kid, alg) {
                    match decode(token, key, &validation) {
                        Ok(claims) => {
                            result = Ok(claims);
                            break;
                        }
                        // Try the next key (tokens without `kid`); anything else is final.
                        Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                            result = Err(map_jwt_error(e));
                        }
                        Err(e) => {
                            result = Err(map_jwt_error(e));
                            break;
                        }
                    }
                }
                result?
            }
        };
        let exp = self.check_times(&claims)?;
        Ok((claims, exp))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        // Time claims are checked by `check_times` against the injected clock.
        v.required_spec_claims = HashSet::new();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
        if !self.issuer.is_empty() {
            v.set_issuer(&self.issuer);
            v.required_spec_claims.insert("iss".into());
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            v.required_spec_claims.insert("aud".into());
        }
        v
    }

    /// Checks `exp` and `nbf`; returns `exp`.
    fn check_times(&self, claims: &Claims) -> Result<Option<i64>, AuthError> {
        let now = unix_secs(self.clock.now());
        let exp = numeric_date(claims, "exp")?;
        let nbf = numeric_date(claims, "nbf")?;
        match exp {
            None if self.require_exp => {
                return Err(AuthError::unauthorized("token has no exp claim"))
            }
            // RFC 7519: not accepted "on or after" exp. The server closes connections at
            // exp + leeway too, so a reconnect then is refused rather than admitted and closed.
            Some(exp) if now >= exp.saturating_add(self.leeway_secs) => {
                return Err(AuthError::unauthorized("token expired"))
            }
            _ => {}
        }
        if nbf.is_some_and(|nbf| now.saturating_add(self.leeway_secs) < nbf) {
            return Err(AuthError::unauthorized("token not yet valid"));
        }
        Ok(exp)
    }

    fn grant(
        &self,
        claims: &Claims,
        req: &AuthRequest<'_>,
        exp: Option<i64>,
    ) -> Result<Grant, AuthError> {
        let token_access = match claims.get(&self.claims.access) {
            None | Some(Value::Null) => self.default_access,
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| AuthError::forbidden("unknown access level in token"))?,
            Some(_) => return Err(AuthError::forbidden("malformed access claim")),
        };
        let matches = |pattern: &str| RoomPattern::parse(pattern).matches(req.party, req.room);
        let malformed = || AuthError::forbidden("malformed rooms claim");
        let best = match claims.get(&self.claims.rooms) {
            None | Some(Value::Null) => self
                .default_rooms
                .iter()
                .any(|p| p.matches(req.party, req.room))
                .then_some(token_access),
            Some(Value::String(p)) => matches(p).then_some(token_access),
            Some(Value::Array(patterns)) => {
                let mut any = false;
                for p in patterns {
                    any |= matches(p.as_str().ok_or_else(malformed)?);
                }
                any.then_some(token_access)
            }
            Some(Value::Object(map)) => {
                let mut best = None;
                for (p, access) in map {
                    let access: Access = access
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .ok_or_else(|| AuthError::forbidden("unknown access level in token"))?;
                    if matches(p) {
                        best = best.max(Some(access));
                    }
                }
                best
            }
            Some(_) => return Err(malformed()),
        };
        let access = best.ok_or_else(|| AuthError::forbidden("token does not grant this room"))?;
        let user = self.user_of(claims);
        let user_info = self.user_info_of(claims);
        Ok(Grant {
            access,
            user,
            user_info,
            expires_at: exp.and_then(from_unix_secs),
        })
    }
}

fn require_family(
    algs: &[Algorithm],
    family: AlgorithmFamily,
    what: &str,
) -> Result<(), ConfigError> {
    match algs.iter().find(|a| a.family() != family) {
        Some(a) => Err(ConfigError::Invalid(format!(
            "algorithm {a:?} cannot be verified with {what}"
        ))),
        None => Ok(()),
    }
}

fn parse_public_pem(pem: &[u8]) -> Result<DecodingKey, ConfigError> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|_| {
            ConfigError::Invalid("public key is not an RSA, EC or Ed25519 public key in PEM".into())
        })
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Claims, jsonwebtoken::errors::Error> {
    jsonwebtoken::decode::<Claims>(token, key, validation).map(|d| d.claims)
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    AuthError::unauthorized(match e.kind() {
        ErrorKind::InvalidSignature => "invalid token signature".to_owned(),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => "token algorithm not accepted".to_owned(),
        ErrorKind::InvalidIssuer => "token issuer not accepted".to_owned(),
        ErrorKind::InvalidAudience => "token audience not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(c) => format!("token has no {c} claim"),
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => "token could not be verified".to_owned(),
        _ => "malformed token".to_owned(),
    })
}

/// The parts of the JOSE header we look at before verifying.
struct PeekedHeader {
    alg: String,
    kid: Option<String>,
}

/// Reads `alg` and `kid` from the (unverified) header; refuses non-JWS shapes and `crit`.
fn peek_header(token: &str) -> Result<PeekedHeader, AuthError> {
    let malformed = || AuthError::unauthorized("malformed token");
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let Value::Object(h) = serde_json::from_slice(&bytes).map_err(|_| malformed())? else {
        return Err(malformed());
    };
    if h.contains_key("crit") {
        return Err(AuthError::unauthorized("unsupported critical token header"));
    }
    let alg = match h.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(AuthError::unauthorized("token algorithm not accepted")),
    };
    let kid = match h.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed()),
    };
    Ok(PeekedHeader { alg, kid })
}

/// A NumericDate claim as whole seconds (fractions dropped); absent → `None`.
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            // Saturating float-to-int cast; NaN cannot come out of JSON.
            (None, Some(f)) => Ok(Some(f.floor() as i64)),
            (None, None) => Err(AuthError::unauthorized(format!("malformed {name} claim"))),
        },
        Some(_) => Err(AuthError::unauthorized(format!("malformed {name} claim"))),
    }
}

/// What [`mint_hs256_with`] puts in a token.
#[derive(Debug, Clone)]
pub struct MintOptions<'a> {
    /// Room patterns (`rooms` claim).
    pub rooms: &'a [String],
    /// `access` claim.
    pub access: Access,
    /// Lifetime: `exp = now + ttl`.
    pub ttl: Duration,
    /// `sub` claim (user id), if any.
    pub sub: Option<&'a str>,
    /// `iss` claim, if any.
    pub issuer: Option<&'a str>,
    /// `aud` claim, if any.
    pub audience: Option<&'a str>,
    /// Issue time (`iat`).
    pub now: SystemTime,
}

/// Mints an HS256 token with the default claim names (`rooms`, `access`, `sub`, `iat`, `exp`),
/// valid for `ttl` from now. For `ripple token --secret S --room 'doc-*' --access write --ttl 1h`.
pub fn mint_hs256(
    secret: impl AsRef<[u8]>,
    rooms: &[String],
    access: Access,
    ttl: Duration,
    sub: Option<&str>,
) -> String {
    mint_hs256_with(
        secret,
        &MintOptions {
            rooms,
            access,
            ttl,
            sub,
            issuer: None,
            audience: None,
            now: SystemTime::now(),
        },
    )
}

/// Mints an HS256 token from [`MintOptions`]. Signs with HMAC directly, so it cannot fail.
pub fn mint_hs256_with(secret: impl AsRef<[u8]>, o: &MintOptions<'_>) -> String {
    let iat = unix_secs(o.now);
    let ttl = i64::try_from(o.ttl.as_secs()).unwrap_or(i64::MAX);
    let mut claims = Map::new();
    claims.insert("rooms".into(), o.rooms.iter().cloned().collect());
    claims.insert("access".into(), o.access.as_str().into());
    claims.insert("iat".into(), iat.into());
    claims.insert("exp".into(), iat.saturating_add(ttl).into());
    if let Some(sub) = o.sub {
        claims.insert("sub".into(), sub.into());
    }
    if let Some(iss) = o.issuer {
        claims.insert("iss".into(), iss.into());
    }
    if let Some(aud) = o.audience {
        claims.insert("aud".into(), aud.into());
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
    let signing_input = format!("{header}.{payload}");
    let sig = crate::hmac_sha256(secret.as_ref(), &[signing_input.as_bytes()]);
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}
