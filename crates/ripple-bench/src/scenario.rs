//! The five scenarios. Each returns a [`Report`]; none hides an error: connect failures,
//! disconnects, protocol errors, missing writes and diverged documents are counted and shown.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use yrs::{Map, ReadTxn, Text, Transact};

use crate::conn::{now_us, Conn, ConnError};
use crate::procstat::{cpu_between, Probe, Reading};
use crate::report::{percentile, Better, Errors, Report};
use crate::session::{ClientReport, Phase, Session, SessionSpec, Target, WritePlan};

/// Options every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// Where to connect.
    pub target: Target,
    /// Server label for reports.
    pub label: String,
    /// Server sampling.
    pub probe: Probe,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Timeout of one connect + sync.
    pub connect_timeout: Duration,
    /// How long to wait for every write to arrive after writers stop.
    pub drain_timeout: Duration,
}

impl Common {
    fn rooms(&self, scenario: &str, n: usize) -> Vec<String> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        (0..n)
            .map(|i| format!("{scenario}-{:x}-{ms:x}-{i}", std::process::id()))
            .collect()
    }

    fn session(&self, rooms: Vec<String>, per_room: usize, awareness: bool) -> Session {
        Session::new(SessionSpec {
            target: self.target.clone(),
            rooms,
            per_room,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: self.connect_timeout,
            awareness,
        })
    }

    fn report(&self, scenario: &str, params: serde_json::Value) -> Report {
        Report::new(
            scenario,
            &self.label,
            &format!("{:?}", self.target.protocol).to_lowercase(),
            params,
        )
    }
}

const MB: f64 = 1024.0 * 1024.0;

/// Figures every scenario reports about resources between two readings.
fn resource_figures(r: &mut Report, a: &Reading, b: &Reading) {
    let (server_cpu, driver_cpu, wall) = cpu_between(a, b);
    r.fig(
        "server_cpu_pct",
        "server CPU (of one core)",
        server_cpu.map(|c| 100.0 * c / wall),
        "%",
        Better::None,
    );
    r.fig(
        "server_rss_mb",
        "server RSS at end",
        b.server.map(|s| s.rss_bytes as f64 / MB),
        "MiB",
        Better::Lower,
    );
    r.fig(
        "driver_cpu_pct",
        "load generator CPU (of one core)",
        Some(100.0 * driver_cpu / wall),
        "%",
        Better::None,
    );
}

/// Counts failures, disconnects, missing writes and diverged documents.
fn tally(reports: &[ClientReport], expected: Option<&[u64]>, errors: &mut Errors) {
    let mut room_sv: HashMap<usize, HashMap<Vec<u8>, u64>> = HashMap::new();
    for c in reports {
        if let Err(e) = &c.connect {
            errors.connect_failures += 1;
            errors.note(format!("client {}: {e}", c.index));
            continue;
        }
        if let Some(e) = &c.ended {
            match e {
                ConnError::Protocol(_) => errors.protocol_errors += 1,
                _ => errors.disconnects += 1,
            }
            errors.note(format!("client {}: {e}", c.index));
            continue;
        }
        if let Some(expected) = expected {
            let want = expected.get(c.room).copied().unwrap_or(0);
            errors.missing_updates += want.saturating_sub(c.seen);
        }
        if let Some(sv) = &c.state_vector {
            *room_sv
                .entry(c.room)
                .or_default()
                .entry(sv.clone())
                .or_default() += 1;
        }
    }
    for svs in room_sv.values() {
        // Everyone who differs from the room's most common state counts as a mismatch.
        let total: u64 = svs.values().sum();
        let most = svs.values().copied().max().unwrap_or(0);
        errors.convergence_mismatches += total - most;
    }
    if errors.missing_updates > 0 {
        errors.note(format!(
            "{} writes never arrived at some connected client",
            errors.missing_updates
        ));
    }
}

