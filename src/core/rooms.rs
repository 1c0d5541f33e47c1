//! Rooms: the in-memory room state, and JOIN, PART, ROOMS, MEMBERS, TOPIC and ROOM.
//!
//! The core owns every room: its settings, members (with their roles and read markers), bans and
//! invitations, loaded from the store's snapshot at start, like accounts and friendships. A command
//! changes them when it runs, so that the next command sees the change (a second JOIN finds the
//! member, a full room refuses the next one); the store op that makes the change durable goes out
//! at once, and the reply and the pushes go out when it is committed.
//!
//! Who is told: an event (someone joined, left, was kicked, ...) goes to the members the room had
//! when the command ran, taken then and reached at the commit, on every connection but the one that
//! sent the command (its answer says it). A room message goes, at its commit, to the members then
//! whose membership began before the message (`since` below its id), which is what keeps a private
//! room's earlier messages from someone who joins while they are being committed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::out::{self, Out};
use super::{push_to_keys, Accounts, ConnId, ConnMap, Core, Req};
use crate::config::{JOIN_REPLAY, MAX_ROOMS_PER_ACCOUNT, ROOMS_LISTED_PUBLIC};
use crate::outbox::Outbox;
use crate::proto::code::Code;
use crate::proto::command::{Refusal, RoomSub, TopicChange};
use crate::proto::name::Key;
use crate::proto::room::{Privacy, Role, RoomKey, RoomName};
use crate::proto::server_line::{
    JoinOutcome, MessageLine, OkReply, PartOutcome, Presence, RoomEvent, RoomLine, RoomReply,
    ServerLine, Standing, TopicSet,
};
use crate::store::{
    BanRecord, InviteRecord, MemberRecord, MsgId, Notice, RoomId, RoomRecord, RoomState, StoreOp,
    StoreReply, TopicRecord,
};

/// A room, as the core keeps it.
pub(super) struct Room {
    pub(super) id: RoomId,
    /// As created, `#` included.
    pub(super) name: String,
    pub(super) created_ms: i64,
    pub(super) private: bool,
    pub(super) topic: Option<TopicRecord>,
    /// Changed only through [`Room::add_member`] and [`Room::remove_member`], which keep `reach`
    /// right; a member's role and read markers change through [`Room::member_mut`].
    members: HashMap<Key, MemberRecord>,
    /// The members' connections on this server, kept for the fan-out of the room's messages.
    reach: Reach,
    pub(super) bans: BTreeMap<Key, BanRecord>,
    /// Invitations, expired ones included until they are purged.
    pub(super) invites: BTreeMap<Key, InviteRecord>,
    /// The id of its last message (0: none yet). Set when a message is accepted, so the next one
    /// knows its place.
    pub(super) last_id: MsgId,
    /// How many messages it has.
    pub(super) count: u64,
}

impl Room {
    /// A room as its record describes it, with no members, bans, invitations or messages yet.
    pub(super) fn from_record(id: RoomId, record: RoomRecord) -> Room {
        Room {
            id,
            name: record.name,
            created_ms: record.created_ms,
            private: record.private,
            topic: record.topic,
            members: HashMap::new(),
            reach: Reach::default(),
            bans: BTreeMap::new(),
            invites: BTreeMap::new(),
            last_id: 0,
            count: 0,
        }
    }

    pub(super) fn privacy(&self) -> Privacy {
        if self.private {
            Privacy::Private
        } else {
            Privacy::Public
        }
    }

    /// The members, by key.
    pub(super) fn members(&self) -> &HashMap<Key, MemberRecord> {
        &self.members
    }

    /// A member's record, to change its role or its read markers (never `since`, which the
    /// fan-out's list copies: a new `since` is a new membership, [`Room::add_member`]).
    pub(super) fn member_mut(&mut self, k: &Key) -> Option<&mut MemberRecord> {
        self.members.get_mut(k)
    }

    /// Adds (or replaces) a membership. Returns the record it replaced.
    pub(super) fn add_member(&mut self, k: Key, m: MemberRecord) -> Option<MemberRecord> {
        self.reach.stale();
        self.members.insert(k, m)
    }

    /// Ends a membership. Returns its record.
    pub(super) fn remove_member(&mut self, k: &Key) -> Option<MemberRecord> {
        let gone = self.members.remove(k);
        if gone.is_some() {
            self.reach.stale();
        }
        gone
    }

    /// The fan-out's list must be made again: a member's connections changed (a login, a
    /// connection closed, the account deleted).
    pub(super) fn connections_changed(&mut self) {
        self.reach.stale();
    }

    /// The members' connections on this server, one entry per connection, made again from the
    /// members and the accounts if something changed since it was last made. What a room message's
    /// fan-out walks: a loop over a list instead of a lookup of each member's account by its key.
    pub(super) fn reach(&mut self, accounts: &Accounts, conns: &ConnMap) -> &[Reached] {
        if !self.reach.fresh {
            self.reach.make(&self.members, accounts, conns);
        } else {
            #[cfg(debug_assertions)]
            self.reach.check(&self.members, accounts, conns);
        }
        &self.reach.list
    }

    pub(super) fn role_of(&self, k: &Key) -> Option<Role> {
        self.members.get(k).map(|m| m.role)
    }

