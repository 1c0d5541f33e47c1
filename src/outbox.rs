//! A connection's outbox: the bounded queue between the core and the connection's task, and the
//! credits that bound how many of the connection's commands may be unanswered.
//!
//! The core pushes without ever waiting: a push that would take the queue past its byte limit fails
//! with [`Overflow`], and the core then disconnects that client as a slow consumer (written down in
//! the spec). The connection's task takes everything queued at once ([`Outbox::poll_batch`]) so
//! that queued lines leave in one write. It takes one credit per line it hands to the core and
//! stops reading when none is left; the core gives a credit back when that line's final reply is
//! queued. Nothing here allocates until there is something to hold, so an idle connection costs
//! little: the queue keeps its first chunk inline, and a longer queue's ring goes to the task with
//! the batch instead of staying behind.
//!
//! One task waits on an outbox: its connection's. It leaves its waker here with what it waits for
//! (data to write, a credit, every command answered); a change wakes it only if it waits for that
//! change, and closing always does. So a push wakes a connection once, and a credit given back
//! wakes nobody unless the reader ran out of them.
//!
//! A long answer (a HISTORY page, a login's backlog, USERS) is queued part by part, as the client
//! reads it: between [`Outbox::begin_answer`] and [`Outbox::end_answer`] the core queues parts with
//! [`Outbox::push_answer`] only while [`Outbox::has_room_for_answer`], and otherwise asks with
//! [`Outbox::want_drained`] to hear when there is room; the task, after each write, sees that
//! wish ([`Outbox::drained_wanted`]) and tells the core. Pushes queued meanwhile are held aside
//! until the answer ends (nothing may come between the lines of an answer), and count against the
//! limit like any others.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::config::ANSWER_LOW_WATER;

/// Bytes queued for one connection: a line built for it alone, or one shared by many recipients;
/// or the point from which the writer compresses what it sends.
#[derive(Clone, Debug)]
pub enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    /// A short line held in the chunk itself (the `OK` of a message): no allocation, and no
    /// free on the connection's task once it is written. It fits in the room the other variants
    /// take, so a chunk is no larger for it.
    Inline(Inline),
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
            Chunk::Inline(i) => i.as_bytes(),
            Chunk::StartDeflate => &[],
        }
    }

    /// `bytes` as a chunk: held inline when they fit in [`INLINE_BYTES`], or else copied into a
    /// vector of their own.
    pub fn copied(bytes: &[u8]) -> Chunk {
        match Inline::new(bytes) {
            Some(i) => Chunk::Inline(i),
            None => Chunk::Owned(bytes.to_vec()),
        }
    }
}

/// Bytes a [`Chunk::Inline`] holds at most: what fits beside the enum's tag and a length byte in
/// the 32 bytes a chunk takes anyway (an `OK MSG <id> DELIVERED` line with a short label fits).
pub const INLINE_BYTES: usize = 30;

/// Up to [`INLINE_BYTES`] bytes, in place.
#[derive(Clone, Copy)]
pub struct Inline {
    len: u8,
    bytes: [u8; INLINE_BYTES],
}

impl Default for Inline {
    fn default() -> Inline {
        Inline {
            len: 0,
            bytes: [0; INLINE_BYTES],
        }
    }
}

impl Inline {
    /// Appends `bytes` if they fit; otherwise appends nothing and says so.
    #[inline]
    pub fn try_put(&mut self, bytes: &[u8]) -> bool {
        let len = usize::from(self.len);
        match self.bytes.get_mut(len..len + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len += bytes.len() as u8;
                true
            }
            None => false,
        }
    }

    /// Appends one byte if it fits; otherwise says so.
    #[inline]
    pub fn try_push(&mut self, b: u8) -> bool {
        match self.bytes.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// `bytes` in place, if they fit.
    pub fn new(bytes: &[u8]) -> Option<Inline> {
        let mut i = Inline {
            len: u8::try_from(bytes.len())
                .ok()
                .filter(|n| usize::from(*n) <= INLINE_BYTES)?,
            bytes: [0; INLINE_BYTES],
        };
        i.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(i)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Inline")
            .field(&String::from_utf8_lossy(self.as_bytes()))
            .finish()
    }
}

