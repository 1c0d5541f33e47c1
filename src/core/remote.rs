//! What another server of a cluster wrote: its ops, as the shared store applied them
//! (`Report::Remote`), brought into this core's memory; and the messages other servers routed
//! here (`BusIn::Routed`), delivered to this server's connections.
//!
//! Messages do not reach connections through the log: the node that wrote one publishes it, once
//! the log has acknowledged it, on a subject per recipient account, per room, or for everyone
//! (ALL), and NATS hands it to the nodes subscribed there, which are those holding a connection it
//! is for (the subscriptions follow [`BusOut`]). Applying the entry only counts it (backlogs, room
//! counters). A recipient that had no connection on the writing node has a backlog entry written
//! with the message; the node that delivers the routed copy clears it, and a node whose account
//! has just left leaves it there for the next login. Route and log entry travel separately, so
//! either may come first: the pairs delivered are remembered ([`Routes`]), and a message the index
//! applied for an account online here whose route never came (published before this node's
//! subscription reached NATS) is delivered from the index after [`ROUTE_FALLBACK`].
//!
//! The rules ran on the server where the command was given; here only their outcome is taken in,
//! the way the snapshot is taken in at start. Ops that change what this server decides on
//! (accounts, friendships, blocks, passwords, tokens, profiles, backlog counts, message ids) are
//! applied to memory, and so are rooms, memberships, bans and invitations. What a change tells the
//! users it concerns is told here too, to this server's connections, by the same code the command
//! runs at its commit: a friendship notice (derived from the edge's old and new state), the close
//! of an account's connections after PASSWORD, REVOKE, SUSPEND or UNREGISTER, an away message.
//! What the records do not say (who kicked, a reason, an ANNOUNCE, a KILL, the new owner and the
//! leaving of the rooms an UNREGISTER hands on) comes as a [`Notice`], written by the node that
//! ran the command beside its ops, a room event with the change it tells of
//! ([`StoreOp::Told`]). An account deleted elsewhere leaves every room here too.

use std::collections::{BTreeSet, HashSet, VecDeque};

use super::out;
use super::rooms::Room;
use super::tokens::Token;
use super::{
    fan_out, push_to_keys, recipient, Account, BusIn, BusOut, Core, Job, Looks, RouteTo, Seen,
};
use crate::auth::Phc;
use crate::config::{
    PRESENCE_ENTRY_AGE, PRESENCE_EXPIRY, ROUTE_AWAITING, ROUTE_FALLBACK, ROUTE_MEMORY,
};
use crate::outbox::Chunk;
use crate::proto::code::ByeCode;
use crate::proto::name::Key;
use crate::proto::room::RoomKey;
use crate::proto::server_line::{FriendshipEvent, MessageLine, RoomEvent, ServerLine};
use crate::store::{
    FriendState, MemberRecord, MessageRecord, MsgId, Notice, RoomId, RoomRecord, StoreOp, To,
};

/// Another node of a cluster, as this one knows it: its heartbeat (`beat`, in this core's clock),
/// whether that makes it alive, and the accounts its presence entries say are online there. The
/// entries count only while the node is alive: a crashed node's entries stay in the bucket, and a
/// node that starts reads them before or after the heartbeats, in any order.
pub(super) struct NodeSeen {
    /// When this node first heard of it.
    since: i64,
    beat: Option<i64>,
    alive: bool,
    claims: BTreeSet<Key>,
}

impl NodeSeen {
    fn new(now: i64) -> NodeSeen {
        NodeSeen {
            since: now,
            beat: None,
            alive: false,
            claims: BTreeSet::new(),
        }
    }
}

fn expiry_ms() -> i64 {
    i64::try_from(PRESENCE_EXPIRY.as_millis()).unwrap_or(i64::MAX)
}

/// What routed delivery remembers on a node of a cluster.
#[derive(Default)]
pub(super) struct Routes {
    /// The rooms this node last asked NATS for (a member online here).
    watched: HashSet<RoomId>,
    /// (message, account) pairs delivered here from a route or from the index, at most
    /// [`ROUTE_MEMORY`]: a second delivery, or a count in the backlog, would be wrong.
    delivered: BTreeSet<(MsgId, Key)>,
    /// Messages the index applied with a backlog entry for accounts online here, before their
    /// route came: delivered from here when `due` passes if the route still has not come.
    awaiting: VecDeque<Awaiting>,
    /// The (message, account) pairs of `awaiting` still waiting: the route, or a LOGIN's
    /// backlog, takes a pair out, whatever `delivered` has forgotten meanwhile.
    waiting: HashSet<(MsgId, Key)>,
}

