//! An in-memory [`Store`] with exactly the semantics of [`RedbStore`](super::redb::RedbStore),
//! for tests and fuzzers of the core: no file, no fsync, deterministic, cheap to clone.
//!
//! It keeps the same collections as the redb tables (accounts, the message log, the conversation
//! room and backlog indexes, friendship edges, blocks, device tokens, profiles, retired names,
//! rooms, members, bans, invitations, read markers) in `BTreeMap`s and `BTreeSet`s, so iteration
//! orders and therefore snapshots match the redb store's. A room's HISTORY paging is the same
//! function for both (`page`).
//! The redb store's secondary indexes (tokens by account, blocks by the blocked account) are not
//! needed here: a scan of a map is the same answer. The model test in `tests/store_model.rs` applies the
//! same random batches to both and checks they agree reply for reply.
//!
//! Readers see the state as it was when they were taken, as redb's read transactions do: the state
//! sits behind an `Arc`, a reader holds a clone of the `Arc`, and a write copies the state first if
//! a reader still holds it (copy on write). When no reader is alive, as in [`Store::execute`],
//! nothing is copied.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::ops::Bound;
use std::sync::Arc;

use super::keys::{conversation_key, message_conversation_keys};
use super::page::page;
use super::{
    key_of, AccountRecord, BanRecord, Conversation, Cursor, FriendState, HistoryPage, InviteRecord,
    MemberRecord, MessageRecord, MsgId, Profile, ReadOp, RetiredName, RoomId, RoomRecord,
    RoomState, Snapshot, Store, StoreError, StoreOp, StoreReader, StoreReply, TokenId, TokenRecord,
};

/// The in-memory store. Nothing it does can fail, so every batch is trivially all-or-nothing.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Arc<State>,
}

/// The contents of a [`MemoryStore`].
#[derive(Clone, Debug, Default)]
struct State {
    /// By lowercase name.
    accounts: BTreeMap<String, AccountRecord>,
    messages: BTreeMap<MsgId, MessageRecord>,
    /// Conversation key -> ids of its messages.
    conversations: BTreeMap<String, BTreeSet<MsgId>>,
    /// Account key -> ids of its offline backlog. Emptied sets are removed.
    pending: BTreeMap<String, BTreeSet<MsgId>>,
    /// (a, b) -> a's view of b; both directions are stored.
    friendships: BTreeMap<(String, String), FriendState>,
    /// (blocker, blocked).
    blocks: BTreeSet<(String, String)>,
    tokens: BTreeMap<TokenId, TokenRecord>,
    /// By account key.
    profiles: BTreeMap<String, Profile>,
    /// By account key.
    retired: BTreeMap<String, RetiredName>,
    rooms: BTreeMap<RoomId, RoomRecord>,
    /// Room -> message id -> its position in the room. Kept when the room is deleted.
    room_log: BTreeMap<RoomId, BTreeMap<MsgId, u64>>,
    members: BTreeMap<(RoomId, String), MemberRecord>,
    bans: BTreeMap<(RoomId, String), BanRecord>,
    invites: BTreeMap<(RoomId, String), InviteRecord>,
    /// (account, other account) -> read marker of their direct conversation.
    markers: BTreeMap<(String, String), MsgId>,
    /// The last [`StoreOp::ReserveIds`].
    ids_reserved_below: MsgId,
}

impl MemoryStore {
    /// An empty store and its (empty) snapshot.
    pub fn new() -> (MemoryStore, Snapshot) {
        let store = MemoryStore::default();
        let snapshot = store.snapshot();
        (store, snapshot)
    }

    /// What [`RedbStore::open`](super::redb::RedbStore::open) would return for the same contents.
    pub fn snapshot(&self) -> Snapshot {
        self.state.snapshot()
    }
}

/// The rows of a per-room table, in key order.
fn rows<V: Clone>(m: &BTreeMap<(RoomId, String), V>) -> Vec<(RoomId, String, V)> {
    m.iter()
        .map(|((r, u), v)| (*r, u.clone(), v.clone()))
        .collect()
}

