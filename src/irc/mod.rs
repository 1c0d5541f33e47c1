//! The IRC front end: IRC clients (irssi, WeeChat, HexChat) on the same core as the line protocol.
//!
//! `message` is the IRC codec (pure); `session` is one connection's translator between IRC and the
//! core's command lines and typed server lines (sans-IO). The network shell gives each connection
//! on an IRC port a [`Session`]: what the client sends goes through [`Session::client_line`] to the
//! core as command lines, and what the core sends that connection goes through
//! [`Session::server_line`] back to the client as IRC. `spec/IRC.md` states the mapping.

pub mod message;
pub mod session;

pub use self::message::Message;
pub use self::session::{Effects, Session};
