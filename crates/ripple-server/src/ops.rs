//! Room operations without a socket: what the HTTP API, the inspector and the load hook do
//! to rooms, in one place. Each goes to the room's actor as a `room::Request` (the actor
//! loads the room if needed) and takes the same path as a client's message: an update is
//! applied in the room's turn, appended with it, answered only once durable, and broadcast.
//! Callers map [`OpError`] to their own answers (HTTP statuses, CLI messages).

use std::sync::Arc;

use bytes::Bytes;
use ripple_core::RoomKey;

use crate::member::Close;
use crate::registry::{LoadedRoom, Registry};
use crate::room::{Applied, Edit, JoinError, Request, RequestError, RoomView};

/// Why an operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum OpError {
    /// The room refused the request (bad input, too large, storage down).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The room could not be reached (load failed, full, owned elsewhere, shutting down).
    #[error(transparent)]
    Room(#[from] JoinError),
}

/// The room operations, over the registry. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RoomOps {
    registry: Registry,
}

impl RoomOps {
    pub(crate) fn new(registry: Registry) -> Self {
        Self { registry }
    }

    /// Applies a Yjs v1 update as `user`, like a client's: durable before this returns.
    pub(crate) async fn apply(
        &self,
        key: &RoomKey,
        update: Bytes,
        user: Option<Arc<str>>,
    ) -> Result<Applied, OpError> {
        // Applying an update twice is harmless (CRDT updates are idempotent): retried.
        let answer = self
            .registry
            .request(key, true, |reply| Request::Apply {
                update: update.clone(),
                user: user.clone(),
                reply,
            })
            .await?;
        Ok(answer?)
    }

    /// Runs a server-side edit as one transaction (see `ripple_core::room::Room::edit`).
    /// `make_edit` builds the edit; it is not retried (an edit such as a text insert is not
    /// idempotent).
    pub(crate) async fn edit<F>(&self, key: &RoomKey, make_edit: F) -> Result<Applied, OpError>
    where
        F: Fn() -> Edit,
    {
        let answer = self
            .registry
            .request(key, false, |reply| Request::Edit {
                edit: make_edit(),
                reply,
            })
            .await?;
        Ok(answer?)
    }

    /// The document as one Yjs v1 update, or what the state vector `sv` lacks.
    pub(crate) async fn state(&self, key: &RoomKey, sv: Option<Bytes>) -> Result<Bytes, OpError> {
        let answer = self
            .registry
            .request(key, true, |reply| Request::State {
                sv: sv.clone(),
                reply,
            })
            .await?;
        Ok(answer?)
    }

    /// The room's members, awareness, size and recent updates.
    pub(crate) async fn inspect(&self, key: &RoomKey) -> Result<RoomView, OpError> {
        let answer = self
            .registry
            .request(key, true, |reply| Request::Inspect { reply })
            .await?;
        Ok(answer?)
    }

    /// Ends the memberships of `user` (all when `None`) with `code` and `reason`; returns how
    /// many were ended. Clients reconnect and face auth again.
    pub(crate) async fn close(
        &self,
        key: &RoomKey,
        user: Option<String>,
        code: u16,
        reason: &str,
    ) -> Result<usize, OpError> {
        let answer = self
            .registry
            .request(key, true, |reply| Request::Close {
                user: user.clone(),
                close: Close::new(code, reason),
                reply,
            })
            .await?;
        Ok(answer?)
    }

    /// Folds the room's log into its snapshot now.
    pub(crate) async fn compact(&self, key: &RoomKey) -> Result<(), OpError> {
        let answer = self
            .registry
            .request(key, true, |reply| Request::Compact { reply })
            .await?;
        Ok(answer?)
    }

    /// Ends every membership with `code` and `reason`, deletes the stored state and unloads
    /// the room.
    pub(crate) async fn delete(
        &self,
        key: &RoomKey,
        code: u16,
        reason: &str,
    ) -> Result<(), OpError> {
        let answer = self
            .registry
            .request(key, true, |reply| Request::Delete {
                close: Close::new(code, reason),
                reply,
            })
            .await?;
        Ok(answer?)
    }

    /// The rooms loaded now, with their member counts.
    pub(crate) async fn loaded(&self) -> Vec<LoadedRoom> {
        self.registry.loaded().await
    }
}