/// The push would take the outbox past its limit; nothing was queued.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

/// Chunks a batch's ring has room for when it is first allocated: a busy connection's batch (the
/// OKs and MESSAGE lines of ten messages in flight) fits without growing four times from empty.
/// The ring leaves with its batch, so an idle connection holds none.
const RING_FIRST_CAPACITY: usize = 16;

/// Chunks in order: the first one inline (most batches are one line, and they then allocate
/// nothing here), the others in a ring that is allocated only when a second chunk waits.
#[derive(Default, Debug)]
pub struct Batch {
    first: Option<Chunk>,
    rest: VecDeque<Chunk>,
}

impl Batch {
    fn push(&mut self, chunk: Chunk) {
        if self.first.is_none() {
            self.first = Some(chunk);
        } else {
            if self.rest.capacity() == 0 {
                self.rest.reserve(RING_FIRST_CAPACITY);
            }
            self.rest.push_back(chunk);
        }
    }

    /// True when it holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// How many chunks it holds.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// The chunks, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Chunk> {
        self.first.iter().chain(self.rest.iter())
    }

    /// The only chunk, if it holds exactly one.
    #[inline]
    pub fn into_single(self) -> Result<Chunk, Batch> {
        match self.first {
            Some(c) if self.rest.is_empty() => Ok(c),
            first => Err(Batch {
                first,
                rest: self.rest,
            }),
        }
    }
}

impl IntoIterator for Batch {
    type Item = Chunk;
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<Chunk>,
        std::collections::vec_deque::IntoIter<Chunk>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// What the connection's task waits for; each bit is cleared when the task is woken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Wants(u8);

impl Wants {
    /// Something to write.
    const DATA: Wants = Wants(1);
    /// A credit.
    const CREDIT: Wants = Wants(2);
    /// Every credit back.
    const ANSWERS: Wants = Wants(4);

    fn has(self, w: Wants) -> bool {
        self.0 & w.0 != 0
    }
}

/// Pushes held while a long answer is sent: a ring of its own, not a `Batch`.
#[derive(Default)]
struct Held {
    chunks: VecDeque<Chunk>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    queue: Batch,
    bytes: usize,
    closed: bool,
    credits: usize,
    /// While a long answer is being sent: the pushes that wait for its end. Made when the answer
    /// begins, since every connection's outbox carries this field and most never send one.
    answer: Option<Box<Held>>,
    /// The core waits to hear that the queue has room for the next part of an answer.
    drain_wanted: bool,
    /// The connection switched to DEFLATE: what is queued from [`Chunk::StartDeflate`] on is
    /// compressed by the writer, and what the reader reads after the COMPRESS line is inflated.
    deflate: bool,
    /// The connection's task, and what it waits for.
    waker: Option<Waker>,
    wants: Wants,
}

impl State {
    /// Bytes of the pushes held during a long answer.
    fn held_bytes(&self) -> usize {
        self.answer.as_ref().map_or(0, |h| h.bytes)
    }

    /// The task's waker if it waits for `w` (or, for `None`, for anything): taken, to be woken
    /// once the lock is released.
    fn wake(&mut self, w: Option<Wants>) -> Option<Waker> {
        if w.is_some_and(|w| !self.wants.has(w)) {
            return None;
        }
        self.wants = Wants::default();
        self.waker.take()
    }

