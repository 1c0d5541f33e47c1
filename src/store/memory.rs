//! An in-memory [`Store`] with exactly the semantics of [`RedbStore`](super::redb::RedbStore),
//! for tests and fuzzers of the core: no file, no fsync, deterministic, cheap to clone.
//!
//! It keeps the same collections as the redb tables (accounts, the message log, the conversation,
//! room and backlog indexes, friendship edges, rooms, members, bans, invitations, read markers) in
//! `BTreeMap`s, so iteration orders and therefore snapshots match the redb store's. HISTORY paging
//! is the same function for both (`page`). The model test in `tests/store_model.rs` applies the
//! same random batches to both and checks they agree reply for reply.
//!
//! Readers see the state as it was when they were taken, as redb's read transactions do: the state
//! sits behind an `Arc`, a reader holds a clone of the `Arc`, and a write copies the state first if
//! a reader still holds it (copy on write). When no reader is alive, as in [`Store::execute`],
//! nothing is copied.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;

use super::keys::{conversation_key, message_conversation_keys};
use super::page::page;
use super::{
    key_of, AccountRecord, BanRecord, Conversation, Cursor, FriendState, HistoryPage, InviteRecord,
    MemberRecord, MessageRecord, MsgId, ReadOp, RoomId, RoomRecord, RoomState, Snapshot, Store,
    StoreError, StoreOp, StoreReader, StoreReply,
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
    rooms: BTreeMap<RoomId, RoomRecord>,
    /// Room -> message id -> its position in the room. Kept when the room is deleted.
    room_log: BTreeMap<RoomId, BTreeMap<MsgId, u64>>,
    members: BTreeMap<(RoomId, String), MemberRecord>,
    bans: BTreeMap<(RoomId, String), BanRecord>,
    invites: BTreeMap<(RoomId, String), InviteRecord>,
    /// (account, other account) -> read marker of their direct conversation.
    markers: BTreeMap<(String, String), MsgId>,
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

/// Lists at most `take` ids of `set` within `a..=b`, in either direction (see `page`).
fn ids_in<'a>(
    set: impl DoubleEndedIterator<Item = &'a MsgId>,
    rev: bool,
    take: usize,
) -> Vec<MsgId> {
    if rev {
        set.rev().take(take).copied().collect()
    } else {
        set.take(take).copied().collect()
    }
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
        let used = self
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
            next_id: self
                .messages
                .keys()
                .next_back()
                .map_or(1, |id| id.saturating_add(1)),
            rooms,
            members: rows(&self.members),
            bans: rows(&self.bans),
            invites: rows(&self.invites),
            next_room_id: used,
        }
    }

    fn apply(&mut self, op: &StoreOp) -> StoreReply {
        match op {
            StoreOp::CreateAccount(rec) => {
                self.accounts.insert(key_of(&rec.name), rec.clone());
            }
            StoreOp::AppendMessage { msg, pending_for } => {
                self.messages.insert(msg.id, msg.clone());
                for conv in message_conversation_keys(msg) {
                    self.conversations.entry(conv).or_default().insert(msg.id);
                }
                for user in pending_for {
                    self.pending.entry(user.clone()).or_default().insert(msg.id);
                }
            }
            StoreOp::AddPending { user, id } => {
                self.pending.entry(user.clone()).or_default().insert(*id);
            }
            StoreOp::ClearBacklog { user, upto } => {
                if let Some(ids) = self.pending.get_mut(user) {
                    ids.retain(|id| id > upto);
                    if ids.is_empty() {
                        self.pending.remove(user);
                    }
                }
            }
            StoreOp::SetFriendship { a, b, state } => match state {
                Some(s) => {
                    self.friendships.insert((a.clone(), b.clone()), *s);
                    self.friendships.insert((b.clone(), a.clone()), s.mirror());
                }
                None => {
                    self.friendships.remove(&(a.clone(), b.clone()));
                    self.friendships.remove(&(b.clone(), a.clone()));
                }
            },
            StoreOp::AppendRoomMessage { msg, room, seq } => {
                self.messages.insert(msg.id, msg.clone());
                self.room_log.entry(*room).or_default().insert(msg.id, *seq);
            }
            StoreOp::PutRoom { id, room } => {
                self.rooms.insert(*id, room.clone());
            }
            StoreOp::DeleteRoom { id } => {
                self.rooms.remove(id);
                self.members.retain(|(r, _), _| r != id);
                self.bans.retain(|(r, _), _| r != id);
                self.invites.retain(|(r, _), _| r != id);
            }
            StoreOp::PutMember { room, user, member } => {
                self.members.insert((*room, user.clone()), *member);
            }
            StoreOp::RemoveMember { room, user } => {
                self.members.remove(&(*room, user.clone()));
            }
            StoreOp::PutBan { room, user, ban } => {
                self.bans.insert((*room, user.clone()), ban.clone());
            }
            StoreOp::RemoveBan { room, user } => {
                self.bans.remove(&(*room, user.clone()));
            }
            StoreOp::PutInvite { room, user, invite } => {
                self.invites.insert((*room, user.clone()), invite.clone());
            }
            StoreOp::RemoveInvite { room, user } => {
                self.invites.remove(&(*room, user.clone()));
            }
            StoreOp::SetDirectRead { user, with, id } => {
                let key = (user.clone(), with.clone());
                let before = self.markers.get(&key).copied().unwrap_or(0);
                let after = before.max(*id);
                if after > before {
                    self.markers.insert(key, after);
                }
                return StoreReply::Marker { before, after };
            }
            StoreOp::RoomReplay {
                room,
                after,
                upto,
                count,
            } => {
                return StoreReply::History(self.room_page(
                    *room,
                    after.saturating_add(1),
                    *upto,
                    *count,
                    Cursor::Latest,
                ))
            }
            StoreOp::History { .. }
            | StoreOp::ReadBacklog { .. }
            | StoreOp::DirectRead { .. }
            | StoreOp::FirstUnread { .. }
            | StoreOp::RoomSeq { .. } => {
                let read = op.clone().into_read().expect("a read op");
                return self.read(&read);
            }
        }
        StoreReply::Done
    }

    fn read(&self, op: &ReadOp) -> StoreReply {
        match op {
            ReadOp::History {
                conv,
                count,
                cursor,
            } => StoreReply::History(self.history(conv, *count, *cursor)),
            ReadOp::Backlog { user } => self.backlog(user),
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
        }
    }

    /// The account's backlog in id order; an entry whose message is not stored is skipped.
    fn backlog(&self, user: &str) -> StoreReply {
        let ids = self.pending.get(user).into_iter().flatten();
        StoreReply::Backlog(
            ids.filter_map(|id| self.messages.get(id).cloned())
                .collect(),
        )
    }

    fn history(&self, conv: &Conversation, count: u32, cursor: Cursor) -> HistoryPage {
        if let Conversation::Room { id, after } = *conv {
            return self.room_page(id, after.saturating_add(1), MsgId::MAX, count, cursor);
        }
        let empty = BTreeSet::new();
        let set = conversation_key(conv)
            .and_then(|k| self.conversations.get(&k))
            .unwrap_or(&empty);
        let (ids, older, newer) = page(0, MsgId::MAX, count, cursor, |a, b, rev, take| {
            Ok::<_, Infallible>(if a > b {
                Vec::new()
            } else {
                ids_in(set.range(a..=b), rev, take)
            })
        })
        .unwrap_or_else(|never| match never {});
        self.page_of(ids, older, newer)
    }

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
            } else {
                ids_in(log.range(a..=b).map(|(id, _)| id), rev, take)
            })
        })
        .unwrap_or_else(|never| match never {});
        self.page_of(ids, older, newer)
    }

    fn page_of(&self, ids: Vec<MsgId>, older: Option<MsgId>, newer: Option<MsgId>) -> HistoryPage {
        HistoryPage {
            // Every indexed id was stored with its message, and messages are never removed.
            messages: ids
                .iter()
                .filter_map(|id| self.messages.get(id).cloned())
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
