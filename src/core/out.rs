//! Where the core's typed output becomes bytes.
//!
//! Handlers describe what they send as [`ServerLine`] values; nothing in the core spells a line of
//! the protocol. An [`Out`] collects one answer for one connection; [`shared`] encodes a push once
//! for every connection that receives it. These two are the only places the core encodes, so a front
//! end that speaks another protocol renders the same values here.

use std::fmt::{self, Write};
use std::sync::Arc;

use super::Req;
use crate::outbox::Chunk;
use crate::proto::server_line::{OkReply, ServerLine};

/// The lines of one answer (or one push) for one connection, encoded as they are added.
#[derive(Default)]
pub(super) struct Out(Vec<u8>);

impl Out {
    /// An empty answer.
    pub(super) fn new() -> Out {
        Out::default()
    }

    /// Appends one line.
    pub(super) fn line(&mut self, line: &ServerLine<'_>) {
        if self.0.is_empty() {
            self.0.reserve(FIRST_LINE_CAPACITY);
        }
        // Writing to a Vec cannot fail.
        let _ = write!(Utf8Sink(&mut self.0), "{line}");
        self.0.push(b'\n');
    }

    /// Appends the final `OK` of `req`, with its label.
    pub(super) fn ok(&mut self, req: &Req, reply: OkReply<'_>) {
        self.line(&ServerLine::Ok {
            label: req.label(),
            reply,
        });
    }

    /// Appends bytes already encoded (a message's line, shared with its other recipients).
    pub(super) fn raw(&mut self, chunk: &Chunk) {
        self.0.extend_from_slice(chunk.as_bytes());
    }

    /// The encoded bytes.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Bytes reserved for an answer's first line: an `OK` with an id and a word fits (grown from
/// empty, the `OK` of every MSG was reallocated twice).
const FIRST_LINE_CAPACITY: usize = 48;

/// A line's text appended to bytes: `fmt::Write` straight onto the vector, without the error
/// bookkeeping of `io::Write`'s adapter.
struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// One line encoded once, to be queued on many connections.
pub(super) fn shared(line: &ServerLine<'_>) -> Chunk {
    Chunk::Shared(Arc::from(line.to_bytes()))
}
