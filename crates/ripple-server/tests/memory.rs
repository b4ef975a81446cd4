//! Memory returns to its baseline once rooms are unloaded. The server runs in this process, so
//! a counting global allocator sees every byte it holds.

mod common;

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

use common::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, process-wide.
fn live() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_baseline_after_rooms_unload() {
    let config = ripple_server::Config {
        persist: ripple_server::PersistMode::None,
        ..test_config()
    };
    let server = start(config).await;
    // Warm up lazily initialised runtime and client state with one room.
    {
        let c = server.client("warmup").await;
        insert_text(&c, 0, "x");
    }
    server
        .wait_stat("warm-up room unloaded", |s| &s.rooms_active, |n| n == 0)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let baseline = live();
    let applied_before = server.stat(|s| &s.updates_applied);

    let payload = "z".repeat(50_000);
    let rooms = 50;
    let mut clients = Vec::new();
    for i in 0..rooms {
        let mut c = server.client(&format!("mem-{i}")).await;
        insert_text(&c, 0, &payload);
        server
            .wait_stat(
                "applied",
                |s| &s.updates_applied,
                |n| n > applied_before + i as u64,
            )
            .await;
        c.close();
        let _ = c.wait_closed(WAIT).await;
        clients.push(c);
    }
    let peak = live();
    drop(clients);
    server
        .wait_stat("rooms unloaded", |s| &s.rooms_active, |n| n == 0)
        .await;
    server
        .wait_stat("connections gone", |s| &s.connections_active, |n| n == 0)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = live();
    let held = peak - baseline;
    let left = after - baseline;
    eprintln!("memory: held {held} bytes for {rooms} rooms, {left} bytes left after unload");
    assert!(
        held > (rooms * payload.len()) as isize,
        "the rooms really held their documents ({held} bytes)"
    );
    assert!(
        left < 256 * 1024,
        "{left} bytes still held after unloading {rooms} rooms (peak held {held})"
    );
}
