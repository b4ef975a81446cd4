//! A small y-websocket client on yrs: connects to a room, syncs a local [`Doc`], sends local
//! edits, tracks awareness and close frames. Shared by the server's tests, the CLI and the load
//! generator. It speaks exactly what the JS clients speak: one message per frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ripple_proto::awareness::{decode_update, encode_update};
use ripple_proto::{Message, SyncMessage};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::Message as WsMessage;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, TransactionMut, Update};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket could not be opened (includes HTTP rejections).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// A wait ran out of time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

/// What the background task observed.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Whether the server's sync step 2 arrived.
    pub synced: bool,
    /// Messages received.
    pub messages: u64,
    /// Document updates received (step 2 and updates).
    pub updates: u64,
    /// Awareness states by client id (JSON), as last seen.
    pub awareness: HashMap<u64, String>,
    /// Auth "permission denied" reasons received.
    pub denied: Vec<String>,
    /// The close frame received (code, reason), or `Some((1006, ""))` for an abrupt end.
    pub closed: Option<(u16, String)>,
    /// A protocol error the client saw in a server frame, if any.
    pub error: Option<String>,
}

/// A connected client. Dropping it aborts the connection at once, frames not yet written
/// included: to be sure an edit reached the server, [`Client::close`] and then
/// [`Client::wait_closed`] (the close frame queues behind everything sent before it).
pub struct Client {
    doc: Doc,
    out: mpsc::UnboundedSender<WsMessage>,
    state: Arc<Mutex<Observed>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
    awareness_clock: u64,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:1999/parties/main/doc-1`) with a fresh document.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, Doc::new()).await
    }

    /// Connects with an existing document (its content is synced to the room).
    pub async fn connect_with(url: &str, doc: Doc) -> Result<Self, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        let state = Arc::new(Mutex::new(Observed::default()));
        let (notify, changed) = watch::channel(0u64);

        // Our step 1 goes first, like y-websocket's.
        let sv = doc.transact().state_vector().encode_v1();
        let _ = out.send(binary(Message::Sync(SyncMessage::Step1(sv.into()))));

        let (task_doc, task_state, task_out) = (doc.clone(), state.clone(), out.clone());
        let task = tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    frame = out_rx.recv() => {
                        let Some(frame) = frame else { break };
                        if sink.send(frame).await.is_err() {
                            break;
                        }
                    }
                    frame = stream.next() => {
                        let ended = match frame {
                            Some(Ok(WsMessage::Binary(bytes))) => {
                                handle(&task_doc, &task_state, &task_out, bytes);
                                false
                            }
                            Some(Ok(WsMessage::Close(frame))) => {
                                let closed = frame.map_or((1005, String::new()), |f| {
                                    (u16::from(f.code), f.reason.to_string())
                                });
                                lock(&task_state).closed = Some(closed);
                                true
                            }
                            Some(Ok(_)) => false,
                            Some(Err(_)) | None => true,
                        };
                        if ended {
                            let mut s = lock(&task_state);
                            if s.closed.is_none() {
                                s.closed = Some((1006, String::new()));
                            }
                        }
                        seq += 1;
                        let _ = notify.send(seq);
                        if ended {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Self {
            doc,
            out,
            state,
            changed,
            task,
            awareness_clock: 0,
        })
    }

    /// The local document.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// A copy of what the client observed so far.
    pub fn observed(&self) -> Observed {
        lock(&self.state).clone()
    }

    /// Applies a local edit and sends it as one update message.
    pub fn edit(&self, f: impl FnOnce(&mut TransactionMut)) -> Result<(), ClientError> {
        let update = {
            let mut txn = self.doc.transact_mut();
            f(&mut txn);
            txn.encode_update_v1()
        };
        self.send(Message::Sync(SyncMessage::Update(update.into())))
    }

    /// Sets this client's awareness state (JSON text; `"null"` removes it).
    pub fn set_awareness(&mut self, state_json: &str) -> Result<(), ClientError> {
        self.awareness_clock += 1;
        let id = self.doc.client_id().get();
        let payload = encode_update([(id, self.awareness_clock, state_json)]);
        self.send(Message::Awareness(payload))
    }

    /// Sends one protocol message.
    pub fn send(&self, msg: Message) -> Result<(), ClientError> {
        self.out.send(binary(msg)).map_err(|_| ClientError::Closed)
    }

    /// Sends one raw WebSocket frame (tests use it for malformed input).
    pub fn send_raw(&self, frame: WsMessage) -> Result<(), ClientError> {
        self.out.send(frame).map_err(|_| ClientError::Closed)
    }

    /// Sends a close frame.
    pub fn close(&self) {
        let _ = self.out.send(WsMessage::Close(None));
    }

    /// Waits until `pred` holds for the observed state, up to `timeout`.
    pub async fn wait_for(
        &mut self,
        what: &'static str,
        timeout: Duration,
        mut pred: impl FnMut(&Observed, &Doc) -> bool,
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&lock(&self.state), &self.doc) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Err(_) => return Err(ClientError::Timeout(what)),
                Ok(Err(_)) => {
                    // The task ended; one last look.
                    return if pred(&lock(&self.state), &self.doc) {
                        Ok(())
                    } else {
                        Err(ClientError::Closed)
                    };
                }
                Ok(Ok(())) => {}
            }
        }
    }

    /// Waits for the server's sync step 2.
    pub async fn synced(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_for("sync", timeout, |o, _| o.synced).await
    }

    /// Waits for a close frame (or the connection's end).
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<(u16, String), ClientError> {
        self.wait_for("close", timeout, |o, _| o.closed.is_some())
            .await?;
        Ok(lock(&self.state).closed.clone().unwrap_or_default())
    }
}

fn binary(msg: Message) -> WsMessage {
    WsMessage::Binary(msg.encode())
}

fn lock(state: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn handle(
    doc: &Doc,
    state: &Mutex<Observed>,
    out: &mpsc::UnboundedSender<WsMessage>,
    frame: Bytes,
) {
    let mut s = lock(state);
    s.messages += 1;
    let msg = match Message::decode(frame) {
        Ok(msg) => msg,
        Err(e) => {
            s.error = Some(e.to_string());
            return;
        }
    };
    match msg {
        Message::Sync(SyncMessage::Step1(sv)) => {
            let diff =
                StateVector::decode_v1(&sv).map(|sv| doc.transact().encode_state_as_update_v1(&sv));
            match diff {
                Ok(diff) => {
                    let _ = out.send(binary(Message::Sync(SyncMessage::Step2(diff.into()))));
                }
                Err(e) => s.error = Some(format!("bad state vector: {e}")),
            }
        }
        Message::Sync(SyncMessage::Step2(update)) => {
            if apply(doc, &mut s, &update) {
                s.synced = true;
            }
        }
        Message::Sync(SyncMessage::Update(update)) => {
            apply(doc, &mut s, &update);
        }
        Message::Awareness(payload) => match decode_update(payload) {
            Ok(entries) => {
                for e in entries {
                    if e.is_removal() {
                        s.awareness.remove(&e.client_id);
                    } else {
                        s.awareness.insert(e.client_id, e.state);
                    }
                }
            }
            Err(e) => s.error = Some(format!("bad awareness: {e}")),
        },
        Message::AuthDenied(reason) => s.denied.push(reason),
        Message::QueryAwareness => {}
    }
}

fn apply(doc: &Doc, s: &mut Observed, update: &[u8]) -> bool {
    let applied = Update::decode_v1(update)
        .map_err(|e| e.to_string())
        .and_then(|u| {
            doc.transact_mut()
                .apply_update(u)
                .map_err(|e| e.to_string())
        });
    match applied {
        Ok(()) => {
            s.updates += 1;
            true
        }
        Err(e) => {
            s.error = Some(format!("bad update: {e}"));
            false
        }
    }
}
