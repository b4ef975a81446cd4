//! The inspector's live feed (Server-Sent Events).

use std::sync::Arc;

use axum::Router;

use crate::ServerCtx;

/// The feed's routes.
pub(super) fn routes() -> Router<Arc<ServerCtx>> {
    Router::new()
}
