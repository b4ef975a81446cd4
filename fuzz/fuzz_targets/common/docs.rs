//! Editing sessions on yrs documents derived from fuzz input, shared by the targets that need
//! real updates (room_handle, update_bounds). Indices are clamped, strings are ASCII: the edits
//! themselves never panic, so a panic is in what the documents do with each other's updates.

use std::collections::HashMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use yrs::types::Attrs;
use yrs::{
    Any, Array, ArrayPrelim, Doc, In, Map, MapPrelim, Text, Transact, XmlElementPrelim,
    XmlFragment, XmlTextPrelim,
};

/// A JSON-like value for the documents.
#[derive(Arbitrary, Debug)]
pub enum Val {
    Null,
    Undefined,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Buf(Vec<u8>),
    List(Vec<u8>),
    Obj(Vec<(u8, i32)>),
}

impl Val {
    pub fn any(&self) -> Any {
        match self {
            Val::Null => Any::Null,
            Val::Undefined => Any::Undefined,
            Val::Bool(b) => Any::from(*b),
            Val::Int(i) => Any::from(*i),
            Val::Float(f) => Any::from(*f),
            Val::Str(s) => Any::from(s.clone()),
            Val::Buf(b) => Any::Buffer(Arc::from(b.as_slice())),
            Val::List(l) => Any::Array(l.iter().map(|b| Any::from(i64::from(*b))).collect()),
            Val::Obj(kv) => Any::Map(Arc::new(
                kv.iter()
                    .map(|(k, v)| (key(*k), Any::from(i64::from(*v))))
                    .collect::<HashMap<_, _>>(),
            )),
        }
    }
}

fn key(k: u8) -> String {
    format!("k{}", k % 8)
}

/// ASCII only: index arithmetic stays in characters whatever the offset kind.
pub fn ascii(s: &str) -> String {
    s.bytes().map(|b| char::from(b' ' + b % 95)).collect()
}

/// What goes into an array or map slot.
#[derive(Arbitrary, Debug)]
pub enum Slot {
    Value(Val),
    Text(String),
    Array(Vec<Val>),
    Map(Vec<(u8, Val)>),
}

impl Slot {
    pub fn input(&self) -> In {
        match self {
            Slot::Value(v) => In::Any(v.any()),
            Slot::Text(s) => In::from(yrs::types::text::TextPrelim::new(ascii(s))),
            Slot::Array(vs) => {
                In::Array(ArrayPrelim::from_iter(vs.iter().map(|v| In::Any(v.any()))))
            }
            Slot::Map(kv) => In::Map(MapPrelim::from_iter(
                kv.iter().map(|(k, v)| (key(*k), In::Any(v.any()))),
            )),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Edit {
    TextInsert {
        at: u16,
        s: String,
    },
    TextRemove {
        at: u16,
        len: u8,
    },
    TextFormat {
        at: u16,
        len: u8,
        bold: Option<bool>,
    },
    TextEmbed {
        at: u16,
        v: Val,
    },
    ArrayInsert {
        at: u16,
        slot: Slot,
    },
    ArrayRemove {
        at: u16,
        len: u8,
    },
    MapSet {
        k: u8,
        slot: Slot,
    },
    MapRemove {
        k: u8,
    },
    XmlInsert {
        at: u16,
        text: Option<String>,
    },
    XmlRemove {
        at: u16,
        len: u8,
    },
}

fn idx(at: u16, len: u32) -> u32 {
    u32::from(at) % (len + 1)
}

pub fn edit(doc: &Doc, e: &Edit) {
    let text = doc.get_or_insert_text("t");
    let array = doc.get_or_insert_array("a");
    let map = doc.get_or_insert_map("m");
    let xml = doc.get_or_insert_xml_fragment("x");
    let mut txn = doc.transact_mut();
    match e {
        Edit::TextInsert { at, s } => {
            let i = idx(*at, text.len(&txn));
            text.insert(&mut txn, i, &ascii(s));
        }
        Edit::TextRemove { at, len } => {
            let n = text.len(&txn);
            let i = idx(*at, n);
            let len = u32::from(*len).min(n - i);
            text.remove_range(&mut txn, i, len);
        }
        Edit::TextFormat { at, len, bold } => {
            let n = text.len(&txn);
            let i = idx(*at, n);
            let len = u32::from(*len).min(n - i);
            let mut attrs = Attrs::new();
            attrs.insert(Arc::from("bold"), bold.map_or(Any::Null, Any::from));
            text.format(&mut txn, i, len, attrs);
        }
        Edit::TextEmbed { at, v } => {
            let i = idx(*at, text.len(&txn));
            text.insert_embed(&mut txn, i, v.any());
        }
        Edit::ArrayInsert { at, slot } => {
            let i = idx(*at, array.len(&txn));
            array.insert(&mut txn, i, slot.input());
        }
        Edit::ArrayRemove { at, len } => {
            let n = array.len(&txn);
            let i = idx(*at, n);
            let len = u32::from(*len).min(n - i);
            array.remove_range(&mut txn, i, len);
        }
        Edit::MapSet { k, slot } => {
            map.insert(&mut txn, key(*k), slot.input());
        }
        Edit::MapRemove { k } => {
            map.remove(&mut txn, &key(*k));
        }
        Edit::XmlInsert { at, text } => {
            let i = idx(*at, xml.len(&txn));
            match text {
                Some(s) => {
                    xml.insert(&mut txn, i, XmlTextPrelim::new(ascii(s)));
                }
                None => {
                    xml.insert(&mut txn, i, XmlElementPrelim::empty("p"));
                }
            }
        }
        Edit::XmlRemove { at, len } => {
            let n = xml.len(&txn);
            let i = idx(*at, n);
            let len = u32::from(*len).min(n - i);
            xml.remove_range(&mut txn, i, len);
        }
    }
}
