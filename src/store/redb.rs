//! The durable [`Store`]: one redb file holding accounts, friendships, the message log and its two
//! indexes (by conversation, and the offline backlog by account).
//!
//! This file owns the table layout and the on-disk record format. Tables are typed
//! `const TableDefinition`s:
//!
//! | table           | key                    | value                               |
//! |-----------------|------------------------|-------------------------------------|
//! | `accounts`      | lowercase name         | encoded account record              |
//! | `messages`      | message id             | encoded message record              |
//! | `conversations` | (conversation key, id) | `()`                                |
//! | `pending`       | (account key, id)      | `()`                                |
//! | `friendships`   | (a key, b key)         | a's view of b, one byte             |
//! | `meta`          | setting name           | u64 (only `schema_version` so far)  |
//!
//! A conversation key is the two account keys in ascending order joined by a space (names cannot
//! contain spaces, so the join is unambiguous), or `*` for the broadcasts. A message is indexed under
//! every conversation it belongs to: MSG under (sender, recipient), GROUP under (sender, r) for each
//! distinct recipient r, ALL under `*`.
//!
//! Records are encoded by hand (the `codec` module) rather than with a serialisation crate: the format is
//! small, it is versioned by a leading byte so it can change without a migration of the whole file,
//! and decoding never trusts a length it reads, so a damaged record is a [`StoreError::Corrupt`],
//! never a panic or a huge allocation.
//!
//! Every [`Store::execute`] batch runs in one write transaction committed with
//! [`Durability::Immediate`] (fsync before `execute` returns); an error anywhere in the batch drops
//! the transaction, so nothing of the batch is written.

use std::ops::Bound;
use std::path::Path;

