//! The `[auth]` and `[admin]` tables of the server configuration.
//!
//! `[auth]` is `ripple_auth`'s [`AuthConfig`] (`mode = "none" | "jwt" | "webhook"` and that
//! mode's keys) plus the server's own `close_on_expiry`:
//!
//! ```toml
//! [auth]
//! mode = "jwt"
//! secret_env = "MY_JWT_SECRET"
//! close_on_expiry = true   # close a connection (4001) when its token expires
//!
//! [admin]
//! token = "..."            # or RIPPLE_ADMIN_TOKEN; protects /metrics
//! ```

use ripple_auth::{AuthConfig, Secret};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// How clients are authenticated, and what happens when their credential expires.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// The mode and its settings (the `[auth]` table without `close_on_expiry`).
    pub mode: AuthConfig,
    /// Close a connection with [`code::TOKEN_EXPIRED`](crate::closer::code::TOKEN_EXPIRED)
    /// when its token expires (JWT `exp` plus the configured leeway, or a webhook's
    /// `expires_at`). Default true. When false, a connection outlives its token; only new
    /// connections need a valid one.
    pub close_on_expiry: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthConfig::None,
            close_on_expiry: true,
        }
    }
}

impl AuthSettings {
    /// Settings for `mode` with the default expiry behaviour.
    pub fn new(mode: AuthConfig) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

impl<'de> Deserialize<'de> for AuthSettings {
    /// Takes `close_on_expiry` out of the table and gives the rest to [`AuthConfig`], whose
    /// mode tables refuse unknown keys. A table without `mode` must be otherwise empty.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let close_on_expiry = match table.remove("close_on_expiry") {
            None => true,
            Some(serde_json::Value::Bool(b)) => b,
            Some(_) => {
                return Err(D::Error::custom(
                    "auth.close_on_expiry must be true or false",
                ))
            }
        };
        let mode = if table.is_empty() {
            AuthConfig::None
        } else if !table.contains_key("mode") {
            return Err(D::Error::custom(
                "[auth] needs mode = \"none\", \"jwt\", \"webhook\" or \"jwt+webhook\"",
            ));
        } else {
            AuthConfig::deserialize(serde_json::Value::Object(table)).map_err(D::Error::custom)?
        };
        Ok(Self {
            mode,
            close_on_expiry,
        })
    }
}

/// The admin credential: separate from client tokens, it protects operator endpoints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// When set, `/metrics` requires `Authorization: Bearer <token>`; when unset it is open
    /// (fine on a laptop, not on the internet). `/healthz` and `/readyz` are always open.
    pub token: Option<Secret>,
}

impl AdminConfig {
    /// Whether the `Authorization` header value carries the admin token. True when no token is
    /// configured. Compares in constant time.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let Some(got) = authorization
            .and_then(|h| h.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes())
        else {
            return false;
        };
        let want = want.expose();
        got.len() == want.len() && got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_on_expiry_sits_next_to_the_mode_and_defaults_to_true() {
        let s: AuthSettings = toml::from_str(
            "mode = \"jwt\"\nsecret = \"s\"\nleeway = \"5s\"\nclose_on_expiry = false",
        )
        .expect("parses");
        assert!(!s.close_on_expiry);
        assert!(matches!(s.mode, AuthConfig::Jwt(ref j) if j.leeway.as_secs() == 5));
        let s: AuthSettings = toml::from_str("mode = \"jwt\"\nsecret = \"s\"").expect("parses");
        assert!(s.close_on_expiry);
        let s: AuthSettings = toml::from_str("").expect("parses");
        assert_eq!(s, AuthSettings::default());
        assert!(
            toml::from_str::<AuthSettings>("secret = \"s\"").is_err(),
            "mode required"
        );
        assert!(
            toml::from_str::<AuthSettings>("mode = \"jwt\"\nsecret = \"s\"\nsecrt = 1").is_err(),
            "typos are refused"
        );
    }

    #[test]
    fn the_example_config_parses_and_its_documented_auth_keys_exist() {
        let example = include_str!("../../../ripple.example.toml");
        let config: crate::Config = toml::from_str(example).expect("ripple.example.toml parses");
        assert_eq!(config.auth, AuthSettings::default());
        assert_eq!(config.admin, AdminConfig::default());
        // Every key documented (commented out) for the two modes.
        let jwt = r#"
            mode = "jwt"
            close_on_expiry = true
            secret = "s"
            jwks_refresh = "10m"
            jwks_min_refetch = "30s"
            jwks_timeout = "5s"
            algorithms = []
            issuer = []
            audience = []
            leeway = "30s"
            require_exp = true
            default_rooms = []
            default_access = "write"
            max_token_bytes = 16384
            [claims]
            rooms = "rooms"
            access = "access"
            user = "sub"
            user_info = "user"
        "#;
        let parsed: AuthSettings = toml::from_str(jwt).expect("jwt keys");
        assert_eq!(
            parsed.mode,
            AuthConfig::Jwt(ripple_auth::JwtConfig {
                secret: Some(Secret::new("s")),
                ..Default::default()
            })
        );
        let webhook = r#"
            mode = "webhook"
            url = "https://app.example/api/ripple-auth"
            secret = "s"
            timeout = "2500ms"
            cache_ttl = "5s"
            deny_cache_ttl = "1s"
            cache_max_entries = 10000
            max_concurrent = 64
            max_token_bytes = 16384
        "#;
        let parsed: AuthSettings = toml::from_str(webhook).expect("webhook keys");
        assert_eq!(
            parsed.mode,
            AuthConfig::Webhook(ripple_auth::WebhookConfig {
                url: "https://app.example/api/ripple-auth".into(),
                secret: Some(Secret::new("s")),
                ..Default::default()
            })
        );
    }

    #[test]
    fn admin_token_needs_the_exact_bearer_value() {
        let open = AdminConfig::default();
        assert!(open.admits(None));
        let admin = AdminConfig {
            token: Some(Secret::new("s3cret")),
        };
        assert!(admin.admits(Some("Bearer s3cret")));
        assert!(admin.admits(Some("bearer s3cret")));
        assert!(!admin.admits(None));
        assert!(!admin.admits(Some("Bearer s3cre")));
        assert!(!admin.admits(Some("Bearer s3cretx")));
        assert!(!admin.admits(Some("Basic s3cret")));
    }
}
