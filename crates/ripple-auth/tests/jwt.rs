//! JWT mode end to end through `Authenticator::authorize`, with time from a manual clock and a
//! JWKS served by a real HTTP server on 127.0.0.1:0.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use ripple_auth::{
    mint_hs256_with, Access, AuthConfig, AuthError, AuthRequest, Authenticator, ConfigError,
    JwtConfig, MintOptions, Secret,
};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

fn hs_config() -> JwtConfig {
    JwtConfig {
        secret: Some(Secret::new(SECRET)),
        ..JwtConfig::default()
    }
}

fn hs_token(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims,
        None,
    )
}

/// Claims valid at t0 for one hour, granting `doc-*` with write access.
fn claims() -> Value {
    let now = secs(t0());
    json!({"sub": "user-1", "rooms": ["doc-*"], "access": "write", "iat": now, "exp": now + 3600})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

async fn check(
    auth: &Authenticator,
    room: &str,
    token: &str,
) -> Result<ripple_auth::Grant, AuthError> {
    auth.authorize(AuthRequest::new("main", room, Some(token)))
        .await
}

fn assert_unauthorized(r: Result<ripple_auth::Grant, AuthError>, needle: &str) {
    match r {
        Err(e @ AuthError::Unauthorized(_)) => {
            assert_eq!(e.status(), 401);
            assert!(e.message().contains(needle), "{e} lacks {needle:?}");
        }
        other => panic!("expected 401 containing {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_hs256_token_is_admitted_with_user_and_expiry() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let claims = with(claims(), json!({"user": {"name": "Ann", "color": "#f00"}}));
    let grant = check(&auth, "doc-1", &hs_token(claims)).await.unwrap();
    assert_eq!(grant.access, Access::Write);
    assert_eq!(grant.user.as_deref(), Some("user-1"));
    assert_eq!(
        grant.user_info,
        Some(json!({"name": "Ann", "color": "#f00"}))
    );
    assert_eq!(grant.expires_at, Some(t0() + Duration::from_secs(3600)));
}

#[tokio::test]
async fn minted_token_is_admitted() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let rooms = vec!["doc-*".to_owned()];
    let token = mint_hs256_with(
        SECRET,
        &MintOptions {
            rooms: &rooms,
            access: Access::Read,
            ttl: Duration::from_secs(3600),
            sub: Some("cli"),
            issuer: None,
            audience: None,
            now: t0(),
        },
    );
    let grant = check(&auth, "doc-9", &token).await.unwrap();
    assert_eq!(grant.access, Access::Read);
    assert_eq!(grant.user.as_deref(), Some("cli"));
    // The convenience form uses the real clock; verify it with a real-clock authenticator.
    let real = Authenticator::new(&AuthConfig::Jwt(hs_config())).unwrap();
    let token =
        ripple_auth::mint_hs256(SECRET, &rooms, Access::Write, Duration::from_secs(60), None);
    let grant = check(&real, "doc-1", &token).await.unwrap();
    assert_eq!(grant.access, Access::Write);
    assert_eq!(grant.user, None);
}

#[tokio::test]
async fn missing_token_is_unauthorized() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let r = auth
        .authorize(AuthRequest::new("main", "doc-1", None))
        .await;
    assert_unauthorized(r, "missing token");
    assert_unauthorized(check(&auth, "doc-1", "not-a-jwt").await, "malformed");
    assert_unauthorized(
        check(&auth, "doc-1", &"a".repeat(20_000)).await,
        "too large",
    );
}

#[tokio::test]
async fn expired_token_is_rejected_after_leeway() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let token = hs_token(claims());
    clock.advance(Duration::from_secs(3600 + 29)); // within the 30 s leeway
    check(&auth, "doc-1", &token).await.unwrap();
    clock.advance(Duration::from_secs(2));
    assert_unauthorized(check(&auth, "doc-1", &token).await, "expired");
}

#[tokio::test]
async fn token_is_expired_from_exp_plus_leeway_on() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let token = hs_token(claims());
    clock.advance(Duration::from_millis((3600 + 29) * 1000 + 999));
    check(&auth, "doc-1", &token).await.unwrap();
    clock.advance(Duration::from_millis(1));
    assert_unauthorized(check(&auth, "doc-1", &token).await, "expired");
}