    pub(super) fn owners(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.role == Role::Owner)
            .count()
    }

    /// A valid (unexpired) invitation for `k`.
    pub(super) fn invited(&self, k: &Key, now: i64) -> Option<&InviteRecord> {
        self.invites.get(k).filter(|i| i.expires_ms > now)
    }

    /// Invitations that have not expired.
    pub(super) fn valid_invites(&self, now: i64) -> usize {
        self.invites.values().filter(|i| i.expires_ms > now).count()
    }

    /// What a member may see of the room: ids above this. A private room shows a member what was
    /// said from their join on; a public one shows everything.
    pub(super) fn visible_after(&self, m: &MemberRecord) -> MsgId {
        if self.private {
            m.since
        } else {
            0
        }
    }

    /// Unread messages of a member: those after its read marker.
    pub(super) fn unread(&self, m: &MemberRecord) -> u64 {
        self.count.saturating_sub(m.read_seq)
    }

    /// Whether `k` may look at the room (its topic, members, settings): anyone for a public room;
    /// members and invitees for a private one.
    fn visible_to(&self, k: &Key, now: i64) -> bool {
        !self.private || self.members.contains_key(k) || self.invited(k, now).is_some()
    }

    fn record(&self) -> RoomRecord {
        RoomRecord {
            name: self.name.clone(),
            created_ms: self.created_ms,
            private: self.private,
            topic: self.topic.clone(),
        }
    }

    /// Every member's key: the audience of an event, taken when its command runs.
    pub(super) fn audience(&self) -> Vec<Key> {
        self.members.keys().cloned().collect()
    }
}

/// A room's members that have connections on this server, one entry per connection: the list a
/// room message's fan-out walks, so that a message to 1,000 members is 1,000 pushes without 1,000
/// lookups of an account by its key (SipHash of the key, about a fifth of the core's work per
/// delivery before). Made from the members and the accounts when a message needs it and it is
/// stale; made stale by every change of who is a member ([`Room::add_member`],
/// [`Room::remove_member`]) and of a member's connections ([`Room::connections_changed`]: a login,
/// a connection closing, an account deleted). Blocks are not in it: the fan-out checks the
/// sender's `blocked_by` as it goes. In debug builds every use of a list not made again checks
/// that it is what making it again would give.
#[derive(Default)]
struct Reach {
    fresh: bool,
    list: Vec<Reached>,
}

/// One connection of a member, in a room's [`Reach`].
pub(super) struct Reached {
    pub(super) key: Key,
    /// The membership's `since`: the member gets messages with ids above it.
    pub(super) since: MsgId,
    pub(super) conn: ConnId,
    /// The connection's outbox, so that a push needs no lookup of the connection either.
    pub(super) outbox: Outbox,
    /// The member's first connection: the one a delivery counts the member with.
    pub(super) first: bool,
}

impl Reach {
    /// Drops the list at once: it holds the connections' outboxes, which a closed connection must
    /// not keep alive (with what was queued in them) until the room's next message.
    fn stale(&mut self) {
        self.fresh = false;
        self.list.clear();
    }

    fn make(&mut self, members: &HashMap<Key, MemberRecord>, accounts: &Accounts, conns: &ConnMap) {
        self.list.clear();
        for (key, m) in members {
            let Some(acct) = accounts.get(key) else {
                continue;
            };
            let mut first = true;
            for conn in &acct.conns {
                // Every logged-in connection is in the table (it leaves both at once).
                let Some(c) = conns.get(conn) else {
                    continue;
                };
                self.list.push(Reached {
                    key: key.clone(),
                    since: m.since,
                    conn: *conn,
                    outbox: c.outbox.clone(),
                    first,
                });
                first = false;
            }
        }
        // A room whose members went offline gives its memory back.
        if self.list.capacity() > 2 * self.list.len() + 8 {
            self.list.shrink_to_fit();
        }
        self.fresh = true;
    }

    /// Panics when the list differs from what making it again gives: a change of members or of
    /// connections that did not make it stale.
    #[cfg(debug_assertions)]
    fn check(&self, members: &HashMap<Key, MemberRecord>, accounts: &Accounts, conns: &ConnMap) {
        let mut again = Reach::default();
        again.make(members, accounts, conns);
        let seen = |list: &[Reached]| {
            let mut v: Vec<_> = list
                .iter()
                .map(|r| (r.key.clone(), r.conn, r.since, r.first))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            seen(&self.list),
            seen(&again.list),
            "a room's fan-out list is stale"
        );
    }
}

/// An account's connections changed (`ids`: its rooms): their fan-out lists are made again.
pub(super) fn connections_changed(rooms: &mut HashMap<RoomId, Room>, ids: &BTreeSet<RoomId>) {
    for id in ids {
        if let Some(r) = rooms.get_mut(id) {
            r.connections_changed();
        }
    }
}

/// The rooms of a snapshot, with each account's memberships and invitations noted.
pub(super) fn load(
    rooms: Vec<RoomState>,
    members: Vec<(RoomId, String, MemberRecord)>,
    bans: Vec<(RoomId, String, BanRecord)>,
    invites: Vec<(RoomId, String, InviteRecord)>,
    accounts: &mut Accounts,
) -> (HashMap<RoomId, Room>, HashMap<RoomKey, RoomId>) {
    let mut by_id = HashMap::with_capacity(rooms.len());
    let mut names = HashMap::with_capacity(rooms.len());
    for r in rooms {
        names.insert(RoomKey::of(&r.record.name), r.id);
        let mut room = Room::from_record(r.id, r.record);
        room.last_id = r.last_id;
        room.count = r.count;
        by_id.insert(r.id, room);
    }
    for (room, user, m) in members {
        let key = Key::from_folded(user);
        if let (Some(r), Some(a)) = (by_id.get_mut(&room), accounts.get_mut(&key)) {
            a.rooms.insert(room);
            r.add_member(key, m);
        }
    }
    for (room, user, b) in bans {
        if let Some(r) = by_id.get_mut(&room) {
            r.bans.insert(Key::from_folded(user), b);
        }
    }
    for (room, user, i) in invites {
        let key = Key::from_folded(user);
        if let (Some(r), Some(a)) = (by_id.get_mut(&room), accounts.get_mut(&key)) {
            a.ties_mut().invited.insert(room);
            r.invites.insert(key, i);
        }
    }
    (by_id, names)
}

