//! Long answers, sent part by part as the client reads them: a HISTORY page, a login's backlog,
//! USERS.
//!
//! A whole page of 500 messages is about 1 MiB, a backlog twice that; built at once and queued on
//! top of a full outbox, 400 clients that do not read made the server hold a gigabyte. Instead
//! such an answer is a [`Stream`] in the connection's reply order. Once it reaches the front,
//! [`Core::pump`] queues its next part only while the outbox holds less than
//! [`ANSWER_LOW_WATER`], reading the part's messages from the store by id
//! ([`ANSWER_PART_MESSAGES`] at a time; the first read only listed the ids and checked that every
//! message is readable); when there is no room it asks the writer to say when there is
//! ([`Event::Drained`](super::Event::Drained)). So the answer never holds more than one part in
//! memory, whatever its size and however slowly the client reads, and a client that stops reading
//! stops costing anything but its ids.
//!
//! While an answer is sent, nothing else may come between its lines (spec 3.3): the outbox holds
//! pushes aside until the last line is queued (see `outbox`). The answers after it in the reply
//! order wait behind it as they always do.

use std::collections::VecDeque;

use super::order::SlotId;
use super::out::Out;
use super::{recipient, ConnId, Core};
use crate::config::{ANSWER_PART_MESSAGES, ANSWER_PART_USERS};
use crate::outbox::Chunk;
use crate::proto::name::Key;
use crate::proto::server_line::{MessageLine, OkReply, ServerLine};
use crate::store::{MessageRecord, MsgId, StoreOp, StoreReply};

/// An answer being sent part by part; it lives in its slot of the reply order.
pub(super) struct Stream {
    kind: Kind,
    /// Lines sent so far (HISTORY, MESSAGE or USER lines).
    sent: u64,
    /// The outbox was told that an answer is being sent.
    started: bool,
}

/// What is sent, and how it ends.
enum Kind {
    /// Messages by id: the lines of a HISTORY page, or a login's backlog.
    Messages {
        /// Still to read, in order.
        ids: VecDeque<MsgId>,
        /// Read and not yet queued.
        ready: Vec<MessageRecord>,
        /// A read of the next part is in flight.
        reading: bool,
        end: End,
    },
    /// The users online, in name order, from the one after `after`.
    Users {
        label: Option<Box<str>>,
        after: Option<Key>,
        done: bool,
    },
}

/// The last line of a message stream.
enum End {
    /// `OK HISTORY ...`.
    History {
        label: Option<Box<str>>,
        with: String,
        older: Option<MsgId>,
        newer: Option<MsgId>,
    },
    /// `BACKLOG-END n`; then the login is complete and the connection's later commands run.
    Backlog,
}

impl Stream {
    /// The lines of a HISTORY page with these ids, then its `OK`.
    pub(super) fn history(
        label: Option<Box<str>>,
        with: String,
        ids: Vec<MsgId>,
        older: Option<MsgId>,
        newer: Option<MsgId>,
    ) -> Stream {
        Stream::messages(
            ids,
            End::History {
                label,
                with,
                older,
                newer,
            },
        )
    }

    /// The MESSAGE lines of a login's backlog, then `BACKLOG-END`.
    pub(super) fn backlog(ids: Vec<MsgId>) -> Stream {
        Stream::messages(ids, End::Backlog)
    }

    /// The USER lines of the users online, then `OK USERS`.
    pub(super) fn users(label: Option<Box<str>>) -> Stream {
        Stream {
            kind: Kind::Users {
                label,
                after: None,
                done: false,
            },
            sent: 0,
            started: false,
        }
    }

    fn messages(ids: Vec<MsgId>, end: End) -> Stream {
        Stream {
            kind: Kind::Messages {
                ids: ids.into(),
                ready: Vec::new(),
                reading: false,
                end,
            },
            sent: 0,
            started: false,
        }
    }
}

/// What the pump does next, decided while the connection is borrowed and done after.
enum Step {
    /// Wait: for room, or for a read in flight.
    Wait,
    /// Read the next part's messages.
    Read(SlotId, Vec<MsgId>),
    /// Queue these bytes, then look again.
    Queue(Vec<u8>, u64),
    /// The next names, then look again.
    Users,
    /// The answer is complete: queue its last line and close it.
    Finish(SlotId),
}

