//! Smoke test of the load generator against an in-process Ripple server on 127.0.0.1:0 with
//! tiny sizes: the scenarios run, every client converges, throughput is not zero. It keeps the
//! bench code from rotting; the real comparison is `bench/compare.sh`.

use std::sync::Arc;
use std::time::Duration;

use ripple_bench::procstat::Probe;
use ripple_bench::scenario::{self, BurstOpts, Common, FanoutOpts};
use ripple_bench::session::Target;
use ripple_bench::wire::Protocol;
use ripple_core::MemoryStore;
use ripple_server::{Config, Server};
use tokio::sync::oneshot;

async fn start() -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = Config {
        port: 0,
        room_linger_secs: 0.2,
        // As in bench/ripple.bench.toml: `burst` writes faster than the per-connection quota.
        rate_doc_messages_per_sec: 0,
        rate_update_bytes_per_sec: 0,
        rate_awareness_per_sec: 0,
        ..Config::default()
    };
    let server = Server::new(config, Arc::new(MemoryStore::new()));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    (
        format!("ws://{addr}/parties/main/{{room}}?_pk={{conn}}"),
        stop,
    )
}

fn common(url: String) -> Common {
    Common {
        target: Target {
            url,
            protocol: Protocol::Yws,
        },
        label: "ripple".into(),
        probe: Probe {
            server_pid: Some(std::process::id()),
        },
        connect_concurrency: 8,
        connect_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_write_to_every_reader_and_converges() {
    let (url, _stop) = start().await;
    let opts = FanoutOpts {
        rooms: 2,
        clients: 3,
        rate: 50.0,
        duration_secs: 0.5,
    };
    let r = scenario::fanout(&common(url), &opts).await;
    print!("{}", r.table());
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    let writes = r.value("writes").expect("writes");
    assert!(writes > 0.0);
    // Every write reaches the two other clients of its room.
    assert_eq!(r.value("delivered"), Some(writes * 2.0));
    assert!(r.value("delivered_per_sec").is_some_and(|v| v > 0.0));
    assert!(r.value("latency_p99_ms").is_some());
    assert!(r.value("cpu_us_per_delivered").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_converges_with_nonzero_throughput() {
    let (url, _stop) = start().await;
    let opts = BurstOpts {
        rooms: 2,
        clients: 3,
        duration_secs: 0.5,
        window: 4,
    };
    let r = scenario::burst(&common(url), &opts).await;
    print!("{}", r.table());
    assert_eq!(r.errors.missing_updates, 0, "{:?}", r.errors);
    assert_eq!(r.errors.convergence_mismatches, 0, "{:?}", r.errors);
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert!(r.value("accepted_per_sec").is_some_and(|v| v > 0.0));
    assert!(r.value("delivered_per_sec").is_some_and(|v| v > 0.0));
}