#[tokio::test]
async fn token_without_exp_is_rejected_by_default() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_unauthorized(check(&auth, "doc-1", &hs_token(c.clone())).await, "exp");
    let lax = jwt_auth(
        JwtConfig {
            require_exp: false,
            ..hs_config()
        },
        &clock,
    );
    check(&lax, "doc-1", &hs_token(c)).await.unwrap();
}

#[tokio::test]
async fn not_yet_valid_token_is_rejected_until_nbf() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let token = hs_token(with(claims(), json!({"nbf": secs(t0()) + 120})));
    assert_unauthorized(check(&auth, "doc-1", &token).await, "not yet valid");
    clock.advance(Duration::from_secs(120 - 30)); // nbf minus leeway
    check(&auth, "doc-1", &token).await.unwrap();
}

#[tokio::test]
async fn wrong_signature_is_rejected() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-of-sufficient-length!!"),
        &claims(),
        None,
    );
    assert_unauthorized(check(&auth, "doc-1", &other).await, "signature");

    // A valid signature over different claims: swap in a payload granting more rooms.
    let good = hs_token(claims());
    let forged_payload = b64(with(claims(), json!({"rooms": ["*"]}))
        .to_string()
        .as_bytes());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_unauthorized(check(&auth, "secret-room", &forged).await, "signature");
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let clock = clock();
    let cfg = JwtConfig {
        audience: vec!["ripple".into()],
        ..hs_config()
    };
    let auth = jwt_auth(cfg, &clock);
    check(
        &auth,
        "doc-1",
        &hs_token(with(claims(), json!({"aud": "ripple"}))),
    )
    .await
    .unwrap();
    check(
        &auth,
        "doc-1",
        &hs_token(with(claims(), json!({"aud": ["x", "ripple"]}))),
    )
    .await
    .unwrap();
    let wrong = hs_token(with(claims(), json!({"aud": "billing"})));
    assert_unauthorized(check(&auth, "doc-1", &wrong).await, "audience");
    assert_unauthorized(check(&auth, "doc-1", &hs_token(claims())).await, "aud");
}

#[tokio::test]
async fn wrong_issuer_is_rejected() {
    let clock = clock();
    let cfg = JwtConfig {
        issuer: vec!["https://auth.example".into()],
        ..hs_config()
    };
    let auth = jwt_auth(cfg, &clock);
    check(
        &auth,
        "doc-1",
        &hs_token(with(claims(), json!({"iss": "https://auth.example"}))),
    )
    .await
    .unwrap();
    let wrong = hs_token(with(claims(), json!({"iss": "https://evil.example"})));
    assert_unauthorized(check(&auth, "doc-1", &wrong).await, "issuer");
    assert_unauthorized(check(&auth, "doc-1", &hs_token(claims())).await, "iss");
}

#[tokio::test]
async fn wrong_room_is_forbidden() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let token = hs_token(with(
        claims(),
        json!({"rooms": ["doc-*", "other:diagram-42"]}),
    ));
    check(&auth, "doc-1", &token).await.unwrap();
    let r = check(&auth, "sheet-1", &token).await;
    assert!(
        matches!(&r, Err(e @ AuthError::Forbidden(_)) if e.status() == 403),
        "{r:?}"
    );
    // Party-qualified patterns only open their own party.
    let other = AuthRequest::new("other", "diagram-42", Some(&token));
    auth.authorize(other).await.unwrap();
    let main = check(&auth, "diagram-42", &token).await;
    assert!(matches!(main, Err(AuthError::Forbidden(_))), "{main:?}");
    // No rooms claim and no default_rooms: forbidden.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("rooms");
    let r = check(&auth, "doc-1", &hs_token(c.clone())).await;
    assert!(matches!(r, Err(AuthError::Forbidden(_))), "{r:?}");
    let open = jwt_auth(
        JwtConfig {
            default_rooms: vec!["*".into()],
            ..hs_config()
        },
        &clock,
    );
    check(&open, "anything", &hs_token(c)).await.unwrap();
}

