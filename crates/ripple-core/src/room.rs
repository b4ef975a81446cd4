//! Room state machine (in progress).
