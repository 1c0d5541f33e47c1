//! memory store
