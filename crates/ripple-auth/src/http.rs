//! Outgoing HTTP shared by the JWKS fetcher and the webhook: one client setup (rustls, explicit
//! timeouts) and bounded body reads.

use std::time::Duration;

use crate::ConfigError;

/// A client with a whole-request `timeout`; redirects followed only when asked (never for the
/// signed webhook POST, which a redirect would turn into a GET).
pub(crate) fn client(
    timeout: Duration,
    follow_redirects: bool,
) -> Result<reqwest::Client, ConfigError> {
    let redirect = if follow_redirects {
        reqwest::redirect::Policy::limited(3)
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(redirect)
        .user_agent(concat!("ripple-auth/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::Http(e.to_string()))
}

/// Reads the body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("body larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
