//! The durable [`Store`]: one redb file holding accounts, friendships, rooms, the message log and
//! its indexes (by conversation, by room, and the offline backlog by account), and read markers.
//!
//! This file owns the table layout and the transactions. Tables are typed `const TableDefinition`s:
//!
//! | table           | key                    | value                               |
//! |-----------------|------------------------|-------------------------------------|
//! | `accounts`      | lowercase name         | encoded account record              |
//! | `messages`      | message id             | encoded message record              |
//! | `conversations` | (conversation key, id) | `()`                                |
//! | `pending`       | (account key, id)      | `()`                                |
//! | `friendships`   | (a key, b key)         | a's view of b, one byte             |
//! | `rooms`         | room number            | encoded room record                 |
//! | `room_members`  | (room number, account key) | encoded member record           |
//! | `room_bans`     | (room number, account key) | encoded ban record              |
//! | `room_invites`  | (room number, account key) | encoded invitation record       |
//! | `room_log`      | (room number, message id)  | the message's position in the room (1, 2, ...) |
//! | `read_markers`  | (account key, other account key) | last message id marked read |
//! | `meta`          | setting name           | u64 (only `schema_version` so far)  |
//!
//! The index keys (conversation keys, account keys) are made by the parent module's `keys`, shared
//! with the in-memory store; the records are encoded by `codec`, which never trusts a length it
//! reads, so a damaged record is a [`StoreError::Corrupt`], never a panic or a huge allocation.
//! Rooms are keyed by number, not by name: a deleted room's messages stay in `room_log` under its
//! number, which is never given out again, so a new room of the same name starts empty. A room's
//! message count and last id are the last `room_log` entry of its number, read at open.
//!
//! Every [`Store::write`] batch runs in one write transaction committed with
//! [`Durability::Immediate`] (fsync before `write` returns); an error anywhere in the batch drops
//! the transaction, so nothing of the batch is written. A [`Store::reader`] is a redb read
//! transaction: it sees the last commit before it was taken, runs beside later write transactions,
//! and never waits for them. The page cache is bounded by [`STORE_CACHE_BYTES`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Builder, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, WriteTransaction,
};

use super::codec;
use super::keys::{conversation_key, key_of, message_conversation_keys};
use super::page::page;
use super::{
    Conversation, Cursor, Damage, FriendState, HistoryPage, MessageRecord, MsgId, ReadOp, RoomId,
    RoomState, Snapshot, Store, StoreError, StoreOp, StoreReader, StoreReply,
};
use crate::config::STORE_CACHE_BYTES;