impl State {
    fn snapshot(&self) -> Snapshot {
        let rooms: Vec<RoomState> = self
            .rooms
            .iter()
            .map(|(&id, record)| {
                let (last_id, count) = self
                    .room_log
                    .get(&id)
                    .and_then(|log| log.iter().next_back())
                    .map_or((0, 0), |(&id, &seq)| (id, seq));
                RoomState {
                    id,
                    record: record.clone(),
                    last_id,
                    count,
                }
            })
            .collect();
        let next_room_id = self
            .rooms
            .keys()
            .chain(self.room_log.keys())
            .max()
            .map_or(1, |id| id.saturating_add(1));
        Snapshot {
            accounts: self.accounts.values().cloned().collect(),
            friendships: self
                .friendships
                .iter()
                .map(|((a, b), s)| (a.clone(), b.clone(), *s))
                .collect(),
            pending_counts: self
                .pending
                .iter()
                .map(|(user, ids)| (user.clone(), u32::try_from(ids.len()).unwrap_or(u32::MAX)))
                .collect(),
            pending_senders: {
                let mut senders: BTreeMap<(String, String), u32> = BTreeMap::new();
                for (user, ids) in &self.pending {
                    for m in ids.iter().filter_map(|id| self.messages.get(id)) {
                        *senders.entry((user.clone(), key_of(&m.from))).or_insert(0) += 1;
                    }
                }
                senders.into_iter().map(|((u, s), n)| (u, s, n)).collect()
            },
            next_id: self
                .messages
                .keys()
                .next_back()
                .map_or(1, |id| id.saturating_add(1))
                .max(self.ids_reserved_below),
            tokens: self.tokens.values().cloned().collect(),
            blocks: self.blocks.iter().cloned().collect(),
            profiles: self
                .profiles
                .iter()
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect(),
            retired: self.retired.values().cloned().collect(),
            rooms,
            members: rows(&self.members),
            bans: rows(&self.bans),
            invites: rows(&self.invites),
            next_room_id,
        }
    }

    /// Changes an existing account's profile; nothing when there is no such account.
    fn profile(&mut self, user: &str, change: impl FnOnce(&mut Profile)) {
        if self.accounts.contains_key(user) {
            change(self.profiles.entry(user.to_owned()).or_default());
        }
    }