impl Core {
    /// Sends what it can of the answer at the front of `conn`'s reply order, if that answer is a
    /// stream (see the module documentation). Called when a stream reaches the front, when a part
    /// has been read, and when the outbox has room again.
    pub(super) fn pump(&mut self, conn: ConnId) {
        loop {
            let step = {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let Some((slot, stream)) = c.slots.front_stream() else {
                    return;
                };
                if !stream.started {
                    c.outbox.begin_answer();
                    stream.started = true;
                }
                match &mut stream.kind {
                    Kind::Messages {
                        ids,
                        ready,
                        reading,
                        end,
                    } => {
                        if !ready.is_empty() {
                            if c.outbox.has_room_for_answer() {
                                let n = ready.len() as u64;
                                Step::Queue(encode(ready, end), n)
                            } else {
                                c.outbox.want_drained();
                                Step::Wait
                            }
                        } else if *reading {
                            Step::Wait
                        } else if ids.is_empty() {
                            Step::Finish(slot)
                        } else {
                            let part = ids.len().min(ANSWER_PART_MESSAGES);
                            *reading = true;
                            Step::Read(slot, ids.drain(..part).collect())
                        }
                    }
                    Kind::Users { done: true, .. } => Step::Finish(slot),
                    Kind::Users { .. } => {
                        if c.outbox.has_room_for_answer() {
                            Step::Users
                        } else {
                            c.outbox.want_drained();
                            Step::Wait
                        }
                    }
                }
            };
            match step {
                Step::Wait => return,
                Step::Read(slot, ids) => {
                    // While writes fail, reads go beside them (see `history`): the page was listed
                    // from what is committed, and its messages never change.
                    let op = StoreOp::ReadMessages { ids };
                    let then = move |core: &mut Core, reply| core.part_read(conn, slot, reply);
                    if self.store_failing {
                        match op.into_read() {
                            Ok(read) => self.store_fresh(read, then),
                            Err(op) => self.store(op, then),
                        }
                    } else {
                        self.store(op, then);
                    }
                    return;
                }
                Step::Queue(bytes, n) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.outbox.push_answer(Chunk::Owned(bytes));
                        if let Some((_, stream)) = c.slots.front_stream() {
                            stream.sent += n;
                        }
                    }
                }
                Step::Users => self.users_part(conn),
                Step::Finish(slot) => {
                    let Some(c) = self.conns.get_mut(&conn) else {
                        return;
                    };
                    let Some((stream, finals)) = c.slots.take_front_stream(slot) else {
                        return;
                    };
                    let (last, backlog) = last_line(&stream);
                    c.outbox.push_answer(last);
                    c.outbox.end_answer();
                    self.after_stream(conn, finals, backlog);
                    return;
                }
            }
        }
    }

    /// A part of a message stream was read.
    fn part_read(&mut self, conn: ConnId, slot: SlotId, reply: StoreReply) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let user = c.key().cloned();
        let Some((front, stream)) = c.slots.front_stream() else {
            return;
        };
        if front != slot {
            return;
        }
        if let Kind::Messages {
            ready,
            reading,
            end,
            ..
        } = &mut stream.kind
        {
            *reading = false;
            match reply {
                StoreReply::Messages(mut msgs) => {
                    // A backlog message from an account the user blocks is not delivered (it can
                    // only be there when the block came after it was kept); it is not counted in
                    // BACKLOG-END either.
                    if let (End::Backlog, Some(a)) =
                        (&*end, user.and_then(|k| self.accounts.get(&k)))
                    {
                        msgs.retain(|m| !a.ties().blocks.contains(&Key::of(&m.from)));
                    }
                    *ready = msgs;
                }
                // The page was readable when it was listed; a part that is not now is left out
                // (the answer has begun, so it cannot fail any more), and the log says why.
                other => log::error!(
                    "internal error: a part of a long answer could not be read: {}",
                    super::session::unreadable(&other)
                ),
            }
        }
        self.pump(conn);
    }

    /// The next names of a USERS answer.
    fn users_part(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some((_, stream)) = c.slots.front_stream() else {
            return;
        };
        let Kind::Users { after, done, .. } = &mut stream.kind else {
            return;
        };
        let bounds = match after.as_ref() {
            Some(k) => (std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded),
            None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        };
        // Online here, and in a cluster online on other nodes: two sorted sets, merged.
        let mut here = self.online.range::<Key, _>(bounds).peekable();
        let mut there = self
            .remote_online
            .range::<Key, _>(bounds)
            .map(|(k, _)| k)
            .peekable();
        let merged = std::iter::from_fn(|| match (here.peek(), there.peek()) {
            (Some(a), Some(b)) if a == b => {
                there.next();
                here.next()
            }
            (Some(a), Some(b)) if b < a => there.next(),
            (Some(_), _) => here.next(),
            (None, _) => there.next(),
        });
        let mut out = Out::new();
        let mut n = 0u64;
        let mut last = None;
        for key in merged.take(ANSWER_PART_USERS) {
            if let Some(a) = self.accounts.get(key) {
                out.line(&ServerLine::User { name: &a.name });
                n += 1;
            }
            last = Some(key.clone());
        }
        match last {
            Some(k) => *after = Some(k),
            None => *done = true,
        }
        stream.sent += n;
        if n > 0 {
            c.outbox.push_answer(out.into_chunk());
        }
    }
}

/// The lines of a part.
fn encode(ready: &mut Vec<MessageRecord>, end: &End) -> Vec<u8> {
    let mut out = Out::new();
    for m in ready.drain(..) {
        let line = MessageLine {
            id: m.id,
            time_ms: m.time_ms,
            from: &m.from,
            to: recipient(&m.to),
            text: &m.text,
        };
        out.line(&match end {
            End::History { .. } => ServerLine::History(line),
            End::Backlog => ServerLine::Message(line),
        });
    }
    out.into_bytes()
}

/// The last line of a stream, and whether it ended a login's backlog.
fn last_line(stream: &Stream) -> (Chunk, bool) {
    let mut out = Out::new();
    let backlog = match &stream.kind {
        Kind::Messages {
            end:
                End::History {
                    label,
                    with,
                    older,
                    newer,
                },
            ..
        } => {
            out.line(&ServerLine::Ok {
                label: label.as_deref(),
                reply: OkReply::History {
                    with,
                    count: stream.sent,
                    before: *older,
                    after: *newer,
                },
            });
            false
        }
        Kind::Messages {
            end: End::Backlog, ..
        } => {
            out.line(&ServerLine::BacklogEnd { count: stream.sent });
            true
        }
        Kind::Users { label, .. } => {
            out.line(&ServerLine::Ok {
                label: label.as_deref(),
                reply: OkReply::Users { count: stream.sent },
            });
            false
        }
    };
    (out.into_chunk(), backlog)
}
