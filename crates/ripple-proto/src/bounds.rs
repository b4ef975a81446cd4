//! Decode bounds for Yjs v1 payloads: a walk over a state vector or an update that checks every
//! declared count against the bytes that remain, **before** yrs decodes the payload.
//!
//! Why this exists: yrs 0.28.1 reserves capacity from counts the sender declares (the clients of
//! a state vector or update, the blocks of a client, the entries of an `Any` array or map, the
//! strings of a JSON item). Under Linux overcommit the reservation succeeds and the hash map then
//! touches its control bytes, so a 9-byte state vector claiming 400 million clients costs about
//! 440 ms of CPU and 530 MB of memory before decoding fails. yrs also decodes nested `Any` values
//! recursively with no depth limit, so a few kilobytes of `[117, 1, 117, 1, ...]` would overflow
//! the stack and abort the whole process. The checks here are Ripple's own, pure and fuzzed, so
//! they do not depend on an upstream release.
//!
//! The walk reads exactly what yrs' `DecoderV1` reads, field by field (including yrs' quirks, noted
//! where they matter), so that the counts it checks are the counts yrs will act on. It validates
//! structure, not meaning: strings are not checked for UTF-8, JSON is not parsed, ids are not
//! checked against the document. What passes may still be refused by yrs; what yrs would act on
//! passes only if every declared count fits in the bytes that follow it. Cost: one pass over the
//! payload, no allocation.

/// Client ids are at most 53 bits (JavaScript's safe integers; Yjs makes 32-bit ids, yrs
/// 53-bit ones). yrs debug-asserts it on ids it decodes, so larger ones are refused here.
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Deepest nesting of `Any` values accepted (arrays and maps inside arrays and maps). serde_json,
/// which yrs uses for JSON content, stops at 128 too; real documents stay far below it.
pub const MAX_ANY_DEPTH: usize = 128;

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// The payload ends in the middle of a value.
    #[error("{what} ends in the middle of a value (offset {at})")]
    Truncated {
        /// Which payload.
        what: &'static str,
        /// Byte offset where more input was needed.
        at: usize,
    },
    /// A declared count cannot fit in the bytes that follow it.
    #[error("{what} declares {count} {item} but only {remaining} bytes follow (offset {at})")]
    CountTooLarge {
        /// Which payload.
        what: &'static str,
        /// What is counted.
        item: &'static str,
        /// The declared count.
        count: u64,
        /// Bytes left after the count.
        remaining: usize,
        /// Byte offset of the count.
        at: usize,
    },
    /// `Any` values nested deeper than [`MAX_ANY_DEPTH`].
    #[error("{what} nests values deeper than {MAX_ANY_DEPTH} levels (offset {at})")]
    TooDeep {
        /// Which payload.
        what: &'static str,
        /// Byte offset of the value that went too deep.
        at: usize,
    },
    /// A structurally impossible value: an unknown tag, an overlong varint, an empty block, a
    /// range whose end overflows.
    #[error("{what} is malformed at offset {at}: {detail}")]
    Malformed {
        /// Which payload.
        what: &'static str,
        /// Byte offset.
        at: usize,
        /// What was wrong.
        detail: &'static str,
    },
}

/// Checks a v1 state vector (the payload of sync step 1) before it is decoded.
pub fn check_state_vector(payload: &[u8]) -> Result<(), BoundsError> {
    let mut w = Walk::new(payload, "state vector");
    // yrs: `read_var::<u32>() as usize`, then per entry a u64 client and a u32 clock.
    let count = w.count_u32("entries", 2)?;
    for _ in 0..count {
        w.client()?;
        w.var_u32()?;
    }
    Ok(())
}