/// A `ROOM` line's fields, owned, so that an answer built at a commit can fall back to what the
/// room was when the command ran (it may have been deleted since).
#[derive(Clone)]
pub(super) struct Summary {
    name: String,
    privacy: Privacy,
    members: u64,
    standing: Standing,
    unread: Option<u64>,
    topic: String,
}

impl Summary {
    pub(super) fn line(&self) -> ServerLine<'_> {
        ServerLine::Room(RoomLine {
            room: &self.name,
            privacy: self.privacy,
            members: self.members,
            standing: self.standing,
            unread: self.unread,
            topic: &self.topic,
        })
    }
}

impl Core {
    /// The room `name` names, or NO_SUCH_ROOM.
    pub(super) fn find_room(&self, name: &RoomName) -> Result<RoomId, Refusal> {
        self.room_names.get(&name.key()).copied().ok_or_else(|| {
            Refusal(
                Code::NO_SUCH_ROOM,
                format!("there is no room {name}; JOIN {name} creates it"),
            )
        })
    }

    /// The room `name` names and the caller's role in it: NO_SUCH_ROOM, or NOT_MEMBER.
    pub(super) fn membership(&self, me: &Key, name: &RoomName) -> Result<(RoomId, Role), Refusal> {
        let id = self.find_room(name)?;
        let room = self.rooms.get(&id);
        match room.and_then(|r| r.role_of(me)) {
            Some(role) => Ok((id, role)),
            None => Err(Refusal(
                Code::NOT_MEMBER,
                format!("you are not a member of {}", self.room_shown(id, name)),
            )),
        }
    }

    /// A room's name as created, or as typed if it is gone.
    pub(super) fn room_shown(&self, id: RoomId, typed: &RoomName) -> String {
        self.rooms
            .get(&id)
            .map_or_else(|| typed.to_string(), |r| r.name.clone())
    }

    /// The room `name` names and the role the caller acts with there: their own as a member, or,
    /// for one of the server's admins, an owner's, member or not (spec 3.1: admins moderate any
    /// room as its owner would). NO_SUCH_ROOM, or NOT_MEMBER for anyone else outside it.
    fn acting_role(&self, me: &Key, name: &RoomName) -> Result<(RoomId, Role), Refusal> {
        if self.is_admin(me) {
            return Ok((self.find_room(name)?, Role::Owner));
        }
        self.membership(me, name)
    }

    /// Whether the caller sees what a room's ops and owners see of it: its members, topic, bans
    /// and invitations, also when it is private (a member, an invitee, or an admin).
    fn sees(&self, room: &Room, me: &Key) -> bool {
        self.is_admin(me) || room.visible_to(me, self.now)
    }

    /// Like [`Core::acting_role`], and the caller must be an op or owner: NOT_ALLOWED.
    pub(super) fn moderator(&self, me: &Key, name: &RoomName) -> Result<(RoomId, Role), Refusal> {
        let (id, role) = self.acting_role(me, name)?;
        if !role.moderates() {
            return Err(Refusal(
                Code::NOT_ALLOWED,
                format!(
                    "only an op or owner of {} may do that",
                    self.room_shown(id, name)
                ),
            ));
        }
        Ok((id, role))
    }

    /// Like [`Core::acting_role`], and the caller must be an owner: NOT_ALLOWED.
    pub(super) fn owner(&self, me: &Key, name: &RoomName) -> Result<RoomId, Refusal> {
        let (id, role) = self.acting_role(me, name)?;
        if role != Role::Owner {
            return Err(Refusal(
                Code::NOT_ALLOWED,
                format!("only an owner of {} may do that", self.room_shown(id, name)),
            ));
        }
        Ok(id)
    }

    /// The account `name` names, as registered, or UNKNOWN_USER.
    pub(super) fn registered(&self, k: &Key, typed: &str) -> Result<String, Refusal> {
        match self.accounts.get(k) {
            Some(a) if a.phc.is_some() => Ok(a.name()),
            _ => Err(Refusal(
                Code::UNKNOWN_USER,
                format!("no such user: {typed}"),
            )),
        }
    }

    /// The name of an account as registered (its key if it has none, which cannot happen for an
    /// account the core knows).
    pub(super) fn shown(&self, k: &Key) -> String {
        self.accounts
            .get(k)
            .map_or_else(|| k.as_str().to_owned(), |a| a.name())
    }

    /// A refusal as the command's answer.
    pub(super) fn refused(&mut self, req: Req, r: Refusal) {
        self.refuse(req, r.0, &r.1)
    }

    /// The caller's view of a room, as a `ROOM` line shows it.
    pub(super) fn summary(&self, room: &Room, me: &Key) -> Summary {
        let m = room.members().get(me);
        let standing = match m {
            Some(m) => Standing::Member(m.role),
            None if room.invited(me, self.now).is_some() => Standing::Invited,
            None => Standing::Outside,
        };
        Summary {
            name: room.name.clone(),
            privacy: room.privacy(),
            members: room.members().len() as u64,
            standing,
            unread: m.map(|m| room.unread(m)),
            topic: room
                .topic
                .as_ref()
                .map(|t| t.text.clone())
                .unwrap_or_default(),
        }
    }

    /// Queues a room event on its audience at the commit: every connection of `audience`, but
    /// `skip`.
    pub(super) fn tell(&mut self, audience: &[Key], room: &str, event: RoomEvent<'_>, skip: u64) {
        let chunk = out::shared(&ServerLine::RoomEvent { room, event });
        push_to_keys(
            &self.accounts,
            &self.conns,
            &mut self.overflowed,
            audience,
            &chunk,
            skip,
        );
    }

