//! `jwt+webhook` mode against a stand-in Convex deployment: an issuer serving RS256 keys at
//! `/.well-known/jwks.json` without `kid` (as Convex Auth does), tokens with Convex's claims
//! (`iss` = the site URL, `aud` = "convex", `sub` = "<userId>|<sessionId>"), and a membership
//! endpoint (the app's HTTP action) that knows which users belong to which workspace.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::Algorithm;
use ripple_auth::{
    verify_webhook_signature, Access, AuthConfig, AuthError, AuthRequest, Authenticator, JwtConfig,
    JwtWebhookConfig, ManualClock, Secret, WebhookConfig, SIGNATURE_HEADER,
};
use serde_json::{json, Value};

const SECRET: &str = "membership-signing-secret";

/// What the membership endpoint saw.
#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    /// (Authorization header, signature valid, body) per request.
    requests: Mutex<Vec<(Option<String>, bool, Value)>>,
}

/// The app's membership check: workspace `w1` owns the rooms `doc-w1-*`; `alice` is a member
/// (write), `bob` a viewer (read); anyone else is refused.
async fn membership(seen: Arc<Seen>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let valid = verify_webhook_signature(
        SECRET.as_bytes(),
        signature,
        &body,
        SystemTime::now(),
        Duration::from_secs(300),
    );
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    seen.requests
        .lock()
        .unwrap()
        .push((authorization, valid, req.clone()));
    if !valid {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Convex's sub is "<userId>|<sessionId>".
    let user_id = req["user"]
        .as_str()
        .unwrap_or("")
        .split('|')
        .next()
        .unwrap_or("");
    let in_w1 = req["room"].as_str().unwrap_or("").starts_with("doc-w1-");
    match (user_id, in_w1) {
        ("alice", true) => {
            axum::Json(json!({"access": "write", "user": {"id": "alice", "name": "Alice"}}))
                .into_response()
        }
        ("bob", true) => axum::Json(json!({"access": "read"})).into_response(),
        _ => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"message": "not a member of this workspace"})),
        )
            .into_response(),
    }
}

struct Deployment {
    site: String,
    auth: Authenticator,
    seen: Arc<Seen>,
    clock: Arc<ManualClock>,
}

/// A key as Convex publishes it: no `kid`.
fn jwk_without_kid(private_pem: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&rsa_key(private_pem), Algorithm::RS256).unwrap();
    jwk.common.key_id = None;
    jwk
}

async fn deployment_with(
    webhook_url: Option<String>,
    cfg: impl FnOnce(&mut JwtWebhookConfig),
) -> Deployment {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    // rsa2 first: a token signed with rsa1 must still verify (every key is tried without kid).
    let jwks = serde_json::to_value(JwkSet {
        keys: vec![
            jwk_without_kid("rsa2_private.pem"),
            jwk_without_kid("rsa1_private.pem"),
        ],
    })
    .unwrap();
    let router = axum::Router::new()
        .route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        )
        .route(
            "/ripple/membership",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                membership(s.clone(), headers, body)
            }),
        );
    let addr = serve(router).await;
    let site = format!("http://{addr}");
    let mut c = JwtWebhookConfig {
        jwt: JwtConfig {
            jwks_url: Some(format!("{site}/.well-known/jwks.json")),
            issuer: vec![site.clone()],
            audience: vec!["convex".into()],
            ..JwtConfig::default()
        },
        webhook: WebhookConfig {
            url: webhook_url.unwrap_or_else(|| format!("{site}/ripple/membership")),
            secret: Some(Secret::new(SECRET)),
            timeout: Duration::from_millis(1000),
            cache_ttl: Duration::from_secs(600),
            ..WebhookConfig::default()
        },
    };
    cfg(&mut c);
    // Real time: the endpoint checks signatures against it; the test moves it forward.
    let clock = Arc::new(ManualClock::starting_now());
    let auth = Authenticator::with_clock(&AuthConfig::JwtWebhook(c), clock.clone()).unwrap();
    Deployment {
        site,
        auth,
        seen,
        clock,
    }
}

async fn deployment() -> Deployment {
    deployment_with(None, |_| {}).await
}