fn latency_figures(r: &mut Report, reports: &[ClientReport]) -> usize {
    let mut lat: Vec<u64> = reports
        .iter()
        .flat_map(|c| c.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let ms = |v: Option<f64>| v.map(|us| us / 1000.0);
    r.fig(
        "latency_p50_ms",
        "latency p50",
        ms(percentile(&lat, 50.0)),
        "ms",
        Better::Lower,
    );
    r.fig(
        "latency_p99_ms",
        "latency p99",
        ms(percentile(&lat, 99.0)),
        "ms",
        Better::Lower,
    );
    r.fig(
        "latency_max_ms",
        "latency max",
        ms(lat.last().map(|v| *v as f64)),
        "ms",
        Better::Lower,
    );
    lat.len()
}

/// `fanout` parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FanoutOpts {
    /// Rooms.
    pub rooms: usize,
    /// Clients per room (one of them writes).
    pub clients: usize,
    /// Writes per second per room.
    pub rate: f64,
    /// Seconds of writing.
    pub duration_secs: f64,
}

/// R rooms × N clients, one writer per room at a fixed rate; latency from a write to its arrival
/// at every other client, delivered updates/s, CPU per delivered update, convergence.
pub async fn fanout(c: &Common, o: &FanoutOpts) -> Report {
    let mut r = c.report("fanout", json!(o));
    let rooms = c.rooms("fanout", o.rooms);
    let mut s = c.session(rooms, o.clients, false);
    let interval = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
    for room in 0..o.rooms {
        let offset = interval.mul_f64(room as f64 / o.rooms.max(1) as f64);
        s.spawn(room, 0, WritePlan::Rate { interval, offset });
        for local in 1..o.clients {
            s.spawn(room, local, WritePlan::Idle);
        }
    }
    let (ready, _) = s.wait_connected().await;
    let start = c.probe.read();
    let start_us = now_us();
    s.set(Phase::Run);
    tokio::time::sleep(Duration::from_secs_f64(o.duration_secs)).await;
    let sent = s.stop(Duration::from_secs(10)).await;
    s.drain(sent.clone(), c.drain_timeout).await;
    let end = c.probe.read();
    let reports = s.finish().await;
    finish_writes(&mut r, ready, &sent, &reports, start_us, &start, &end);
    r
}

/// `burst` parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BurstOpts {
    /// Rooms.
    pub rooms: usize,
    /// Clients per room (all write).
    pub clients: usize,
    /// Seconds of writing.
    pub duration_secs: f64,
    /// Writes a client may have in flight (not yet seen by its room neighbour).
    pub window: u32,
}

/// Every client writes as fast as the server lets it (bounded in-flight window); accepted and
/// delivered updates/s, CPU per delivered update, convergence.
pub async fn burst(c: &Common, o: &BurstOpts) -> Report {
    let mut r = c.report("burst", json!(o));
    let rooms = c.rooms("burst", o.rooms);
    let mut s = c.session(rooms, o.clients.max(2), false);
    for room in 0..o.rooms {
        for local in 0..o.clients.max(2) {
            s.spawn(room, local, WritePlan::Window(o.window.max(1)));
        }
    }
    let (ready, _) = s.wait_connected().await;
    let start = c.probe.read();
    let start_us = now_us();
    s.set(Phase::Run);
    tokio::time::sleep(Duration::from_secs_f64(o.duration_secs)).await;
    let acked = s.acked_total();
    let sent = s.stop(Duration::from_secs(10)).await;
    s.drain(sent.clone(), c.drain_timeout).await;
    let end = c.probe.read();
    let reports = s.finish().await;
    r.fig(
        "accepted_per_sec",
        "accepted updates/s (seen by a neighbour in the write window)",
        Some(acked as f64 / o.duration_secs),
        "/s",
        Better::Higher,
    );
    finish_writes(&mut r, ready, &sent, &reports, start_us, &start, &end);
    r
}

