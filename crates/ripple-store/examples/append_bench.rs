//! Durable appends per second, per backend and durability, with 1, 10 and 100 rooms writing at
//! once. Each room is one writer that appends a 64-byte update and waits for it to be durable
//! before the next, as a room actor does; group commit is what lets many rooms share an fsync.
//!
//! ```text
//! cargo run --release -p ripple-store --example append_bench [-- --seconds 3]
//! ```
//!
//! SQLite runs in a temporary directory (put `TMPDIR` on the disk you care about). Postgres rows
//! run when `RIPPLE_TEST_DATABASE_URL` is set; they use a scratch schema that is dropped after.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ripple_core::{RoomKey, Store};
use ripple_store::{Backend, Durability, PostgresOptions, PostgresStore};

const ROOM_COUNTS: [usize; 3] = [1, 10, 100];
const PAYLOAD: usize = 64;

struct Row {
    backend: &'static str,
    durability: Durability,
    rooms: usize,
    per_sec: f64,
    per_commit: f64,
    p50: Duration,
    p99: Duration,
}

/// `rooms` writers append until the deadline; returns the table row's numbers.
async fn run(
    backend: &Backend,
    rooms: usize,
    seconds: f64,
) -> Result<(f64, f64, Vec<Duration>), Box<dyn Error>> {
    let store: Arc<dyn Store> = backend.store();
    let commits_before = backend.commits().unwrap_or(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..rooms {
        let store = store.clone();
        tasks.spawn(async move {
            let room = RoomKey::new("bench", &format!("room-{r}"), 256)?;
            let payload = Bytes::from(vec![b'x'; PAYLOAD]);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                store.append(&room, 0, vec![payload.clone()]).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done?.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let commits = backend.commits().unwrap_or(0) - commits_before;
    latencies.sort();
    let appends = latencies.len() as f64;
    Ok((
        appends / elapsed,
        appends / commits.max(1) as f64,
        latencies,
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn bench(
    name: &'static str,
    open: impl AsyncFn(Durability) -> Result<Backend, Box<dyn Error>>,
    seconds: f64,
    rows: &mut Vec<Row>,
) -> Result<(), Box<dyn Error>> {
    for durability in [Durability::Strict, Durability::Relaxed] {
        for rooms in ROOM_COUNTS {
            let backend = open(durability).await?;
            let (per_sec, per_commit, latencies) = run(&backend, rooms, seconds).await?;
            let row = Row {
                backend: name,
                durability,
                rooms,
                per_sec,
                per_commit,
                p50: percentile(&latencies, 0.50),
                p99: percentile(&latencies, 0.99),
            };
            eprintln!(
                "{name} {durability:?} rooms={rooms}: {per_sec:.0}/s ({per_commit:.1} per commit)"
            );
            rows.push(row);
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut seconds = 3.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args.next().ok_or("--seconds needs a value")?.parse()?;
        }
    }
    let mut rows = Vec::new();

    let dir = tempfile::tempdir()?;
    let counter = std::sync::atomic::AtomicU32::new(0);
    bench(
        "sqlite",
        async |durability| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Backend::open("sqlite", &dir.path().join(n.to_string()), durability).await?)
        },
        seconds,
        &mut rows,
    )
    .await?;

    if let Ok(url) = std::env::var("RIPPLE_TEST_DATABASE_URL") {
        let schema = format!("ripple_bench_{}", std::process::id());
        let result = bench(
            "postgres",
            async |durability| {
                // A fresh schema per run: drop what the previous run left.
                drop_schema(&url, &schema).await?;
                let options = PostgresOptions {
                    schema: schema.clone(),
                    durability,
                    ..PostgresOptions::default()
                };
                let store = PostgresStore::connect_with_options(&url, &options).await?;
                Ok(Backend::Postgres(Arc::new(store)))
            },
            seconds,
            &mut rows,
        )
        .await;
        drop_schema(&url, &schema).await?;
        result?;
    } else {
        eprintln!("RIPPLE_TEST_DATABASE_URL not set: Postgres skipped");
    }

    println!("| backend | durability | rooms | appends/s | appends per commit | p50 latency | p99 latency |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:?} | {} | {:.0} | {:.1} | {:.2} ms | {:.2} ms |",
            row.backend,
            row.durability,
            row.rooms,
            row.per_sec,
            row.per_commit,
            row.p50.as_secs_f64() * 1e3,
            row.p99.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}

async fn drop_schema(url: &str, schema: &str) -> Result<(), Box<dyn Error>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}
