//! Where the core's typed output becomes bytes.
//!
//! Handlers describe what they send as [`ServerLine`] values; nothing in the core spells a line of
//! the protocol. An [`Out`] collects one answer for one connection; [`shared`] encodes a push once
//! for every connection that receives it. These two are the only places the core encodes, so a front
//! end that speaks another protocol renders the same values here.

use std::cell::RefCell;
use std::sync::Arc;

use super::Req;
use crate::outbox::{Chunk, Inline};
use crate::proto::server_line::{LineBuf, OkReply, ServerLine};

/// The lines of one answer (or one push) for one connection, encoded as they are added. An answer
/// of one short line (the `OK` of a MSG) stays in place and becomes a [`Chunk::Inline`]: no
/// allocation for it here, and no free on the connection's task. A longer one moves to a vector
/// of its own when it outgrows the place.
#[derive(Default)]
pub(super) struct Out {
    short: Inline,
    /// Empty until the answer outgrows `short`; then all of it.
    long: Vec<u8>,
}

impl Out {
    /// An empty answer.
    pub(super) fn new() -> Out {
        Out::default()
    }

    /// Appends one line.
    pub(super) fn line(&mut self, line: &ServerLine<'_>) {
        line.write_to(self);
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
        self.put(chunk.as_bytes());
    }

    /// The encoded bytes.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        if self.long.is_empty() {
            self.short.as_bytes().to_vec()
        } else {
            self.long
        }
    }

    /// The encoded bytes as a chunk to queue: in place when they are short.
    pub(super) fn into_chunk(self) -> Chunk {
        if self.long.is_empty() {
            Chunk::Inline(self.short)
        } else {
            Chunk::Owned(self.long)
        }
    }

    /// Appends `bytes` to an answer that does not fit in place (any more).
    fn put_long(&mut self, bytes: &[u8]) {
        if self.long.is_empty() {
            let short = self.short.as_bytes();
            self.long
                .reserve(LONG_FIRST_CAPACITY.max(short.len() + bytes.len()));
            self.long.extend_from_slice(short);
        }
        self.long.extend_from_slice(bytes);
    }
}

impl LineBuf for Out {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if !(self.long.is_empty() && self.short.try_put(bytes)) {
            self.put_long(bytes);
        }
    }

    #[inline]
    fn put_byte(&mut self, b: u8) {
        if !(self.long.is_empty() && self.short.try_push(b)) {
            self.put_long(&[b]);
        }
    }
}

/// Bytes reserved when an answer outgrows its place: a few lines fit without growing.
const LONG_FIRST_CAPACITY: usize = 128;

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
