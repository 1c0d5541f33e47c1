//! Copies and checks of a database file: the live backup (a copy made from one read transaction,
//! while the server goes on) and the offline check (`chatd check`), which says what is wrong.
//!
//! A backup is a logical copy: every table is read through one read transaction, which sees one
//! commit and nothing later however long the copy takes, and written into a new database file in
//! one write transaction, committed durably, then renamed into place. So the copy holds exactly the
//! commits made before the backup began (everything acknowledged by then), and a partial copy never
//! has the final name. The source's tables are listed and counted, and the copy must hold the same
//! tables with as many entries each: a table added to the layout but not to the copy fails the
//! backup instead of being left out silently.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use redb::{
    Builder, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle,
};

use super::codec;
use super::contain::contain;
use super::conv_index;
use super::keys::{key_of, message_conversation_keys};
use super::redb::{tables, SCHEMA_VERSION, SCHEMA_VERSION_KEY, WATERMARK_KEY};
use super::StoreError;

/// What a copy or a check found: the counts an operator recognises.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Accounts.
    pub accounts: u64,
    /// Messages in the log.
    pub messages: u64,
    /// The largest message id (0 when there is none): new messages get larger ones.
    pub last_id: u64,
    /// The file's size in bytes.
    pub bytes: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} accounts, {} messages, last message id {}, {} bytes",
            self.accounts, self.messages, self.last_id, self.bytes
        )
    }
}

/// Copies the view of `txn` into a new database at `to` (which must not exist), and checks that
/// every table arrived whole. `to` appears only once the copy is complete and durable.
pub(super) fn copy(txn: &ReadTransaction, to: &Path, source: &Path) -> Result<Summary, StoreError> {
    let fail = |e: String| StoreError::Backup {
        path: to.to_owned(),
        why: e,
    };
    if to.exists() {
        return Err(fail("the file exists already; give a new name".into()));
    }
    let partial = partial_name(to);
    let _ = std::fs::remove_file(&partial);
    // A damaged page of the source may make redb panic (see `contain`): the backup then fails
    // like any other, its partial file removed, and the reader thread goes on.
    let result = contain(|| -> Result<Summary, String> {
        let dst = Builder::new()
            .create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let mut wtxn = dst.begin_write().map_err(|e| e.to_string())?;
        wtxn.set_durability(Durability::Immediate)
            .map_err(|e| e.to_string())?;
        tables::copy_all(txn, &wtxn).map_err(|e| format!("copying: {e}"))?;
        wtxn.commit()
            .map_err(|e| format!("committing the copy: {e}"))?;
        // Every table of the source, as many entries each.
        let want = table_sizes(txn).map_err(|e| format!("reading {}: {e}", source.display()))?;
        let got = table_sizes(&dst.begin_read().map_err(|e| e.to_string())?)
            .map_err(|e| format!("reading the copy: {e}"))?;
        if want != got {
            return Err(format!(
                "the copy does not hold what the database holds (tables and entries: {want:?} \
                 against {got:?})"
            ));
        }
        drop(dst);
        std::fs::rename(&partial, to).map_err(|e| format!("renaming it into place: {e}"))?;
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The new name is durable too.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let messages = tables::message_count(txn)?;
        let accounts = want.get("accounts").copied().unwrap_or(0);
        Ok(Summary {
            accounts,
            messages,
            last_id: tables::last_id(txn).map_err(|e| e.to_string())?,
            bytes: std::fs::metadata(to).map(|m| m.len()).unwrap_or(0),
        })
    })
    .unwrap_or_else(|panic| {
        Err(format!(
            "redb failed while reading {} ({panic}); the file is damaged",
            source.display()
        ))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map_err(fail)
}

/// Where a copy is written before it is complete.
fn partial_name(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    to.with_file_name(name)
}

/// Every table's name and entry count.
fn table_sizes(txn: &ReadTransaction) -> Result<BTreeMap<String, u64>, redb::Error> {
    let mut sizes = BTreeMap::new();
    for handle in txn.list_tables()? {
        let name = handle.name().to_owned();
        let table = txn.open_untyped_table(handle)?;
        sizes.insert(name, table.len()?);
    }
    Ok(sizes)
}

/// The most problems a check lists; past it, it says how many more there were.
const MAX_PROBLEMS: usize = 50;

/// What `chatd check` found: the counts, and what is wrong (empty when nothing is).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The counts.
    pub summary: Summary,
    /// One sentence per problem, at most `MAX_PROBLEMS` (50).
    pub problems: Vec<String>,
    /// Problems found beyond those listed.
    pub more: usize,
}

impl Report {
    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        } else {
            self.more += 1;
        }
    }
}