#[tokio::test]
async fn read_and_write_access_come_from_claims() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let read = hs_token(with(claims(), json!({"access": "read"})));
    let g = check(&auth, "doc-1", &read).await.unwrap();
    assert_eq!(g.access, Access::Read);
    assert!(!g.access.can_write());
    let write = hs_token(claims());
    assert_eq!(
        check(&auth, "doc-1", &write).await.unwrap().access,
        Access::Write
    );
    // Map form: per-pattern access, highest match wins.
    let map = hs_token(with(
        claims(),
        json!({"rooms": {"doc-*": "read", "doc-7": "write", "wiki-*": "read"}}),
    ));
    assert_eq!(
        check(&auth, "doc-1", &map).await.unwrap().access,
        Access::Read
    );
    assert_eq!(
        check(&auth, "doc-7", &map).await.unwrap().access,
        Access::Write
    );
    assert_eq!(
        check(&auth, "wiki-a", &map).await.unwrap().access,
        Access::Read
    );
    // Unknown access level: forbidden, not silently upgraded.
    let admin = hs_token(with(claims(), json!({"access": "admin"})));
    assert!(matches!(
        check(&auth, "doc-1", &admin).await,
        Err(AuthError::Forbidden(_))
    ));
    // Custom claim names.
    let mut cfg = hs_config();
    cfg.claims.rooms = "https://example.com/rooms".into();
    cfg.claims.access = "perm".into();
    let custom = jwt_auth(cfg, &clock);
    let t = hs_token(
        json!({"exp": secs(t0()) + 60, "https://example.com/rooms": "doc-1", "perm": "read"}),
    );
    assert_eq!(
        check(&custom, "doc-1", &t).await.unwrap().access,
        Access::Read
    );
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let clock = clock();
    let auth = jwt_auth(hs_config(), &clock);
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        for sig in ["", "AAAA"] {
            let token = format!("{header}.{payload}.{sig}");
            assert_unauthorized(check(&auth, "doc-1", &token).await, "algorithm");
        }
    }
    // Header without alg at all.
    let header = b64(br#"{"typ":"JWT"}"#);
    assert_unauthorized(
        check(&auth, "doc-1", &format!("{header}.{payload}.")).await,
        "algorithm",
    );
}

#[tokio::test]
async fn hs256_signed_with_rsa_public_key_is_rejected_when_rs256_configured() {
    let clock = clock();
    let public_pem = fixture("rsa1_public.pem");
    let cfg = JwtConfig {
        public_key_pem: Some(public_pem.clone()),
        ..JwtConfig::default()
    };
    let auth = jwt_auth(cfg, &clock);
    // Control: a real RS256 token passes.
    let good = sign(
        Algorithm::RS256,
        &rsa_key("rsa1_private.pem"),
        &claims(),
        None,
    );
    check(&auth, "doc-1", &good).await.unwrap();
    // The classic confusion attack: HMAC keyed with the public key bytes.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(public_pem.as_bytes()),
        &claims(),
        None,
    );
    assert_unauthorized(check(&auth, "doc-1", &forged).await, "algorithm");
    // And configuring HS256 next to a public key is refused up front.
    let bad = JwtConfig {
        public_key_pem: Some(public_pem),
        algorithms: vec!["RS256".into(), "HS256".into()],
        ..JwtConfig::default()
    };
    let err = Authenticator::new(&AuthConfig::Jwt(bad)).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn only_configured_algorithms_are_accepted() {
    let clock = clock();
    let cfg = JwtConfig {
        public_key_pem: Some(fixture("rsa1_public.pem")),
        algorithms: vec!["RS512".into()],
        ..JwtConfig::default()
    };
    let auth = jwt_auth(cfg, &clock);
    let rs256 = sign(
        Algorithm::RS256,
        &rsa_key("rsa1_private.pem"),
        &claims(),
        None,
    );
    assert_unauthorized(check(&auth, "doc-1", &rs256).await, "algorithm");
    let rs512 = sign(
        Algorithm::RS512,
        &rsa_key("rsa1_private.pem"),
        &claims(),
        None,
    );
    check(&auth, "doc-1", &rs512).await.unwrap();
}

