//! The `ripple` binary: `dev` and `serve` run the server; the other subcommands operate on
//! stored rooms and tokens. Configuration layering lives in [`settings`].

mod admin;
mod auth;
mod partykit;
mod partykit_json;
mod settings;
mod token;

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ripple_core::{MemoryStore, Store};
use ripple_server::{Config, Server};
use tokio::net::TcpListener;
use tracing::{info, warn};

use settings::{DevArgs, ServeArgs};

/// Ripple: a real-time collaboration server for Yjs.
///
/// Unmodified y-websocket and y-partykit clients connect to ws://HOST:PORT/ROOM or
/// ws://HOST:PORT/parties/main/ROOM.
#[derive(Debug, Parser)]
#[command(name = "ripple", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local development server on 127.0.0.1:1999 with state in ./.ripple/, admitting every
    /// client (only `--host` moves it off 127.0.0.1, with a warning).
    Dev(DevArgs),
    /// Run the production server (settings from ripple.toml, RIPPLE_* variables and flags).
    Serve(ServeArgs),
    /// Print one HS256 token for development and scripts (alone on the last line of stdout).
    Token(token::TokenArgs),
    /// List stored rooms with their size, update count and last change.
    Rooms(admin::RoomsArgs),
    /// Write a room's state as one Yjs update (or --json of its root types).
    Export(admin::ExportArgs),
    /// Append a Yjs update from a file to a room (best done while the room is not loaded).
    Import(admin::ImportArgs),
    /// Fold the update log of one room (or all) into its snapshot.
    Compact(admin::MaintainArgs),
    /// Import PartyKit rooms: a dev server's state folder (.partykit/state), or --from-url.
    ImportPartykit(partykit::ImportPartykitArgs),
    /// Check stored records (checksums, decoding); --salvage quarantines bad ones.
    Fsck(admin::MaintainArgs),
}

fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev(args) => {
            init_logging(true);
            if std::env::var_os("RIPPLE_HOST").is_some() && args.host.is_none() {
                info!("RIPPLE_HOST is for `ripple serve`; `ripple dev` binds 127.0.0.1 unless --host is given");
            }
            run_server(settings::load_dev(&args)?, true)
        }
        Command::Serve(args) => {
            init_logging(false);
            run_server(settings::load_serve(&args)?, false)
        }
        Command::Token(args) => token::run(args),
        Command::Rooms(args) => runtime(0)?.block_on(admin::rooms(args)),
        Command::Export(args) => runtime(0)?.block_on(admin::export(args)),
        Command::Import(args) => runtime(0)?.block_on(admin::import(args)),
        Command::Compact(args) => runtime(0)?.block_on(admin::compact(args)),
        Command::ImportPartykit(args) => {
            if !runtime(0)?.block_on(partykit::run(args))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Fsck(args) => {
            if !runtime(0)?.block_on(admin::fsck(args))? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `dev` and `serve`: the configuration decides the runtime's size, so it is read first.
fn run_server(config: Config, dev: bool) -> anyhow::Result<()> {
    runtime(config.worker_threads)?.block_on(serve(config, dev))
}

fn init_logging(dev: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RIPPLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if dev {
        builder.compact().without_time().init();
    } else {
        builder.init();
    }
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    // Memory only when nothing is to be kept: a party with its own persisting mode under a
    // global `persist = "none"` still needs real storage (rooms in "none" parties never touch it).
    if !config.persists_anything() {
        return Ok(Arc::new(MemoryStore::new()));
    }
    let pool = config.postgres_pool_size;
    ripple_store::open_store(&config.storage, &config.data_dir, config.durability, pool)
        .await
        .with_context(|| format!("opening storage {:?}", storage_label(&config.storage)))
}

/// The storage spec without credentials, for logs.
fn storage_label(spec: &str) -> &str {
    spec.split_once("://").map_or(spec, |(scheme, _)| scheme)
}

async fn serve(mut config: Config, dev: bool) -> anyhow::Result<()> {
    auth::apply_env(&mut config)?;
    let authorizer = auth::authorizer(&config, dev)?;
    // One process owns an embedded data directory; held until this function returns. (A
    // server that keeps nothing opens no directory and takes no lock.)
    let _dir_lock = if config.persists_anything() && ripple_store::is_embedded(&config.storage) {
        Some(ripple_store::DataDirLock::acquire(&config.data_dir, true)?)
    } else {
        None
    };
    let store = open_store(&config).await?;
    let addr = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    info!(
        persist = ?config.persist,
        storage = storage_label(&config.storage),
        data_dir = %config.data_dir.display(),
        "ripple {} starting",
        env!("CARGO_PKG_VERSION")
    );
    if dev && !local.ip().is_loopback() && matches!(config.auth.mode, ripple_auth::AuthConfig::None)
    {
        // `serve` warns about open auth anyway; `dev` says it quietly, so say it loudly here.
        warn!(
            "ripple dev is listening on {local}, beyond this machine, with AUTHENTICATION OFF: \
             anyone who can reach this address can read and write every room. Use `ripple serve` \
             with auth to share a server, or leave out --host to stay on 127.0.0.1."
        );
    }
    let shutdown = shutdown_signal();
    // The one line on stdout: scripts and tests wait for it.
    println!("ripple listening on http://{local}");
    std::io::stdout().flush().ok();
    if dev {
        info!(
            "connect WebsocketProvider('ws://{local}', ROOM) or YPartyKitProvider('{local}', ROOM); Ctrl-C stops"
        );
        info!("in a browser: http://{local}/ (the inspector), http://{local}/demo/welcome (a shared editor)");
    }
    let mut server = Server::new(config, store);
    server.auth = authorizer;
    server.run(listener, shutdown).await.context("serving")?;
    info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (`docker stop` sends SIGTERM). The handlers are installed
/// when this is called, not when the future is first polled: a script that signals the server
/// right after its listening line must stop it, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            async fn recv(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            let (int, term) = streams;
            tokio::select! {
                _ = recv(int) => {},
                _ = recv(term) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
