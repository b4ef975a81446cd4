//! Root types as JSON, and JSON edits of root types: the one rule shared by `ripple export
//! --json` and the HTTP API (`GET`/`POST /api/v1/rooms/{party}/{room}/json`).
//!
//! A Yjs update does not say which kind (text, map, array, XML) a root type is: clients decide
//! when they call `getText`/`getMap`. So a kind comes from the caller ([`Kinds`], e.g.
//! `content:text,meta:map`) or, for a root nobody declared, from a guess: **map when the root
//! holds no sequence, else text** ([`GUESS_RULE`]).
//!
//! Edits ([`Op`]) run in one transaction and are checked before anything is changed (yrs has
//! no rollback): an op on a root of another kind, or an index past the end, refuses the whole
//! list. Text offsets and lengths count Unicode scalar values (Rust `char`s).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use yrs::types::ToJson;
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, Map, MapRef, Out, ReadTxn, Text, TextRef, Transact,
    TransactionMut, WriteTxn,
};

/// How an undeclared root's kind is guessed, in words (the API states it in its answers).
pub const GUESS_RULE: &str =
    "roots without a declared kind are read as a map when they hold no sequence, else as text";

/// The kind of a root type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `Y.Text`: read as its string.
    Text,
    /// `Y.Map`: read as an object.
    Map,
    /// `Y.Array`: read as an array.
    Array,
    /// `Y.XmlFragment`: read as its XML string.
    Xml,
}

impl Kind {
    /// The kind named `name` (`text`, `map`, `array`, `xml`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Kind::Text),
            "map" => Some(Kind::Map),
            "array" => Some(Kind::Array),
            "xml" => Some(Kind::Xml),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Map => "map",
            Kind::Array => "array",
            Kind::Xml => "xml",
        }
    }

    /// y-partykit's name of the type (`Text`, `Map`, `Array`, `XmlFragment`).
    pub fn yjs_name(self) -> &'static str {
        match self {
            Kind::Text => "Text",
            Kind::Map => "Map",
            Kind::Array => "Array",
            Kind::Xml => "XmlFragment",
        }
    }
}

/// Declared kinds of root types, by name.
pub type Kinds = BTreeMap<String, Kind>;

/// Parses `NAME:KIND` (or `NAME=KIND`) entries separated by commas, as in
/// `content:text,meta:map`. Empty entries are skipped.
pub fn parse_kinds(spec: &str) -> Result<Kinds, String> {
    let mut kinds = Kinds::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, kind) = entry
            .split_once([':', '='])
            .ok_or_else(|| format!("{entry:?}: want NAME:KIND"))?;
        let kind = Kind::parse(kind.trim()).ok_or_else(|| {
            format!("{entry:?}: unknown kind {kind:?} (use text, map, array or xml)")
        })?;
        kinds.insert(name.trim().to_owned(), kind);
    }
    Ok(kinds)
}

/// One root as read: its kind and whether that kind was guessed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RootKind {
    /// The kind it was read as.
    pub kind: Kind,
    /// True when nobody declared it ([`GUESS_RULE`]).
    pub guessed: bool,
}

