//! Configuration layering: defaults, then `ripple.toml` (the `--config` file, or
//! `./ripple.toml` if present), then `RIPPLE_*` environment variables and flags (clap reads
//! both; a flag beats its variable). Each command takes only the flags it uses: the storage
//! flags ([`StorageArgs`]) for every command that opens storage, the server flags
//! ([`ServerArgs`]) on top for `dev` and `serve`. `dev` binds 127.0.0.1 unless its `--host`
//! flag says otherwise (neither `RIPPLE_HOST` nor ripple.toml moves it).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ripple_server::{Config, Durability, PersistMode};

/// Where stored rooms are: the flags of every command that opens storage (`dev`, `serve` and
/// the maintenance commands).
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Configuration file (default: ./ripple.toml if it exists).
    #[arg(long, env = "RIPPLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for embedded state [default: .ripple].
    #[arg(long, env = "RIPPLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage: `sqlite` (in the data dir), `postgres://...`, or `memory` [default: sqlite].
    #[arg(long, env = "RIPPLE_STORAGE")]
    pub storage: Option<String>,
}

/// The server's flags, shared by `dev` and `serve` (each adds its own `--host`).
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Port to bind; 0 picks a free one [default: 1999].
    #[arg(long, short, env = "RIPPLE_PORT")]
    pub port: Option<u16>,
    /// Persistence mode: snapshot, history or none [default: snapshot].
    #[arg(long, env = "RIPPLE_PERSIST", value_parser = parse_persist)]
    pub persist: Option<PersistMode>,
    /// Durability: strict (synced before broadcast) or relaxed [default: strict].
    #[arg(long, env = "RIPPLE_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Largest accepted WebSocket message in bytes [default: 33554432].
    #[arg(long, env = "RIPPLE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Seconds an empty room stays loaded [default: 5].
    #[arg(long, env = "RIPPLE_ROOM_LINGER_SECS")]
    pub room_linger_secs: Option<f64>,
    /// Threads for connections and rooms; 0 = one per core [default: 0].
    #[arg(long, env = "RIPPLE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// This node's name in room leases (nodes sharing one Postgres) [default: HOST-PID-RANDOM].
    #[arg(long, env = "RIPPLE_NODE_ID")]
    pub node_id: Option<String>,
    /// Seconds a room's lease lasts without renewal: how soon a dead node's rooms move [default: 10].
    #[arg(long, env = "RIPPLE_LEASE_TTL_SECS")]
    pub lease_ttl_secs: Option<f64>,
    /// How the other nodes of a cluster reach this one, e.g. ws://10.0.0.5:1999 [default: ws://
    /// plus the bound address when it is specific].
    #[arg(long, env = "RIPPLE_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The secret shared by a cluster's nodes; it authenticates node-to-node links (enables
    /// forwarding clients to a room's owner).
    #[arg(long, env = "RIPPLE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Connections to Postgres per node [default: 8].
    #[arg(long, env = "RIPPLE_POSTGRES_POOL_SIZE")]
    pub postgres_pool_size: Option<usize>,
}

/// `ripple serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind [default: 127.0.0.1; 0.0.0.0 for every interface].
    #[arg(long, env = "RIPPLE_HOST")]
    pub host: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `ripple dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address to bind [default: 127.0.0.1]. Only this flag changes it (not RIPPLE_HOST or
    /// ripple.toml's host): dev admits every client, so listening beyond this machine must be
    /// asked for, and is warned about.
    #[arg(long)]
    pub host: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn parse_persist(s: &str) -> Result<PersistMode, String> {
    match s {
        "snapshot" => Ok(PersistMode::Snapshot),
        "history" => Ok(PersistMode::History),
        "none" => Ok(PersistMode::None),
        _ => Err(format!("expected snapshot, history or none, got {s:?}")),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "strict" => Ok(Durability::Strict),
        "relaxed" => Ok(Durability::Relaxed),
        _ => Err(format!("expected strict or relaxed, got {s:?}")),
    }
}

fn read_file(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// The configuration file (or the defaults) with the storage flags applied: all that the
/// maintenance commands need.
pub fn load_storage(args: &StorageArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => read_file(path)?,
        None if Path::new("ripple.toml").exists() => read_file(Path::new("ripple.toml"))?,
        None => Config::default(),
    };
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &args.storage {
        config.storage = v.clone();
    }
    Ok(config)
}

/// The effective configuration of `serve`.
pub fn load_serve(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = load_server(&args.server)?;
    if let Some(v) = &args.host {
        config.host = v.clone();
    }
    Ok(config)
}

/// The effective configuration of `dev`: local unless `--host` says otherwise.
pub fn load_dev(args: &DevArgs) -> anyhow::Result<Config> {
    let mut config = load_server(&args.server)?;
    if args.server.storage.config.is_none() && !Path::new("ripple.toml").exists() {
        crate::partykit_json::apply_to_dev(&mut config, args.server.port.is_some());
    }
    config.host = args.host.clone().unwrap_or_else(|| "127.0.0.1".into());
    // A developer mistyping a token should not lock themselves out of their own laptop.
    config.auth_throttle_attempts = 0;
    // The inspector is open on the developer's own machine (unless turned off).
    if config.inspector == ripple_server::InspectorAccess::Admin {
        config.inspector = ripple_server::InspectorAccess::Open;
    }
    Ok(config)
}

fn load_server(args: &ServerArgs) -> anyhow::Result<Config> {
    let mut config = load_storage(&args.storage)?;
    if let Some(v) = args.port {
        config.port = v;
    }
    if let Some(v) = args.persist {
        config.persist = v;
    }
    if let Some(v) = args.durability {
        config.durability = v;
    }
    if let Some(v) = args.max_message_bytes {
        config.max_message_bytes = v;
    }
    if let Some(v) = args.room_linger_secs {
        config.room_linger_secs = v;
    }
    if let Some(v) = args.worker_threads {
        config.worker_threads = v;
    }
    if let Some(v) = &args.node_id {
        config.node_id = v.clone();
    }
    if let Some(v) = args.lease_ttl_secs {
        config.lease_ttl_secs = v;
    }
    if let Some(v) = &args.advertise_url {
        config.advertise_url = v.clone();
    }
    if let Some(v) = &args.cluster_secret {
        config.cluster_secret = v.clone();
    }
    if let Some(v) = args.postgres_pool_size {
        config.postgres_pool_size = v;
    }
    Ok(config)
}