#[tokio::test]
async fn es256_and_eddsa_public_keys_from_pem() {
    let clock = clock();
    let es = jwt_auth(
        JwtConfig {
            public_key_pem: Some(fixture("ec_public.pem")),
            ..JwtConfig::default()
        },
        &clock,
    );
    let key = EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).unwrap();
    check(&es, "doc-1", &sign(Algorithm::ES256, &key, &claims(), None))
        .await
        .unwrap();

    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ed_public.pem");
    let ed = jwt_auth(
        JwtConfig {
            public_key_file: Some(path),
            ..JwtConfig::default()
        },
        &clock,
    );
    let key = EncodingKey::from_ed_pem(fixture("ed_private.pem").as_bytes()).unwrap();
    check(&ed, "doc-1", &sign(Algorithm::EdDSA, &key, &claims(), None))
        .await
        .unwrap();
    // An RSA-signed token does not pass the Ed25519 configuration.
    let rs = sign(
        Algorithm::RS256,
        &rsa_key("rsa1_private.pem"),
        &claims(),
        None,
    );
    assert_unauthorized(check(&ed, "doc-1", &rs).await, "algorithm");
}

/// A JWKS endpoint whose key set the test can swap, counting requests.
struct JwksServer {
    url: String,
    jwks: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

fn jwk(private_pem: &str, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&rsa_key(private_pem), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

async fn jwks_server(keys: Vec<Jwk>) -> JwksServer {
    let jwks = Arc::new(Mutex::new(serde_json::to_value(JwkSet { keys }).unwrap()));
    let hits = Arc::new(AtomicUsize::new(0));
    let (j, h) = (jwks.clone(), hits.clone());
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let (j, h) = (j.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let body = j.lock().unwrap().clone();
                axum::Json(body)
            }
        }),
    );
    let addr = serve(router).await;
    JwksServer {
        url: format!("http://{addr}/.well-known/jwks.json"),
        jwks,
        hits,
    }
}

fn jwks_config(url: &str) -> JwtConfig {
    JwtConfig {
        jwks_url: Some(url.to_owned()),
        audience: vec!["ripple".into()],
        ..JwtConfig::default()
    }
}

