//! A connection's outbox: the bounded queue between the core and the connection's writer task, and
//! the credits that bound how many of the connection's commands may be unanswered.
//!
//! The core pushes without ever waiting: a push that would take the queue past its byte limit fails
//! with [`Overflow`], and the core then disconnects that client as a slow consumer (written down in
//! the spec). The writer task takes everything queued at once ([`Outbox::next_batch`]) so that
//! queued lines leave in one write. The reader task takes one credit per line it hands to the core
//! and waits when none is left; the core gives a credit back when that line's final reply is queued.
//! Nothing here allocates until there is something to hold, so an idle connection costs little.
//!
//! A long answer (a HISTORY page, a login's backlog, USERS) is queued part by part, as the client
//! reads it: between [`Outbox::begin_answer`] and [`Outbox::end_answer`] the core queues parts with
//! [`Outbox::push_answer`] only while [`Outbox::has_room_for_answer`], and otherwise asks with
//! [`Outbox::want_drained`] to hear when there is room; the writer, after each write, sees that
//! wish ([`Outbox::drained_wanted`]) and tells the core. Pushes queued meanwhile are held aside
//! until the answer ends (nothing may come between the lines of an answer), and count against the
//! limit like any others.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;

use crate::config::ANSWER_LOW_WATER;

/// Chunks an emptied queue may keep room for (a ring of 4 chunks is under 100 bytes; 2000 idle
/// connections each keeping a ring of 64 after a burst hold 3 MB).
const KEPT_QUEUE_CAPACITY: usize = 4;

/// Bytes queued for one connection: a line built for it alone, or one shared by many recipients;
/// or the point from which the writer compresses what it sends.
#[derive(Clone, Debug)]
pub enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    /// Bytes already in the connection's own protocol, which its writer sends as they are: what
    /// the IRC front end answers by itself (CAP, a numeric for a malformed line). The core never
    /// queues one.
    Direct(Vec<u8>),
    /// Everything after this is sent as a DEFLATE stream (`COMPRESS DEFLATE`, spec 4.38); it has
    /// no bytes of its own.
    StartDeflate,
}

impl Chunk {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) | Chunk::Direct(v) => v,
            Chunk::Shared(a) => a,
            Chunk::StartDeflate => &[],
        }
    }
}

/// The push would take the outbox past its limit; nothing was queued.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

#[derive(Default)]
struct State {
    queue: VecDeque<Chunk>,
    bytes: usize,
    closed: bool,
    credits: usize,
    /// A long answer is being sent: pushes wait in `held`.
    answering: bool,
    held: VecDeque<Chunk>,
    held_bytes: usize,
    /// The core waits to hear that the queue has room for the next part of an answer.
    drain_wanted: bool,
    /// The connection switched to DEFLATE: what is queued from [`Chunk::StartDeflate`] on is
    /// compressed by the writer, and what the reader reads after the COMPRESS line is inflated.
    deflate: bool,
}

struct Shared {
    state: Mutex<State>,
    limit: usize,
    /// Credits when no command is unanswered.
    all_credits: usize,
    /// Wakes the writer: something was queued, or the outbox was closed.
    to_writer: Event,
    /// Wakes the reader: a credit came back, or the outbox was closed.
    to_reader: Event,
}

/// A handle to one connection's outbox; clones share it.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Outbox")
            .field("bytes", &s.bytes)
            .field("closed", &s.closed)
            .finish()
    }
}