/// Every root type of `doc` as JSON (an object by root name), with the kind each was read as.
/// Roots declared in `kinds` but absent from the document are left out.
///
/// Reading a root as a kind registers that kind in `doc`, so call it on a copy of a live room's
/// document (the HTTP API builds one from the room's state).
pub fn to_json(doc: &Doc, kinds: &Kinds) -> (Value, BTreeMap<String, RootKind>) {
    let names: Vec<(String, Option<Kind>, bool)> = {
        let txn = doc.transact();
        txn.root_refs()
            .map(|(name, value)| {
                let (typed, has_sequence) = match &value {
                    Out::UndefinedRef(branch) => (None, branch.len() > 0),
                    Out::YText(_) => (Some(Kind::Text), true),
                    Out::YMap(_) => (Some(Kind::Map), false),
                    Out::YArray(_) => (Some(Kind::Array), true),
                    Out::YXmlFragment(_) => (Some(Kind::Xml), true),
                    _ => (None, true),
                };
                (name.to_owned(), typed, has_sequence)
            })
            .collect()
    };
    let mut out = serde_json::Map::new();
    let mut read = BTreeMap::new();
    for (name, typed, has_sequence) in names {
        let guess = if has_sequence { Kind::Text } else { Kind::Map };
        let (kind, guessed) = match (kinds.get(&name), typed) {
            (Some(k), _) => (*k, false),
            (None, Some(k)) => (k, false),
            (None, None) => (guess, true),
        };
        let value = match kind {
            Kind::Text => Value::String(
                doc.get_or_insert_text(name.as_str())
                    .get_string(&doc.transact()),
            ),
            Kind::Xml => Value::String(
                doc.get_or_insert_xml_fragment(name.as_str())
                    .get_string(&doc.transact()),
            ),
            Kind::Map => any_to_json(
                &doc.get_or_insert_map(name.as_str())
                    .to_json(&doc.transact()),
            ),
            Kind::Array => any_to_json(
                &doc.get_or_insert_array(name.as_str())
                    .to_json(&doc.transact()),
            ),
        };
        out.insert(name.clone(), value);
        read.insert(name, RootKind { kind, guessed });
    }
    (Value::Object(out), read)
}

/// A yrs value as JSON. Values JSON cannot hold (binary, undefined) become `null`.
pub fn any_to_json(any: &Any) -> Value {
    match any {
        Any::Null | Any::Undefined | Any::Buffer(_) => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(yrs::Number::Int(i)) => Value::from(*i),
        Any::Number(yrs::Number::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, |n| {
                // Whole numbers read back as integers, as JSON.parse would print them.
                if f.fract() == 0.0 && f.abs() <= yrs::Number::F64_MAX_SAFE_INTEGER {
                    Value::from(*f as i64)
                } else {
                    Value::Number(n)
                }
            })
        }
        Any::String(s) => Value::String(s.to_string()),
        Any::Array(items) => Value::Array(items.iter().map(any_to_json).collect()),
        Any::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), any_to_json(v)))
                .collect(),
        ),
    }
}

/// A JSON value as a yrs value. Numbers become JavaScript numbers (safe integers as integers,
/// the rest as float64), as `JSON.parse` would make them.
pub fn json_to_any(value: &Value) -> Any {
    match value {
        Value::Null => Any::Null,
        Value::Bool(b) => Any::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i)
                if (yrs::Number::I64_MIN_SAFE_INTEGER..=yrs::Number::I64_MAX_SAFE_INTEGER)
                    .contains(&i) =>
            {
                Any::Number(yrs::Number::Int(i))
            }
            _ => Any::Number(yrs::Number::Float(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => Any::String(Arc::from(s.as_str())),
        Value::Array(items) => Any::Array(items.iter().map(json_to_any).collect()),
        Value::Object(entries) => Any::Map(Arc::new(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), json_to_any(v)))
                .collect(),
        )),
    }
}

/// One JSON edit of a root type.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Set these keys of a map.
    MapSet {
        /// The map.
        root: String,
        /// Key → value.
        entries: serde_json::Map<String, Value>,
    },
    /// Delete these keys of a map (absent keys are fine).
    MapDelete {
        /// The map.
        root: String,
        /// The keys.
        keys: Vec<String>,
    },
    /// Insert a string into a text at a character offset (`at` left out: at the end).
    TextInsert {
        /// The text.
        root: String,
        /// What to insert.
        text: String,
        /// Where (characters from the start).
        at: Option<u64>,
    },
    /// Delete `len` characters of a text from offset `at`.
    TextDelete {
        /// The text.
        root: String,
        /// How many characters.
        len: u64,
        /// From where.
        at: u64,
    },
    /// Append values to an array.
    ArrayPush {
        /// The array.
        root: String,
        /// What to append.
        values: Vec<Value>,
    },
    /// Insert values into an array at an index.
    ArrayInsert {
        /// The array.
        root: String,
        /// What to insert.
        values: Vec<Value>,
        /// Where.
        at: u64,
    },
    /// Delete `len` elements of an array from index `at`.
    ArrayDelete {
        /// The array.
        root: String,
        /// How many.
        len: u64,
        /// From where.
        at: u64,
    },
}

