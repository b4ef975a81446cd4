//! Webhooks to the app's backend (`[hooks]`).
//!
//! **Load hook** (`load_url`): when a room with no stored state is first loaded, Ripple POSTs
//! `{"party", "room"}` and applies the answer before any client syncs: `200` with a Yjs v1
//! update body seeds the room (the update is stored first, so it is never asked for again), `204`
//! (or an empty `200`) starts it empty. It is never called for a room that has state. A failure
//! (connection error, timeout `load_timeout`, another status, a body that is not a Yjs update)
//! stores nothing and the room's joiners are closed with 1013: they retry, and the room is never
//! created empty and later saved over real content.
//!
//! **Change webhook** (`change_url`, per party overridable in `[parties.NAME.hooks]`): after a
//! room's edits settle (`change_debounce` after the last one, at most `change_max_wait` after the
//! first), Ripple POSTs y-partykit's callback body `{"room", "data": {NAME: {"type", "content"}}}`
//! for the roots named in `change_objects`, plus `party`, `seq` (the last stored sequence number
//! it covers) and, with `change_include_state`, `state` (the whole document, base64). A non-2xx
//! answer or a timeout (`change_timeout`) is retried with exponential backoff (0.25 s doubling,
//! at most 30 s) until `change_max_attempts` or `change_max_age`, then logged and counted
//! (`ripple_hook_change_dropped_total`). Delivery is at least once: a receiver drops a `seq` it
//! has already seen or passed. The room never waits: after each durable append it only records
//! "room R changed up to seq N" in a map (one entry per room, so bounded by the rooms) and wakes
//! one delivery task. A room that unloads (its last client left, or SIGTERM) hands over its final
//! state and its change is sent at once; the server's shutdown waits for these deliveries within
//! `shutdown_grace_secs`.
//!
//! Requests are signed like the auth webhook: `X-Ripple-Signature: t=<unix>,v1=<hex HMAC-SHA256
//! of "<t>.<body>">` with `[hooks] secret` (or `secret_env`); verify with
//! `ripple_auth::verify_webhook_signature`. Redirects are not followed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use ripple_auth::Secret;
use ripple_core::json::{Kind, Kinds};
use ripple_core::lease::Epoch;
use ripple_core::{RoomKey, Store, StoredRoom};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::ops::RoomOps;
use crate::stats::{inc, Stats};

/// `[hooks]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Called when a room with no stored state is first loaded (empty: no load hook).
    pub load_url: String,
    /// How long the load hook may take (including reading its answer).
    #[serde(deserialize_with = "duration")]
    pub load_timeout: Duration,
    /// The signing key of every hook request; or `secret_env`.
    pub secret: Option<Secret>,
    /// An environment variable holding the signing key.
    pub secret_env: Option<String>,
    /// Called after a room's edits settle (empty: no change webhook).
    pub change_url: String,
    /// Quiet time after the last edit before the change webhook is called.
    #[serde(deserialize_with = "duration")]
    pub change_debounce: Duration,
    /// Longest time after the first unsent edit before it is called, even if edits go on.
    #[serde(deserialize_with = "duration")]
    pub change_max_wait: Duration,
    /// How long one call may take.
    #[serde(deserialize_with = "duration")]
    pub change_timeout: Duration,
    /// The roots sent in `data`, with their kinds (`{ content = "text", meta = "map" }`).
    pub change_objects: Kinds,
    /// Also send the whole document as `state` (base64 of a Yjs v1 update).
    pub change_include_state: bool,
    /// Attempts per change before it is given up (logged and counted).
    pub change_max_attempts: u32,
    /// Age of an unsent change after which it is given up.
    #[serde(deserialize_with = "duration")]
    pub change_max_age: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            load_url: String::new(),
            load_timeout: Duration::from_secs(5),
            secret: None,
            secret_env: None,
            change_url: String::new(),
            change_debounce: Duration::from_secs(2),
            change_max_wait: Duration::from_secs(10),
            change_timeout: Duration::from_secs(5),
            change_objects: Kinds::new(),
            change_include_state: false,
            change_max_attempts: 10,
            change_max_age: Duration::from_secs(600),
        }
    }
}