/// Checks the database at `path`, which no server may have open: redb's own page checksums, then
/// every record and every index entry. An error is a file that cannot be opened at all (missing,
/// locked by a running server, not a database); damage inside is reported in the [`Report`].
pub fn check(path: &Path) -> Result<Report, StoreError> {
    if !path.exists() {
        return Err(StoreError::Backup {
            path: path.to_owned(),
            why: "no such file".into(),
        });
    }
    // Some damaged pages make redb panic rather than return `Corrupted` (see `contain`): such a
    // file is reported as damaged, like any other, not with a panic's backtrace.
    contain(|| check_open(path)).unwrap_or_else(|panic| {
        let mut report = Report::default();
        report.problem(format!("redb failed while reading the file ({panic})"));
        report.summary.bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(report)
    })
}

fn check_open(path: &Path) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let mut db = match Database::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(m))) => {
            report.problem(format!("redb cannot read the file: {m}"));
            return Ok(report);
        }
        Err(e) => {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source: Box::new(e.into()),
            })
        }
    };
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => report.problem(
            "redb found damaged pages and repaired them (a crash while writing?); check again"
                .into(),
        ),
        Err(e) => {
            report.problem(format!("redb's integrity check failed: {e}"));
            return Ok(report);
        }
    }
    let txn = db.begin_read().map_err(|e| StoreError::Read {
        path: path.to_owned(),
        source: Box::new(e.into()),
    })?;
    if let Err(e) = check_tables(&txn, &mut report) {
        report.problem(format!("a table cannot be read: {e}"));
    }
    report.summary.bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(report)
}

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn check_tables(txn: &ReadTransaction, r: &mut Report) -> Result<(), redb::Error> {
    let names: BTreeSet<String> = txn.list_tables()?.map(|h| h.name().to_owned()).collect();
    for want in tables::NAMES {
        if !names.contains(*want) {
            r.problem(format!("table {want} is missing"));
        }
    }
    if !names.contains("meta") {
        return Ok(());
    }
    match txn
        .open_table(META)?
        .get(SCHEMA_VERSION_KEY)?
        .map(|v| v.value())
    {
        Some(SCHEMA_VERSION) => {}
        Some(v) => r.problem(format!(
            "table layout version {v}; this build reads {SCHEMA_VERSION}"
        )),
        None => r.problem("no table layout version".into()),
    }
    if tables::NAMES.iter().any(|t| !names.contains(*t)) {
        return Ok(());
    }
    let t = tables::Read::open(txn)?;
    let mut accounts = BTreeSet::new();
    for entry in t.accounts.iter()? {
        let (k, v) = entry?;
        r.summary.accounts += 1;
        match codec::decode_account(v.value()) {
            Ok(a) if key_of(&a.name) == k.value() => {
                accounts.insert(k.value().to_owned());
            }
            Ok(a) => r.problem(format!(
                "account {:?} is stored under the key {:?}",
                a.name,
                k.value()
            )),
            Err(d) => r.problem(format!("account {:?}: {d}", k.value())),
        }
    }
    let watermark = t.meta.get(WATERMARK_KEY)?.map_or(0, |v| v.value());
    let mut messages = BTreeSet::new();
    let mut problems = Vec::new();
    let mut damaged_blocks = Vec::new();
    let walked = tables::each_message(
        &t,
        |id, v| {
            r.summary.messages += 1;
            r.summary.last_id = r.summary.last_id.max(id);
            match codec::decode_message(id, v) {
                Ok(m) => {
                    messages.insert(id);
                    for conv in message_conversation_keys(&m) {
                        match conv_index::contains(&t.rows, watermark, conv.as_bytes(), id) {
                            Ok(true) => {}
                            Ok(false) => problems.push(format!(
                                "message {id} is missing from the conversation index ({conv:?})"
                            )),
                            Err(e) => problems.push(format!(
                                "the conversation index of {conv:?} cannot be read at message \
                                 {id}: {e}"
                            )),
                        }
                    }
                }
                Err(d) => problems.push(format!("message {id}: {d}")),
            }
        },
        |key, d| damaged_blocks.push(format!("the message block ending at {key}: {d}")),
    );
    problems.extend(damaged_blocks);
    if let Err(e) = walked {
        problems.push(format!("the message log cannot be read: {e}"));
    }
    for problem in problems {
        r.problem(problem);
    }
    let dangling = |what: &str, key: &str, id: u64| {
        format!("the {what} of {key:?} names message {id}, which is not stored")
    };
    let mut dangling_entries = Vec::new();
    let walked = conv_index::each_entry(&t.rows, |conv, id| {
        if !messages.contains(&id) {
            dangling_entries.push(dangling(
                "conversation index",
                &String::from_utf8_lossy(conv),
                id,
            ));
        }
    });
    for problem in dangling_entries {
        r.problem(problem);
    }
    if let Err(e) = walked {
        r.problem(format!("the conversation index cannot be read: {e}"));
    }
    for entry in t.pending.iter()? {
        let (k, _) = entry?;
        let (user, id) = k.value();
        if !messages.contains(&id) {
            r.problem(dangling("offline backlog", user, id));
        }
        if !accounts.contains(user) {
            r.problem(format!(
                "an offline backlog is kept for {user:?}, which is no account"
            ));
        }
    }
    for entry in t.friendships.iter()? {
        let (k, v) = entry?;
        let (a, b) = k.value();
        let mirror = t.friendships.get((b, a))?.map(|v| v.value());
        let consistent = match (v.value(), mirror) {
            (0, Some(0)) | (1, Some(2)) | (2, Some(1)) => true,
            (x, _) if x > 2 => {
                r.problem(format!("friendship {a:?}-{b:?} has an unknown state {x}"));
                true
            }
            _ => false,
        };
        if !consistent {
            r.problem(format!(
                "friendship {a:?}-{b:?} is not stored the same way from both sides"
            ));
        }
    }
    for entry in t.blocks.iter()? {
        let (k, _) = entry?;
        let (a, b) = k.value();
        if t.blocked_by.get((b, a))?.is_none() {
            r.problem(format!(
                "the block of {b:?} by {a:?} is missing from blocked_by"
            ));
        }
    }
    for entry in t.blocked_by.iter()? {
        let (k, _) = entry?;
        let (b, a) = k.value();
        if t.blocks.get((a, b))?.is_none() {
            r.problem(format!(
                "blocked_by holds a block of {b:?} by {a:?} that blocks lacks"
            ));
        }
    }
    for entry in t.tokens.iter()? {
        let (id, v) = entry?;
        match codec::decode_token(id.value(), v.value()) {
            Ok(tok) => {
                if t.tokens_by_account
                    .get((tok.user.as_str(), id.value()))?
                    .is_none()
                {
                    r.problem(format!(
                        "token {:016x} is missing from the index by account",
                        id.value()
                    ));
                }
            }
            Err(d) => r.problem(format!("token {:016x}: {d}", id.value())),
        }
    }
    for entry in t.tokens_by_account.iter()? {
        let (k, _) = entry?;
        let (user, id) = k.value();
        if t.tokens.get(id)?.is_none() {
            r.problem(format!(
                "the token index of {user:?} names token {id:016x}, which is not stored"
            ));
        }
    }
    for entry in t.profiles.iter()? {
        let (k, v) = entry?;
        if let Err(d) = codec::decode_profile(v.value()) {
            r.problem(format!("profile of {:?}: {d}", k.value()));
        }
    }
    for entry in t.retired.iter()? {
        let (k, v) = entry?;
        match codec::decode_retired(v.value()) {
            Ok(rec) if key_of(&rec.name) != k.value() => r.problem(format!(
                "retired name {:?} is stored under the key {:?}",
                rec.name,
                k.value()
            )),
            Ok(_) => {}
            Err(d) => r.problem(format!("retired name {:?}: {d}", k.value())),
        }
    }
    let mut rooms = BTreeSet::new();
    for entry in t.rooms.iter()? {
        let (id, v) = entry?;
        match codec::decode_room(v.value()) {
            Ok(_) => {
                rooms.insert(id.value());
            }
            Err(d) => r.problem(format!("room {}: {d}", id.value())),
        }
    }
    // A deleted room's messages stay in the log: an entry needs its message, not its room.
    for entry in t.room_log.iter()? {
        let (k, _) = entry?;
        let (room, id) = k.value();
        if !messages.contains(&id) {
            r.problem(format!(
                "the log of room {room} names message {id}, which is not stored"
            ));
        }
    }
    type Decode = fn(&[u8]) -> Result<(), crate::store::Damage>;
    type ByRoom = redb::ReadOnlyTable<(u64, &'static str), &'static [u8]>;
    let lists: [(&str, &ByRoom, Decode); 3] = [
        ("membership", &t.room_members, |b| {
            codec::decode_member(b).map(drop)
        }),
        ("ban", &t.room_bans, |b| codec::decode_ban(b).map(drop)),
        ("invitation", &t.room_invites, |b| {
            codec::decode_invite(b).map(drop)
        }),
    ];
    for (what, table, decode) in lists {
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (room, user) = k.value();
            if let Err(d) = decode(v.value()) {
                r.problem(format!("the {what} of {user:?} in room {room}: {d}"));
            }
            if !rooms.contains(&room) {
                r.problem(format!(
                    "a {what} of {user:?} names room {room}, which is not stored"
                ));
            }
            if !accounts.contains(user) {
                r.problem(format!(
                    "a {what} in room {room} is held by {user:?}, which is no account"
                ));
            }
        }
    }
    for entry in t.read_markers.iter()? {
        let (k, _) = entry?;
        let (user, _) = k.value();
        if !accounts.contains(user) {
            r.problem(format!(
                "a read marker is kept for {user:?}, which is no account"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        AccountRecord, MemberRecord, MessageRecord, Role, RoomRecord, Store, StoreOp, To,
    };

    fn filled(path: &Path) {
        // A lag of 2: messages 1 and 2 are in the conversation index's rows, 3 and 4 past its
        // watermark, so both halves of the index are copied and checked.
        let (store, _) = crate::store::redb::RedbStore::open(path).unwrap();
        let mut store = store.with_index_lag(2);
        let mut ops = vec![StoreOp::CreateAccount(AccountRecord {
            name: "Ann".into(),
            phc: "h".into(),
            created_ms: 0,
        })];
        for id in 1..=3 {
            ops.push(StoreOp::AppendMessage {
                msg: MessageRecord {
                    id,
                    time_ms: 0,
                    from: "Ann".into(),
                    to: To::User("Ann".into()),
                    text: format!("m{id}"),
                },
                pending_for: vec!["ann".into()],
            });
        }
        // A room with its owner and one message: the room tables are copied and checked too.
        ops.push(StoreOp::PutRoom {
            id: 1,
            room: RoomRecord {
                name: "#r".into(),
                created_ms: 0,
                private: false,
                topic: None,
            },
        });
        ops.push(StoreOp::PutMember {
            room: 1,
            user: "ann".into(),
            member: MemberRecord {
                role: Role::Owner,
                since: 3,
                read_id: 3,
                read_seq: 0,
            },
        });
        ops.push(StoreOp::AppendRoomMessage {
            msg: MessageRecord {
                id: 4,
                time_ms: 0,
                from: "Ann".into(),
                to: To::Room("#r".into()),
                text: "in the room".into(),
            },
            room: 1,
            seq: 1,
        });
        store.write(&ops).unwrap();
    }

    #[test]
    fn a_copy_holds_every_table_and_is_never_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let (src, to) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
        filled(&src);
        let db = Database::open(&src).unwrap();
        let txn = db.begin_read().unwrap();
        let summary = copy(&txn, &to, &src).unwrap();
        assert_eq!(
            (summary.accounts, summary.messages, summary.last_id),
            (1, 4, 4)
        );
        assert_eq!(table_sizes(&txn).unwrap().len(), tables::NAMES.len());
        let again = copy(&txn, &to, &src).unwrap_err();
        assert!(again.to_string().contains("exists already"), "{again}");
        assert!(!partial_name(&to).exists());
        drop(txn);
        drop(db);
        let report = check(&to).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.summary.messages, 4);
        let copied = Database::open(&to).unwrap();
        let sizes = table_sizes(&copied.begin_read().unwrap()).unwrap();
        for table in ["rooms", "room_members", "room_log"] {
            assert_eq!(sizes.get(table), Some(&1), "{table}: {sizes:?}");
        }
    }

    /// A source whose pages turn out damaged while it is copied: the backup fails as an error
    /// naming the source (whether redb reports the damage or panics on it), and leaves no
    /// partial file behind.
    #[test]
    fn a_damaged_source_fails_the_backup_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (src, to) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
        filled(&src);
        // No cache: the copy reads its pages from the file.
        let db = Builder::new().set_cache_size(0).open(&src).unwrap();
        let txn = db.begin_read().unwrap();
        // Garbage in every page past the header, under the open read transaction.
        let mut bytes = std::fs::read(&src).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for b in bytes[4096..].iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        std::fs::write(&src, &bytes).unwrap();
        let err = copy(&txn, &to, &src).unwrap_err();
        assert!(matches!(err, StoreError::Backup { .. }), "{err:?}");
        assert!(!to.exists());
        assert!(!partial_name(&to).exists());
        // Closing the damaged source writes to it, which redb may panic on: not the backup's.
        drop(txn);
        let _ = contain(move || drop(db));
    }

    /// The check names each problem: an index entry without its message, a message missing from
    /// its conversation, a record that does not decode.
    #[test]
    fn check_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        filled(&path);
        {
            // The log as one record per entry, to damage records one by one.
            crate::store::redb::RedbStore::unblock(&path).unwrap();
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let messages: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
            let rows: TableDefinition<(&[u8], u64), &[u8]> =
                TableDefinition::new("conversation_rows");
            txn.open_table(messages).unwrap().remove(2).unwrap();
            txn.open_table(messages)
                .unwrap()
                .insert(3, [9u8, 9].as_slice())
                .unwrap();
            // A row naming message 7 alone, and message 1's row without it.
            let mut rows = txn.open_table(rows).unwrap();
            rows.insert((b"zz".as_slice(), 7), [7u8].as_slice())
                .unwrap();
            rows.insert((b"ann ann".as_slice(), 2), [2u8].as_slice())
                .unwrap();
            drop(rows);
            // A membership whose room is gone, and a room log entry without its message.
            let rooms: TableDefinition<u64, &[u8]> = TableDefinition::new("rooms");
            let room_log: TableDefinition<(u64, u64), u64> = TableDefinition::new("room_log");
            txn.open_table(rooms).unwrap().remove(1).unwrap();
            txn.open_table(room_log).unwrap().insert((1, 9), 2).unwrap();
            txn.commit().unwrap();
        }
        let report = check(&path).unwrap();
        let all = report.problems.join("\n");
        assert!(
            all.contains("the offline backlog of \"ann\" names message 2"),
            "{all}"
        );
        assert!(all.contains("message 3:"), "{all}");
        assert!(
            all.contains("message 1 is missing from the conversation index (\"ann ann\")"),
            "{all}"
        );
        assert!(
            all.contains("names message 7, which is not stored"),
            "{all}"
        );
        assert!(
            all.contains("a membership of \"ann\" names room 1, which is not stored"),
            "{all}"
        );
        assert!(
            all.contains("the log of room 1 names message 9, which is not stored"),
            "{all}"
        );
    }
}
