//! Token extraction from the three places a client can put it, and the subprotocol echo.

use ripple_auth::{extract_token, redact_query, subprotocol_to_echo};

#[test]
fn token_from_query_parameter() {
    assert_eq!(
        extract_token(Some("_pk=abc&token=a.b.c"), None, None).as_deref(),
        Some("a.b.c")
    );
    // Percent-decoded; empty values ignored.
    assert_eq!(
        extract_token(Some("token=x%2By%3D"), None, None).as_deref(),
        Some("x+y=")
    );
    assert_eq!(extract_token(Some("token=&other=1"), None, None), None);
    assert_eq!(extract_token(Some("tokens=1"), None, None), None);
    assert_eq!(extract_token(None, None, None), None);
}

#[test]
fn token_from_authorization_bearer_header() {
    assert_eq!(
        extract_token(None, Some("Bearer a.b.c"), None).as_deref(),
        Some("a.b.c")
    );
    assert_eq!(
        extract_token(None, Some("bearer   a.b.c "), None).as_deref(),
        Some("a.b.c")
    );
    assert_eq!(extract_token(None, Some("Basic dXNlcjpwdw=="), None), None);
    assert_eq!(extract_token(None, Some("Bearer "), None), None);
}

#[test]
fn token_from_sec_websocket_protocol_entry() {
    let offer = "ripple, ripple.token.eyJh.eyJz.sig";
    assert_eq!(
        extract_token(None, None, Some(offer)).as_deref(),
        Some("eyJh.eyJz.sig")
    );
    assert_eq!(extract_token(None, None, Some("ripple")), None);
    assert_eq!(extract_token(None, None, Some("ripple.token.")), None);
}

#[test]
fn header_wins_over_subprotocol_wins_over_query() {
    let q = Some("token=from-query");
    let p = Some("ripple, ripple.token.from-protocol");
    let h = Some("Bearer from-header");
    assert_eq!(extract_token(q, h, p).as_deref(), Some("from-header"));
    assert_eq!(extract_token(q, None, p).as_deref(), Some("from-protocol"));
    assert_eq!(extract_token(q, None, None).as_deref(), Some("from-query"));
}

#[test]
fn subprotocol_echo_prefers_marker_over_token_entry() {
    assert_eq!(
        subprotocol_to_echo(Some("ripple.token.abc, ripple")),
        Some("ripple")
    );
    assert_eq!(
        subprotocol_to_echo(Some("ripple.token.abc")),
        Some("ripple.token.abc")
    );
    assert_eq!(subprotocol_to_echo(Some("graphql-ws")), None);
    assert_eq!(subprotocol_to_echo(None), None);
}

#[test]
fn redacts_token_in_query_for_logs() {
    assert_eq!(
        redact_query("_pk=1&token=secret&x=2"),
        "_pk=1&token=[redacted]&x=2"
    );
    assert_eq!(redact_query("tok%65n=secret"), "tok%65n=[redacted]");
}
