//! The decode-bound checker (`ripple_proto::bounds`) never panics, and never refuses what yrs
//! writes: two documents edited from the input and synced with each other produce incremental
//! updates, diffs against the other's state vector, full states, merged updates and state
//! vectors, and every one must pass. The input's tail is also checked raw (no panic).
#![no_main]

#[path = "common/docs.rs"]
mod docs;

use arbitrary::Arbitrary;
use docs::{edit, Edit};
use libfuzzer_sys::fuzz_target;
use ripple_proto::bounds::{check_state_vector, check_update};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{merge_updates_v1, Doc, ReadTxn, StateVector, Transact, Update};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Document `d` edits; the change (encoded as yrs encodes it) must pass.
    Edit { d: bool, edits: Vec<Edit> },
    /// The two documents sync both ways with diffs against each other's state vector.
    Sync,
    /// Document `d` receives the other's full state.
    Full { d: bool },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    raw: Vec<u8>,
}

fn must_pass_update(u: &[u8], what: &str) {
    if let Err(e) = check_update(u) {
        panic!("the checker refused {what} that yrs wrote: {e}\n{u:?}");
    }
}

fn must_pass_sv(sv: &[u8]) {
    if let Err(e) = check_state_vector(sv) {
        panic!("the checker refused a state vector that yrs wrote: {e}\n{sv:?}");
    }
}

fn apply(doc: &Doc, u: &[u8]) {
    let u = Update::decode_v1(u).expect("yrs decodes its own update");
    let _ = doc.transact_mut().apply_update(u);
}

fuzz_target!(|input: Input| {
    // Raw bytes: the checker never panics. (Decoding what passes in yrs is not asserted: the
    // checker passes client ids >= 2^53, on which yrs debug-asserts; see fuzz/README.md and
    // fuzz/regressions/update_bounds. room_handle covers checker + yrs together.)
    let _ = check_update(&input.raw);
    let _ = check_state_vector(&input.raw);

    let docs = [Doc::with_client_id(1), Doc::with_client_id(2)];
    let mut log: Vec<Vec<u8>> = Vec::new();
    for op in input.ops.iter().take(32) {
        match op {
            Op::Edit { d, edits } => {
                let doc = &docs[usize::from(*d)];
                let before = doc.transact().state_vector();
                for e in edits.iter().take(16) {
                    edit(doc, e);
                }
                let u = doc.transact().encode_state_as_update_v1(&before);
                must_pass_update(&u, "an incremental update");
                log.push(u);
            }
            Op::Sync => {
                let sv0 = docs[0].transact().state_vector().encode_v1();
                let sv1 = docs[1].transact().state_vector().encode_v1();
                must_pass_sv(&sv0);
                must_pass_sv(&sv1);
                let to1 = docs[0]
                    .transact()
                    .encode_state_as_update_v1(&StateVector::decode_v1(&sv1).expect("sv"));
                let to0 = docs[1]
                    .transact()
                    .encode_state_as_update_v1(&StateVector::decode_v1(&sv0).expect("sv"));
                must_pass_update(&to1, "a diff");
                must_pass_update(&to0, "a diff");
                apply(&docs[1], &to1);
                apply(&docs[0], &to0);
            }
            Op::Full { d } => {
                let from = &docs[1 - usize::from(*d)];
                let full = from
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                must_pass_update(&full, "a full state");
                apply(&docs[usize::from(*d)], &full);
            }
        }
    }
    for doc in &docs {
        let txn = doc.transact();
        must_pass_sv(&txn.state_vector().encode_v1());
        must_pass_update(
            &txn.encode_state_as_update_v1(&StateVector::default()),
            "a full state",
        );
    }
    if !log.is_empty() {
        if let Ok(merged) = merge_updates_v1(&log) {
            must_pass_update(&merged, "a merged update");
        }
    }
});
