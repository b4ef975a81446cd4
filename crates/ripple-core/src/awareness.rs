//! Awareness bookkeeping (in progress).
