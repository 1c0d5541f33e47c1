//! Pure codec.
pub mod help;
pub mod server_line;
