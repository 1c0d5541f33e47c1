//! MSG, GROUP and ALL: a message is delivered as it is accepted, then committed to the log, then
//! acknowledged (spec 6.1). A MSG to a room is one record in the log and one entry in the room's
//! index, however many members the room has; offline members read it later (HISTORY, and the
//! unread counts at LOGIN).
//!
//! Whether a recipient is online is decided when the command runs: an offline recipient gets the
//! message through the backlog at its next login (its backlog entry is written in the same commit),
//! an online one gets it live at once. The OK follows the commit, so it always means the message
//! is durable; a message delivered before its commit has an id under a reservation the store has
//! already committed ([`Core::early`]), so a crash never gives its id to another message.
//!
//! With `--deliver-after-commit`, in a cluster (whose log gives the ids), and before the first
//! reservation is committed, a message is delivered when its commit finishes instead. A recipient
//! that was online when the message was sent but has no connection left by then gets it added to
//! its backlog, in a second commit; the OK, which then says KEPT for it, waits for that commit, so
//! every OK follows the commit that makes it true.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use smallvec::SmallVec;

use super::out::{self, Out};
use super::quota::stored_bytes;
use super::{fan_out, recipient, Accounts, Core, Req};
use crate::config::{ID_RESERVE_BLOCK, MAX_PENDING_PER_ACCOUNT};
use crate::metrics::MessageKind;
use crate::outbox::Chunk;
use crate::proto::code::Code;
use crate::proto::command::Verb;
use crate::proto::name::{Key, Name};
use crate::proto::room::RoomName;
use crate::proto::server_line::{Delivery, MessageLine, OkReply, ServerLine};
use crate::store::{MemberRecord, MessageRecord, MsgId, RoomId, StoreOp, StoreReply, To};

/// Accounts a message is for. A MSG names one: kept inline, so that a direct message allocates
/// no list for its recipient (it did three, each with its free, before).
type Keys = SmallVec<[Key; 1]>;

/// The accounts a MSG or GROUP is for, sorted by what happens to their copy (empty for ALL).
struct Addressees {
    /// Online when the message was sent: delivered live once it is committed.
    online: Keys,
    /// Offline: kept in their backlogs, in the same commit.
    offline: Keys,
    /// How many of `offline` are online on another node of a cluster (delivered there).
    elsewhere: usize,
    /// All of them, in the sender's order.
    recipients: Keys,
}

/// What delivering a message did, for its OK.
enum Reached {
    /// ALL: the users it went to, here and on other nodes of a cluster.
    All { users: usize },
    /// MSG and GROUP: the recipients online when it was sent that had no connection left when it
    /// was delivered; and whether the sender, a recipient too, was reached on its own connection
    /// alone, whose copy comes after the OK (kept for later if that connection is gone by then).
    Direct { late: Vec<Key>, own_only: bool },
}

/// A message waiting for its commit.
struct Sent {
    sender: Key,
    id: MsgId,
    /// The MESSAGE line, encoded once when the message was made; every recipient's outbox shares
    /// these bytes.
    line: Chunk,
    /// In a cluster, the message, to encode its line again with the id the store gives it.
    copy: Option<MessageRecord>,
    /// Recipients that had a connection online when the message was sent.
    online: Keys,
    /// Recipients whose copy went to their offline backlog.
    kept: usize,
    /// How many of those are online on another node of a cluster, which delivers it.
    elsewhere: usize,
    /// Every recipient, in the sender's order (empty for ALL), for the away notices after the OK.
    recipients: Keys,
}

