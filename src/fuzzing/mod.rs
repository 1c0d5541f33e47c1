//! The checks behind the fuzz targets in `fuzz/`, kept in the library so that the regression test
//! (`tests/fuzz_regressions.rs`) replays saved inputs through exactly the same code as an ordinary
//! `cargo test`. Each target is a one-line wrapper around one function here; each function takes the
//! fuzzer's raw bytes, never fails on malformed input (it just tests less), and panics when a
//! promise of the protocol or the code is broken.
//!
//! | function | feeds | checks |
//! |---|---|---|
//! | [`check_line_framing`] | bytes in arbitrary chunks to the line decoder | a reference model of the framing; the buffer bound |
//! | [`check_command_parse`] | text to the command parser | no panic; parse(encode(r)) == r; refusals reply well |
//! | [`check_roundtrip`] | requests built from valid parts | encode, frame and parse gives the same request |
//! | [`check_server_line`] | text, or encoder output, to the server-line parser | no panic; canonical round trip; fields |
//! | [`check_core`] | operations of four clients to the whole server | one final per command, in order; delivery; HISTORY |
//! | [`check_irc`] | IRC lines and server lines to the IRC codec and a session | round trip; IRC out, 512 bytes; one core line each |
//! | [`check_inflate`] | a DEFLATE stream (valid, damaged or arbitrary) to a compressed connection's reader | the text's lines; the memory bound; a bad stream ends it, and the server says only BYE |

mod commands;
mod core;
mod framing;
mod inflate;
mod irc;
mod server_lines;

pub use self::commands::{arbitrary_request, check_command_parse, check_roundtrip};
pub use self::core::check_core;
pub use self::framing::check_line_framing;
pub use self::inflate::check_inflate;
pub use self::irc::check_irc;
pub use self::server_lines::check_server_line;

/// A check: takes a fuzzer's input, panics when a promise is broken.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name, with their checks: what the regression test replays, and what the
/// fuzz crate wraps.
pub const TARGETS: &[(&str, Check)] = &[
    ("line_framing", check_line_framing),
    ("command_parse", check_command_parse),
    ("roundtrip", check_roundtrip),
    ("server_line", check_server_line),
    ("core", check_core),
    ("irc", check_irc),
    ("inflate", check_inflate),
];
