//! The reply order of a connection, and [`Req`], the command being answered.
//!
//! Every command's answer leaves in the order the commands came, even when a later command finishes
//! first (a HISTORY read overtaken by a PING). A command that answers at once and finds nothing
//! waiting before it goes straight to the outbox; otherwise it takes a slot at the back of the
//! connection's queue, and the slots at the front are sent as soon as they are filled. A slot's
//! answer is sent with the credits it gives back (1 for a command's final reply, 0 for extra output
//! such as a login's backlog), so the reader takes no new line before a command is answered.

use std::collections::VecDeque;

use super::out::Out;
use super::stream::Stream;
use super::{ConnId, Core, Hold};
use crate::outbox::{Chunk, Outbox};
use crate::proto::code::Code;
use crate::proto::command::Verb;
use crate::proto::server_line::ServerLine;

/// Identifies a place in a connection's reply order.
pub(super) type SlotId = u64;

/// One command's place in a connection's reply order.
struct Slot {
    id: SlotId,
    /// Filled: what to send.
    ready: Option<Chunk>,
    /// Or an answer sent part by part once it is at the front (see `stream`).
    stream: Option<Box<Stream>>,
    /// Credits to give back when it is sent.
    finals: usize,
    /// Close the connection after sending it (QUIT).
    close_after: bool,
    /// Switch the connection to DEFLATE after sending it (COMPRESS).
    deflate_after: bool,
}

/// A connection's queue of answers not yet sent.
#[derive(Default)]
pub(super) struct Slots(VecDeque<Slot>);

impl Slots {
    /// True when no answer is waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stream at the front, if the front slot holds one.
    pub(super) fn front_stream(&mut self) -> Option<(SlotId, &mut Stream)> {
        let front = self.0.front_mut()?;
        let id = front.id;
        front.stream.as_deref_mut().map(|s| (id, s))
    }

    /// Takes the front slot, if it is slot `id` holding a stream: its stream and its credits.
    pub(super) fn take_front_stream(&mut self, id: SlotId) -> Option<(Box<Stream>, usize)> {
        if self
            .0
            .front()
            .is_none_or(|s| s.id != id || s.stream.is_none())
        {
            return None;
        }
        let slot = self.0.pop_front()?;
        Some((slot.stream?, slot.finals))
    }
}

/// The command being answered: its connection, its label, its name, and its place in the reply
/// order once it has one. A handler that answers later moves its `Req` into the job's continuation
/// and answers with it there; whoever holds the `Req` answers the command, exactly once.
#[derive(Debug)]
pub struct Req {
    /// The connection that sent the command.
    pub conn: ConnId,
    /// The label to echo, without its `@`.
    pub label: Option<Box<str>>,
    /// The command; `None` for a line refused before its command was known (`FAIL *`).
    pub verb: Option<Verb>,
    slot: Option<SlotId>,
}

impl Req {
    pub(super) fn new(conn: ConnId, label: Option<Box<str>>, verb: Option<Verb>) -> Req {
        Req {
            conn,
            label,
            verb,
            slot: None,
        }
    }

    /// The label, as the reply echoes it.
    pub(super) fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

impl Core {
    /// Takes this command's place in the reply order now; its answer comes later, with
    /// [`Core::finish`]. A command that starts a job calls this before it returns.
    pub(super) fn reserve(&mut self, req: &mut Req) {
        if req.slot.is_none() {
            req.slot = self.open_slot(req.conn, 1);
        }
    }

    /// Opens a slot for extra output (no command's final reply: it gives back no credit), to be
    /// filled with [`Core::fill`].
    pub(super) fn open_slot(&mut self, conn: ConnId, finals: usize) -> Option<SlotId> {
        let id = self.ticket();
        let c = self.conns.get_mut(&conn)?;
        c.slots.0.push_back(Slot {
            id,
            ready: None,
            stream: None,
            finals,
            close_after: false,
            deflate_after: false,
        });
        Some(id)
    }

    /// Answers the command with `stream`, sent part by part in its place in the reply order.
    pub(super) fn answer_in_parts(&mut self, mut req: Req, stream: Stream) {
        self.reserve(&mut req);
        if let Some(id) = req.slot {
            self.fill_with_stream(req.conn, id, stream);
        }
    }

    /// Fills a slot opened with [`Core::open_slot`] with an answer sent part by part.
    pub(super) fn fill_with_stream(&mut self, conn: ConnId, id: SlotId, stream: Stream) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(s) = c.slots.0.iter_mut().find(|s| s.id == id) {
            s.stream = Some(Box::new(stream));
        }
        self.flush_slots(conn);
    }

    /// A stream has sent its last line: its credits go back, a login's backlog ends the login's
    /// hold, and the answers behind it go out.
    pub(super) fn after_stream(&mut self, conn: ConnId, finals: usize, backlog: bool) {
        if let Some(c) = self.conns.get(&conn) {
            c.outbox.release_credits(finals);
        }
        if backlog {
            self.release(conn);
        }
        self.flush_slots(conn);
    }

    /// Sends a command's complete answer (its data lines and final reply), in its place in the
    /// reply order.
    pub(super) fn finish(&mut self, req: Req, out: Out) {
        self.finish_with(req, out, false);
    }

    /// Sends a final FAIL as the command's answer.
    pub(super) fn refuse(&mut self, req: Req, code: Code, text: &str) {
        debug_assert!(!code.has_retry_after(), "{code:?} needs refuse_for");
        self.fail(req, code, None, text);
    }

