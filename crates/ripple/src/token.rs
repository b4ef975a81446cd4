//! `ripple token`: mints one HS256 token for development and scripts, printed alone on the last
//! line of stdout, e.g. `ripple token --secret S --room 'doc-*' --access write --ttl 1h`.
//! A server started with the same secret (`RIPPLE_AUTH_JWT_SECRET`, or `[auth] mode = "jwt"`
//! with `secret`) admits it to the rooms it names.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use ripple_auth::{mint_hs256, parse_duration, Access};

/// Flags of `ripple token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The HMAC secret the server verifies with.
    #[arg(long, env = "RIPPLE_AUTH_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// A room pattern the token opens: `doc-*`, `diagram-42`, or `PARTY:ROOM`. Repeat for more.
    #[arg(long = "room", value_name = "PATTERN", required = true)]
    rooms: Vec<String>,
    /// Access in those rooms: `read` or `write`.
    #[arg(long, default_value = "write", value_parser = parse_access)]
    access: Access,
    /// Lifetime: `90s`, `30m`, `1h`, `2d`, `1h30m`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: Option<String>,
}

fn parse_access(s: &str) -> Result<Access, String> {
    s.parse()
        .map_err(|_| format!("expected read or write, got {s:?}"))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    match parse_duration(s) {
        Ok(d) if d.as_secs() == 0 => Err("the token must live at least 1s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Prints the token.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    if args.secret.is_empty() {
        bail!("the secret is empty");
    }
    if args.rooms.iter().any(String::is_empty) {
        bail!("--room must not be empty");
    }
    let token = mint_hs256(
        args.secret.as_bytes(),
        &args.rooms,
        args.access,
        args.ttl,
        args.sub.as_deref(),
    );
    println!("{token}");
    Ok(())
}
