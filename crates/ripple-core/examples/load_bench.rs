//! Room load and compaction times for rooms holding ~1 MB and ~10 MB of state, from one snapshot
//! and from a long log of small updates (what a busy room looks like before compaction).
//!
//! `cargo run --release -p ripple-core --example load_bench`

use std::time::Instant;

use bytes::Bytes;
use ripple_core::room::{fold, Room};
use ripple_core::StoredRoom;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

/// A log of `n` typing-like updates (each inserts `chunk` bytes somewhere in the text).
fn log(n: usize, chunk: usize) -> Vec<(u64, Bytes)> {
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    let piece = "a".repeat(chunk);
    let mut out = Vec::with_capacity(n);
    let mut len = 0u32;
    let mut seed = 0x2545_f491u32;
    for i in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let at = if len == 0 { 0 } else { seed % len };
        let before = doc.transact().state_vector();
        text.insert(&mut doc.transact_mut(), at, &piece);
        len += chunk as u32;
        let update = doc.transact().encode_state_as_update_v1(&before);
        out.push((i as u64 + 1, Bytes::from(update)));
    }
    let _ = StateVector::default().encode_v1();
    out
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64() * 1000.0)
}

fn main() {
    println!("| state | updates in log | log bytes | load from log | fold (compact) | snapshot bytes | load from snapshot |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, n, chunk) in [("~1 MB", 20_000, 50), ("~10 MB", 50_000, 200)] {
        let updates = log(n, chunk);
        let log_bytes: usize = updates.iter().map(|(_, u)| u.len()).sum();
        let stored = StoredRoom {
            snapshot: None,
            snapshot_seq: 0,
            updates,
        };
        let (room, load_log) = time(|| Room::load(&stored, 16).expect("loads"));
        drop(room);
        let (snapshot, fold_ms) = time(|| fold(&stored, u64::MAX).expect("folds"));
        let snap = StoredRoom {
            snapshot: Some(snapshot.clone()),
            snapshot_seq: n as u64,
            updates: Vec::new(),
        };
        let (room, load_snap) = time(|| Room::load(&snap, 16).expect("loads"));
        drop(room);
        println!(
            "| {label} | {n} | {log_bytes} | {load_log:.1} ms | {fold_ms:.1} ms | {} | {load_snap:.1} ms |",
            snapshot.len()
        );
    }
}