#[allow(clippy::too_many_arguments)]
fn finish_writes(
    r: &mut Report,
    ready: usize,
    sent: &[u64],
    reports: &[ClientReport],
    start_us: u64,
    start: &Reading,
    end: &Reading,
) {
    let writes: u64 = sent.iter().sum();
    let last = reports
        .iter()
        .map(|c| c.last_arrival_us)
        .max()
        .unwrap_or(start_us);
    let window = (last.saturating_sub(start_us)) as f64 / 1e6;
    r.fig(
        "clients",
        "clients connected",
        Some(ready as f64),
        "",
        Better::None,
    );
    r.fig(
        "writes",
        "writes sent",
        Some(writes as f64),
        "",
        Better::None,
    );
    let delivered = latency_figures(r, reports);
    r.fig(
        "delivered",
        "updates delivered",
        Some(delivered as f64),
        "",
        Better::None,
    );
    let per_sec = (window > 0.0).then(|| delivered as f64 / window);
    r.fig(
        "delivered_per_sec",
        "delivered updates/s",
        per_sec,
        "/s",
        Better::Higher,
    );
    let (server_cpu, _, _) = cpu_between(start, end);
    r.fig(
        "cpu_us_per_delivered",
        "server CPU per delivered update",
        server_cpu
            .filter(|_| delivered > 0)
            .map(|s| 1e6 * s / delivered as f64),
        "µs",
        Better::Lower,
    );
    resource_figures(r, start, end);
    tally(reports, Some(sent), &mut r.errors);
}

/// `connect` parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectOpts {
    /// Clients in total.
    pub clients: usize,
    /// Rooms they spread over.
    pub rooms: usize,
    /// Seconds to hold all connections before measuring memory.
    pub settle_secs: f64,
}

/// C clients connect as fast as possible (bounded concurrency) across rooms; connections/s,
/// time until all are synced, failures, server RSS and CPU per connection.
pub async fn connect(c: &Common, o: &ConnectOpts) -> Report {
    let mut params = json!(o);
    params["concurrency"] = json!(c.connect_concurrency);
    let mut r = c.report("connect", params);
    let rooms_n = o.rooms.max(1);
    let per_room = o.clients.div_ceil(rooms_n);
    let rooms = c.rooms("connect", rooms_n);
    let mut s = c.session(rooms, per_room, false);
    let before = c.probe.read();
    let t0 = Instant::now();
    for i in 0..o.clients {
        s.spawn(i % rooms_n, i / rooms_n, WritePlan::Idle);
    }
    let (ready, _) = s.wait_connected().await;
    let all_synced = t0.elapsed().as_secs_f64();
    let connected = c.probe.read();
    tokio::time::sleep(Duration::from_secs_f64(o.settle_secs)).await;
    let settled = c.probe.read();
    let reports = s.finish().await;
    let mut times: Vec<u64> = reports
        .iter()
        .filter_map(|c| c.connect.as_ref().ok())
        .map(|d| d.as_micros() as u64)
        .collect();
    times.sort_unstable();
    r.fig(
        "clients",
        "clients connected",
        Some(ready as f64),
        "",
        Better::None,
    );
    r.fig(
        "connects_per_sec",
        "connections/s (to synced)",
        Some(ready as f64 / all_synced),
        "/s",
        Better::Higher,
    );
    r.fig(
        "all_synced_secs",
        "time until all synced",
        Some(all_synced),
        "s",
        Better::Lower,
    );
    r.fig(
        "connect_p50_ms",
        "connect+sync p50",
        percentile(&times, 50.0).map(|v| v / 1000.0),
        "ms",
        Better::Lower,
    );
    r.fig(
        "connect_p99_ms",
        "connect+sync p99",
        percentile(&times, 99.0).map(|v| v / 1000.0),
        "ms",
        Better::Lower,
    );
    let (cpu, _, _) = cpu_between(&before, &connected);
    r.fig(
        "cpu_ms_per_connect",
        "server CPU per connection",
        cpu.filter(|_| ready > 0).map(|s| 1e3 * s / ready as f64),
        "ms",
        Better::Lower,
    );
    let rss_per = match (before.server, settled.server) {
        (Some(a), Some(b)) if ready > 0 => {
            Some((b.rss_bytes as f64 - a.rss_bytes as f64) / ready as f64 / 1024.0)
        }
        _ => None,
    };
    r.fig(
        "rss_kib_per_conn",
        "server RSS per connection",
        rss_per,
        "KiB",
        Better::Lower,
    );
    resource_figures(&mut r, &before, &settled);
    tally(&reports, None, &mut r.errors);
    r
}

/// `idle` parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleOpts {
    /// Rooms.
    pub rooms: usize,
    /// Idle clients per room (each sets one awareness state).
    pub clients: usize,
    /// Seconds to wait after each wave before reading memory.
    pub settle_secs: f64,
}

