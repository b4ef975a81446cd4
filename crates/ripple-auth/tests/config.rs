//! The `[auth]` table as it appears in ripple.toml.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ripple_auth::{Access, AuthConfig, AuthRequest, Authenticator};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    auth: AuthConfig,
}

fn parse(s: &str) -> Result<AuthConfig, toml::de::Error> {
    toml::from_str::<File>(s).map(|f| f.auth)
}

#[test]
fn jwt_table_parses_with_durations_and_claim_names() {
    let cfg = parse(
        r#"
        [auth]
        mode = "jwt"
        jwks_url = "https://auth.example.com/.well-known/jwks.json"
        issuer = "https://auth.example.com/"
        audience = ["ripple"]
        leeway = "10s"
        jwks_min_refetch = 60
        default_access = "read"
        [auth.claims]
        rooms = "https://example.com/rooms"
        "#,
    )
    .unwrap();
    let AuthConfig::Jwt(j) = cfg else {
        panic!("not jwt")
    };
    assert_eq!(j.leeway, Duration::from_secs(10));
    assert_eq!(j.jwks_min_refetch, Duration::from_secs(60));
    assert_eq!(j.issuer, vec!["https://auth.example.com/".to_owned()]);
    assert_eq!(j.default_access, Access::Read);
    assert_eq!(j.claims.rooms, "https://example.com/rooms");
    assert_eq!(j.claims.access, "access");
    assert!(Authenticator::new(&AuthConfig::Jwt(j)).is_ok());
}

#[test]
fn webhook_table_parses() {
    let cfg = parse(
        r#"
        [auth]
        mode = "webhook"
        url = "https://app.example.com/ripple/auth"
        secret = "s3cret"
        timeout = "2s"
        cache_ttl = "5s"
        deny_cache_ttl = 0
        "#,
    )
    .unwrap();
    let AuthConfig::Webhook(w) = cfg else {
        panic!("not webhook")
    };
    assert_eq!(w.timeout, Duration::from_secs(2));
    assert_eq!(w.deny_cache_ttl, Duration::ZERO);
    assert_eq!(w.cache_max_entries, 10_000);
}

#[tokio::test]
async fn missing_table_is_mode_none_admitting_write() {
    let cfg = parse("").unwrap();
    assert!(matches!(cfg, AuthConfig::None));
    let none = parse("[auth]\nmode = \"none\"\n").unwrap();
    let auth = Authenticator::new(&none).unwrap();
    assert_eq!(auth.mode(), "none");
    let g = auth
        .authorize(AuthRequest::new("main", "x", None))
        .await
        .unwrap();
    assert_eq!(g.access, Access::Write);
}

#[test]
fn typos_and_bad_values_are_refused() {
    assert!(parse("[auth]\nmode = \"jwt\"\nsecrte = \"x\"\n").is_err());
    assert!(parse("[auth]\nmode = \"jwt\"\nleeway = \"soon\"\n").is_err());
    assert!(parse("[auth]\nmode = \"oauth\"\n").is_err());
    assert!(parse("[auth]\nmode = \"jwt\"\ndefault_access = \"admin\"\n").is_err());
}