    /// In a cluster, the op that has the other nodes tell their connections of `room`'s members
    /// the `event` of a change, to be stored before the change's own ops (the members are taken
    /// before them there, as here). `None` outside a cluster.
    pub(super) fn room_notice(
        &self,
        room: RoomId,
        room_name: &str,
        event: RoomEvent<'_>,
    ) -> Option<StoreOp> {
        self.settings.cluster.then(|| {
            StoreOp::Notice(Notice::Room {
                room,
                line: ServerLine::RoomEvent {
                    room: room_name,
                    event,
                }
                .to_string(),
            })
        })
    }

    // ----- JOIN -----

    pub(super) fn join(&mut self, req: Req, name: RoomName) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let Some(id) = self.room_names.get(&name.key()).copied() else {
            return self.create_room(req, me, name);
        };
        let Some(room) = self.rooms.get(&id) else {
            return self.internal_error(req, "a room name points at no room");
        };
        if let Some(m) = room.members().get(&me) {
            // A member already: the answer again, nothing changes.
            let (after, upto) = (room.visible_after(m), room.last_id);
            let summary = self.summary(room, &me);
            return self.join_answer(
                req,
                name,
                id,
                me,
                summary,
                JoinOutcome::Member,
                after,
                upto,
                Vec::new(),
            );
        }
        let refusal = if self
            .accounts
            .get(&me)
            .is_some_and(|a| a.rooms.len() >= MAX_ROOMS_PER_ACCOUNT)
        {
            Some(Refusal(
                Code::TOO_MANY_ROOMS,
                format!("you are in {MAX_ROOMS_PER_ACCOUNT} rooms already; PART one first"),
            ))
        } else if room.bans.contains_key(&me) {
            Some(Refusal(
                Code::BANNED,
                format!("you are banned from {}", room.name),
            ))
        } else if room.private && room.invited(&me, self.now).is_none() {
            Some(Refusal(
                Code::INVITE_ONLY,
                format!(
                    "{} is invite only; ask an op or owner to INVITE you",
                    room.name
                ),
            ))
        } else if room.members().len() >= self.settings.limits.max_room_members {
            Some(Refusal(
                Code::ROOM_FULL,
                format!(
                    "{} has {} members, its most",
                    room.name, self.settings.limits.max_room_members
                ),
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            return self.refused(req, r);
        }
        let member = MemberRecord {
            role: Role::Member,
            since: room.last_id,
            read_id: room.last_id,
            read_seq: room.count,
        };
        // Public: the latest messages before the join; private: nothing before it.
        let (after, upto) = (room.visible_after(&member), room.last_id);
        // The members, and the caller's other connections.
        let mut audience = room.audience();
        audience.push(me.clone());
        let room_name = room.name.clone();
        let mut ops = vec![StoreOp::PutMember {
            room: id,
            user: me.as_str().to_owned(),
            member,
        }];
        if let Some(r) = self.rooms.get_mut(&id) {
            r.add_member(me.clone(), member);
            if r.invites.remove(&me).is_some() {
                ops.push(StoreOp::RemoveInvite {
                    room: id,
                    user: me.as_str().to_owned(),
                });
            }
        }
        if let Some(a) = self.accounts.get_mut(&me) {
            a.rooms.insert(id);
            if let Some(t) = a.ties_if_any() {
                t.invited.remove(&id);
            }
        }
        self.rewatch(id);
        let summary = match self.rooms.get(&id) {
            Some(r) => self.summary(r, &me),
            None => return,
        };
        let joined = (audience, room_name);
        self.join_answer(
            req,
            name,
            id,
            me,
            summary,
            JoinOutcome::Joined,
            after,
            upto,
            ops_with(ops, joined),
        );
    }

    fn create_room(&mut self, req: Req, me: Key, name: RoomName) {
        if self
            .accounts
            .get(&me)
            .is_some_and(|a| a.rooms.len() >= MAX_ROOMS_PER_ACCOUNT)
        {
            return self.refused(
                req,
                Refusal(
                    Code::TOO_MANY_ROOMS,
                    format!("you are in {MAX_ROOMS_PER_ACCOUNT} rooms already; PART one first"),
                ),
            );
        }
        let id = self.next_room_id;
        self.next_room_id += 1;
        let room = Room {
            id,
            name: name.as_str().to_owned(),
            created_ms: self.now,
            private: false,
            topic: None,
            members: HashMap::new(),
            reach: Reach::default(),
            bans: BTreeMap::new(),
            invites: BTreeMap::new(),
            last_id: 0,
            count: 0,
        };
        let member = MemberRecord {
            role: Role::Owner,
            since: 0,
            read_id: 0,
            read_seq: 0,
        };
        // One op: in a cluster, the log takes it only if no other node created the name first.
        let ops = vec![StoreOp::CreateRoom {
            id,
            room: Box::new(room.record()),
            owner: me.as_str().to_owned(),
            member,
        }];
        self.room_names.insert(name.key(), id);
        self.rooms.insert(id, room);
        if let Some(r) = self.rooms.get_mut(&id) {
            r.add_member(me.clone(), member);
        }
        if let Some(a) = self.accounts.get_mut(&me) {
            a.rooms.insert(id);
        }
        self.rewatch(id);
        log::info!("{} created {name}", self.shown(&me));
        let summary = match self.rooms.get(&id) {
            Some(r) => self.summary(r, &me),
            None => return,
        };
        // The caller's other connections learn of the new room.
        let told = Some((vec![me.clone()], name.as_str().to_owned()));
        if self.settings.cluster {
            self.creating.insert(id);
        }
        self.join_answer(
            req,
            name,
            id,
            me,
            summary,
            JoinOutcome::Created,
            0,
            0,
            Joining { ops, told },
        );
    }

    /// In a cluster, a change to a room that another node deleted while it was made: the log
    /// does not have the room at the change's place, so the change was not stored
    /// (`StoreReply::Taken`), and the command is refused as it would have been a moment later.
    pub(super) fn room_gone(&mut self, req: Req, room: &str) {
        let text = format!("{room} was deleted");
        self.refuse(req, Code::NO_SUCH_ROOM, &text);
    }

    /// In a cluster, a room this node created whose name another node took first (the log
    /// refused its creation): it is forgotten. The room that has the name came through the log
    /// before the refusal.
    fn lost_room(&mut self, id: RoomId) {
        let Some(room) = self.rooms.remove(&id) else {
            return;
        };
        log::info!(
            "{} was created on another node first; its JOINs here join that room",
            room.name
        );
        let key = RoomKey::of(&room.name);
        if self.room_names.get(&key) == Some(&id) {
            self.room_names.remove(&key);
        }
        for k in room.members().keys().chain(room.invites.keys()) {
            if let Some(a) = self.accounts.get_mut(k) {
                a.rooms.remove(&id);
                if let Some(t) = a.ties_if_any() {
                    t.invited.remove(&id);
                }
            }
        }
        self.rewatch(id);
    }

    /// The JOIN answer, once `ops` are committed: the ROOM line (`summary`, the room as the JOIN
    /// left it), the latest messages with ids in `after+1..=upto` (read in the order of the
    /// writes, so it is exactly what was said before the join, and it reaches the member before
    /// anything said after), and `OK JOIN`. The audience in `told` learns of the join at the same
    /// commit; until then no message is delivered ahead of its commit (as while a message waits
    /// for its own: `held_for_commit`), so that a message said after the join never reaches one of
    /// them before their `JOINED`. In a cluster, if the room turns out to have lost its name to
    /// another node's room (`Taken`), the JOIN of `name` runs again and joins that room; and
    /// while the room's creation is not answered, the caller's next commands wait, so that they
    /// concern the room the JOIN answers.
    #[allow(clippy::too_many_arguments)]
    fn join_answer(
        &mut self,
        mut req: Req,
        name: RoomName,
        id: RoomId,
        me: Key,
        summary: Summary,
        outcome: JoinOutcome,
        after: MsgId,
        upto: MsgId,
        joining: impl Into<Joining>,
    ) {
        let Joining { mut ops, told } = joining.into();
        // (A JOIN with nothing to commit is answered at once, and need not wait.)
        let (conn, held) = (req.conn, self.creating.contains(&id) && !ops.is_empty());
        if after < upto {
            ops.push(StoreOp::RoomReplay {
                room: id,
                after,
                upto,
                count: JOIN_REPLAY,
            });
        }
        self.reserve(&mut req);
        let holds = told.is_some();
        self.held_for_commit += usize::from(holds);
        self.store_all(ops, move |core, reply| {
            core.held_for_commit -= usize::from(holds);
            if outcome == JoinOutcome::Created {
                core.creating.remove(&id);
            }
            if reply == StoreReply::Taken {
                core.lost_room(id);
                // Run again before the wait ends: if it has to wait in turn (the name is free
                // again, and created anew), the connection's next commands go on waiting.
                core.join(req, name);
                if held {
                    core.join_done(conn);
                }
                return;
            }
            if let Some((audience, room)) = &told {
                let name = core.shown(&me);
                core.tell(audience, room, RoomEvent::Joined { name: &name }, req.conn);
            }
            // The room as the JOIN left it: later commands may have changed it since.
            let mut out = Out::new();
            out.line(&summary.line());
            if let StoreReply::Messages(messages) = &reply {
                for m in messages {
                    out.line(&ServerLine::History(MessageLine {
                        id: m.id,
                        time_ms: m.time_ms,
                        from: &m.from,
                        to: super::recipient(&m.to),
                        text: &m.text,
                    }));
                }
            }
            out.ok(
                &req,
                OkReply::Join {
                    room: &summary.name,
                    outcome,
                },
            );
            core.finish(req, out);
            if held {
                core.join_done(conn);
            }
        });
        if held {
            *self.join_holds.entry(conn).or_default() += 1;
            self.hold(conn);
        }
    }

    /// A JOIN that held its connection's input is answered: the input runs once none is left.
    fn join_done(&mut self, conn: ConnId) {
        let left = self.join_holds.get_mut(&conn).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            self.join_holds.remove(&conn);
            self.release(conn);
        }
    }

