//! Memory returns to its baseline once rooms are unloaded. The server runs in this process, so
//! a counting global allocator sees every byte it holds.

mod common;

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

use common::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The counter is process-wide: tests in this file take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bytes allocated and not yet freed, process-wide.
fn live() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_baseline_after_rooms_unload() {
    let _turn = SERIAL.lock().await;
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

/// Opens a WebSocket to `path` by hand with blocking std I/O (so the client side allocates
/// nothing this test would count) and reads the 101 response.
fn raw_handshake(addr: std::net::SocketAddr, path: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(upgrade_request(path).as_bytes())
        .expect("write request");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("read status line");
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// An idle connection holds no buffers, only its task, its socket registration and its place
/// in the room: about 1 KiB of heap (the reference y-websocket server's whole RSS per idle
/// connection is about 10 KiB). A per-connection read or write buffer would break the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_holds_no_buffers() {
    let _turn = SERIAL.lock().await;
    let config = ripple_server::Config {
        persist: ripple_server::PersistMode::None,
        ..test_config()
    };
    let server = start(config).await;
    // The room is loaded and runtime state warmed up by a first connection.
    let first = server.client("idle-mem").await;
    insert_text(&first, 0, "hello");
    let addr = server.addr;
    let warm = tokio::task::spawn_blocking(move || raw_handshake(addr, "/idle-mem"))
        .await
        .expect("handshake");
    server
        .wait_stat("warm-up", |s| &s.connections_active, |n| n == 2)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let baseline = live();
    let n = 400;
    let sockets = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| raw_handshake(addr, "/idle-mem"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("handshakes");
    server
        .wait_stat(
            "all joined",
            |s| &s.connections_active,
            |c| c == n as u64 + 2,
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let per_conn = (live() - baseline) / n as isize;
    eprintln!("heap per idle connection: {per_conn} bytes");
    assert!(
        per_conn < 2048,
        "{per_conn} bytes of heap per idle connection"
    );
    // And they are real connections: the room still serves everyone.
    drop((sockets, warm));
    insert_text(&first, 5, " world");
}
