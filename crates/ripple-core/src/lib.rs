//! Room logic without I/O: the document and awareness a room holds, what each incoming message
//! does to them, room identity, room ownership (leases with fencing epochs), and the storage
//! seam.
//!
//! Nothing here knows about tokio, sockets or databases; the server drives it.

pub mod awareness;
pub mod json;
pub mod lease;
pub mod room;
pub mod room_id;
pub mod store;

pub use room_id::{RoomIdError, RoomKey, DEFAULT_PARTY};
pub use store::{BoxFuture, Durability, MemoryStore, RoomInfo, Store, StoreError, StoredRoom};