/// Many rooms with few idle clients. Wave 1 opens one client per room, wave 2 the others:
/// RSS per room = wave-1 growth / rooms, RSS per connection = wave-2 growth / its clients.
pub async fn idle(c: &Common, o: &IdleOpts) -> Report {
    let mut r = c.report("idle", json!(o));
    let per_room = o.clients.max(2);
    let rooms = c.rooms("idle", o.rooms);
    let mut s = c.session(rooms, per_room, true);
    let settle = Duration::from_secs_f64(o.settle_secs);
    let r0 = c.probe.read();
    for room in 0..o.rooms {
        s.spawn(room, 0, WritePlan::Idle);
    }
    s.wait_connected().await;
    tokio::time::sleep(settle).await;
    let r1 = c.probe.read();
    for room in 0..o.rooms {
        for local in 1..per_room {
            s.spawn(room, local, WritePlan::Idle);
        }
    }
    let (ready, _) = s.wait_connected().await;
    tokio::time::sleep(settle).await;
    let r2 = c.probe.read();
    // Idle cost: CPU over one more quiet period.
    tokio::time::sleep(settle).await;
    let r3 = c.probe.read();
    let reports = s.finish().await;
    let rss = |x: &Reading| x.server.map(|s| s.rss_bytes as f64);
    let wave2 = (o.rooms * (per_room - 1)) as f64;
    let (a, b, d) = (rss(&r0), rss(&r1), rss(&r2));
    r.fig(
        "clients",
        "clients connected",
        Some(ready as f64),
        "",
        Better::None,
    );
    r.fig(
        "rss_kib_per_room",
        "server RSS per room (with its first client)",
        a.zip(b).map(|(a, b)| (b - a) / o.rooms as f64 / 1024.0),
        "KiB",
        Better::Lower,
    );
    r.fig(
        "rss_kib_per_conn",
        "server RSS per idle connection (wave 2)",
        b.zip(d).map(|(b, d)| (d - b) / wave2 / 1024.0),
        "KiB",
        Better::Lower,
    );
    let (idle_cpu, _, wall) = cpu_between(&r2, &r3);
    r.fig(
        "idle_cpu_pct",
        "server CPU while idle",
        idle_cpu.map(|c| 100.0 * c / wall),
        "%",
        Better::Lower,
    );
    resource_figures(&mut r, &r0, &r3);
    tally(&reports, None, &mut r.errors);
    r
}

/// `bigdoc` parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BigdocOpts {
    /// Single-character text inserts.
    pub text_inserts: usize,
    /// Map keys (64-character string values).
    pub map_keys: usize,
    /// Fresh clients that join one after another.
    pub joins: usize,
    /// Inserts per update message while seeding.
    pub chunk: usize,
}