impl Outbox {
    /// An outbox that holds at most `limit` bytes, with `credits` commands in flight.
    pub fn new(limit: usize, credits: usize) -> Outbox {
        Outbox(Arc::new(Shared {
            state: Mutex::new(State {
                credits,
                ..State::default()
            }),
            limit,
            all_credits: credits,
            to_writer: Event::new(),
            to_reader: Event::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated (every update is a
        // single push or take), so a poisoned lock is still usable.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `chunk` unless the outbox already holds its limit or more (pushes held during an
    /// answer count too). The check is made before the chunk is added, so one answer larger than
    /// the limit still reaches a client that reads; an outbox therefore holds at most the limit plus
    /// one chunk. During a long answer the chunk is held until the answer ends. Pushing to a closed
    /// outbox drops the chunk silently: the connection is going away.
    pub fn push(&self, chunk: Chunk) -> Result<(), Overflow> {
        let mut s = self.lock();
        if s.closed {
            return Ok(());
        }
        if s.bytes + s.held_bytes >= self.0.limit {
            return Err(Overflow);
        }
        if s.answering {
            s.held_bytes += chunk.as_bytes().len();
            s.held.push_back(chunk);
            return Ok(());
        }
        s.bytes += chunk.as_bytes().len();
        s.queue.push_back(chunk);
        drop(s);
        self.0.to_writer.notify(1);
        Ok(())
    }

    /// Starts a long answer: from now on pushes are held until [`Outbox::end_answer`].
    pub fn begin_answer(&self) {
        self.lock().answering = true;
    }

    /// Queues one part of a long answer. The caller checked [`Outbox::has_room_for_answer`]; the
    /// limit of pushes does not apply.
    pub fn push_answer(&self, chunk: Chunk) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.bytes += chunk.as_bytes().len();
        s.queue.push_back(chunk);
        drop(s);
        self.0.to_writer.notify(1);
    }

    /// Ends a long answer: the pushes held meanwhile are queued after it.
    pub fn end_answer(&self) {
        let mut s = self.lock();
        s.answering = false;
        s.drain_wanted = false;
        let held = std::mem::take(&mut s.held);
        s.bytes += std::mem::take(&mut s.held_bytes);
        s.queue.extend(held);
        drop(s);
        self.0.to_writer.notify(1);
    }

    /// True when the queue holds less than [`ANSWER_LOW_WATER`] bytes: the next part of a long
    /// answer may be queued.
    pub fn has_room_for_answer(&self) -> bool {
        self.lock().bytes < ANSWER_LOW_WATER
    }

    /// Asks to be told (through the writer) once the queue has room for the next part of an answer.
    pub fn want_drained(&self) {
        self.lock().drain_wanted = true;
    }

    /// For the writer, after a write: true (once) when the core asked to hear that the queue has
    /// room again and it has.
    pub fn drained_wanted(&self) -> bool {
        let mut s = self.lock();
        if s.drain_wanted && s.bytes < ANSWER_LOW_WATER && !s.closed {
            s.drain_wanted = false;
            return true;
        }
        false
    }

    /// Queues `chunk` whatever the limit: for a last line that must reach the client even when its
    /// outbox is full (the `BYE` sent at shutdown, just before the outbox is closed).
    pub fn push_unbounded(&self, chunk: Chunk) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.bytes += chunk.as_bytes().len();
        s.queue.push_back(chunk);
        drop(s);
        self.0.to_writer.notify(1);
    }

    /// Switches the connection to DEFLATE after what is queued now (the `OK COMPRESS` just queued):
    /// the writer compresses everything after it, and [`Outbox::deflating`] tells the reader.
    pub fn start_deflate(&self) {
        let mut s = self.lock();
        if s.closed || s.deflate {
            return;
        }
        s.deflate = true;
        if s.answering {
            s.held.push_back(Chunk::StartDeflate);
        } else {
            s.queue.push_back(Chunk::StartDeflate);
        }
        drop(s);
        self.0.to_writer.notify(1);
    }

    /// True once [`Outbox::start_deflate`] was called.
    pub fn deflating(&self) -> bool {
        self.lock().deflate
    }

    /// Closes the outbox: what is queued is still written, then the writer closes the connection.
    pub fn close(&self) {
        self.lock().closed = true;
        self.0.to_writer.notify(usize::MAX);
        self.0.to_reader.notify(usize::MAX);
    }

    /// Drops everything queued, queues `last` alone and closes (for a client that stopped reading).
    /// On a compressed connection the switch to DEFLATE is kept in front of it, so that `last`
    /// still reaches the client in the form it reads.
    pub fn abort_with(&self, last: Chunk) {
        let mut s = self.lock();
        if !s.closed {
            // The switch may still be queued (not yet taken by the writer); if it was taken, the
            // writer compresses already.
            let switch_queued = s
                .queue
                .iter()
                .chain(s.held.iter())
                .any(|c| matches!(c, Chunk::StartDeflate));
            s.queue.clear();
            if switch_queued {
                s.queue.push_back(Chunk::StartDeflate);
            }
            s.held.clear();
            s.held_bytes = 0;
            s.answering = false;
            s.bytes = last.as_bytes().len();
            s.queue.push_back(last);
            s.closed = true;
        }
        drop(s);
        self.0.to_writer.notify(usize::MAX);
        self.0.to_reader.notify(usize::MAX);
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Bytes queued and not yet taken by the writer, pushes held during an answer included.
    pub fn queued_bytes(&self) -> usize {
        let s = self.lock();
        s.bytes + s.held_bytes
    }

    /// Gives back `n` credits to the reader.
    pub fn release_credits(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.lock().credits += n;
        // Both the reader waiting for a credit and a reader waiting for all answers may listen.
        self.0.to_reader.notify(usize::MAX);
    }

    /// Takes one credit, waiting until one is free. False when the outbox is closed.
    pub async fn acquire_credit(&self) -> bool {
        loop {
            {
                let mut s = self.lock();
                if s.closed {
                    return false;
                }
                if s.credits > 0 {
                    s.credits -= 1;
                    return true;
                }
            }
            let listener = self.0.to_reader.listen();
            {
                let s = self.lock();
                if s.closed || s.credits > 0 {
                    continue;
                }
            }
            listener.await;
        }
    }

    /// Waits until every command handed to the core has been answered, or the outbox is closed.
    pub async fn all_answered(&self) {
        loop {
            let listener = self.0.to_reader.listen();
            {
                let s = self.lock();
                if s.closed || s.credits >= self.0.all_credits {
                    return;
                }
            }
            listener.await;
        }
    }

    /// Moves everything queued into `into`, waiting while the queue is empty. False when the outbox
    /// is closed and nothing is left to write.
    pub async fn next_batch(&self, into: &mut Vec<Chunk>) -> bool {
        loop {
            if self.take_now(into) {
                return true;
            }
            let listener = self.0.to_writer.listen();
            {
                let s = self.lock();
                if !s.queue.is_empty() {
                    continue;
                }
                if s.closed {
                    return false;
                }
            }
            listener.await;
        }
    }

    /// Moves everything queued into `into` without waiting; true if anything was moved.
    pub fn take_now(&self, into: &mut Vec<Chunk>) -> bool {
        let mut s = self.lock();
        if s.queue.is_empty() {
            return false;
        }
        s.bytes = 0;
        into.extend(s.queue.drain(..));
        // A burst can leave a large ring behind; an idle connection should not keep it. A small
        // ring is kept so that the usual few lines per batch cost no allocation.
        if s.queue.capacity() > KEPT_QUEUE_CAPACITY {
            s.queue = VecDeque::new();
        }
        true
    }

    /// Resolves once the outbox is closed.
    pub async fn closed(&self) {
        loop {
            if self.is_closed() {
                return;
            }
            let listener = self.0.to_reader.listen();
            if self.is_closed() {
                return;
            }
            listener.await;
        }
    }

    /// Everything queued, as text (for tests and fuzzers that drive the core without sockets).
    pub fn drain_text(&self) -> String {
        let mut chunks = Vec::new();
        self.take_now(&mut chunks);
        let mut s = String::new();
        for c in chunks {
            s.push_str(&String::from_utf8_lossy(c.as_bytes()));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_closes_and_batches() {
        let o = Outbox::new(10, 1);
        assert_eq!(o.push(Chunk::Owned(b"12345".to_vec())), Ok(()));
        assert_eq!(o.push(Chunk::Shared(Arc::from(&b"6789"[..]))), Ok(()));
        // 9 bytes held: under the limit, so a chunk that takes it past the limit is still taken.
        assert_eq!(o.push(Chunk::Owned(b"0x".to_vec())), Ok(()));
        assert_eq!(o.push(Chunk::Owned(b"y".to_vec())), Err(Overflow));
        let mut batch = Vec::new();
        assert!(smol::block_on(o.next_batch(&mut batch)));
        assert_eq!(batch.len(), 3);
        assert_eq!(o.queued_bytes(), 0);
        o.abort_with(Chunk::Owned(b"BYE\n".to_vec()));
        assert_eq!(o.push(Chunk::Owned(b"late".to_vec())), Ok(()));
        assert_eq!(o.drain_text(), "BYE\n");
        assert!(!smol::block_on(o.next_batch(&mut batch)));
    }

    /// Pushes wait while a long answer is sent, count against the limit, and follow the answer;
    /// the writer hears once that there is room for the next part.
    #[test]
    fn pushes_wait_behind_a_long_answer() {
        let o = Outbox::new(10, 1);
        o.begin_answer();
        o.push_answer(Chunk::Owned(b"D1\n".to_vec()));
        assert_eq!(o.push(Chunk::Owned(b"P1\n".to_vec())), Ok(()));
        assert_eq!(o.drain_text(), "D1\n");
        o.push_answer(Chunk::Owned(b"D2\n".to_vec()));
        assert_eq!(o.push(Chunk::Owned(b"P2345\n".to_vec())), Ok(()));
        // 3 queued + 9 held: past the limit, a further push overflows.
        assert_eq!(o.push(Chunk::Owned(b"P3\n".to_vec())), Err(Overflow));
        assert!(o.has_room_for_answer());
        o.want_drained();
        assert!(o.drained_wanted());
        assert!(!o.drained_wanted(), "told once");
        o.push_answer(Chunk::Owned(b"OK\n".to_vec()));
        o.end_answer();
        assert_eq!(o.drain_text(), "D2\nOK\nP1\nP2345\n");
        assert_eq!(o.push(Chunk::Owned(b"P4\n".to_vec())), Ok(()));
        assert_eq!(o.drain_text(), "P4\n");
    }

    /// The switch to DEFLATE keeps its place among the chunks, also behind a long answer and
    /// before a last line that replaces everything queued.
    #[test]
    fn the_switch_to_deflate_keeps_its_place() {
        let o = Outbox::new(100, 1);
        assert_eq!(
            o.push(Chunk::Owned(b"OK COMPRESS DEFLATE\n".to_vec())),
            Ok(())
        );
        o.start_deflate();
        assert!(o.deflating());
        assert_eq!(o.push(Chunk::Owned(b"P1\n".to_vec())), Ok(()));
        let mut batch = Vec::new();
        assert!(o.take_now(&mut batch));
        assert!(matches!(batch[1], Chunk::StartDeflate));
        assert_eq!(batch.len(), 3);
        o.start_deflate();
        assert!(!o.take_now(&mut batch), "switched once");

        let o = Outbox::new(100, 1);
        o.start_deflate();
        assert_eq!(o.push(Chunk::Owned(b"P1\n".to_vec())), Ok(()));
        o.abort_with(Chunk::Owned(b"BYE\n".to_vec()));
        let mut batch = Vec::new();
        assert!(o.take_now(&mut batch));
        assert!(matches!(batch[0], Chunk::StartDeflate));
        assert_eq!(batch[1].as_bytes(), b"BYE\n");
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn credits_block_until_released() {
        let o = Outbox::new(10, 1);
        assert!(smol::block_on(o.acquire_credit()));
        let o2 = o.clone();
        let t = std::thread::spawn(move || smol::block_on(o2.acquire_credit()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!t.is_finished());
        o.release_credits(1);
        assert!(t.join().unwrap());
        let o3 = o.clone();
        let t = std::thread::spawn(move || smol::block_on(o3.acquire_credit()));
        o.close();
        assert!(!t.join().unwrap());
    }
}
