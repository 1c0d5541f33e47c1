//! Where the core's typed output becomes bytes.
//!
//! Handlers describe what they send as [`ServerLine`] values; nothing in the core spells a line of
//! the protocol. An [`Out`] collects one answer for one connection; [`shared`] encodes a push once
//! for every connection that receives it. These two are the only places the core encodes, so a front
//! end that speaks another protocol renders the same values here.

use std::cell::RefCell;
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
        line.write_to(&mut self.0);
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

/// One line encoded once, to be queued on many connections. It is written into this thread's
/// scratch buffer and copied once into the shared bytes: one allocation, where encoding into a
/// vector of its own and converting that cost two, a copy and a free.
pub(super) fn shared(line: &ServerLine<'_>) -> Chunk {
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        line.write_to(buf);
        let chunk = Chunk::Shared(Arc::from(buf.as_slice()));
        if buf.capacity() > SCRATCH_KEEP {
            // A long line (a long NOTICE, a room's long topic) does not keep its room.
            *buf = Vec::with_capacity(SCRATCH_KEEP);
        }
        chunk
    })
}

/// Bytes the scratch buffer of [`shared`] keeps between lines: a chat-sized MESSAGE line fits.
const SCRATCH_KEEP: usize = 1024;

thread_local! {
    /// Where [`shared`] encodes (the core runs on one thread: one buffer).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}