use redb::{Database, Durability, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{
    key_of, Conversation, Cursor, FriendState, HistoryPage, MessageRecord, MsgId, Snapshot, Store,
    StoreError, StoreOp, StoreReply, To,
};

const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const CONVERSATIONS: TableDefinition<(&str, u64), ()> = TableDefinition::new("conversations");
const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("pending");
const FRIENDSHIPS: TableDefinition<(&str, &str), u8> = TableDefinition::new("friendships");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` key of the table layout version.
const SCHEMA_VERSION_KEY: &str = "schema_version";
/// The table layout this code reads and writes. A file with another version is refused at open
/// rather than misread.
const SCHEMA_VERSION: u64 = 1;

/// The conversation key of the ALL broadcasts.
const BROADCAST_KEY: &str = "*";

/// The index key of a conversation: `"a b"` with `a <= b`, or `"*"`.
pub(crate) fn conversation_key(conv: &Conversation) -> String {
    match conv {
        Conversation::Pair(a, b) => pair_key(a, b),
        Conversation::Broadcast => BROADCAST_KEY.to_owned(),
    }
}

fn pair_key(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo} {hi}")
}

/// Every conversation key a message is indexed under, without duplicates. Names are turned into
/// account keys here, since records carry names as registered.
pub(crate) fn message_conversation_keys(msg: &MessageRecord) -> Vec<String> {
    let from = key_of(&msg.from);
    match &msg.to {
        To::User(r) => vec![pair_key(&from, &key_of(r))],
        To::Group(rs) => {
            let mut keys: Vec<String> = rs.iter().map(|r| pair_key(&from, &key_of(r))).collect();
            keys.sort();
            keys.dedup();
            keys
        }
        To::All => vec![BROADCAST_KEY.to_owned()],
    }
}

/// The one-byte form of a friendship edge in the `friendships` table.
fn state_byte(state: FriendState) -> u8 {
    match state {
        FriendState::Friends => 0,
        FriendState::Outgoing => 1,
        FriendState::Incoming => 2,
    }
}

fn state_from_byte(b: u8) -> Result<FriendState, StoreError> {
    match b {
        0 => Ok(FriendState::Friends),
        1 => Ok(FriendState::Outgoing),
        2 => Ok(FriendState::Incoming),
        other => Err(StoreError::Corrupt(format!(
            "unknown friendship state {other}"
        ))),
    }
}

/// The record format: a format-version byte, then the fields in a fixed order. Strings are a
/// LEB128 length followed by UTF-8 bytes; times are i64 little-endian; the message id is the table
/// key and is not repeated in the value.
///
/// Version 1:
/// - account: `1, name, phc, created_ms`
/// - message: `1, time_ms, from, to, text` where `to` is a tag byte then its payload:
///   `0, name` (MSG), `1, count, name * count` (GROUP), `2` (ALL).
pub(crate) mod codec {
    use super::super::{AccountRecord, MessageRecord, MsgId, StoreError, To};

    const FORMAT_V1: u8 = 1;
    const TO_USER: u8 = 0;
    const TO_GROUP: u8 = 1;
    const TO_ALL: u8 = 2;

    pub(crate) fn encode_account(rec: &AccountRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + rec.name.len() + rec.phc.len() + 8 + 4);
        out.push(FORMAT_V1);
        put_str(&mut out, &rec.name);
        put_str(&mut out, &rec.phc);
        out.extend_from_slice(&rec.created_ms.to_le_bytes());
        out
    }

    pub(crate) fn decode_account(bytes: &[u8]) -> Result<AccountRecord, StoreError> {
        let mut r = Reader::new(bytes, "account record");
        r.version()?;
        let rec = AccountRecord {
            name: r.string()?,
            phc: r.string()?,
            created_ms: r.i64()?,
        };
        r.finish()?;
        Ok(rec)
    }

    pub(crate) fn encode_message(msg: &MessageRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + msg.from.len() + msg.text.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&msg.time_ms.to_le_bytes());
        put_str(&mut out, &msg.from);
        match &msg.to {
            To::User(name) => {
                out.push(TO_USER);
                put_str(&mut out, name);
            }
            To::Group(names) => {
                out.push(TO_GROUP);
                put_len(&mut out, names.len());
                for name in names {
                    put_str(&mut out, name);
                }
            }
            To::All => out.push(TO_ALL),
        }
        put_str(&mut out, &msg.text);
        out
    }

    pub(crate) fn decode_message(id: MsgId, bytes: &[u8]) -> Result<MessageRecord, StoreError> {
        let mut r = Reader::new(bytes, "message record");
        r.version()?;
        let time_ms = r.i64()?;
        let from = r.string()?;
        let to = match r.byte()? {
            TO_USER => To::User(r.string()?),
            TO_GROUP => {
                let n = r.len()?;
                // Every name takes at least its length byte, so a count larger than the bytes left
                // is damage; checking first keeps a bad count from reserving a huge vector.
                if n > r.remaining() {
                    return Err(r.corrupt("recipient count exceeds record size"));
                }
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(r.string()?);
                }
                To::Group(names)
            }
            TO_ALL => To::All,
            other => return Err(r.corrupt(&format!("unknown recipient tag {other}"))),
        };
        let text = r.string()?;
        r.finish()?;
        Ok(MessageRecord {
            id,
            time_ms,
            from,
            to,
            text,
        })
    }

    fn put_len(out: &mut Vec<u8>, len: usize) {
        // usize always fits u64 on the platforms Rust supports.
        let mut v = len as u64;
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(low);
                return;
            }
            out.push(low | 0x80);
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        put_len(out, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    /// A cursor over one record's bytes; every read checks what is left.
    struct Reader<'a> {
        buf: &'a [u8],
        what: &'static str,
    }

    impl<'a> Reader<'a> {
        fn new(buf: &'a [u8], what: &'static str) -> Self {
            Reader { buf, what }
        }

        fn corrupt(&self, why: &str) -> StoreError {
            StoreError::Corrupt(format!("{}: {why}", self.what))
        }

        fn remaining(&self) -> usize {
            self.buf.len()
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
            if n > self.buf.len() {
                return Err(self.corrupt("truncated"));
            }
            let (head, tail) = self.buf.split_at(n);
            self.buf = tail;
            Ok(head)
        }

        fn byte(&mut self) -> Result<u8, StoreError> {
            Ok(self.take(1)?[0])
        }

        fn version(&mut self) -> Result<(), StoreError> {
            match self.byte()? {
                FORMAT_V1 => Ok(()),
                v => Err(self.corrupt(&format!("unknown format version {v}"))),
            }
        }

        fn i64(&mut self) -> Result<i64, StoreError> {
            let mut b = [0u8; 8];
            b.copy_from_slice(self.take(8)?);
            Ok(i64::from_le_bytes(b))
        }

        fn len(&mut self) -> Result<usize, StoreError> {
            let mut v: u64 = 0;
            for shift in (0..64).step_by(7) {
                let b = self.byte()?;
                let bits = u64::from(b & 0x7f);
                if shift == 63 && bits > 1 {
                    return Err(self.corrupt("length overflows"));
                }
                v |= bits << shift;
                if b & 0x80 == 0 {
                    return usize::try_from(v).map_err(|_| self.corrupt("length overflows"));
                }
            }
            Err(self.corrupt("length overflows"))
        }

        fn string(&mut self) -> Result<String, StoreError> {
            let n = self.len()?;
            let bytes = self.take(n)?;
            match std::str::from_utf8(bytes) {
                Ok(s) => Ok(s.to_owned()),
                Err(_) => Err(self.corrupt("string is not UTF-8")),
            }
        }

        fn finish(&self) -> Result<(), StoreError> {
            if self.buf.is_empty() {
                Ok(())
            } else {
                Err(self.corrupt("trailing bytes"))
            }
        }
    }
}

/// A failure inside a transaction, before it is classified for the caller: redb's own errors
/// become [`StoreError::Open`] or [`StoreError::Commit`] depending on where they happened, while
/// damage (ours or redb's) is always [`StoreError::Corrupt`].
enum Fail {
    Redb(redb::Error),
    Store(StoreError),
}

impl Fail {
    fn into_store(self, kind: fn(String) -> StoreError) -> StoreError {
        match self {
            Fail::Redb(redb::Error::Corrupted(m)) => StoreError::Corrupt(m),
            Fail::Redb(e) => kind(e.to_string()),
            Fail::Store(e) => e,
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
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

/// The durable store. Owns the open database; dropping it closes the file.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Open the database at `path`, creating the file and its tables if missing, and read the
    /// [`Snapshot`] the core starts from.
    pub fn open(path: &Path) -> Result<(RedbStore, Snapshot), StoreError> {
        Self::open_inner(path).map_err(|f| f.into_store(StoreError::Open))
    }

    fn open_inner(path: &Path) -> Result<(RedbStore, Snapshot), Fail> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let snapshot = {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(SCHEMA_VERSION_KEY)?.map(|v| v.value());
            match stored {
                None => {
                    meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(Fail::Store(StoreError::Open(format!(
                        "unsupported schema version {other} (this build reads {SCHEMA_VERSION})"
                    ))))
                }
            }
            Tables::open(&txn)?.snapshot()?
        };
        txn.commit()?;
        Ok((RedbStore { db }, snapshot))
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

    fn execute_inner(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, Fail> {
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
            // A batch of reads only (HISTORY, empty backlogs) has nothing to make durable; skipping
            // the commit saves an fsync.
            txn.abort()?;
        }
        Ok(replies)
    }
}

impl Store for RedbStore {
    fn execute(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
        self.execute_inner(ops)
            .map_err(|f| f.into_store(StoreError::Commit))
    }
}

/// Every table, opened once for a transaction (redb allows one open handle per table).
struct Tables<'txn> {
    accounts: Table<'txn, &'static str, &'static [u8]>,
    messages: Table<'txn, u64, &'static [u8]>,
    conversations: Table<'txn, (&'static str, u64), ()>,
    pending: Table<'txn, (&'static str, u64), ()>,
    friendships: Table<'txn, (&'static str, &'static str), u8>,
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
            dirty: false,
        })
    }

    fn snapshot(&self) -> Result<Snapshot, Fail> {
        let mut snap = Snapshot {
            next_id: 1,
            ..Snapshot::default()
        };
        for entry in self.accounts.iter()? {
            let (key, value) = entry?;
            let rec = codec::decode_account(value.value())?;
            if key_of(&rec.name) != key.value() {
                return Err(StoreError::Corrupt(format!(
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
        Ok(snap)
    }

    fn apply(&mut self, op: &StoreOp) -> Result<StoreReply, Fail> {
        match op {
            StoreOp::CreateAccount(rec) => {
                self.accounts.insert(
                    key_of(&rec.name).as_str(),
                    codec::encode_account(rec).as_slice(),
                )?;
                self.dirty = true;
                Ok(StoreReply::Done)
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
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::AddPending { user, id } => {
                self.pending.insert((user.as_str(), *id), ())?;
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::TakeBacklog { user } => self.take_backlog(user),
            StoreOp::SetFriendship { a, b, state } => {
                match state {
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
                }
                self.dirty = true;
                Ok(StoreReply::Done)
            }
            StoreOp::History {
                conv,
                count,
                cursor,
            } => Ok(StoreReply::History(self.history(
                &conversation_key(conv),
                *count,
                *cursor,
            )?)),
        }
    }

    fn take_backlog(&mut self, user: &str) -> Result<StoreReply, Fail> {
        let mut ids = Vec::new();
        for entry in self.pending.range((user, 0u64)..=(user, u64::MAX))? {
            ids.push(entry?.0.value().1);
        }
        let mut messages = Vec::with_capacity(ids.len());
        for &id in &ids {
            self.pending.remove((user, id))?;
            self.dirty = true;
            match self.messages.get(id)? {
                Some(bytes) => messages.push(codec::decode_message(id, bytes.value())?),
                // The index is the caller's to fill (AddPending names an id it says is stored);
                // an entry without its message cannot be delivered, and keeping it would fail
                // every later login of this account, so it is dropped.
                None => log::warn!(
                    "offline backlog of {user:?} named message {id}, which is not stored"
                ),
            }
        }
        Ok(StoreReply::Backlog(messages))
    }

    fn history(&self, conv: &str, count: u32, cursor: Cursor) -> Result<HistoryPage, Fail> {
        let lo = (conv, 0u64);
        let hi = (conv, u64::MAX);
        let take = usize::try_from(count).unwrap_or(usize::MAX);
        let mut ids = Vec::new();
        match cursor {
            Cursor::Latest => {
                for entry in self.conversations.range(lo..=hi)?.rev().take(take) {
                    ids.push(entry?.0.value().1);
                }
                ids.reverse();
            }
            Cursor::Before(x) => {
                for entry in self.conversations.range(lo..(conv, x))?.rev().take(take) {
                    ids.push(entry?.0.value().1);
                }
                ids.reverse();
            }
            Cursor::After(x) => {
                let range = (Bound::Excluded((conv, x)), Bound::Included(hi));
                for entry in self.conversations.range(range)?.take(take) {
                    ids.push(entry?.0.value().1);
                }
            }
        }
        let (older, newer) = match (ids.first(), ids.last()) {
            (Some(&min), Some(&max)) => (
                self.any_below(conv, min)?.then_some(min),
                self.any_above(conv, max)?.then_some(max),
            ),
            _ => match cursor {
                Cursor::Latest => (None, None),
                // Nothing below x; if anything from x up exists, After(x - 1) shows it.
                Cursor::Before(x) => (None, self.any_from(conv, x)?.then(|| x.saturating_sub(1))),
                // Nothing above x; if anything up to x exists, Before(x + 1) shows it.
                Cursor::After(x) => (self.any_up_to(conv, x)?.then(|| x.saturating_add(1)), None),
            },
        };
        let mut messages = Vec::with_capacity(ids.len());
        for id in ids {
            match self.messages.get(id)? {
                Some(bytes) => messages.push(codec::decode_message(id, bytes.value())?),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "conversation {conv:?} names message {id}, which is not stored"
                    ))
                    .into())
                }
            }
        }
        Ok(HistoryPage {
            messages,
            older,
            newer,
        })
    }

    /// Whether the conversation holds an id `< id`.
    fn any_below(&self, conv: &str, id: MsgId) -> Result<bool, Fail> {
        Ok(self
            .conversations
            .range((conv, 0u64)..(conv, id))?
            .next()
            .is_some())
    }

    /// Whether the conversation holds an id `> id`.
    fn any_above(&self, conv: &str, id: MsgId) -> Result<bool, Fail> {
        let range = (
            Bound::Excluded((conv, id)),
            Bound::Included((conv, u64::MAX)),
        );
        Ok(self.conversations.range(range)?.next().is_some())
    }

    /// Whether the conversation holds an id `>= id`.
    fn any_from(&self, conv: &str, id: MsgId) -> Result<bool, Fail> {
        Ok(self
            .conversations
            .range((conv, id)..=(conv, u64::MAX))?
            .next()
            .is_some())
    }

    /// Whether the conversation holds an id `<= id`.
    fn any_up_to(&self, conv: &str, id: MsgId) -> Result<bool, Fail> {
        Ok(self
            .conversations
            .range((conv, 0u64)..=(conv, id))?
            .next()
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountRecord, MessageRecord};

    fn sample_messages() -> Vec<MessageRecord> {
        let m = |id, to, text: &str| MessageRecord {
            id,
            time_ms: 1_700_000_000_123,
            from: "Alice".into(),
            to,
            text: text.into(),
        };
        vec![
            m(1, To::User("bob".into()), "hello"),
            m(
                2,
                To::Group(vec!["Bob".into(), "carol".into(), "BOB".into()]),
                "to you both",
            ),
            m(3, To::Group(vec![]), ""),
            m(4, To::All, "ünïcödé and spaces \u{1F600}"),
            m(u64::MAX, To::User(String::new()), &"x".repeat(5000)),
            MessageRecord {
                time_ms: i64::MIN,
                ..m(5, To::All, "min")
            },
            MessageRecord {
                time_ms: -1,
                ..m(6, To::All, "neg")
            },
        ]
    }

    fn sample_accounts() -> Vec<AccountRecord> {
        vec![
            AccountRecord {
                name: "Alice".into(),
                phc: "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA".into(),
                created_ms: 1,
            },
            AccountRecord {
                name: String::new(),
                phc: String::new(),
                created_ms: i64::MAX,
            },
            AccountRecord {
                name: "a".repeat(300),
                phc: "p".repeat(200),
                created_ms: i64::MIN,
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        for m in sample_messages() {
            let bytes = codec::encode_message(&m);
            assert_eq!(bytes[0], 1, "format version first");
            assert_eq!(codec::decode_message(m.id, &bytes).unwrap(), m);
        }
        for a in sample_accounts() {
            assert_eq!(
                codec::decode_account(&codec::encode_account(&a)).unwrap(),
                a
            );
        }
    }

    /// Pins version 1 of the format: a change here is a change of what is on users' disks.
    #[test]
    fn format_version_1_bytes() {
        let m = MessageRecord {
            id: 9,
            time_ms: 0x0102,
            from: "al".into(),
            to: To::Group(vec!["b".into(), "c".into()]),
            text: "hi".into(),
        };
        assert_eq!(
            codec::encode_message(&m),
            [1, 2, 1, 0, 0, 0, 0, 0, 0, 2, b'a', b'l', 1, 2, 1, b'b', 1, b'c', 2, b'h', b'i']
        );
        let a = AccountRecord {
            name: "Al".into(),
            phc: "p".into(),
            created_ms: -1,
        };
        assert_eq!(
            codec::encode_account(&a),
            [1, 2, b'A', b'l', 1, b'p', 255, 255, 255, 255, 255, 255, 255, 255]
        );
        // Lengths of 128 bytes and more take several length bytes.
        let long = MessageRecord {
            to: To::All,
            text: "t".repeat(300),
            ..m
        };
        let bytes = codec::encode_message(&long);
        assert_eq!(&bytes[12..15], &[2, 0xac, 0x02]);
        assert_eq!(codec::decode_message(9, &bytes).unwrap(), long);
    }

    #[test]
    fn truncated_or_extended_records_are_corrupt() {
        for m in sample_messages() {
            let bytes = codec::encode_message(&m);
            for len in 0..bytes.len() {
                assert!(
                    matches!(
                        codec::decode_message(m.id, &bytes[..len]),
                        Err(StoreError::Corrupt(_))
                    ),
                    "{len}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                codec::decode_message(m.id, &longer),
                Err(StoreError::Corrupt(_))
            ));
        }
        for a in sample_accounts() {
            let bytes = codec::encode_account(&a);
            for len in 0..bytes.len() {
                assert!(
                    matches!(
                        codec::decode_account(&bytes[..len]),
                        Err(StoreError::Corrupt(_))
                    ),
                    "{len}"
                );
            }
        }
    }

    #[test]
    fn bad_versions_tags_counts_and_utf8_are_corrupt() {
        let good = codec::encode_message(&sample_messages()[0]);
        let corrupt =
            |bytes: &[u8]| matches!(codec::decode_message(1, bytes), Err(StoreError::Corrupt(_)));
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(corrupt(&v2));
        let mut tag = good.clone();
        tag[1 + 8 + 1 + 5] = 7; // after version, time, "Alice"
        assert!(corrupt(&tag));
        let mut utf8 = good.clone();
        utf8[1 + 8 + 1] = 0xff;
        assert!(corrupt(&utf8));
        // A group claiming 2^62 recipients must fail fast, not try to reserve them.
        let mut huge = vec![1u8];
        huge.extend_from_slice(&0i64.to_le_bytes());
        huge.extend_from_slice(&[1, b'a', 1]);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        assert!(corrupt(&huge));
        // A length of more than 64 bits.
        let mut overlong = vec![1u8];
        overlong.extend_from_slice(&0i64.to_le_bytes());
        overlong.extend_from_slice(&[0xff; 11]);
        assert!(corrupt(&overlong));
        assert!(matches!(
            codec::decode_account(&[1, 0, 0, 1, 2, 3]),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Random damage never panics: every mutated record either decodes to something that round
    /// trips, or is reported as corrupt.
    #[test]
    fn random_damage_is_decoded_or_reported() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut decoded = 0;
        let mut rejected = 0;
        for m in sample_messages() {
            let bytes = codec::encode_message(&m);
            for _ in 0..2000 {
                let mut damaged = bytes.clone();
                for _ in 0..=(next() % 3) {
                    let i = (next() % damaged.len() as u64) as usize;
                    damaged[i] ^= (next() % 255 + 1) as u8;
                }
                match codec::decode_message(m.id, &damaged) {
                    Ok(rec) => {
                        decoded += 1;
                        assert_eq!(
                            codec::decode_message(m.id, &codec::encode_message(&rec)).unwrap(),
                            rec
                        );
                    }
                    Err(StoreError::Corrupt(_)) => rejected += 1,
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }
        // Both outcomes happen: flips inside text bytes decode, flips in lengths do not.
        assert!(
            decoded > 0 && rejected > 0,
            "{decoded} decoded, {rejected} rejected"
        );
    }

    #[test]
    fn conversation_keys_are_normalised() {
        let pair = |a: &str, b: &str| conversation_key(&Conversation::Pair(a.into(), b.into()));
        assert_eq!(pair("bob", "alice"), "alice bob");
        assert_eq!(pair("alice", "bob"), "alice bob");
        assert_eq!(pair("al", "al"), "al al");
        assert_eq!(conversation_key(&Conversation::Broadcast), "*");
        let msg = |to| MessageRecord {
            id: 1,
            time_ms: 0,
            from: "Carol".into(),
            to,
            text: String::new(),
        };
        assert_eq!(
            message_conversation_keys(&msg(To::User("ALICE".into()))),
            ["alice carol"]
        );
        assert_eq!(
            message_conversation_keys(&msg(To::Group(vec![
                "dave".into(),
                "Alice".into(),
                "DAVE".into(),
                "carol".into()
            ]))),
            ["alice carol", "carol carol", "carol dave"]
        );
        assert_eq!(message_conversation_keys(&msg(To::All)), ["*"]);
    }

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
                StoreOp::TakeBacklog { user: "b".into() },
                StoreOp::History {
                    conv: Conversation::Pair("y".into(), "x".into()),
                    count: 5,
                    cursor: Cursor::Latest,
                },
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
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
            Err(StoreError::Corrupt(_))
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
            Err(StoreError::Corrupt(_))
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
            Err(StoreError::Corrupt(_))
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
            .insert(SCHEMA_VERSION_KEY, 2)
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        match RedbStore::open(&path) {
            Err(StoreError::Open(e)) => assert!(e.contains("schema version 2"), "{e}"),
            other => panic!("{:?}", other.map(|(_, s)| s)),
        }
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
            matches!(err, StoreError::Open(_) | StoreError::Corrupt(_)),
            "{err}"
        );
    }

    #[test]
    fn an_open_database_cannot_be_opened_twice() {
        let (_dir, path) = temp_db();
        let (_store, _) = RedbStore::open(&path).unwrap();
        assert!(matches!(RedbStore::open(&path), Err(StoreError::Open(_))));
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
