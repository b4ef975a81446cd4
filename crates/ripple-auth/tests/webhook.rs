//! Webhook mode against a real HTTP server on 127.0.0.1:0 that counts and records requests.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use ripple_auth::{
    verify_webhook_signature, Access, AuthConfig, AuthError, AuthRequest, Authenticator,
    ManualClock, Secret, WebhookConfig, SIGNATURE_HEADER,
};
use serde_json::{json, Value};

const SECRET: &str = "webhook-signing-secret";

#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    /// (signature header, raw body) of every request.
    requests: Mutex<Vec<(String, Vec<u8>)>>,
}

/// The application's endpoint: decides by token.
async fn app(seen: Arc<Seen>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let sig = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.requests.lock().unwrap().push((sig, body.to_vec()));
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    match req["token"].as_str().unwrap_or("") {
        "writer" => axum::Json(json!({"access": "write", "user": {"id": "u1", "name": "Ann"}}))
            .into_response(),
        "reader" => axum::Json(json!({"access": "read", "user": {"id": 42}})).into_response(),
        "short-lived" => {
            axum::Json(json!({"access": "write", "expires_at": secs(SystemTime::now()) + 1}))
                .into_response()
        }
        "deny401" => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "session expired"})),
        )
            .into_response(),
        "deny403" => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"error": "not a member of this room"})),
        )
            .into_response(),
        "deny403-plain" => (StatusCode::FORBIDDEN, "nope").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({"access": "write"})).into_response()
        }
        "garbage" => (StatusCode::OK, "this is not json").into_response(),
        "bad-access" => axum::Json(json!({"access": "owner"})).into_response(),
        "boom" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "redirect" => (StatusCode::FOUND, [("location", "/elsewhere")]).into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

struct Fixture {
    auth: Authenticator,
    seen: Arc<Seen>,
    clock: Arc<ManualClock>,
}

async fn fixture_with(cfg: impl FnOnce(&mut WebhookConfig)) -> Fixture {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let router = axum::Router::new().route(
        "/auth",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            app(s.clone(), headers, body)
        }),
    );
    let addr = serve(router).await;
    let mut c = WebhookConfig {
        url: format!("http://{addr}/auth"),
        secret: Some(Secret::new(SECRET)),
        timeout: Duration::from_millis(500),
        ..WebhookConfig::default()
    };
    cfg(&mut c);
    // Real time: the server signs with it and the test verifies against it.
    let clock = Arc::new(ManualClock::starting_now());
    let auth = Authenticator::with_clock(&AuthConfig::Webhook(c), clock.clone()).unwrap();
    Fixture { auth, seen, clock }
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

async fn ask(f: &Fixture, room: &str, token: &str) -> Result<ripple_auth::Grant, AuthError> {
    f.auth
        .authorize(AuthRequest::new("main", room, Some(token)))
        .await
}

fn assert_unavailable(r: Result<ripple_auth::Grant, AuthError>) {
    assert!(
        matches!(&r, Err(e @ AuthError::Unavailable(_)) if e.status() == 503),
        "{r:?}"
    );
}

#[tokio::test]
async fn allow_write() {
    let f = fixture().await;
    let g = ask(&f, "doc-1", "writer").await.unwrap();
    assert_eq!(g.access, Access::Write);
    assert_eq!(g.user.as_deref(), Some("u1"));
    assert_eq!(g.user_info, Some(json!({"id": "u1", "name": "Ann"})));
    assert_eq!(g.expires_at, None);
}

#[tokio::test]
async fn allow_read() {
    let f = fixture().await;
    let g = ask(&f, "doc-1", "reader").await.unwrap();
    assert_eq!(g.access, Access::Read);
    assert_eq!(g.user.as_deref(), Some("42"));
}

#[tokio::test]
async fn deny_401_is_passed_on_with_reason() {
    let f = fixture().await;
    let r = ask(&f, "doc-1", "deny401").await;
    assert_eq!(r, Err(AuthError::Unauthorized("session expired".into())));
    assert_eq!(r.unwrap_err().status(), 401);
}

#[tokio::test]
async fn deny_403_is_passed_on_with_reason() {
    let f = fixture().await;
    let r = ask(&f, "doc-1", "deny403").await;
    assert_eq!(
        r,
        Err(AuthError::Forbidden("not a member of this room".into()))
    );
    assert_eq!(r.unwrap_err().status(), 403);
    let r = ask(&f, "doc-1", "deny403-plain").await;
    assert_eq!(
        r,
        Err(AuthError::Forbidden("refused by auth webhook".into()))
    );
}