/// A message waiting for its route (see [`Routes::awaiting`]).
struct Awaiting {
    due: i64,
    msg: MessageRecord,
    keys: Vec<Key>,
}

impl Core {
    /// Takes in one op another server of the cluster committed.
    pub(super) fn remote(&mut self, op: StoreOp) {
        match op {
            StoreOp::CreateAccount(rec) => {
                let key = Key::of(&rec.name);
                // A name this server reserved and lost to the other server is the other's now;
                // the REGISTER here is answered NAME_TAKEN when its own write comes back.
                let phc = Phc::parse(&rec.phc);
                match self.accounts.get_mut(&key) {
                    Some(a) => {
                        a.name = key.spelled(&rec.name);
                        a.phc = Some(phc);
                    }
                    None => {
                        self.skeletons.insert(Looks(key.clone()));
                        let name = key.spelled(&rec.name);
                        self.accounts
                            .insert(key, Box::new(Account::new(name, Some(phc))));
                    }
                }
            }
            StoreOp::AppendMessage { msg, pending_for } => self.remote_message(msg, pending_for),
            StoreOp::AddPending { user, .. } => {
                // The sender is not in the op: counted in the total only.
                if let Some(a) = self.accounts.get_mut(user.as_str()) {
                    let n = a.ties().inbox.total() + 1;
                    a.ties_mut().inbox.set_total(n);
                }
            }
            StoreOp::ClearBacklog { user, .. } => {
                if let Some(a) = self.accounts.get_mut(user.as_str()) {
                    if let Some(t) = a.ties_if_any() {
                        t.inbox = Default::default();
                    }
                }
            }
            StoreOp::SetFriendship { a, b, state } => {
                let (a, b) = (Key::from_folded(a), Key::from_folded(b));
                let was = self
                    .accounts
                    .get(&a)
                    .and_then(|x| x.ties().friends.get(&b))
                    .copied();
                self.set_edge(&a, &b, state);
                self.remote_friendship(&a, &b, was, state);
            }
            StoreOp::Block { a, b } => {
                let (a, b) = (Key::from_folded(a), Key::from_folded(b));
                self.set_edge(&a, &b, None);
                if let Some(acct) = self.accounts.get_mut(&a) {
                    acct.ties_mut().blocks.insert(b.clone());
                }
                if let Some(acct) = self.accounts.get_mut(&b) {
                    acct.ties_mut().blocked_by.insert(a);
                }
            }
            StoreOp::Unblock { a, b } => {
                let (a, b) = (Key::from_folded(a), Key::from_folded(b));
                if let Some(acct) = self.accounts.get_mut(&a) {
                    if let Some(t) = acct.ties_if_any() {
                        t.blocks.remove(&b);
                    }
                }
                if let Some(acct) = self.accounts.get_mut(&b) {
                    if let Some(t) = acct.ties_if_any() {
                        t.blocked_by.remove(&a);
                    }
                }
            }
            StoreOp::SetPassword { user, phc, revoke } => {
                // The connection that changed it is on the other server: every one here is
                // another connection of the account, closed as there.
                let closing = match self.accounts.get_mut(user.as_str()) {
                    Some(a) => {
                        a.phc = Some(Phc::parse(&phc));
                        a.conns.to_vec()
                    }
                    None => Vec::new(),
                };
                self.forget_remote_tokens(&revoke);
                for c in closing {
                    self.close_with_bye(
                        c,
                        ByeCode::REVOKED,
                        "the account's password was changed on another connection",
                    );
                }
            }
            StoreOp::CreateToken(rec) => {
                let key = Key::from_folded(rec.user.clone());
                if let Some(a) = self.accounts.get_mut(&key) {
                    a.ties_mut().tokens.push(rec.id);
                    self.tokens.insert(rec.id, Token::from_record(key, rec));
                }
            }
            StoreOp::RevokeTokens { ids } => {
                // REVOKE closes the connections on the tokens it revokes; a purge of expired
                // tokens closes none (they are not live here either).
                let now = self.now;
                let live: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| self.tokens.get(id).is_some_and(|t| t.live(now)))
                    .collect();
                let closing: Vec<_> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.device_token.is_some_and(|t| live.contains(&t)))
                    .map(|(id, _)| *id)
                    .collect();
                self.forget_remote_tokens(&ids);
                for c in closing {
                    self.close_with_bye(
                        c,
                        ByeCode::REVOKED,
                        "the token this connection logged in with was revoked",
                    );
                }
            }
            StoreOp::SetAway { user, away } => {
                let key = Key::from_folded(user);
                if let Some(a) = self.accounts.get_mut(&key) {
                    if a.ties().away != away {
                        a.ties_mut().away = away;
                        self.announce_away(&key, 0);
                    }
                }
            }
            StoreOp::SetDms { user, friends_only } => {
                if let Some(a) = self.accounts.get_mut(user.as_str()) {
                    a.ties_mut().friends_only = friends_only;
                }
            }
            StoreOp::SetLastSeen { user, ms } => {
                if let Some(a) = self.accounts.get_mut(user.as_str()) {
                    a.seen = Seen::written_at(Some(ms));
                }
            }
            StoreOp::AppendRoomMessage { msg, room, seq } => {
                self.next_id = self.next_id.max(msg.id + 1);
                self.remote_room_message(msg, room, seq);
            }
            StoreOp::PutRoom { id, room } => {
                let key = RoomKey::of(&room.name);
                match self.rooms.get_mut(&id) {
                    Some(r) => {
                        r.private = room.private;
                        let changed = r.topic != room.topic;
                        r.topic = room.topic;
                        if let (true, Some(t)) = (changed, r.topic.clone()) {
                            // The members are told, as TOPIC tells them.
                            let (audience, name) = (r.audience(), r.name.clone());
                            let event = RoomEvent::Topic {
                                by: &t.by,
                                text: &t.text,
                            };
                            self.tell(&audience, &name, event, 0);
                        }
                    }
                    None => {
                        if let Some(other) = self.room_names.get(&key) {
                            log::warn!(
                                "cluster: room {} was created on two nodes at once (numbers {other} \
                                 and {id}); this node keeps {other}",
                                room.name
                            );
                            return;
                        }
                        self.room_names.insert(key, id);
                        self.rooms.insert(id, Room::from_record(id, room));
                    }
                }
            }
            StoreOp::CreateRoom {
                id,
                room,
                owner,
                member,
            } => self.remote_room_created(id, *room, Key::from_folded(owner), member),
            StoreOp::DeleteRoom { id } => {
                if let Some(r) = self.rooms.remove(&id) {
                    if self.room_names.get(&RoomKey::of(&r.name)) == Some(&id) {
                        self.room_names.remove(&RoomKey::of(&r.name));
                    }
                    for k in r.members().keys().chain(r.invites.keys()) {
                        if let Some(a) = self.accounts.get_mut(k) {
                            a.rooms.remove(&id);
                            if let Some(t) = a.ties_if_any() {
                                t.invited.remove(&id);
                            }
                        }
                    }
                }
                self.rewatch(id);
            }
            StoreOp::PutMember { room, user, member } => {
                let key = Key::from_folded(user);
                let shown = self.shown(&key);
                if let (Some(r), Some(a)) = (self.rooms.get_mut(&room), self.accounts.get_mut(&key))
                {
                    a.rooms.insert(room);
                    let audience = r.audience();
                    if r.add_member(key, member).is_none() {
                        // A new member: the others are told, as JOIN tells them.
                        let name = r.name.clone();
                        self.tell(&audience, &name, RoomEvent::Joined { name: &shown }, 0);
                    }
                }
                self.rewatch(room);
            }
            StoreOp::RemoveMember { room, user } => {
                let key = Key::from_folded(user);
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.remove_member(&key);
                }
                if let Some(a) = self.accounts.get_mut(&key) {
                    a.rooms.remove(&room);
                }
                self.rewatch(room);
            }
            StoreOp::PutBan { room, user, ban } => {
                let key = Key::from_folded(user);
                let shown = self.shown(&key);
                if let Some(r) = self.rooms.get_mut(&room) {
                    // The members, the banned one still among them, are told, as BAN tells them.
                    let (audience, name) = (r.audience(), r.name.clone());
                    if r.bans.insert(key, ban.clone()).is_none() {
                        let event = RoomEvent::Banned {
                            name: &shown,
                            by: &ban.by,
                            reason: &ban.reason,
                        };
                        self.tell(&audience, &name, event, 0);
                    }
                }
            }
            StoreOp::RemoveBan { room, user } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.bans.remove(&Key::from_folded(user));
                }
            }
            StoreOp::PutInvite { room, user, invite } => {
                let key = Key::from_folded(user);
                if let (Some(r), Some(a)) = (self.rooms.get_mut(&room), self.accounts.get_mut(&key))
                {
                    a.ties_mut().invited.insert(room);
                    r.invites.insert(key.clone(), invite.clone());
                    let name = r.name.clone();
                    let event = RoomEvent::Invited {
                        by: &invite.by,
                        expires_ms: invite.expires_ms,
                    };
                    self.tell(&[key], &name, event, 0);
                }
            }
            StoreOp::RemoveInvite { room, user } => {
                let key = Key::from_folded(user);
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.invites.remove(&key);
                }
                if let Some(a) = self.accounts.get_mut(&key) {
                    if let Some(t) = a.ties_if_any() {
                        t.invited.remove(&room);
                    }
                }
            }
            StoreOp::DeleteAccount { user, .. } => {
                let key = Key::from_folded(user);
                // What its rooms' members are told comes in notices after this op.
                self.forget_in_rooms(&key);
                if let Some(acct) = self.forget_account(&key) {
                    for c in acct.conns.iter().copied() {
                        self.close_with_bye(c, ByeCode::ACCOUNT_DELETED, "the account was deleted");
                    }
                }
            }
            StoreOp::SetSuspended { user, suspension } => {
                let key = Key::from_folded(user);
                let Some(a) = self.accounts.get_mut(&key) else {
                    return;
                };
                let closing = if suspension.is_some() {
                    a.conns.to_vec()
                } else {
                    Vec::new()
                };
                a.ties_mut().suspended = suspension;
                for c in closing {
                    self.close_with_bye(
                        c,
                        ByeCode::ACCOUNT_SUSPENDED,
                        "the server's operators suspended this account",
                    );
                }
            }
            StoreOp::Notice(notice) => self.remote_notice(notice),
            StoreOp::Told { notice, op } => {
                self.remote_notice(notice);
                self.remote(*op);
            }
            StoreOp::TouchToken { .. }
            | StoreOp::SetDirectRead { .. }
            | StoreOp::History { .. }
            | StoreOp::ReadBacklog { .. }
            | StoreOp::ReadMessages { .. }
            | StoreOp::DirectRead { .. }
            | StoreOp::FirstUnread { .. }
            | StoreOp::RoomSeq { .. }
            | StoreOp::RoomReplay { .. }
            | StoreOp::ReserveIds { .. } => {
                log::debug!("cluster: an op of another node is in the index only: {op:?}");
            }
        }
    }

    /// What another node said about who is online there, or routed here.
    pub(super) fn bus(&mut self, news: BusIn) {
        match news {
            BusIn::Routed { to, op } => self.routed(to, op),
            BusIn::Alive { node, age_ms } => {
                let beat = self.now.saturating_sub(age_ms.max(0));
                let now = self.now;
                let seen = self
                    .nodes
                    .entry(node.clone())
                    .or_insert_with(|| NodeSeen::new(now));
                seen.beat = Some(seen.beat.map_or(beat, |b| b.max(beat)));
                if seen.alive || now.saturating_sub(beat) > expiry_ms() {
                    return;
                }
                seen.alive = true;
                let keys: Vec<Key> = seen.claims.iter().cloned().collect();
                for k in keys {
                    self.remote_on(&node, k);
                }
            }
            BusIn::Gone { node } => {
                let Some(seen) = self.nodes.get_mut(&node) else {
                    return;
                };
                seen.beat = None;
                if !seen.alive {
                    return;
                }
                seen.alive = false;
                let keys: Vec<Key> = seen.claims.iter().cloned().collect();
                log::info!("cluster: node {node} stopped; its users are offline");
                for k in keys {
                    self.remote_off(&node, &k);
                }
            }
            BusIn::Presence { node, key, online } => {
                let key = Key::from_folded(key);
                let now = self.now;
                let seen = self
                    .nodes
                    .entry(node.clone())
                    .or_insert_with(|| NodeSeen::new(now));
                if online {
                    seen.claims.insert(key.clone());
                } else {
                    seen.claims.remove(&key);
                }
                // A node not (or no longer) alive: its entry counts if its heartbeat comes.
                if !seen.alive {
                    return;
                }
                if online {
                    self.remote_on(&node, key);
                } else {
                    self.remote_off(&node, &key);
                }
            }
        }
    }

    /// Takes the nodes whose last heartbeat is older than [`PRESENCE_EXPIRY`] for dead: a node
    /// that died without a word has its users offline after that long. A dead node is forgotten
    /// [`PRESENCE_ENTRY_AGE`] after it was last heard of (its entries have left the bucket by
    /// then).
    pub(super) fn expire_nodes(&mut self) {
        let (now, expiry) = (self.now, expiry_ms());
        let forget = i64::try_from(PRESENCE_ENTRY_AGE.as_millis()).unwrap_or(i64::MAX);
        let mut dead = Vec::new();
        self.nodes.retain(|node, seen| {
            let last = seen.beat.unwrap_or(seen.since).max(seen.since);
            if seen.alive && seen.beat.is_none_or(|b| now.saturating_sub(b) > expiry) {
                seen.alive = false;
                dead.push((
                    node.clone(),
                    seen.claims.iter().cloned().collect::<Vec<_>>(),
                ));
            }
            seen.alive || now.saturating_sub(last) <= forget
        });
        for (node, keys) in dead {
            log::warn!("cluster: node {node}'s heartbeat is too old; its users are offline");
            for k in keys {
                self.remote_off(&node, &k);
            }
        }
    }

    fn remote_on(&mut self, node: &str, key: Key) {
        if !self.accounts.contains_key(&key) {
            return;
        }
        let was = self.is_online(&key);
        self.remote_online
            .entry(key.clone())
            .or_default()
            .insert(node.to_owned());
        if !was {
            self.tell_friends(&key, true);
        }
    }

    fn remote_off(&mut self, node: &str, key: &Key) {
        let Some(nodes) = self.remote_online.get_mut(key) else {
            return;
        };
        nodes.remove(node);
        if nodes.is_empty() {
            self.remote_online.remove(key);
            if !self.is_online(key) {
                self.tell_friends(key, false);
            }
        }
    }

    /// A room message another server stored: counted in the room (its route delivers it).
    fn remote_room_message(&mut self, msg: MessageRecord, room: RoomId, seq: u64) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.count = r.count.max(seq);
        r.last_id = r.last_id.max(msg.id);
    }

    /// A friendship edge `a` -> `b` another server changed from `was` to `now`: the notice `b`
    /// is told (and the presences two new friends learn), to this server's connections, derived
    /// from the change the way the command derived it.
    fn remote_friendship(
        &mut self,
        a: &Key,
        b: &Key,
        was: Option<FriendState>,
        now: Option<FriendState>,
    ) {
        use FriendState::{Friends, Incoming, Outgoing};
        let event = match (was, now) {
            (None, Some(Outgoing)) => FriendshipEvent::Requested,
            (Some(Incoming), Some(Friends)) => FriendshipEvent::Accepted,
            (Some(Incoming), None) => FriendshipEvent::Denied,
            (Some(Friends), None) => FriendshipEvent::Removed,
            (Some(Outgoing), None) => FriendshipEvent::Withdrawn,
            // Already applied, or a change no command makes (a block clears edges itself).
            _ => return,
        };
        let (Some(my_name), Some(shown)) = (
            self.accounts.get(a).map(|x| x.name.clone()),
            self.accounts.get(b).map(|x| x.name.clone()),
        ) else {
            return;
        };
        let now_friends = now == Some(Friends);
        self.tell_friendship(a, &my_name, b, &shown, event, now_friends, 0);
    }

    /// A room another node created. The log took its creation only because no room had the
    /// name: if this node has one, it is a creation of its own still in flight, which the log
    /// will refuse; the name is the other node's room's now, and the JOINs of this node's room
    /// join it once the refusal comes back (`rooms.rs`).
    fn remote_room_created(
        &mut self,
        id: RoomId,
        room: RoomRecord,
        owner: Key,
        member: MemberRecord,
    ) {
        if let Some(mine) = self.room_names.insert(RoomKey::of(&room.name), id) {
            log::info!(
                "cluster: {} was created on another node first (room {id}; this node's {mine} \
                 loses the name)",
                room.name
            );
        }
        let name = room.name.clone();
        let mut made = Room::from_record(id, room);
        if let Some(a) = self.accounts.get_mut(&owner) {
            a.rooms.insert(id);
            made.add_member(owner.clone(), member);
        }
        self.rooms.insert(id, made);
        // The owner's connections here learn of the new room, as its other connections where
        // it was created do.
        let shown = self.shown(&owner);
        self.tell(&[owner], &name, RoomEvent::Joined { name: &shown }, 0);
        self.rewatch(id);
    }

    /// What another server's command told its connections, told to this server's.
    fn remote_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Room { room, line } => {
                let Some(r) = self.rooms.get(&room) else {
                    return;
                };
                let audience = r.audience();
                let chunk = out::shared(&ServerLine::Other(&line));
                push_to_keys(
                    &self.accounts,
                    &self.conns,
                    &mut self.overflowed,
                    &audience,
                    &chunk,
                    0,
                );
            }
            Notice::Everyone { line } => {
                let chunk = out::shared(&ServerLine::Other(&line));
                for (&id, c) in &self.conns {
                    if !c.closing && c.outbox.push(chunk.clone()).is_err() {
                        self.overflowed.push(id);
                    }
                }
            }
            Notice::Kill { user, text } => {
                let closing = self
                    .accounts
                    .get(user.as_str())
                    .map(|a| a.conns.to_vec())
                    .unwrap_or_default();
                for c in closing {
                    self.close_with_bye(c, ByeCode::KILLED, &text);
                }
            }
        }
    }

    /// Forgets tokens another server revoked, whichever accounts they were of.
    fn forget_remote_tokens(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(user) = self.tokens.get(id).map(|t| t.user().clone()) {
                self.forget_tokens(&user, &[*id]);
            }
        }
    }

    /// A message another server stored: counted in the backlogs it was kept in (its route
    /// delivers it). An entry for an account whose route came first is not counted: the node
    /// cleared it, and the clearing follows in the log. One for an account online here whose
    /// route has not come yet waits [`ROUTE_FALLBACK`] for it.
    fn remote_message(&mut self, msg: MessageRecord, pending_for: Vec<String>) {
        self.next_id = self.next_id.max(msg.id + 1);
        let sender = Key::of(&msg.from);
        let mut waiting = Vec::new();
        for user in pending_for {
            let key = Key::from_folded(user);
            if self.routes.delivered.contains(&(msg.id, key.clone())) {
                continue;
            }
            let Some(a) = self.accounts.get_mut(&key) else {
                continue;
            };
            a.ties_mut().inbox.add(&sender);
            if !a.conns.is_empty() {
                waiting.push(key);
            }
        }
        if waiting.is_empty() {
            return;
        }
        for key in &waiting {
            self.routes.waiting.insert((msg.id, key.clone()));
        }
        if self.routes.awaiting.len() >= ROUTE_AWAITING {
            if let Some(old) = self.routes.awaiting.pop_front() {
                self.deliver_kept(&old.msg, &old.keys);
            }
        }
        let wait = i64::try_from(ROUTE_FALLBACK.as_millis()).unwrap_or(i64::MAX);
        self.routes.awaiting.push_back(Awaiting {
            due: self.now.saturating_add(wait),
            msg,
            keys: waiting,
        });
    }

    /// A LOGIN's backlog gave these messages to `key`: neither their route, nor the index's
    /// application of their entries, gives them again.
    pub(super) fn replayed(&mut self, key: &Key, ids: &[MsgId]) {
        if !self.settings.cluster {
            return;
        }
        for id in ids {
            let pair = (*id, key.clone());
            self.routes.waiting.remove(&pair);
            self.routes.delivered.insert(pair);
        }
        while self.routes.delivered.len() > ROUTE_MEMORY {
            self.routes.delivered.pop_first();
        }
    }

    /// Delivers the messages whose route did not come in time (see [`Routes::awaiting`]).
    pub(super) fn route_fallback(&mut self) {
        while self
            .routes
            .awaiting
            .front()
            .is_some_and(|a| a.due <= self.now)
        {
            let Some(a) = self.routes.awaiting.pop_front() else {
                break;
            };
            self.deliver_kept(&a.msg, &a.keys);
        }
    }

    fn deliver_kept(&mut self, msg: &MessageRecord, keys: &[Key]) {
        let line = message_line(msg);
        for key in keys {
            if self.routes.waiting.remove(&(msg.id, key.clone())) {
                self.deliver_to_account(msg, key, &line, true);
            }
        }
    }

    /// A message another node routed here.
    fn routed(&mut self, to: RouteTo, op: StoreOp) {
        match (to, op) {
            (RouteTo::Account(k), StoreOp::AppendMessage { msg, pending_for }) => {
                let key = Key::from_folded(k);
                let for_key = match &msg.to {
                    To::User(u) => Key::of(u) == key,
                    To::Group(g) => g.iter().any(|n| Key::of(n) == key),
                    To::All | To::Room(_) => false,
                };
                if !for_key {
                    log::debug!("cluster: a routed message not for {key:?} ignored");
                    return;
                }
                let kept = pending_for.iter().any(|u| u == key.as_str());
                let line = message_line(&msg);
                self.deliver_to_account(&msg, &key, &line, kept);
            }
            (RouteTo::All, StoreOp::AppendMessage { msg, .. }) if msg.to == To::All => {
                let sender = Key::of(&msg.from);
                let blockers = self
                    .accounts
                    .get(&sender)
                    .map(|a| a.ties().blocked_by.clone())
                    .unwrap_or_default();
                let line = message_line(&msg);
                let reached = fan_out(
                    &self.accounts,
                    &self.conns,
                    &mut self.overflowed,
                    self.online
                        .iter()
                        .filter(|k| **k != sender && !blockers.contains(*k)),
                    &line,
                    None,
                );
                self.settings.metrics.deliveries.add(reached as u64);
            }
            (RouteTo::Room(r), StoreOp::AppendRoomMessage { msg, room, .. }) if r == room => {
                let line = message_line(&msg);
                // No connection of this server sent it: nobody is skipped (connection ids start
                // at 1).
                self.deliver_to_room(room, msg.id, &Key::of(&msg.from), &line, 0);
            }
            (to, op) => log::debug!("cluster: a routed op not understood ({to:?}): {op:?}"),
        }
    }

    /// Delivers a message to the connections here of `key`, once. If it was `kept` in the
    /// account's backlog, the entry is cleared; if the account has no connection left here, the
    /// entry stays for its next login.
    fn deliver_to_account(&mut self, msg: &MessageRecord, key: &Key, line: &Chunk, kept: bool) {
        let pair = (msg.id, key.clone());
        if self.routes.delivered.contains(&pair) {
            return;
        }
        let reached = fan_out(
            &self.accounts,
            &self.conns,
            &mut self.overflowed,
            std::iter::once(key),
            line,
            None,
        );
        if reached == 0 {
            return;
        }
        self.settings.metrics.deliveries.add(reached as u64);
        self.routes.waiting.remove(&pair);
        self.routes.delivered.insert(pair);
        while self.routes.delivered.len() > ROUTE_MEMORY {
            self.routes.delivered.pop_first();
        }
        if kept {
            if let Some(a) = self.accounts.get_mut(key) {
                if let Some(t) = a.ties_if_any() {
                    t.inbox = Default::default();
                }
            }
            let op = StoreOp::ClearBacklog {
                user: key.as_str().to_owned(),
                upto: msg.id,
            };
            self.store(op, |_, _| {});
        }
    }

    /// Asks NATS for a room's messages while one of its members is online here, and stops
    /// asking when none is (or the room is gone). Idempotent: called wherever a membership or
    /// an account's presence here changes.
    pub(super) fn rewatch(&mut self, id: RoomId) {
        if !self.settings.cluster {
            return;
        }
        let want = self
            .rooms
            .get(&id)
            .is_some_and(|r| r.members().keys().any(|k| self.online.contains(k)));
        let changed = if want {
            self.routes.watched.insert(id)
        } else {
            self.routes.watched.remove(&id)
        };
        if changed {
            self.jobs.push(Job::Bus(BusOut::Room { id, watch: want }));
        }
    }

    /// [`rewatch`](Self::rewatch) for every room of `key`.
    pub(super) fn rewatch_rooms_of(&mut self, key: &Key) {
        let rooms: Vec<RoomId> = self
            .accounts
            .get(key)
            .map(|a| a.rooms.iter().copied().collect())
            .unwrap_or_default();
        for id in rooms {
            self.rewatch(id);
        }
    }
}

/// A message's `MESSAGE` line.
fn message_line(msg: &MessageRecord) -> Chunk {
    out::shared(&ServerLine::Message(MessageLine {
        id: msg.id,
        time_ms: msg.time_ms,
        from: &msg.from,
        to: recipient(&msg.to),
        text: &msg.text,
    }))
}