    // ----- PART -----

    pub(super) fn part(&mut self, mut req: Req, name: RoomName, reason: Option<String>) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let id = match self.find_room(&name) {
            Ok(id) => id,
            Err(r) => return self.refused(req, r),
        };
        let Some(room) = self.rooms.get(&id) else {
            return;
        };
        let room_name = room.name.clone();
        let key_str = me.as_str().to_owned();
        let (op, outcome, audience) = match room.role_of(&me) {
            Some(Role::Owner) if room.owners() == 1 => {
                return self.refused(
                    req,
                    Refusal(
                        Code::LAST_OWNER,
                        format!(
                            "you are the last owner of {room_name}: make someone else owner \
                             (ROLE) or delete the room (ROOM DELETE)"
                        ),
                    ),
                )
            }
            Some(_) => {
                let audience = room.audience();
                if let Some(r) = self.rooms.get_mut(&id) {
                    r.remove_member(&me);
                }
                if let Some(a) = self.accounts.get_mut(&me) {
                    a.rooms.remove(&id);
                }
                self.rewatch(id);
                let op = StoreOp::RemoveMember {
                    room: id,
                    user: key_str,
                };
                (op, PartOutcome::Left, Some(audience))
            }
            None if room.invited(&me, self.now).is_some() => {
                if let Some(r) = self.rooms.get_mut(&id) {
                    r.invites.remove(&me);
                }
                if let Some(a) = self.accounts.get_mut(&me) {
                    if let Some(t) = a.ties_if_any() {
                        t.invited.remove(&id);
                    }
                }
                let op = StoreOp::RemoveInvite {
                    room: id,
                    user: key_str,
                };
                (op, PartOutcome::Declined, None)
            }
            None => {
                return self.refused(
                    req,
                    Refusal(
                        Code::NOT_MEMBER,
                        format!("you are not a member of {room_name}"),
                    ),
                )
            }
        };
        let shown = self.shown(&me);
        let notice = match audience {
            Some(_) => self.room_notice(
                id,
                &room_name,
                RoomEvent::Parted {
                    name: &shown,
                    reason: reason.as_deref().unwrap_or(""),
                },
            ),
            None => None,
        };
        self.reserve(&mut req);
        self.store_all(
            notice.into_iter().chain([op]).collect(),
            move |core, reply| {
                if reply == StoreReply::Taken {
                    return core.room_gone(req, &room_name);
                }
                if let Some(audience) = &audience {
                    let name = core.shown(&me);
                    let reason = reason.as_deref().unwrap_or("");
                    core.tell(
                        audience,
                        &room_name,
                        RoomEvent::Parted {
                            name: &name,
                            reason,
                        },
                        req.conn,
                    );
                }
                let mut out = Out::new();
                out.ok(
                    &req,
                    OkReply::Part {
                        room: &room_name,
                        outcome,
                    },
                );
                core.finish(req, out);
            },
        );
    }

    // ----- ROOMS -----

    pub(super) fn rooms_list(&mut self, req: Req) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let Some(acct) = self.accounts.get(&me) else {
            return;
        };
        let by_name = |ids: &mut dyn Iterator<Item = &RoomId>| -> Vec<&Room> {
            let mut v: Vec<&Room> = ids.filter_map(|id| self.rooms.get(id)).collect();
            v.sort_by_cached_key(|r| RoomKey::of(&r.name));
            v
        };
        let mine = by_name(&mut acct.rooms.iter());
        let invited: Vec<&Room> = by_name(&mut acct.ties().invited.iter())
            .into_iter()
            .filter(|r| !r.members().contains_key(&me) && r.invited(&me, self.now).is_some())
            .collect();
        let mut public: Vec<&Room> = self
            .rooms
            .values()
            .filter(|r| {
                !r.private && !r.members().contains_key(&me) && r.invited(&me, self.now).is_none()
            })
            .collect();
        // The busiest first: a directory, bounded so that many small rooms cannot make every
        // ROOMS answer huge.
        public.sort_by_cached_key(|r| (std::cmp::Reverse(r.members().len()), RoomKey::of(&r.name)));
        public.truncate(ROOMS_LISTED_PUBLIC);
        let mut out = Out::new();
        let mut n = 0u64;
        for r in mine.iter().chain(&invited).chain(&public) {
            out.line(&self.summary(r, &me).line());
            n += 1;
        }
        out.ok(&req, OkReply::Rooms { count: n });
        self.finish(req, out);
    }

    // ----- MEMBERS -----

    pub(super) fn members(&mut self, req: Req, name: RoomName) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let room = match self.find_room(&name).map(|id| self.rooms.get(&id)) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(r) => return self.refused(req, r),
        };
        if !self.sees(room, &me) {
            let text = format!("you are not a member of {}", room.name);
            return self.refuse(req, Code::NOT_MEMBER, &text);
        }
        let mut rows: Vec<(Role, String, Presence)> = room
            .members
            .iter()
            .map(|(k, m)| {
                let online = self.is_online(k);
                (m.role, self.shown(k), Presence::of(online))
            })
            .collect();
        // Owners, then ops, then members; by name within each.
        rows.sort_by_cached_key(|(role, name, _)| {
            (std::cmp::Reverse(*role), name.to_ascii_lowercase())
        });
        let mut out = Out::new();
        for (role, member, presence) in &rows {
            out.line(&ServerLine::Member {
                room: &room.name,
                name: member,
                role: *role,
                presence: *presence,
            });
        }
        out.ok(
            &req,
            OkReply::Members {
                room: &room.name,
                count: rows.len() as u64,
            },
        );
        self.finish(req, out);
    }

    // ----- TOPIC -----

    pub(super) fn topic(&mut self, mut req: Req, name: RoomName, change: Option<TopicChange>) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let Some(change) = change else {
            let room = match self.find_room(&name).map(|id| self.rooms.get(&id)) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(r) => return self.refused(req, r),
            };
            if !self.sees(room, &me) {
                let text = format!("you are not a member of {}", room.name);
                return self.refuse(req, Code::NOT_MEMBER, &text);
            }
            let mut out = Out::new();
            out.ok(&req, topic_reply(&room.name, room.topic.as_ref()));
            return self.finish(req, out);
        };
        let id = match self.moderator(&me, &name) {
            Ok((id, _)) => id,
            Err(r) => return self.refused(req, r),
        };
        let by = self.shown(&me);
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        let topic = TopicRecord {
            text: match change {
                TopicChange::Set(t) => t,
                TopicChange::Clear => String::new(),
            },
            by,
            time_ms: self.now,
        };
        room.topic = Some(topic.clone());
        let op = StoreOp::PutRoom {
            id,
            room: room.record(),
        };
        let audience = room.audience();
        let room_name = room.name.clone();
        self.reserve(&mut req);
        self.store(op, move |core, reply| {
            if reply == StoreReply::Taken {
                return core.room_gone(req, &room_name);
            }
            core.tell(
                &audience,
                &room_name,
                RoomEvent::Topic {
                    by: &topic.by,
                    text: &topic.text,
                },
                req.conn,
            );
            let mut out = Out::new();
            out.ok(&req, topic_reply(&room_name, Some(&topic)));
            core.finish(req, out);
        });
    }

    // ----- ROOM -----

    pub(super) fn room_command(&mut self, req: Req, sub: RoomSub, name: RoomName) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        match sub {
            RoomSub::Info => self.room_info(req, me, name),
            RoomSub::Private => self.room_privacy(req, me, name, true),
            RoomSub::Public => self.room_privacy(req, me, name, false),
            RoomSub::Delete => self.room_delete(req, me, name),
        }
    }

    fn room_info(&mut self, req: Req, me: Key, name: RoomName) {
        let room = match self.find_room(&name).map(|id| self.rooms.get(&id)) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(r) => return self.refused(req, r),
        };
        if !self.sees(room, &me) {
            let text = format!("you are not a member of {}", room.name);
            return self.refuse(req, Code::NOT_MEMBER, &text);
        }
        let mut out = Out::new();
        out.line(&self.summary(room, &me).line());
        if self.is_admin(&me) || room.role_of(&me).is_some_and(Role::moderates) {
            for (k, b) in &room.bans {
                out.line(&ServerLine::Ban {
                    room: &room.name,
                    name: &self.shown(k),
                    by: &b.by,
                    time_ms: b.time_ms,
                    reason: &b.reason,
                });
            }
            for (k, i) in room.invites.iter().filter(|(_, i)| i.expires_ms > self.now) {
                out.line(&ServerLine::Invitation {
                    room: &room.name,
                    name: &self.shown(k),
                    by: &i.by,
                    expires_ms: i.expires_ms,
                });
            }
        }
        out.ok(
            &req,
            OkReply::Room(RoomReply::Info {
                room: &room.name,
                created_ms: room.created_ms,
            }),
        );
        self.finish(req, out);
    }

    fn room_privacy(&mut self, mut req: Req, me: Key, name: RoomName, private: bool) {
        let id = match self.owner(&me, &name) {
            Ok(id) => id,
            Err(r) => return self.refused(req, r),
        };
        let by = self.shown(&me);
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        let room_name = room.name.clone();
        let reply = move |req: &Req, out: &mut Out| {
            out.ok(
                req,
                OkReply::Room(if private {
                    RoomReply::Private { room: &room_name }
                } else {
                    RoomReply::Public { room: &room_name }
                }),
            );
        };
        if room.private == private {
            // Already so: nothing to commit or tell.
            let mut out = Out::new();
            reply(&req, &mut out);
            return self.finish(req, out);
        }
        room.private = private;
        let op = StoreOp::PutRoom {
            id,
            room: room.record(),
        };
        let audience = room.audience();
        let shown_name = room.name.clone();
        let privacy = room.privacy();
        let notice = self.room_notice(id, &shown_name, RoomEvent::Privacy { privacy, by: &by });
        self.reserve(&mut req);
        self.store_all(
            notice.into_iter().chain([op]).collect(),
            move |core, stored| {
                if stored == StoreReply::Taken {
                    return core.room_gone(req, &shown_name);
                }
                core.tell(
                    &audience,
                    &shown_name,
                    RoomEvent::Privacy { privacy, by: &by },
                    req.conn,
                );
                let mut out = Out::new();
                reply(&req, &mut out);
                core.finish(req, out);
            },
        );
    }

    fn room_delete(&mut self, mut req: Req, me: Key, name: RoomName) {
        let id = match self.owner(&me, &name) {
            Ok(id) => id,
            Err(r) => return self.refused(req, r),
        };
        let Some(room) = self.rooms.remove(&id) else {
            return;
        };
        self.room_names.remove(&RoomKey::of(&room.name));
        for k in room.members().keys() {
            if let Some(a) = self.accounts.get_mut(k) {
                a.rooms.remove(&id);
            }
        }
        for k in room.invites.keys() {
            if let Some(a) = self.accounts.get_mut(k) {
                if let Some(t) = a.ties_if_any() {
                    t.invited.remove(&id);
                }
            }
        }
        self.rewatch(id);
        let audience = room.audience();
        let by = self.shown(&me);
        log::info!("{by} deleted {}", room.name);
        let room_name = room.name;
        let notice = self.room_notice(id, &room_name, RoomEvent::Deleted { by: &by });
        let ops = notice.into_iter().chain([StoreOp::DeleteRoom { id }]);
        self.reserve(&mut req);
        self.store_all(ops.collect(), move |core, reply| {
            if reply == StoreReply::Taken {
                // Another node deleted it first, and told its members.
                return core.room_gone(req, &room_name);
            }
            core.tell(
                &audience,
                &room_name,
                RoomEvent::Deleted { by: &by },
                req.conn,
            );
            let mut out = Out::new();
            out.ok(&req, OkReply::Room(RoomReply::Delete { room: &room_name }));
            core.finish(req, out);
        });
    }
}