#[tokio::test]
async fn slow_webhook_times_out_as_unavailable() {
    let f = fixture().await;
    let started = Instant::now();
    assert_unavailable(ask(&f, "doc-1", "slow").await);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} with a 500 ms timeout"
    );
    // Not cached: the next attempt asks again.
    assert_unavailable(ask(&f, "doc-1", "slow").await);
    assert_eq!(f.seen.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn down_webhook_is_unavailable() {
    let addr = dead_addr().await;
    let c = WebhookConfig {
        url: format!("http://{addr}/auth"),
        secret: Some(Secret::new(SECRET)),
        ..WebhookConfig::default()
    };
    let auth = Authenticator::new(&AuthConfig::Webhook(c)).unwrap();
    let r = auth
        .authorize(AuthRequest::new("main", "doc-1", Some("writer")))
        .await;
    assert_unavailable(r);
}

#[tokio::test]
async fn malformed_answers_are_unavailable() {
    let f = fixture().await;
    assert_unavailable(ask(&f, "doc-1", "garbage").await);
    assert_unavailable(ask(&f, "doc-1", "bad-access").await);
    assert_unavailable(ask(&f, "doc-1", "boom").await);
    // Redirects are not followed (the signed POST would become a GET).
    assert_unavailable(ask(&f, "doc-1", "redirect").await);
    assert_eq!(f.seen.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn signature_header_verifies_with_the_secret() {
    let f = fixture().await;
    let req = AuthRequest {
        party: "main",
        room: "doc-1",
        token: Some("writer"),
        remote_addr: Some("203.0.113.9".parse().unwrap()),
        origin: Some("https://app.example"),
    };
    f.auth.authorize(req).await.unwrap();
    let (sig, body) = f.seen.requests.lock().unwrap()[0].clone();
    let tolerance = Duration::from_secs(300);
    assert!(sig.starts_with("t=") && sig.contains(",v1="), "{sig}");
    assert!(verify_webhook_signature(
        SECRET.as_bytes(),
        &sig,
        &body,
        SystemTime::now(),
        tolerance
    ));
    assert!(!verify_webhook_signature(
        b"wrong-secret",
        &sig,
        &body,
        SystemTime::now(),
        tolerance
    ));
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert!(!verify_webhook_signature(
        SECRET.as_bytes(),
        &sig,
        &tampered,
        SystemTime::now(),
        tolerance
    ));
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        sent,
        json!({"party": "main", "room": "doc-1", "token": "writer", "ip": "203.0.113.9", "origin": "https://app.example"})
    );
}

#[tokio::test]
async fn cache_hit_avoids_a_second_request() {
    let f = fixture().await;
    ask(&f, "doc-1", "writer").await.unwrap();
    let g = ask(&f, "doc-1", "writer").await.unwrap();
    assert_eq!(g.user.as_deref(), Some("u1"));
    assert_eq!(f.seen.hits.load(Ordering::SeqCst), 1);
    // Another room or token is another decision.
    ask(&f, "doc-2", "writer").await.unwrap();
    ask(&f, "doc-1", "reader").await.unwrap();
    assert_eq!(f.seen.hits.load(Ordering::SeqCst), 3);
    // After cache_ttl (5 s) the webhook is asked again.
    f.clock.advance(Duration::from_secs(6));
    ask(&f, "doc-1", "writer").await.unwrap();
    assert_eq!(f.seen.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn denials_are_cached_briefly() {
    let f = fixture().await;
    assert!(ask(&f, "doc-1", "deny403").await.is_err());
    assert!(ask(&f, "doc-1", "deny403").await.is_err());
    assert_eq!(f.seen.hits.load(Ordering::SeqCst), 1);
    f.clock.advance(Duration::from_millis(1100)); // deny_cache_ttl is 1 s
    assert!(ask(&f, "doc-1", "deny403").await.is_err());
    assert_eq!(f.seen.hits.load(Ordering::SeqCst), 2);

    let g = fixture_with(|c| c.deny_cache_ttl = Duration::ZERO).await;
    assert!(ask(&g, "doc-1", "deny401").await.is_err());
    assert!(ask(&g, "doc-1", "deny401").await.is_err());
    assert_eq!(g.seen.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cache_never_outlives_the_grant_expiry() {
    let f = fixture().await;
    let g = ask(&f, "doc-1", "short-lived").await.unwrap();
    assert!(g.expires_at.is_some());
    f.clock.advance(Duration::from_secs(2));
    ask(&f, "doc-1", "short-lived").await.unwrap();
    assert_eq!(f.seen.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn missing_secret_or_url_is_a_config_error() {
    let c = WebhookConfig {
        url: "http://127.0.0.1:1/auth".into(),
        ..WebhookConfig::default()
    };
    assert!(Authenticator::new(&AuthConfig::Webhook(c)).is_err());
    let c = WebhookConfig {
        secret: Some(Secret::new(SECRET)),
        ..WebhookConfig::default()
    };
    assert!(Authenticator::new(&AuthConfig::Webhook(c)).is_err());
}
