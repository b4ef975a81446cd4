//! One lean simulated client: a WebSocket, a real yrs [`Doc`] and the sync protocol, with no
//! background task and no channels — the scenario's task drives it (`recv` one frame at a time,
//! `write` an edit), so thousands of them cost one task each.
//!
//! Latency is carried in the edits themselves: every benchmark write sets map key
//! `"{writer}.{seq}"` in the root map `m` to the writer's send time (µs since the process
//! [`epoch`]). A map observer on each client turns every key that arrives from someone else into
//! an [`Arrival`] with its latency, so the figure does not depend on how a server batches, merges
//! or echoes updates.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use ripple_proto::{Message, SyncMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{Message as WsMessage, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::types::EntryChange;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Any, Doc, Map, MapRef, Observable, Out, ReadTxn, StateVector, Transact, Update};

use crate::wire::{self, Incoming, Protocol};

/// The root map benchmark writes go to.
pub const MAP: &str = "m";

/// The process-wide time origin that write timestamps are measured from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// One benchmark write seen by this client's map observer (which also sees the client's own
/// local writes: callers filter those by writer).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Global index of the writing client.
    pub writer: u32,
    /// The writer's sequence number (from 0).
    pub seq: u32,
    /// Microseconds from the write to its arrival here.
    pub latency_us: u64,
}

/// Why a connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    /// The WebSocket handshake failed (refused, HTTP error, ...).
    #[error("connect: {0}")]
    Connect(String),
    /// The server closed the connection (code, reason), or it broke (1006).
    #[error("closed {0}: {1}")]
    Closed(u16, String),
    /// The server refused authentication.
    #[error("permission denied: {0}")]
    Denied(String),
    /// A server frame we could not decode or apply.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A wait ran out.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// What one received frame was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The server's sync step 2 arrived and was applied.
    Synced,
    /// A document update was applied.
    Update,
    /// Hocuspocus acknowledged one of our updates.
    Ack,
    /// Anything else (awareness, pings, step 1 answered, ...).
    Other,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected simulated client.
pub struct Conn {
    ws: Ws,
    protocol: Protocol,
    doc_name: String,
    doc: Doc,
    map: MapRef,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    synced: bool,
    /// Frames received.
    pub frames_in: u64,
    /// Bytes received in binary frames.
    pub bytes_in: u64,
    /// Hocuspocus update acknowledgements received.
    pub acks: u64,
    awareness_clock: u64,
}