/// Checks a v1 update (sync step 2, a sync update, a stored update or snapshot) before it is
/// decoded.
pub fn check_update(payload: &[u8]) -> Result<(), BoundsError> {
    let mut w = Walk::new(payload, "update");
    // Per client: blocks count, client id, first clock (at least a byte each).
    let clients = w.count_u32("clients", 3)?;
    for _ in 0..clients {
        // Every block takes at least two bytes (its info byte and one more).
        let blocks = w.count_u32("blocks", 2)?;
        w.client()?;
        // yrs adds each block's length to this clock with plain u32 arithmetic (debug builds
        // panic, release builds wrap and panic later while integrating): it must not overflow.
        let mut clock = u64::from(w.var_u32()?);
        for _ in 0..blocks {
            let at = w.pos;
            clock += w.block()?;
            if clock > u64::from(u32::MAX) {
                return Err(w.malformed(at, "block clocks run past the largest clock"));
            }
        }
    }
    // The delete set: per client an id and a range count; per range a clock and a length.
    let clients = w.count_u32("delete-set clients", 2)?;
    for _ in 0..clients {
        w.client()?;
        let ranges = w.count_u32("deleted ranges", 2)?;
        for _ in 0..ranges {
            let at = w.pos;
            let clock = w.var_u32()?;
            let len = w.var_u32()?;
            // yrs builds `clock..clock + len` with plain u32 addition: it would overflow.
            if clock.checked_add(len).is_none() {
                return Err(w.malformed(at, "deleted range ends past the largest clock"));
            }
        }
    }
    // yrs ignores what follows the delete set; so do we.
    Ok(())
}

// Block and content tags, as yrs (and Yjs) number them.
const BLOCK_GC: u8 = 0;
const BLOCK_SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
const CONTENT_DELETED: u8 = 1;
const CONTENT_JSON: u8 = 2;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_EMBED: u8 = 5;
const CONTENT_FORMAT: u8 = 6;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
const CONTENT_DOC: u8 = 9;
const TYPE_XML_ELEMENT: u8 = 3;

