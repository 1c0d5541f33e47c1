//! chatd: a small, durable chat server with a plain-text line protocol.
//!
//! The crate is laid out so that each piece of the server can be read, tested and fuzzed on its own:
//!
//! - [`config`]: every limit and default, as named constants.
//! - [`proto`]: the pure codec. Bytes to lines, lines to commands, replies to lines. No IO, no clock.
//! - [`core`]: the server's rules as a state machine. Events in (a line from a connection, a finished
//!   commit, a finished password hash), effects out (lines queued for connections, store ops, hash
//!   jobs). Tests and fuzzers drive it without sockets.
//! - [`outbox`]: a connection's bounded queue of lines to send, between the core and the
//!   connection's task.
//! - [`peer`]: where a connection comes from, as the per-address limits count it.
//! - [`store`]: redb tables, the group-commit writer and the reader beside it; the only place that
//!   knows redb.
//! - [`auth`]: scrypt hashing on its own threads, with a bound on queued work.
//! - [`heap`]: the one setting of the process's allocator (large blocks go back when freed), the
//!   crate's only unsafe code.
//! - [`net`]: listeners (plain and TLS), one task per connection (reading and writing), the task
//!   that owns the core, start-up and shutdown.
//! - [`tls`]: what the server and the client share of TLS: the crypto provider, PEM loading,
//!   fingerprints, self-signed certificates.
//! - [`client`]: the bundled client behind `chatd --connect`.
//! - [`cli`]: the command line.
//! - [`tools`]: the operator's tools (`chatd backup`, `check`, `health`, `adduser`).
//! - [`tally`]: counts of repeated events, written to the log as one line a minute.
//! - [`metrics`]: the server's figures, shown to admins (`STATS`) and to Prometheus (`/metrics`).
//!
//! With the `testing` feature (on for this crate's own tests and for the fuzz crate, off in the
//! server):
//!
//! - `sim`: a deterministic driver of the core without sockets, for transcripts and fuzzers.
//! - `fuzzing`: the checks the fuzz targets run, shared with the regression test.
// Denied everywhere; `heap` allows it for one call into the C allocator (forbid could not be
// lifted there).
#![deny(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod core;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod heap;
pub mod irc;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod peer;
pub mod proto;
#[cfg(feature = "testing")]
pub mod sim;
pub mod store;
pub mod tally;
pub mod tls;
pub mod tools;