    fn apply(&mut self, op: &StoreOp) -> StoreReply {
        match op {
            StoreOp::CreateAccount(rec) => {
                self.accounts.insert(key_of(&rec.name), rec.clone());
                StoreReply::Done
            }
            StoreOp::AppendMessage { msg, pending_for } => {
                self.messages.insert(msg.id, msg.clone());
                for conv in message_conversation_keys(msg) {
                    self.conversations.entry(conv).or_default().insert(msg.id);
                }
                for user in pending_for {
                    self.pending.entry(user.clone()).or_default().insert(msg.id);
                }
                StoreReply::Done
            }
            StoreOp::AddPending { user, id } => {
                self.pending.entry(user.clone()).or_default().insert(*id);
                StoreReply::Done
            }
            StoreOp::ClearBacklog { user, upto } => {
                if let Some(ids) = self.pending.get_mut(user) {
                    ids.retain(|id| id > upto);
                    if ids.is_empty() {
                        self.pending.remove(user);
                    }
                }
                StoreReply::Done
            }
            StoreOp::SetFriendship { a, b, state } => {
                match state {
                    Some(s) => {
                        self.friendships.insert((a.clone(), b.clone()), *s);
                        self.friendships.insert((b.clone(), a.clone()), s.mirror());
                    }
                    None => {
                        self.friendships.remove(&(a.clone(), b.clone()));
                        self.friendships.remove(&(b.clone(), a.clone()));
                    }
                }
                StoreReply::Done
            }
            StoreOp::History {
                conv,
                count,
                cursor,
            } => self.page(conv, *count, *cursor),
            StoreOp::ReadBacklog { user } => self.backlog(user),
            StoreOp::CreateToken(rec) => {
                self.tokens.insert(rec.id, rec.clone());
                StoreReply::Done
            }
            StoreOp::TouchToken { id, last_used_ms } => {
                if let Some(t) = self.tokens.get_mut(id) {
                    t.last_used_ms = *last_used_ms;
                }
                StoreReply::Done
            }
            StoreOp::RevokeTokens { ids } => {
                for id in ids {
                    self.tokens.remove(id);
                }
                StoreReply::Done
            }
            StoreOp::SetPassword { user, phc, revoke } => {
                if let Some(a) = self.accounts.get_mut(user) {
                    a.phc = phc.clone();
                }
                for id in revoke {
                    self.tokens.remove(id);
                }
                StoreReply::Done
            }
            StoreOp::DeleteAccount { user, deleted_ms } => {
                let user = user.as_str();
                let record = self.accounts.remove(user);
                self.tokens.retain(|_, t| t.user != user);
                self.friendships.retain(|(a, b), _| a != user && b != user);
                self.blocks.retain(|(a, b)| a != user && b != user);
                self.pending.remove(user);
                self.profiles.remove(user);
                self.members.retain(|(_, u), _| u != user);
                self.bans.retain(|(_, u), _| u != user);
                self.invites.retain(|(_, u), _| u != user);
                self.markers.retain(|(u, _), _| u != user);
                if let Some(rec) = record {
                    let retired = RetiredName {
                        name: rec.name,
                        deleted_ms: *deleted_ms,
                    };
                    self.retired.insert(user.to_owned(), retired);
                }
                StoreReply::Done
            }
            StoreOp::Block { a, b } => {
                self.friendships.remove(&(a.clone(), b.clone()));
                self.friendships.remove(&(b.clone(), a.clone()));
                self.blocks.insert((a.clone(), b.clone()));
                StoreReply::Done
            }
            StoreOp::Unblock { a, b } => {
                self.blocks.remove(&(a.clone(), b.clone()));
                StoreReply::Done
            }
            StoreOp::SetAway { user, away } => {
                self.profile(user, |p| p.away = away.clone());
                StoreReply::Done
            }
            StoreOp::SetDms { user, friends_only } => {
                self.profile(user, |p| p.friends_only = *friends_only);
                StoreReply::Done
            }
            StoreOp::SetLastSeen { user, ms } => {
                self.profile(user, |p| p.last_seen_ms = Some(*ms));
                StoreReply::Done
            }
            StoreOp::SetSuspended { user, suspension } => {
                self.profile(user, |p| p.suspended = suspension.clone());
                StoreReply::Done
            }
            StoreOp::ReadMessages { ids } => self.messages_by_id(ids),
            StoreOp::AppendRoomMessage { msg, room, seq } => {
                self.messages.insert(msg.id, msg.clone());
                self.room_log.entry(*room).or_default().insert(msg.id, *seq);
                StoreReply::Done
            }
            StoreOp::PutRoom { id, room } => {
                self.rooms.insert(*id, room.clone());
                StoreReply::Done
            }
            StoreOp::CreateRoom {
                id,
                room,
                owner,
                member,
            } => {
                self.rooms.insert(*id, (**room).clone());
                self.members.insert((*id, owner.clone()), *member);
                StoreReply::Done
            }
            StoreOp::Notice(_) => StoreReply::Done,
            StoreOp::Told { op, .. } => self.apply(op),
            StoreOp::ReserveIds { below } => {
                self.ids_reserved_below = *below;
                StoreReply::Done
            }
            StoreOp::DeleteRoom { id } => {
                self.rooms.remove(id);
                self.members.retain(|(r, _), _| r != id);
                self.bans.retain(|(r, _), _| r != id);
                self.invites.retain(|(r, _), _| r != id);
                StoreReply::Done
            }
            StoreOp::PutMember { room, user, member } => {
                self.members.insert((*room, user.clone()), *member);
                StoreReply::Done
            }
            StoreOp::RemoveMember { room, user } => {
                self.members.remove(&(*room, user.clone()));
                StoreReply::Done
            }
            StoreOp::PutBan { room, user, ban } => {
                self.bans.insert((*room, user.clone()), ban.clone());
                StoreReply::Done
            }
            StoreOp::RemoveBan { room, user } => {
                self.bans.remove(&(*room, user.clone()));
                StoreReply::Done
            }
            StoreOp::PutInvite { room, user, invite } => {
                self.invites.insert((*room, user.clone()), invite.clone());
                StoreReply::Done
            }
            StoreOp::RemoveInvite { room, user } => {
                self.invites.remove(&(*room, user.clone()));
                StoreReply::Done
            }
            StoreOp::SetDirectRead { user, with, id } => {
                let key = (user.clone(), with.clone());
                let before = self.markers.get(&key).copied().unwrap_or(0);
                let after = before.max(*id);
                if after > before {
                    self.markers.insert(key, after);
                }
                StoreReply::Marker { before, after }
            }
            StoreOp::RoomReplay {
                room,
                after,
                upto,
                count,
            } => {
                let page = self.room_page(
                    *room,
                    after.saturating_add(1),
                    *upto,
                    *count,
                    Cursor::Latest,
                );
                self.messages_by_id(&page.ids)
            }
            StoreOp::DirectRead { .. } | StoreOp::FirstUnread { .. } | StoreOp::RoomSeq { .. } => {
                let read = op.clone().into_read().expect("a read op");
                self.read(&read)
            }
        }
    }

    fn read(&self, op: &ReadOp) -> StoreReply {
        match op {
            ReadOp::History {
                conv,
                count,
                cursor,
            } => self.page(conv, *count, *cursor),
            ReadOp::Backlog { user } => self.backlog(user),
            ReadOp::Messages { ids } => self.messages_by_id(ids),
            ReadOp::DirectRead { user, with } => {
                let m = self
                    .markers
                    .get(&(user.clone(), with.clone()))
                    .copied()
                    .unwrap_or(0);
                StoreReply::Marker {
                    before: m,
                    after: m,
                }
            }
            ReadOp::FirstUnread { rooms } => StoreReply::FirstIds(
                rooms
                    .iter()
                    .map(|&(room, after)| {
                        let from = after.checked_add(1)?;
                        self.room_log
                            .get(&room)?
                            .range(from..)
                            .next()
                            .map(|(&id, _)| id)
                    })
                    .collect(),
            ),
            ReadOp::RoomSeq { room, upto } => StoreReply::Seq(
                self.room_log
                    .get(room)
                    .and_then(|log| log.range(..=*upto).next_back())
                    .map(|(&id, &seq)| (id, seq)),
            ),
            ReadOp::Backup { .. } => StoreReply::Unreadable(super::Unreadable::Unavailable(
                "an in-memory store has no file to copy".into(),
            )),
        }
    }