/// `[parties.NAME.hooks]`: a party's own change webhook settings (each left out: `[hooks]`'s).
/// `change_url = ""` turns the change webhook off for the party.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartyHooks {
    /// The party's change webhook URL.
    pub change_url: Option<String>,
    /// See [`HooksConfig::change_debounce`].
    #[serde(deserialize_with = "opt_duration", skip_serializing)]
    pub change_debounce: Option<Duration>,
    /// See [`HooksConfig::change_max_wait`].
    #[serde(deserialize_with = "opt_duration", skip_serializing)]
    pub change_max_wait: Option<Duration>,
    /// See [`HooksConfig::change_objects`].
    pub change_objects: Option<Kinds>,
    /// See [`HooksConfig::change_include_state`].
    pub change_include_state: Option<bool>,
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A duration as `"5s"`, `"250ms"` ... or whole seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => ripple_auth::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Why the hooks configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    /// A setting is wrong.
    #[error("[hooks] {0}")]
    Invalid(String),
}

/// One party's resolved change webhook.
#[derive(Debug, Clone)]
struct ChangeSettings {
    url: reqwest::Url,
    debounce: Duration,
    max_wait: Duration,
    timeout: Duration,
    objects: Kinds,
    include_state: bool,
    max_attempts: u32,
    max_age: Duration,
}

/// A room's unsent change.
#[derive(Debug)]
struct Change {
    /// The first and the last edit it covers.
    first: Instant,
    last: Instant,
    /// The last stored sequence number it covers.
    seq: u64,
    /// The room unloaded: send now (with `state`).
    flush: bool,
    /// The room's final state, handed over when it unloaded.
    state: Option<Bytes>,
    /// Failed attempts so far, and when to try again.
    attempts: u32,
    retry_at: Option<Instant>,
}

impl Change {
    fn new(seq: u64, now: Instant) -> Self {
        Self {
            first: now,
            last: now,
            seq,
            flush: false,
            state: None,
            attempts: 0,
            retry_at: None,
        }
    }

    fn due(&self, s: &ChangeSettings, shutting_down: bool) -> Instant {
        match self.retry_at {
            Some(at) => at,
            None if self.flush || shutting_down => self.last,
            None => (self.last + s.debounce).min(self.first + s.max_wait),
        }
    }
}

#[derive(Default)]
struct Pending {
    rooms: HashMap<RoomKey, Change>,
    in_flight: HashSet<RoomKey>,
}

/// Most change deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 32;

/// Bound on a hook's answer to a change delivery (it is read and dropped).
const MAX_CHANGE_ANSWER: usize = 64 * 1024;

/// The hooks a server calls, built once at start.
pub(crate) struct Hooks {
    client: Option<reqwest::Client>,
    secret: Vec<u8>,
    load: Option<reqwest::Url>,
    load_timeout: Duration,
    /// The change webhook of parties without their own settings, and of each party with them
    /// (`None`: off for that party).
    change: Option<ChangeSettings>,
    party_change: BTreeMap<String, Option<ChangeSettings>>,
    pending: Mutex<Pending>,
    wake: Notify,
    stats: Arc<Stats>,
}