impl Op {
    fn root(&self) -> &str {
        match self {
            Op::MapSet { root, .. }
            | Op::MapDelete { root, .. }
            | Op::TextInsert { root, .. }
            | Op::TextDelete { root, .. }
            | Op::ArrayPush { root, .. }
            | Op::ArrayInsert { root, .. }
            | Op::ArrayDelete { root, .. } => root,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Op::MapSet { .. } | Op::MapDelete { .. } => Kind::Map,
            Op::TextInsert { .. } | Op::TextDelete { .. } => Kind::Text,
            Op::ArrayPush { .. } | Op::ArrayInsert { .. } | Op::ArrayDelete { .. } => Kind::Array,
        }
    }
}

/// Most ops in one request.
pub const MAX_OPS: usize = 1000;

/// Parses `{"ops": [...]}`. Each op names its root under its kind (`"map"`, `"text"`,
/// `"array"`) and has exactly one action:
/// - map: `"set": {KEY: VALUE, ...}` or `"delete": [KEY, ...]`;
/// - text: `"insert": STRING` (with `"at"`, default the end) or `"delete": COUNT` with `"at"`;
/// - array: `"push": [VALUE, ...]`, `"insert": [VALUE, ...]` with `"at"`, or `"delete": COUNT`
///   with `"at"`.
///
/// Anything else is refused with a message naming the op.
pub fn parse_ops(body: &Value) -> Result<Vec<Op>, String> {
    let ops = body
        .get("ops")
        .and_then(Value::as_array)
        .ok_or("the body must be {\"ops\": [...]}")?;
    if ops.len() > MAX_OPS {
        return Err(format!("at most {MAX_OPS} ops per request"));
    }
    if let Some(extra) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "ops"))
    {
        return Err(format!("unknown field {extra:?} next to \"ops\""));
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| parse_op(op).map_err(|e| format!("op {i}: {e}")))
        .collect()
}

fn parse_op(op: &Value) -> Result<Op, String> {
    let obj = op.as_object().ok_or("an op must be an object")?;
    let roots: Vec<(&str, &str)> = ["map", "text", "array"]
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| (*k, v)))
        .map(|(k, v)| {
            v.as_str()
                .map(|name| (k, name))
                .ok_or_else(|| format!("\"{k}\" must be the root's name"))
        })
        .collect::<Result<_, _>>()?;
    let [(kind, root)] = roots.as_slice() else {
        return Err("an op names exactly one root: \"map\", \"text\" or \"array\"".into());
    };
    let root = (*root).to_owned();
    if root.is_empty() {
        return Err("a root's name cannot be empty".into());
    }
    let actions: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| *k != *kind && *k != "at")
        .collect();
    let [action] = actions.as_slice() else {
        return Err(format!(
            "a {kind} op has exactly one action, got {}",
            if actions.is_empty() {
                "none".to_owned()
            } else {
                actions.join(", ")
            }
        ));
    };
    let value = &obj[*action];
    let at = match obj.get("at") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or("\"at\" must be a non-negative integer")?),
    };
    let need_at = || at.ok_or_else(|| format!("{kind} {action} needs \"at\""));
    let count = |v: &Value| {
        v.as_u64()
            .ok_or_else(|| format!("{kind} delete takes a count"))
    };
    let no_at = |op: Op| {
        if at.is_some() {
            Err(format!("{kind} {action} takes no \"at\""))
        } else {
            Ok(op)
        }
    };
    match (*kind, *action) {
        ("map", "set") => no_at(Op::MapSet {
            root,
            entries: value.as_object().ok_or("map set takes an object")?.clone(),
        }),
        ("map", "delete") => no_at(Op::MapDelete {
            root,
            keys: value
                .as_array()
                .ok_or("map delete takes an array of keys")?
                .iter()
                .map(|k| k.as_str().map(str::to_owned).ok_or("keys are strings"))
                .collect::<Result<_, _>>()?,
        }),
        ("text", "insert") => Ok(Op::TextInsert {
            root,
            text: value
                .as_str()
                .ok_or("text insert takes a string")?
                .to_owned(),
            at,
        }),
        ("text", "delete") => Ok(Op::TextDelete {
            root,
            len: count(value)?,
            at: need_at()?,
        }),
        ("array", "push") => no_at(Op::ArrayPush {
            root,
            values: value.as_array().ok_or("array push takes an array")?.clone(),
        }),
        ("array", "insert") => Ok(Op::ArrayInsert {
            root,
            values: value
                .as_array()
                .ok_or("array insert takes an array")?
                .clone(),
            at: need_at()?,
        }),
        ("array", "delete") => Ok(Op::ArrayDelete {
            root,
            len: count(value)?,
            at: need_at()?,
        }),
        (kind, action) => Err(format!("unknown op: {kind} {action:?}")),
    }
}

