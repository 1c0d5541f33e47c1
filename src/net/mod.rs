//! Listeners and connection tasks.
pub mod tls;