    /// The messages with `ids`, in that order; an id without a message is left out.
    fn messages_by_id(&self, ids: &[MsgId]) -> StoreReply {
        StoreReply::Messages(
            ids.iter()
                .filter_map(|id| self.messages.get(id).cloned())
                .collect(),
        )
    }

    fn page(&self, conv: &Conversation, count: u32, cursor: Cursor) -> StoreReply {
        if let Conversation::Room { id, after } = *conv {
            return StoreReply::History(self.room_page(
                id,
                after.saturating_add(1),
                MsgId::MAX,
                count,
                cursor,
            ));
        }
        let empty = BTreeSet::new();
        let ids = conversation_key(conv)
            .and_then(|k| self.conversations.get(&k))
            .unwrap_or(&empty);
        StoreReply::History(self.history(ids, count, cursor))
    }

    /// One page of a room's messages with ids in `lo..=hi`.
    fn room_page(
        &self,
        room: RoomId,
        lo: MsgId,
        hi: MsgId,
        count: u32,
        cursor: Cursor,
    ) -> HistoryPage {
        let empty = BTreeMap::new();
        let log = self.room_log.get(&room).unwrap_or(&empty);
        let (ids, older, newer) = page(lo, hi, count, cursor, |a, b, rev, take| {
            Ok::<_, Infallible>(if a > b {
                Vec::new()
            } else if rev {
                log.range(a..=b)
                    .rev()
                    .take(take)
                    .map(|(&id, _)| id)
                    .collect()
            } else {
                log.range(a..=b).take(take).map(|(&id, _)| id).collect()
            })
        })
        .unwrap_or_else(|never| match never {});
        HistoryPage {
            // Every indexed id was stored with its message, and messages are never removed.
            ids: ids
                .into_iter()
                .filter(|id| self.messages.contains_key(id))
                .collect(),
            older,
            newer,
        }
    }

    /// The ids of the account's backlog in order; an entry whose message is not stored is left
    /// out.
    fn backlog(&self, user: &str) -> StoreReply {
        let ids = self.pending.get(user).into_iter().flatten();
        StoreReply::Backlog(
            ids.filter(|id| self.messages.contains_key(id))
                .copied()
                .collect(),
        )
    }

    fn history(&self, ids: &BTreeSet<MsgId>, count: u32, cursor: Cursor) -> HistoryPage {
        let take = usize::try_from(count).unwrap_or(usize::MAX);
        let mut shown: Vec<MsgId> = match cursor {
            Cursor::Latest => ids.iter().rev().take(take).copied().collect(),
            Cursor::Before(x) => ids.range(..x).rev().take(take).copied().collect(),
            Cursor::After(x) => ids
                .range((Bound::Excluded(x), Bound::Unbounded))
                .take(take)
                .copied()
                .collect(),
        };
        if !matches!(cursor, Cursor::After(_)) {
            shown.reverse();
        }
        let below = |id: MsgId| ids.range(..id).next().is_some();
        let above = |id: MsgId| {
            ids.range((Bound::Excluded(id), Bound::Unbounded))
                .next()
                .is_some()
        };
        let (older, newer) = match (shown.first(), shown.last()) {
            (Some(&min), Some(&max)) => (below(min).then_some(min), above(max).then_some(max)),
            _ => match cursor {
                Cursor::Latest => (None, None),
                Cursor::Before(x) => (None, ids.range(x..).next().map(|_| x.saturating_sub(1))),
                Cursor::After(x) => (ids.range(..=x).next().map(|_| x.saturating_add(1)), None),
            },
        };
        HistoryPage {
            // Every indexed id was stored with its message, and messages are never removed.
            ids: shown
                .into_iter()
                .filter(|id| self.messages.contains_key(id))
                .collect(),
            older,
            newer,
        }
    }
}

impl Store for MemoryStore {
    fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
        let state = Arc::make_mut(&mut self.state);
        Ok(ops.iter().map(|op| state.apply(op)).collect())
    }

    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
        Ok(Box::new(MemoryReader(self.state.clone())))
    }
}

/// The state a [`MemoryStore`] held when the reader was taken.
struct MemoryReader(Arc<State>);

impl StoreReader for MemoryReader {
    fn read(&self, op: &ReadOp) -> Result<StoreReply, StoreError> {
        Ok(self.0.read(op))
    }
}
