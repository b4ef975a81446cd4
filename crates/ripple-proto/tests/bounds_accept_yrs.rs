//! The decode bounds must never refuse what a real encoder writes: random editing sessions over
//! every shared type and content kind, on two replicas that exchange updates, produce updates,
//! diffs, full states, merged updates and state vectors, and every one of them must pass.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use ripple_proto::bounds::{check_state_vector, check_update};
use yrs::types::text::Text;
use yrs::types::xml::{Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Any, Array, ArrayPrelim, Doc, Map, MapPrelim, ReadTxn, StateVector, Transact, Update};

#[derive(Debug, Clone)]
enum Op {
    TextInsert(u32, String),
    TextDelete(u32, u32),
    TextFormat(u32, u32, String, Value),
    TextEmbed(u32, Value),
    MapSet(String, Value),
    MapNested(String),
    ArrayPush(Value),
    ArrayInsertNested(u32),
    ArrayDelete(u32, u32),
    XmlElement(String),
    XmlText(String),
    SubDoc(String),
    Sync,
}

/// An `Any` value, nested a few levels.
#[derive(Debug, Clone)]
enum Value {
    Null,
    Undefined,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Buf(Vec<u8>),
    List(Vec<Value>),
    Obj(Vec<(String, Value)>),
}

impl Value {
    fn any(&self) -> Any {
        match self {
            Value::Null => Any::Null,
            Value::Undefined => Any::Undefined,
            Value::Bool(b) => Any::from(*b),
            Value::Int(i) => Any::from(*i),
            Value::Float(f) => Any::from(*f),
            Value::Str(s) => Any::from(s.as_str()),
            Value::Buf(b) => Any::from(b.clone()),
            Value::List(v) => Any::Array(v.iter().map(Value::any).collect::<Vec<_>>().into()),
            Value::Obj(v) => Any::Map(Arc::new(
                v.iter()
                    .map(|(k, v)| (k.clone(), v.any()))
                    .collect::<HashMap<_, _>>(),
            )),
        }
    }
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        Just(Value::Undefined),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float),
        "\\PC{0,12}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Buf),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            proptest::collection::vec(("[a-z]{1,4}", inner), 0..6).prop_map(Value::Obj),
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..40, "[a-zA-Z0-9 ]{1,20}").prop_map(|(i, s)| Op::TextInsert(i, s)),
        (0u32..40, 1u32..8).prop_map(|(i, n)| Op::TextDelete(i, n)),
        (0u32..40, 1u32..8, "[a-z]{1,5}", value())
            .prop_map(|(i, n, k, v)| Op::TextFormat(i, n, k, v)),
        (0u32..40, value()).prop_map(|(i, v)| Op::TextEmbed(i, v)),
        ("[a-z]{1,3}", value()).prop_map(|(k, v)| Op::MapSet(k, v)),
        "[a-z]{1,3}".prop_map(Op::MapNested),
        value().prop_map(Op::ArrayPush),
        (0u32..20).prop_map(Op::ArrayInsertNested),
        (0u32..20, 1u32..4).prop_map(|(i, n)| Op::ArrayDelete(i, n)),
        "[a-z]{1,6}".prop_map(Op::XmlElement),
        "\\PC{0,10}".prop_map(Op::XmlText),
        "[a-z]{1,3}".prop_map(Op::SubDoc),
        Just(Op::Sync),
    ]
}

