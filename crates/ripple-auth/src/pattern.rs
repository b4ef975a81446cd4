//! Room patterns as they appear in token claims and config: `doc-*`, `diagram-42`, `main:doc-*`.
//!
//! Grammar: `[PARTY ':'] ROOM`, split at the *first* `:`. `*` matches any run of characters
//! (including none and including `:`); every other character matches itself. A pattern without
//! a party matches the room in every party. Because room ids may themselves contain `:`, a room
//! literally named `a:b` is written `*:a:b` (any party) or `main:a:b`.

use std::fmt;

/// One parsed room pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPattern {
    party: Option<String>,
    room: String,
}

impl RoomPattern {
    /// Parses a pattern; never fails (every string is a pattern, matching itself at least).
    pub fn parse(pattern: &str) -> Self {
        match pattern.split_once(':') {
            Some((party, room)) => Self {
                party: Some(party.to_owned()),
                room: room.to_owned(),
            },
            None => Self {
                party: None,
                room: pattern.to_owned(),
            },
        }
    }

    /// Whether this pattern admits `room` in `party`.
    pub fn matches(&self, party: &str, room: &str) -> bool {
        self.party.as_deref().is_none_or(|p| glob(p, party)) && glob(&self.room, room)
    }
}

impl fmt::Display for RoomPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.party {
            Some(p) => write!(f, "{p}:{}", self.room),
            None => f.write_str(&self.room),
        }
    }
}

/// `*`-only glob match over bytes. Greedy with single backtrack point: O(len(pattern) *
/// len(text)) in the worst case, linear in the usual one.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, party: &str, room: &str) -> bool {
        RoomPattern::parse(pattern).matches(party, room)
    }

    #[test]
    fn globs() {
        assert!(glob("doc-*", "doc-1"));
        assert!(glob("doc-*", "doc-"));
        assert!(!glob("doc-*", "doc"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("*-42", "diagram-42"));
        assert!(!glob("diagram-42", "diagram-421"));
        assert!(glob("**", "x"));
    }

    #[test]
    fn unqualified_patterns_match_every_party() {
        assert!(m("doc-*", "main", "doc-1"));
        assert!(m("doc-*", "other", "doc-1"));
        assert!(!m("doc-*", "main", "sheet-1"));
    }

    #[test]
    fn qualified_patterns_match_their_party_only() {
        assert!(m("main:doc-*", "main", "doc-1"));
        assert!(!m("main:doc-*", "other", "doc-1"));
        assert!(m("*:a:b", "x", "a:b"));
        assert!(!m("a:b", "main", "a:b"));
        assert_eq!(RoomPattern::parse("main:doc-*").to_string(), "main:doc-*");
    }
}
