//! Configuration layering for `dev` and `serve`: defaults, then `ripple.toml` (the `--config`
//! file, or `./ripple.toml` if present), then `RIPPLE_*` environment variables and flags
//! (clap reads both; a flag beats its variable).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ripple_server::{Config, Durability, PersistMode};

/// Flags shared by `dev` and `serve`. Each also reads the environment variable named.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default: ./ripple.toml if it exists).
    #[arg(long, env = "RIPPLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1].
    #[arg(long, env = "RIPPLE_HOST")]
    pub host: Option<String>,
    /// Port to bind; 0 picks a free one [default: 1999].
    #[arg(long, short, env = "RIPPLE_PORT")]
    pub port: Option<u16>,
    /// Directory for embedded state [default: .ripple].
    #[arg(long, env = "RIPPLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage: `sqlite` (in the data dir), `postgres://...`, or `memory` [default: sqlite].
    #[arg(long, env = "RIPPLE_STORAGE")]
    pub storage: Option<String>,
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

/// The effective configuration.
pub fn load(args: &ServeArgs, dev: bool) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => read_file(path)?,
        None if Path::new("ripple.toml").exists() => read_file(Path::new("ripple.toml"))?,
        None => Config::default(),
    };
    if dev {
        // `ripple dev` is local by definition.
        config.host = "127.0.0.1".into();
    }
    if let Some(v) = &args.host {
        config.host = v.clone();
    }
    if let Some(v) = args.port {
        config.port = v;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &args.storage {
        config.storage = v.clone();
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
    if dev {
        // A developer mistyping a token should not lock themselves out of their own laptop.
        config.auth_throttle_attempts = 0;
    }
    Ok(config)
}
