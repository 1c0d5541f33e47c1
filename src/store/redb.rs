//! The durable [`Store`]: one redb file holding accounts, friendships, blocks, device tokens,
//! profiles, retired names, rooms, the message log and its indexes (by conversation, by room, and
//! the offline backlog by account), and read markers.
//!
//! This file owns the table layout and the transactions. Tables are typed `const TableDefinition`s:
//!
//! | table               | key                    | value                               |
//! |---------------------|------------------------|-------------------------------------|
//! | `accounts`          | lowercase name         | encoded account record              |
//! | `message_blocks`    | the block's last id    | a block of consecutive message records (see `msg_log`) |
//! | `messages`          | message id             | encoded message record: layout 4's log, and a message below the largest stored id |
//! | `conversation_rows` | (conversation key as bytes, last id of the row) | the row's ids, packed (see `conv_index`) |
//! | `pending`           | (account key, id)      | `()`                                |
//! | `friendships`       | (a key, b key)         | a's view of b, one byte             |
//! | `blocks`            | (blocker, blocked)     | `()`                                |
//! | `blocked_by`        | (blocked, blocker)     | `()`, the same blocks, for deletion |
//! | `tokens`            | token id               | encoded token record                |
//! | `tokens_by_account` | (account key, id)      | `()`, for deletion                  |
//! | `profiles`          | account key            | encoded profile record              |
//! | `retired`           | account key            | encoded retired-name record         |
//! | `rooms`             | room number            | encoded room record                 |
//! | `room_members`      | (room number, account key) | encoded member record           |
//! | `room_bans`         | (room number, account key) | encoded ban record              |
//! | `room_invites`      | (room number, account key) | encoded invitation record       |
//! | `room_log`          | (room number, message id)  | the message's position in the room (1, 2, ...) |
//! | `read_markers`      | (account key, other account key) | last message id marked read |
//! | `meta`              | setting name           | u64: `schema_version`; `ids_reserved_below` (spec 6.2); `conversation_index_upto` (the index's watermark) |
//!
//! Layout versions: 1 had the first six tables; 2 added blocks, tokens, profiles and retired names;
//! 3 added the room tables, the read markers and room messages in the log; 4 keys the conversation
//! index by the conversation key's bytes instead of a string (`conversation_index`, replacing
//! `conversations`): redb checks a string key's UTF-8 at every comparison, which made a message's
//! index entry cost twice as much in a database of 10 million messages as in an empty one. A version
//! 1, 2 or 3 file is upgraded in place when opened (the new tables start empty, the conversation
//! index is copied over in commits of `UPGRADE_BATCH` entries, nothing else changes), and a file of
//! a later version is refused by a build that reads only earlier ones: version 1 would not know that
//! a retired name must stay taken, version 2 would not know room messages in the log, version 3
//! would not find the conversation index. 5 builds the conversation index in bulk
//! (`conversation_rows`, replacing `conversation_index`, and the watermark in `meta`): a message's
//! index entry was a B-tree insert of its own in every commit, as costly as the message's record;
//! now the entries of `INDEX_LAG` messages are written at once, one row per conversation (see
//! `conv_index`). A version 4 file is upgraded in place: its index packed into rows in commits of
//! `UPGRADE_BATCH` entries (a version 1 to 3 file has its index copied into version 4's first),
//! the watermark set to its last message. Version 4 would not find the conversation index. Layout 5
//! also writes new messages in blocks (`message_blocks`, see `msg_log`): one row holds the
//! records of several consecutive messages of a commit, up to `MESSAGE_BLOCK_BYTES`, so that a
//! commit of many messages is a few inserts rather than one per message. The per-id `messages`
//! table stays: an upgraded file's messages stay in it, read through the fallback, with no
//! conversion; version 4 would not find the messages in blocks.
//!
//! The index keys (conversation keys, account keys) are made by the parent module's `keys`, shared
//! with the in-memory store; the records are encoded by `codec`, which never trusts a length it
//! reads, so a damaged record is a [`StoreError::Corrupt`], never a panic or a huge allocation;
//! every reader of the message log goes through `msg_log::Log` (the blocks, then the per-id table).
//! Rooms are keyed by number, not by name: a deleted room's messages stay in `room_log` under its
//! number, which is never given out again, so a new room of the same name starts empty. A room's
//! message count and last id are the last `room_log` entry of its number, read at open.
//!
//! Every [`Store::write`] batch runs in one write transaction committed with
//! [`Durability::Immediate`] (fsync before `write` returns); an error anywhere in the batch drops
//! the transaction, so nothing of the batch is written. A [`Store::reader`] is a redb read
//! transaction: it sees the last commit before it was taken, runs beside later write transactions,
//! and never waits for them. The page cache is bounded by [`STORE_CACHE_BYTES`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Builder, Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, Value, WriteTransaction,
};

use super::codec;
use super::contain::contain;
use super::conv_index::{self, LogTable, Tail};
use super::keys::{conversation_key, key_of, message_conversation_keys, single_conversation_key};
use super::msg_log::{self, Log};
use super::page::page;
use super::{
    Conversation, Cursor, Damage, FriendState, HistoryPage, MessageRecord, MsgId, Profile, ReadOp,
    RoomId, RoomState, Snapshot, Store, StoreError, StoreOp, StoreReader, StoreReply, To, TokenId,
};
use crate::config::{INDEX_LAG, MESSAGE_BLOCK_BYTES, STORE_CACHE_BYTES};

