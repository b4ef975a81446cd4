//! The Ripple server: an HTTP/WebSocket front ([`http`]), one connection task per socket
//! ([`connection`]), one actor per loaded room ([`room`]) and a registry actor that starts and
//! retires them ([`registry`]). The entry point is [`run`].

mod api;
pub mod auth;
mod auth_config;
pub mod closer;
mod cluster;
pub mod config;
mod connection;
mod hocuspocus;
pub mod hooks;
mod http;
mod listener;
mod member;
mod ops;
mod origin;
mod pages;
mod peer;
mod quota;
mod registry;
mod room;
pub mod stats;
mod throttle;
pub mod token_auth;
mod uring;

use std::future::Future;
use std::sync::Arc;

use ripple_core::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use auth::{AllowAll, Authorize};
pub use config::{Config, Durability, PersistMode};
pub use pages::InspectorAccess;
pub use stats::Stats;
pub use token_auth::TokenAuth;

/// What every connection and room shares: configuration, storage, auth, counters, the
/// shutdown signal. Read-only after start; no locks.
pub(crate) struct ServerCtx {
    pub(crate) config: Arc<Config>,
    pub(crate) auth: Arc<dyn Authorize>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) registry: registry::Registry,
    /// Room operations without a socket (HTTP API, inspector): through the room actors.
    pub(crate) ops: ops::RoomOps,
    /// This node's cluster links, if it is part of a cluster.
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
    /// This node's id (leases, forwarded requests).
    pub(crate) node_id: Arc<str>,
    /// An HTTP client, for API requests forwarded to a room's owner.
    pub(crate) http: reqwest::Client,
    /// Storage, for listings of stored rooms (every write goes through a room actor).
    pub(crate) store: Arc<dyn Store>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Failed-auth throttling per client address (`auth_throttle_*`).
    pub(crate) throttle: throttle::AuthThrottle,
    /// The compiled `allowed_origins`.
    pub(crate) origins: origin::OriginPolicy,
}

/// The pieces a server is made of.
pub struct Server {
    /// Configuration.
    pub config: Config,
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// Upgrade-time authorization.
    pub auth: Arc<dyn Authorize>,
    /// Counters; pass your own to observe them from outside (tests do).
    pub stats: Arc<Stats>,
}

impl Server {
    /// A server with `config`, storage `store`, and everyone admitted.
    pub fn new(config: Config, store: Arc<dyn Store>) -> Self {
        Self {
            config,
            store,
            auth: Arc::new(AllowAll),
            stats: Arc::new(Stats::default()),
        }
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting, closes every
    /// connection with 1001 "going away", lets rooms finish their writes and compaction, and
    /// returns (after at most `shutdown_grace_secs` of draining).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        uring::set_enabled(self.config.io_uring);
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let config = Arc::new(self.config);
        let hooks = Arc::new(
            hooks::Hooks::new(&config, self.stats.clone()).map_err(std::io::Error::other)?,
        );
        let node_id: Arc<str> = config.resolved_node_id().into();
        let env = Arc::new(room::RoomEnv {
            hooks: hooks.clone(),
            config: config.clone(),
            node_id: node_id.clone(),
            store: self.store.clone(),
            stats: self.stats.clone(),
            shutdown: token.clone(),
            cluster: cluster::Cluster::new(
                node_id.clone(),
                &config.cluster_secret,
                self.store.clone(),
                self.stats.clone(),
                token.clone(),
            ),
        });
        if env.cluster.is_some() {
            let url = advertise_url(&config, &listener)?;
            self.store
                .advertise(&node_id, &url)
                .await
                .map_err(std::io::Error::other)?;
            info!(node = %node_id, %url, "cluster: this node forwards the clients of rooms it does not own to their owner");
        } else if self.store.shared() {
            warn!("storage is shared but no cluster secret is set (RIPPLE_CLUSTER_SECRET): clients of rooms another node owns are refused with 1013, not forwarded");
        }
        let origins = origin::OriginPolicy::new(&config.allowed_origins);
        for entry in &origins.invalid {
            warn!(
                entry,
                "allowed_origins: not an origin ([scheme://]host[:port]); it matches nothing"
            );
        }
        for entry in throttle::AuthThrottle::invalid_exemptions(&config) {
            warn!(
                entry,
                "auth_throttle_exempt: not an address block (ADDR or ADDR/BITS); ignored"
            );
        }
        let store = self.store.clone();
        let cluster = env.cluster.clone();
        let registry = registry::Registry::start(env, tracker.clone());
        let ctx = Arc::new(ServerCtx {
            ops: ops::RoomOps::new(registry.clone()),
            cluster,
            node_id: node_id.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .map_err(std::io::Error::other)?,
            store,
            throttle: throttle::AuthThrottle::new(&config),
            origins,
            config: config.clone(),
            auth: self.auth,
            stats: self.stats,
            registry,
            shutdown: token.clone(),
            tracker: tracker.clone(),
        });
        if hooks.has_change_hook() {
            tracker.spawn(hooks::run_changes(hooks, ctx.ops.clone(), token.clone()));
        }
        let app = http::router(ctx);
        let accept = listener::serve(
            listener,
            app,
            config.max_connections,
            config.handshake_timeout(),
            token.clone(),
        );
        tokio::pin!(accept);
        tokio::select! {
            _ = &mut accept => {}
            _ = shutdown => {
                info!("shutting down: closing connections");
                token.cancel();
                accept.await;
            }
        }
        token.cancel();
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace(), tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown grace period ended with work still running");
        }
        Ok(())
    }
}

/// How the other nodes reach this one: `advertise_url`, or `ws://` plus the bound address when
/// the host is a specific address.
fn advertise_url(config: &Config, listener: &TcpListener) -> std::io::Result<String> {
    if !config.advertise_url.is_empty() {
        return Ok(config.advertise_url.clone());
    }
    let addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        return Err(std::io::Error::other(format!(
            "cluster: bound to {addr}, so the other nodes cannot be told where this one is; set advertise_url (RIPPLE_ADVERTISE_URL, e.g. ws://10.0.0.5:{})",
            addr.port()
        )));
    }
    Ok(format!("ws://{addr}"))
}
