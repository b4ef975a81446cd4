//! The one typed configuration of a Ripple server.
//!
//! Every key has a default; `ripple.toml`, `RIPPLE_*` environment variables and command-line
//! flags override them in that order (the binary does the layering). `ripple.example.toml` at
//! the repository root documents every key.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth_config::{AdminConfig, AuthSettings};

/// How updates are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PersistMode {
    /// Append updates while clients are connected; merge the log into one snapshot when the last
    /// client leaves or the log outgrows `compact_after_bytes`.
    #[default]
    Snapshot,
    /// Keep every update up to `history_max_bytes` / `history_max_updates`, then fold the oldest
    /// into the snapshot.
    History,
    /// Keep nothing on disk.
    None,
}

pub use ripple_core::Durability;

/// Server configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 picks a free one).
    pub port: u16,
    /// Where embedded state lives (SQLite database).
    pub data_dir: PathBuf,
    /// Storage backend: `sqlite` (in `data_dir`), `postgres://...`, or `memory`.
    pub storage: String,
    /// Persistence mode for every party without its own entry in `parties`.
    pub persist: PersistMode,
    /// Durability of accepted updates.
    pub durability: Durability,
    /// Snapshot mode: compact while clients stay connected once the log exceeds this many bytes.
    pub compact_after_bytes: u64,
    /// History mode: the most bytes of update log to keep before folding the oldest.
    pub history_max_bytes: u64,
    /// History mode: the most updates to keep before folding the oldest.
    pub history_max_updates: u64,
    /// Per-party overrides of `persist` (PartyKit's per-party `persist` option).
    pub parties: std::collections::BTreeMap<String, PartyConfig>,
    /// Largest WebSocket message accepted, in bytes (also the limit for reassembled
    /// y-pk-batch messages). Larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Largest document a room may hold, in encoded bytes. An update that could take a room's
    /// document past it is neither stored nor relayed; its sender is closed with 1008 and the
    /// room's other connections carry on. A decoded document takes about eight times its
    /// encoded size in memory, so the default (64 MiB, twice the largest message) keeps one
    /// room to about half a gigabyte.
    pub max_doc_bytes: u64,
    /// Most connections at once: WebSockets beyond it are refused with 503 at the upgrade, and
    /// the server stops accepting while that many HTTP connections wait to upgrade.
    pub max_connections: usize,
    /// Seconds a new connection has to send its request headers before it is closed.
    pub handshake_timeout_secs: f64,
    /// Most connections one room holds; more are closed with 1013.
    pub max_connections_per_room: usize,
    /// Most rooms loaded at once; joins beyond it are closed with 1013.
    pub max_rooms: usize,
    /// Longest party or room id, in bytes.
    pub max_room_id_len: usize,
    /// Frames queued for one connection before it counts as too slow and is closed (1013);
    /// the client reconnects and resyncs, so nothing is lost.
    pub outbound_queue_frames: usize,
    /// Bytes queued for one connection before it counts as too slow (same policy; one frame
    /// larger than this still goes through when nothing else is queued).
    pub outbound_queue_bytes: usize,
    /// Messages queued for one room before connections sending to it wait (backpressure).
    pub room_inbox: usize,
    /// Most awareness client ids one connection may introduce.
    pub max_awareness_per_conn: usize,
    /// Per connection: document messages (sync step 1, step 2, update) per second, refilled
    /// continuously up to `rate_doc_messages_burst`. Over it the connection is closed with
    /// 1008 and a reason naming the limit (the client reconnects and resyncs). 0: no limit.
    pub rate_doc_messages_per_sec: u32,
    /// The document-message bucket's size (how many may come at once).
    pub rate_doc_messages_burst: u32,
    /// Per connection: bytes of document updates per second (same outcome). 0: no limit.
    pub rate_update_bytes_per_sec: u64,
    /// The byte bucket's size; never less than `max_message_bytes`, so one message of the
    /// largest accepted size always fits a full bucket.
    pub rate_update_bytes_burst: u64,
    /// Per connection: awareness messages (updates and queries) per second (same outcome).
    /// 0: no limit.
    pub rate_awareness_per_sec: u32,
    /// The awareness bucket's size.
    pub rate_awareness_burst: u32,
    /// Largest awareness state (the JSON of one client id) accepted; a larger one closes the
    /// connection with 1008. 0: no limit (`max_message_bytes` still applies).
    pub max_awareness_state_bytes: usize,
    /// Failed upgrades (HTTP 401/403 from auth) one client address may cause within
    /// `auth_throttle_window_secs` before it is banned for `auth_throttle_ban_secs`: banned
    /// addresses get 429 before any auth work. IPv6 addresses count per /64. 0: off (and
    /// always off under `ripple dev`).
    pub auth_throttle_attempts: u32,
    /// The window in which failed attempts are counted, in seconds.
    pub auth_throttle_window_secs: f64,
    /// How long a banned address gets 429, in seconds.
    pub auth_throttle_ban_secs: f64,
    /// Most client addresses tracked; when full, the address tracked longest is forgotten
    /// (memory stays bounded; an attacker with that many addresses can make bans end early).
    pub auth_throttle_max_ips: usize,
    /// Address blocks never throttled (`127.0.0.0/8`, `::1`, `10.0.0.0/8`, ...): by default
    /// loopback. Behind a reverse proxy every client has the proxy's address, so list the
    /// proxy here or one attacker gets everyone banned.
    pub auth_throttle_exempt: Vec<String>,
    /// Origins allowed to open WebSockets (the `Origin` header browsers send): exact
    /// (`https://app.example.com`, `http://localhost:3000`) or one leading wildcard label
    /// (`https://*.example.com`, any subdomain); without a scheme, any scheme; without a port,
    /// the default port only. Requests without `Origin` (non-browser clients) are allowed.
    /// Others get 403. Empty: every origin is allowed.
    pub allowed_origins: Vec<String>,
    /// Seconds a room with no connections stays loaded.
    pub room_linger_secs: f64,
    /// Seconds between server pings.
    pub ping_interval_secs: f64,
    /// Seconds without any frame from a client before it is considered dead and closed (checked
    /// by its room at each ping).
    pub idle_timeout_secs: f64,
    /// Seconds `/readyz` answers 503 after a failed append (any room). Appends that succeed
    /// in other rooms meanwhile do not clear it; it clears once this long passes without a
    /// failure. 0: readiness ignores storage.
    pub storage_unready_secs: f64,
    /// Seconds the server waits for connections and rooms to finish on shutdown.
    pub shutdown_grace_secs: f64,
    /// This node's name in room leases (several nodes may share one Postgres database; each
    /// room is owned by one node at a time). Empty: `HOSTNAME-PID-RANDOM`, new at each start.
    pub node_id: String,
    /// Seconds a room's lease lasts at the database without renewal: how long a dead node's
    /// rooms stay unavailable before another node may take them over. Renewed every fifth of it;
    /// a node that cannot renew stops serving a room a fifth of it before the lease can lapse.
    pub lease_ttl_secs: f64,
    /// The secret shared by the nodes of a cluster (`RIPPLE_CLUSTER_SECRET`): it authenticates
    /// node-to-node links. With it, a node forwards the clients of a room another node owns to
    /// that node; without it, such clients are refused (1013) and links are not accepted.
    /// Never serialized.
    #[serde(skip_serializing)]
    pub cluster_secret: String,
    /// Connections to Postgres per node (one carries the group-committing writer; loads,
    /// compactions and leases share the rest). Mind the server's `max_connections` across
    /// all nodes.
    pub postgres_pool_size: usize,
    /// How the other nodes reach this one (`ws://10.0.0.5:1999`). Empty: `ws://` plus the bound
    /// address, when the host is a specific address (not 0.0.0.0 or ::).
    pub advertise_url: String,
    /// Threads running connections and rooms; 0 means one per CPU core. (Storage writes and
    /// document loads run on their own threads either way.)
    pub worker_threads: usize,
    /// Linux: a broadcast's socket writes go to the kernel in one io_uring submission instead of
    /// one `writev` per member (where io_uring is unavailable, Ripple falls back by itself).
    pub io_uring: bool,
    /// Who may open the inspector at `/`: `"admin"` (requests with the admin token; nobody
    /// without one configured), `"open"` (`ripple dev`) or `"off"`.
    pub inspector: crate::pages::InspectorAccess,
    /// Client authentication (`[auth]`). Never serialized: it may hold secrets.
    #[serde(skip_serializing)]
    pub auth: AuthSettings,
    /// The admin credential (`[admin]`). Never serialized.
    #[serde(skip_serializing)]
    pub admin: AdminConfig,
    /// Hocuspocus clients (`[hocuspocus]`): `ws://host:port/` and `/hocuspocus`.
    pub hocuspocus: HocuspocusConfig,
    /// Webhooks to the app's backend (`[hooks]`). Never serialized: it holds a secret.
    #[serde(skip_serializing)]
    pub hooks: crate::hooks::HooksConfig,
}

