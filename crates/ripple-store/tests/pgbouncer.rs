//! Ripple's Postgres store behind a real pgbouncer in session pooling mode: appends, loads,
//! compaction and leases work as they do directly. (Transaction pooling is not supported: the
//! driver prepares statements per session; README and docs/cluster.md say so.)
//!
//! Needs Postgres (RIPPLE_TEST_DATABASE_URL, a server on 127.0.0.1 with trust auth, as on CI)
//! and the `pgbouncer` binary (`.ci/run` installs Debian's package).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ripple_core::{RoomKey, Store};
use ripple_store::PostgresStore;

struct Bouncer {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// pgbouncer in front of the test database's server, in `mode`.
fn start(upstream: &str, mode: &str) -> Bouncer {
    let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (host, upstream_port) = upstream
        .split_once(':')
        .expect("the test database URL names host:port");
    std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").expect("users");
    let ini = format!(
        "[databases]\n* = host={host} port={upstream_port}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n\
         auth_file = {users}\npool_mode = {mode}\n\
         ignore_startup_parameters = options\n",
        users = dir.path().join("users.txt").display(),
    );
    let ini_path = dir.path().join("pgbouncer.ini");
    std::fs::write(&ini_path, ini).expect("ini");
    // pgbouncer refuses to run as root: as root, it runs as the postgres user.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut cmd = Command::new(binary);
    if is_root {
        let _ = Command::new("chown")
            .args(["-R", "postgres", &dir.path().display().to_string()])
            .status();
        cmd.args(["-u", "postgres"]);
    }
    let child = cmd
        .arg(&ini_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pgbouncer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pgbouncer did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Bouncer {
        child,
        _dir: dir,
        port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn the_store_works_behind_pgbouncer_in_session_mode() {
    let url = ripple_store::testing::database_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let after_at = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let (host_port, db) = after_at.split_once('/').expect("URL with a database");
    let bouncer = start(host_port, "session");
    let via = format!("postgres://postgres@127.0.0.1:{}/{db}", bouncer.port);
    let schema = format!("bouncer_{}", std::process::id());
    let store = PostgresStore::connect_with_schema(&via, &schema)
        .await
        .expect("connects through pgbouncer");
    let room = RoomKey::new("main", "bounced", 128).expect("key");
    let grant = store
        .acquire(&room, "node-a", Duration::from_secs(5))
        .await
        .expect("lease");
    let seq = store
        .append(&room, grant.epoch, vec![Bytes::from_static(b"\x00\x00")])
        .await
        .expect("append");
    assert_eq!(seq, 1);
    let loaded = store.load(&room).await.expect("load");
    assert_eq!(loaded.updates.len(), 1);
    store
        .compact(&room, grant.epoch, Bytes::from_static(b"\x00\x00"), 1)
        .await
        .expect("compact");
    assert!(store.load(&room).await.expect("load").updates.is_empty());
    store.release(&room, grant.epoch).await.expect("release");
    // A second "node" through the same bouncer takes the room once it is released.
    let other = PostgresStore::connect_with_schema(&via, &schema)
        .await
        .expect("second store");
    let grant2 = other
        .acquire(&room, "node-b", Duration::from_secs(5))
        .await
        .expect("released room is free");
    assert!(grant2.epoch > grant.epoch);
    // Clean up, directly.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
}
