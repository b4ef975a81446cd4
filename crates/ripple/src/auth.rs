//! Authentication for `dev` and `serve`: the environment variables that turn it on, and the
//! server's authorizer built from the effective configuration.
//!
//! - `RIPPLE_AUTH_JWT_SECRET`: JWT (HS256) auth with this secret. With `[auth] mode = "jwt"` in
//!   ripple.toml it replaces the file's key and keeps its other settings (issuer, leeway, ...).
//! - `RIPPLE_ADMIN_TOKEN`: the admin credential (`[admin] token`), required by `/metrics`.
//!
//! `serve` without auth warns loudly that every client is admitted; `dev` says so quietly.

use anyhow::{bail, Context};
use ripple_auth::{AuthConfig, JwtConfig, Secret};
use ripple_server::auth::SharedAuthorize;
use ripple_server::Config;
use tracing::{info, warn};

/// Turns on JWT auth with this HS256 secret.
pub const JWT_SECRET_ENV: &str = "RIPPLE_AUTH_JWT_SECRET";
/// The admin token.
pub const ADMIN_TOKEN_ENV: &str = "RIPPLE_ADMIN_TOKEN";

/// Applies the auth environment variables to `config` (variables beat ripple.toml).
pub fn apply_env(config: &mut Config) -> anyhow::Result<()> {
    apply(config, |name| std::env::var(name).ok())
}

fn apply(config: &mut Config, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    if let Some(secret) = var(JWT_SECRET_ENV).filter(|s| !s.is_empty()) {
        let secret = Some(Secret::new(secret));
        match &mut config.auth.mode {
            AuthConfig::None => {
                config.auth.mode = AuthConfig::Jwt(JwtConfig {
                    secret,
                    ..JwtConfig::default()
                });
            }
            AuthConfig::Jwt(jwt) => {
                *jwt = JwtConfig {
                    secret,
                    secret_env: None,
                    public_key_pem: None,
                    public_key_file: None,
                    jwks_url: None,
                    ..jwt.clone()
                };
            }
            AuthConfig::Webhook(_) => bail!(
                "{JWT_SECRET_ENV} is set but ripple.toml has [auth] mode = \"webhook\"; \
                 unset one of them"
            ),
            AuthConfig::JwtWebhook(_) => bail!(
                "{JWT_SECRET_ENV} is set but ripple.toml has [auth] mode = \"jwt+webhook\"; \
                 unset one of them"
            ),
        }
    }
    if let Some(token) = var(ADMIN_TOKEN_ENV).filter(|s| !s.is_empty()) {
        config.admin.token = Some(Secret::new(token));
    }
    Ok(())
}

/// The authorizer for `config`, after saying what it does.
pub fn authorizer(config: &Config, dev: bool) -> anyhow::Result<SharedAuthorize> {
    let auth = ripple_server::token_auth::authorizer(&config.auth).context("setting up auth")?;
    match &config.auth.mode {
        AuthConfig::None if dev => {
            info!("auth: none (ripple dev admits every client; set {JWT_SECRET_ENV} to try JWT)")
        }
        AuthConfig::None => warn!(
            "AUTHENTICATION IS OFF: every client is admitted with write access to every room. \
             Set {JWT_SECRET_ENV}, or [auth] in ripple.toml, before exposing this server."
        ),
        AuthConfig::Jwt(_) => info!(close_on_expiry = config.auth.close_on_expiry, "auth: jwt"),
        AuthConfig::Webhook(w) => info!(
            url = %w.url,
            close_on_expiry = config.auth.close_on_expiry,
            "auth: webhook"
        ),
        AuthConfig::JwtWebhook(c) => info!(
            membership_url = %c.webhook.url,
            forward_token = c.webhook.forward_token,
            close_on_expiry = config.auth.close_on_expiry,
            "auth: jwt+webhook (token verified here, membership asked of the webhook)"
        ),
    }
    if config.admin.token.is_none() && !dev {
        info!("/metrics is open: set {ADMIN_TOKEN_ENV} or [admin] token to protect it");
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_jwt_secret_variable_turns_jwt_on_and_replaces_only_the_key() {
        let mut config = Config::default();
        apply(&mut config, vars(&[])).expect("ok");
        assert_eq!(config.auth.mode, AuthConfig::None);

        apply(&mut config, vars(&[(JWT_SECRET_ENV, "s1")])).expect("ok");
        let AuthConfig::Jwt(jwt) = &config.auth.mode else {
            panic!("jwt expected")
        };
        assert_eq!(jwt.secret, Some(Secret::new("s1")));

        let mut config = Config::default();
        config.auth.mode = AuthConfig::Jwt(JwtConfig {
            jwks_url: Some("https://issuer/jwks.json".into()),
            issuer: vec!["https://issuer".into()],
            ..JwtConfig::default()
        });
        apply(&mut config, vars(&[(JWT_SECRET_ENV, "s2")])).expect("ok");
        let AuthConfig::Jwt(jwt) = &config.auth.mode else {
            panic!("jwt expected")
        };
        assert_eq!(
            (jwt.secret.clone(), jwt.jwks_url.clone(), jwt.issuer.clone()),
            (
                Some(Secret::new("s2")),
                None,
                vec!["https://issuer".to_owned()]
            )
        );
    }

    #[test]
    fn the_jwt_secret_variable_conflicts_with_webhook_mode() {
        let mut config = Config::default();
        config.auth.mode = AuthConfig::Webhook(ripple_auth::WebhookConfig::default());
        assert!(apply(&mut config, vars(&[(JWT_SECRET_ENV, "s")])).is_err());
    }

    #[test]
    fn the_admin_token_variable_sets_the_admin_credential() {
        let mut config = Config::default();
        apply(&mut config, vars(&[(ADMIN_TOKEN_ENV, "adm")])).expect("ok");
        assert_eq!(config.admin.token, Some(Secret::new("adm")));
        assert_eq!(config.auth.mode, AuthConfig::None);
    }
}