/// What a JOIN commits, and whom it tells: the room's members when it ran, and its name.
pub(super) struct Joining {
    ops: Vec<StoreOp>,
    told: Option<(Vec<Key>, String)>,
}

impl From<Vec<StoreOp>> for Joining {
    fn from(ops: Vec<StoreOp>) -> Joining {
        Joining { ops, told: None }
    }
}

fn ops_with(ops: Vec<StoreOp>, told: (Vec<Key>, String)) -> Joining {
    Joining {
        ops,
        told: Some(told),
    }
}

/// `OK TOPIC`: the topic now, who set it and when (`- -`: never set).
fn topic_reply<'a>(room: &'a str, topic: Option<&'a TopicRecord>) -> OkReply<'a> {
    OkReply::Topic {
        room,
        set: topic.map(|t| TopicSet {
            by: &t.by,
            time_ms: t.time_ms,
        }),
        text: topic.map_or("", |t| t.text.as_str()),
    }
}

/// What an account's deletion did to one room, told to its members once committed.
pub(super) struct LeftRoom {
    id: RoomId,
    /// The room, as created.
    room: String,
    /// Its other members, when the account left.
    audience: Vec<Key>,
    /// The member who became owner in the account's place, if the account was the last owner.
    heir: Option<String>,
}

impl Core {
    /// An account is being deleted (UNREGISTER): it leaves every room, in memory now. Where it was
    /// the last owner, the op who joined first (ties: key order), or if there is none the member
    /// who joined first, becomes owner; a room it leaves empty is deleted. Its invitations and the
    /// bans naming it go too. Returns the store ops for the heirs and the deleted rooms (the
    /// memberships, invitations and bans themselves go with the account's own deletion), and what
    /// to tell each room's members once they are committed.
    pub(super) fn leave_every_room(&mut self, me: &Key) -> (Vec<StoreOp>, Vec<LeftRoom>) {
        let Some(acct) = self.accounts.get_mut(me) else {
            return (Vec::new(), Vec::new());
        };
        let mut rooms: Vec<RoomId> = std::mem::take(&mut acct.rooms).into_iter().collect();
        rooms.sort_unstable();
        let watched = rooms.clone();
        let invited = acct
            .ties_if_any()
            .map(|t| std::mem::take(&mut t.invited))
            .unwrap_or_default();
        let mut ops = Vec::new();
        let mut left = Vec::new();
        for id in rooms {
            let Some(room) = self.rooms.get_mut(&id) else {
                continue;
            };
            let Some(mine) = room.remove_member(me) else {
                continue;
            };
            if room.members().is_empty() {
                // Nobody left to tell or to hand it to: the room goes.
                let Some(room) = self.rooms.remove(&id) else {
                    continue;
                };
                self.room_names.remove(&RoomKey::of(&room.name));
                for k in room.invites.keys() {
                    if let Some(a) = self.accounts.get_mut(k) {
                        if let Some(t) = a.ties_if_any() {
                            t.invited.remove(&id);
                        }
                    }
                }
                log::info!("{} was deleted with its last member's account", room.name);
                ops.push(StoreOp::DeleteRoom { id });
                continue;
            }
            let mut heir = None;
            if mine.role == Role::Owner && room.owners() == 0 {
                let next = room
                    .members
                    .iter()
                    .max_by(|(ka, a), (kb, b)| {
                        a.role
                            .cmp(&b.role)
                            .then(b.since.cmp(&a.since))
                            .then(kb.cmp(ka))
                    })
                    .map(|(k, _)| k.clone());
                if let Some(k) = next {
                    if let Some(m) = room.member_mut(&k) {
                        m.role = Role::Owner;
                        ops.push(StoreOp::PutMember {
                            room: id,
                            user: k.as_str().to_owned(),
                            member: *m,
                        });
                    }
                    heir = Some(k);
                }
            }
            left.push((id, room.name.clone(), room.audience(), heir));
        }
        for id in invited {
            if let Some(room) = self.rooms.get_mut(&id) {
                room.invites.remove(me);
            }
        }
        for room in self.rooms.values_mut() {
            room.bans.remove(me);
        }
        for id in watched {
            self.rewatch(id);
        }
        let told = left
            .into_iter()
            .map(|(id, room, audience, heir)| LeftRoom {
                id,
                room,
                audience,
                heir: heir.map(|k| self.shown(&k)),
            })
            .collect();
        (ops, told)
    }

