//! Finding the client's token on the upgrade request, and what to echo back.
//!
//! A token may arrive in three places, looked at in this order (the first non-empty one wins):
//!
//! 1. `Authorization: Bearer <token>` (scheme case-insensitive) — for non-browser clients.
//! 2. `Sec-WebSocket-Protocol` — browsers cannot set headers on a WebSocket, but they can offer
//!    subprotocols. The convention is to offer two entries, the marker [`SUBPROTOCOL`] and the
//!    token prefixed with [`TOKEN_SUBPROTOCOL_PREFIX`]:
//!    `new WebSocket(url, ["ripple", "ripple.token." + jwt])` (y-websocket: the `protocols`
//!    option). JWTs (base64url and `.`) are valid subprotocol tokens; opaque tokens must use
//!    only RFC 7230 token characters.
//! 3. The `token` query parameter (PartyKit's `params: { token }`), percent-decoded.
//!
//! **The server must echo one offered subprotocol** or browsers fail the handshake: use
//! [`subprotocol_to_echo`]. It prefers the marker, so the token itself is not sent back.

/// The query parameter that carries a token.
pub const TOKEN_QUERY_PARAM: &str = "token";

/// The marker subprotocol a browser client offers next to its token entry; the server echoes it.
pub const SUBPROTOCOL: &str = "ripple";

/// Prefix of the subprotocol entry carrying the token: `ripple.token.<token>`.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "ripple.token.";

/// Finds the token: `Authorization: Bearer`, then the `Sec-WebSocket-Protocol` entry, then the
/// `token` query parameter. `query` is the raw query string without `?`;
/// `sec_websocket_protocol` is the header value (join repeated headers with `", "`).
pub fn extract_token(
    query: Option<&str>,
    authorization_header: Option<&str>,
    sec_websocket_protocol: Option<&str>,
) -> Option<String> {
    from_authorization(authorization_header)
        .or_else(|| from_subprotocols(sec_websocket_protocol))
        .or_else(|| from_query(query))
}

/// The subprotocol the server must select in its handshake answer, borrowed from the offer:
/// [`SUBPROTOCOL`] if offered, else the token entry if that was offered alone, else `None`
/// (then choose none of ours; other offered subprotocols are the server's business).
pub fn subprotocol_to_echo(sec_websocket_protocol: Option<&str>) -> Option<&str> {
    let offered = || subprotocol_entries(sec_websocket_protocol);
    offered()
        .find(|p| *p == SUBPROTOCOL)
        .or_else(|| offered().find(|p| token_from_entry(p).is_some()))
}

/// The query string with the value of every `token` parameter replaced by `[redacted]`, for
/// access logs.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if decoded_key_is_token(k) => format!("{k}=[redacted]"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn decoded_key_is_token(raw_key: &str) -> bool {
    form_urlencoded::parse(raw_key.as_bytes())
        .next()
        .is_some_and(|(k, _)| k == TOKEN_QUERY_PARAM)
}

fn from_authorization(header: Option<&str>) -> Option<String> {
    let (scheme, rest) = header?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    non_empty(rest.trim())
}

fn subprotocol_entries(header: Option<&str>) -> impl Iterator<Item = &str> {
    header
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

fn token_from_entry(entry: &str) -> Option<&str> {
    entry
        .strip_prefix(TOKEN_SUBPROTOCOL_PREFIX)
        .filter(|t| !t.is_empty())
}

fn from_subprotocols(header: Option<&str>) -> Option<String> {
    subprotocol_entries(header)
        .find_map(token_from_entry)
        .map(str::to_owned)
}

fn from_query(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == TOKEN_QUERY_PARAM && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}
