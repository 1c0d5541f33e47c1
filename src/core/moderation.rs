//! INVITE, KICK, BAN, UNBAN and ROLE: what ops and owners do to other members.
//!
//! Ranks: owner > op > member. Ops and owners invite, kick and ban; they act only on someone of a
//! lower role (an owner on ops and members, an op on members). Owners change roles; owners are
//! peers, so one cannot demote another, only themselves, and never the last one. Like every room
//! command, the change is made in memory when the command runs and told at its commit.

use super::out::Out;
use super::{Core, Req};
use crate::config::{
    INVITE_LIFETIME_MS, MAX_BANS_PER_ROOM, MAX_INVITES_PER_ACCOUNT, MAX_INVITES_PER_ROOM,
};
use crate::proto::code::Code;
use crate::proto::command::Refusal;
use crate::proto::name::{Key, Name};
use crate::proto::room::{Role, RoomName};
use crate::proto::server_line::{OkReply, RoomEvent, ServerLine};
use crate::store::{BanRecord, InviteRecord, RoomId, StoreOp, StoreReply};

/// KICK and BAN, which share their checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removal {
    Kick,
    Ban,
}

impl Core {
    /// The target of a moderation command: a registered account, not the caller. Its key and its
    /// name as registered.
    fn target(&self, me: &Key, name: &Name) -> Result<(Key, String), Refusal> {
        let k = name.key();
        if &k == me {
            return Err(Refusal(
                Code::SELF_TARGET,
                "you cannot do that to yourself".into(),
            ));
        }
        let shown = self.registered(&k, name.as_str())?;
        Ok((k, shown))
    }

    /// Drops the room's expired invitations, in memory and in the store. Run before an invitation
    /// is counted against the room's bound, so expired ones neither count nor pile up.
    fn purge_invites(&mut self, id: RoomId) {
        let now = self.now;
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        let expired: Vec<Key> = room
            .invites
            .iter()
            .filter(|(_, i)| i.expires_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            room.invites.remove(k);
        }
        for k in expired {
            if let Some(a) = self.accounts.get_mut(&k) {
                if let Some(t) = a.ties_if_any() {
                    t.invited.remove(&id);
                }
            }
            let op = StoreOp::RemoveInvite {
                room: id,
                user: k.as_str().to_owned(),
            };
            self.store(op, |_, _| {});
        }
    }

    /// Invitations waiting for an account, expired ones left out.
    pub(super) fn invitations_of(&self, k: &Key) -> usize {
        let Some(a) = self.accounts.get(k) else {
            return 0;
        };
        a.ties()
            .invited
            .iter()
            .filter_map(|id| self.rooms.get(id))
            .filter(|r| r.invited(k, self.now).is_some())
            .count()
    }