const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// The message log by id, one message per entry: the messages of layout 4 files and those written
/// below the largest stored id (see `msg_log`).
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// The message log in blocks (see `msg_log`): the block's last id -> its records.
const MESSAGE_BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("message_blocks");
/// The conversation index, in rows (see `conv_index`): (conversation key as bytes, the row's last
/// id) -> the row's ids, packed. The key's first half is the conversation key (see `keys`) as
/// bytes: the same order as the string, compared without a UTF-8 check.
const CONV_ROWS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("conversation_rows");
/// The conversation index of layout 4, one entry per message and conversation, packed into
/// [`CONV_ROWS`] by the upgrade.
const CONVERSATIONS: TableDefinition<(&[u8], u64), ()> = TableDefinition::new("conversation_index");
/// The conversation index of layouts 1 to 3, copied into [`CONVERSATIONS`] by the upgrade.
const CONVERSATIONS_V3: TableDefinition<(&str, u64), ()> = TableDefinition::new("conversations");
const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("pending");
const FRIENDSHIPS: TableDefinition<(&str, &str), u8> = TableDefinition::new("friendships");
const ROOMS: TableDefinition<u64, &[u8]> = TableDefinition::new("rooms");
const ROOM_MEMBERS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("room_members");
const ROOM_BANS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("room_bans");
const ROOM_INVITES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("room_invites");
const ROOM_LOG: TableDefinition<(u64, u64), u64> = TableDefinition::new("room_log");
const READ_MARKERS: TableDefinition<(&str, &str), u64> = TableDefinition::new("read_markers");
const BLOCKS: TableDefinition<(&str, &str), ()> = TableDefinition::new("blocks");
const BLOCKED_BY: TableDefinition<(&str, &str), ()> = TableDefinition::new("blocked_by");
const TOKENS: TableDefinition<u64, &[u8]> = TableDefinition::new("tokens");
const TOKENS_BY_ACCOUNT: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("tokens_by_account");
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
const RETIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("retired");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` key of the table layout version.
pub(super) const SCHEMA_VERSION_KEY: &str = "schema_version";
/// `meta` key of the last [`StoreOp::ReserveIds`]: no message id below it is handed out again.
const IDS_RESERVED_KEY: &str = "ids_reserved_below";
/// `meta` key of the conversation index's watermark (the backup's check reads it too): every message with an id up to it is in
/// [`CONV_ROWS`]; the messages above it are indexed by the message log itself (`conv_index`).
pub(super) const WATERMARK_KEY: &str = "conversation_index_upto";
/// The table layout this code reads and writes. A file with another version is refused at open
/// rather than misread, except versions 1 to 4, which are upgraded (see the module
/// documentation).
pub(super) const SCHEMA_VERSION: u64 = 5;
/// The first layout, without blocks, tokens, profiles and retired names.
const SCHEMA_VERSION_1: u64 = 1;
/// The layout before rooms: no room tables, no read markers, no room messages in the log.
const SCHEMA_VERSION_2: u64 = 2;
/// The layout whose conversation index was keyed by strings.
const SCHEMA_VERSION_3: u64 = 3;
/// The layout whose conversation index had one entry per message and conversation.
const SCHEMA_VERSION_4: u64 = 4;
/// Conversation index entries copied (from layouts 1 to 3) or packed into rows (from layout 4) per
/// commit by the upgrade, so that the upgrade of a large database never holds one huge transaction
/// (an interrupted upgrade starts over: copying an entry twice writes the same key, packing the
/// same entries makes the same rows).
const UPGRADE_BATCH: usize = 100_000;

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
pub(super) enum Fail {
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

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Redb(e) => write!(f, "{e}"),
            Fail::Damage(d) => write!(f, "{d}"),
            Fail::Schema(v) => write!(f, "table layout version {v}"),
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
///
/// A failed write leaves the handle unusable (redb answers every later call on it with "previous
/// I/O error" until the file is reopened), so the store remembers it and [`Store::recover`]
/// reopens the file; meanwhile there is no handle, and reads report the database unavailable. A
/// reserve of free disk space ([`RedbStore::with_reserve`]) is checked before each write, so that
/// on a disk that fills up writes stop before redb meets the full disk in the middle of a commit.
pub struct RedbStore {
    /// `None` while reopening after a failed write.
    db: Option<Arc<Database>>,
    /// The database file, named in every error.
    path: Arc<Path>,
    /// Bytes that must stay free on the database's file system; 0: no check.
    reserve: u64,
    /// A write failed and the handle must be reopened before the next one.
    failed: bool,
    /// The messages past the conversation index's watermark (see `conv_index`). `None` after a
    /// failed write, which may have left it ahead of the file: read again before the next write.
    tail: Option<Box<Tail>>,
    /// Messages past the watermark that make the writer index them: [`INDEX_LAG`].
    lag: usize,
}

impl RedbStore {
    /// Open the database at `path`, creating the file and its tables if missing, and read the
    /// [`Snapshot`] the core starts from.
    ///
    /// An existing file is only opened, never initialised: an empty (0-byte) file is refused with
    /// [`StoreError::Empty`] rather than silently becoming an empty database, and a file that is
    /// not a redb database, or whose pages are damaged, is [`StoreError::Corrupt`] (also when redb
    /// panics on it, see `contain`). Opening an existing file with the current schema writes
    /// nothing (redb may still repair it after a crash), so a server can start on a full disk.
    pub fn open(path: &Path) -> Result<(RedbStore, Snapshot), StoreError> {
        let existing = match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.len() == 0 => {
                return Err(StoreError::Empty {
                    path: path.to_owned(),
                })
            }
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            // Anything else (no permission on the directory, say): redb reports it below.
            Err(_) => true,
        };
        let opened = contain(|| Self::open_inner(path, existing)).unwrap_or_else(|panic| {
            Err(Fail::Damage(Damage::new(format!(
                "redb failed while reading it ({panic})"
            ))))
        });
        opened.map_err(|f| match f {
            // redb's word for "the first bytes are not a redb header".
            Fail::Redb(redb::Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                StoreError::Corrupt {
                    path: path.to_owned(),
                    source: Box::new(Damage::new(e.to_string())),
                }
            }
            f => f.at(path, |path, source| StoreError::Open { path, source }),
        })
    }

    fn open_inner(path: &Path, existing: bool) -> Result<(RedbStore, Snapshot), Fail> {
        let mut builder = Builder::new();
        builder.set_cache_size(STORE_CACHE_BYTES);
        let db = if existing {
            builder.open(path)?
        } else {
            builder.create(path)?
        };
        let stored = {
            let txn = db.begin_read()?;
            let version = match txn.open_table(META) {
                Ok(meta) => meta.get(SCHEMA_VERSION_KEY)?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            version
        };
        match stored {
            Some(SCHEMA_VERSION) => {}
            Some(
                old @ (SCHEMA_VERSION_1 | SCHEMA_VERSION_2 | SCHEMA_VERSION_3 | SCHEMA_VERSION_4),
            ) => {
                // The conversation index is copied first, in commits of its own: from layouts 1 to
                // 3 into layout 4's, then from that into rows; then the tables added since are
                // created empty by `Tables::open`, the old indexes are dropped, and the watermark
                // (the last message: every one is in the rows now) and the new version recorded,
                // in one commit.
                log::info!(
                    "database {}: upgrading the table layout from version {old} to {SCHEMA_VERSION}",
                    path.display()
                );
                if old < SCHEMA_VERSION_4 {
                    let copied = copy_conversation_index(&db, UPGRADE_BATCH)?;
                    log::info!(
                        "database {}: {copied} conversation index entries copied",
                        path.display()
                    );
                }
                let (entries, rows) = pack_conversation_index(&db, UPGRADE_BATCH)?;
                log::info!(
                    "database {}: {entries} conversation index entries packed into {rows} rows",
                    path.display()
                );
                let txn = db.begin_write()?;
                Tables::open(&txn, Box::default())?.create_all()?;
                txn.delete_table(CONVERSATIONS_V3)?;
                txn.delete_table(CONVERSATIONS)?;
                let last = Log {
                    blocks: &txn.open_table(MESSAGE_BLOCKS)?,
                    single: &txn.open_table(MESSAGES)?,
                    open: &[],
                }
                .last_id()?;
                let mut meta = txn.open_table(META)?;
                meta.insert(WATERMARK_KEY, last)?;
                meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
                drop(meta);
                txn.commit()?;
            }
            Some(other) => return Err(Fail::Schema(other)),
            None => {
                // A new database: its tables and its schema version, in one commit.
                let txn = db.begin_write()?;
                Tables::open(&txn, Box::default())?.create_all()?;
                txn.open_table(META)?
                    .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
                txn.commit()?;
            }
        }
        let snapshot = {
            let txn = db.begin_read()?;
            let mut snap = snapshot(
                &txn.open_table(ACCOUNTS)?,
                &txn.open_table(FRIENDSHIPS)?,
                &txn.open_table(PENDING)?,
                &Log {
                    blocks: &txn.open_table(MESSAGE_BLOCKS)?,
                    single: &txn.open_table(MESSAGES)?,
                    open: &[],
                },
                &AccountTables {
                    tokens: txn.open_table(TOKENS)?,
                    blocks: txn.open_table(BLOCKS)?,
                    profiles: txn.open_table(PROFILES)?,
                    retired: txn.open_table(RETIRED)?,
                },
            )?;
            room_snapshot(&txn, &mut snap)?;
            if let Some(below) = txn.open_table(META)?.get(IDS_RESERVED_KEY)? {
                snap.next_id = snap.next_id.max(below.value());
            }
            snap
        };
        let tail = Self::tail_of(&db)?;
        let store = RedbStore {
            db: Some(Arc::new(db)),
            path: path.into(),
            reserve: 0,
            failed: false,
            tail: Some(Box::new(tail)),
            lag: INDEX_LAG,
        };
        Ok((store, snapshot))
    }

    /// The writer's list of the messages past the conversation index's watermark, read from the
    /// database (see `conv_index`).
    fn tail_of(db: &Database) -> Result<Tail, Fail> {
        let txn = db.begin_read()?;
        let watermark = watermark(&txn.open_table(META)?)?;
        let log = Log {
            blocks: &txn.open_table(MESSAGE_BLOCKS)?,
            single: &txn.open_table(MESSAGES)?,
            open: &[],
        };
        Tail::rebuild(&log, watermark)
    }

    /// Moves every message of the blocks of the database at `path` (not open) into the per-id
    /// table, as a layout 4 file has its log, leaving the blocks' table empty: for tests and
    /// benchmarks of the fallback.
    #[cfg(any(test, feature = "testing"))]
    pub fn unblock(path: &Path) -> Result<(), redb::Error> {
        let db = Database::open(path)?;
        let txn = db.begin_write()?;
        {
            let blocks = txn.open_table(MESSAGE_BLOCKS)?;
            let mut single = txn.open_table(MESSAGES)?;
            for entry in blocks.iter()? {
                let (_, block) = entry?;
                for e in msg_log::entries(block.value()) {
                    let (id, record) = e.map_err(|d| redb::Error::Corrupted(d.to_string()))?;
                    single.insert(id, record)?;
                }
            }
        }
        txn.delete_table(MESSAGE_BLOCKS)?;
        txn.open_table(MESSAGE_BLOCKS)?;
        txn.commit()?;
        Ok(())
    }

    /// This store indexing its conversations every `lag` messages instead of every
    /// [`INDEX_LAG`]: for tests of the index's edges, which a small lag reaches in a few messages.
    pub fn with_index_lag(mut self, lag: usize) -> RedbStore {
        self.lag = lag.max(1);
        self
    }

    /// This store with `bytes` of free disk space as a reserve: while the database's file system
    /// has less free (for the server's user), [`Store::ready`] and every write fail with
    /// [`StoreError::LowSpace`], without touching the file.
    pub fn with_reserve(mut self, bytes: u64) -> RedbStore {
        self.reserve = bytes;
        self
    }

    /// Bytes free for the server on the database's file system.
    fn free_bytes(&self) -> std::io::Result<u64> {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let st = rustix::fs::statvfs(dir)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    fn db(&self) -> Result<&Arc<Database>, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::Read {
            path: self.path.to_path_buf(),
            source: Box::new(redb::Error::DatabaseClosed),
        })
    }

    /// Run `ops` in an open write transaction, indexing the conversations whenever the list of
    /// messages past the watermark reaches `lag`. Returns the replies, whether anything was
    /// written, and the list.
    fn apply_all(
        txn: &WriteTransaction,
        ops: &[StoreOp],
        tail: Box<Tail>,
        lag: usize,
    ) -> Result<(Vec<StoreReply>, bool, Box<Tail>), Fail> {
        let mut tables = Tables::open(txn, tail)?;
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            replies.push(tables.apply(op)?);
            if tables.tail.len() >= lag {
                let watermark = tables.tail.flush(tables.rows.open()?)?;
                tables.meta.open()?.insert(WATERMARK_KEY, watermark)?;
            }
        }
        tables.close_block()?;
        Ok((replies, tables.dirty, tables.tail))
    }

    fn write_inner(
        db: &Database,
        ops: &[StoreOp],
        tail: &mut Option<Box<Tail>>,
        lag: usize,
    ) -> Result<Vec<StoreReply>, Fail> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let list = match tail.take() {
            Some(list) => list,
            None => Box::new(Self::tail_of(db)?),
        };
        let mut txn = db.begin_write()?;
        // Immediate is redb's default; it is set anyway because the protocol's durability promise
        // (committed before OK) rests on it.
        txn.set_durability(Durability::Immediate)?;
        // On error the transaction is dropped here, uncommitted: the batch leaves no trace, and
        // the list stays taken (it may hold the batch's messages), to be read again.
        let (replies, dirty, list) = Self::apply_all(&txn, ops, list, lag)?;
        if dirty {
            txn.commit()?;
            *tail = Some(list);
        } else {
            // A batch that changed nothing (empty backlogs taken, say) has nothing to make
            // durable; skipping the commit saves an fsync.
            txn.abort()?;
            *tail = Some(list);
        }
        Ok(replies)
    }
}

impl Store for RedbStore {
    fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
        self.ready()?;
        self.recover()?;
        let db = self.db()?.clone();
        let lag = self.lag;
        let tail = &mut self.tail;
        let written = contain(|| Self::write_inner(&db, ops, tail, lag)).unwrap_or_else(|panic| {
            Err(Fail::Damage(Damage::new(format!(
                "redb failed while writing ({panic})"
            ))))
        });
        if written.is_err() {
            self.failed = true;
        }
        written.map_err(|f| {
            f.at(&self.path, |path, source| StoreError::Write {
                path,
                source,
            })
        })
    }

    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
        let db = self.db()?;
        match db.begin_read() {
            Ok(txn) => Ok(Box::new(RedbReader {
                txn,
                _db: db.clone(),
                path: self.path.clone(),
            })),
            Err(e) => Err(StoreError::Read {
                path: self.path.to_path_buf(),
                source: Box::new(e.into()),
            }),
        }
    }

    fn ready(&self) -> Result<(), StoreError> {
        if self.reserve == 0 {
            return Ok(());
        }
        match self.free_bytes() {
            Ok(free) if free < self.reserve => Err(StoreError::LowSpace {
                path: self.path.to_path_buf(),
                free,
                reserve: self.reserve,
            }),
            // A file system that cannot say how full it is: writes are tried, and fail if they
            // must.
            _ => Ok(()),
        }
    }

    fn size(&self) -> Option<u64> {
        std::fs::metadata(&*self.path).ok().map(|m| m.len())
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        if !self.failed {
            return Ok(());
        }
        // The old handle goes first: the file stays locked while any handle is open (a reader
        // still holding one makes this fail for now; it is tried again later).
        self.db = None;
        let path = self.path.clone();
        let reopened = contain(|| {
            let mut builder = Builder::new();
            builder.set_cache_size(STORE_CACHE_BYTES);
            builder.open(&*path).map_err(Fail::from)
        })
        .unwrap_or_else(|panic| {
            Err(Fail::Damage(Damage::new(format!(
                "redb failed while reopening it ({panic})"
            ))))
        });
        let db =
            reopened.map_err(|f| f.at(&path, |path, source| StoreError::Open { path, source }))?;
        log::info!("database {} reopened", path.display());
        self.db = Some(Arc::new(db));
        self.failed = false;
        self.tail = None;
        Ok(())
    }
}

/// Copies the conversation index of layouts 1 to 3 into the one keyed by bytes, `batch` entries
/// per commit ([`UPGRADE_BATCH`]), and returns how many entries it copied. The old table stays until the
/// commit that records the new layout drops it.
fn copy_conversation_index(db: &Database, batch: usize) -> Result<u64, Fail> {
    let mut after: Option<(String, u64)> = None;
    let mut copied = 0u64;
    loop {
        let start = after.take();
        let txn = db.begin_write()?;
        let n = {
            let old = txn.open_table(CONVERSATIONS_V3)?;
            let mut new = txn.open_table(CONVERSATIONS)?;
            let entries = match &start {
                None => old.range::<(&str, u64)>(..)?,
                Some((conv, id)) => old.range::<(&str, u64)>((
                    Bound::Excluded((conv.as_str(), *id)),
                    Bound::Unbounded,
                ))?,
            };
            let mut n = 0;
            for entry in entries.take(batch) {
                let (key, _) = entry?;
                let (conv, id) = key.value();
                new.insert((conv.as_bytes(), id), ())?;
                after = Some((conv.to_owned(), id));
                n += 1;
            }
            n
        };
        txn.commit()?;
        copied += n as u64;
        if n < batch {
            return Ok(copied);
        }
    }
}

/// Packs the conversation index of layout 4 (one entry per message and conversation) into rows
/// of [`CONV_ROWS`], `batch` entries per commit ([`UPGRADE_BATCH`]): consecutive ids of one
/// conversation make one row, of at most [`INDEX_LAG`] ids, and a commit ends its last row. Returns
/// how many entries and rows it wrote. The old table stays until the commit that records the new
/// layout drops it; an interrupted upgrade starts over and writes the same rows under the same
/// keys.
fn pack_conversation_index(db: &Database, batch: usize) -> Result<(u64, u64), Fail> {
    let mut after: Option<(Vec<u8>, u64)> = None;
    let (mut entries, mut rows) = (0u64, 0u64);
    let mut ids: Vec<MsgId> = Vec::new();
    let mut conv: Vec<u8> = Vec::new();
    let mut value = Vec::new();
    loop {
        let start = after.take();
        let txn = db.begin_write()?;
        let n = {
            let old = txn.open_table(CONVERSATIONS)?;
            let mut new = txn.open_table(CONV_ROWS)?;
            let range = match &start {
                None => old.range::<(&[u8], u64)>(..)?,
                Some((c, id)) => old.range::<(&[u8], u64)>((
                    Bound::Excluded((c.as_slice(), *id)),
                    Bound::Unbounded,
                ))?,
            };
            let mut put = |conv: &[u8], ids: &mut Vec<MsgId>| -> Result<(), Fail> {
                if let Some(&last) = ids.last() {
                    codec::encode_id_row(ids, &mut value);
                    new.insert((conv, last), value.as_slice())?;
                    rows += 1;
                }
                ids.clear();
                Ok(())
            };
            let mut n = 0;
            for entry in range.take(batch) {
                let (key, _) = entry?;
                let (c, id) = key.value();
                if c != conv.as_slice() || ids.len() >= INDEX_LAG {
                    put(&conv, &mut ids)?;
                    conv.clear();
                    conv.extend_from_slice(c);
                }
                ids.push(id);
                n += 1;
            }
            if let Some(&last) = ids.last() {
                after = Some((conv.clone(), last));
            }
            put(&conv, &mut ids)?;
            n
        };
        txn.commit()?;
        entries += n as u64;
        if n < batch {
            return Ok((entries, rows));
        }
    }
}

/// Every table by name, for the backup (a copy of each) and the check (each record and index).
pub(super) mod tables {
    use super::*;

    /// The names of the layout's tables.
    pub(crate) const NAMES: &[&str] = &[
        "accounts",
        "messages",
        "message_blocks",
        "conversation_rows",
        "pending",
        "friendships",
        "rooms",
        "room_members",
        "room_bans",
        "room_invites",
        "room_log",
        "read_markers",
        "blocks",
        "blocked_by",
        "tokens",
        "tokens_by_account",
        "profiles",
        "retired",
        "meta",
    ];

    /// Copies every entry of `def` from `from` into `to`.
    fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
        from: &ReadTransaction,
        to: &WriteTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<(), redb::Error> {
        let src = from.open_table(def)?;
        let mut dst = to.open_table(def)?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
        Ok(())
    }

    /// Copies every table of the layout.
    pub(crate) fn copy_all(
        from: &ReadTransaction,
        to: &WriteTransaction,
    ) -> Result<(), redb::Error> {
        copy(from, to, ACCOUNTS)?;
        copy(from, to, MESSAGES)?;
        copy(from, to, MESSAGE_BLOCKS)?;
        copy(from, to, CONV_ROWS)?;
        copy(from, to, PENDING)?;
        copy(from, to, FRIENDSHIPS)?;
        copy(from, to, ROOMS)?;
        copy(from, to, ROOM_MEMBERS)?;
        copy(from, to, ROOM_BANS)?;
        copy(from, to, ROOM_INVITES)?;
        copy(from, to, ROOM_LOG)?;
        copy(from, to, READ_MARKERS)?;
        copy(from, to, BLOCKS)?;
        copy(from, to, BLOCKED_BY)?;
        copy(from, to, TOKENS)?;
        copy(from, to, TOKENS_BY_ACCOUNT)?;
        copy(from, to, PROFILES)?;
        copy(from, to, RETIRED)?;
        copy(from, to, META)?;
        Ok(())
    }

    /// The largest message id stored, or 0.
    pub(crate) fn last_id(txn: &ReadTransaction) -> Result<u64, String> {
        let log = Log {
            blocks: &txn.open_table(MESSAGE_BLOCKS).map_err(|e| e.to_string())?,
            single: &txn.open_table(MESSAGES).map_err(|e| e.to_string())?,
            open: &[],
        };
        log.last_id().map_err(|e| e.to_string())
    }

    /// How many messages the log holds.
    pub(crate) fn message_count(txn: &ReadTransaction) -> Result<u64, String> {
        let read = Read::open(txn).map_err(|e| e.to_string())?;
        let mut n = 0u64;
        let mut damage = None;
        each_message(&read, |_, _| n += 1, |_, d| damage = Some(d.to_string()))?;
        match damage {
            Some(d) => Err(d),
            None => Ok(n),
        }
    }

    /// Calls `f` with every message record; a block that does not parse goes to `damaged`.
    pub(crate) fn each_message(
        read: &Read,
        f: impl FnMut(u64, &[u8]),
        damaged: impl FnMut(u64, super::Damage),
    ) -> Result<(), String> {
        Log {
            blocks: &read.message_blocks,
            single: &read.messages,
            open: &[],
        }
        .each(f, damaged)
        .map_err(|e| e.to_string())
    }

    /// The tables the check reads, opened in one read transaction.
    pub(crate) struct Read {
        pub(crate) accounts: redb::ReadOnlyTable<&'static str, &'static [u8]>,
        pub(crate) messages: redb::ReadOnlyTable<u64, &'static [u8]>,
        pub(crate) message_blocks: redb::ReadOnlyTable<u64, &'static [u8]>,
        pub(crate) rows: redb::ReadOnlyTable<(&'static [u8], u64), &'static [u8]>,
        pub(crate) meta: redb::ReadOnlyTable<&'static str, u64>,
        pub(crate) pending: redb::ReadOnlyTable<(&'static str, u64), ()>,
        pub(crate) friendships: redb::ReadOnlyTable<(&'static str, &'static str), u8>,
        pub(crate) blocks: redb::ReadOnlyTable<(&'static str, &'static str), ()>,
        pub(crate) blocked_by: redb::ReadOnlyTable<(&'static str, &'static str), ()>,
        pub(crate) tokens: redb::ReadOnlyTable<u64, &'static [u8]>,
        pub(crate) tokens_by_account: redb::ReadOnlyTable<(&'static str, u64), ()>,
        pub(crate) profiles: redb::ReadOnlyTable<&'static str, &'static [u8]>,
        pub(crate) retired: redb::ReadOnlyTable<&'static str, &'static [u8]>,
        pub(crate) rooms: redb::ReadOnlyTable<u64, &'static [u8]>,
        pub(crate) room_members: redb::ReadOnlyTable<(u64, &'static str), &'static [u8]>,
        pub(crate) room_bans: redb::ReadOnlyTable<(u64, &'static str), &'static [u8]>,
        pub(crate) room_invites: redb::ReadOnlyTable<(u64, &'static str), &'static [u8]>,
        pub(crate) room_log: redb::ReadOnlyTable<(u64, u64), u64>,
        pub(crate) read_markers: redb::ReadOnlyTable<(&'static str, &'static str), u64>,
    }

    impl Read {
        pub(crate) fn open(txn: &ReadTransaction) -> Result<Read, redb::Error> {
            Ok(Read {
                accounts: txn.open_table(ACCOUNTS)?,
                messages: txn.open_table(MESSAGES)?,
                message_blocks: txn.open_table(MESSAGE_BLOCKS)?,
                rows: txn.open_table(CONV_ROWS)?,
                meta: txn.open_table(META)?,
                pending: txn.open_table(PENDING)?,
                friendships: txn.open_table(FRIENDSHIPS)?,
                blocks: txn.open_table(BLOCKS)?,
                blocked_by: txn.open_table(BLOCKED_BY)?,
                tokens: txn.open_table(TOKENS)?,
                tokens_by_account: txn.open_table(TOKENS_BY_ACCOUNT)?,
                profiles: txn.open_table(PROFILES)?,
                retired: txn.open_table(RETIRED)?,
                rooms: txn.open_table(ROOMS)?,
                room_members: txn.open_table(ROOM_MEMBERS)?,
                room_bans: txn.open_table(ROOM_BANS)?,
                room_invites: txn.open_table(ROOM_INVITES)?,
                room_log: txn.open_table(ROOM_LOG)?,
                read_markers: txn.open_table(READ_MARKERS)?,
            })
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
        let blocks = self.txn.open_table(MESSAGE_BLOCKS)?;
        let single = self.txn.open_table(MESSAGES)?;
        let messages = Log {
            blocks: &blocks,
            single: &single,
            open: &[],
        };
        match op {
            ReadOp::History {
                conv,
                count,
                cursor,
            } => {
                let rows = self.txn.open_table(CONV_ROWS)?;
                let watermark = watermark(&self.txn.open_table(META)?)?;
                let room_log = self.txn.open_table(ROOM_LOG)?;
                let page = any_history(
                    &rows, watermark, &room_log, &messages, conv, *count, *cursor,
                )?;
                Ok(StoreReply::History(page))
            }
            ReadOp::Backlog { user } => {
                let pending = self.txn.open_table(PENDING)?;
                Ok(StoreReply::Backlog(backlog(&pending, &messages, user)?))
            }
            ReadOp::Messages { ids } => Ok(StoreReply::Messages(read_messages(&messages, ids)?)),
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
            ReadOp::Backup { to } => unreachable!("answered by RedbReader::read: {to:?}"),
        }
    }
}

impl StoreReader for RedbReader {
    fn read(&self, op: &ReadOp) -> Result<StoreReply, StoreError> {
        if let ReadOp::Backup { to } = op {
            return super::backup::copy(&self.txn, to, &self.path).map(StoreReply::Backup);
        }
        let read = contain(|| self.read_inner(op)).unwrap_or_else(|panic| {
            Err(Fail::Damage(Damage::new(format!(
                "redb failed while reading ({panic})"
            ))))
        });
        read.map_err(|f| f.at(&self.path, |path, source| StoreError::Read { path, source }))
    }
}

/// A table of a write transaction, opened when first used. Each table a transaction opens costs
/// its opening, its closing and a look-up at the commit (about 7,500 instructions in all), and a
/// batch of direct messages uses 2 to 4 of the 19 tables.
struct Lazy<'txn, K: Key + 'static, V: Value + 'static> {
    txn: &'txn WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: Option<Table<'txn, K, V>>,
}

impl<'txn, K: Key + 'static, V: Value + 'static> Lazy<'txn, K, V> {
    fn new(txn: &'txn WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        Lazy {
            txn,
            def,
            table: None,
        }
    }

    /// The table, opened (and created, if the file has none) on the first call.
    fn open(&mut self) -> Result<&mut Table<'txn, K, V>, Fail> {
        let table = match self.table.take() {
            Some(table) => table,
            None => self.txn.open_table(self.def)?,
        };
        Ok(self.table.insert(table))
    }
}

/// A table of the message log in a write transaction.
type LogWrite<'txn> = Table<'txn, u64, &'static [u8]>;

/// Every table of a write transaction, each opened once, when first used (redb allows one open
/// handle per table): the message log's two at once, the others through [`Lazy`].
struct Tables<'txn> {
    accounts: Lazy<'txn, &'static str, &'static [u8]>,
    messages: Table<'txn, u64, &'static [u8]>,
    message_blocks: Table<'txn, u64, &'static [u8]>,
    rows: Lazy<'txn, (&'static [u8], u64), &'static [u8]>,
    pending: Lazy<'txn, (&'static str, u64), ()>,
    friendships: Lazy<'txn, (&'static str, &'static str), u8>,
    rooms: Lazy<'txn, u64, &'static [u8]>,
    room_members: Lazy<'txn, (u64, &'static str), &'static [u8]>,
    room_bans: Lazy<'txn, (u64, &'static str), &'static [u8]>,
    room_invites: Lazy<'txn, (u64, &'static str), &'static [u8]>,
    room_log: Lazy<'txn, (u64, u64), u64>,
    read_markers: Lazy<'txn, (&'static str, &'static str), u64>,
    blocks: Lazy<'txn, (&'static str, &'static str), ()>,
    blocked_by: Lazy<'txn, (&'static str, &'static str), ()>,
    tokens: Lazy<'txn, u64, &'static [u8]>,
    tokens_by_account: Lazy<'txn, (&'static str, u64), ()>,
    profiles: Lazy<'txn, &'static str, &'static [u8]>,
    retired: Lazy<'txn, &'static str, &'static [u8]>,
    meta: Lazy<'txn, &'static str, u64>,
    /// Whether any op of the batch wrote something.
    dirty: bool,
    /// A message record being encoded, and its conversation key: buffers the batch reuses, so
    /// that appending a message allocates nothing of its own on this thread.
    record: Vec<u8>,
    conversation: String,
    /// The messages past the conversation index's watermark.
    tail: Box<Tail>,
    /// The block of the log being filled (see `msg_log`), inserted when it would grow past
    /// [`MESSAGE_BLOCK_BYTES`] and at the end of the batch; the largest id stored, which is the
    /// open block's last id while it holds anything (only ids above it go into the block).
    open: Vec<u8>,
    top: MsgId,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction, tail: Box<Tail>) -> Result<Self, Fail> {
        let messages = txn.open_table(MESSAGES)?;
        let message_blocks = txn.open_table(MESSAGE_BLOCKS)?;
        let top = Log {
            blocks: &message_blocks,
            single: &messages,
            open: &[],
        }
        .last_id()?;
        Ok(Tables {
            accounts: Lazy::new(txn, ACCOUNTS),
            messages,
            message_blocks,
            rows: Lazy::new(txn, CONV_ROWS),
            pending: Lazy::new(txn, PENDING),
            friendships: Lazy::new(txn, FRIENDSHIPS),
            rooms: Lazy::new(txn, ROOMS),
            room_members: Lazy::new(txn, ROOM_MEMBERS),
            room_bans: Lazy::new(txn, ROOM_BANS),
            room_invites: Lazy::new(txn, ROOM_INVITES),
            room_log: Lazy::new(txn, ROOM_LOG),
            read_markers: Lazy::new(txn, READ_MARKERS),
            blocks: Lazy::new(txn, BLOCKS),
            blocked_by: Lazy::new(txn, BLOCKED_BY),
            tokens: Lazy::new(txn, TOKENS),
            tokens_by_account: Lazy::new(txn, TOKENS_BY_ACCOUNT),
            profiles: Lazy::new(txn, PROFILES),
            retired: Lazy::new(txn, RETIRED),
            meta: Lazy::new(txn, META),
            dirty: false,
            record: Vec::new(),
            conversation: String::new(),
            tail,
            open: Vec::new(),
            top,
        })
    }

    /// Opens every table, creating those the file does not have yet (a new file, an upgrade).
    fn create_all(&mut self) -> Result<(), Fail> {
        self.accounts.open()?;
        self.rows.open()?;
        self.pending.open()?;
        self.friendships.open()?;
        self.rooms.open()?;
        self.room_members.open()?;
        self.room_bans.open()?;
        self.room_invites.open()?;
        self.room_log.open()?;
        self.read_markers.open()?;
        self.blocks.open()?;
        self.blocked_by.open()?;
        self.tokens.open()?;
        self.tokens_by_account.open()?;
        self.profiles.open()?;
        self.retired.open()?;
        self.meta.open()?;
        Ok(())
    }

    /// The message log as this transaction has it, the block being filled included.
    fn log(&self) -> Log<'_, LogWrite<'txn>, LogWrite<'txn>> {
        Log {
            blocks: &self.message_blocks,
            single: &self.messages,
            open: &self.open,
        }
    }

    /// Adds the record in `record` to the log as message `id`: to the block being filled when
    /// `id` is above every stored id, else to the per-id table, unless it is stored already.
    fn log_append(&mut self, id: MsgId) -> Result<(), Fail> {
        if id > self.top {
            if !self.open.is_empty()
                && self.open.len() + msg_log::HEADER + self.record.len() > MESSAGE_BLOCK_BYTES
            {
                self.close_block()?;
            }
            msg_log::push(&mut self.open, id, &self.record);
            self.top = id;
        } else if !self.log().contains(id)? {
            self.messages.insert(id, self.record.as_slice())?;
        }
        Ok(())
    }

    /// Inserts the block being filled, if it holds anything.
    fn close_block(&mut self) -> Result<(), Fail> {
        if !self.open.is_empty() {
            self.message_blocks.insert(self.top, self.open.as_slice())?;
            self.open.clear();
        }
        Ok(())
    }

    /// Indexes message `msg` under the conversation `conv`: in the writer's list when it is past
    /// the watermark, else in the rows at once.
    fn index(&mut self, conv: &[u8], id: MsgId) -> Result<(), Fail> {
        if self.tail.takes(id) {
            self.tail.entry(conv, id);
            Ok(())
        } else {
            conv_index::insert_one(self.rows.open()?, conv, id)
        }
    }

    /// Deletes one token and its index entry; nothing if there is no such token.
    fn delete_token(&mut self, id: TokenId) -> Result<(), Fail> {
        let user = match self.tokens.open()?.remove(id)? {
            Some(bytes) => codec::decode_token(id, bytes.value())?.user,
            None => return Ok(()),
        };
        self.tokens_by_account.open()?.remove((user.as_str(), id))?;
        self.dirty = true;
        Ok(())
    }

    /// Changes an existing account's profile; nothing when there is no such account.
    fn update_profile(
        &mut self,
        user: &str,
        change: impl FnOnce(&mut Profile),
    ) -> Result<(), Fail> {
        if self.accounts.open()?.get(user)?.is_none() {
            return Ok(());
        }
        let mut profile = match self.profiles.open()?.get(user)? {
            Some(bytes) => codec::decode_profile(bytes.value())?,
            None => Profile::default(),
        };
        change(&mut profile);
        self.profiles
            .open()?
            .insert(user, codec::encode_profile(&profile).as_slice())?;
        self.dirty = true;
        Ok(())
    }

    /// The second keys of every entry `(user, *)` of a table keyed by pairs of names.
    fn partners(
        table: &Table<'txn, (&'static str, &'static str), impl redb::Value + 'static>,
        user: &str,
    ) -> Result<Vec<String>, Fail> {
        let mut found = Vec::new();
        // Every key (user, b) sorts between (user, "") and the first key of the next user; names
        // hold no byte that sorts below "", so the range starting at (user, "") misses nothing.
        for entry in table.range((user, "")..)? {
            let (key, _) = entry?;
            let (a, b) = key.value();
            if a != user {
                break;
            }
            found.push(b.to_owned());
        }
        Ok(found)
    }

    fn delete_account(&mut self, user: &str, deleted_ms: i64) -> Result<(), Fail> {
        let record = match self.accounts.open()?.remove(user)? {
            Some(bytes) => Some(codec::decode_account(bytes.value())?),
            None => None,
        };
        let mut ids = Vec::new();
        for entry in self
            .tokens_by_account
            .open()?
            .range((user, 0u64)..=(user, u64::MAX))?
        {
            ids.push(entry?.0.value().1);
        }
        for id in ids {
            self.tokens.open()?.remove(id)?;
            self.tokens_by_account.open()?.remove((user, id))?;
        }
        for other in Self::partners(self.friendships.open()?, user)? {
            self.friendships.open()?.remove((user, other.as_str()))?;
            self.friendships.open()?.remove((other.as_str(), user))?;
        }
        for blocked in Self::partners(self.blocks.open()?, user)? {
            self.blocks.open()?.remove((user, blocked.as_str()))?;
            self.blocked_by.open()?.remove((blocked.as_str(), user))?;
        }
        for blocker in Self::partners(self.blocked_by.open()?, user)? {
            self.blocked_by.open()?.remove((user, blocker.as_str()))?;
            self.blocks.open()?.remove((blocker.as_str(), user))?;
        }
        let mut pending = Vec::new();
        for entry in self
            .pending
            .open()?
            .range((user, 0u64)..=(user, u64::MAX))?
        {
            pending.push(entry?.0.value().1);
        }
        for id in pending {
            self.pending.open()?.remove((user, id))?;
        }
        self.profiles.open()?.remove(user)?;
        // Its memberships, invitations and the bans naming it: the room tables are keyed by room
        // first, so they are scanned (an account deletion is rare).
        for table in [
            self.room_members.open()?,
            self.room_bans.open()?,
            self.room_invites.open()?,
        ] {
            let mut rooms = Vec::new();
            for entry in table.iter()? {
                let (key, _) = entry?;
                let (room, u) = key.value();
                if u == user {
                    rooms.push(room);
                }
            }
            for room in rooms {
                table.remove((room, user))?;
            }
        }
        let mut others = Vec::new();
        for entry in self.read_markers.open()?.range((user, "")..)? {
            let (key, _) = entry?;
            let (u, other) = key.value();
            if u != user {
                break;
            }
            others.push(other.to_owned());
        }
        for other in others {
            self.read_markers.open()?.remove((user, other.as_str()))?;
        }
        if let Some(rec) = record {
            let retired = super::RetiredName {
                name: rec.name,
                deleted_ms,
            };
            self.retired
                .open()?
                .insert(user, codec::encode_retired(&retired).as_slice())?;
        }
        self.dirty = true;
        Ok(())
    }

    fn apply(&mut self, op: &StoreOp) -> Result<StoreReply, Fail> {
        match op {
            StoreOp::CreateAccount(rec) => {
                self.accounts.open()?.insert(
                    key_of(&rec.name).as_str(),
                    codec::encode_account_row(rec).as_slice(),
                )?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::AppendMessage { msg, pending_for } => {
                codec::encode_message_into(msg, &mut self.record);
                self.log_append(msg.id)?;
                if let (To::User(to), true) = (&msg.to, self.tail.takes(msg.id)) {
                    // Its key is made when the list is written out.
                    self.tail.pair_entry(&msg.from, to, msg.id);
                } else if single_conversation_key(msg, &mut self.conversation) {
                    let conv = std::mem::take(&mut self.conversation);
                    let indexed = self.index(conv.as_bytes(), msg.id);
                    self.conversation = conv;
                    indexed?;
                } else {
                    for conv in message_conversation_keys(msg) {
                        self.index(conv.as_bytes(), msg.id)?;
                    }
                }
                if self.tail.takes(msg.id) {
                    self.tail.message(msg.id);
                }
                for user in pending_for {
                    self.pending.open()?.insert((user.as_str(), msg.id), ())?;
                }
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::AddPending { user, id } => {
                self.pending.open()?.insert((user.as_str(), *id), ())?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::ClearBacklog { user, upto } => {
                let mut ids = Vec::new();
                for entry in self
                    .pending
                    .open()?
                    .range((user.as_str(), 0u64)..=(user.as_str(), *upto))?
                {
                    ids.push(entry?.0.value().1);
                }
                for id in ids {
                    self.pending.open()?.remove((user.as_str(), id))?;
                    self.dirty = true;
                }
                Ok(StoreReply::Done)
            }
            StoreOp::SetFriendship { a, b, state } => {
                match state {
                    Some(s) => {
                        self.friendships
                            .open()?
                            .insert((a.as_str(), b.as_str()), state_byte(*s))?;
                        self.friendships
                            .open()?
                            .insert((b.as_str(), a.as_str()), state_byte(s.mirror()))?;
                    }
                    None => {
                        self.friendships.open()?.remove((a.as_str(), b.as_str()))?;
                        self.friendships.open()?.remove((b.as_str(), a.as_str()))?;
                    }
                }
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::AppendRoomMessage { msg, room, seq } => {
                codec::encode_message_into(msg, &mut self.record);
                self.log_append(msg.id)?;
                self.room_log.open()?.insert((*room, msg.id), *seq)?;
                // Counted past the watermark, so that a read's scan stays within the lag.
                if self.tail.takes(msg.id) {
                    self.tail.message(msg.id);
                }
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::PutRoom { id, room } => {
                self.rooms
                    .open()?
                    .insert(*id, codec::encode_room(room).as_slice())?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::CreateRoom {
                id,
                room,
                owner,
                member,
            } => {
                self.rooms
                    .open()?
                    .insert(*id, codec::encode_room(room).as_slice())?;
                self.room_members.open()?.insert(
                    (*id, owner.as_str()),
                    codec::encode_member(member).as_slice(),
                )?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::Notice(_) => Ok(StoreReply::Done),
            StoreOp::Told { op, .. } => self.apply(op),
            StoreOp::ReserveIds { below } => {
                self.meta.open()?.insert(IDS_RESERVED_KEY, *below)?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::DeleteRoom { id } => {
                self.rooms.open()?.remove(*id)?;
                for table in [
                    self.room_members.open()?,
                    self.room_bans.open()?,
                    self.room_invites.open()?,
                ] {
                    let mut users = Vec::new();
                    for entry in table.range((*id, "")..(id.saturating_add(1), ""))? {
                        users.push(entry?.0.value().1.to_owned());
                    }
                    for user in users {
                        table.remove((*id, user.as_str()))?;
                    }
                }
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::PutMember { room, user, member } => {
                self.room_members.open()?.insert(
                    (*room, user.as_str()),
                    codec::encode_member(member).as_slice(),
                )?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::RemoveMember { room, user } => {
                self.room_members.open()?.remove((*room, user.as_str()))?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::PutBan { room, user, ban } => {
                self.room_bans
                    .open()?
                    .insert((*room, user.as_str()), codec::encode_ban(ban).as_slice())?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::RemoveBan { room, user } => {
                self.room_bans.open()?.remove((*room, user.as_str()))?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::PutInvite { room, user, invite } => {
                self.room_invites.open()?.insert(
                    (*room, user.as_str()),
                    codec::encode_invite(invite).as_slice(),
                )?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::RemoveInvite { room, user } => {
                self.room_invites.open()?.remove((*room, user.as_str()))?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::SetDirectRead { user, with, id } => {
                let old = marker(self.read_markers.open()?, user, with)?;
                let after = old.max(*id);
                if after > old {
                    self.read_markers
                        .open()?
                        .insert((user.as_str(), with.as_str()), after)?;
                    self.dirty = true;
                }
                Ok(StoreReply::Marker { before: old, after })
            }
            // Ordered with the writes (see `StoreOp::is_read`), so always answered here.
            StoreOp::RoomReplay {
                room,
                after,
                upto,
                count,
            } => {
                // A message that cannot be read is left out (and logged), not the whole batch.
                let (ids, _, _) = room_page_ids(
                    self.room_log.open()?,
                    *room,
                    after.saturating_add(1),
                    *upto,
                    *count,
                    Cursor::Latest,
                )?;
                Ok(StoreReply::Messages(read_messages(&self.log(), &ids)?))
            }
            // Reads are answered here only when handed to `write` directly (see `Store::write`).
            StoreOp::History {
                conv,
                count,
                cursor,
            } => {
                // The log field by field: the tables opened here borrow their own fields.
                let log = Log {
                    blocks: &self.message_blocks,
                    single: &self.messages,
                    open: &self.open,
                };
                let page = any_history(
                    self.rows.open()?,
                    self.tail.watermark(),
                    self.room_log.open()?,
                    &log,
                    conv,
                    *count,
                    *cursor,
                )?;
                Ok(StoreReply::History(page))
            }
            StoreOp::DirectRead { user, with } => {
                let m = marker(self.read_markers.open()?, user, with)?;
                Ok(StoreReply::Marker {
                    before: m,
                    after: m,
                })
            }
            StoreOp::FirstUnread { rooms } => Ok(StoreReply::FirstIds(first_unread(
                self.room_log.open()?,
                rooms,
            )?)),
            StoreOp::RoomSeq { room, upto } => Ok(StoreReply::Seq(room_seq(
                self.room_log.open()?,
                *room,
                *upto,
            )?)),
            StoreOp::ReadBacklog { user } => {
                let log = Log {
                    blocks: &self.message_blocks,
                    single: &self.messages,
                    open: &self.open,
                };
                Ok(StoreReply::Backlog(backlog(
                    self.pending.open()?,
                    &log,
                    user,
                )?))
            }
            StoreOp::ReadMessages { ids } => {
                Ok(StoreReply::Messages(read_messages(&self.log(), ids)?))
            }
            StoreOp::CreateToken(rec) => {
                // A record already under this id belongs to the new one now; its index entry goes.
                self.delete_token(rec.id)?;
                self.tokens
                    .open()?
                    .insert(rec.id, codec::encode_token(rec).as_slice())?;
                self.tokens_by_account
                    .open()?
                    .insert((rec.user.as_str(), rec.id), ())?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::TouchToken { id, last_used_ms } => {
                let rec = match self.tokens.open()?.get(*id)? {
                    Some(bytes) => Some(codec::decode_token(*id, bytes.value())?),
                    None => None,
                };
                if let Some(mut rec) = rec {
                    rec.last_used_ms = *last_used_ms;
                    self.tokens
                        .open()?
                        .insert(*id, codec::encode_token(&rec).as_slice())?;
                    self.dirty = true;
                }
                Ok(StoreReply::Done)
            }
            StoreOp::RevokeTokens { ids } => {
                for id in ids {
                    self.delete_token(*id)?;
                }
                Ok(StoreReply::Done)
            }
            StoreOp::SetPassword { user, phc, revoke } => {
                let rec = match self.accounts.open()?.get(user.as_str())? {
                    Some(bytes) => Some(codec::decode_account(bytes.value())?),
                    None => None,
                };
                if let Some(mut rec) = rec {
                    rec.phc = phc.clone();
                    self.accounts
                        .open()?
                        .insert(user.as_str(), codec::encode_account_row(&rec).as_slice())?;
                    self.dirty = true;
                }
                for id in revoke {
                    self.delete_token(*id)?;
                }
                Ok(StoreReply::Done)
            }
            StoreOp::DeleteAccount { user, deleted_ms } => {
                self.delete_account(user, *deleted_ms)?;
                Ok(StoreReply::Done)
            }
            StoreOp::Block { a, b } => {
                self.friendships.open()?.remove((a.as_str(), b.as_str()))?;
                self.friendships.open()?.remove((b.as_str(), a.as_str()))?;
                self.blocks.open()?.insert((a.as_str(), b.as_str()), ())?;
                self.blocked_by
                    .open()?
                    .insert((b.as_str(), a.as_str()), ())?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::Unblock { a, b } => {
                self.blocks.open()?.remove((a.as_str(), b.as_str()))?;
                self.blocked_by.open()?.remove((b.as_str(), a.as_str()))?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::SetAway { user, away } => {
                self.update_profile(user, |p| p.away = away.clone())?;
                Ok(StoreReply::Done)
            }
            StoreOp::SetDms { user, friends_only } => {
                self.update_profile(user, |p| p.friends_only = *friends_only)?;
                Ok(StoreReply::Done)
            }
            StoreOp::SetLastSeen { user, ms } => {
                self.update_profile(user, |p| p.last_seen_ms = Some(*ms))?;
                Ok(StoreReply::Done)
            }
            StoreOp::SetSuspended { user, suspension } => {
                self.update_profile(user, |p| p.suspended = suspension.clone())?;
                Ok(StoreReply::Done)
            }
        }
    }
}

// The reads below take any readable table, so a read transaction and a write transaction share
// them.

/// What the core needs in memory, read from the tables (of a read or a write transaction).
fn snapshot(
    accounts: &impl ReadableTable<&'static str, &'static [u8]>,
    friendships: &impl ReadableTable<(&'static str, &'static str), u8>,
    pending: &impl IdIndex,
    messages: &Log<'_, impl LogTable, impl LogTable>,
    extra: &AccountTables<impl ReadableTable<u64, &'static [u8]>, impl PairSet, impl NameRecords>,
) -> Result<Snapshot, Fail> {
    let mut snap = Snapshot {
        next_id: 1,
        ..Snapshot::default()
    };
    for entry in accounts.iter()? {
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
    for entry in friendships.iter()? {
        let (key, value) = entry?;
        let (a, b) = key.value();
        snap.friendships
            .push((a.to_owned(), b.to_owned(), state_from_byte(value.value())?));
    }
    let mut senders: BTreeMap<(String, String), u32> = BTreeMap::new();
    for entry in pending.iter()? {
        let (key, _) = entry?;
        let (user, id) = key.value();
        match snap.pending_counts.last_mut() {
            Some((last, n)) if last == user => *n = n.saturating_add(1),
            _ => snap.pending_counts.push((user.to_owned(), 1)),
        }
        // Who sent it, for the share each sender has of an inbox. A message that cannot be read
        // here is left out of that count (its delivery is tried at the next login as usual) rather
        // than failing the start.
        match messages.with(id, |bytes| codec::decode_message(id, bytes)) {
            Ok(Some(Ok(m))) => {
                *senders
                    .entry((user.to_owned(), key_of(&m.from)))
                    .or_insert(0) += 1;
            }
            Ok(_) | Err(Fail::Damage(_)) => {}
            Err(e) => return Err(e),
        }
    }
    snap.pending_senders = senders.into_iter().map(|((u, s), n)| (u, s, n)).collect();
    snap.next_id = messages.last_id()?.saturating_add(1);
    for entry in extra.tokens.iter()? {
        let (id, value) = entry?;
        snap.tokens
            .push(codec::decode_token(id.value(), value.value())?);
    }
    for entry in extra.blocks.iter()? {
        let (key, _) = entry?;
        let (a, b) = key.value();
        snap.blocks.push((a.to_owned(), b.to_owned()));
    }
    for entry in extra.profiles.iter()? {
        let (key, value) = entry?;
        snap.profiles.push((
            key.value().to_owned(),
            codec::decode_profile(value.value())?,
        ));
    }
    for entry in extra.retired.iter()? {
        let (key, value) = entry?;
        let rec = codec::decode_retired(value.value())?;
        if key_of(&rec.name) != key.value() {
            return Err(Damage::new(format!(
                "retired name stored under {:?} is {:?}",
                key.value(),
                rec.name
            ))
            .into());
        }
        snap.retired.push(rec);
    }
    Ok(snap)
}

/// The tables of the account features added in layout version 2, as the snapshot reads them.
struct AccountTables<T, B, R> {
    tokens: T,
    blocks: B,
    profiles: R,
    retired: R,
}

/// A set of name pairs: `blocks` or `blocked_by`.
trait PairSet: ReadableTable<(&'static str, &'static str), ()> {}
impl<T: ReadableTable<(&'static str, &'static str), ()>> PairSet for T {}

/// Records by account key: `profiles` or `retired`.
trait NameRecords: ReadableTable<&'static str, &'static [u8]> {}
impl<T: ReadableTable<&'static str, &'static [u8]>> NameRecords for T {}

/// An index of message ids under a key: `conversations` (by conversation key) or `pending` (by
/// account key).
trait IdIndex: ReadableTable<(&'static str, u64), ()> {}
impl<T: ReadableTable<(&'static str, u64), ()>> IdIndex for T {}

/// The rooms' index: (room, message id) -> the message's position in the room.
trait RoomLog: ReadableTable<(u64, u64), u64> {}
impl<T: ReadableTable<(u64, u64), u64>> RoomLog for T {}

/// The read markers of direct conversations.
trait Markers: ReadableTable<(&'static str, &'static str), u64> {}
impl<T: ReadableTable<(&'static str, &'static str), u64>> Markers for T {}

/// The ids in the account's offline backlog whose messages can be read, in id order. An entry
/// whose message is not stored, or does not decode, is logged and left out: one damaged record
/// costs that message's delivery (it stays in the log), not the whole backlog.
fn backlog(
    pending: &impl IdIndex,
    messages: &Log<'_, impl LogTable, impl LogTable>,
    user: &str,
) -> Result<Vec<MsgId>, Fail> {
    let mut ids = Vec::new();
    for entry in pending.range((user, 0u64)..=(user, u64::MAX))? {
        ids.push(entry?.0.value().1);
    }
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        match messages.with(id, |bytes| codec::decode_message(id, bytes).map(drop))? {
            Some(decoded) => match decoded {
                Ok(()) => found.push(id),
                Err(damage) => log::error!(
                    "offline backlog of {user:?}: message {id} left out, it does not decode: \
                     {damage}"
                ),
            },
            // The index is the caller's to fill (AddPending names an id it says is stored); an
            // entry without its message cannot be delivered.
            None => {
                log::warn!("offline backlog of {user:?} named message {id}, which is not stored")
            }
        }
    }
    Ok(found)
}

/// One page of the conversation with key `conv`: its rows in the conversation index, and the
/// messages past the watermark (see `conv_index`).
fn history(
    rows: &impl conv_index::Rows,
    watermark: MsgId,
    messages: &Log<'_, impl LogTable, impl LogTable>,
    conv: &str,
    count: u32,
    cursor: Cursor,
) -> Result<HistoryPage, Fail> {
    let key = conv.as_bytes();
    let mut memo = conv_index::Memo::default();
    let (ids, older, newer) = page(0, MsgId::MAX, count, cursor, |a, b, rev, take| {
        conv_index::ids(rows, messages, watermark, &mut memo, key, a, b, rev, take)
    })?;
    check_readable(messages, &ids, || format!("conversation {key:?}"))?;
    Ok(HistoryPage { ids, older, newer })
}

/// The conversation index's watermark recorded in `meta` (0: none yet, every message is past it).
fn watermark(meta: &impl ReadableTable<&'static str, u64>) -> Result<MsgId, Fail> {
    Ok(meta.get(WATERMARK_KEY)?.map_or(0, |v| v.value()))
}

/// Every message of a page must be readable now, so that a damaged one fails the page before any
/// of it is sent (the page is then sent part by part, see `ReadOp::Messages`). `whose` names the
/// conversation or room in the damage report.
fn check_readable(
    messages: &Log<'_, impl LogTable, impl LogTable>,
    ids: &[MsgId],
    whose: impl Fn() -> String,
) -> Result<(), Fail> {
    for &id in ids {
        match messages.with(id, |bytes| codec::decode_message(id, bytes).map(drop))? {
            Some(decoded) => decoded?,
            None => {
                return Err(Damage::new(format!(
                    "{} names message {id}, which is not stored",
                    whose()
                ))
                .into())
            }
        }
    }
    Ok(())
}

/// The messages with `ids`, in that order; one that is not stored or does not decode is logged and
/// left out (the ids come from a page or a backlog read earlier, which found them readable).
fn read_messages(
    messages: &Log<'_, impl LogTable, impl LogTable>,
    ids: &[MsgId],
) -> Result<Vec<MessageRecord>, Fail> {
    let mut found = Vec::with_capacity(ids.len());
    for &id in ids {
        match messages.with(id, |bytes| codec::decode_message(id, bytes))? {
            Some(decoded) => match decoded {
                Ok(m) => found.push(m),
                Err(damage) => log::error!("message {id} left out, it does not decode: {damage}"),
            },
            None => log::error!("message {id} left out, it is not stored"),
        }
    }
    Ok(found)
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

/// One page of any conversation: a pair's or the broadcasts (by their index key), or a room's.
fn any_history(
    rows: &impl conv_index::Rows,
    watermark: MsgId,
    room_log: &impl RoomLog,
    messages: &Log<'_, impl LogTable, impl LogTable>,
    conv: &Conversation,
    count: u32,
    cursor: Cursor,
) -> Result<HistoryPage, Fail> {
    match (conv, conversation_key(conv)) {
        (&Conversation::Room { id, after }, _) => room_history(
            room_log,
            messages,
            id,
            after.saturating_add(1),
            MsgId::MAX,
            count,
            cursor,
        ),
        (_, Some(key)) => history(rows, watermark, messages, &key, count, cursor),
        (_, None) => Ok(HistoryPage::default()),
    }
}

/// One page of a room's messages with ids in `lo..=hi` (what one member may see of it). As for a
/// conversation, every message of the page must be readable now.
fn room_history(
    room_log: &impl RoomLog,
    messages: &Log<'_, impl LogTable, impl LogTable>,
    room: RoomId,
    lo: MsgId,
    hi: MsgId,
    count: u32,
    cursor: Cursor,
) -> Result<HistoryPage, Fail> {
    let (ids, older, newer) = room_page_ids(room_log, room, lo, hi, count, cursor)?;
    check_readable(messages, &ids, || format!("room {room}"))?;
    Ok(HistoryPage { ids, older, newer })
}

/// The ids of one page of a room's messages with ids in `lo..=hi`, and its cursors.
fn room_page_ids(
    room_log: &impl RoomLog,
    room: RoomId,
    lo: MsgId,
    hi: MsgId,
    count: u32,
    cursor: Cursor,
) -> Result<super::page::Page, Fail> {
    page(lo, hi, count, cursor, |a, b, rev, take| {
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
    })
}

/// Adds the rooms, their members, bans and invitations, and the next room number to a snapshot.
fn room_snapshot(txn: &ReadTransaction, snap: &mut Snapshot) -> Result<(), Fail> {
    let rooms = txn.open_table(ROOMS)?;
    let room_log = txn.open_table(ROOM_LOG)?;
    snap.next_room_id = 1;
    for entry in rooms.iter()? {
        let (id, value) = entry?;
        let id = id.value();
        let record = codec::decode_room(value.value())?;
        let (last_id, count) = match room_log.range((id, 0)..=(id, MsgId::MAX))?.next_back() {
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
    if let Some(e) = room_log.last()? {
        snap.next_room_id = snap.next_room_id.max(e.0.value().0.saturating_add(1));
    }
    for entry in txn.open_table(ROOM_MEMBERS)?.iter()? {
        let (key, value) = entry?;
        let (room, user) = key.value();
        snap.members
            .push((room, user.to_owned(), codec::decode_member(value.value())?));
    }
    for entry in txn.open_table(ROOM_BANS)?.iter()? {
        let (key, value) = entry?;
        let (room, user) = key.value();
        snap.bans
            .push((room, user.to_owned(), codec::decode_ban(value.value())?));
    }
    for entry in txn.open_table(ROOM_INVITES)?.iter()? {
        let (key, value) = entry?;
        let (room, user) = key.value();
        snap.invites
            .push((room, user.to_owned(), codec::decode_invite(value.value())?));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountRecord, Conversation, MessageRecord, To};
    use redb::ReadableTableMetadata;

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
        let txn = store.db.as_ref().unwrap().begin_write().unwrap();
        let mut row = Vec::new();
        codec::encode_id_row(&[50], &mut row);
        txn.open_table(CONV_ROWS)
            .unwrap()
            .insert(("x y".as_bytes(), 50), row.as_slice())
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

    /// Overwrites the stored bytes of message `id` with bytes that do not decode, in its block
    /// or in the per-id table.
    fn damage_message(store: &RedbStore, id: MsgId) {
        let txn = store.db.as_ref().unwrap().begin_write().unwrap();
        {
            let mut blocks = txn.open_table(MESSAGE_BLOCKS).unwrap();
            let found = blocks
                .range(id..)
                .unwrap()
                .next()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value(), v.value().to_vec())
                })
                .filter(|(_, block)| msg_log::find(block, id).unwrap().is_some());
            match found {
                Some((key, block)) => {
                    let mut new = Vec::new();
                    for e in msg_log::entries(&block) {
                        let (at, record) = e.unwrap();
                        let record = if at == id { &[9u8, 9, 9][..] } else { record };
                        msg_log::push(&mut new, at, record);
                    }
                    blocks.insert(key, new.as_slice()).unwrap();
                }
                None => {
                    txn.open_table(MESSAGES)
                        .unwrap()
                        .insert(id, [9u8, 9, 9].as_slice())
                        .unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }

    /// The failure this guards against: one record that does not decode made every read that met
    /// it fail the whole store. A HISTORY page holding it fails alone, as damage that names the
    /// file; a backlog holding it leaves that one message out.
    #[test]
    fn a_record_that_does_not_decode_fails_its_page_and_is_left_out_of_a_backlog() {
        let (_dir, path) = temp_db();
        let (mut store, _) = RedbStore::open(&path).unwrap();
        store.execute(&[append(1), append(2), append(3)]).unwrap();
        damage_message(&store, 2);
        let view = store.reader().unwrap();
        let page = ReadOp::History {
            conv: Conversation::Pair("a".into(), "b".into()),
            count: 10,
            cursor: Cursor::Latest,
        };
        match view.read(&page) {
            Err(e @ StoreError::Corrupt { .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let newest = ReadOp::History {
            conv: Conversation::Pair("a".into(), "b".into()),
            count: 1,
            cursor: Cursor::Latest,
        };
        assert!(matches!(view.read(&newest), Ok(StoreReply::History(p)) if p.ids == [3]));
        // Read by id, the damaged one is left out.
        match view.read(&ReadOp::Messages { ids: vec![3, 2, 1] }) {
            Ok(StoreReply::Messages(msgs)) => {
                assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 1])
            }
            other => panic!("{other:?}"),
        }
        match view.read(&ReadOp::Backlog { user: "b".into() }) {
            Ok(StoreReply::Backlog(ids)) => assert_eq!(ids, [1, 3]),
            other => panic!("{other:?}"),
        }
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
                let want = format!("schema version {}", SCHEMA_VERSION + 1);
                assert!(e.to_string().contains(&want), "{e}")
            }
            other => panic!("{:?}", other.map(|(_, s)| s)),
        }
    }

    /// A file written by the first layout (accounts, messages, friendships; no blocks, tokens,
    /// profiles or retired names) opens with everything in it, and is version 2 from then on.
    #[test]
    fn a_version_1_file_is_upgraded_with_its_contents() {
        let (_dir, path) = temp_db();
        let account = AccountRecord {
            name: "Alice".into(),
            phc: "h".into(),
            created_ms: 5,
        };
        {
            // Exactly the tables version 1 had, as version 1 wrote them.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_VERSION_KEY, 1)
                .unwrap();
            txn.open_table(ACCOUNTS)
                .unwrap()
                .insert("alice", codec::encode_account(&account).as_slice())
                .unwrap();
            txn.open_table(FRIENDSHIPS)
                .unwrap()
                .insert(("alice", "bob"), 1)
                .unwrap();
            txn.open_table(MESSAGES)
                .unwrap()
                .insert(
                    4,
                    codec::encode_message(&MessageRecord {
                        id: 4,
                        time_ms: 0,
                        from: "Alice".into(),
                        to: To::All,
                        text: "t".into(),
                    })
                    .as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        }
        let (mut store, snap) = RedbStore::open(&path).unwrap();
        assert_eq!(snap.accounts, vec![account]);
        assert_eq!(
            snap.friendships,
            vec![("alice".into(), "bob".into(), FriendState::Outgoing)]
        );
        assert_eq!(snap.next_id, 5);
        assert!(snap.tokens.is_empty() && snap.blocks.is_empty() && snap.retired.is_empty());
        // The new tables work at once.
        store
            .execute(&[StoreOp::Block {
                a: "alice".into(),
                b: "bob".into(),
            }])
            .unwrap();
        drop(store);
        let (_, snap) = RedbStore::open(&path).unwrap();
        assert_eq!(snap.blocks, vec![("alice".to_owned(), "bob".to_owned())]);
        assert!(snap.friendships.is_empty());
        let db = Database::open(&path).unwrap();
        let version = db
            .begin_read()
            .unwrap()
            .open_table(META)
            .unwrap()
            .get(SCHEMA_VERSION_KEY)
            .unwrap()
            .map(|v| v.value());
        assert_eq!(version, Some(SCHEMA_VERSION));
    }

    /// Turns a current file back into layout 4: one conversation index entry per message and
    /// conversation, no rows, no watermark.
    fn downgrade_to_version_4(path: &Path) {
        unblock(path);
        let db = Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let messages = txn.open_table(MESSAGES).unwrap();
            let mut old = txn.open_table(CONVERSATIONS).unwrap();
            for entry in messages.iter().unwrap() {
                let (id, bytes) = entry.unwrap();
                let m = codec::decode_message(id.value(), bytes.value()).unwrap();
                for conv in message_conversation_keys(&m) {
                    old.insert((conv.as_bytes(), m.id), ()).unwrap();
                }
            }
            txn.open_table(META).unwrap().remove(WATERMARK_KEY).unwrap();
        }
        txn.delete_table(CONV_ROWS).unwrap();
        txn.delete_table(MESSAGE_BLOCKS).unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION_4)
            .unwrap();
        txn.commit().unwrap();
    }

    fn unblock(path: &Path) {
        RedbStore::unblock(path).unwrap();
    }

    /// Turns a current file back into layout 3: its conversation index keyed by strings, under the
    /// old table name.
    fn downgrade_to_version_3(path: &Path) {
        downgrade_to_version_4(path);
        let db = Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let new = txn.open_table(CONVERSATIONS).unwrap();
            let mut old = txn.open_table(CONVERSATIONS_V3).unwrap();
            for entry in new.iter().unwrap() {
                let (key, _) = entry.unwrap();
                let (conv, id) = key.value();
                old.insert((std::str::from_utf8(conv).unwrap(), id), ())
                    .unwrap();
            }
        }
        txn.delete_table(CONVERSATIONS).unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION_3)
            .unwrap();
        txn.commit().unwrap();
    }

    fn stored_version(path: &Path) -> Option<u64> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let version = meta.get(SCHEMA_VERSION_KEY).unwrap().map(|v| v.value());
        version
    }

    /// A version 3 file, whose conversation index was keyed by strings, opens with its whole history
    /// readable, and is the current version from then on, without the old table.
    #[test]
    fn a_version_3_file_is_upgraded_with_its_conversation_index() {
        let (_dir, path) = temp_db();
        {
            let (mut store, _) = RedbStore::open(&path).unwrap();
            store
                .execute(&(1..=5).map(append).collect::<Vec<_>>())
                .unwrap();
        }
        let history = |store: &mut RedbStore| {
            let op = StoreOp::History {
                conv: Conversation::Pair("a".into(), "b".into()),
                count: 50,
                cursor: Cursor::Latest,
            };
            match store.execute(&[op]).unwrap().pop() {
                Some(StoreReply::History(page)) => page.ids,
                other => panic!("{other:?}"),
            }
        };
        let before = {
            let (mut store, _) = RedbStore::open(&path).unwrap();
            history(&mut store)
        };
        assert_eq!(before, vec![1, 2, 3, 4, 5]);
        downgrade_to_version_3(&path);
        assert_eq!(stored_version(&path), Some(SCHEMA_VERSION_3));
        {
            let (mut store, snap) = RedbStore::open(&path).unwrap();
            assert_eq!(snap.next_id, 6);
            assert_eq!(history(&mut store), before);
            store.execute(&[append(6)]).unwrap();
            assert_eq!(history(&mut store), vec![1, 2, 3, 4, 5, 6]);
        }
        assert_eq!(stored_version(&path), Some(SCHEMA_VERSION));
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(matches!(
            txn.open_table(CONVERSATIONS_V3),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
    }

    /// The copy goes in commits of a few entries and misses none at their seams.
    #[test]
    fn the_conversation_index_is_copied_batch_by_batch() {
        let (_dir, path) = temp_db();
        {
            let (mut store, _) = RedbStore::open(&path).unwrap();
            store
                .execute(&(1..=7).map(append).collect::<Vec<_>>())
                .unwrap();
        }
        downgrade_to_version_3(&path);
        let db = Database::open(&path).unwrap();
        assert_eq!(copy_conversation_index(&db, 2).ok(), Some(7));
        let txn = db.begin_read().unwrap();
        let new = txn.open_table(CONVERSATIONS).unwrap();
        let ids: Vec<u64> = new
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().1)
            .collect();
        assert_eq!(ids, (1..=7).collect::<Vec<_>>());
    }

    /// A direct message, a group message or a room message with this id, by `id % 5`: two pair
    /// conversations, a group to both, and a room, so that the rows and the scan past the
    /// watermark meet each other's messages.
    fn mixed(id: MsgId) -> StoreOp {
        let msg = |to| MessageRecord {
            id,
            time_ms: 0,
            from: "A".into(),
            to,
            text: "t".into(),
        };
        match id % 5 {
            0 | 2 => StoreOp::AppendMessage {
                msg: msg(To::User("b".into())),
                pending_for: vec![],
            },
            1 => StoreOp::AppendMessage {
                msg: msg(To::User("C".into())),
                pending_for: vec![],
            },
            3 => StoreOp::AppendMessage {
                msg: msg(To::Group(vec!["b".into(), "c".into()])),
                pending_for: vec![],
            },
            _ => StoreOp::AppendRoomMessage {
                msg: msg(To::Room("#r".into())),
                room: 1,
                seq: id,
            },
        }
    }

    const CONVS: [(&str, &str); 3] = [("a", "b"), ("c", "A"), ("b", "c")];

    /// Every page (each cursor at every id and beyond, counts 1 to 4) of every conversation, from
    /// both views, must be the same.
    fn same_pages(real: &dyn StoreReader, model: &dyn StoreReader, last: MsgId) {
        let mut cursors = vec![Cursor::Latest];
        for x in 0..=last + 2 {
            cursors.push(Cursor::Before(x));
            cursors.push(Cursor::After(x));
        }
        for (a, b) in CONVS {
            for &cursor in &cursors {
                for count in 1..=4 {
                    let op = ReadOp::History {
                        conv: Conversation::Pair(a.into(), b.into()),
                        count,
                        cursor,
                    };
                    assert_eq!(real.read(&op).unwrap(), model.read(&op).unwrap(), "{op:?}");
                }
            }
        }
    }

    fn watermark_of(store: &RedbStore) -> MsgId {
        let txn = store.db.as_ref().unwrap().begin_read().unwrap();
        watermark(&txn.open_table(META).unwrap()).ok().unwrap()
    }

    /// The pages of a conversation whose messages are partly in the index's rows and partly past
    /// its watermark are exactly the pages of the model store: a page that spans the rows and the
    /// scan, a cursor inside a row, rows of one id and of several, at every lag position.
    #[test]
    fn pages_across_the_watermark_are_the_models() {
        let (_dir, path) = temp_db();
        let (store, _) = RedbStore::open(&path).unwrap();
        let mut store = store.with_index_lag(4);
        let (mut model, _) = crate::store::memory::MemoryStore::new();
        // Batches of 1, 2 and 3 messages: flushes fall inside batches and at their ends.
        let mut id = 1;
        for n in [1, 2, 3, 1, 3, 2, 2, 1, 3] {
            let ops: Vec<StoreOp> = (id..id + n).map(mixed).collect();
            id += n;
            store.execute(&ops).unwrap();
            model.execute(&ops).unwrap();
            // The list is indexed as soon as it reaches the lag, inside a batch too.
            assert!(store.tail.as_ref().is_some_and(|t| t.len() < 4));
            same_pages(&*store.reader().unwrap(), &*model.reader().unwrap(), id);
        }
        // Both halves were met: rows below the watermark and messages past it.
        let w = watermark_of(&store);
        assert!(w > 4 && w < id - 1, "watermark {w}, last {}", id - 1);
    }

    /// A read transaction taken before a flush keeps seeing its own snapshot: its watermark, its
    /// rows, its messages. The flush in the middle of paging changes none of its pages, and a
    /// reader taken after it sees the same pages plus the new messages.
    #[test]
    fn a_flush_in_the_middle_of_paging_changes_no_page() {
        let (_dir, path) = temp_db();
        let (store, _) = RedbStore::open(&path).unwrap();
        let mut store = store.with_index_lag(6);
        let (mut model, _) = crate::store::memory::MemoryStore::new();
        let first: Vec<StoreOp> = (1..=5).map(mixed).collect();
        store.execute(&first).unwrap();
        model.execute(&first).unwrap();
        assert_eq!(watermark_of(&store), 0);
        let before = store.reader().unwrap();
        let model_before = model.reader().unwrap();
        let more: Vec<StoreOp> = (6..=8).map(mixed).collect();
        store.execute(&more).unwrap();
        model.execute(&more).unwrap();
        assert_eq!(watermark_of(&store), 6, "the flush happened");
        same_pages(&*before, &*model_before, 8);
        same_pages(&*store.reader().unwrap(), &*model.reader().unwrap(), 8);
    }

    /// The failure this guards against: the writer's list of messages past the watermark lives in
    /// memory, and a crash loses it. The messages are in the log, so the reopened store rebuilds
    /// the list from there: its pages are unchanged, and its next flush indexes them with the
    /// rest, rows and all.
    #[test]
    fn a_reopened_store_rebuilds_its_tail_and_indexes_it() {
        let (_dir, path) = temp_db();
        let (mut model, _) = crate::store::memory::MemoryStore::new();
        {
            let (store, _) = RedbStore::open(&path).unwrap();
            let mut store = store.with_index_lag(5);
            let ops: Vec<StoreOp> = (1..=8).map(mixed).collect();
            store.execute(&ops).unwrap();
            model.execute(&ops).unwrap();
            assert_eq!(watermark_of(&store), 5);
            // Dropped without any shutdown step: as after a crash, only the file remains.
        }
        let (store, snap) = RedbStore::open(&path).unwrap();
        let mut store = store.with_index_lag(5);
        assert_eq!(snap.next_id, 9);
        assert_eq!(store.tail.as_ref().map(|t| t.len()), Some(3));
        same_pages(&*store.reader().unwrap(), &*model.reader().unwrap(), 8);
        let ops: Vec<StoreOp> = (9..=10).map(mixed).collect();
        store.execute(&ops).unwrap();
        model.execute(&ops).unwrap();
        assert_eq!(watermark_of(&store), 10);
        same_pages(&*store.reader().unwrap(), &*model.reader().unwrap(), 10);
        // Every message of a conversation is in the rows now, the reopened tail's too.
        let txn = store.db.as_ref().unwrap().begin_read().unwrap();
        let mut indexed = Vec::new();
        conv_index::each_entry(&txn.open_table(CONV_ROWS).unwrap(), |_, id| {
            indexed.push(id)
        })
        .ok()
        .unwrap();
        indexed.sort_unstable();
        indexed.dedup();
        assert_eq!(indexed, [1, 2, 3, 5, 6, 7, 8, 10]);
    }

    /// The list past the watermark holds a direct message's entry as its two names are written
    /// (`Alice bob`, `BOB alice`); the flush makes their one conversation key: one row, under
    /// `alice bob`, with every id, and its pages are the model's.
    #[test]
    fn a_flush_joins_a_pair_written_in_either_order_and_case() {
        let (_dir, path) = temp_db();
        let (store, _) = RedbStore::open(&path).unwrap();
        let mut store = store.with_index_lag(6);
        let (mut model, _) = crate::store::memory::MemoryStore::new();
        let pairs = [
            ("Alice", "bob"),
            ("BOB", "alice"),
            ("alice", "Bob"),
            ("bob", "ALICE"),
            ("alice", "bob"),
            ("Bob", "Alice"),
        ];
        let ops: Vec<StoreOp> = (1..=6u64)
            .zip(pairs)
            .map(|(id, (from, to))| StoreOp::AppendMessage {
                msg: MessageRecord {
                    id,
                    time_ms: 0,
                    from: from.into(),
                    to: To::User(to.into()),
                    text: "t".into(),
                },
                pending_for: vec![],
            })
            .collect();
        store.execute(&ops).unwrap();
        model.execute(&ops).unwrap();
        assert_eq!(watermark_of(&store), 6);
        let txn = store.db.as_ref().unwrap().begin_read().unwrap();
        let rows = txn.open_table(CONV_ROWS).unwrap();
        let keys: Vec<Vec<u8>> = rows
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().0.to_vec())
            .collect();
        assert_eq!(keys, [b"alice bob".to_vec()]);
        let mut indexed = Vec::new();
        conv_index::each_entry(&rows, |_, id| indexed.push(id))
            .ok()
            .unwrap();
        assert_eq!(indexed, [1, 2, 3, 4, 5, 6]);
        for cursor in [Cursor::Latest, Cursor::Before(4), Cursor::After(2)] {
            let op = ReadOp::History {
                conv: Conversation::Pair("Bob".into(), "alice".into()),
                count: 3,
                cursor,
            };
            let page = store.reader().unwrap().read(&op).unwrap();
            assert_eq!(page, model.reader().unwrap().read(&op).unwrap());
            assert!(matches!(page, StoreReply::History(p) if p.ids.len() == 3));
        }
    }

    /// A message whose id is at or below the watermark (as a replicated one may be) goes into
    /// the rows at once, into the row that covers it or a row of its own: its pages are the
    /// model's.
    #[test]
    fn a_message_below_the_watermark_is_indexed_at_once() {
        let (_dir, path) = temp_db();
        let (store, _) = RedbStore::open(&path).unwrap();
        let mut store = store.with_index_lag(3);
        let (mut model, _) = crate::store::memory::MemoryStore::new();
        for ids in [vec![20, 22, 25], vec![21, 3, 30], vec![26, 1, 2]] {
            let ops: Vec<StoreOp> = ids.into_iter().map(mixed).collect();
            store.execute(&ops).unwrap();
            model.execute(&ops).unwrap();
            same_pages(&*store.reader().unwrap(), &*model.reader().unwrap(), 31);
        }
        // The first batch was indexed in bulk; of the rest only 30 and 26 are past the watermark.
        assert_eq!(watermark_of(&store), 25);
        assert_eq!(store.tail.as_ref().map(|t| t.len()), Some(2));
    }

    /// A failed write may have flushed the list in its transaction: the list is read again from
    /// the file before the next write, so nothing the failed batch held is indexed.
    #[test]
    fn a_failed_write_leaves_the_tail_as_the_file_has_it() {
        let (_dir, path) = temp_db();
        let (store, _) = RedbStore::open(&path).unwrap();
        let mut store = store.with_index_lag(3);
        store.execute(&[mixed(1)]).unwrap();
        // Message 50 named by a row but not stored: a history read in the batch fails it, after
        // the batch's messages have filled the list and flushed it.
        let txn = store.db.as_ref().unwrap().begin_write().unwrap();
        let mut row = Vec::new();
        codec::encode_id_row(&[50], &mut row);
        txn.open_table(CONV_ROWS)
            .unwrap()
            .insert(("a b".as_bytes(), 50), row.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let failing = vec![
            mixed(2),
            mixed(5),
            StoreOp::History {
                conv: Conversation::Pair("a".into(), "b".into()),
                count: 5,
                cursor: Cursor::Latest,
            },
        ];
        assert!(store.execute(&failing).is_err());
        assert_eq!(watermark_of(&store), 0);
        assert!(store.tail.is_none());
        store.execute(&[mixed(6)]).unwrap();
        assert_eq!(store.tail.as_ref().map(|t| t.len()), Some(2));
    }

    /// A version 4 file (one index entry per message and conversation) opens with every page as
    /// before, its index packed into rows, and is version 5 from then on, without the old table.
    #[test]
    fn a_version_4_file_is_upgraded_into_rows() {
        let (_dir, path) = temp_db();
        let (mut model, _) = crate::store::memory::MemoryStore::new();
        {
            let (mut store, _) = RedbStore::open(&path).unwrap();
            let ops: Vec<StoreOp> = (1..=12).map(mixed).collect();
            store.execute(&ops).unwrap();
            model.execute(&ops).unwrap();
        }
        downgrade_to_version_4(&path);
        assert_eq!(stored_version(&path), Some(SCHEMA_VERSION_4));
        {
            let (mut store, snap) = RedbStore::open(&path).unwrap();
            assert_eq!(snap.next_id, 13);
            assert_eq!(watermark_of(&store), 12);
            assert_eq!(store.tail.as_ref().map(|t| t.len()), Some(0));
            same_pages(&*store.reader().unwrap(), &*model.reader().unwrap(), 12);
            let ops: Vec<StoreOp> = (13..=15).map(mixed).collect();
            store.execute(&ops).unwrap();
            model.execute(&ops).unwrap();
            same_pages(&*store.reader().unwrap(), &*model.reader().unwrap(), 15);
            // The old messages stay in the per-id table, read through the fallback; the new ones
            // are in a block.
            let (blocks, single) = log_layout(&store);
            assert_eq!(single, (1..=12).collect::<Vec<MsgId>>());
            assert_eq!(
                blocks.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
                vec![(15, 3)]
            );
            let all: Vec<MsgId> = (1..=15).collect();
            assert_eq!(read_ids(&store, &all).unwrap(), all);
        }
        assert_eq!(stored_version(&path), Some(SCHEMA_VERSION));
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(matches!(
            txn.open_table(CONVERSATIONS),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
    }

    /// The packing goes in commits of a few entries and misses none at their seams; a commit ends
    /// its rows, so the rows' keys do not depend on where an interrupted upgrade stopped.
    #[test]
    fn the_conversation_index_is_packed_batch_by_batch() {
        let (_dir, path) = temp_db();
        {
            let (mut store, _) = RedbStore::open(&path).unwrap();
            store
                .execute(&(1..=12).map(mixed).collect::<Vec<_>>())
                .unwrap();
        }
        downgrade_to_version_4(&path);
        let db = Database::open(&path).unwrap();
        let want: Vec<(Vec<u8>, u64)> = {
            let txn = db.begin_read().unwrap();
            let old = txn.open_table(CONVERSATIONS).unwrap();
            let all = old
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, _) = e.unwrap();
                    (k.value().0.to_vec(), k.value().1)
                })
                .collect();
            all
        };
        assert_eq!(want.len(), 12);
        let (entries, rows) = pack_conversation_index(&db, 4).ok().unwrap();
        assert_eq!(entries, 12);
        // Twice, as after an interruption: the same rows.
        assert_eq!(pack_conversation_index(&db, 4).ok(), Some((12, rows)));
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(CONV_ROWS).unwrap();
        assert_eq!(ReadableTableMetadata::len(&table).unwrap(), rows);
        let mut got = Vec::new();
        conv_index::each_entry(&table, |conv, id| got.push((conv.to_vec(), id)))
            .ok()
            .unwrap();
        assert_eq!(got, want);
    }

    /// The upgrade of a version 4 file, timed: `CHATD_UPGRADE_MESSAGES` messages (default one
    /// million; nine in ten direct messages between 1,000 pairs, one in ten broadcasts, as
    /// `examples/fill_db.rs` writes them) in a version 4 file in `$TMPDIR`, then the open that
    /// upgrades it (`CHATD_UPGRADE_KEEP=path` keeps a copy of the version 4 file there). Prints
    /// the time per message; run by hand, in release:
    /// `cargo test --release --lib -- --ignored --nocapture upgrade_of_a_large_version_4_file`.
    #[test]
    #[ignore = "a benchmark, run by hand"]
    fn upgrade_of_a_large_version_4_file() {
        let n: u64 = std::env::var("CHATD_UPGRADE_MESSAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let (_dir, path) = temp_db();
        {
            let (mut store, _) = RedbStore::open(&path).unwrap();
            let mut ops = Vec::new();
            for id in 1..=n {
                let pair = id.wrapping_mul(2_654_435_761) % 1000;
                let (a, b) = (format!("fill{}", 2 * pair), format!("fill{}", 2 * pair + 1));
                let to = if id % 10 == 0 { To::All } else { To::User(b) };
                ops.push(StoreOp::AppendMessage {
                    msg: MessageRecord {
                        id,
                        time_ms: 0,
                        from: a,
                        to,
                        text: "x".repeat(64),
                    },
                    pending_for: vec![],
                });
                if ops.len() == 100_000 {
                    store.execute(&ops).unwrap();
                    ops.clear();
                }
            }
            store.execute(&ops).unwrap();
        }
        downgrade_to_version_4(&path);
        let size = std::fs::metadata(&path).unwrap().len();
        // A copy of the version 4 file, for benchmarks of a build that reads version 4.
        if let Ok(keep) = std::env::var("CHATD_UPGRADE_KEEP") {
            std::fs::copy(&path, keep).unwrap();
        }
        let start = std::time::Instant::now();
        let (store, snap) = RedbStore::open(&path).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(snap.next_id, n + 1);
        assert_eq!(watermark_of(&store), n);
        println!(
            "upgrade of a version 4 file of {n} messages ({size} bytes): {secs:.2} s, \
             {:.2} us per message; {} bytes after",
            secs * 1e6 / n as f64,
            std::fs::metadata(&path).unwrap().len()
        );
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

    /// A message of `text_len` bytes of text, from a to b.
    fn sized(id: MsgId, text_len: usize) -> StoreOp {
        StoreOp::AppendMessage {
            msg: MessageRecord {
                id,
                time_ms: 0,
                from: "a".into(),
                to: To::User("b".into()),
                text: "x".repeat(text_len),
            },
            pending_for: vec!["b".into()],
        }
    }

    /// The keys of the blocks and the number of records of each, and the ids in the per-id table.
    fn log_layout(store: &RedbStore) -> (Vec<(MsgId, usize, usize)>, Vec<MsgId>) {
        let txn = store.db.as_ref().unwrap().begin_read().unwrap();
        let blocks = txn
            .open_table(MESSAGE_BLOCKS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                let n = msg_log::entries(v.value()).count();
                (k.value(), n, v.value().len())
            })
            .collect();
        let single = txn
            .open_table(MESSAGES)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value())
            .collect();
        (blocks, single)
    }

    fn read_ids(store: &RedbStore, ids: &[MsgId]) -> Result<Vec<MsgId>, StoreError> {
        match store
            .reader()?
            .read(&ReadOp::Messages { ids: ids.to_vec() })?
        {
            StoreReply::Messages(found) => Ok(found.iter().map(|m| m.id).collect()),
            other => panic!("{other:?}"),
        }
    }

    /// A commit's messages go into blocks of at most `MESSAGE_BLOCK_BYTES`, each under its last
    /// id; every message reads back, at a block's first and last id and between, also after the
    /// store is reopened (what was committed is read back whole).
    #[test]
    fn a_commits_messages_fill_blocks_up_to_the_cap() {
        let (_dir, path) = temp_db();
        let (mut store, _) = RedbStore::open(&path).unwrap();
        let text = 1000;
        let ops: Vec<StoreOp> = (1..=40).map(|id| sized(id, text)).collect();
        store.execute(&ops).unwrap();
        let (blocks, single) = log_layout(&store);
        assert!(single.is_empty(), "{single:?}");
        // Each block is full: one more record would have crossed the cap.
        let record = {
            let mut r = Vec::new();
            let StoreOp::AppendMessage { msg, .. } = &ops[0] else {
                unreachable!()
            };
            codec::encode_message_into(msg, &mut r);
            msg_log::HEADER + r.len()
        };
        let per_block = MESSAGE_BLOCK_BYTES / record;
        assert!(per_block > 1);
        let mut first = 1;
        for (i, &(last, n, bytes)) in blocks.iter().enumerate() {
            assert!(bytes <= MESSAGE_BLOCK_BYTES, "block {i}: {bytes} bytes");
            if i + 1 < blocks.len() {
                assert_eq!(n, per_block, "block {i}");
                assert!(bytes + record > MESSAGE_BLOCK_BYTES);
            }
            assert_eq!(last, first + n as u64 - 1);
            // A block's first and last id, and the ids just outside it, each alone.
            assert_eq!(read_ids(&store, &[first]).unwrap(), vec![first]);
            assert_eq!(read_ids(&store, &[last]).unwrap(), vec![last]);
            first = last + 1;
        }
        assert_eq!(first, 41);
        assert_eq!(blocks.len(), 40usize.div_ceil(per_block));
        let all: Vec<MsgId> = (1..=40).collect();
        assert_eq!(read_ids(&store, &all).unwrap(), all);
        assert_eq!(read_ids(&store, &[41]).unwrap(), Vec::<MsgId>::new());
        drop(store);

        let (store, snap) = RedbStore::open(&path).unwrap();
        assert_eq!(snap.next_id, 41);
        assert_eq!(snap.pending_counts, vec![("b".to_owned(), 40)]);
        let reader = store.reader().unwrap();
        match reader.read(&ReadOp::Messages { ids: all.clone() }).unwrap() {
            StoreReply::Messages(found) => {
                assert_eq!(found.len(), 40);
                assert!(found.iter().all(|m| m.text.len() == text));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A record larger than the cap makes a block of its own.
    #[test]
    fn a_record_larger_than_the_cap_is_a_block_of_its_own() {
        let (_dir, path) = temp_db();
        let (mut store, _) = RedbStore::open(&path).unwrap();
        store
            .execute(&[sized(1, 10), sized(2, MESSAGE_BLOCK_BYTES), sized(3, 10)])
            .unwrap();
        let (blocks, _) = log_layout(&store);
        let shape: Vec<(MsgId, usize)> = blocks.iter().map(|&(k, n, _)| (k, n)).collect();
        assert_eq!(shape, vec![(1, 1), (2, 1), (3, 1)]);
        assert_eq!(read_ids(&store, &[1, 2, 3]).unwrap(), vec![1, 2, 3]);
    }

    /// A message whose id is not above every stored id goes to the per-id table and is read
    /// through the fallback; an id already stored is not written twice.
    #[test]
    fn a_message_below_the_largest_id_is_read_through_the_fallback() {
        let (_dir, path) = temp_db();
        let (mut store, _) = RedbStore::open(&path).unwrap();
        store.execute(&[append(10), append(20)]).unwrap();
        // 15 lies inside the block of 10 and 20; 5 below it; 20 again; 30 above.
        store
            .execute(&[append(15), append(5), append(20), append(30)])
            .unwrap();
        let (blocks, single) = log_layout(&store);
        let keys: Vec<MsgId> = blocks.iter().map(|b| b.0).collect();
        assert_eq!(keys, vec![20, 30]);
        assert_eq!(single, vec![5, 15]);
        assert_eq!(
            read_ids(&store, &[5, 10, 15, 20, 30]).unwrap(),
            vec![5, 10, 15, 20, 30]
        );
        // Pages merge both tables in id order.
        let page = match store
            .reader()
            .unwrap()
            .read(&ReadOp::History {
                conv: Conversation::Pair("a".into(), "b".into()),
                count: 10,
                cursor: Cursor::Latest,
            })
            .unwrap()
        {
            StoreReply::History(page) => page.ids,
            other => panic!("{other:?}"),
        };
        assert_eq!(page, vec![5, 10, 15, 20, 30]);
        drop(store);
        let (store, snap) = RedbStore::open(&path).unwrap();
        assert_eq!(snap.next_id, 31);
        assert_eq!(store.tail.as_ref().map(|t| t.len()), Some(5));
    }

    /// A block that does not parse fails the reads that need it as damage; the rest of the log,
    /// the store's writes and its reopening go on.
    #[test]
    fn a_damaged_block_fails_its_reads_and_the_store_goes_on() {
        let (_dir, path) = temp_db();
        let (mut store, _) = RedbStore::open(&path).unwrap();
        store.execute(&[append(1), append(2), append(3)]).unwrap();
        store.execute(&[append(4)]).unwrap();
        {
            let txn = store.db.as_ref().unwrap().begin_write().unwrap();
            let mut blocks = txn.open_table(MESSAGE_BLOCKS).unwrap();
            let mut block = blocks.get(3).unwrap().unwrap().value().to_vec();
            // The first record's length now runs past the block's end.
            block[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            blocks.insert(3, block.as_slice()).unwrap();
            drop(blocks);
            txn.commit().unwrap();
        }
        let err = read_ids(&store, &[2]).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(read_ids(&store, &[4]).unwrap(), vec![4]);
        // A page over the damaged block fails as damage too.
        let page = store.reader().unwrap().read(&ReadOp::History {
            conv: Conversation::Pair("a".into(), "b".into()),
            count: 10,
            cursor: Cursor::Latest,
        });
        assert!(matches!(page, Err(StoreError::Corrupt { .. })), "{page:?}");
        store.execute(&[append(5)]).unwrap();
        assert_eq!(read_ids(&store, &[4, 5]).unwrap(), vec![4, 5]);
        drop(store);
        let (store, snap) = RedbStore::open(&path).unwrap();
        assert_eq!(snap.next_id, 6);
        assert_eq!(read_ids(&store, &[5]).unwrap(), vec![5]);
        drop(store);
        // The check names the block.
        let report = super::super::backup::check(&path).unwrap();
        let all = report.problems.join("\n");
        assert!(all.contains("the message block ending at 3"), "{all}");
        assert_eq!(report.summary.messages, 2);
    }
}