impl Deployment {
    /// A Convex Auth token for `user` (session `s1`), valid for `ttl_secs` from the test's now.
    fn token(&self, user: &str, ttl_secs: i64) -> String {
        let now = secs(self.clock.now());
        sign(
            Algorithm::RS256,
            &rsa_key("rsa1_private.pem"),
            &json!({
                "sub": format!("{user}|s1"),
                "iss": self.site,
                "aud": "convex",
                "iat": now,
                "exp": now + ttl_secs,
            }),
            None,
        )
    }

    async fn open(&self, room: &str, token: &str) -> Result<ripple_auth::Grant, AuthError> {
        self.auth
            .authorize(AuthRequest::new("main", room, Some(token)))
            .await
    }

    fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }
}

use ripple_auth::Clock;

#[tokio::test]
async fn a_member_writes_a_viewer_reads_and_a_stranger_is_forbidden() {
    let d = deployment().await;
    let alice = d.token("alice", 3600);
    let g = d.open("doc-w1-plan", &alice).await.unwrap();
    assert_eq!(g.access, Access::Write);
    assert_eq!(g.user.as_deref(), Some("alice|s1"), "the verified user");
    assert_eq!(g.user_info, Some(json!({"id": "alice", "name": "Alice"})));
    let exp = secs(d.clock.now()) + 3600;
    assert_eq!(g.expires_at.map(secs), Some(exp), "expires with the token");

    let g = d.open("doc-w1-plan", &d.token("bob", 3600)).await.unwrap();
    assert_eq!(g.access, Access::Read);
    assert_eq!(g.user.as_deref(), Some("bob|s1"));

    let r = d.open("doc-w1-plan", &d.token("mallory", 3600)).await;
    assert_eq!(
        r,
        Err(AuthError::Forbidden(
            "not a member of this workspace".into()
        ))
    );
    assert_eq!(r.unwrap_err().status(), 403);
    // A member of w1 is a stranger elsewhere.
    let r = d.open("doc-w2-plan", &alice).await;
    assert_eq!(r.map_err(|e| e.status()), Err(403));

    // What the endpoint was told: party, room, the verified user and claims, signed; the token
    // itself only when forwarding is asked for.
    let requests = d.seen.requests.lock().unwrap();
    let (authorization, valid, body) = &requests[0];
    assert!(*valid, "signed with the shared secret");
    assert_eq!(authorization, &None);
    assert_eq!(body["party"], "main");
    assert_eq!(body["room"], "doc-w1-plan");
    assert_eq!(body["user"], "alice|s1");
    assert_eq!(body["claims"]["aud"], "convex");
    assert_eq!(body["claims"]["iss"], Value::String(d.site.clone()));
    assert_eq!(body["claims"]["exp"], exp);
    assert!(body.get("token").is_none(), "{body}");
}

#[tokio::test]
async fn forward_token_sends_the_clients_token_as_a_bearer() {
    let d = deployment_with(None, |c| c.webhook.forward_token = true).await;
    let alice = d.token("alice", 3600);
    d.open("doc-w1-plan", &alice).await.unwrap();
    let requests = d.seen.requests.lock().unwrap();
    assert_eq!(requests[0].0, Some(format!("Bearer {alice}")));
}

#[tokio::test]
async fn an_expired_or_foreign_token_is_401_without_asking_the_endpoint() {
    let d = deployment().await;
    let expired = d.token("alice", -120); // past exp + the 30 s leeway
    let r = d.open("doc-w1-plan", &expired).await;
    assert!(
        matches!(&r, Err(AuthError::Unauthorized(m)) if m.contains("expired")),
        "{r:?}"
    );
    assert_eq!(r.unwrap_err().status(), 401);

    // Signed by the right key for another audience, or by a key the issuer does not publish.
    let now = secs(d.clock.now());
    let other_aud = sign(
        Algorithm::RS256,
        &rsa_key("rsa1_private.pem"),
        &json!({"sub": "alice|s1", "iss": d.site, "aud": "other", "exp": now + 3600}),
        None,
    );
    assert_eq!(
        d.open("doc-w1-plan", &other_aud)
            .await
            .map_err(|e| e.status()),
        Err(401)
    );
    let no_sub = sign(
        Algorithm::RS256,
        &rsa_key("rsa1_private.pem"),
        &json!({"iss": d.site, "aud": "convex", "exp": now + 3600}),
        None,
    );
    assert_eq!(
        d.open("doc-w1-plan", &no_sub).await,
        Err(AuthError::Unauthorized("token names no user".into()))
    );
    assert_eq!(
        d.auth
            .authorize(AuthRequest::new("main", "doc-w1-plan", None))
            .await
            .map_err(|e| e.status()),
        Err(401)
    );
    assert_eq!(
        d.hits(),
        0,
        "the endpoint is asked only about verified users"
    );
}