/// Settings for Hocuspocus sockets (`@hocuspocus/provider`; one socket, many documents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HocuspocusConfig {
    /// The party a document name's room is in.
    pub party: String,
    /// Most documents one socket may open (over ⇒ the socket is closed with 1008).
    pub max_documents_per_socket: usize,
    /// Most messages one document may queue while its authentication is decided (over ⇒ the
    /// socket is closed with 1008; the provider reconnects and resyncs).
    pub max_pre_auth_messages: usize,
    /// Most bytes one socket may queue across its documents while their authentication is
    /// decided (over ⇒ 1008).
    pub max_pre_auth_bytes: usize,
}

impl Default for HocuspocusConfig {
    fn default() -> Self {
        Self {
            party: ripple_core::DEFAULT_PARTY.into(),
            max_documents_per_socket: 64,
            max_pre_auth_messages: 256,
            max_pre_auth_bytes: 4 << 20,
        }
    }
}

/// Per-party settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartyConfig {
    /// Persistence mode for this party (left out: the global `persist`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist: Option<PersistMode>,
    /// Kinds of this party's root types (`{ content = "text", meta = "map" }`), for the HTTP
    /// API's JSON reads and edits; undeclared roots are guessed (`ripple_core::json`).
    pub types: ripple_core::json::Kinds,
    /// This party's change webhook settings (`[parties.NAME.hooks]`).
    pub hooks: crate::hooks::PartyHooks,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1999,
            data_dir: PathBuf::from(".ripple"),
            storage: "sqlite".into(),
            persist: PersistMode::Snapshot,
            durability: Durability::Strict,
            compact_after_bytes: 8 * 1024 * 1024,
            history_max_bytes: 10 * 1024 * 1024,
            history_max_updates: 100_000,
            parties: Default::default(),
            max_message_bytes: 32 * 1024 * 1024,
            max_doc_bytes: 64 * 1024 * 1024,
            max_connections: 20_000,
            handshake_timeout_secs: 10.0,
            max_connections_per_room: 1024,
            max_rooms: 10_000,
            max_room_id_len: ripple_core::room_id::DEFAULT_MAX_ROOM_ID_LEN,
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 64 * 1024 * 1024,
            room_inbox: 1024,
            max_awareness_per_conn: 16,
            // Generous for real editors: typing produces one update per keystroke (tens per
            // second at most); the burst covers an offline client's reconnect and bulk edits.
            rate_doc_messages_per_sec: 200,
            rate_doc_messages_burst: 1000,
            rate_update_bytes_per_sec: 8 * 1024 * 1024,
            rate_update_bytes_burst: 64 * 1024 * 1024,
            // Cursors driven by mouse moves can send one awareness update per frame (60/s).
            rate_awareness_per_sec: 60,
            rate_awareness_burst: 600,
            max_awareness_state_bytes: 64 * 1024,
            // Hocuspocus's throttle defaults: 15 attempts per 60 s, then a 5-minute ban.
            auth_throttle_attempts: 15,
            auth_throttle_window_secs: 60.0,
            auth_throttle_ban_secs: 300.0,
            auth_throttle_max_ips: 10_000,
            auth_throttle_exempt: vec!["127.0.0.0/8".into(), "::1".into()],
            allowed_origins: Vec::new(),
            room_linger_secs: 5.0,
            ping_interval_secs: 15.0,
            idle_timeout_secs: 45.0,
            storage_unready_secs: 10.0,
            shutdown_grace_secs: 10.0,
            worker_threads: 0,
            io_uring: true,
            node_id: String::new(),
            lease_ttl_secs: 10.0,
            inspector: Default::default(),
            cluster_secret: String::new(),
            postgres_pool_size: 8,
            advertise_url: String::new(),
            auth: AuthSettings::default(),
            admin: AdminConfig::default(),
            hocuspocus: HocuspocusConfig::default(),
            hooks: Default::default(),
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Config {
    /// The persistence mode of `party`.
    pub fn persist_for(&self, party: &str) -> PersistMode {
        self.parties
            .get(party)
            .and_then(|p| p.persist)
            .unwrap_or(self.persist)
    }

    /// Room lease timing (see `lease_ttl_secs`).
    pub fn lease_times(&self) -> ripple_core::lease::LeaseTimes {
        let ttl = secs(self.lease_ttl_secs).max(Duration::from_millis(500));
        ripple_core::lease::LeaseTimes {
            ttl,
            renew_every: ttl / 5,
            margin: ttl / 5,
        }
    }

    /// This node's id in leases: `node_id`, or one made from the host name, the pid and a
    /// random part (unique per start, so a restarted node never mistakes an old lease for its
    /// own).
    pub fn resolved_node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_owned());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{host}-{}-{nanos:08x}", std::process::id())
    }

    /// Whether any party keeps anything on disk (the global mode or a per-party override).
    pub fn persists_anything(&self) -> bool {
        self.persist != PersistMode::None
            || self
                .parties
                .values()
                .any(|p| p.persist.is_some_and(|m| m != PersistMode::None))
    }

    /// The declared root types of `party` (`[parties.NAME] types`).
    pub fn types_for(&self, party: &str) -> ripple_core::json::Kinds {
        self.parties
            .get(party)
            .map(|p| p.types.clone())
            .unwrap_or_default()
    }

    /// How long an empty room stays loaded.
    pub fn room_linger(&self) -> Duration {
        secs(self.room_linger_secs)
    }

    /// Deadline for a new connection's request headers.
    pub fn handshake_timeout(&self) -> Duration {
        secs(self.handshake_timeout_secs)
    }

    /// Interval between pings.
    pub fn ping_interval(&self) -> Duration {
        secs(self.ping_interval_secs)
    }

    /// Silence after which a connection is reaped.
    pub fn idle_timeout(&self) -> Duration {
        secs(self.idle_timeout_secs)
    }

    /// How long a failed append keeps `/readyz` at 503.
    pub fn storage_unready(&self) -> Duration {
        secs(self.storage_unready_secs)
    }

    /// Bound on the shutdown drain.
    pub fn shutdown_grace(&self) -> Duration {
        secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let cfg: Config = toml_like(
            r#"{"port": 8080, "persist": "history", "parties": {"scratch": {"persist": "none"},
                "docs": {"types": {"content": "text", "meta": "map"}}}}"#,
        );
        assert_eq!(cfg.port, 8080);
        assert_eq!(cfg.persist_for("main"), PersistMode::History);
        assert_eq!(cfg.persist_for("scratch"), PersistMode::None);
        assert_eq!(cfg.persist_for("docs"), PersistMode::History, "inherited");
        assert_eq!(
            cfg.types_for("docs").get("meta"),
            Some(&ripple_core::json::Kind::Map)
        );
        assert!(cfg.types_for("main").is_empty());
        assert_eq!(cfg.max_message_bytes, Config::default().max_message_bytes);
        assert!(serde_json::from_str::<Config>(r#"{"prot": 1}"#).is_err());
    }

    #[test]
    fn every_key_is_documented_in_the_example_config() {
        let example = include_str!("../../../ripple.example.toml");
        let value = serde_json::to_value(Config::default()).expect("serializes");
        let keys = value.as_object().expect("an object");
        for key in keys.keys() {
            let documented = example.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[{key}."))
                    || l.starts_with(&format!("[{key}]"))
            });
            assert!(documented, "ripple.example.toml does not document {key:?}");
        }
    }

    fn toml_like(json: &str) -> Config {
        serde_json::from_str(json).expect("valid config")
    }
}
