//! The pure codec of the chatd protocol: bytes to lines, lines to commands, replies to lines.
//!
//! Nothing here does IO or reads a clock, so every function can be tested and fuzzed on its own:
//! - [`line`]: framing (LF-terminated lines, CR stripped, the length limit and what happens past it);
//! - [`name`]: validated values (names, passwords, labels, message text);
//! - [`command`]: the command table and the parser of command lines, and their encoder;
//! - [`reply`]: reply codes and the encoders of every line the server sends;
//! - [`server_line`]: the parser of server lines, for clients and test suites;
//! - [`time`]: the wire timestamp format.
pub mod command;
pub mod help;
pub mod line;
pub mod name;
pub mod reply;
pub mod server_line;
pub mod time;