/// Small deterministic PRNG (xorshift64*), so every server gets the same document.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A room holding a large document (text inserts at scattered positions near the start, plus
/// map keys), then M fresh clients join one at a time: time until each is synced (and holds the
/// whole document), server CPU per join.
pub async fn bigdoc(c: &Common, o: &BigdocOpts) -> Report {
    let mut r = c.report("bigdoc", json!(o));
    let room = c.rooms("bigdoc", 1).remove(0);
    let url = |n: u64| c.target.url_for(&room, n);
    let base_id = crate::session::CLIENT_ID_BASE;
    let proto = c.target.protocol;

    let seed_start = Instant::now();
    let mut seeder =
        match Conn::open_synced(&url(0), proto, &room, base_id, c.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                r.errors.connect_failures += 1;
                r.errors.note(format!("seeder: {e}"));
                return r;
            }
        };
    if let Err(e) = seed(&mut seeder, o).await {
        r.errors.disconnects += 1;
        r.errors.note(format!("seeder while seeding: {e}"));
        return r;
    }
    let want_sv = seeder.state_vector();
    let doc_bytes = seeder
        .doc()
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default())
        .len();
    // The seeder keeps its connection (so the room stays loaded) and keeps reading.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let seeder_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => { seeder.close().await; return None; }
                ev = seeder.recv() => if let Err(e) = ev { return Some(e); }
            }
        }
    });

    // Wait until the server holds the whole document.
    let mut verified = false;
    let deadline = Instant::now() + c.drain_timeout.max(Duration::from_secs(30));
    while Instant::now() < deadline {
        match Conn::open_synced(&url(1), proto, &room, base_id + 1, c.connect_timeout).await {
            Ok(v) => {
                let same = v.state_vector() == want_sv;
                v.close().await;
                if same {
                    verified = true;
                    break;
                }
            }
            Err(e) => r.errors.note(format!("verifier: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seed_secs = seed_start.elapsed().as_secs_f64();
    if !verified {
        r.errors.missing_updates += 1;
        r.errors
            .note("the server never held the whole seeded document");
    }

    let start = c.probe.read();
    let mut times = Vec::with_capacity(o.joins);
    for j in 0..o.joins {
        let id = base_id + 2 + j as u64;
        let t = Instant::now();
        match Conn::open_synced(&url(2 + j as u64), proto, &room, id, c.connect_timeout).await {
            Ok(conn) => {
                times.push(t.elapsed().as_micros() as u64);
                if conn.state_vector() != want_sv {
                    r.errors.convergence_mismatches += 1;
                }
                conn.close().await;
            }
            Err(e) => {
                r.errors.connect_failures += 1;
                r.errors.note(format!("joiner {j}: {e}"));
            }
        }
    }
    let end = c.probe.read();
    let _ = stop_tx.send(());
    if let Ok(Some(e)) = seeder_task.await {
        r.errors.disconnects += 1;
        r.errors.note(format!("seeder: {e}"));
    }
    times.sort_unstable();
    r.fig(
        "doc_mib",
        "document size (encoded)",
        Some(doc_bytes as f64 / MB),
        "MiB",
        Better::None,
    );
    r.fig(
        "seed_secs",
        "seeding until the server holds it all",
        Some(seed_secs),
        "s",
        Better::Lower,
    );
    r.fig(
        "join_p50_ms",
        "join until synced p50",
        percentile(&times, 50.0).map(|v| v / 1000.0),
        "ms",
        Better::Lower,
    );
    r.fig(
        "join_max_ms",
        "join until synced max",
        times.last().map(|v| *v as f64 / 1000.0),
        "ms",
        Better::Lower,
    );
    let (cpu, _, _) = cpu_between(&start, &end);
    r.fig(
        "cpu_ms_per_join",
        "server CPU per join",
        cpu.filter(|_| !times.is_empty())
            .map(|s| 1e3 * s / times.len() as f64),
        "ms",
        Better::Lower,
    );
    resource_figures(&mut r, &start, &end);
    r
}

/// Builds the big document in the seeder's doc, sending one update per `chunk` operations.
async fn seed(seeder: &mut Conn, o: &BigdocOpts) -> Result<(), ConnError> {
    let doc = seeder.doc().clone();
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("k");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let chunk = o.chunk.max(1);
    let mut len = 0u32;
    let mut done = 0;
    while done < o.text_inserts {
        let n = chunk.min(o.text_inserts - done);
        let update = {
            let mut txn = doc.transact_mut();
            for _ in 0..n {
                // Scattered positions near the start: every insert is its own item (no
                // squashing), and finding the position stays cheap.
                let at = (rng.next() % u64::from(len.min(64) + 1)) as u32;
                let ch = (b'a' + (rng.next() % 26) as u8) as char;
                text.insert(&mut txn, at, ch.encode_utf8(&mut [0; 4]));
                len += 1;
            }
            txn.encode_update_v1()
        };
        seeder.send_update(update).await?;
        seeder.recv_ready().await?;
        done += n;
    }
    let mut done = 0;
    let key_chunk = (chunk / 10).max(1);
    while done < o.map_keys {
        let n = key_chunk.min(o.map_keys - done);
        let update = {
            let mut txn = doc.transact_mut();
            for i in done..done + n {
                let value: String = (0..64)
                    .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
                    .collect();
                map.insert(&mut txn, format!("k{i}"), value);
            }
            txn.encode_update_v1()
        };
        seeder.send_update(update).await?;
        seeder.recv_ready().await?;
        done += n;
    }
    Ok(())
}