impl Conn {
    /// Opens `url` and starts the sync handshake for document `doc_name` (Hocuspocus: auth
    /// message first, as the provider does). `client_id` fixes the yrs client id (u32-sized ids
    /// encode like yjs's).
    pub async fn open(
        url: &str,
        protocol: Protocol,
        doc_name: &str,
        client_id: u64,
    ) -> Result<Self, ConnError> {
        // Small buffers: tungstenite's default preallocates 128 KiB per socket, which would make
        // the load generator, not the server, the memory hog at 10,000 connections.
        let mut config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        config.max_message_size = Some(256 << 20);
        config.max_frame_size = Some(256 << 20);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| ConnError::Connect(e.to_string()))?;
        let doc = Doc::with_client_id(client_id);
        let map = doc.get_or_insert_map(MAP);
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let sink = arrivals.clone();
        map.observe("bench", move |txn, event| {
            let now = now_us();
            let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
            for (key, change) in event.keys(txn) {
                let EntryChange::Inserted(Out::Any(Any::Number(sent))) = change else {
                    continue;
                };
                let Some((writer, seq)) = parse_key(key) else {
                    continue;
                };
                sink.push(Arrival {
                    writer,
                    seq,
                    latency_us: now.saturating_sub(sent.as_f64().unwrap_or(0.0) as u64),
                });
            }
        });
        let mut conn = Self {
            ws,
            protocol,
            doc_name: doc_name.to_owned(),
            doc,
            map,
            arrivals,
            synced: false,
            frames_in: 0,
            bytes_in: 0,
            acks: 0,
            awareness_clock: 0,
        };
        if protocol == Protocol::Hocuspocus {
            let auth = wire::hocuspocus_auth(doc_name, "");
            conn.send_frame(auth).await?;
        }
        let sv = conn.doc.transact().state_vector().encode_v1();
        conn.send(Message::Sync(SyncMessage::Step1(sv.into())))
            .await?;
        Ok(conn)
    }

    /// Opens and waits for the server's sync step 2.
    pub async fn open_synced(
        url: &str,
        protocol: Protocol,
        doc_name: &str,
        client_id: u64,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        let open = async {
            let mut conn = Self::open(url, protocol, doc_name, client_id).await?;
            while !conn.synced {
                conn.recv().await?;
            }
            Ok(conn)
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ConnError::Timeout("connect and sync"))?
    }

    /// Whether sync step 2 has arrived.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The local document.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Reads and handles one frame. Cancel-safe: dropping the future loses no frame.
    pub async fn recv(&mut self) -> Result<Event, ConnError> {
        let frame = self.ws.next().await;
        self.handle(frame).await
    }

    /// Handles every frame that is already buffered, without waiting. Returns how many.
    pub async fn recv_ready(&mut self) -> Result<usize, ConnError> {
        let mut n = 0;
        while let Some(frame) = self.ws.next().now_or_never() {
            self.handle(frame).await?;
            n += 1;
        }
        Ok(n)
    }

    async fn handle(
        &mut self,
        frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Event, ConnError> {
        self.frames_in += 1;
        let bytes = match frame {
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
            Some(Ok(WsMessage::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                return Err(ConnError::Closed(code, reason));
            }
            Some(Ok(_)) => return Ok(Event::Other),
            Some(Err(e)) => return Err(ConnError::Closed(1006, e.to_string())),
            None => return Err(ConnError::Closed(1006, "end of stream".into())),
        };
        self.bytes_in += bytes.len() as u64;
        let incoming = wire::decode(self.protocol, &self.doc_name, bytes)
            .map_err(|e| ConnError::Protocol(e.to_string()))?;
        match incoming {
            Incoming::Msg(Message::Sync(SyncMessage::Step1(sv))) => {
                let sv = StateVector::decode_v1(&sv)
                    .map_err(|e| ConnError::Protocol(format!("bad state vector: {e}")))?;
                let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                self.send(Message::Sync(SyncMessage::Step2(diff.into())))
                    .await?;
                Ok(Event::Other)
            }
            Incoming::Msg(Message::Sync(SyncMessage::Step2(update))) => {
                self.apply(&update)?;
                self.synced = true;
                Ok(Event::Synced)
            }
            Incoming::Msg(Message::Sync(SyncMessage::Update(update))) => {
                self.apply(&update)?;
                Ok(Event::Update)
            }
            Incoming::Msg(_) | Incoming::Authenticated | Incoming::Ignored => Ok(Event::Other),
            Incoming::SyncStatus(applied) => {
                if !applied {
                    return Err(ConnError::Protocol("server refused an update".into()));
                }
                self.acks += 1;
                Ok(Event::Ack)
            }
            Incoming::Denied(reason) => Err(ConnError::Denied(reason)),
            Incoming::Close(reason) => Err(ConnError::Closed(1000, reason)),
        }
    }

    fn apply(&mut self, update: &[u8]) -> Result<(), ConnError> {
        let update = Update::decode_v1(update)
            .map_err(|e| ConnError::Protocol(format!("bad update: {e}")))?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .map_err(|e| ConnError::Protocol(format!("update does not apply: {e}")))
    }

    /// Writes benchmark key `"{writer}.{seq}"` = now and sends the update.
    pub async fn write_key(&mut self, writer: u32, seq: u32) -> Result<(), ConnError> {
        let update = {
            let mut txn = self.doc.transact_mut();
            self.map.insert(
                &mut txn,
                key(writer, seq),
                Any::Number((now_us() as f64).into()),
            );
            txn.encode_update_v1()
        };
        self.send_update(update).await
    }

    /// Sends a Yjs v1 update as one update message.
    pub async fn send_update(&mut self, update: Vec<u8>) -> Result<(), ConnError> {
        self.send(Message::Sync(SyncMessage::Update(update.into())))
            .await
    }

    /// Sets this client's awareness state (JSON text).
    pub async fn set_awareness(&mut self, state_json: &str) -> Result<(), ConnError> {
        self.awareness_clock += 1;
        let id = self.doc.client_id().get();
        let payload =
            ripple_proto::awareness::encode_update([(id, self.awareness_clock, state_json)]);
        self.send(Message::Awareness(payload)).await
    }

    /// Sends one protocol message as one frame.
    pub async fn send(&mut self, msg: Message) -> Result<(), ConnError> {
        let frame = wire::encode(self.protocol, &self.doc_name, &msg);
        self.send_frame(frame).await
    }

    async fn send_frame(&mut self, frame: Bytes) -> Result<(), ConnError> {
        self.ws
            .send(WsMessage::Binary(frame))
            .await
            .map_err(|e| ConnError::Closed(1006, format!("send: {e}")))
    }

    /// Takes the arrivals recorded since the last call.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The document's state vector, encoded (equal vectors mean equal documents).
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// Number of entries in the benchmark map.
    pub fn map_len(&self) -> u32 {
        self.map.len(&self.doc.transact())
    }

    /// Sends a close frame and waits briefly for the server's answer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// The map key of write `seq` by `writer`.
pub fn key(writer: u32, seq: u32) -> String {
    format!("{writer}.{seq}")
}

/// Parses a key made by [`key`].
pub fn parse_key(key: &str) -> Option<(u32, u32)> {
    let (w, s) = key.split_once('.')?;
    Some((w.parse().ok()?, s.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        assert_eq!(parse_key(&key(7, 42)), Some((7, 42)));
        assert_eq!(parse_key("k17"), None);
        assert_eq!(parse_key("a.b"), None);
    }
}