    /// Sends a final FAIL whose code says when to try again: in `retry_after_ms` (rounded up to
    /// whole seconds, at least one).
    pub(super) fn refuse_for(&mut self, req: Req, code: Code, retry_after_ms: i64, text: &str) {
        debug_assert!(code.has_retry_after(), "{code:?} carries no retry_after");
        let secs = (retry_after_ms.max(1) as u64).div_ceil(1000);
        self.fail(req, code, Some(secs), text);
    }

    fn fail(&mut self, req: Req, code: Code, retry_after: Option<u64>, text: &str) {
        let mut out = Out::new();
        out.line(&ServerLine::Fail {
            label: req.label(),
            command: req.verb,
            code,
            retry_after,
            text,
        });
        self.finish(req, out);
    }

    /// Like [`Core::finish`]; with `close_after` the connection is closed once the answer is out.
    pub(super) fn finish_with(&mut self, req: Req, out: Out, close_after: bool) {
        self.finish_then(req, out, close_after, false);
    }

    /// Like [`Core::finish`]; the connection switches to DEFLATE right after the answer (COMPRESS).
    pub(super) fn finish_then_deflate(&mut self, req: Req, out: Out) {
        self.finish_then(req, out, false, true);
    }

    fn finish_then(&mut self, req: Req, out: Out, close_after: bool, deflate_after: bool) {
        let bytes = out.into_chunk();
        match req.slot {
            Some(id) => {
                if let Some(c) = self.conns.get_mut(&req.conn) {
                    if let Some(s) = c.slots.0.iter_mut().find(|s| s.id == id) {
                        s.ready = Some(bytes);
                        s.close_after = close_after;
                        s.deflate_after = deflate_after;
                    }
                }
                self.flush_slots(req.conn);
            }
            None => {
                let Some(c) = self.conns.get_mut(&req.conn) else {
                    return;
                };
                let slot = Slot {
                    id: 0,
                    ready: Some(bytes),
                    stream: None,
                    finals: 1,
                    close_after,
                    deflate_after,
                };
                if c.slots.is_empty() {
                    // The common case, nothing waiting before it: straight out, no queue.
                    return self.emit(req.conn, slot);
                }
                c.slots.0.push_back(slot);
                self.flush_slots(req.conn);
            }
        }
    }

    /// Fills a slot opened with [`Core::open_slot`] and sends what is ready at the front.
    pub(super) fn fill(&mut self, conn: ConnId, id: SlotId, out: Out) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(s) = c.slots.0.iter_mut().find(|s| s.id == id) {
            s.ready = Some(out.into_chunk());
        }
        self.flush_slots(conn);
    }

    /// Sends the filled slots at the front of the queue, together (one lock of the outbox, one
    /// wake-up, each answer its own chunk: the writer puts them into one write); once the queue is
    /// empty, a command that waited for it (QUIT, LOGOUT) runs.
    fn flush_slots(&mut self, conn: ConnId) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let run = if c.slots.0.front().is_some_and(|s| s.ready.is_some()) {
            let mut run = Run::default();
            let slots = &mut c.slots.0;
            let answers = std::iter::from_fn(|| {
                if run.deflate_after || run.close_after {
                    // What follows a switch to DEFLATE goes out compressed: not in this run.
                    return None;
                }
                let s = slots.pop_front_if(|s| s.ready.is_some())?;
                run.finals += s.finals;
                run.close_after = s.close_after;
                run.deflate_after = s.deflate_after;
                if s.close_after {
                    slots.clear();
                }
                s.ready
            });
            // The limit is checked once for the run, as for one answer.
            if c.outbox
                .push_run(answers.filter(|b| !b.as_bytes().is_empty()))
                .is_err()
            {
                self.overflowed.push(conn);
            }
            Some(run)
        } else {
            None
        };
        let drained = c.slots.is_empty();
        if drained {
            // An idle connection keeps no queue; its silence counts from its last answer.
            c.slots = Slots::default();
            c.last_heard = c.last_heard.max(now);
        }
        let resume = drained && c.hold == Hold::Drain;
        if resume {
            c.hold = Hold::Free;
        }
        let streaming = c.slots.0.front().is_some_and(|s| s.stream.is_some());
        let more_ready = c.slots.0.front().is_some_and(|s| s.ready.is_some());
        if let Some(run) = run {
            run.after(&c.outbox);
        }
        if more_ready {
            // Stopped at a switch to DEFLATE: the answers behind it go in a run of their own.
            return self.flush_slots(conn);
        }
        if streaming {
            self.pump(conn);
        }
        if resume {
            self.run_deferred(conn);
        }
    }

    /// Queues a ready slot's bytes on the connection, gives back its credits, closes after QUIT.
    fn emit(&mut self, conn: ConnId, slot: Slot) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        // The limit is checked before queueing (see Outbox::push), so one large answer (a
        // HISTORY page, the offline backlog) still reaches a client that reads.
        if let Some(bytes) = slot.ready.filter(|b| !b.as_bytes().is_empty()) {
            if c.outbox.push(bytes).is_err() {
                self.overflowed.push(conn);
            }
        }
        Run {
            finals: slot.finals,
            close_after: slot.close_after,
            deflate_after: slot.deflate_after,
        }
        .after(&c.outbox);
    }
}

/// What the answers sent together ask for once they are queued.
#[derive(Default)]
struct Run {
    /// Credits they give back.
    finals: usize,
    /// The last of them is a QUIT's.
    close_after: bool,
    /// The last of them is a COMPRESS's.
    deflate_after: bool,
}

impl Run {
    fn after(self, outbox: &Outbox) {
        if self.deflate_after {
            // Before the credits go back: the reader, waiting for them, then finds it switched.
            outbox.start_deflate();
        }
        outbox.release_credits(self.finals);
        if self.close_after {
            outbox.close();
        }
    }
}
