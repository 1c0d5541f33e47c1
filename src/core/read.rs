//! READ, and what a LOGIN reports of rooms: unread counts.
//!
//! A read marker is per account and conversation, and only moves forward. A room member's marker
//! is kept with the membership, as the id read up to and that message's position in the room, so
//! the unread count is the room's message count minus the position: no log is read to count, at a
//! LOGIN or a ROOMS. The marker of a direct conversation lives only in the store. When a marker
//! moves, the account's other connections are told (`READ <target> <id>`), so every device agrees.

use super::out::{self, Out};
use super::{fan_out, ConnId, Core, Req};
use crate::proto::code::Code;
use crate::proto::name::Key;
use crate::proto::room::{RoomName, Target};
use crate::proto::server_line::{OkReply, ServerLine};
use crate::store::{MsgId, ReadOp, RoomId, StoreOp, StoreReply};

/// A room with unread messages, as a LOGIN reports it.
pub(super) struct Unread {
    room: RoomId,
    name: String,
    count: u64,
    /// The marker: the first unread message is the room's first above it.
    after: MsgId,
}

impl Core {
    pub(super) fn read(&mut self, req: Req, target: Target, id: Option<MsgId>) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        match target {
            Target::Room(name) => self.read_room(req, me, name, id),
            Target::User(name) => {
                let k = name.key();
                match self.registered(&k, name.as_str()) {
                    Ok(shown) => self.read_direct(req, me, k, shown, id),
                    Err(r) => self.refused(req, r),
                }
            }
        }
    }

    fn read_room(&mut self, mut req: Req, me: Key, name: RoomName, id: Option<MsgId>) {
        let room_id = match self.membership(&me, &name) {
            Ok((room_id, _)) => room_id,
            Err(r) => return self.refused(req, r),
        };
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        let Some(m) = room.members().get(&me) else {
            return;
        };
        let shown = room.name.clone();
        let (last_id, count) = (room.last_id, room.count);
        // Never past the room's last message: "read everything" is its last id.
        let wanted = id.map(|id| id.min(last_id));
        let Some(wanted) = wanted.filter(|&w| w > m.read_id) else {
            // Only asked, or not forward: the marker as it is.
            let mut out = Out::new();
            out.ok(
                &req,
                OkReply::Read {
                    target: &shown,
                    id: m.read_id,
                },
            );
            return self.finish(req, out);
        };
        self.reserve(&mut req);
        if wanted == last_id {
            return self.move_room_marker(req, me, room_id, shown, wanted, count);
        }
        // Somewhere in the middle: its position comes from the room's index.
        let op = StoreOp::RoomSeq {
            room: room_id,
            upto: wanted,
        };
        self.store(op, move |core, reply| {
            let seq = match reply {
                StoreReply::Seq(found) => found.map_or(0, |(_, seq)| seq),
                other => {
                    let detail =
                        format!("unexpected store reply {other:?} to a room position read");
                    return core.internal_error(req, &detail);
                }
            };
            core.move_room_marker(req, me, room_id, shown, wanted, seq);
        });
    }

    /// Moves a member's marker to (`id`, `seq`) unless it is there or further already (another
    /// READ may have passed this one while its position was read); answers with the marker.
    fn move_room_marker(
        &mut self,
        req: Req,
        me: Key,
        room: RoomId,
        shown: String,
        id: MsgId,
        seq: u64,
    ) {
        let member = self.rooms.get_mut(&room).and_then(|r| r.member_mut(&me));
        let Some(member) = member else {
            let text = format!("you are not a member of {shown}");
            return self.refuse(req, Code::NOT_MEMBER, &text);
        };
        if id <= member.read_id {
            let mut out = Out::new();
            out.ok(
                &req,
                OkReply::Read {
                    target: &shown,
                    id: member.read_id,
                },
            );
            return self.finish(req, out);
        }
        member.read_id = id;
        member.read_seq = seq;
        let op = StoreOp::PutMember {
            room,
            user: me.as_str().to_owned(),
            member: *member,
        };
        self.store(op, move |core, reply| {
            if reply == StoreReply::Taken {
                return core.room_gone(req, &shown);
            }
            core.marker_moved(&me, req.conn, &shown, id);
            let mut out = Out::new();
            out.ok(&req, OkReply::Read { target: &shown, id });
            core.finish(req, out);
        });
    }

    fn read_direct(&mut self, mut req: Req, me: Key, with: Key, shown: String, id: Option<MsgId>) {
        let user = me.as_str().to_owned();
        let other = with.as_str().to_owned();
        self.reserve(&mut req);
        let op = match id {
            None => StoreOp::DirectRead { user, with: other },
            // Never past the last message id handed out.
            Some(id) => StoreOp::SetDirectRead {
                user,
                with: other,
                id: id.min(self.next_id.saturating_sub(1)),
            },
        };
        self.store(op, move |core, reply| {
            let StoreReply::Marker { before, after } = reply else {
                let detail = format!("unexpected store reply {reply:?} to a read marker op");
                return core.internal_error(req, &detail);
            };
            if after > before {
                core.marker_moved(&me, req.conn, &shown, after);
            }
            let mut out = Out::new();
            out.ok(
                &req,
                OkReply::Read {
                    target: &shown,
                    id: after,
                },
            );
            core.finish(req, out);
        });
    }

    /// Tells the account's other connections that its marker of `target` is now `id`.
    fn marker_moved(&mut self, me: &Key, skip: ConnId, target: &str, id: MsgId) {
        let chunk = out::shared(&ServerLine::Read { target, id });
        fan_out(
            &self.accounts,
            &self.conns,
            &mut self.overflowed,
            std::iter::once(me),
            &chunk,
            Some(skip),
        );
    }

    /// The account's rooms with messages after its marker, by room name.
    pub(super) fn unread_rooms(&self, k: &Key) -> Vec<Unread> {
        let Some(a) = self.accounts.get(k) else {
            return Vec::new();
        };
        let mut v: Vec<Unread> = a
            .rooms
            .iter()
            .filter_map(|id| self.rooms.get(id))
            .filter_map(|r| {
                let m = r.members().get(k)?;
                let count = r.unread(m);
                (count > 0).then(|| Unread {
                    room: r.id,
                    name: r.name.clone(),
                    count,
                    after: m.read_id,
                })
            })
            .collect();
        v.sort_by_cached_key(|u| u.name.to_ascii_lowercase());
        v
    }

    /// Reads where each unread room's first unread message is, then hands the `UNREAD` lines to
    /// `then`.
    pub(super) fn unread_lines(
        &mut self,
        unread: Vec<Unread>,
        then: impl FnOnce(&mut Core, Out) + Send + 'static,
    ) {
        if unread.is_empty() {
            return then(self, Out::new());
        }
        let rooms = unread.iter().map(|u| (u.room, u.after)).collect();
        let then = move |core: &mut Core, reply: StoreReply| {
            let mut out = Out::new();
            if let StoreReply::FirstIds(firsts) = reply {
                for (u, first) in unread.iter().zip(firsts) {
                    if let Some(first) = first {
                        out.line(&ServerLine::Unread {
                            room: &u.name,
                            count: u.count,
                            first,
                        });
                    }
                }
            } else {
                log::error!("internal error: unexpected store reply {reply:?} to an unread read");
            }
            then(core, out);
        };
        // While writes fail, the read goes beside the writes waiting for the disk, not behind
        // them: a login is not held up by a failing disk (spec 6.6).
        if self.store_failing {
            self.store_fresh(ReadOp::FirstUnread { rooms }, then);
        } else {
            self.store(StoreOp::FirstUnread { rooms }, then);
        }
    }
}