    pub(super) fn invite(&mut self, mut req: Req, name: RoomName, who: Name) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let checked = self.moderator(&me, &name).and_then(|(id, _)| {
            let k = who.key();
            let shown = self.registered(&k, who.as_str())?;
            Ok((id, k, shown))
        });
        let (id, k, shown) = match checked {
            Ok(t) => t,
            Err(r) => return self.refused(req, r),
        };
        self.purge_invites(id);
        let now = self.now;
        let invitations = self.invitations_of(&k);
        let Some(room) = self.rooms.get(&id) else {
            return;
        };
        let refusal = if room.members().contains_key(&k) {
            Some((
                Code::ALREADY_MEMBER,
                format!("{shown} is a member of {}", room.name),
            ))
        } else if room.bans.contains_key(&k) {
            Some((
                Code::BANNED,
                format!("{shown} is banned from {}; UNBAN first", room.name),
            ))
        } else if self.barred(&me, &k) {
            // The invitation would reach the account that blocks the caller (or that the caller
            // blocks): refused like a direct message (4.19).
            Some((
                Code::BLOCKED,
                format!("a block stands between you and {shown}; nobody was invited"),
            ))
        } else if room.invited(&k, now).is_some() {
            // Invited again: the invitation is renewed and told again.
            None
        } else if room.valid_invites(now) >= MAX_INVITES_PER_ROOM {
            Some((
                Code::INVITE_LIST_FULL,
                format!(
                    "{} has {MAX_INVITES_PER_ROOM} invitations waiting, its most",
                    room.name
                ),
            ))
        } else if invitations >= MAX_INVITES_PER_ACCOUNT {
            Some((
                Code::TOO_MANY_INVITATIONS,
                format!("{shown} has {MAX_INVITES_PER_ACCOUNT} invitations waiting, the most"),
            ))
        } else {
            None
        };
        if let Some((code, text)) = refusal {
            return self.refuse(req, code, &text);
        }
        let invite = InviteRecord {
            by: self.shown(&me),
            expires_ms: now.saturating_add(INVITE_LIFETIME_MS),
        };
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        room.invites.insert(k.clone(), invite.clone());
        let room_name = room.name.clone();
        if let Some(a) = self.accounts.get_mut(&k) {
            a.ties_mut().invited.insert(id);
        }
        let op = StoreOp::PutInvite {
            room: id,
            user: k.as_str().to_owned(),
            invite: invite.clone(),
        };
        self.reserve(&mut req);
        self.store(op, move |core, reply| {
            if reply == StoreReply::Taken {
                return core.room_gone(req, &room_name);
            }
            let event = RoomEvent::Invited {
                by: &invite.by,
                expires_ms: invite.expires_ms,
            };
            // Every connection of the invitee, the inviter's own included if they are the same
            // account (they cannot be: a member cannot be invited).
            core.tell(&[k], &room_name, event, req.conn);
            let mut out = Out::new();
            out.ok(
                &req,
                OkReply::Invite {
                    room: &room_name,
                    name: &shown,
                    expires_ms: invite.expires_ms,
                },
            );
            core.finish(req, out);
        });
    }

    pub(super) fn kick(&mut self, req: Req, name: RoomName, who: Name, reason: Option<String>) {
        self.remove(req, Removal::Kick, name, who, reason)
    }

    pub(super) fn ban(&mut self, req: Req, name: RoomName, who: Name, reason: Option<String>) {
        self.remove(req, Removal::Ban, name, who, reason)
    }

    fn remove(
        &mut self,
        mut req: Req,
        how: Removal,
        name: RoomName,
        who: Name,
        reason: Option<String>,
    ) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let checked = self.moderator(&me, &name).and_then(|(id, my_role)| {
            let (k, shown) = self.target(&me, &who)?;
            Ok((id, my_role, k, shown))
        });
        let (id, my_role, k, shown) = match checked {
            Ok(t) => t,
            Err(r) => return self.refused(req, r),
        };
        let Some(room) = self.rooms.get(&id) else {
            return;
        };
        let their_role = room.role_of(&k);
        let refusal = match (how, their_role) {
            (_, Some(r)) if r >= my_role => Some((
                Code::NOT_ALLOWED,
                format!(
                    "{shown} is {} of {}; you act only on a lower role",
                    article(r),
                    room.name
                ),
            )),
            (Removal::Kick, None) => Some((
                Code::NO_SUCH_MEMBER,
                format!("{shown} is not a member of {}", room.name),
            )),
            (Removal::Ban, _) if room.bans.contains_key(&k) => Some((
                Code::ALREADY_BANNED,
                format!("{shown} is banned from {} already", room.name),
            )),
            (Removal::Ban, _) if room.bans.len() >= MAX_BANS_PER_ROOM => Some((
                Code::BAN_LIST_FULL,
                format!(
                    "{} has {MAX_BANS_PER_ROOM} bans, its most; UNBAN someone first",
                    room.name
                ),
            )),
            _ => None,
        };
        if let Some((code, text)) = refusal {
            return self.refuse(req, code, &text);
        }
        let by = self.shown(&me);
        let audience = room.audience();
        let user = k.as_str().to_owned();
        let mut ops = Vec::new();
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        let room_name = room.name.clone();
        if how == Removal::Ban {
            let ban = BanRecord {
                by: by.clone(),
                time_ms: self.now,
                reason: reason.clone().unwrap_or_default(),
            };
            room.bans.insert(k.clone(), ban.clone());
            ops.push(StoreOp::PutBan {
                room: id,
                user: user.clone(),
                ban,
            });
            if room.invites.remove(&k).is_some() {
                ops.push(StoreOp::RemoveInvite {
                    room: id,
                    user: user.clone(),
                });
            }
        }
        if room.remove_member(&k).is_some() {
            ops.push(StoreOp::RemoveMember { room: id, user });
        }
        if let Some(a) = self.accounts.get_mut(&k) {
            a.rooms.remove(&id);
            if how == Removal::Ban {
                if let Some(t) = a.ties_if_any() {
                    t.invited.remove(&id);
                }
            }
        }
        self.rewatch(id);
        log::info!(
            "{by} {} {shown} from {room_name}",
            if how == Removal::Ban {
                "banned"
            } else {
                "kicked"
            }
        );
        if how == Removal::Kick {
            // (A ban is told from its record: see `Core::remote`.)
            let event = RoomEvent::Kicked {
                name: &shown,
                by: &by,
                reason: reason.as_deref().unwrap_or(""),
            };
            if let Some(notice) = self.room_notice(id, &room_name, event) {
                ops.insert(0, notice);
            }
        }
        self.reserve(&mut req);
        self.store_all(ops, move |core, reply| {
            if reply == StoreReply::Taken {
                return core.room_gone(req, &room_name);
            }
            let reason = reason.as_deref().unwrap_or("");
            let event = match how {
                Removal::Kick => RoomEvent::Kicked {
                    name: &shown,
                    by: &by,
                    reason,
                },
                Removal::Ban => RoomEvent::Banned {
                    name: &shown,
                    by: &by,
                    reason,
                },
            };
            core.tell(&audience, &room_name, event, req.conn);
            let reply = match how {
                Removal::Kick => OkReply::Kick {
                    room: &room_name,
                    name: &shown,
                },
                Removal::Ban => OkReply::Ban {
                    room: &room_name,
                    name: &shown,
                },
            };
            let mut out = Out::new();
            out.ok(&req, reply);
            core.finish(req, out);
        });
    }

    pub(super) fn unban(&mut self, mut req: Req, name: RoomName, who: Name) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let checked = self.moderator(&me, &name).and_then(|(id, _)| {
            let k = who.key();
            let shown = self.registered(&k, who.as_str())?;
            Ok((id, k, shown))
        });
        let (id, k, shown) = match checked {
            Ok(t) => t,
            Err(r) => return self.refused(req, r),
        };
        let by = self.shown(&me);
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        if room.bans.remove(&k).is_none() {
            let text = format!("{shown} is not banned from {}", room.name);
            return self.refuse(req, Code::NOT_BANNED, &text);
        }
        let audience = room.audience();
        let room_name = room.name.clone();
        let op = StoreOp::RemoveBan {
            room: id,
            user: k.as_str().to_owned(),
        };
        let event = RoomEvent::Unbanned {
            name: &shown,
            by: &by,
        };
        let notice = self.room_notice(id, &room_name, event);
        self.reserve(&mut req);
        self.store_all(
            notice.into_iter().chain([op]).collect(),
            move |core, reply| {
                if reply == StoreReply::Taken {
                    return core.room_gone(req, &room_name);
                }
                let event = RoomEvent::Unbanned {
                    name: &shown,
                    by: &by,
                };
                core.tell(&audience, &room_name, event, req.conn);
                let mut out = Out::new();
                out.ok(
                    &req,
                    OkReply::Unban {
                        room: &room_name,
                        name: &shown,
                    },
                );
                core.finish(req, out);
            },
        );
    }

    pub(super) fn role(&mut self, mut req: Req, name: RoomName, who: Name, role: Role) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let checked = self.owner(&me, &name).and_then(|id| {
            let k = who.key();
            let shown = self.registered(&k, who.as_str())?;
            Ok((id, k, shown))
        });
        let (id, k, shown) = match checked {
            Ok(t) => t,
            Err(r) => return self.refused(req, r),
        };
        let Some(room) = self.rooms.get(&id) else {
            return;
        };
        let refusal = match room.role_of(&k) {
            None => Some((
                Code::NO_SUCH_MEMBER,
                format!("{shown} is not a member of {}", room.name),
            )),
            // Owners are peers: one does not demote another.
            Some(Role::Owner) if k != me && role != Role::Owner => Some((
                Code::NOT_ALLOWED,
                format!(
                    "{shown} is an owner of {}; only they can step down",
                    room.name
                ),
            )),
            Some(Role::Owner) if k == me && role != Role::Owner && room.owners() == 1 => Some((
                Code::LAST_OWNER,
                format!(
                    "you are the last owner of {}; make someone else owner first",
                    room.name
                ),
            )),
            _ => None,
        };
        if let Some((code, text)) = refusal {
            return self.refuse(req, code, &text);
        }
        let by = self.shown(&me);
        let room_name = room.name.clone();
        let audience = room.audience();
        let unchanged = room.role_of(&k) == Some(role);
        let reply = move |req: &Req, out: &mut Out| {
            out.ok(
                req,
                OkReply::Role {
                    room: &room_name,
                    name: &shown,
                    role,
                },
            );
        };
        if unchanged {
            let mut out = Out::new();
            reply(&req, &mut out);
            return self.finish(req, out);
        }
        let Some(member) = self.rooms.get_mut(&id).and_then(|r| r.member_mut(&k)) else {
            return;
        };
        member.role = role;
        let op = StoreOp::PutMember {
            room: id,
            user: k.as_str().to_owned(),
            member: *member,
        };
        let event_room = self
            .rooms
            .get(&id)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let event_name = self.shown(&k);
        let event = RoomEvent::Role {
            name: &event_name,
            role,
            by: &by,
        };
        let notice = self.room_notice(id, &event_room, event);
        self.reserve(&mut req);
        self.store_all(
            notice.into_iter().chain([op]).collect(),
            move |core, stored| {
                if stored == StoreReply::Taken {
                    return core.room_gone(req, &event_room);
                }
                let event = RoomEvent::Role {
                    name: &event_name,
                    role,
                    by: &by,
                };
                core.tell(&audience, &event_room, event, req.conn);
                let mut out = Out::new();
                reply(&req, &mut out);
                core.finish(req, out);
            },
        );
    }

    /// The `INVITED` lines a LOGIN shows: the account's valid invitations, by room name.
    pub(super) fn invited_lines(&self, k: &Key, out: &mut Out) {
        let Some(a) = self.accounts.get(k) else {
            return;
        };
        let mut rooms: Vec<(&str, &InviteRecord)> = a
            .ties()
            .invited
            .iter()
            .filter_map(|id| self.rooms.get(id))
            .filter_map(|r| r.invited(k, self.now).map(|i| (r.name.as_str(), i)))
            .collect();
        rooms.sort_by_cached_key(|(n, _)| n.to_ascii_lowercase());
        for (room, i) in rooms {
            out.line(&ServerLine::RoomEvent {
                room,
                event: RoomEvent::Invited {
                    by: &i.by,
                    expires_ms: i.expires_ms,
                },
            });
        }
    }
}

/// "an owner", "an op", "a member".
fn article(role: Role) -> &'static str {
    match role {
        Role::Owner => "an owner",
        Role::Op => "an op",
        Role::Member => "a member",
    }
}