    /// Leaves the task's waker, waiting for `w` too.
    fn register(&mut self, cx: &Context<'_>, w: Wants) {
        match &mut self.waker {
            Some(k) => k.clone_from(cx.waker()),
            None => self.waker = Some(cx.waker().clone()),
        }
        self.wants.0 |= w.0;
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

struct Shared {
    state: Mutex<State>,
    limit: usize,
    /// Credits when no command is unanswered.
    all_credits: usize,
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
    ///
    /// [`Outbox::push_run`] does the same for several chunks; this keeps its own body, as the
    /// fan-out's push to every member: written as a run of one it cost 14 instructions more a push
    /// under callgrind (W2a, 75 to 89 outside the batch and the wake-up).
    pub fn push(&self, chunk: Chunk) -> Result<(), Overflow> {
        let mut s = self.lock();
        if s.closed {
            return Ok(());
        }
        if s.bytes + s.held_bytes() >= self.0.limit {
            return Err(Overflow);
        }
        if let Some(held) = &mut s.answer {
            held.bytes += chunk.as_bytes().len();
            held.chunks.push_back(chunk);
            return Ok(());
        }
        s.bytes += chunk.as_bytes().len();
        s.queue.push(chunk);
        let w = s.wake(Some(Wants::DATA));
        drop(s);
        wake(w);
        Ok(())
    }

    /// Queues `chunks` as [`Outbox::push`] would queue them joined into one: the limit is checked
    /// once, before the first, and the connection's task is woken once. The chunks are taken
    /// whatever happens (dropped on an overflow or a closed outbox): the caller's iterator may do
    /// its own bookkeeping as it gives them. For a connection's answers that come out of the reply
    /// order together, which were copied into one buffer before (a reallocation per answer, and
    /// the writer copies them into its write anyway).
    pub fn push_run(&self, chunks: impl IntoIterator<Item = Chunk>) -> Result<(), Overflow> {
        let mut s = self.lock();
        if !s.closed && s.bytes + s.held_bytes() < self.0.limit {
            let state = &mut *s;
            let mut queued = false;
            for chunk in chunks {
                let n = chunk.as_bytes().len();
                match &mut state.answer {
                    Some(held) => {
                        held.bytes += n;
                        held.chunks.push_back(chunk);
                    }
                    None => {
                        state.bytes += n;
                        state.queue.push(chunk);
                        queued = true;
                    }
                }
            }
            let w = if queued {
                state.wake(Some(Wants::DATA))
            } else {
                None
            };
            drop(s);
            wake(w);
            return Ok(());
        }
        let refused = if s.closed { Ok(()) } else { Err(Overflow) };
        drop(s);
        chunks.into_iter().for_each(drop);
        refused
    }

    /// Starts a long answer: from now on pushes are held until [`Outbox::end_answer`].
    pub fn begin_answer(&self) {
        self.lock().answer.get_or_insert_default();
    }

    /// Queues one part of a long answer. The caller checked [`Outbox::has_room_for_answer`]; the
    /// limit of pushes does not apply.
    pub fn push_answer(&self, chunk: Chunk) {
        self.push_unbounded(chunk);
    }

    /// Ends a long answer: the pushes held meanwhile are queued after it.
    pub fn end_answer(&self) {
        let mut s = self.lock();
        s.drain_wanted = false;
        if let Some(held) = s.answer.take() {
            s.bytes += held.bytes;
            for c in held.chunks {
                s.queue.push(c);
            }
        }
        let w = if s.queue.is_empty() {
            None
        } else {
            s.wake(Some(Wants::DATA))
        };
        drop(s);
        wake(w);
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
        Self::drained_locked(&mut self.lock())
    }

    fn drained_locked(s: &mut State) -> bool {
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
        s.queue.push(chunk);
        let w = s.wake(Some(Wants::DATA));
        drop(s);
        wake(w);
    }

    /// Switches the connection to DEFLATE after what is queued now (the `OK COMPRESS` just queued):
    /// the writer compresses everything after it, and [`Outbox::deflating`] tells the reader.
    pub fn start_deflate(&self) {
        let mut s = self.lock();
        if s.closed || s.deflate {
            return;
        }
        s.deflate = true;
        let w = if let Some(held) = &mut s.answer {
            held.chunks.push_back(Chunk::StartDeflate);
            None
        } else {
            s.queue.push(Chunk::StartDeflate);
            s.wake(Some(Wants::DATA))
        };
        drop(s);
        wake(w);
    }

    /// True once [`Outbox::start_deflate`] was called.
    pub fn deflating(&self) -> bool {
        self.lock().deflate
    }

    /// Closes the outbox: what is queued is still written, then the writer closes the connection.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        let w = s.wake(None);
        drop(s);
        wake(w);
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
                .chain(s.answer.iter().flat_map(|h| h.chunks.iter()))
                .any(|c| matches!(c, Chunk::StartDeflate));
            s.queue = Batch::default();
            if switch_queued {
                s.queue.push(Chunk::StartDeflate);
            }
            s.answer = None;
            s.bytes = last.as_bytes().len();
            s.queue.push(last);
            s.closed = true;
        }
        let w = s.wake(None);
        drop(s);
        wake(w);
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Bytes queued and not yet taken by the writer, pushes held during an answer included.
    pub fn queued_bytes(&self) -> usize {
        let s = self.lock();
        s.bytes + s.held_bytes()
    }

    /// Gives back `n` credits to the reader.
    pub fn release_credits(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.lock();
        s.credits += n;
        // A reader short of credits wakes for one; a reader waiting for every answer only when
        // the last one is back.
        let full = s.credits >= self.0.all_credits;
        let w = if s.wants.has(Wants::CREDIT) || (full && s.wants.has(Wants::ANSWERS)) {
            s.wake(None)
        } else {
            None
        };
        drop(s);
        wake(w);
    }

    /// Takes one credit: `Ready(true)`, or `Ready(false)` once the outbox is closed; `Pending`
    /// (and a wake-up when one comes back) while none is free.
    pub fn poll_credit(&self, cx: &Context<'_>) -> Poll<bool> {
        let mut s = self.lock();
        if s.closed {
            return Poll::Ready(false);
        }
        if s.credits > 0 {
            s.credits -= 1;
            return Poll::Ready(true);
        }
        s.register(cx, Wants::CREDIT);
        Poll::Pending
    }

    /// Ready once every command handed to the core has been answered, or the outbox is closed.
    pub fn poll_all_answered(&self, cx: &Context<'_>) -> Poll<()> {
        let mut s = self.lock();
        if s.closed || s.credits >= self.0.all_credits {
            return Poll::Ready(());
        }
        s.register(cx, Wants::ANSWERS);
        Poll::Pending
    }

    /// Ready once the outbox is closed.
    pub fn poll_closed(&self, cx: &Context<'_>) -> Poll<()> {
        let mut s = self.lock();
        if s.closed {
            return Poll::Ready(());
        }
        s.register(cx, Wants::default());
        Poll::Pending
    }

    /// Everything queued, or `None` once the outbox is closed and nothing is left to write;
    /// `Pending` (and a wake-up at the next push or at closing) while the queue is empty.
    pub fn poll_batch(&self, cx: &Context<'_>) -> Poll<Option<Batch>> {
        Self::batch_locked(&mut self.lock(), cx)
    }

    /// For the writer after a write: [`Outbox::drained_wanted`] (sets `drained` when true) and
    /// then [`Outbox::poll_batch`], in one look at the outbox, as if asked one after the other
    /// with nothing queued in between.
    pub fn poll_batch_after_write(
        &self,
        cx: &Context<'_>,
        drained: &mut bool,
    ) -> Poll<Option<Batch>> {
        let mut s = self.lock();
        if Self::drained_locked(&mut s) {
            *drained = true;
        }
        Self::batch_locked(&mut s, cx)
    }

    /// [`Outbox::poll_batch`] under the lock already taken.
    fn batch_locked(s: &mut State, cx: &Context<'_>) -> Poll<Option<Batch>> {
        if let Some(b) = Self::take_locked(s) {
            return Poll::Ready(Some(b));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.register(cx, Wants::DATA);
        Poll::Pending
    }

    fn take_locked(s: &mut State) -> Option<Batch> {
        if s.queue.is_empty() {
            return None;
        }
        s.bytes = 0;
        // The ring, if any, goes with the batch: an idle connection keeps none.
        Some(std::mem::take(&mut s.queue))
    }

    /// Takes one credit, waiting until one is free. False when the outbox is closed.
    pub async fn acquire_credit(&self) -> bool {
        poll_fn(|cx| self.poll_credit(cx)).await
    }

    /// Waits until every command handed to the core has been answered, or the outbox is closed.
    pub async fn all_answered(&self) {
        poll_fn(|cx| self.poll_all_answered(cx)).await
    }

    /// Everything queued, waiting while the queue is empty; `None` when the outbox is closed and
    /// nothing is left to write.
    pub async fn next_batch(&self) -> Option<Batch> {
        poll_fn(|cx| self.poll_batch(cx)).await
    }

    /// Resolves once the outbox is closed.
    pub async fn closed(&self) {
        poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// Everything queued now, without waiting.
    pub fn take_now(&self) -> Option<Batch> {
        Self::take_locked(&mut self.lock())
    }

    /// The size in bytes of one outbox's shared state (without the allocator's own).
    pub fn shared_size() -> usize {
        std::mem::size_of::<Shared>()
    }

    /// Everything queued, as text (for tests and fuzzers that drive the core without sockets).
    pub fn drain_text(&self) -> String {
        let mut s = String::new();
        for c in self.take_now().into_iter().flatten() {
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
        let batch = smol::block_on(o.next_batch()).expect("three chunks");
        assert_eq!(batch.len(), 3);
        assert_eq!(o.queued_bytes(), 0);
        o.abort_with(Chunk::Owned(b"BYE\n".to_vec()));
        assert_eq!(o.push(Chunk::Owned(b"late".to_vec())), Ok(()));
        assert_eq!(o.drain_text(), "BYE\n");
        assert!(smol::block_on(o.next_batch()).is_none());
    }

    #[test]
    fn a_short_line_is_held_in_the_chunk_and_a_chunk_is_no_larger_for_it() {
        assert_eq!(std::mem::size_of::<Chunk>(), 32);
        let line = b"OK @label MSG 1234567 DELIVERED";
        assert_eq!(line.len(), 31);
        let fits = &line[..INLINE_BYTES];
        assert!(matches!(Chunk::copied(fits), Chunk::Inline(i) if i.as_bytes() == fits));
        assert!(matches!(Chunk::copied(line), Chunk::Owned(v) if v == line));
        assert!(matches!(Chunk::copied(b""), Chunk::Inline(i) if i.as_bytes().is_empty()));
        let mut i = Inline::default();
        assert!(i.try_put(&line[..20]) && i.try_put(b"") && i.try_put(&line[20..29]));
        assert!(!i.try_put(b"12"), "31 bytes do not fit");
        assert!(i.try_push(b'!') && !i.try_push(b'!'));
        assert_eq!(i.as_bytes(), b"OK @label MSG 1234567 DELIVER!");
    }

    /// A run of answers is checked against the limit once, as one answer would be, is taken
    /// whole even when refused, and follows a long answer like any push.
    #[test]
    fn a_run_is_one_push() {
        let o = Outbox::new(10, 1);
        let run = |parts: &[&[u8]]| parts.iter().map(|p| Chunk::copied(p)).collect::<Vec<_>>();
        assert_eq!(o.push_run(run(&[b"12345", b"6789"])), Ok(()));
        // 9 bytes held: a run that takes it past the limit is still taken, all of it.
        assert_eq!(o.push_run(run(&[b"0x", b"yz"])), Ok(()));
        let mut taken = 0;
        let counted = run(&[b"a", b"b"]).into_iter().inspect(|_| taken += 1);
        assert_eq!(o.push_run(counted), Err(Overflow));
        assert_eq!(taken, 2);
        assert_eq!(o.drain_text(), "1234567890xyz");
        o.begin_answer();
        o.push_answer(Chunk::copied(b"D1\n"));
        assert_eq!(o.push_run(run(&[b"P1\n", b"P2\n"])), Ok(()));
        assert_eq!(o.drain_text(), "D1\n");
        o.end_answer();
        assert_eq!(o.drain_text(), "P1\nP2\n");
        o.close();
        let mut taken = 0;
        let counted = run(&[b"late"]).into_iter().inspect(|_| taken += 1);
        assert_eq!(o.push_run(counted), Ok(()));
        assert_eq!(taken, 1);
        assert_eq!(o.drain_text(), "");
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
        // After a write, the writer hears it in the same look that takes the next batch.
        o.want_drained();
        let waker = std::task::Waker::noop();
        let cx = Context::from_waker(waker);
        let mut drained = false;
        match o.poll_batch_after_write(&cx, &mut drained) {
            Poll::Ready(Some(b)) => assert_eq!(b.into_single().expect("one").as_bytes(), b"D2\n"),
            other => panic!("the queued part: {other:?}"),
        }
        assert!(drained);
        let mut again = false;
        assert!(o.poll_batch_after_write(&cx, &mut again).is_pending());
        assert!(!again, "told once");
        o.push_answer(Chunk::Owned(b"OK\n".to_vec()));
        o.end_answer();
        assert_eq!(o.drain_text(), "OK\nP1\nP2345\n");
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
        let batch: Vec<Chunk> = o.take_now().expect("queued").into_iter().collect();
        assert!(matches!(batch[1], Chunk::StartDeflate));
        assert_eq!(batch.len(), 3);
        o.start_deflate();
        assert!(o.take_now().is_none(), "switched once");

        let o = Outbox::new(100, 1);
        o.start_deflate();
        assert_eq!(o.push(Chunk::Owned(b"P1\n".to_vec())), Ok(()));
        o.abort_with(Chunk::Owned(b"BYE\n".to_vec()));
        let batch: Vec<Chunk> = o.take_now().expect("queued").into_iter().collect();
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

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// The connection's task is woken only for what it waits for: a push when it waits for
    /// something to write, a credit when it ran out of them, every answer when it waits for all of
    /// them; closing wakes it whatever it waits for.
    #[test]
    fn the_task_is_woken_only_for_what_it_waits_for() {
        let count = Arc::new(Count::default());
        let waker = std::task::Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let o = Outbox::new(100, 2);

        assert!(o.poll_batch(&cx).is_pending());
        o.release_credits(0);
        assert_eq!(count.get(), 0);
        assert_eq!(o.push(Chunk::Owned(b"A\n".to_vec())), Ok(()));
        assert_eq!(count.get(), 1, "a push wakes a task waiting to write");
        assert_eq!(o.push(Chunk::Owned(b"B\n".to_vec())), Ok(()));
        assert_eq!(count.get(), 1, "woken once, until it waits again");
        assert_eq!(o.drain_text(), "A\nB\n");

        // Two credits: taking them does not wait; the third does.
        assert_eq!(o.poll_credit(&cx), Poll::Ready(true));
        assert_eq!(o.poll_credit(&cx), Poll::Ready(true));
        assert!(o.poll_all_answered(&cx).is_pending());
        o.release_credits(1);
        assert_eq!(count.get(), 1, "not every answer is back");
        assert_eq!(o.poll_credit(&cx), Poll::Ready(true));
        assert_eq!(o.poll_credit(&cx), Poll::Pending);
        o.release_credits(1);
        assert_eq!(count.get(), 2, "a credit wakes a task short of them");
        o.release_credits(1);
        assert_eq!(count.get(), 2, "nobody waits");
        assert_eq!(o.poll_credit(&cx), Poll::Ready(true));
        assert!(o.poll_all_answered(&cx).is_pending());
        o.release_credits(1);
        assert_eq!(count.get(), 3, "every answer is back");
        assert_eq!(o.poll_all_answered(&cx), Poll::Ready(()));

        assert!(o.poll_batch(&cx).is_pending());
        o.release_credits(1);
        assert_eq!(
            count.get(),
            3,
            "a task waiting to write does not wake for a credit"
        );
        o.close();
        assert_eq!(count.get(), 4, "closing wakes it");
        assert_eq!(o.poll_closed(&cx), Poll::Ready(()));
        assert!(matches!(o.poll_batch(&cx), Poll::Ready(None)));
    }

    /// A batch of one chunk holds it inline; a longer queue's ring leaves with its batch, so an
    /// emptied outbox keeps no allocation.
    #[test]
    fn an_emptied_outbox_keeps_no_ring() {
        let o = Outbox::new(1000, 1);
        assert_eq!(o.push(Chunk::Owned(b"one\n".to_vec())), Ok(()));
        let one = o.take_now().expect("queued");
        assert_eq!(one.rest.capacity(), 0);
        assert_eq!(one.into_single().expect("one chunk").as_bytes(), b"one\n");
        for _ in 0..10 {
            assert_eq!(o.push(Chunk::Owned(b"x\n".to_vec())), Ok(()));
        }
        let ten = o.take_now().expect("queued");
        assert_eq!(ten.len(), 10);
        assert!(ten.into_single().is_err());
        let s = o.lock();
        assert!(s.queue.is_empty());
        assert_eq!(s.queue.rest.capacity(), 0);
    }
}