/// The kind a root has now, as far as the document tells: its type when one was registered,
/// else its shape (keyed entries: map; a sequence: text or array, undecided). `None`: absent
/// or empty, any kind fits.
fn shape<T: ReadTxn>(txn: &T, name: &str) -> Shape {
    match txn.get(name) {
        None => Shape::Empty,
        Some(Out::YText(_)) => Shape::Is(Kind::Text),
        Some(Out::YMap(_)) => Shape::Is(Kind::Map),
        Some(Out::YArray(_)) => Shape::Is(Kind::Array),
        Some(Out::YXmlFragment(_)) => Shape::Is(Kind::Xml),
        Some(Out::UndefinedRef(branch)) => {
            let map = MapRef::from(branch);
            if map.len(txn) > 0 {
                Shape::Is(Kind::Map)
            } else if branch.len() > 0 {
                Shape::Sequence
            } else {
                Shape::Empty
            }
        }
        Some(_) => Shape::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Empty,
    Is(Kind),
    /// Holds a sequence (text or array).
    Sequence,
    /// Some other type (XML element, sub-document ...): no op fits.
    Other,
}

/// Applies `ops` in `txn`, all or nothing: every op is checked first (kinds against `kinds`
/// and the document, offsets against the lengths the earlier ops leave), and only then is the
/// document changed.
pub fn apply_ops(txn: &mut TransactionMut<'_>, ops: &[Op], kinds: &Kinds) -> Result<(), String> {
    // Check: per root, the kind the ops use and the length they leave.
    let mut lens: BTreeMap<&str, (Kind, u64)> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let name = op.root();
        let want = op.kind();
        let entry = match lens.get_mut(name) {
            Some(e) => e,
            None => {
                let declared = kinds.get(name).copied();
                let found = shape(txn, name);
                let fits = match (declared, found) {
                    (Some(d), _) if d != want => false,
                    (_, Shape::Is(k)) => k == want,
                    (_, Shape::Sequence) => want != Kind::Map,
                    (_, Shape::Empty) => true,
                    (_, Shape::Other) => false,
                };
                if !fits {
                    let is = declared
                        .map(Kind::as_str)
                        .or(match found {
                            Shape::Is(k) => Some(k.as_str()),
                            Shape::Sequence => Some("a sequence (text or array)"),
                            _ => None,
                        })
                        .unwrap_or("another type");
                    return Err(format!("op {i}: {name:?} is {is}, not {}", want.as_str()));
                }
                let len = match want {
                    Kind::Text => match txn.get_text(name) {
                        Some(t) => t.get_string(txn).chars().count() as u64,
                        None => 0,
                    },
                    Kind::Array => txn.get_array(name).map_or(0, |a| a.len(txn) as u64),
                    _ => 0,
                };
                lens.entry(name).or_insert((want, len))
            }
        };
        if entry.0 != want {
            return Err(format!(
                "op {i}: {name:?} is used as {} by an earlier op, not {}",
                entry.0.as_str(),
                want.as_str()
            ));
        }
        let len = &mut entry.1;
        let check = |at: u64, n: u64, len: u64| {
            if at.checked_add(n).is_none_or(|end| end > len) {
                Err(format!(
                    "op {i}: {at}..{} is past the end of {name:?} (length {len})",
                    at.saturating_add(n)
                ))
            } else {
                Ok(())
            }
        };
        match op {
            Op::TextInsert { text, at, .. } => {
                check(at.unwrap_or(*len), 0, *len)?;
                *len += text.chars().count() as u64;
            }
            Op::TextDelete { len: n, at, .. } | Op::ArrayDelete { len: n, at, .. } => {
                check(*at, *n, *len)?;
                *len -= n;
            }
            Op::ArrayInsert { values, at, .. } => {
                check(*at, 0, *len)?;
                *len += values.len() as u64;
            }
            Op::ArrayPush { values, .. } => *len += values.len() as u64,
            Op::MapSet { .. } | Op::MapDelete { .. } => {}
        }
        if *len > u64::from(u32::MAX) {
            return Err(format!("op {i}: {name:?} would be too long"));
        }
    }
    // Apply: nothing below can fail.
    for op in ops {
        match op {
            Op::MapSet { root, entries } => {
                let map: MapRef = txn.get_or_insert_map(root.as_str());
                for (k, v) in entries {
                    map.insert(txn, k.as_str(), json_to_any(v));
                }
            }
            Op::MapDelete { root, keys } => {
                let map: MapRef = txn.get_or_insert_map(root.as_str());
                for k in keys {
                    map.remove(txn, k);
                }
            }
            Op::TextInsert { root, text, at } => {
                let t: TextRef = txn.get_or_insert_text(root.as_str());
                let current = t.get_string(txn);
                let at = at.map_or(current.len(), |at| byte_offset(&current, at));
                t.insert(txn, at as u32, text);
            }
            Op::TextDelete { root, len, at } => {
                let t: TextRef = txn.get_or_insert_text(root.as_str());
                let current = t.get_string(txn);
                let start = byte_offset(&current, *at);
                let end = byte_offset(&current, at + len);
                t.remove_range(txn, start as u32, (end - start) as u32);
            }
            Op::ArrayPush { root, values } => {
                let a: ArrayRef = txn.get_or_insert_array(root.as_str());
                for v in values {
                    a.push_back(txn, json_to_any(v));
                }
            }
            Op::ArrayInsert { root, values, at } => {
                let a: ArrayRef = txn.get_or_insert_array(root.as_str());
                for (i, v) in values.iter().enumerate() {
                    a.insert(txn, (*at as u32) + i as u32, json_to_any(v));
                }
            }
            Op::ArrayDelete { root, len, at } => {
                let a: ArrayRef = txn.get_or_insert_array(root.as_str());
                a.remove_range(txn, *at as u32, *len as u32);
            }
        }
    }
    Ok(())
}