impl Core {
    /// MSG (one name) and GROUP (a list): all or nothing. The names are borrowed: a MSG's one
    /// name is not put in a list of its own.
    pub(super) fn send_direct(&mut self, req: Req, to: &[Name], text: String) {
        let Some(sender) = self.account_of(req.conn) else {
            return;
        };
        let share = self.settings.limits.inbox_share;
        let mut unknown = Vec::new();
        let mut blocked = Vec::new();
        let mut friends_only = Vec::new();
        let mut full = Vec::new();
        let mut my_share_full = Vec::new();
        let mut online = Keys::new();
        let mut offline = Keys::new();
        let mut elsewhere = 0;
        let mut shown: SmallVec<[String; 1]> = SmallVec::new();
        let mut recipients = Keys::new();
        for name in to {
            // Looked up by the folded name, borrowed when the name has no capitals: the key
            // itself is the table's, shared, not a string made per message.
            let found = self.accounts.get_key_value(&*name.folded());
            match found {
                Some((key, a)) if a.phc.is_some() => {
                    let key = key.clone();
                    recipients.push(key.clone());
                    shown.push(a.name());
                    match self.dm_refusal_to(&sender, &key, a) {
                        Some(Code::BLOCKED) => blocked.push(a.name()),
                        Some(_) => friends_only.push(a.name()),
                        None => {}
                    }
                    if !a.conns.is_empty() {
                        online.push(key);
                    } else if self.remote_online.contains_key(&key) {
                        // Online on another node of a cluster: that node delivers it when it
                        // applies the message, and clears the backlog entry written here, which
                        // keeps it for the recipient if it has left meanwhile.
                        elsewhere += 1;
                        offline.push(key);
                    } else if a.ties().inbox.total() >= MAX_PENDING_PER_ACCOUNT {
                        full.push(a.name());
                    } else if share > 0 && a.ties().inbox.from(&sender) >= share {
                        my_share_full.push(a.name());
                    } else {
                        offline.push(key);
                    }
                }
                _ => unknown.push(name.as_str()),
            }
        }
        if !unknown.is_empty() {
            let text = format!("no such user: {}", unknown.join(", "));
            return self.refuse(req, Code::UNKNOWN_USER, &text);
        }
        if !blocked.is_empty() {
            let text = format!(
                "a block stands between you and {}; nothing was sent",
                blocked.join(", ")
            );
            return self.refuse(req, Code::BLOCKED, &text);
        }
        if !friends_only.is_empty() {
            let text = format!(
                "{} take{} direct messages from friends only; nothing was sent",
                friends_only.join(", "),
                if friends_only.len() == 1 { "s" } else { "" }
            );
            return self.refuse(req, Code::FRIENDS_ONLY, &text);
        }
        if !full.is_empty() {
            let text = format!(
                "too many messages are waiting for {}; nothing was sent",
                full.join(", ")
            );
            return self.refuse(req, Code::INBOX_FULL, &text);
        }
        if !my_share_full.is_empty() {
            let text = format!(
                "{share} of your messages are already waiting for {}; nothing was sent",
                my_share_full.join(", ")
            );
            return self.refuse(req, Code::INBOX_SHARE_FULL, &text);
        }
        if let Err(why) = self.charge_message(&sender, false, stored_bytes(&text, to.len())) {
            return self.over_quota(req, why);
        }
        for key in &offline {
            if let Some(a) = self.accounts.get_mut(key) {
                a.ties_mut().inbox.add(&sender);
            }
        }
        let to = match (req.verb, shown.pop()) {
            (Some(Verb::Msg), Some(one)) => To::User(one),
            (_, last) => {
                shown.extend(last);
                To::Group(shown.into_vec())
            }
        };
        let whom = Addressees {
            online,
            offline,
            elsewhere,
            recipients,
        };
        self.commit_message(req, sender, to, text, whom);
    }

