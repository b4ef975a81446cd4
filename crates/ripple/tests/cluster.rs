//! Several `ripple serve` processes on one Postgres database: each room has one fenced owner at
//! a time. With a cluster secret, a node that does not own a room forwards its clients to the
//! owner over a node-to-node link (all converge live, awareness included; a cut link closes
//! the forwarded clients, which converge after reconnecting). Without one it refuses them
//! (1013, naming the owner) instead of serving a second copy. Edits written through every node
//! all survive compaction; when the owner is killed (kill -9) another node takes the room over
//! once the lease lapses, with every edit a client saw; a paused owner is fenced; a node cut
//! off from Postgres stops serving. Real processes, a real Postgres (a database of this test's
//! own), Rust y-websocket clients, TCP proxies in the test to cut links.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ripple_client::Client;
use yrs::{Map, Transact};

use common::{keys, listening_port, put, ripple};

const WAIT: Duration = Duration::from_secs(20);

/// A database of this test's own, dropped at the end.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create(tag: &str) -> Self {
        let admin_url = ripple_store::testing::database_url();
        let name = format!("ripple_cluster_{tag}_{}", std::process::id());
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .expect("drop database");
        // Two CREATE DATABASE at once can collide on the template ("being accessed by other
        // users"): one at a time, within this process.
        static CREATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        {
            let _one = CREATE.lock().await;
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database");
        }
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("test database URL without a database name: {admin_url}"),
        };
        Self {
            admin_url,
            name,
            url,
        }
    }

    async fn drop_db(self) {
        let (client, conn) = tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let _ = client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

const SECRET: &str = "cluster-test-secret";

struct Node {
    child: Child,
    port: u16,
}

impl Node {
    /// A node without a cluster secret: it refuses rooms another node owns.
    fn start(url: &str, lease_ttl: &str) -> Self {
        Self::start_with(url, lease_ttl, &[])
    }

    /// A node of a cluster (it forwards), with `extra` arguments.
    fn clustered(url: &str, lease_ttl: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--cluster-secret", SECRET];
        args.extend_from_slice(extra);
        Self::start_with(url, lease_ttl, &args)
    }

    fn start_with(url: &str, lease_ttl: &str, extra: &[&str]) -> Self {
        let mut child = ripple()
            .args(["serve", "--host", "127.0.0.1", "--storage", url])
            .args(if extra.contains(&"--port") {
                &[][..]
            } else {
                &["--port", "0"][..]
            })
            .args(["--room-linger-secs", "0.3"])
            .args(extra)
            .env("RIPPLE_LOG", "warn")
            .env("RIPPLE_LEASE_TTL_SECS", lease_ttl)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ripple");
        let port = listening_port(&mut child);
        Self { child, port }
    }

    fn url(&self, room: &str) -> String {
        format!("ws://127.0.0.1:{}/parties/main/{room}", self.port)
    }

    /// Connects and syncs; `Err((code, reason))` if the node refused.
    async fn try_client(&self, room: &str) -> Result<Client, (u16, String)> {
        let mut c = Client::connect(&self.url(room)).await.expect("connect");
        match c.synced(WAIT).await {
            Ok(()) => Ok(c),
            Err(_) => Err(c.wait_closed(WAIT).await.unwrap_or_default()),
        }
    }

    /// Connects, retrying while the node refuses (another node still owns the room), as a
    /// reconnecting y-websocket client would. Returns the client and how long it took.
    async fn client_when_served(&self, room: &str) -> (Client, Duration) {
        let start = Instant::now();
        loop {
            match self.try_client(room).await {
                Ok(c) => return (c, start.elapsed()),
                Err((code, reason)) => {
                    assert_eq!(code, 1013, "refused with {code} {reason}");
                    assert!(start.elapsed() < WAIT, "never served: {reason}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_count(c: &mut Client, n: usize) {
    let map = c.doc().get_or_insert_map("edits");
    let res = c
        .wait_for("edits", WAIT, |_, doc| {
            map.len(&doc.transact()) as usize >= n
        })
        .await;
    assert!(res.is_ok(), "saw {} of {n} edits", keys(c).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn two_nodes_one_owner_and_every_edit_survives_compaction() {
    let db = TestDb::create("owner").await;
    let a = Node::start(&db.url, "10");
    let b = Node::start(&db.url, "10");
    let room = "shared";

    let mut writer_a = a.try_client(room).await.expect("node a serves the room");
    // While node a owns the room, node b refuses it, naming the reason; it never serves a
    // second copy (which is how edits were lost before).
    let (code, reason) = b.try_client(room).await.err().expect("b refuses");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("another node"), "{reason}");
    for i in 0..50 {
        put(&writer_a, &format!("a-{i:02}"));
    }
    let mut probe = a.try_client(room).await.expect("probe");
    wait_count(&mut probe, 50).await;
    writer_a.close();
    probe.close();
    let _ = writer_a.wait_closed(WAIT).await;
    let _ = probe.wait_closed(WAIT).await;

    // Once the room is idle on a (compacted, lease released), b takes it and sees everything.
    let (mut writer_b, _) = b.client_when_served(room).await;
    wait_count(&mut writer_b, 50).await;
    for i in 0..50 {
        put(&writer_b, &format!("b-{i:02}"));
    }
    let mut probe = b.try_client(room).await.expect("probe");
    wait_count(&mut probe, 100).await;
    writer_b.close();
    probe.close();
    let _ = writer_b.wait_closed(WAIT).await;
    let _ = probe.wait_closed(WAIT).await;

    // Fresh clients on either node (whichever owns the room next) see all 100.
    for node in [&a, &b, &a] {
        let (mut fresh, _) = node.client_when_served(room).await;
        wait_count(&mut fresh, 100).await;
        assert_eq!(keys(&fresh).len(), 100);
        fresh.close();
        let _ = fresh.wait_closed(WAIT).await;
    }
    drop((a, b));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn after_kill_9_of_the_owner_another_node_takes_over_with_every_seen_edit() {
    let db = TestDb::create("failover").await;
    let mut a = Node::start(&db.url, "2");
    let b = Node::start(&db.url, "2");
    let room = "failover";

    let writer = a.try_client(room).await.expect("a serves");
    let mut observer = a.try_client(room).await.expect("observer");
    for i in 0..40 {
        put(&writer, &format!("w-{i:02}"));
    }
    // What the observer saw was stored first (durable before visible).
    wait_count(&mut observer, 40).await;
    let seen = keys(&observer);

    a.child.kill().expect("kill -9");
    let _ = a.child.wait();
    let killed = Instant::now();
    let (mut after, _) = b.client_when_served(room).await;
    let took = killed.elapsed();
    wait_count(&mut after, seen.len()).await;
    let have = keys(&after);
    for k in &seen {
        assert!(have.contains(k), "{k} was seen before the kill and is gone");
    }
    // The room takes writes again on its new owner.
    put(&after, "after-failover");
    let mut probe = b.try_client(room).await.expect("probe");
    wait_count(&mut probe, seen.len() + 1).await;
    // How long is a benchmark's question; here it only has to happen (within WAIT).
    eprintln!("failover after kill -9 took {took:?} (lease ttl 2 s)");
    drop(b);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn a_paused_owner_is_fenced_when_it_wakes_and_nothing_diverges() {
    let db = TestDb::create("paused").await;
    let a = Node::start(&db.url, "2");
    let b = Node::start(&db.url, "2");
    let room = "paused";
    let signal = |sig: &str, node: &Node| {
        let ok = std::process::Command::new("kill")
            .args([sig, &node.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    };

    let mut stale = a.try_client(room).await.expect("a serves");
    put(&stale, "before-pause");
    let mut probe = a.try_client(room).await.expect("probe");
    wait_count(&mut probe, 1).await;
    signal("-STOP", &a);
    // Past a's lease, b takes the room over and takes writes.
    let (mut fresh, _) = b.client_when_served(room).await;
    wait_count(&mut fresh, 1).await;
    put(&fresh, "on-b");
    // A late write to the paused owner, then it wakes up.
    put(&stale, "late-on-a");
    signal("-CONT", &a);
    let (code, reason) = stale.wait_closed(WAIT).await.expect("stale client closed");
    assert_eq!(code, 1011, "{reason}");
    let (code, _) = probe.wait_closed(WAIT).await.expect("probe closed");
    assert_eq!(code, 1011);
    assert!(
        !keys(&probe).contains(&"late-on-a".to_owned()),
        "the fenced owner broadcast a write it could not store"
    );
    // The stale client reconnects with its document (as y-websocket does), now to the owner:
    // its late edit merges, and both sides converge.
    let kept = stale.doc().clone();
    let mut back = Client::connect_with(&b.url(room), kept)
        .await
        .expect("reconnect");
    back.synced(WAIT).await.expect("synced");
    wait_count(&mut fresh, 3).await;
    wait_count(&mut back, 3).await;
    assert_eq!(keys(&fresh), keys(&back));
    drop((a, b));
    db.drop_db().await;
}

/// A TCP proxy that a test can cut: every connection through it is dropped at once and new
/// ones are refused (a network partition, seen from both ends as a dead peer).
struct Cuttable {
    port: u16,
    cut: tokio_util::sync::CancellationToken,
}

impl Cuttable {
    async fn to(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = tokio_util::sync::CancellationToken::new();
        let token = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    conn = listener.accept() => match conn { Ok(c) => c, Err(_) => return },
                    _ = token.cancelled() => return,
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    fn cut(&self) {
        self.cut.cancel();
    }
}

fn set_awareness(c: &mut Client, name: &str) {
    c.set_awareness(&format!("{{\"user\":{{\"name\":\"{name}\"}}}}"))
        .expect("awareness");
}

/// Waits until `c`'s awareness view has (`present`) or lacks a state naming `name`.
async fn wait_awareness(c: &mut Client, name: &str, present: bool) {
    let needle = format!("\"name\":\"{name}\"");
    let res = c
        .wait_for("awareness", WAIT, |o, _| {
            o.awareness.values().any(|s| s.contains(&needle)) == present
        })
        .await;
    assert!(
        res.is_ok(),
        "awareness of {name} never became {}",
        if present { "present" } else { "absent" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn three_nodes_forward_to_the_owner_and_everyone_converges_with_awareness() {
    let db = TestDb::create("forward").await;
    let nodes = [
        Node::clustered(&db.url, "10", &[]),
        Node::clustered(&db.url, "10", &[]),
        Node::clustered(&db.url, "10", &[]),
    ];
    let room = "forwarded";
    // One writer per node; whichever node the first join reached owns the room, the others
    // forward. Each sees every edit live.
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(
            node.try_client(room)
                .await
                .expect("every node serves the room"),
        );
    }
    for (n, c) in clients.iter().enumerate() {
        for i in 0..20 {
            put(c, &format!("n{n}-{i:02}"));
        }
    }
    for c in &mut clients {
        wait_count(c, 60).await;
    }
    // A late joiner on another node gets the full state.
    let mut late = nodes[2].try_client(room).await.expect("late joiner");
    wait_count(&mut late, 60).await;
    // The forwarding shows in /metrics: forwarded joins and frames, and (after a ping round)
    // the link's round trip, on the nodes that forward; rooms owned on the owner.
    let mut forwarding = 0;
    for node in &nodes {
        let deadline = Instant::now() + WAIT;
        loop {
            let joins = metric(node.port, "ripple_forwarded_joins_total").await;
            if joins == 0.0 {
                assert_eq!(metric(node.port, "ripple_rooms_owned").await, 1.0, "owner");
                break;
            }
            assert!(metric(node.port, "ripple_forwarded_frames_total").await > 0.0);
            if metric(node.port, "ripple_link_rtt_microseconds").await > 0.0 {
                forwarding += 1;
                break;
            }
            assert!(Instant::now() < deadline, "no link round trip measured");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(forwarding, 2, "two of the three nodes forward");
    // Awareness from a client on node 1 reaches node 2, and goes when its socket dies.
    set_awareness(&mut clients[1], "on-node-1");
    wait_awareness(&mut clients[2], "on-node-1", true).await;
    let gone = clients.remove(1);
    drop(gone); // the socket is dropped without a close: its node must notice and tell
    wait_awareness(&mut clients[1], "on-node-1", false).await;

    // Everyone leaves; after compaction, fresh clients on every node see every edit.
    for c in clients.drain(..) {
        c.close();
    }
    late.close();
    let _ = late.wait_closed(WAIT).await;
    for node in &nodes {
        let (mut fresh, _) = node.client_when_served(room).await;
        wait_count(&mut fresh, 60).await;
        fresh.close();
        let _ = fresh.wait_closed(WAIT).await;
    }
    drop(nodes);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn a_cut_link_closes_the_forwarded_clients_and_they_converge_after_reconnecting() {
    let db = TestDb::create("linkcut").await;
    // The owner is reached by the other node through a proxy the test can cut.
    let owner_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let proxy = Cuttable::to(([127, 0, 0, 1], owner_port).into()).await;
    let advertise = format!("ws://127.0.0.1:{}", proxy.port);
    let owner = Node::start_with(
        &db.url,
        "10",
        &[
            "--cluster-secret",
            SECRET,
            "--advertise-url",
            &advertise,
            "--port",
            &owner_port.to_string(),
        ],
    );
    let other = Node::clustered(&db.url, "10", &[]);
    let room = "linkcut";
    let local = owner.try_client(room).await.expect("owner serves");
    let mut forwarded = other.try_client(room).await.expect("forwarded");
    put(&local, "before-cut");
    wait_count(&mut forwarded, 1).await;

    proxy.cut();
    let (code, reason) = forwarded
        .wait_closed(WAIT)
        .await
        .expect("the forwarded client is closed when its link breaks");
    assert_eq!(code, 1011, "{reason}");
    // Written meanwhile on both sides: the owner's client, and the forwarded client's document
    // (offline edits, as y-websocket keeps them).
    put(&local, "during-cut");
    let kept = forwarded.doc().clone();
    {
        let map = kept.get_or_insert_map("edits");
        let mut txn = kept.transact_mut();
        map.insert(&mut txn, "offline-on-other", true);
    }
    // The link cannot be made again while the proxy is cut: the client connects to the owner
    // directly (as a reconnecting client behind a load balancer may), and both converge.
    let mut back = Client::connect_with(&owner.url(room), kept)
        .await
        .expect("reconnect");
    back.synced(WAIT).await.expect("synced");
    let mut local = local;
    wait_count(&mut back, 3).await;
    wait_count(&mut local, 3).await;
    assert_eq!(keys(&back), keys(&local));
    drop((owner, other));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn a_node_cut_off_from_postgres_stops_serving_and_another_takes_over() {
    let db = TestDb::create("pgcut").await;
    let pg: std::net::SocketAddr = ([127, 0, 0, 1], 5432).into();
    let proxy = Cuttable::to(pg).await;
    let cut_url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(
        cut_url, db.url,
        "the test database URL must point at 127.0.0.1:5432"
    );
    let a = Node::clustered(&cut_url, "2", &[]);
    let b = Node::clustered(&db.url, "2", &[]);
    let room = "pgcut";
    let writer = a.try_client(room).await.expect("a serves");
    let mut observer = a.try_client(room).await.expect("observer");
    for i in 0..20 {
        put(&writer, &format!("w-{i:02}"));
    }
    wait_count(&mut observer, 20).await;
    let seen = keys(&observer);

    assert_eq!(http_status(a.port, "/readyz").await, 200);
    proxy.cut();
    // a cannot renew: it stops serving before its lease could lapse, closing its clients.
    let mut observer = observer;
    let (code, reason) = observer
        .wait_closed(WAIT)
        .await
        .expect("a closes its clients once it cannot renew");
    assert_eq!(code, 1011, "{reason}");
    // a says it cannot own rooms.
    assert_eq!(http_status(a.port, "/readyz").await, 503);
    // b takes the room over with every edit a client saw.
    let (mut after, took) = b.client_when_served(room).await;
    wait_count(&mut after, seen.len()).await;
    for k in &seen {
        assert!(
            keys(&after).contains(k),
            "{k} was seen before the cut and is gone"
        );
    }
    put(&after, "after-cut");
    wait_count(&mut after, seen.len() + 1).await;
    eprintln!("took over {took:?} after the cut (lease ttl 2 s)");
    drop((a, b));
    db.drop_db().await;
}

/// The node of `nodes` that owns `room` now, by the lease in Postgres.
async fn owner_index(db: &TestDb, room: &str, node_ids: &[&str]) -> usize {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT owner FROM ripple.leases WHERE party = 'main' AND room = $1",
            &[&room],
        )
        .await
        .expect("the room has a lease");
    let owner: String = row.get(0);
    node_ids
        .iter()
        .position(|id| *id == owner)
        .unwrap_or_else(|| panic!("owner {owner} is none of {node_ids:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn kill_9_of_the_owner_while_every_node_writes_loses_nothing_anyone_saw() {
    let db = TestDb::create("kill9fwd").await;
    let ids = ["k0", "k1", "k2"];
    let mut nodes: Vec<Node> = ids
        .iter()
        .map(|id| Node::clustered(&db.url, "2", &["--node-id", id]))
        .collect();
    let room = "kill9fwd";
    let mut writers = Vec::new();
    let mut observers = Vec::new();
    for node in &nodes {
        writers.push(node.try_client(room).await.expect("writer"));
        observers.push(node.try_client(room).await.expect("observer"));
    }
    let owner = owner_index(&db, room, &ids).await;
    for round in 0..10 {
        for (n, w) in writers.iter().enumerate() {
            put(w, &format!("n{n}-{round:02}"));
        }
    }
    // What any observer saw, on any node, was durable before it was sent.
    for o in &mut observers {
        wait_count(o, 30).await;
    }
    let mut seen: Vec<String> = observers.iter().flat_map(keys).collect();
    seen.sort();
    seen.dedup();

    nodes[owner].child.kill().expect("kill -9");
    let _ = nodes[owner].child.wait();
    let killed = Instant::now();
    // Every forwarded client on the survivors is closed (its link broke) and reconnects.
    for (n, o) in observers.iter_mut().enumerate() {
        if n != owner {
            o.wait_closed(WAIT)
                .await
                .expect("forwarded observer closed");
        }
    }
    let survivor = (owner + 1) % nodes.len();
    let (mut after, _) = nodes[survivor].client_when_served(room).await;
    let took = killed.elapsed();
    wait_count(&mut after, seen.len()).await;
    let have = keys(&after);
    for k in &seen {
        assert!(have.contains(k), "{k} was seen before the kill and is gone");
    }
    put(&after, "after-failover");
    assert_eq!(
        metric(nodes[survivor].port, "ripple_failovers_total").await,
        1.0,
        "the survivor took the room over from the dead owner"
    );
    let other = (owner + 2) % nodes.len();
    let (mut probe, _) = nodes[other].client_when_served(room).await;
    wait_count(&mut probe, seen.len() + 1).await;
    eprintln!("failover after kill -9 with forwarded writers took {took:?} (lease ttl 2 s)");
    drop(nodes);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn sigterm_of_the_owner_hands_the_room_over_with_a_reconnect() {
    let db = TestDb::create("handoff").await;
    let ids = ["h0", "h1"];
    let nodes: Vec<Node> = ids
        .iter()
        .map(|id| Node::clustered(&db.url, "10", &["--node-id", id]))
        .collect();
    let room = "handoff";
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.try_client(room).await.expect("client"));
    }
    let owner = owner_index(&db, room, &ids).await;
    let other = 1 - owner;
    for i in 0..20 {
        put(&clients[owner], &format!("e-{i:02}"));
    }
    wait_count(&mut clients[other], 20).await;

    let sigterm = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &nodes[owner].child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    // The forwarded client on the other node is told to go (1001, going away, passed on from
    // the owner's room) rather than cut...
    let (code, reason) = clients[other].wait_closed(WAIT).await.expect("closed");
    assert_eq!(code, 1001, "closed with {code} {reason}");
    // ...and its reconnect is served by the remaining node at once: the owner released the
    // lease on its way out, so no lease has to lapse.
    let (mut back, took) = nodes[other].client_when_served(room).await;
    wait_count(&mut back, 20).await;
    assert!(
        sigterm.elapsed() < Duration::from_secs(8),
        "the hand-off waited for the 10 s lease to lapse ({:?})",
        sigterm.elapsed()
    );
    eprintln!("hand-off after SIGTERM: served again in {took:?}");
    drop(nodes);
    db.drop_db().await;
}

/// The status code of `GET path` on a node.
async fn http_status(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn a_node_keeps_to_its_postgres_pool_size() {
    let db = TestDb::create("pool").await;
    let node = Node::clustered(&db.url, "10", &["--postgres-pool-size", "3"]);
    // Many rooms at once: loads, leases and appends all want connections.
    let node = &node;
    let joins = (0..24).map(|i| async move { node.try_client(&format!("pool-{i}")).await });
    let mut clients: Vec<Client> = futures_util::future::join_all(joins)
        .await
        .into_iter()
        .map(|c| c.expect("served"))
        .collect();
    for c in &clients {
        put(c, "x");
    }
    for c in &mut clients {
        wait_count(c, 1).await;
    }
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'ripple'",
            &[],
        )
        .await
        .expect("count");
    let used: i64 = row.get(0);
    assert!(
        (1..=3).contains(&used),
        "{used} connections from a node with postgres_pool_size = 3"
    );
    drop(clients);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn a_clustered_node_on_every_interface_must_say_where_it_is_reached() {
    let db = TestDb::create("advertise").await;
    let out = ripple()
        .args([
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--storage",
            &db.url,
        ])
        .args(["--cluster-secret", SECRET])
        .env("RIPPLE_LOG", "warn")
        .output()
        .expect("run ripple");
    assert!(
        !out.status.success(),
        "started without an address to advertise"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("advertise_url"), "{stderr}");
    db.drop_db().await;
}

/// One HTTP/1.1 request to a node: (status, body).
async fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres (RIPPLE_TEST_DATABASE_URL)"]
async fn any_node_answers_the_http_api_and_writes_go_through_the_owner() {
    let db = TestDb::create("api").await;
    let ids = ["api0", "api1"];
    let nodes: Vec<Node> = ids
        .iter()
        .map(|id| Node::clustered(&db.url, "10", &["--node-id", id]))
        .collect();
    let room = "api-room";
    // A client makes node 0 the owner.
    let mut client = nodes[0].try_client(room).await.expect("served");
    assert_eq!(owner_index(&db, room, &ids).await, 0);
    put(&client, "from-socket");
    wait_count(&mut client, 1).await;
    // A JSON edit through the node that does not own the room: applied by the owner, durable
    // before the answer, and seen by the owner's client.
    let edit = r#"{"ops": [{"map": "edits", "set": {"from-http-on-node-1": true}}]}"#;
    let (status, body) = http(
        nodes[1].port,
        "POST",
        &format!("/api/v1/rooms/main/{room}/json"),
        edit,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"seq\""), "{body}");
    wait_count(&mut client, 2).await;
    assert!(keys(&client).contains(&"from-http-on-node-1".to_owned()));
    // A read through node 1 sees both edits.
    let (status, body) = http(
        nodes[1].port,
        "GET",
        &format!("/api/v1/rooms/main/{room}/json?types=edits:map"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("from-socket") && body.contains("from-http-on-node-1"),
        "{body}"
    );
    // Node 0 never became a second writer: node 1 holds no lease of the room.
    assert_eq!(owner_index(&db, room, &ids).await, 0);
    drop(client);
    drop(nodes);
    db.drop_db().await;
}

/// One value of a node's `/metrics`.
async fn metric(port: u16, name: &str) -> f64 {
    let (status, body) = http(port, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}
