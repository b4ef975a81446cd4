//! The binary's auth surface: `ripple token`, and `ripple serve` with and without
//! `RIPPLE_AUTH_JWT_SECRET`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime};

use ripple_auth::{Access, AuthConfig, AuthError, AuthRequest, Authenticator, JwtConfig, Secret};

mod common;

use common::{listening_port, ripple};

/// Runs `ripple token ...`; returns the last line of stdout.
fn mint(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = ripple();
    cmd.arg("token").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "ripple token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    stdout.lines().last().expect("a line").to_owned()
}

fn verifier(secret: &str) -> Authenticator {
    Authenticator::new(&AuthConfig::Jwt(JwtConfig {
        secret: Some(Secret::new(secret)),
        ..JwtConfig::default()
    }))
    .expect("authenticator")
}

#[tokio::test]
async fn token_command_prints_one_token_that_opens_exactly_its_rooms() {
    let token = mint(
        &[
            "--secret",
            "s3cret",
            "--room",
            "doc-*",
            "--room",
            "main:diagram-42",
            "--access",
            "read",
            "--ttl",
            "1h",
            "--sub",
            "alice",
        ],
        &[],
    );
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let auth = verifier("s3cret");
    let grant = auth
        .authorize(AuthRequest::new("main", "doc-7", Some(&token)))
        .await
        .expect("doc-* admits doc-7");
    assert_eq!(grant.access, Access::Read);
    assert_eq!(grant.user.as_deref(), Some("alice"));
    let left = grant
        .expires_at
        .expect("exp")
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
    auth.authorize(AuthRequest::new("main", "diagram-42", Some(&token)))
        .await
        .expect("second --room");
    assert!(matches!(
        auth.authorize(AuthRequest::new("main", "diagram-43", Some(&token)))
            .await,
        Err(AuthError::Forbidden(_))
    ));
    assert!(matches!(
        verifier("other")
            .authorize(AuthRequest::new("main", "doc-7", Some(&token)))
            .await,
        Err(AuthError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn token_command_reads_the_secret_from_the_environment() {
    let token = mint(
        &["--room", "doc-1"],
        &[("RIPPLE_AUTH_JWT_SECRET", "from-env")],
    );
    let grant = verifier("from-env")
        .authorize(AuthRequest::new("main", "doc-1", Some(&token)))
        .await
        .expect("admitted");
    assert_eq!(grant.access, Access::Write, "write is the default");

    let out = ripple()
        .args(["token", "--room", "doc-1"])
        .output()
        .expect("runs");
    assert!(!out.status.success(), "no secret: refused");
    let out = ripple()
        .args([
            "token", "--secret", "s", "--room", "doc-1", "--access", "admin",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success(), "bad access level: refused");
}

/// A `ripple serve` child on a free port; killed on drop.
struct Serve {
    child: Child,
    port: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(env: &[(&str, &str)]) -> Serve {
    let mut cmd = ripple();
    cmd.args([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--persist",
        "none",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ripple serve");
    let port = listening_port(&mut child);
    Serve { child, port }
}

impl Serve {
    /// The status code the server answers a WebSocket upgrade of `path` with.
    fn upgrade_status(&self, path: &str) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("status line");
        line.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
    }

    /// Stops the server and returns its stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        err
    }
}

#[test]
fn serve_with_the_jwt_secret_variable_admits_only_valid_tokens() {
    let secret = "serve-secret";
    let server = serve(&[("RIPPLE_AUTH_JWT_SECRET", secret)]);
    let token = mint(&["--secret", secret, "--room", "doc-*"], &[]);
    assert_eq!(server.upgrade_status("/parties/main/doc-1"), 401);
    assert_eq!(
        server.upgrade_status(&format!("/parties/main/diagram-1?token={token}")),
        403
    );
    assert_eq!(
        server.upgrade_status(&format!("/parties/main/doc-1?_pk=x&token={token}")),
        101
    );
    let stderr = server.stop();
    assert!(!stderr.contains(&token), "the token is never logged");
    assert!(!stderr.contains("AUTHENTICATION IS OFF"), "{stderr}");
}

#[test]
fn serve_without_auth_warns_that_every_client_is_admitted() {
    let server = serve(&[]);
    assert_eq!(server.upgrade_status("/parties/main/doc-1"), 101);
    let stderr = server.stop();
    assert!(
        stderr.contains("WARN") && stderr.contains("AUTHENTICATION IS OFF"),
        "{stderr}"
    );
}