/// The byte offset of character `chars` in `s` (its length when past the end).
fn byte_offset(s: &str, chars: u64) -> usize {
    s.char_indices()
        .nth(chars as usize)
        .map_or(s.len(), |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc_with(f: impl FnOnce(&mut TransactionMut<'_>)) -> Doc {
        let doc = Doc::new();
        f(&mut doc.transact_mut());
        doc
    }

    /// The document as a client that never declared types would send it: decoded fresh.
    fn untyped(doc: &Doc) -> Doc {
        use yrs::updates::decoder::Decode;
        let update = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let fresh = Doc::new();
        fresh
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&update).expect("decodes"))
            .expect("applies");
        fresh
    }

    #[test]
    fn undeclared_roots_follow_the_guess_and_declared_ones_their_kind() {
        let doc = untyped(&doc_with(|txn| {
            txn.get_or_insert_text("content").insert(txn, 0, "hi");
            txn.get_or_insert_map("meta").insert(txn, "title", "Q3");
            txn.get_or_insert_array("items").push_back(txn, 1.0);
        }));
        let mut kinds = Kinds::new();
        kinds.insert("items".into(), Kind::Array);
        let (value, read) = to_json(&doc, &kinds);
        assert_eq!(
            value,
            json!({"content": "hi", "meta": {"title": "Q3"}, "items": [1]})
        );
        assert_eq!(
            read["content"],
            RootKind {
                kind: Kind::Text,
                guessed: true
            }
        );
        assert_eq!(
            read["items"],
            RootKind {
                kind: Kind::Array,
                guessed: false
            }
        );
    }

    #[test]
    fn kinds_parse_from_query_syntax() {
        let k = parse_kinds("content:text, meta=map,,shapes:array,body:xml").expect("parses");
        assert_eq!(k.len(), 4);
        assert_eq!(k["body"], Kind::Xml);
        assert!(parse_kinds("content").is_err());
        assert!(parse_kinds("content:blob").is_err());
    }

    #[test]
    fn every_op_applies_in_one_transaction() {
        let doc = Doc::new();
        let ops = parse_ops(&json!({"ops": [
            {"map": "meta", "set": {"title": "Q3 plan", "draft": true, "n": 2}},
            {"map": "meta", "delete": ["draft"]},
            {"text": "content", "insert": "Hello world"},
            {"text": "content", "insert": "é ", "at": 0},
            {"text": "content", "delete": 6, "at": 2},
            {"array": "items", "push": [{"id": 1}, "x"]},
            {"array": "items", "insert": [0], "at": 0},
            {"array": "items", "delete": 1, "at": 2},
        ]}))
        .expect("parses");
        apply_ops(&mut doc.transact_mut(), &ops, &Kinds::new()).expect("applies");
        let (value, _) = to_json(&untyped(&doc), &parse_kinds("items:array").expect("ok"));
        assert_eq!(
            value,
            json!({"meta": {"title": "Q3 plan", "n": 2}, "content": "é world", "items": [0, {"id": 1}]})
        );
    }

    #[test]
    fn bad_ops_are_refused_and_nothing_changes() {
        let base = untyped(&doc_with(|txn| {
            txn.get_or_insert_text("content").insert(txn, 0, "abc");
            txn.get_or_insert_map("meta").insert(txn, "k", "v");
        }));
        let before = base
            .transact()
            .encode_state_as_update_v1(&Default::default());
        for (body, why) in [
            (
                json!({"ops": [{"text": "meta", "insert": "x"}]}),
                "map as text",
            ),
            (
                json!({"ops": [{"map": "content", "set": {"a": 1}}]}),
                "text as map",
            ),
            (
                json!({"ops": [{"map": "meta", "set": {"a": 1}}, {"text": "content", "delete": 9, "at": 0}]}),
                "past the end",
            ),
            (
                json!({"ops": [{"text": "content", "insert": "x", "at": 4}]}),
                "insert past the end",
            ),
        ] {
            let ops = parse_ops(&body).expect("parses");
            let result = apply_ops(&mut base.transact_mut(), &ops, &Kinds::new());
            assert!(result.is_err(), "{why}");
            let after = base
                .transact()
                .encode_state_as_update_v1(&Default::default());
            assert_eq!(before, after, "{why}: nothing changed");
        }
        // Declared kinds win over the document's shape.
        let ops = parse_ops(&json!({"ops": [{"array": "content", "push": [1]}]})).expect("ok");
        let kinds = parse_kinds("content:text").expect("ok");
        assert!(apply_ops(&mut base.transact_mut(), &ops, &kinds).is_err());
    }

    #[test]
    fn malformed_ops_are_named() {
        for body in [
            json!({}),
            json!({"ops": {}}),
            json!({"ops": [], "x": 1}),
            json!({"ops": [{"map": "m"}]}),
            json!({"ops": [{"map": "m", "set": {}, "delete": []}]}),
            json!({"ops": [{"map": "m", "text": "t", "set": {}}]}),
            json!({"ops": [{"map": "m", "frobnicate": 1}]}),
            json!({"ops": [{"text": "t", "delete": 1}]}),
            json!({"ops": [{"text": "t", "insert": 5}]}),
            json!({"ops": [{"array": "a", "push": [1], "at": 0}]}),
            json!({"ops": [{"xml": "a", "push": [1]}]}),
            json!({"ops": [{"text": "t", "insert": "x", "at": -1}]}),
        ] {
            assert!(parse_ops(&body).is_err(), "{body}");
        }
    }
}