fn apply(doc: &Doc, op: &Op) {
    let text = doc.get_or_insert_text("text");
    let map = doc.get_or_insert_map("map");
    let array = doc.get_or_insert_array("array");
    let xml = doc.get_or_insert_xml_fragment("xml");
    let mut txn = doc.transact_mut();
    let text_len = text.len(&txn);
    let array_len = array.len(&txn);
    match op {
        Op::TextInsert(i, s) => text.insert(&mut txn, (*i).min(text_len), s),
        Op::TextDelete(i, n) => {
            if text_len > 0 {
                let i = (*i).min(text_len - 1);
                text.remove_range(&mut txn, i, (*n).min(text_len - i));
            }
        }
        Op::TextFormat(i, n, k, v) => {
            if text_len > 0 {
                let i = (*i).min(text_len - 1);
                let attrs = HashMap::from([(Arc::<str>::from(k.as_str()), v.any())]);
                text.format(&mut txn, i, (*n).min(text_len - i), attrs);
            }
        }
        Op::TextEmbed(i, v) => {
            text.insert_embed(&mut txn, (*i).min(text_len), v.any());
        }
        Op::MapSet(k, v) => {
            map.insert(&mut txn, k.as_str(), v.any());
        }
        Op::MapNested(k) => {
            let inner = map.insert(&mut txn, k.as_str(), MapPrelim::default());
            inner.insert(&mut txn, "x", Any::from(1i64));
        }
        Op::ArrayPush(v) => {
            array.push_back(&mut txn, v.any());
        }
        Op::ArrayInsertNested(i) => {
            let inner = array.insert(&mut txn, (*i).min(array_len), ArrayPrelim::default());
            inner.push_back(&mut txn, Any::from("nested"));
        }
        Op::ArrayDelete(i, n) => {
            if array_len > 0 {
                let i = (*i).min(array_len - 1);
                array.remove_range(&mut txn, i, (*n).min(array_len - i));
            }
        }
        Op::XmlElement(tag) => {
            let el = xml.push_back(&mut txn, XmlElementPrelim::empty(tag.as_str()));
            el.insert_attribute(&mut txn, "class", "c");
            el.push_back(&mut txn, XmlTextPrelim::new("inside"));
        }
        Op::XmlText(s) => {
            xml.push_back(&mut txn, XmlTextPrelim::new(s.as_str()));
        }
        Op::SubDoc(k) => {
            map.insert(&mut txn, k.as_str(), Doc::new());
        }
        Op::Sync => {}
    }
}

fn assert_passes(update: &[u8], what: &str) {
    if let Err(e) = check_update(update) {
        panic!("{what} refused: {e} ({} bytes)", update.len());
    }
    // And yrs agrees it is an update.
    Update::decode_v1(update).expect("yrs decodes it");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn bounds_accept_everything_yrs_encodes(ops in proptest::collection::vec((any::<bool>(), op()), 1..40)) {
        let a = Doc::with_client_id(1);
        let b = Doc::with_client_id(u32::MAX as u64 + 7);
        let mut updates = Vec::new();
        for (on_a, op) in &ops {
            let (doc, other) = if *on_a { (&a, &b) } else { (&b, &a) };
            let before = doc.transact().state_vector();
            apply(doc, op);
            let diff = doc.transact().encode_state_as_update_v1(&before);
            assert_passes(&diff, "incremental update");
            updates.push(diff);
            if matches!(op, Op::Sync) {
                // Exchange: each side sends what the other lacks, so later edits have
                // origins from the other client.
                let sv = other.transact().state_vector().encode_v1();
                prop_assert_eq!(check_state_vector(&sv), Ok(()));
                let missing = doc
                    .transact()
                    .encode_state_as_update_v1(&StateVector::decode_v1(&sv).expect("sv"));
                assert_passes(&missing, "sync step 2");
                other
                    .transact_mut()
                    .apply_update(Update::decode_v1(&missing).expect("decodes"))
                    .expect("applies");
            }
        }
        for doc in [&a, &b] {
            let full = doc.transact().encode_state_as_update_v1(&StateVector::default());
            assert_passes(&full, "full state");
            let sv = doc.transact().state_vector().encode_v1();
            prop_assert_eq!(check_state_vector(&sv), Ok(()));
        }
        // Merged blobs may hold Skip blocks.
        let merged = yrs::merge_updates_v1(updates.iter().map(Vec::as_slice)).expect("merges");
        assert_passes(&merged, "merged update");
    }
}

#[test]
fn a_doc_with_deleted_and_garbage_collected_content_passes() {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello world");
    }
    {
        let mut txn = doc.transact_mut();
        text.remove_range(&mut txn, 0, 6);
    }
    let root = doc.get_or_insert_map("m");
    {
        let mut txn = doc.transact_mut();
        root.insert(&mut txn, "a", "x");
        root.insert(&mut txn, "a", "y");
    }
    let full = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    assert_passes(&full, "full state");
}
