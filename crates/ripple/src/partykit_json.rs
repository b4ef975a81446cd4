//! `partykit.json` for `ripple dev`: an app moving from PartyKit keeps its `npm run dev` and its
//! client URLs. In a folder with `partykit.json` and no `ripple.toml`, `ripple dev` listens on
//! its `port` (a `--port` flag or `RIPPLE_PORT` still wins) and says so, and names every other
//! key it found and does not use, so nothing is silently ignored. It reads nothing else from it:
//! Ripple runs no party code (y-partykit's `onConnect` is built in, and every
//! `/parties/NAME/ROOM` is served), so `main`, `parties`, `build`, `vars` and the rest have no
//! meaning here.

use std::path::Path;

use ripple_server::Config;
use tracing::{info, warn};

/// The file's name.
pub const FILE: &str = "partykit.json";

/// Where `partykit dev` keeps state unless `persist` says otherwise.
pub const DEFAULT_STATE_DIR: &str = ".partykit/state";

/// Why a key of `partykit.json` has no effect on Ripple, for the keys that deserve more than
/// "not used".
fn why_unused(key: &str) -> Option<&'static str> {
    Some(match key {
        "main" | "parties" => {
            "Ripple runs no party code: the Yjs sync is built in and every party is served"
        }
        "persist" => {
            "state lives in data_dir (.ripple); `ripple import-partykit` brings PartyKit's over"
        }
        _ => return None,
    })
}

/// What `ripple dev` takes from `partykit.json`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Its `port`, when valid.
    pub port: Option<u16>,
    /// The keys found that Ripple does not use (without `$schema`), sorted.
    pub unused: Vec<String>,
    /// Its `persist` folder, when it names one (a string).
    pub persist_dir: Option<String>,
}

/// Reads `partykit.json` text. A file that is not a JSON object is an error.
pub fn parse(text: &str) -> Result<Adopted, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{FILE} is not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("{FILE} is not a JSON object"))?;
    let mut adopted = Adopted::default();
    for (key, value) in object {
        match key.as_str() {
            "$schema" => {}
            "port" => {
                adopted.port = value.as_u64().and_then(|p| u16::try_from(p).ok());
                if adopted.port.is_none() {
                    return Err(format!("{FILE}: port {value} is not a port number"));
                }
            }
            other => {
                if other == "persist" {
                    adopted.persist_dir = value.as_str().map(str::to_owned);
                }
                adopted.unused.push(other.to_owned());
            }
        }
    }
    adopted.unused.sort();
    Ok(adopted)
}

/// Reads `dir/partykit.json` if there is one.
pub fn read(dir: &Path) -> Option<Result<Adopted, String>> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    Some(parse(&text))
}

/// Applies `./partykit.json` to `ripple dev`'s configuration, logging what it used and what it
/// did not. `port_given`: `--port` or `RIPPLE_PORT` was given (and wins). Call only when there is
/// no `ripple.toml` (that file, once written, is the one configuration).
pub fn apply_to_dev(config: &mut Config, port_given: bool) {
    let adopted = match read(Path::new(".")) {
        None => return,
        Some(Err(e)) => {
            warn!("{e}; ignoring it");
            return;
        }
        Some(Ok(a)) => a,
    };
    match adopted.port {
        Some(port) if port_given => info!(
            "{FILE} found (no ripple.toml): its port {port} is overridden by --port/RIPPLE_PORT"
        ),
        Some(port) => {
            config.port = port;
            info!("{FILE} found (no ripple.toml): listening on its port {port}");
        }
        None => info!(
            "{FILE} found (no ripple.toml): it sets no port, so ripple dev uses {}",
            config.port
        ),
    }
    // One line per reason, naming its keys.
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for key in &adopted.unused {
        let why = why_unused(key).unwrap_or(
            "PartyKit settings with no Ripple equivalent; see docs/migrating-from-partykit.md",
        );
        match by_reason.iter_mut().find(|(w, _)| *w == why) {
            Some((_, keys)) => keys.push(key),
            None => by_reason.push((why, vec![key])),
        }
    }
    for (why, keys) in by_reason {
        info!("{FILE}: not used: {} ({why})", keys.join(", "));
    }
    let state = adopted
        .persist_dir
        .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned());
    let has_state = Path::new(&state).join("party").is_dir();
    let has_ripple = config.data_dir.join(ripple_store::sqlite::DB_FILE).exists();
    if has_state && !has_ripple {
        info!(
            "PartyKit's rooms are in {state}: stop this and run `ripple import-partykit {state}` \
             to bring them over"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_taken_and_every_other_key_is_named() {
        let a = parse(
            r#"{"$schema": "x", "name": "app", "main": "partykit/server.ts", "port": 4321,
                "parties": {"diagrams": "partykit/diagrams.ts"}, "compatibilityDate": "2024-07-18",
                "persist": "tmp/pk"}"#,
        )
        .expect("parses");
        assert_eq!(a.port, Some(4321));
        assert_eq!(
            a.unused,
            ["compatibilityDate", "main", "name", "parties", "persist"]
        );
        assert_eq!(a.persist_dir.as_deref(), Some("tmp/pk"));
        assert_eq!(parse("{}"), Ok(Adopted::default()));
        assert!(parse(r#"{"port": 70000}"#).is_err());
        assert!(parse(r#"{"port": "1999"}"#).is_err());
        assert!(parse("[1]").is_err());
        assert!(parse("{").is_err());
    }
}
