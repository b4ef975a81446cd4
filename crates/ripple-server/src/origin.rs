//! The `Origin` check for WebSocket upgrades (`allowed_origins`). Browsers send `Origin` on
//! every WebSocket handshake and let any page open a socket to any host, with the user's
//! cookies: a page on another site must not open one with the user's credentials. Non-browser
//! clients send no `Origin` and are not concerned; they are let through.
//!
//! Patterns: `https://app.example.com` (exact), `https://*.example.com` (any subdomain, not
//! the apex), a pattern without a scheme matches any scheme, one without a port matches the
//! scheme's default port only (an origin carries no port then), `null` matches the opaque
//! origin `null` (sandboxed frames, `file:` pages), `*` matches everything. Comparison ignores
//! ASCII case. An empty list allows every origin.

/// One parsed origin or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    scheme: Option<String>,
    host: String,
    port: Option<u16>,
}

/// Splits `[scheme://]host[:port]`; `None` if it is not of that form (a path, userinfo, an
/// empty host or a bad port).
fn split(s: &str) -> Option<Parts> {
    let s = s.trim().to_ascii_lowercase();
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_owned()), rest.to_owned()),
        None => (None, s),
    };
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
        return None;
    }
    // A port follows the last ':' unless that ':' is inside an IPv6 literal's brackets.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => {
            let port = rest[i + 1..].parse::<u16>().ok()?;
            (rest[..i].to_owned(), Some(port))
        }
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some(Parts { scheme, host, port })
}

/// The compiled `allowed_origins`.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    any: bool,
    null: bool,
    patterns: Vec<Parts>,
    /// Entries that could not be parsed (they match nothing; logged at start).
    pub(crate) invalid: Vec<String>,
}

impl OriginPolicy {
    pub(crate) fn new(entries: &[String]) -> Self {
        let mut policy = Self {
            any: entries.is_empty(),
            ..Self::default()
        };
        for entry in entries {
            match entry.trim() {
                "*" => policy.any = true,
                e if e.eq_ignore_ascii_case("null") => policy.null = true,
                e => match split(e) {
                    Some(parts) => policy.patterns.push(parts),
                    None => policy.invalid.push(entry.clone()),
                },
            }
        }
        policy
    }

    /// Whether a request with this `Origin` header (`None`: none sent) may upgrade.
    pub(crate) fn allows(&self, origin: Option<&[u8]>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        if origin.trim().eq_ignore_ascii_case("null") {
            return self.null;
        }
        let Some(o) = split(origin) else {
            return false;
        };
        if o.scheme.is_none() {
            // A browser's Origin always has a scheme; this is not one.
            return false;
        }
        self.patterns.iter().any(|p| {
            p.scheme
                .as_ref()
                .is_none_or(|s| Some(s) == o.scheme.as_ref())
                && p.port == o.port
                && match p.host.strip_prefix("*.") {
                    Some(suffix) => o
                        .host
                        .strip_suffix(suffix)
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                    None => p.host == o.host,
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn exact_wildcard_scheme_and_port_rules() {
        let p = policy(&[
            "https://app.example.com",
            "https://*.example.org",
            "*.example.net",
            "http://localhost:3000",
        ]);
        let cases = [
            (Some("https://app.example.com"), true),
            (Some("HTTPS://App.Example.com"), true),
            (Some("http://app.example.com"), false),
            (Some("https://app.example.com:8443"), false),
            (Some("https://evil.com"), false),
            (Some("https://app.example.com.evil.com"), false),
            (Some("https://a.example.org"), true),
            (Some("https://a.b.example.org"), true),
            (Some("https://example.org"), false),
            (Some("https://badexample.org"), false),
            (Some("http://x.example.net"), true),
            (Some("https://x.example.net"), true),
            (Some("http://localhost:3000"), true),
            (Some("http://localhost"), false),
            (Some("null"), false),
            (Some("app.example.com"), false),
            (None, true),
        ];
        for (origin, want) in cases {
            assert_eq!(p.allows(origin.map(str::as_bytes)), want, "{origin:?}");
        }
    }

    #[test]
    fn empty_star_null_and_invalid_entries() {
        assert!(policy(&[]).allows(Some(b"https://anything.example")));
        assert!(policy(&["*"]).allows(Some(b"https://anything.example")));
        let p = policy(&["null", "https://a.example/path"]);
        assert!(p.allows(Some(b"null")));
        assert_eq!(p.invalid, vec!["https://a.example/path".to_owned()]);
        assert!(!p.allows(Some(b"https://a.example")));
        assert!(!p.allows(Some(b"\xff")));
    }
}
