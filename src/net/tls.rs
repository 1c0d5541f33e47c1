//! TLS listener.