    /// In a cluster, the notices that have the other nodes tell each room the account `name`
    /// left with its deletion what [`Core::tell_rooms_left`] tells here. They go after the
    /// account's deletion, which the other nodes take as its leaving every room: the audience is
    /// then the members that remain, as here.
    pub(super) fn rooms_left_notices(&self, name: &str, left: &[LeftRoom]) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        for l in left {
            if let Some(heir) = &l.heir {
                let event = RoomEvent::Role {
                    name: heir,
                    role: Role::Owner,
                    by: name,
                };
                ops.extend(self.room_notice(l.id, &l.room, event));
            }
            let event = RoomEvent::Parted { name, reason: "" };
            ops.extend(self.room_notice(l.id, &l.room, event));
        }
        ops
    }

    /// Another node deleted the account `me`: it leaves every room in memory. The rooms it was
    /// the last owner or member of were handed on or deleted by ops before this one.
    pub(super) fn forget_in_rooms(&mut self, me: &Key) {
        let Some(acct) = self.accounts.get_mut(me) else {
            return;
        };
        let rooms = std::mem::take(&mut acct.rooms);
        let invited = acct
            .ties_if_any()
            .map(|t| std::mem::take(&mut t.invited))
            .unwrap_or_default();
        for id in rooms.iter().chain(invited.iter()) {
            if let Some(room) = self.rooms.get_mut(id) {
                room.remove_member(me);
                room.invites.remove(me);
            }
        }
        for room in self.rooms.values_mut() {
            room.bans.remove(me);
        }
    }

    /// Tells each room an account left with its deletion: `ROLE` for the new owner first, then
    /// `PARTED`.
    pub(super) fn tell_rooms_left(&mut self, name: &str, left: &[LeftRoom]) {
        for l in left {
            if let Some(heir) = &l.heir {
                self.tell(
                    &l.audience,
                    &l.room,
                    RoomEvent::Role {
                        name: heir,
                        role: Role::Owner,
                        by: name,
                    },
                    0,
                );
            }
            self.tell(
                &l.audience,
                &l.room,
                RoomEvent::Parted { name, reason: "" },
                0,
            );
        }
    }
}