    /// MSG to a room: stored once, delivered to its online members at the commit.
    pub(super) fn send_room(&mut self, mut req: Req, name: RoomName, text: String) {
        let Some(sender) = self.account_of(req.conn) else {
            return;
        };
        let room_id = match self.membership(&sender, &name) {
            Ok((id, _)) => id,
            Err(r) => return self.refused(req, r),
        };
        // Stored once, in the room's index: it counts as a message to one recipient.
        if let Err(why) = self.charge_message(&sender, false, stored_bytes(&text, 1)) {
            return self.over_quota(req, why);
        }
        let Some(from) = self.accounts.get(&sender).map(|a| a.name()) else {
            return self.internal_error(req, "the sender's account is missing");
        };
        let id = self.next_id;
        self.next_id += 1;
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        room.count += 1;
        room.last_id = id;
        let seq = room.count;
        let record = MessageRecord {
            id,
            time_ms: self.now,
            from,
            to: To::Room(room.name.clone()),
            text,
        };
        // Sending marks the room read up to one's own message.
        let marker = room.member_mut(&sender).map(|m| {
            m.read_id = id;
            m.read_seq = seq;
            *m
        });
        let line = message_line(id, &record);
        // Delivered at once when it may be (`early`): the members online now whose membership
        // began before it; the OK waits for the commit and says how many that was.
        let early = self
            .early(id)
            .then(|| self.deliver_to_room(room_id, id, &sender, &line, req.conn));
        self.held_for_commit += usize::from(early.is_none());
        // In a cluster the store gives the id (the log's sequence; `StoreReply::Appended`), and
        // the line is encoded again with it; on one server the id stands and nothing is copied.
        let cell = self.settings.cluster.then(|| Arc::new(AtomicU64::new(id)));
        let copy = self.settings.cluster.then(|| record.clone());
        let append = StoreOp::AppendRoomMessage {
            msg: record,
            room: room_id,
            seq,
        };
        self.reserve(&mut req);
        let member_key = sender.as_str().to_owned();
        let final_cell = cell.clone();
        let finish = move |core: &mut Core, reply: StoreReply| {
            core.held_for_commit -= usize::from(early.is_none());
            if reply == StoreReply::Taken {
                // In a cluster: the room is not in the log (another node deleted it meanwhile, or
                // it was this node's creation, which lost its name: rooms.rs); nothing was stored.
                let text = format!("you are not a member of {name}: that room is gone");
                return core.refuse(req, Code::NOT_MEMBER, &text);
            }
            let (id, line) = match (final_cell, copy) {
                (Some(cell), Some(record)) => {
                    if let StoreReply::Appended(real) = reply {
                        cell.store(real, Ordering::Relaxed);
                    }
                    let real = cell.load(Ordering::Relaxed);
                    core.appended_room_message(room_id, &sender, real);
                    (real, message_line(real, &record))
                }
                _ => (id, line),
            };
            core.settings.metrics.message(MessageKind::Room);
            let delivered = match early {
                Some(delivered) => delivered,
                None => core.deliver_to_room(room_id, id, &sender, &line, req.conn),
            };
            let mut out = Out::new();
            out.ok(&req, OkReply::RoomMsg { id, delivered });
            core.finish(req, out);
        };
        let Some(member) = marker else {
            return self.store(append, finish);
        };
        match cell {
            Some(cell) => self.store(append, move |_, reply| {
                if let StoreReply::Appended(real) = reply {
                    cell.store(real, Ordering::Relaxed);
                }
            }),
            None => self.store(append, |_, _| {}),
        }
        let op = StoreOp::PutMember {
            room: room_id,
            user: member_key,
            member,
        };
        self.store(op, finish);
    }

