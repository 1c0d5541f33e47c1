//! worker store