#[tokio::test]
async fn rs256_via_jwks_with_unknown_kid_refetch() {
    let server = jwks_server(vec![jwk("rsa1_private.pem", "k1")]).await;
    let clock = clock();
    let auth = jwt_auth(jwks_config(&server.url), &clock);
    let c = with(claims(), json!({"aud": "ripple"}));
    let t1 = sign(
        Algorithm::RS256,
        &rsa_key("rsa1_private.pem"),
        &c,
        Some("k1"),
    );
    let t2 = sign(
        Algorithm::RS256,
        &rsa_key("rsa2_private.pem"),
        &c,
        Some("k2"),
    );

    // First use fetches the set; later uses hit the cache.
    check(&auth, "doc-1", &t1).await.unwrap();
    check(&auth, "doc-1", &t1).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // The issuer rotates in k2.
    *server.jwks.lock().unwrap() = serde_json::to_value(JwkSet {
        keys: vec![jwk("rsa1_private.pem", "k1"), jwk("rsa2_private.pem", "k2")],
    })
    .unwrap();

    // Within the 30 s refetch limit an unknown kid does not trigger a fetch.
    assert_unauthorized(check(&auth, "doc-1", &t2).await, "unknown signing key");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // After it, the unknown kid triggers exactly one refetch and then verifies.
    clock.advance(Duration::from_secs(31));
    let g = check(&auth, "doc-1", &t2).await.unwrap();
    assert_eq!(g.user.as_deref(), Some("user-1"));
    check(&auth, "doc-1", &t2).await.unwrap();
    check(&auth, "doc-1", &t1).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // A flood of made-up kids costs at most one fetch per interval.
    clock.advance(Duration::from_secs(31));
    for i in 0..5 {
        let bogus = sign(
            Algorithm::RS256,
            &rsa_key("rsa2_private.pem"),
            &c,
            Some(&format!("nope-{i}")),
        );
        assert_unauthorized(check(&auth, "doc-1", &bogus).await, "unknown signing key");
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);

    // A k1 token signed with k2's private key fails on the signature.
    let wrong = sign(
        Algorithm::RS256,
        &rsa_key("rsa2_private.pem"),
        &c,
        Some("k1"),
    );
    assert_unauthorized(check(&auth, "doc-1", &wrong).await, "signature");

    // The set is refreshed when older than jwks_refresh (10 min).
    clock.advance(Duration::from_secs(601));
    check(&auth, "doc-1", &t1).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn jwks_token_without_kid_tries_matching_keys() {
    let server = jwks_server(vec![
        jwk("rsa1_private.pem", "k1"),
        jwk("rsa2_private.pem", "k2"),
    ])
    .await;
    let clock = clock();
    let auth = jwt_auth(jwks_config(&server.url), &clock);
    let c = with(claims(), json!({"aud": "ripple"}));
    let t = sign(Algorithm::RS256, &rsa_key("rsa2_private.pem"), &c, None);
    check(&auth, "doc-1", &t).await.unwrap();
    // Audience is still enforced with JWKS keys.
    let t = sign(
        Algorithm::RS256,
        &rsa_key("rsa2_private.pem"),
        &claims(),
        Some("k2"),
    );
    assert_unauthorized(check(&auth, "doc-1", &t).await, "aud");
}

#[tokio::test]
async fn jwks_hmac_keys_are_ignored() {
    // A JWKS serving an `oct` key must never enable HMAC verification.
    let oct = serde_json::from_value::<Jwk>(
        json!({"kty": "oct", "kid": "h", "k": b64(SECRET.as_bytes())}),
    )
    .unwrap();
    let server = jwks_server(vec![oct, jwk("rsa1_private.pem", "k1")]).await;
    let clock = clock();
    let auth = jwt_auth(jwks_config(&server.url), &clock);
    let c = with(claims(), json!({"aud": "ripple"}));
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("h".into());
    let hs =
        jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    assert_unauthorized(check(&auth, "doc-1", &hs).await, "algorithm");
    let rs = sign(
        Algorithm::RS256,
        &rsa_key("rsa1_private.pem"),
        &c,
        Some("k1"),
    );
    check(&auth, "doc-1", &rs).await.unwrap();
}

#[tokio::test]
async fn unreachable_jwks_is_unavailable() {
    let addr = dead_addr().await;
    let clock = clock();
    let auth = jwt_auth(jwks_config(&format!("http://{addr}/jwks.json")), &clock);
    let c = with(claims(), json!({"aud": "ripple"}));
    let t = sign(
        Algorithm::RS256,
        &rsa_key("rsa1_private.pem"),
        &c,
        Some("k1"),
    );
    let r = check(&auth, "doc-1", &t).await;
    assert!(
        matches!(&r, Err(e @ AuthError::Unavailable(_)) if e.status() == 503),
        "{r:?}"
    );
}

#[test]
fn config_errors_are_reported() {
    let none = JwtConfig::default();
    assert!(matches!(
        Authenticator::new(&AuthConfig::Jwt(none)),
        Err(ConfigError::Missing(_))
    ));
    let two = JwtConfig {
        jwks_url: Some("https://x/jwks".into()),
        ..hs_config()
    };
    assert!(matches!(
        Authenticator::new(&AuthConfig::Jwt(two)),
        Err(ConfigError::Invalid(_))
    ));
    let bad_alg = JwtConfig {
        algorithms: vec!["HS999".into()],
        ..hs_config()
    };
    assert!(matches!(
        Authenticator::new(&AuthConfig::Jwt(bad_alg)),
        Err(ConfigError::Invalid(_))
    ));
    let rs_with_secret = JwtConfig {
        algorithms: vec!["RS256".into()],
        ..hs_config()
    };
    assert!(matches!(
        Authenticator::new(&AuthConfig::Jwt(rs_with_secret)),
        Err(ConfigError::Invalid(_))
    ));
    let env = JwtConfig {
        secret_env: Some("RIPPLE_AUTH_TEST_UNSET_VAR".into()),
        ..JwtConfig::default()
    };
    assert!(matches!(
        Authenticator::new(&AuthConfig::Jwt(env)),
        Err(ConfigError::Env(_))
    ));
}

#[test]
fn secrets_do_not_leak_through_debug() {
    let cfg = AuthConfig::Jwt(hs_config());
    let printed = format!("{cfg:?}");
    assert!(!printed.contains(SECRET), "{printed}");
    assert!(printed.contains("[redacted]"));
}