#[tokio::test]
async fn an_endpoint_that_is_down_is_503_and_not_cached() {
    let dead = dead_addr().await;
    let d = deployment_with(Some(format!("http://{dead}/ripple/membership")), |_| {}).await;
    let alice = d.token("alice", 3600);
    for _ in 0..2 {
        let r = d.open("doc-w1-plan", &alice).await;
        assert!(matches!(&r, Err(AuthError::Unavailable(_))), "{r:?}");
        assert_eq!(r.unwrap_err().status(), 503);
    }
}

#[tokio::test]
async fn answers_are_cached_per_user_and_room_within_the_tokens_lifetime() {
    let d = deployment().await;
    // Alice's first token lives 60 s; the cache would keep answers 10 minutes.
    let short = d.token("alice", 60);
    d.open("doc-w1-plan", &short).await.unwrap();
    d.open("doc-w1-plan", &short).await.unwrap();
    assert_eq!(
        d.hits(),
        1,
        "the same user and room: answered from the cache"
    );
    // A fresh token of the same user: still the same (user, room).
    let fresh = d.token("alice", 3600);
    let g = d.open("doc-w1-plan", &fresh).await.unwrap();
    assert_eq!(d.hits(), 1);
    let exp = secs(d.clock.now()) + 3600;
    assert_eq!(
        g.expires_at.map(secs),
        Some(exp),
        "the grant follows the token it came with"
    );
    // Another room is another question.
    d.open("doc-w1-notes", &fresh).await.unwrap();
    assert_eq!(d.hits(), 2);
    // Denials are cached briefly (deny_cache_ttl, 1 s).
    let mallory = d.token("mallory", 3600);
    assert!(d.open("doc-w1-plan", &mallory).await.is_err());
    assert!(d.open("doc-w1-plan", &mallory).await.is_err());
    assert_eq!(d.hits(), 3);
    // Past the first token's exp, the answer it earned is not reused, even for a valid token.
    d.clock.advance(Duration::from_secs(61));
    d.open("doc-w1-plan", &fresh).await.unwrap();
    assert_eq!(
        d.hits(),
        4,
        "asked again once the token the answer came with expired"
    );
    d.open("doc-w1-plan", &fresh).await.unwrap();
    assert_eq!(d.hits(), 4);
}

#[test]
fn the_mode_parses_from_ripple_toml() {
    #[derive(serde::Deserialize)]
    struct File {
        auth: AuthConfig,
    }
    let f: File = toml::from_str(
        r#"
        [auth]
        mode = "jwt+webhook"
        [auth.jwt]
        jwks_url = "https://my-app.convex.site/.well-known/jwks.json"
        issuer = "https://my-app.convex.site"
        audience = "convex"
        [auth.webhook]
        url = "https://my-app.convex.site/ripple/membership"
        secret = "s"
        forward_token = true
        cache_ttl = "1m"
        "#,
    )
    .unwrap();
    let AuthConfig::JwtWebhook(c) = &f.auth else {
        panic!("not jwt+webhook: {:?}", f.auth)
    };
    assert_eq!(c.jwt.audience, vec!["convex".to_owned()]);
    assert!(c.webhook.forward_token);
    assert_eq!(c.webhook.cache_ttl, Duration::from_secs(60));
    let auth = Authenticator::new(&f.auth).unwrap();
    assert_eq!(auth.mode(), "jwt+webhook");
    assert!(toml::from_str::<File>(
        "[auth]\nmode = \"jwt+webhook\"\n[auth.jwt]\njwks_url = \"x\"\nrooms = \"*\"\n"
    )
    .is_err());
}
