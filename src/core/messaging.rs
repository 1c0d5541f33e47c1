//! MSG, GROUP and ALL: a message is committed to the log, then delivered, then acknowledged. A
//! MSG to a room is one record in the log and one entry in the room's index, however many members
//! the room has; offline members read it later (HISTORY, and the unread counts at LOGIN).
//!
//! Whether a recipient is online is decided when the command runs: an offline recipient gets the
//! message through the backlog at its next login (its backlog entry is written in the same commit),
//! an online one gets it live when the commit finishes. A recipient that was online when the
//! message was sent but has no connection left by the time the commit finishes gets it added to
//! its backlog then, in a second commit; the OK, which then says KEPT for it, waits for that commit,
//! so every OK follows the commit that makes it true.

use super::out::{self, Out};
use super::quota::stored_bytes;
use super::{fan_out, recipient, Core, Req};
use crate::config::MAX_PENDING_PER_ACCOUNT;
use crate::metrics::MessageKind;
use crate::outbox::Chunk;
use crate::proto::code::Code;
use crate::proto::command::Verb;
use crate::proto::name::{Key, Name};
use crate::proto::room::RoomName;
use crate::proto::server_line::{Delivery, MessageLine, OkReply, ServerLine};
use crate::store::{MemberRecord, MessageRecord, MsgId, RoomId, StoreOp, To};

/// The accounts a MSG or GROUP is for, sorted by what happens to their copy (empty for ALL).
struct Addressees {
    /// Online when the message was sent: delivered live once it is committed.
    online: Vec<Key>,
    /// Offline: kept in their backlogs, in the same commit.
    offline: Vec<Key>,
    /// All of them, in the sender's order.
    recipients: Vec<Key>,
}

/// A message waiting for its commit.
struct Sent {
    sender: Key,
    id: MsgId,
    /// The MESSAGE line, encoded once when the message was made; every recipient's outbox shares
    /// these bytes.
    line: Chunk,
    /// Recipients that had a connection online when the message was sent.
    online: Vec<Key>,
    /// Recipients whose copy went to their offline backlog.
    kept: usize,
    /// Every recipient, in the sender's order (empty for ALL), for the away notices after the OK.
    recipients: Vec<Key>,
}