const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const CONVERSATIONS: TableDefinition<(&str, u64), ()> = TableDefinition::new("conversations");
const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("pending");
const FRIENDSHIPS: TableDefinition<(&str, &str), u8> = TableDefinition::new("friendships");
const ROOMS: TableDefinition<u64, &[u8]> = TableDefinition::new("rooms");
const ROOM_MEMBERS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("room_members");
const ROOM_BANS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("room_bans");
const ROOM_INVITES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("room_invites");
const ROOM_LOG: TableDefinition<(u64, u64), u64> = TableDefinition::new("room_log");
const READ_MARKERS: TableDefinition<(&str, &str), u64> = TableDefinition::new("read_markers");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` key of the table layout version.
const SCHEMA_VERSION_KEY: &str = "schema_version";
/// The table layout this code reads and writes. A file with another version is refused at open
/// rather than misread. Version 2 added the room tables, the read markers and room messages in the
/// log; a version 1 file is upgraded at open (the new tables start empty, nothing else changes).
/// A version 2 file must not be opened by a build that reads only version 1: it would not know
/// room messages in the log.
pub(super) const SCHEMA_VERSION: u64 = 2;

/// The one-byte form of a friendship edge in the `friendships` table.
fn state_byte(state: FriendState) -> u8 {
    match state {
        FriendState::Friends => 0,
        FriendState::Outgoing => 1,
        FriendState::Incoming => 2,
    }
}

fn state_from_byte(b: u8) -> Result<FriendState, Damage> {
    match b {
        0 => Ok(FriendState::Friends),
        1 => Ok(FriendState::Outgoing),
        2 => Ok(FriendState::Incoming),
        other => Err(Damage::new(format!("unknown friendship state {other}"))),
    }
}

/// A failure inside a transaction, before it is classified for the caller: redb's own errors
/// become [`StoreError::Open`], [`StoreError::Write`] or [`StoreError::Read`] depending on where
/// they happened, while damage (ours or redb's) is always [`StoreError::Corrupt`].
enum Fail {
    Redb(redb::Error),
    Damage(Damage),
    Schema(u64),
}

impl Fail {
    /// The error for the database at `path`; `kind` classifies redb's own errors.
    fn at(self, path: &Path, kind: fn(PathBuf, Box<redb::Error>) -> StoreError) -> StoreError {
        let path = path.to_owned();
        match self {
            Fail::Redb(redb::Error::Corrupted(m)) => StoreError::Corrupt {
                path,
                source: Box::new(Damage::new(m)),
            },
            Fail::Redb(e) => kind(path, Box::new(e)),
            Fail::Damage(damage) => StoreError::Corrupt {
                path,
                source: Box::new(damage),
            },
            Fail::Schema(found) => StoreError::Schema { path, found },
        }
    }
}

impl From<Damage> for Fail {
    fn from(e: Damage) -> Self {
        Fail::Damage(e)
    }
}

macro_rules! fail_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Redb(e.into())
            }
        }
    )*};
}
fail_from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The durable store. Owns the open database; the file closes when the store and every reader
/// taken from it are dropped.
pub struct RedbStore {
    db: Arc<Database>,
    /// The database file, named in every error.
    path: Arc<Path>,
}

impl RedbStore {
    /// Open the database at `path`, creating the file and its tables if missing, and read the
    /// [`Snapshot`] the core starts from.
    pub fn open(path: &Path) -> Result<(RedbStore, Snapshot), StoreError> {
        Self::open_inner(path)
            .map_err(|f| f.at(path, |path, source| StoreError::Open { path, source }))
    }

    fn open_inner(path: &Path) -> Result<(RedbStore, Snapshot), Fail> {
        let db = Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        let snapshot = {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(SCHEMA_VERSION_KEY)?.map(|v| v.value());
            match stored {
                // A new file, or one from before rooms: the tables this version adds are created
                // empty by `Tables::open` below.
                None | Some(1) => {
                    meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => return Err(Fail::Schema(other)),
            }
            Tables::open(&txn)?.snapshot()?
        };
        txn.commit()?;
        let store = RedbStore {
            db: Arc::new(db),
            path: path.into(),
        };
        Ok((store, snapshot))
    }

    /// Run `ops` in an open write transaction. Returns the replies and whether anything was
    /// written.
    fn apply_all(txn: &WriteTransaction, ops: &[StoreOp]) -> Result<(Vec<StoreReply>, bool), Fail> {
        let mut tables = Tables::open(txn)?;
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            replies.push(tables.apply(op)?);
        }
        Ok((replies, tables.dirty))
    }

    fn write_inner(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, Fail> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut txn = self.db.begin_write()?;
        // Immediate is redb's default; it is set anyway because the protocol's durability promise
        // (committed before OK) rests on it.
        txn.set_durability(Durability::Immediate)?;
        // On error the transaction is dropped here, uncommitted: the batch leaves no trace.
        let (replies, dirty) = Self::apply_all(&txn, ops)?;
        if dirty {
            txn.commit()?;
        } else {
            // A batch that changed nothing (empty backlogs taken, say) has nothing to make
            // durable; skipping the commit saves an fsync.
            txn.abort()?;
        }
        Ok(replies)
    }
}

impl Store for RedbStore {
    fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
        self.write_inner(ops).map_err(|f| {
            f.at(&self.path, |path, source| StoreError::Write {
                path,
                source,
            })
        })
    }

    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
        match self.db.begin_read() {
            Ok(txn) => Ok(Box::new(RedbReader {
                txn,
                _db: self.db.clone(),
                path: self.path.clone(),
            })),
            Err(e) => Err(StoreError::Read {
                path: self.path.to_path_buf(),
                source: Box::new(e.into()),
            }),
        }
    }
}

/// A read transaction: the database as of the moment it was taken, whatever commits later.
struct RedbReader {
    txn: ReadTransaction,
    /// Keeps the database open while the transaction lives (declared after `txn`, so dropped
    /// after it).
    _db: Arc<Database>,
    path: Arc<Path>,
}

impl RedbReader {
    fn read_inner(&self, op: &ReadOp) -> Result<StoreReply, Fail> {
        match op {
            ReadOp::History {
                conv,
                count,
                cursor,
            } => {
                let messages = self.txn.open_table(MESSAGES)?;
                let conversations = self.txn.open_table(CONVERSATIONS)?;
                let room_log = self.txn.open_table(ROOM_LOG)?;
                let page = history(&conversations, &room_log, &messages, conv, *count, *cursor)?;
                Ok(StoreReply::History(page))
            }
            ReadOp::Backlog { user } => {
                let messages = self.txn.open_table(MESSAGES)?;
                let pending = self.txn.open_table(PENDING)?;
                let (_, msgs) = backlog(&pending, &messages, user)?;
                Ok(StoreReply::Backlog(msgs))
            }
            ReadOp::DirectRead { user, with } => {
                let markers = self.txn.open_table(READ_MARKERS)?;
                let m = marker(&markers, user, with)?;
                Ok(StoreReply::Marker {
                    before: m,
                    after: m,
                })
            }
            ReadOp::FirstUnread { rooms } => {
                let room_log = self.txn.open_table(ROOM_LOG)?;
                Ok(StoreReply::FirstIds(first_unread(&room_log, rooms)?))
            }
            ReadOp::RoomSeq { room, upto } => {
                let room_log = self.txn.open_table(ROOM_LOG)?;
                Ok(StoreReply::Seq(room_seq(&room_log, *room, *upto)?))
            }
        }
    }
}

impl StoreReader for RedbReader {
    fn read(&self, op: &ReadOp) -> Result<StoreReply, StoreError> {
        self.read_inner(op)
            .map_err(|f| f.at(&self.path, |path, source| StoreError::Read { path, source }))
    }
}

/// Every table, opened once for a write transaction (redb allows one open handle per table).
struct Tables<'txn> {
    accounts: Table<'txn, &'static str, &'static [u8]>,
    messages: Table<'txn, u64, &'static [u8]>,
    conversations: Table<'txn, (&'static str, u64), ()>,
    pending: Table<'txn, (&'static str, u64), ()>,
    friendships: Table<'txn, (&'static str, &'static str), u8>,
    rooms: Table<'txn, u64, &'static [u8]>,
    room_members: Table<'txn, (u64, &'static str), &'static [u8]>,
    room_bans: Table<'txn, (u64, &'static str), &'static [u8]>,
    room_invites: Table<'txn, (u64, &'static str), &'static [u8]>,
    room_log: Table<'txn, (u64, u64), u64>,
    read_markers: Table<'txn, (&'static str, &'static str), u64>,
    /// Whether any op of the batch wrote something.
    dirty: bool,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, Fail> {
        Ok(Tables {
            accounts: txn.open_table(ACCOUNTS)?,
            messages: txn.open_table(MESSAGES)?,
            conversations: txn.open_table(CONVERSATIONS)?,
            pending: txn.open_table(PENDING)?,
            friendships: txn.open_table(FRIENDSHIPS)?,
            rooms: txn.open_table(ROOMS)?,
            room_members: txn.open_table(ROOM_MEMBERS)?,
            room_bans: txn.open_table(ROOM_BANS)?,
            room_invites: txn.open_table(ROOM_INVITES)?,
            room_log: txn.open_table(ROOM_LOG)?,
            read_markers: txn.open_table(READ_MARKERS)?,
            dirty: false,
        })
    }

    fn snapshot(&self) -> Result<Snapshot, Fail> {
        let mut snap = Snapshot {
            next_id: 1,
            next_room_id: 1,
            ..Snapshot::default()
        };
        for entry in self.accounts.iter()? {
            let (key, value) = entry?;
            let rec = codec::decode_account(value.value())?;
            if key_of(&rec.name) != key.value() {
                return Err(Damage::new(format!(
                    "account stored under {:?} is named {:?}",
                    key.value(),
                    rec.name
                ))
                .into());
            }
            snap.accounts.push(rec);
        }
        for entry in self.friendships.iter()? {
            let (key, value) = entry?;
            let (a, b) = key.value();
            snap.friendships
                .push((a.to_owned(), b.to_owned(), state_from_byte(value.value())?));
        }
        for entry in self.pending.iter()? {
            let (key, _) = entry?;
            let (user, _) = key.value();
            match snap.pending_counts.last_mut() {
                Some((last, n)) if last == user => *n = n.saturating_add(1),
                _ => snap.pending_counts.push((user.to_owned(), 1)),
            }
        }
        if let Some((id, _)) = self.messages.last()? {
            snap.next_id = id.value().saturating_add(1);
        }
        for entry in self.rooms.iter()? {
            let (id, value) = entry?;
            let id = id.value();
            let record = codec::decode_room(value.value())?;
            let (last_id, count) =
                match self.room_log.range((id, 0)..=(id, MsgId::MAX))?.next_back() {
                    Some(e) => {
                        let (key, seq) = e?;
                        (key.value().1, seq.value())
                    }
                    None => (0, 0),
                };
            snap.next_room_id = snap.next_room_id.max(id.saturating_add(1));
            snap.rooms.push(RoomState {
                id,
                record,
                last_id,
                count,
            });
        }
        // A deleted room's number stays in the log: it is never given out again.
        if let Some(e) = self.room_log.last()? {
            snap.next_room_id = snap.next_room_id.max(e.0.value().0.saturating_add(1));
        }
        for entry in self.room_members.iter()? {
            let (key, value) = entry?;
            let (room, user) = key.value();
            snap.members
                .push((room, user.to_owned(), codec::decode_member(value.value())?));
        }
        for entry in self.room_bans.iter()? {
            let (key, value) = entry?;
            let (room, user) = key.value();
            snap.bans
                .push((room, user.to_owned(), codec::decode_ban(value.value())?));
        }
        for entry in self.room_invites.iter()? {
            let (key, value) = entry?;
            let (room, user) = key.value();
            snap.invites
                .push((room, user.to_owned(), codec::decode_invite(value.value())?));
        }
        Ok(snap)
    }

    fn apply(&mut self, op: &StoreOp) -> Result<StoreReply, Fail> {
        // Every op below but the reads writes something.
        self.dirty |= !matches!(
            op,
            StoreOp::History { .. }
                | StoreOp::ReadBacklog { .. }
                | StoreOp::RoomReplay { .. }
                | StoreOp::DirectRead { .. }
                | StoreOp::FirstUnread { .. }
                | StoreOp::RoomSeq { .. }
                | StoreOp::ClearBacklog { .. }
                | StoreOp::SetDirectRead { .. }
        );
        match op {
            StoreOp::CreateAccount(rec) => {
                self.accounts.insert(
                    key_of(&rec.name).as_str(),
                    codec::encode_account(rec).as_slice(),
                )?;
            }
            StoreOp::AppendMessage { msg, pending_for } => {
                self.messages
                    .insert(msg.id, codec::encode_message(msg).as_slice())?;
                for conv in message_conversation_keys(msg) {
                    self.conversations.insert((conv.as_str(), msg.id), ())?;
                }
                for user in pending_for {
                    self.pending.insert((user.as_str(), msg.id), ())?;
                }
            }
            StoreOp::AddPending { user, id } => {
                self.pending.insert((user.as_str(), *id), ())?;
            }
            StoreOp::ClearBacklog { user, upto } => {
                let mut ids = Vec::new();
                for entry in self
                    .pending
                    .range((user.as_str(), 0u64)..=(user.as_str(), *upto))?
                {
                    ids.push(entry?.0.value().1);
                }
                for id in ids {
                    self.pending.remove((user.as_str(), id))?;
                    self.dirty = true;
                }
            }
            StoreOp::SetFriendship { a, b, state } => match state {
                Some(s) => {
                    self.friendships
                        .insert((a.as_str(), b.as_str()), state_byte(*s))?;
                    self.friendships
                        .insert((b.as_str(), a.as_str()), state_byte(s.mirror()))?;
                }
                None => {
                    self.friendships.remove((a.as_str(), b.as_str()))?;
                    self.friendships.remove((b.as_str(), a.as_str()))?;
                }
            },
            StoreOp::AppendRoomMessage { msg, room, seq } => {
                self.messages
                    .insert(msg.id, codec::encode_message(msg).as_slice())?;
                self.room_log.insert((*room, msg.id), *seq)?;
            }
            StoreOp::PutRoom { id, room } => {
                self.rooms
                    .insert(*id, codec::encode_room(room).as_slice())?;
            }
            StoreOp::DeleteRoom { id } => {
                self.rooms.remove(*id)?;
                for table in [
                    &mut self.room_members,
                    &mut self.room_bans,
                    &mut self.room_invites,
                ] {
                    let mut users = Vec::new();
                    for entry in table.range((*id, "")..(id.saturating_add(1), ""))? {
                        users.push(entry?.0.value().1.to_owned());
                    }
                    for user in users {
                        table.remove((*id, user.as_str()))?;
                    }
                }
            }
            StoreOp::PutMember { room, user, member } => {
                self.room_members.insert(
                    (*room, user.as_str()),
                    codec::encode_member(member).as_slice(),
                )?;
            }
            StoreOp::RemoveMember { room, user } => {
                self.room_members.remove((*room, user.as_str()))?;
            }
            StoreOp::PutBan { room, user, ban } => {
                self.room_bans
                    .insert((*room, user.as_str()), codec::encode_ban(ban).as_slice())?;
            }
            StoreOp::RemoveBan { room, user } => {
                self.room_bans.remove((*room, user.as_str()))?;
            }
            StoreOp::PutInvite { room, user, invite } => {
                self.room_invites.insert(
                    (*room, user.as_str()),
                    codec::encode_invite(invite).as_slice(),
                )?;
            }
            StoreOp::RemoveInvite { room, user } => {
                self.room_invites.remove((*room, user.as_str()))?;
            }
            StoreOp::SetDirectRead { user, with, id } => {
                let old = marker(&self.read_markers, user, with)?;
                let after = old.max(*id);
                if after > old {
                    self.read_markers
                        .insert((user.as_str(), with.as_str()), after)?;
                    self.dirty = true;
                }
                return Ok(StoreReply::Marker { before: old, after });
            }
            // Reads are answered here when handed to `write` (see `Store::write`); RoomReplay
            // always is (see `StoreOp::is_read`).
            StoreOp::History {
                conv,
                count,
                cursor,
            } => {
                let page = history(
                    &self.conversations,
                    &self.room_log,
                    &self.messages,
                    conv,
                    *count,
                    *cursor,
                )?;
                return Ok(StoreReply::History(page));
            }
            StoreOp::RoomReplay {
                room,
                after,
                upto,
                count,
            } => {
                let page = room_page(
                    &self.room_log,
                    &self.messages,
                    *room,
                    after.saturating_add(1),
                    *upto,
                    *count,
                    Cursor::Latest,
                )?;
                return Ok(StoreReply::History(page));
            }
            StoreOp::ReadBacklog { user } => {
                let (_, messages) = backlog(&self.pending, &self.messages, user)?;
                return Ok(StoreReply::Backlog(messages));
            }
            StoreOp::DirectRead { user, with } => {
                let m = marker(&self.read_markers, user, with)?;
                return Ok(StoreReply::Marker {
                    before: m,
                    after: m,
                });
            }
            StoreOp::FirstUnread { rooms } => {
                return Ok(StoreReply::FirstIds(first_unread(&self.room_log, rooms)?));
            }
            StoreOp::RoomSeq { room, upto } => {
                return Ok(StoreReply::Seq(room_seq(&self.room_log, *room, *upto)?));
            }
        }
        Ok(StoreReply::Done)
    }
}

// The reads below take any readable table, so a read transaction and a write transaction share
// them.

/// An index of message ids under a key: `conversations` (by conversation key) or `pending` (by
/// account key).
trait IdIndex: ReadableTable<(&'static str, u64), ()> {}
impl<T: ReadableTable<(&'static str, u64), ()>> IdIndex for T {}

/// The message log, by id.
trait MessageLog: ReadableTable<u64, &'static [u8]> {}
impl<T: ReadableTable<u64, &'static [u8]>> MessageLog for T {}

/// The rooms' index: (room, message id) -> the message's position in the room.
trait RoomLog: ReadableTable<(u64, u64), u64> {}
impl<T: ReadableTable<(u64, u64), u64>> RoomLog for T {}

/// The read markers of direct conversations.
trait Markers: ReadableTable<(&'static str, &'static str), u64> {}
impl<T: ReadableTable<(&'static str, &'static str), u64>> Markers for T {}

/// The ids in the account's offline backlog, and the messages they name in id order. An entry
/// whose message is not stored is logged and skipped.
fn backlog(
    pending: &impl IdIndex,
    messages: &impl MessageLog,
    user: &str,
) -> Result<(Vec<MsgId>, Vec<MessageRecord>), Fail> {
    let mut ids = Vec::new();
    for entry in pending.range((user, 0u64)..=(user, u64::MAX))? {
        ids.push(entry?.0.value().1);
    }
    let mut found = Vec::with_capacity(ids.len());
    for &id in &ids {
        match messages.get(id)? {
            Some(bytes) => found.push(codec::decode_message(id, bytes.value())?),
            // The index is the caller's to fill (AddPending names an id it says is stored); an
            // entry without its message cannot be delivered.
            None => {
                log::warn!("offline backlog of {user:?} named message {id}, which is not stored")
            }
        }
    }
    Ok((ids, found))
}

/// The marker of `user` in the direct conversation with `with` (0: none).
fn marker(markers: &impl Markers, user: &str, with: &str) -> Result<MsgId, Fail> {
    Ok(markers.get((user, with))?.map_or(0, |v| v.value()))
}

/// For each (room, after): the first id of the room above `after`.
fn first_unread(
    room_log: &impl RoomLog,
    rooms: &[(RoomId, MsgId)],
) -> Result<Vec<Option<MsgId>>, Fail> {
    let mut out = Vec::with_capacity(rooms.len());
    for &(room, after) in rooms {
        let first = match after.checked_add(1) {
            None => None,
            Some(from) => match room_log.range((room, from)..=(room, MsgId::MAX))?.next() {
                Some(e) => Some(e?.0.value().1),
                None => None,
            },
        };
        out.push(first);
    }
    Ok(out)
}

/// The room's last message with an id up to `upto`, and its position.
fn room_seq(
    room_log: &impl RoomLog,
    room: RoomId,
    upto: MsgId,
) -> Result<Option<(MsgId, u64)>, Fail> {
    match room_log.range((room, 0)..=(room, upto))?.next_back() {
        Some(e) => {
            let (key, seq) = e?;
            Ok(Some((key.value().1, seq.value())))
        }
        None => Ok(None),
    }
}

/// The messages `ids` names, in that order; a missing one is damage.
fn load(
    messages: &impl MessageLog,
    ids: Vec<MsgId>,
    what: &str,
) -> Result<Vec<MessageRecord>, Fail> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        match messages.get(id)? {
            Some(bytes) => found.push(codec::decode_message(id, bytes.value())?),
            None => {
                return Err(
                    Damage::new(format!("{what} names message {id}, which is not stored")).into(),
                )
            }
        }
    }
    Ok(found)
}

/// One page of a conversation.
fn history(
    conversations: &impl IdIndex,
    room_log: &impl RoomLog,
    messages: &impl MessageLog,
    conv: &Conversation,
    count: u32,
    cursor: Cursor,
) -> Result<HistoryPage, Fail> {
    let key = match (conv, conversation_key(conv)) {
        (&Conversation::Room { id, after }, _) => {
            return room_page(
                room_log,
                messages,
                id,
                after.saturating_add(1),
                MsgId::MAX,
                count,
                cursor,
            );
        }
        (_, Some(key)) => key,
        (_, None) => return Ok(HistoryPage::default()),
    };
    let k = key.as_str();
    let (ids, older, newer) = page(0, MsgId::MAX, count, cursor, |a, b, rev, take| {
        let mut out = Vec::new();
        if a > b {
            return Ok::<_, Fail>(out);
        }
        let range = conversations.range((k, a)..=(k, b))?;
        if rev {
            for entry in range.rev().take(take) {
                out.push(entry?.0.value().1);
            }
        } else {
            for entry in range.take(take) {
                out.push(entry?.0.value().1);
            }
        }
        Ok(out)
    })?;
    Ok(HistoryPage {
        messages: load(messages, ids, &format!("conversation {key:?}"))?,
        older,
        newer,
    })
}

/// One page of a room's messages with ids in `lo..=hi`.
fn room_page(
    room_log: &impl RoomLog,
    messages: &impl MessageLog,
    room: RoomId,
    lo: MsgId,
    hi: MsgId,
    count: u32,
    cursor: Cursor,
) -> Result<HistoryPage, Fail> {
    let (ids, older, newer) = page(lo, hi, count, cursor, |a, b, rev, take| {
        let mut out = Vec::new();
        if a > b {
            return Ok::<_, Fail>(out);
        }
        let range = room_log.range((room, a)..=(room, b))?;
        if rev {
            for entry in range.rev().take(take) {
                out.push(entry?.0.value().1);
            }
        } else {
            for entry in range.take(take) {
                out.push(entry?.0.value().1);
            }
        }
        Ok(out)
    })?;
    Ok(HistoryPage {
        messages: load(messages, ids, &format!("room {room}"))?,
        older,
        newer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountRecord, Conversation, MessageRecord, To};

    fn temp_db() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatd.redb");
        (dir, path)
    }

    fn append(id: MsgId) -> StoreOp {
        StoreOp::AppendMessage {
            msg: MessageRecord {
                id,
                time_ms: 0,
                from: "a".into(),
                to: To::User("b".into()),
                text: "t".into(),
            },
            pending_for: vec!["b".into()],
        }
    }

    /// The guarded failure: an op fails part way through a batch after earlier ops of the same
    /// batch wrote. None of the batch may reach the file, or the server's memory (which treats the
    /// whole batch as failed) and the disk would disagree.
    #[test]
    fn a_failing_batch_writes_nothing() {
        let (_dir, path) = temp_db();
        let (mut store, _) = RedbStore::open(&path).unwrap();
        store.execute(&[append(1)]).unwrap();
        // Damage: an index entry for a message that is not in the log.
        let txn = store.db.begin_write().unwrap();
        txn.open_table(CONVERSATIONS)
            .unwrap()
            .insert(("x y", 50), ())
            .unwrap();
        txn.commit().unwrap();

        let account = AccountRecord {
            name: "Zed".into(),
            phc: "h".into(),
            created_ms: 0,
        };
        let err = store
            .execute(&[
                StoreOp::CreateAccount(account.clone()),
                append(2),
                StoreOp::ReadBacklog { user: "b".into() },
                StoreOp::History {
                    conv: Conversation::Pair("y".into(), "x".into()),
                    count: 5,
                    cursor: Cursor::Latest,
                },
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        // The store stays usable for a batch that does not touch the damage.
        store
            .execute(&[StoreOp::CreateAccount(account.clone())])
            .unwrap();
        drop(store);

        let (_, snap) = RedbStore::open(&path).unwrap();
        assert_eq!(snap.accounts, vec![account]);
        assert_eq!(snap.next_id, 2);
        assert_eq!(snap.pending_counts, vec![("b".to_owned(), 1)]);
    }

    #[test]
    fn damaged_records_are_reported_at_open() {
        let (_dir, path) = temp_db();
        drop(RedbStore::open(&path).unwrap());
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(ACCOUNTS)
            .unwrap()
            .insert("alice", [9u8, 9, 9].as_slice())
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        assert!(matches!(
            RedbStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));

        // An account filed under a key that is not its name's.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let rec = AccountRecord {
            name: "Bob".into(),
            phc: String::new(),
            created_ms: 0,
        };
        txn.open_table(ACCOUNTS)
            .unwrap()
            .insert("alice", codec::encode_account(&rec).as_slice())
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        assert!(matches!(
            RedbStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));

        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(ACCOUNTS).unwrap().remove("alice").unwrap();
        txn.open_table(FRIENDSHIPS)
            .unwrap()
            .insert(("a", "b"), 3)
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        assert!(matches!(
            RedbStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn another_schema_version_is_refused() {
        let (_dir, path) = temp_db();
        drop(RedbStore::open(&path).unwrap());
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        match RedbStore::open(&path) {
            Err(e @ StoreError::Schema { .. }) => {
                assert!(e.to_string().contains("schema version 3"), "{e}")
            }
            other => panic!("{:?}", other.map(|(_, s)| s)),
        }
    }

    /// A file from before rooms (layout 1: no room tables, version 1 in `meta`) opens with its
    /// accounts and messages, its layout is upgraded, and rooms work in it.
    #[test]
    fn a_version_1_file_is_upgraded() {
        let (_dir, path) = temp_db();
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_VERSION_KEY, 1)
                .unwrap();
            let rec = AccountRecord {
                name: "Alice".into(),
                phc: "h".into(),
                created_ms: 1,
            };
            txn.open_table(ACCOUNTS)
                .unwrap()
                .insert("alice", codec::encode_account(&rec).as_slice())
                .unwrap();
            txn.open_table(MESSAGES)
                .unwrap()
                .insert(
                    7,
                    codec::encode_message(&MessageRecord {
                        id: 7,
                        time_ms: 0,
                        from: "Alice".into(),
                        to: To::All,
                        text: "old".into(),
                    })
                    .as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        }
        let (mut store, snap) = RedbStore::open(&path).unwrap();
        assert_eq!(snap.accounts.len(), 1);
        assert_eq!((snap.next_id, snap.next_room_id), (8, 1));
        assert!(snap.rooms.is_empty());
        store
            .execute(&[StoreOp::PutRoom {
                id: 1,
                room: crate::store::RoomRecord {
                    name: "#r".into(),
                    created_ms: 0,
                    private: false,
                    topic: None,
                },
            }])
            .unwrap();
        let txn = store.db.begin_read().unwrap();
        let version = txn
            .open_table(META)
            .unwrap()
            .get(SCHEMA_VERSION_KEY)
            .unwrap()
            .map(|v| v.value());
        assert_eq!(version, Some(SCHEMA_VERSION));
        drop(txn);
        drop(store);
        assert_eq!(RedbStore::open(&path).unwrap().1.rooms.len(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error() {
        let (_dir, path) = temp_db();
        std::fs::write(
            &path,
            b"this is not a redb file, just some text\n".repeat(200),
        )
        .unwrap();
        let err = RedbStore::open(&path).map(|_| ()).unwrap_err();
        assert!(
            matches!(err, StoreError::Open { .. } | StoreError::Corrupt { .. }),
            "{err}"
        );
    }

    #[test]
    fn an_open_database_cannot_be_opened_twice() {
        let (_dir, path) = temp_db();
        let (_store, _) = RedbStore::open(&path).unwrap();
        assert!(matches!(
            RedbStore::open(&path),
            Err(StoreError::Open { .. })
        ));
    }

    #[test]
    fn every_error_names_the_database_file() {
        let (_dir, path) = temp_db();
        let (_store, _) = RedbStore::open(&path).unwrap();
        let shown = path.display().to_string();
        let twice = RedbStore::open(&path).map(|_| ()).unwrap_err();
        assert!(twice.to_string().contains(&shown), "{twice}");
        assert!(std::error::Error::source(&twice).is_some());
        drop(_store);

        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(ACCOUNTS)
            .unwrap()
            .insert("alice", [1u8].as_slice())
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        let damaged = RedbStore::open(&path).map(|_| ()).unwrap_err();
        assert!(damaged.to_string().contains(&shown), "{damaged}");
        assert!(
            damaged.to_string().contains("account record: truncated"),
            "{damaged}"
        );
    }

    #[test]
    fn next_id_follows_the_largest_stored_id() {
        let (_dir, path) = temp_db();
        let (mut store, snap) = RedbStore::open(&path).unwrap();
        assert_eq!(snap.next_id, 1);
        store.execute(&[append(3), append(41)]).unwrap();
        drop(store);
        assert_eq!(RedbStore::open(&path).unwrap().1.next_id, 42);
    }
}
