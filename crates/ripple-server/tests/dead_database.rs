//! A real Postgres that goes away under a running server, and comes back.
//!
//! The server reaches Postgres through a TCP proxy this test controls. Cutting the proxy kills
//! every database connection and refuses new ones, as a crashed or partitioned database would.
//! While it is down, an edit must not be broadcast, its room must close with 1011 and
//! `/readyz` must say 503; once it is back, the client that kept its edit reconnects, resyncs,
//! and a fresh client sees everything. Needs RIPPLE_TEST_DATABASE_URL: `#[ignore]`d, run with
//! `-- --include-ignored` (scripts/test.sh does when the variable is set).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use ripple_client::Client;
use ripple_server::Config;
use ripple_store::{PostgresOptions, PostgresStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A TCP proxy to `upstream` on a fixed local address that can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: JoinSet<()>,
}

impl Proxy {
    fn start(listener: TcpListener, upstream: SocketAddr) -> Self {
        let addr = listener.local_addr().expect("addr");
        let mut proxy = Self {
            addr,
            upstream,
            tasks: JoinSet::new(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    }

    /// Drops every proxied connection and stops listening (new connects are refused).
    async fn cut(&mut self) {
        self.tasks.shutdown().await;
    }

    /// Listens again on the same address.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }
}

/// The Postgres address in `url`, and `url` rewritten to go through `proxy` instead.
fn upstream_and_proxied(url: &str, proxy: SocketAddr) -> (SocketAddr, String) {
    let config: tokio_postgres::Config = url.parse().expect("a postgres URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host_port = format!("{host}:{port}");
    let upstream = host_port
        .parse()
        .expect("a numeric Postgres host in the test URL");
    (upstream, url.replacen(&host_port, &proxy.to_string(), 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn database_down_closes_the_room_and_nothing_is_lost_when_it_returns() {
    let url = ripple_store::testing::database_url();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (upstream, proxied_url) = upstream_and_proxied(&url, listener.local_addr().expect("addr"));
    let mut proxy = Proxy::start(listener, upstream);

    let schema = format!("ripple_dead_db_{}", std::process::id());
    let options = PostgresOptions {
        schema: schema.clone(),
        connect_timeout: std::time::Duration::from_secs(2),
        ..PostgresOptions::default()
    };
    let store = Arc::new(
        PostgresStore::connect_with_options(&proxied_url, &options)
            .await
            .expect("connect through the proxy"),
    );
    let config = Config {
        storage_unready_secs: 1.0,
        ..test_config()
    };
    let server = start_with(config, store, None).await;

    let mut writer = server.client("pg-room").await;
    let mut peer = server.client("pg-room").await;
    insert_text(&writer, 0, "before;");
    wait_text(&mut peer, "before;").await;

    proxy.cut().await;
    insert_text(&writer, 0, "during;");
    assert_room_failed_unbroadcast(&mut writer, &mut peer, "before;").await;
    assert_eq!(http_get(server.addr, "/readyz").await.0, 503);

    proxy.restore().await;
    // The writer kept its edit; reconnecting with its document resyncs it (sync step 2).
    let kept = writer.doc().clone();
    drop(writer);
    let mut again = Client::connect_with(&server.url("pg-room"), kept)
        .await
        .expect("reconnect");
    again.synced(WAIT).await.expect("synced");
    let mut fresh = server.client("pg-room").await;
    wait_text(&mut fresh, "during;before;").await;
    // Ready again once `storage_unready_secs` passes without a failed append.
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(server.addr, "/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "/readyz stays 503");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    again.close();
    let _ = again.wait_closed(WAIT).await;

    // Clean up the schema this test made.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}
