//! Room identity: which party and room a connection addresses, and the policy that keeps a
//! room id from reaching anything but its own data.
//!
//! PartyKit uses the raw (not percent-decoded) path segment as the room id; so do we. A room id
//! is 1..=`max_len` bytes of URL path-segment characters (unreserved, sub-delims, `:`, `@`, and
//! `%` escapes as they appear on the wire). `.` and `..` are refused, as is anything with `/`,
//! `\`, whitespace, control characters or non-ASCII bytes. Storage keys are always passed as
//! bound parameters, never spliced into paths or SQL.

use std::fmt;

/// The default party name, used for plain y-websocket paths (`/ROOM`).
pub const DEFAULT_PARTY: &str = "main";

/// Default maximum room-id length in bytes.
pub const DEFAULT_MAX_ROOM_ID_LEN: usize = 256;

/// A validated (party, room) pair: the key of a room everywhere in Ripple.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    party: String,
    room: String,
}

/// Why a party or room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomIdError {
    /// Empty name.
    #[error("{0} name is empty")]
    Empty(&'static str),
    /// Longer than the configured limit.
    #[error("{what} name is {len} bytes, the limit is {max}")]
    TooLong {
        /// "party" or "room".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `.` or `..`.
    #[error("{0} name may not be '.' or '..'")]
    DotSegment(&'static str),
    /// A character outside the allowed set.
    #[error("{what} name contains a forbidden character {ch:?}")]
    BadChar {
        /// "party" or "room".
        what: &'static str,
        /// The offending character.
        ch: char,
    },
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.'
                | '_'
                | '~'
                | '!'
                | '$'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | ';'
                | '='
                | ':'
                | '@'
                | '%'
        )
}

fn validate(what: &'static str, name: &str, max_len: usize) -> Result<(), RoomIdError> {
    if name.is_empty() {
        return Err(RoomIdError::Empty(what));
    }
    if name.len() > max_len {
        return Err(RoomIdError::TooLong {
            what,
            len: name.len(),
            max: max_len,
        });
    }
    if name == "." || name == ".." {
        return Err(RoomIdError::DotSegment(what));
    }
    if let Some(ch) = name.chars().find(|c| !allowed(*c)) {
        return Err(RoomIdError::BadChar { what, ch });
    }
    Ok(())
}

impl RoomKey {
    /// Validates `party` and `room` (each at most `max_len` bytes).
    pub fn new(party: &str, room: &str, max_len: usize) -> Result<Self, RoomIdError> {
        validate("party", party, max_len)?;
        validate("room", room, max_len)?;
        Ok(Self {
            party: party.to_owned(),
            room: room.to_owned(),
        })
    }

    /// The party (PartyKit's `parties/PARTY/...`; `main` for plain y-websocket paths).
    pub fn party(&self) -> &str {
        &self.party
    }

    /// The room id, the raw path segment.
    pub fn room(&self) -> &str {
        &self.room
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.party, self.room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for room in ["doc-42", "diagram-7f3a", "a.b_c~d", "caf%C3%A9", "x:y@z"] {
            assert!(RoomKey::new("main", room, 256).is_ok(), "{room}");
        }
    }

    #[test]
    fn refuses_hostile_ids() {
        let cases = [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "a b",
            "nul\0byte",
            "new\nline",
            "é",
            "a?b",
            "a#b",
        ];
        for room in cases {
            assert!(
                RoomKey::new("main", room, 256).is_err(),
                "{room:?} accepted"
            );
        }
    }

    #[test]
    fn enforces_length_limit() {
        assert!(RoomKey::new("main", &"a".repeat(64), 64).is_ok());
        assert_eq!(
            RoomKey::new("main", &"a".repeat(65), 64),
            Err(RoomIdError::TooLong {
                what: "room",
                len: 65,
                max: 64
            })
        );
    }

    #[test]
    fn party_is_validated_too() {
        assert!(RoomKey::new("..", "doc", 256).is_err());
    }
}