impl Core {
    /// MSG (one name) and GROUP (a list): all or nothing.
    pub(super) fn send_direct(&mut self, req: Req, to: Vec<Name>, text: String) {
        let Some(sender) = self.account_of(req.conn) else {
            return;
        };
        let share = self.settings.limits.inbox_share;
        let mut unknown = Vec::new();
        let mut blocked = Vec::new();
        let mut friends_only = Vec::new();
        let mut full = Vec::new();
        let mut my_share_full = Vec::new();
        let mut online = Vec::new();
        let mut offline = Vec::new();
        let mut shown = Vec::with_capacity(to.len());
        let recipients: Vec<Key> = to.iter().map(Name::key).collect();
        for name in &to {
            let key = name.key();
            match self.accounts.get(&key) {
                Some(a) if a.phc.is_some() => {
                    shown.push(a.name.clone());
                    match self.dm_refusal(&sender, &key) {
                        Some(Code::BLOCKED) => blocked.push(a.name.clone()),
                        Some(_) => friends_only.push(a.name.clone()),
                        None => {}
                    }
                    if !a.conns.is_empty() {
                        online.push(key);
                    } else if a.inbox.total() >= MAX_PENDING_PER_ACCOUNT {
                        full.push(a.name.clone());
                    } else if share > 0 && a.inbox.from(&sender) >= share {
                        my_share_full.push(a.name.clone());
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
                a.inbox.add(&sender);
            }
        }
        let to = match (req.verb, shown.pop()) {
            (Some(Verb::Msg), Some(one)) => To::User(one),
            (_, last) => {
                shown.extend(last);
                To::Group(shown)
            }
        };
        let whom = Addressees {
            online,
            offline,
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
        let Some(from) = self.accounts.get(&sender).map(|a| a.name.clone()) else {
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
        let marker = room.members.get_mut(&sender).map(|m| {
            m.read_id = id;
            m.read_seq = seq;
            *m
        });
        let line = out::shared(&ServerLine::Message(MessageLine {
            id,
            time_ms: record.time_ms,
            from: &record.from,
            to: recipient(&record.to),
            text: &record.text,
        }));
        let mut ops = vec![StoreOp::AppendRoomMessage {
            msg: record,
            room: room_id,
            seq,
        }];
        if let Some(member) = marker {
            ops.push(StoreOp::PutMember {
                room: room_id,
                user: sender.as_str().to_owned(),
                member,
            });
        }
        self.reserve(&mut req);
        self.store_all(ops, move |core, _| {
            core.settings.metrics.message(MessageKind::Room);
            let delivered = core.deliver_to_room(room_id, id, &sender, &line, req.conn);
            let mut out = Out::new();
            out.ok(&req, OkReply::RoomMsg { id, delivered });
            core.finish(req, out);
        });
    }

    /// Queues a room message on every connection of the room's online members whose membership
    /// began before it, but `skip` (the sender's connection, which gets its OK) and the members who
    /// block the sender; returns how many members other than the sender that reached.
    fn deliver_to_room(
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
        let blockers = self
            .accounts
            .get(sender)
            .map(|a| &a.blocked_by)
            .filter(|b| !b.is_empty());
        let mut users = 0;
        for (key, m) in &room.members {
            if !reaches(m, id) || blockers.is_some_and(|b| b.contains(key)) {
                continue;
            }
            let Some(acct) = self.accounts.get(key) else {
                continue;
            };
            if acct.conns.is_empty() {
                continue;
            }
            if key != sender {
                users += 1;
            }
            for conn in &acct.conns {
                if *conn == skip {
                    continue;
                }
                if let Some(c) = self.conns.get(conn) {
                    self.settings.metrics.deliveries.inc();
                    if c.outbox.push(chunk.clone()).is_err() {
                        self.overflowed.push(*conn);
                    }
                }
            }
        }
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
            online: Vec::new(),
            offline: Vec::new(),
            recipients: Vec::new(),
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
            recipients,
        } = whom;
        let Some(from) = self.accounts.get(&sender).map(|a| a.name.clone()) else {
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
        let line = out::shared(&ServerLine::Message(MessageLine {
            id,
            time_ms: record.time_ms,
            from: &record.from,
            to: recipient(&record.to),
            text: &record.text,
        }));
        let sent = Sent {
            sender,
            id,
            line,
            online,
            kept: pending_for.len(),
            recipients,
        };
        let op = StoreOp::AppendMessage {
            msg: record,
            pending_for: pending_for.iter().map(|k| k.as_str().to_owned()).collect(),
        };
        self.reserve(&mut req);
        self.store(op, move |core, _| core.message_stored(req, sent));
    }

    fn message_stored(&mut self, req: Req, sent: Sent) {
        let (id, chunk) = (sent.id, &sent.line);
        let mut out = Out::new();
        let metrics = self.settings.metrics.clone();
        metrics.message(match req.verb {
            Some(Verb::All) => MessageKind::Broadcast,
            Some(Verb::Group) => MessageKind::Group,
            _ => MessageKind::Direct,
        });
        if req.verb == Some(Verb::All) {
            // Everyone online but the sender and the accounts that block it.
            let blockers = self.accounts.get(&sent.sender).map(|a| &a.blocked_by);
            let others: Vec<&Key> = self
                .online
                .iter()
                .filter(|k| **k != sent.sender && !blockers.is_some_and(|b| b.contains(*k)))
                .collect();
            let users = others.len();
            let reached = fan_out(
                &self.accounts,
                &self.conns,
                &mut self.overflowed,
                others.into_iter(),
                chunk,
                None,
            );
            metrics.deliveries.add(reached as u64);
            out.ok(
                &req,
                OkReply::All {
                    id,
                    delivered: users as u64,
                },
            );
            return self.finish(req, out);
        }
        // The sender's own connection, when it is a recipient (MSG to yourself, a GROUP naming
        // you), gets its copy after the OK: a command's reply comes first (spec 6.4).
        let own_copy = self
            .conns
            .get(&req.conn)
            .and_then(|c| c.key())
            .is_some_and(|k| sent.online.contains(k));
        let mut late = Vec::new();
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
            }
        }
        // The OK says what happened once the message was committed: a recipient that left
        // meanwhile has it kept, not delivered.
        let kept = sent.kept + late.len();
        let delivered = sent.online.len() - late.len();
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
        if own_copy {
            out.raw(chunk);
        }
        // The sender learns which recipients are away, after the OK.
        self.away_notices(&sent.sender, &sent.recipients, &mut out);
        // Each late recipient's backlog entry is its own op; the writes commit in the order they
        // were sent, so once the last is committed all are, and the OK may go.
        let ops: Vec<StoreOp> = late
            .iter()
            .filter_map(|k| self.keep_for_later(k, &sent.sender, id))
            .collect();
        let last = ops.len();
        let mut answer = Some((req, out));
        for (i, op) in ops.into_iter().enumerate() {
            if i + 1 < last {
                self.store(op, |_, _| {});
            } else if let Some((req, out)) = answer.take() {
                self.store(op, move |core, _| core.finish(req, out));
            }
        }
        if let Some((req, out)) = answer {
            self.finish(req, out);
        }
    }

    /// Counts a stored message into an account's backlog and gives the op that records it (a
    /// recipient went offline while its message was being committed, or left before its backlog
    /// reached it); `None` when the backlog is full: the message is still in the log and in HISTORY,
    /// and the backlog bound wins.
    pub(super) fn keep_for_later(&mut self, key: &Key, sender: &Key, id: MsgId) -> Option<StoreOp> {
        let a = self.accounts.get_mut(key)?;
        // An account being deleted keeps nothing: its deletion, already sent to the store, would
        // not remove an entry written after it.
        if a.inbox.total() >= MAX_PENDING_PER_ACCOUNT || a.phc.is_none() {
            return None;
        }
        a.inbox.add(sender);
        Some(StoreOp::AddPending {
            user: key.as_str().to_owned(),
            id,
        })
    }
}

/// Whether a room message reaches a member live: only if the membership began before the message
/// (a member who joined while it was being committed has it in the JOIN's replay, if they may see
/// it at all).
fn reaches(m: &MemberRecord, id: MsgId) -> bool {
    m.since < id
}