fn parse_url(what: &str, s: &str) -> Result<reqwest::Url, HooksError> {
    let url = reqwest::Url::parse(s).map_err(|e| HooksError::Invalid(format!("{what}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HooksError::Invalid(format!("{what} must be http(s)")));
    }
    Ok(url)
}

impl Hooks {
    /// No hooks.
    pub(crate) fn none(stats: Arc<Stats>) -> Self {
        Self {
            client: None,
            secret: Vec::new(),
            load: None,
            load_timeout: Duration::ZERO,
            change: None,
            party_change: BTreeMap::new(),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            stats,
        }
    }

    /// The hooks `config` asks for (reads `secret_env` now).
    pub(crate) fn new(full: &Config, stats: Arc<Stats>) -> Result<Self, HooksError> {
        let config = &full.hooks;
        let change_for = |p: Option<&PartyHooks>| -> Result<Option<ChangeSettings>, HooksError> {
            let url = p
                .and_then(|p| p.change_url.as_deref())
                .unwrap_or(&config.change_url);
            if url.is_empty() {
                return Ok(None);
            }
            let s = ChangeSettings {
                url: parse_url("change_url", url)?,
                debounce: p
                    .and_then(|p| p.change_debounce)
                    .unwrap_or(config.change_debounce),
                max_wait: p
                    .and_then(|p| p.change_max_wait)
                    .unwrap_or(config.change_max_wait),
                timeout: config.change_timeout,
                objects: p
                    .and_then(|p| p.change_objects.clone())
                    .unwrap_or_else(|| config.change_objects.clone()),
                include_state: p
                    .and_then(|p| p.change_include_state)
                    .unwrap_or(config.change_include_state),
                max_attempts: config.change_max_attempts.max(1),
                max_age: config.change_max_age,
            };
            if s.timeout.is_zero() {
                return Err(HooksError::Invalid("change_timeout must be > 0".into()));
            }
            Ok(Some(s))
        };
        let change = change_for(None)?;
        let mut party_change = BTreeMap::new();
        for (party, p) in &full.parties {
            if p.hooks != PartyHooks::default() {
                party_change.insert(party.clone(), change_for(Some(&p.hooks))?);
            }
        }
        let any_change = change.is_some() || party_change.values().any(Option::is_some);
        if config.load_url.is_empty() && !any_change {
            return Ok(Self::none(stats));
        }
        let load = if config.load_url.is_empty() {
            None
        } else {
            Some(parse_url("load_url", &config.load_url)?)
        };
        let secret = match (&config.secret, &config.secret_env) {
            (Some(_), Some(_)) => {
                return Err(HooksError::Invalid(
                    "set either secret or secret_env, not both".into(),
                ))
            }
            (Some(s), None) => s.expose().to_vec(),
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => v.into_bytes(),
                _ => return Err(HooksError::Invalid(format!("secret_env: {var} is not set"))),
            },
            (None, None) => {
                return Err(HooksError::Invalid(
                    "hooks need secret or secret_env (the request signing key)".into(),
                ))
            }
        };
        if load.is_some() && config.load_timeout.is_zero() {
            return Err(HooksError::Invalid("load_timeout must be > 0".into()));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ripple/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HooksError::Invalid(format!("http client: {e}")))?;
        Ok(Self {
            client: Some(client),
            secret,
            load,
            load_timeout: config.load_timeout,
            change,
            party_change,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            stats,
        })
    }

    fn change_settings(&self, party: &str) -> Option<&ChangeSettings> {
        match self.party_change.get(party) {
            Some(s) => s.as_ref(),
            None => self.change.as_ref(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Held for map updates only, never across an await or an encode.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room `key` stored its changes up to `seq` (called by its actor after a durable
    /// append; never waits).
    pub(crate) fn changed(&self, key: &RoomKey, seq: u64) {
        if self.change_settings(key.party()).is_none() {
            return;
        }
        let now = Instant::now();
        {
            let mut p = self.lock();
            match p.rooms.get_mut(key) {
                Some(c) => {
                    // A newer change supersedes a retry: it is sent with fresh state.
                    c.last = now;
                    c.seq = c.seq.max(seq);
                    c.state = None;
                    c.attempts = 0;
                    c.retry_at = None;
                }
                None => {
                    p.rooms.insert(key.clone(), Change::new(seq, now));
                }
            }
        }
        self.wake.notify_one();
    }

    /// The room `key` unloads: an unsent change of it is sent now, with `state` (encoded only
    /// when there is one).
    pub(crate) fn unloading(&self, key: &RoomKey, state: impl FnOnce() -> Bytes) {
        if !self.lock().rooms.contains_key(key) {
            return;
        }
        let state = state();
        if let Some(c) = self.lock().rooms.get_mut(key) {
            c.flush = true;
            c.state = Some(state);
        }
        self.wake.notify_one();
    }

    /// The room `key` was deleted: its unsent change is dropped.
    pub(crate) fn forget(&self, key: &RoomKey) {
        self.lock().rooms.remove(key);
    }

    /// Whether any party has a change webhook.
    pub(crate) fn has_change_hook(&self) -> bool {
        self.change.is_some() || self.party_change.values().any(Option::is_some)
    }

    /// A signed POST of `body` to `url`, answered within `timeout`: (status, body up to
    /// `limit` bytes).
    async fn post(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(u16, Bytes), String> {
        let client = self.client.as_ref().ok_or("no hooks configured")?;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = ripple_auth::sign_webhook(&self.secret, t, &body);
        let call = async {
            let mut resp = client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(ripple_auth::SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("request failed: {}", e.without_url()))?;
            let status = resp.status().as_u16();
            if resp.content_length().is_some_and(|n| n > limit as u64) {
                return Err(format!("answer larger than {limit} bytes"));
            }
            let mut buf = bytes::BytesMut::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("reading the answer: {}", e.without_url()))?
            {
                if buf.len() + chunk.len() > limit {
                    return Err(format!("answer larger than {limit} bytes"));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok((status, buf.freeze()))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// Seeds a room that has nothing stored from the load hook, if there is one: the answer is
    /// checked, stored under `epoch`, and returned as what is stored now. `stored` (empty) is
    /// returned unchanged without a load hook or when it answers "start empty".
    pub(crate) async fn seed(
        &self,
        key: &RoomKey,
        store: &dyn Store,
        epoch: Epoch,
        max_bytes: usize,
        stored: StoredRoom,
    ) -> Result<StoredRoom, String> {
        let Some(url) = &self.load else {
            return Ok(stored);
        };
        let body = serde_json::json!({"party": key.party(), "room": key.room()})
            .to_string()
            .into_bytes();
        let failed = |e: String| {
            inc(&self.stats.hook_load_failures);
            e
        };
        let (status, update) = self
            .post(url, body, self.load_timeout, max_bytes)
            .await
            .map_err(|e| {
                warn!(room = %key, error = %e, "load hook failed");
                failed(format!("load hook failed: {e}"))
            })?;
        match status {
            200 if !update.is_empty() => {}
            200 | 204 => {
                info!(room = %key, "load hook: start empty");
                return Ok(stored);
            }
            other => {
                warn!(room = %key, status = other, "load hook answered an unexpected status");
                return Err(failed(format!("load hook answered {other}")));
            }
        }
        if let Err(e) = ripple_core::room::decode_untrusted(&update) {
            warn!(room = %key, error = %e, "load hook answered something that is not a Yjs update");
            return Err(failed(format!(
                "load hook answer is not a Yjs v1 update: {e}"
            )));
        }
        let seq = store
            .append(key, epoch, vec![update.clone()])
            .await
            .map_err(|e| format!("storing the load hook's answer: {e}"))?;
        info!(room = %key, bytes = update.len(), seq, "room seeded by the load hook");
        Ok(StoredRoom {
            snapshot: None,
            snapshot_seq: 0,
            updates: vec![(seq, update)],
        })
    }
}

/// Runs the change deliveries until the server has shut down and nothing is left to send.
pub(crate) async fn run_changes(hooks: Arc<Hooks>, ops: RoomOps, shutdown: CancellationToken) {
    let mut deliveries: JoinSet<()> = JoinSet::new();
    loop {
        let shutting_down = shutdown.is_cancelled();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        {
            let mut p = hooks.lock();
            let keys: Vec<RoomKey> = p
                .rooms
                .keys()
                .filter(|k| !p.in_flight.contains(*k))
                .cloned()
                .collect();
            for key in keys {
                let Some(settings) = hooks.change_settings(key.party()) else {
                    p.rooms.remove(&key);
                    continue;
                };
                let Some(c) = p.rooms.get(&key) else { continue };
                let at = c.due(settings, shutting_down);
                if at <= now && deliveries.len() + due.len() < MAX_IN_FLIGHT {
                    if let Some(c) = p.rooms.remove(&key) {
                        p.in_flight.insert(key.clone());
                        due.push((key, c, settings.clone()));
                    }
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        for (key, change, settings) in due {
            let (hooks, ops) = (hooks.clone(), ops.clone());
            deliveries.spawn(async move { deliver(&hooks, &ops, key, change, settings).await });
        }
        if shutting_down && deliveries.is_empty() {
            let idle = {
                let p = hooks.lock();
                p.rooms.is_empty() && p.in_flight.is_empty()
            };
            // Rooms still loaded may yet hand over a change when they unload.
            if idle && ops.loaded().await.is_empty() {
                return;
            }
        }
        let sleep_until = next.unwrap_or_else(|| {
            now + if shutting_down {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(3600)
            }
        });
        tokio::select! {
            _ = hooks.wake.notified() => {}
            _ = tokio::time::sleep_until(sleep_until) => {}
            Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
            _ = shutdown.cancelled(), if !shutting_down => {}
        }
    }
}

/// Sends one change; on failure puts it back for a retry (unless a newer change came, which
/// supersedes it) or gives it up.
async fn deliver(
    hooks: &Hooks,
    ops: &RoomOps,
    key: RoomKey,
    mut change: Change,
    s: ChangeSettings,
) {
    let result = match change.state.clone() {
        Some(state) => Ok(state),
        None => ops.state(&key, None).await.map_err(|e| e.to_string()),
    };
    let result = match result {
        Ok(state) => {
            let body = change_body(&key, change.seq, state, &s).await;
            match body {
                Ok(body) => hooks
                    .post(&s.url, body, s.timeout, MAX_CHANGE_ANSWER)
                    .await
                    .and_then(|(status, _)| {
                        if (200..300).contains(&status) {
                            Ok(())
                        } else {
                            Err(format!("answered {status}"))
                        }
                    }),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(format!("reading the room: {e}")),
    };
    let mut p = hooks.lock();
    p.in_flight.remove(&key);
    match result {
        Ok(()) => {
            inc(&hooks.stats.hook_change_delivered);
            debug!(room = %key, seq = change.seq, "change webhook delivered");
        }
        Err(e) => {
            change.attempts += 1;
            if change.attempts >= s.max_attempts || change.first.elapsed() >= s.max_age {
                inc(&hooks.stats.hook_change_dropped);
                warn!(room = %key, seq = change.seq, attempts = change.attempts, error = %e,
                    "change webhook failed; giving this change up");
            } else {
                inc(&hooks.stats.hook_change_retries);
                match p.rooms.entry(key) {
                    // A newer change is waiting: it covers this one.
                    std::collections::hash_map::Entry::Occupied(_) => {}
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        let backoff = Duration::from_millis(250)
                            .saturating_mul(1 << (change.attempts - 1).min(7))
                            .min(Duration::from_secs(30));
                        warn!(room = %slot.key(), seq = change.seq, attempt = change.attempts,
                            error = %e, retry_in = ?backoff, "change webhook failed; will retry");
                        change.retry_at = Some(Instant::now() + backoff);
                        slot.insert(change);
                    }
                }
            }
        }
    }
    drop(p);
    hooks.wake.notify_one();
}

/// The change webhook's body: y-partykit's `{"room", "data"}` plus `party`, `seq` and maybe
/// `state`. Built off the async workers (it decodes the document).
async fn change_body(
    key: &RoomKey,
    seq: u64,
    state: Bytes,
    s: &ChangeSettings,
) -> Result<Vec<u8>, String> {
    let objects = s.objects.clone();
    let include_state = s.include_state;
    let (party, room) = (key.party().to_owned(), key.room().to_owned());
    tokio::task::spawn_blocking(move || {
        use yrs::updates::decoder::Decode;
        use yrs::Transact;
        let doc = yrs::Doc::new();
        let update = yrs::Update::decode_v1(&state).map_err(|e| e.to_string())?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| e.to_string())?;
        let (values, _) = ripple_core::json::to_json(&doc, &objects);
        let mut data = serde_json::Map::new();
        for (name, kind) in &objects {
            let content = values.get(name).cloned().unwrap_or_else(|| match kind {
                Kind::Text | Kind::Xml => serde_json::Value::String(String::new()),
                Kind::Map => serde_json::json!({}),
                Kind::Array => serde_json::json!([]),
            });
            data.insert(
                name.clone(),
                serde_json::json!({"type": kind.yjs_name(), "content": content}),
            );
        }
        let mut body = serde_json::json!({"party": party, "room": room, "seq": seq, "data": data});
        if include_state {
            body["state"] = base64::engine::general_purpose::STANDARD
                .encode(&state)
                .into();
        }
        Ok(body.to_string().into_bytes())
    })
    .await
    .map_err(|e| e.to_string())?
}
