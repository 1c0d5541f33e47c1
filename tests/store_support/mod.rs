//! Shared by the store tests: one harness that drives either store through the same calls, and
//! record builders.
#![allow(dead_code)] // each test file uses its own part of the harness

use chatd::store::memory::MemoryStore;
use chatd::store::redb::RedbStore;
use chatd::store::{
    AccountRecord, Conversation, Cursor, HistoryPage, MemberRecord, MessageRecord, MsgId, Role,
    RoomId, RoomRecord, Snapshot, Store, StoreOp, StoreReader, StoreReply, To,
};
use tempfile::TempDir;

fn lagged(store: RedbStore, lag: Option<usize>) -> RedbStore {
    match lag {
        Some(lag) => store.with_index_lag(lag),
        None => store,
    }
}

/// A store under test. The redb variant's snapshot is read by closing and reopening the file, so
/// every snapshot comparison is also a reopen test.
pub enum Subject {
    Memory(MemoryStore),
    Redb {
        store: Option<RedbStore>,
        dir: TempDir,
        /// Messages past the conversation index's watermark that make it index them; `None`:
        /// the default (`INDEX_LAG`).
        lag: Option<usize>,
    },
}

impl Subject {
    pub fn memory() -> Subject {
        Subject::Memory(MemoryStore::new().0)
    }

    pub fn redb() -> Subject {
        Subject::redb_with_lag(None)
    }

    /// A redb store that indexes its conversations every `lag` messages (see
    /// `RedbStore::with_index_lag`), also when reopened.
    pub fn redb_with_lag(lag: Option<usize>) -> Subject {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, snap) = RedbStore::open(&dir.path().join("t.redb")).expect("open");
        assert_eq!(
            snap,
            Snapshot {
                next_id: 1,
                next_room_id: 1,
                ..Snapshot::default()
            }
        );
        Subject::Redb {
            store: Some(lagged(store, lag)),
            dir,
            lag,
        }
    }

    /// Both kinds, for tests that must hold for each.
    pub fn each() -> [Subject; 2] {
        [Subject::memory(), Subject::redb()]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Subject::Memory(_) => "memory",
            Subject::Redb { .. } => "redb",
        }
    }

    fn store(&mut self) -> &mut dyn Store {
        match self {
            Subject::Memory(s) => s,
            Subject::Redb { store, .. } => store.as_mut().expect("open"),
        }
    }

    pub fn exec(&mut self, ops: &[StoreOp]) -> Vec<StoreReply> {
        let replies = self.store().execute(ops).expect("execute");
        assert_eq!(replies.len(), ops.len());
        replies
    }

    /// A read-only view of what is committed now (see `Store::reader`).
    pub fn reader(&mut self) -> Box<dyn StoreReader> {
        self.store().reader().expect("reader")
    }

    pub fn exec1(&mut self, op: StoreOp) -> StoreReply {
        self.exec(&[op]).pop().expect("one reply")
    }

    pub fn snapshot(&mut self) -> Snapshot {
        match self {
            Subject::Memory(s) => s.snapshot(),
            Subject::Redb { store, dir, lag } => {
                drop(store.take());
                let (reopened, snap) = RedbStore::open(&dir.path().join("t.redb")).expect("reopen");
                *store = Some(lagged(reopened, *lag));
                snap
            }
        }
    }

    /// One page, with its messages read by id as the server reads them (part by part).
    pub fn history(&mut self, conv: &Conversation, count: u32, cursor: Cursor) -> Page {
        let page = match self.exec1(StoreOp::History {
            conv: conv.clone(),
            count,
            cursor,
        }) {
            StoreReply::History(page) => page,
            other => panic!("History answered {other:?}"),
        };
        Page {
            messages: self.messages(&page.ids),
            older: page.older,
            newer: page.newer,
        }
    }

    /// The messages with these ids.
    pub fn messages(&mut self, ids: &[MsgId]) -> Vec<MessageRecord> {
        match self.exec1(StoreOp::ReadMessages { ids: ids.to_vec() }) {
            StoreReply::Messages(msgs) => msgs,
            other => panic!("ReadMessages answered {other:?}"),
        }
    }

    /// Reads and clears the account's backlog, as a login does.
    pub fn backlog(&mut self, user: &str) -> Vec<MessageRecord> {
        let ids = match self.exec1(StoreOp::ReadBacklog {
            user: user.to_owned(),
        }) {
            StoreReply::Backlog(ids) => ids,
            other => panic!("ReadBacklog answered {other:?}"),
        };
        if let Some(&upto) = ids.last() {
            self.exec1(StoreOp::ClearBacklog {
                user: user.to_owned(),
                upto,
            });
        }
        self.messages(&ids)
    }
}

/// A page of a conversation with its messages (the store answers with their ids, see
/// [`Subject::history`]).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Page {
    pub messages: Vec<MessageRecord>,
    pub older: Option<MsgId>,
    pub newer: Option<MsgId>,
}

impl Page {
    /// The store's form of this page.
    pub fn of_ids(&self) -> HistoryPage {
        HistoryPage {
            ids: self.messages.iter().map(|m| m.id).collect(),
            older: self.older,
            newer: self.newer,
        }
    }
}

/// A room record, public, without a topic.
pub fn room(name: &str) -> RoomRecord {
    RoomRecord {
        name: name.to_owned(),
        created_ms: 5,
        private: false,
        topic: None,
    }
}

/// A member with a role, joined after message `since`, marker there too.
pub fn member(role: Role, since: MsgId) -> MemberRecord {
    MemberRecord {
        role,
        since,
        read_id: since,
        read_seq: 0,
    }
}

/// A room message appended as the room's `seq`-th.
pub fn post(id: MsgId, from: &str, room: RoomId, name: &str, seq: u64) -> StoreOp {
    StoreOp::AppendRoomMessage {
        msg: msg(id, from, To::Room(name.to_owned()), "in the room"),
        room,
        seq,
    }
}

pub fn account(name: &str, created_ms: i64) -> AccountRecord {
    AccountRecord {
        name: name.to_owned(),
        phc: format!("$scrypt$ln=4,r=8,p=1${name}$hash"),
        created_ms,
    }
}

pub fn msg(id: MsgId, from: &str, to: To, text: &str) -> MessageRecord {
    MessageRecord {
        id,
        time_ms: 1_700_000_000_000 + id as i64,
        from: from.to_owned(),
        to,
        text: text.to_owned(),
    }
}

pub fn append(m: MessageRecord, pending_for: &[&str]) -> StoreOp {
    StoreOp::AppendMessage {
        msg: m,
        pending_for: pending_for.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn user(name: &str) -> To {
    To::User(name.to_owned())
}

pub fn group(names: &[&str]) -> To {
    To::Group(names.iter().map(|s| s.to_string()).collect())
}

pub fn pair(a: &str, b: &str) -> Conversation {
    Conversation::Pair(a.to_owned(), b.to_owned())
}

pub fn ids(msgs: &[MessageRecord]) -> Vec<MsgId> {
    msgs.iter().map(|m| m.id).collect()
}
