//! The pure codec of the chatd protocol: bytes to lines, lines to commands, server lines to bytes and
//! back.
//!
//! Nothing here does IO or reads a clock, so every function can be tested and fuzzed on its own:
//! - [`line`](mod@line): framing (LF-terminated lines, CR stripped, the length limit and what happens past it);
//! - [`name`]: validated values (names, account keys, passwords, labels, message text);
//! - [`room`]: room values (room names and keys, roles, privacy, a user-or-room target);
//! - [`command`]: the syntax of every command: the parser of command lines, and their encoder;
//! - [`server_line`]: every line the server sends, as one type, with its encoder and its parser;
//! - [`code`]: the machine codes of `FAIL` and `BYE` lines;
//! - [`time`]: the wire timestamp format;
//! - [`token`]: the text form of device tokens and their ids;
//! - [`deflate`]: the DEFLATE layer a connection switches to after `COMPRESS DEFLATE`;
//! - [`direct`]: the address and certificate fingerprint a DIRECT offer carries.
pub mod code;
pub mod command;
pub mod deflate;
pub mod direct;
pub mod line;
pub mod name;
pub mod room;
pub mod server_line;
pub mod time;
pub mod token;