    /// A room message of this server got its id from a cluster's log: the room and the sender's
    /// read marker move up to it, and later ids start above it.
    fn appended_room_message(&mut self, room_id: RoomId, sender: &Key, id: MsgId) {
        self.next_id = self.next_id.max(id + 1);
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.last_id = room.last_id.max(id);
            if let Some(m) = room.member_mut(sender) {
                m.read_id = m.read_id.max(id);
            }
        }
    }

    /// Queues a room message on every connection of the room's online members whose membership
    /// began before it, but `skip` (the sender's connection, which gets its OK) and the members who
    /// block the sender; returns how many members other than the sender that reached.
    pub(super) fn deliver_to_room(
        &mut self,
        room: RoomId,
        id: MsgId,
        sender: &Key,
        chunk: &Chunk,
        skip: u64,
    ) -> u64 {
        if self.settings.cluster {
            return self.deliver_to_room_in_cluster(room, id, sender, chunk, skip);
        }
        let Some(room) = self.rooms.get_mut(&room) else {
            // Deleted while the message was being committed: nobody is a member any more.
            return 0;
        };
        let blockers = blockers_of(&self.accounts, sender);
        let mut users = 0;
        // Counted once for the whole fan-out: one atomic add, not one per member.
        let mut pushed = 0;
        // The room's list of its members' connections: no lookup of an account per member.
        for r in room.reach(&self.accounts, &self.conns) {
            if r.since >= id || blockers.is_some_and(|b| b.contains(&r.key)) {
                continue;
            }
            if r.first && r.key != *sender {
                users += 1;
            }
            if r.conn == skip {
                continue;
            }
            pushed += 1;
            if r.outbox.push(chunk.clone()).is_err() {
                self.overflowed.push(r.conn);
            }
        }
        self.settings.metrics.deliveries.add(pushed);
        users
    }

    /// [`Core::deliver_to_room`] on a node of a cluster, which also counts the members online on
    /// other nodes (their node pushes to them).
    fn deliver_to_room_in_cluster(
        &mut self,
        room: RoomId,
        id: MsgId,
        sender: &Key,
        chunk: &Chunk,
        skip: u64,
    ) -> u64 {
        let Some(room) = self.rooms.get(&room) else {
            // Deleted while the message was being committed: nobody is a member any more.
            return 0;
        };
        let blockers = blockers_of(&self.accounts, sender);
        let mut users = 0;
        // Counted once for the whole fan-out: one atomic add, not one per member.
        let mut pushed = 0;
        for (key, m) in room.members() {
            if !reaches(m, id) || blockers.is_some_and(|b| b.contains(key)) {
                continue;
            }
            let Some(acct) = self.accounts.get(key) else {
                continue;
            };
            if acct.conns.is_empty() {
                // Online on another node of a cluster: that node pushes it (by its route).
                if key != sender && self.remote_online.contains_key(key) {
                    users += 1;
                }
                continue;
            }
            if key != sender {
                users += 1;
            }
            for conn in acct.conns.iter() {
                if *conn == skip {
                    continue;
                }
                if let Some(c) = self.conns.get(conn) {
                    pushed += 1;
                    if c.outbox.push(chunk.clone()).is_err() {
                        self.overflowed.push(*conn);
                    }
                }
            }
        }
        self.settings.metrics.deliveries.add(pushed);
        users
    }

    /// ALL: to every other online account; stored, never kept for offline delivery.
    pub(super) fn send_all(&mut self, req: Req, text: String) {
        let Some(sender) = self.account_of(req.conn) else {
            return;
        };
        if let Err(why) = self.charge_message(&sender, true, stored_bytes(&text, 1)) {
            return self.over_quota(req, why);
        }
        let whom = Addressees {
            online: Keys::new(),
            offline: Keys::new(),
            elsewhere: 0,
            recipients: Keys::new(),
        };
        self.commit_message(req, sender, To::All, text, whom);
    }

    fn commit_message(
        &mut self,
        mut req: Req,
        sender: Key,
        to: To,
        text: String,
        whom: Addressees,
    ) {
        let Addressees {
            online,
            offline: pending_for,
            elsewhere,
            recipients,
        } = whom;
        let Some(from) = self.accounts.get(&sender).map(|a| a.name()) else {
            return self.internal_error(req, "the sender's account is missing");
        };
        let id = self.next_id;
        self.next_id += 1;
        let record = MessageRecord {
            id,
            time_ms: self.now,
            from,
            to,
            text,
        };
        let line = message_line(id, &record);
        // In a cluster the store gives the id (see `send_room`): a copy to encode it again.
        let copy = self.settings.cluster.then(|| record.clone());
        let op = StoreOp::AppendMessage {
            msg: record,
            pending_for: pending_for.iter().map(|k| k.as_str().to_owned()).collect(),
        };
        let sent = Sent {
            sender,
            id,
            line,
            copy,
            online,
            kept: pending_for.len(),
            elsewhere,
            recipients,
        };
        let early = self.early(id).then(|| self.deliver(&req, &sent));
        self.held_for_commit += usize::from(early.is_none());
        self.reserve(&mut req);
        self.store(op, move |core, reply| match early {
            Some(reached) => core.acknowledge(req, sent, reached),
            None => core.message_stored(req, sent, reply),
        });
    }

    /// Whether message `id` may go to its recipients before its commit (spec 6.1): on one
    /// server, unless the operator asked otherwise (`--deliver-after-commit`), and only under a
    /// reservation of ids the store has committed, so that a crash before the message's own
    /// commit never gives its id, which someone may have seen, to another message (spec 6.2).
    /// Asks for the next reservation while half of the current one is left. Not while a message
    /// waits for its commit to be delivered: this one would overtake it.
    pub(super) fn early(&mut self, id: MsgId) -> bool {
        if self.settings.cluster || self.settings.deliver_after_commit {
            return false;
        }
        if self.ids_reserving < self.next_id.saturating_add(ID_RESERVE_BLOCK / 2) {
            let below = self.next_id.saturating_add(ID_RESERVE_BLOCK);
            self.ids_reserving = below;
            self.store(StoreOp::ReserveIds { below }, move |core, _| {
                core.ids_shown_below = core.ids_shown_below.max(below);
            });
        }
        id < self.ids_shown_below && self.held_for_commit == 0
    }

    /// A message delivered at its commit: delivered, then acknowledged.
    fn message_stored(&mut self, req: Req, mut sent: Sent, reply: StoreReply) {
        self.held_for_commit -= 1;
        if let (StoreReply::Appended(real), Some(record)) = (&reply, &sent.copy) {
            self.next_id = self.next_id.max(real + 1);
            sent.id = *real;
            sent.line = message_line(*real, record);
        }
        let reached = self.deliver(&req, &sent);
        self.acknowledge(req, sent, reached);
    }

    /// Queues the message on its recipients' connections: for ALL every other online account
    /// that does not block the sender, for MSG and GROUP the recipients that were online when it
    /// was sent. The sender's own connection gets its copy after the OK ([`Core::acknowledge`]).
    fn deliver(&mut self, req: &Req, sent: &Sent) -> Reached {
        let chunk = &sent.line;
        let metrics = self.settings.metrics.clone();
        if req.verb == Some(Verb::All) {
            // Everyone online but the sender and the accounts that block it.
            let blockers = self
                .accounts
                .get(&sent.sender)
                .map(|a| &a.ties().blocked_by);
            let others: Vec<&Key> = self
                .online
                .iter()
                .filter(|k| **k != sent.sender && !blockers.is_some_and(|b| b.contains(*k)))
                .collect();
            // In a cluster, the users online only on other nodes get it from those nodes.
            let elsewhere = self
                .remote_online
                .keys()
                .filter(|k| {
                    **k != sent.sender
                        && !self.online.contains(*k)
                        && !blockers.is_some_and(|b| b.contains(*k))
                })
                .count();
            let users = others.len() + elsewhere;
            let reached = fan_out(
                &self.accounts,
                &self.conns,
                &mut self.overflowed,
                others.into_iter(),
                chunk,
                None,
            );
            metrics.deliveries.add(reached as u64);
            return Reached::All { users };
        }
        let mut late = Vec::new();
        let mut own_only = false;
        for key in &sent.online {
            let reached = fan_out(
                &self.accounts,
                &self.conns,
                &mut self.overflowed,
                std::iter::once(key),
                chunk,
                Some(req.conn),
            );
            metrics.deliveries.add(reached as u64);
            if reached == 0 {
                late.push(key.clone());
            } else if reached == 1 && *key == sent.sender {
                // `fan_out` counts the sender's own connection, which it skips, as reached.
                own_only = self
                    .accounts
                    .get(key)
                    .is_some_and(|a| a.conns.contains(&req.conn));
            }
        }
        Reached::Direct { late, own_only }
    }

    /// The OK of a committed message, saying what its delivery did; then the sender's own copy
    /// and the away notices. A recipient that had left by the delivery has the message kept, and
    /// the OK waits for that commit too.
    fn acknowledge(&mut self, req: Req, sent: Sent, reached: Reached) {
        let id = sent.id;
        let mut out = Out::new();
        self.settings.metrics.message(match req.verb {
            Some(Verb::All) => MessageKind::Broadcast,
            Some(Verb::Group) => MessageKind::Group,
            _ => MessageKind::Direct,
        });
        let (late, own_only) = match reached {
            Reached::All { users } => {
                out.ok(
                    &req,
                    OkReply::All {
                        id,
                        delivered: users as u64,
                    },
                );
                return self.finish(req, out);
            }
            Reached::Direct { late, own_only } => (late, own_only),
        };
        // The OK says what happened once the message was committed: a recipient that left
        // meanwhile has it kept, not delivered.
        let kept = sent.kept - sent.elsewhere + late.len();
        let delivered = sent.online.len() - late.len() + sent.elsewhere;
        let reply = if req.verb == Some(Verb::Msg) {
            OkReply::Msg {
                id,
                delivery: if kept == 0 {
                    Delivery::Delivered
                } else {
                    Delivery::Kept
                },
            }
        } else {
            OkReply::Group {
                id,
                delivered: delivered as u64,
                kept: kept as u64,
            }
        };
        out.ok(&req, reply);
        // Each late recipient's backlog entry is its own op; the writes commit in the order they
        // were sent, so once the last is committed all are, and the OK may go.
        let ops: Vec<StoreOp> = late
            .iter()
            .filter_map(|k| self.keep_for_later(k, &sent.sender, id))
            .collect();
        let last = ops.len();
        let mut answer = Some((req, out, sent));
        for (i, op) in ops.into_iter().enumerate() {
            if i + 1 < last {
                self.store(op, |_, _| {});
            } else if let Some((req, out, sent)) = answer.take() {
                self.store(op, move |core, _| {
                    core.answer_message(req, out, &sent, own_only);
                });
            }
        }
        if let Some((req, out, sent)) = answer {
            self.answer_message(req, out, &sent, own_only);
        }
    }

    /// Sends a message's answer, its OK in `out`: then the sender's own copy and the away notices.
    /// The copy is decided here, as the answer goes: when the sender is a recipient (MSG to
    /// yourself, a GROUP naming you), its connection gets the copy after the OK (a command's reply
    /// comes first, spec 6.4); if that connection was the sender's only one (`own_only`) and it
    /// has closed meanwhile, the message is kept for the sender's next login, as for any
    /// recipient that left before its delivery.
    fn answer_message(&mut self, req: Req, mut out: Out, sent: &Sent, own_only: bool) {
        let own_copy = self
            .conns
            .get(&req.conn)
            .and_then(|c| c.key())
            .is_some_and(|k| sent.online.contains(k));
        if own_copy {
            out.raw(&sent.line);
        } else if own_only {
            // No answer waits for it: its connection is gone.
            if let Some(op) = self.keep_for_later(&sent.sender, &sent.sender, sent.id) {
                self.store(op, |_, _| {});
            }
        }
        // The sender learns which recipients are away, after the OK.
        self.away_notices(&sent.sender, &sent.recipients, &mut out);
        self.finish(req, out);
    }

    /// Counts a stored message into an account's backlog and gives the op that records it (a
    /// recipient went offline while its message was being committed, or left before its backlog
    /// reached it); `None` when the backlog is full: the message is still in the log and in HISTORY,
    /// and the backlog bound wins.
    pub(super) fn keep_for_later(&mut self, key: &Key, sender: &Key, id: MsgId) -> Option<StoreOp> {
        let a = self.accounts.get_mut(key)?;
        // An account being deleted keeps nothing: its deletion, already sent to the store, would
        // not remove an entry written after it.
        if a.ties().inbox.total() >= MAX_PENDING_PER_ACCOUNT || a.phc.is_none() {
            return None;
        }
        a.ties_mut().inbox.add(sender);
        Some(StoreOp::AddPending {
            user: key.as_str().to_owned(),
            id,
        })
    }
}

/// The accounts that block `sender`, if any do: a room message skips them.
fn blockers_of<'a>(accounts: &'a Accounts, sender: &Key) -> Option<&'a HashSet<Key>> {
    accounts
        .get(sender)
        .map(|a| &a.ties().blocked_by)
        .filter(|b| !b.is_empty())
}

/// Whether a room message reaches a member live: only if the membership began before the message
/// (a member who joined while it was being committed has it in the JOIN's replay, if they may see
/// it at all).
fn reaches(m: &MemberRecord, id: MsgId) -> bool {
    m.since < id
}

/// A message's `MESSAGE` line, encoded once for every recipient.
fn message_line(id: MsgId, record: &MessageRecord) -> Chunk {
    out::shared(&ServerLine::Message(MessageLine {
        id,
        time_ms: record.time_ms,
        from: &record.from,
        to: recipient(&record.to),
        text: &record.text,
    }))
}