/// A cursor that knows which payload it walks, for error messages.
struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Walk<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self) -> BoundsError {
        BoundsError::Truncated {
            what: self.what,
            at: self.pos,
        }
    }

    fn malformed(&self, at: usize, detail: &'static str) -> BoundsError {
        BoundsError::Malformed {
            what: self.what,
            at,
            detail,
        }
    }

    fn u8(&mut self) -> Result<u8, BoundsError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), BoundsError> {
        if n > self.remaining() {
            return Err(self.truncated());
        }
        self.pos += n;
        Ok(())
    }

    /// A lib0 varint as yrs reads it into a `u32`: each 7-bit group is shifted with
    /// `wrapping_shl` (so the shift wraps at 32), and more than ten continuation bytes are an
    /// error. Mirroring the wrap matters: the count yrs reserves is the wrapped value.
    fn var_u32(&mut self) -> Result<u32, BoundsError> {
        let start = self.pos;
        let mut num: u32 = 0;
        let mut shift: u32 = 0;
        loop {
            let b = self.u8()?;
            num |= u32::from(b & 0x7f).wrapping_shl(shift);
            shift += 7;
            if b < 0x80 {
                return Ok(num);
            }
            if shift > 70 {
                return Err(self.malformed(start, "variable-length integer is too long"));
            }
        }
    }

    /// A lib0 varint as yrs reads it into a `u64` (same rules as [`Self::var_u32`]).
    fn var_u64(&mut self) -> Result<u64, BoundsError> {
        let start = self.pos;
        let mut num: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let b = self.u8()?;
            num |= u64::from(b & 0x7f).wrapping_shl(shift);
            shift += 7;
            if b < 0x80 {
                return Ok(num);
            }
            if shift > 70 {
                return Err(self.malformed(start, "variable-length integer is too long"));
            }
        }
    }

    /// A lib0 signed varint (yrs `read_var_i64`): only its length matters here.
    fn var_i64(&mut self) -> Result<(), BoundsError> {
        let start = self.pos;
        let first = self.u8()?;
        if first & 0x80 == 0 {
            return Ok(());
        }
        let mut shift = 6;
        loop {
            let b = self.u8()?;
            shift += 7;
            if b < 0x80 {
                return Ok(());
            }
            if shift > 70 {
                return Err(self.malformed(start, "variable-length integer is too long"));
            }
        }
    }

    /// Checks a declared count: `count` items of at least `min_size` bytes each must fit in
    /// what remains.
    fn check_count(
        &self,
        at: usize,
        item: &'static str,
        count: u64,
        min_size: usize,
    ) -> Result<u64, BoundsError> {
        let remaining = self.remaining();
        if count > (remaining / min_size) as u64 {
            return Err(BoundsError::CountTooLarge {
                what: self.what,
                item,
                count,
                remaining,
                at,
            });
        }
        Ok(count)
    }

    /// A count read as yrs reads a `u32` count.
    fn count_u32(&mut self, item: &'static str, min_size: usize) -> Result<u64, BoundsError> {
        let at = self.pos;
        let count = self.var_u32()?;
        self.check_count(at, item, u64::from(count), min_size)
    }

    /// A length-prefixed byte string (yrs `read_buf` / `read_string`: a u32 length).
    fn bytes(&mut self) -> Result<(), BoundsError> {
        let len = self.var_u32()?;
        self.skip(len as usize)
    }

    /// A client id (at most [`MAX_CLIENT_ID`]).
    fn client(&mut self) -> Result<u64, BoundsError> {
        let at = self.pos;
        let id = self.var_u64()?;
        if id > MAX_CLIENT_ID {
            return Err(self.malformed(at, "client id is wider than 53 bits"));
        }
        Ok(id)
    }

    /// An id: a client and a u32 clock.
    fn id(&mut self) -> Result<(), BoundsError> {
        self.client()?;
        self.var_u32()?;
        Ok(())
    }

    /// One block of an update (yrs `Update::decode_block`); returns its length in clock
    /// units, as yrs counts it.
    fn block(&mut self) -> Result<u64, BoundsError> {
        let at = self.pos;
        let info = self.u8()?;
        match info {
            BLOCK_SKIP | BLOCK_GC => {
                let len = self.var_u32()?;
                if len == 0 {
                    return Err(self.malformed(at, "empty block"));
                }
                Ok(u64::from(len))
            }
            _ => {
                let cant_copy_parent_info = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
                if info & HAS_ORIGIN != 0 {
                    self.id()?;
                }
                if info & HAS_RIGHT_ORIGIN != 0 {
                    self.id()?;
                }
                if cant_copy_parent_info {
                    // Parent: 1 = a root type's name, otherwise the id of the parent item.
                    if self.var_u32()? == 1 {
                        self.bytes()?;
                    } else {
                        self.id()?;
                    }
                    if info & HAS_PARENT_SUB != 0 {
                        self.bytes()?;
                    }
                }
                self.content(at, info & 0b1111)
            }
        }
    }

    /// An item's content (yrs `ItemContent::decode`); returns its length in clock units.
    fn content(&mut self, at: usize, kind: u8) -> Result<u64, BoundsError> {
        match kind {
            CONTENT_DELETED => self.var_u32().map(u64::from),
            CONTENT_JSON => {
                let count_at = self.pos;
                let count = self.var_u32()?;
                // yrs reads one string more than the count (`while remaining >= 0`), and
                // reserves `count as i32 as usize`; both are bounded by checking count + 1.
                let strings =
                    self.check_count(count_at, "JSON strings", u64::from(count) + 1, 1)?;
                for _ in 0..strings {
                    self.bytes()?;
                }
                Ok(strings)
            }
            CONTENT_STRING => {
                // A string's length is counted in UTF-16 units, as Yjs does.
                let len = self.var_u32()? as usize;
                if len > self.remaining() {
                    return Err(self.truncated());
                }
                let raw = &self.buf[self.pos..self.pos + len];
                let text = std::str::from_utf8(raw)
                    .map_err(|_| self.malformed(self.pos, "string is not UTF-8"))?;
                self.pos += len;
                Ok(text.chars().map(|c| c.len_utf16() as u64).sum())
            }
            CONTENT_BINARY | CONTENT_EMBED => self.bytes().map(|()| 1),
            CONTENT_FORMAT => {
                self.bytes()?; // key
                self.bytes().map(|()| 1) // JSON value
            }
            CONTENT_TYPE => {
                // yrs reads the type ref as one byte; only an XML element carries a name.
                if self.u8()? == TYPE_XML_ELEMENT {
                    self.bytes()?;
                }
                Ok(1)
            }
            CONTENT_ANY => {
                let count = self.count_u32("values", 1)?;
                for _ in 0..count {
                    self.any(0)?;
                }
                Ok(count)
            }
            CONTENT_DOC => {
                self.bytes()?; // guid
                self.any(0).map(|()| 1) // options
            }
            _ => Err(self.malformed(at, "unknown content type")),
        }
    }

    /// One `Any` value (yrs `Any::decode`), at nesting depth `depth`.
    fn any(&mut self, depth: usize) -> Result<(), BoundsError> {
        let at = self.pos;
        if depth >= MAX_ANY_DEPTH {
            return Err(BoundsError::TooDeep {
                what: self.what,
                at,
            });
        }
        match self.u8()? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => Ok(()),
            125 => self.var_i64(),
            124 => self.skip(4),
            123 | 122 => self.skip(8),
            119 | 116 => self.bytes(),
            118 => {
                // Map: a usize count (read as u64), then key and value per entry.
                let count_at = self.pos;
                let count = self.var_u64()?;
                let count = self.check_count(count_at, "map entries", count, 2)?;
                for _ in 0..count {
                    self.bytes()?;
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            117 => {
                let count_at = self.pos;
                let count = self.var_u64()?;
                let count = self.check_count(count_at, "array values", count, 1)?;
                for _ in 0..count {
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            _ => Err(self.malformed(at, "unknown value type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }

    const HUGE: [u64; 4] = [100_000_000, 400_000_000, u32::MAX as u64, u64::MAX];

    #[test]
    fn empty_payloads_pass() {
        assert_eq!(check_state_vector(&[0]), Ok(()));
        assert_eq!(check_update(&[0, 0]), Ok(()));
    }

    #[test]
    fn state_vector_counts_are_checked_against_the_bytes() {
        for n in HUGE {
            let mut sv = varint(n);
            sv.extend([1, 1]);
            let err = check_state_vector(&sv).expect_err("refused");
            assert!(
                matches!(err, BoundsError::CountTooLarge { .. }),
                "{n}: {err}"
            );
        }
        // Two real entries pass; a third declared one does not.
        assert_eq!(check_state_vector(&[2, 1, 5, 2, 7]), Ok(()));
        assert!(check_state_vector(&[3, 1, 5, 2, 7]).is_err());
    }

    #[test]
    fn update_counts_are_checked_at_every_level() {
        for n in HUGE {
            let n = varint(n);
            // Clients.
            let mut u = n.clone();
            u.extend([0, 1, 0, 0]);
            assert!(check_update(&u).is_err());
            // Blocks of one client.
            let mut u = vec![1];
            u.extend(&n);
            u.extend([1, 0, 0]);
            assert!(check_update(&u).is_err());
            // Delete-set clients and ranges.
            let mut u = vec![0];
            u.extend(&n);
            u.extend([1, 1]);
            assert!(check_update(&u).is_err());
            let mut u = vec![0, 1, 7];
            u.extend(&n);
            u.extend([1, 1]);
            assert!(check_update(&u).is_err());
            // Any array and map lengths inside an item: one client, one block with no origin,
            // parent = root "a", content Any with one value: array of n.
            for tag in [117u8, 118] {
                let mut u = vec![1, 1, 9, 0, CONTENT_ANY, 1, 1, b'a', 1, tag];
                u.extend(&n);
                u.extend([126, 0]);
                let err = check_update(&u).expect_err("refused");
                assert!(
                    matches!(err, BoundsError::CountTooLarge { .. }),
                    "{tag}: {err}"
                );
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut u = vec![1, 1, 9, 0, CONTENT_ANY, 1, 1, b'a', 1];
        for _ in 0..10_000 {
            u.extend([117, 1]);
        }
        u.extend([126, 0]);
        assert!(matches!(check_update(&u), Err(BoundsError::TooDeep { .. })));
    }

    #[test]
    fn overflowing_delete_range_is_refused() {
        let mut u = vec![0, 1, 7, 1];
        u.extend(varint(u32::MAX as u64));
        u.extend([2]);
        assert!(matches!(
            check_update(&u),
            Err(BoundsError::Malformed { .. })
        ));
    }

    #[test]
    fn client_ids_past_53_bits_and_wrapping_clocks_are_refused() {
        // A state vector entry for client 2^53.
        let mut sv = vec![1];
        sv.extend(varint(1 << 53));
        sv.push(0);
        assert!(matches!(
            check_state_vector(&sv),
            Err(BoundsError::Malformed { .. })
        ));
        assert_eq!(check_state_vector(&[1, 0x7f, 0]), Ok(()));
        // Client 3, two string items starting at clock 2^32 - 2: "ABCD" runs past u32::MAX.
        let mut u = vec![1, 2, 3];
        u.extend(varint(u32::MAX as u64 - 1));
        u.extend([
            4, 1, 1, b't', 4, b'A', b'B', b'C', b'D', 4, 1, 1, b't', 1, b'E', 0,
        ]);
        assert!(matches!(
            check_update(&u),
            Err(BoundsError::Malformed { .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz target covers this properly.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = check_update(&bytes);
            let _ = check_state_vector(&bytes);
        }
    }
}
