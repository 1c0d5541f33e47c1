//! Pure codec.
pub mod server_line;
