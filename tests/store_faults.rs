//! Faults of the store as clients see them, through the simulator: damaged records and failing
//! writes degrade the service; they never stop the server.

use chatd::sim::Sim;
use chatd::store::memory::MemoryStore;
use chatd::store::{
    Damage, MessageRecord, MsgId, ReadOp, Store, StoreError, StoreOp, StoreReader, StoreReply,
};

/// A memory store in which the message with id `bad` no longer decodes, read the way the redb store
/// reads a record it cannot decode: a page holding it fails as damaged; a backlog, or a read by id,
/// leaves it out.
struct DamagedRecord {
    inner: MemoryStore,
    bad: MsgId,
}

impl Store for DamagedRecord {
    fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
        self.inner.write(ops)
    }

    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
        Ok(Box::new(DamagedReader {
            inner: self.inner.reader()?,
            bad: self.bad,
        }))
    }
}

struct DamagedReader {
    inner: Box<dyn StoreReader>,
    bad: MsgId,
}

impl StoreReader for DamagedReader {
    fn read(&self, op: &ReadOp) -> Result<StoreReply, StoreError> {
        Ok(match self.inner.read(op)? {
            StoreReply::History(page) if page.ids.contains(&self.bad) => {
                return Err(StoreError::Corrupt {
                    path: "damaged.redb".into(),
                    source: Box::new(Damage::new(format!(
                        "message record {}: truncated",
                        self.bad
                    ))),
                })
            }
            StoreReply::Backlog(ids) => {
                StoreReply::Backlog(ids.into_iter().filter(|id| *id != self.bad).collect())
            }
            StoreReply::Messages(msgs) => StoreReply::Messages(
                msgs.into_iter()
                    .filter(|m: &MessageRecord| m.id != self.bad)
                    .collect(),
            ),
            other => other,
        })
    }
}

fn sim_with_damaged(bad: MsgId) -> Sim {
    let (inner, snapshot) = MemoryStore::new();
    Sim::with_store(Box::new(DamagedRecord { inner, bad }), snapshot)
}

/// The failure this guards against: a HISTORY that reads a record that does not decode stopped the
/// whole server (and did again after every restart), so one damaged record was a remote kill
/// switch. Now that one answer is INTERNAL_ERROR, and everything else goes on.
#[test]
fn a_damaged_record_fails_one_history_and_nothing_else() {
    let mut s = sim_with_damaged(2);
    s.connect("a");
    s.connect("b");
    s.send("a", "REGISTER alice password1");
    s.send("a", "REGISTER bob password2");
    s.send("a", "REGISTER carol password3");
    s.send("a", "LOGIN alice password1");
    s.send("b", "LOGIN bob password2");
    s.send("a", "MSG bob one");
    s.send("a", "MSG bob two");
    s.send("a", "MSG carol three");
    s.output("a");
    s.output("b");

    s.send("a", "@h HISTORY bob");
    let out = s.output("a");
    assert!(
        out.starts_with("FAIL @h HISTORY INTERNAL_ERROR "),
        "the damaged page: {out}"
    );
    assert!(!s.is_closed("a") && !s.is_closed("b"));
    // Another conversation reads as usual, and the server still writes and delivers.
    s.send("a", "HISTORY carol");
    assert!(
        s.output("a")
            .ends_with("OK HISTORY carol 1 BEFORE - AFTER -\n"),
        "another conversation"
    );
    s.send("a", "MSG bob four");
    assert_eq!(s.output("a"), "OK MSG 4 DELIVERED\n");
    assert!(s.output("b").contains(" alice bob four\n"));
    // A page that does not reach the damaged message is fine too.
    s.send("b", "HISTORY alice 1");
    assert!(s
        .output("b")
        .ends_with("OK HISTORY alice 1 BEFORE 4 AFTER -\n"));
}

/// A damaged message in the offline backlog costs that message, not the login: the LOGIN succeeds
/// and ends with BACKLOG-END, and the connection works.
#[test]
fn a_damaged_backlog_still_ends_the_login() {
    let mut s = sim_with_damaged(1);
    s.connect("a");
    s.send("a", "REGISTER alice password1");
    s.send("a", "REGISTER bob password2");
    s.send("a", "LOGIN alice password1");
    s.send("a", "MSG bob kept");
    s.connect("b");
    s.output("b");
    s.send("b", "LOGIN bob password2");
    s.send("b", "PING after");
    let out = s.output("b");
    assert!(out.starts_with("OK LOGIN bob\n"), "{out}");
    assert!(out.contains("BACKLOG-END "), "{out}");
    assert!(out.ends_with("PONG after\nOK PING\n"), "{out}");
    assert!(!s.is_closed("a") && !s.is_closed("b"));
}

/// A memory store whose writes fail while `full` is set, as a full disk makes redb's fail.
struct FullDisk {
    inner: MemoryStore,
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Store for FullDisk {
    fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
        if self.full.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Write {
                path: "full.redb".into(),
                source: Box::new(redb::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::StorageFull,
                ))),
            });
        }
        self.inner.write(ops)
    }

    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
        self.inner.reader()
    }
}

/// The failure this guards against: a failed commit stopped the server (and, on a disk that stayed
/// full, again after every restart), and nothing could be read meanwhile. Now the commands being
/// committed wait, new writes are refused with STORAGE_UNAVAILABLE, reads and logins go on, and
/// when writes work again the waiting commands get their answers, in order, and nothing
/// acknowledged is lost.
#[test]
fn failing_writes_refuse_new_writes_serve_reads_and_resume_by_themselves() {
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (inner, snapshot) = MemoryStore::new();
    let store = FullDisk {
        inner,
        full: full.clone(),
    };
    let mut s = Sim::with_store(Box::new(store), snapshot);
    s.connect("a");
    s.connect("a2");
    s.connect("b");
    s.connect("c");
    for (name, pw) in [
        ("alice", "password1"),
        ("bob", "password2"),
        ("carol", "password3"),
    ] {
        s.send("a", &format!("REGISTER {name} {pw}"));
    }
    s.send("a", "LOGIN alice password1");
    s.send("a", "MSG carol kept before the disk filled");
    s.send("a2", "LOGIN alice password1");
    s.send("b", "LOGIN bob password2");
    s.send("a", "MSG bob one");
    for c in ["a", "a2", "b", "c"] {
        s.output(c);
    }

    full.store(true, std::sync::atomic::Ordering::Relaxed);
    // A MSG whose commit fails waits for it; so do the commands after it on that connection,
    // a HISTORY among them (it must see the MSG).
    s.send("a", "@t MSG bob two");
    s.send("a", "@h HISTORY bob");
    assert_eq!(s.output("a"), "", "nothing is answered before its commit");
    assert!(s.core().store_failing());
    // bob has it already: a message goes to its recipients as it is accepted, and its OK waits
    // for the commit (spec 6.1).
    let b = s.output("b");
    assert!(
        b.starts_with("MESSAGE 3 ") && b.ends_with(" alice bob two\n"),
        "{b}"
    );
    // New writes are refused at once, on every connection.
    s.send("a2", "@m MSG bob three");
    s.send("a2", "@f FRIEND ADD bob");
    s.send("a2", "@l FRIEND LIST");
    let a2 = s.output("a2");
    assert!(a2.starts_with("FAIL @m MSG STORAGE_UNAVAILABLE "), "{a2}");
    assert!(a2.contains("\nFAIL @f FRIEND STORAGE_UNAVAILABLE "), "{a2}");
    assert!(a2.ends_with("OK @l FRIEND LIST 0\n"), "{a2}");
    s.send("c", "REGISTER dave password4");
    assert!(s
        .output("c")
        .starts_with("FAIL REGISTER STORAGE_UNAVAILABLE "));
    // Reads and logins go on: bob reads what was committed; carol logs in, and her backlog waits
    // for a login when writes work again (delivering it must commit its removal first).
    s.send("b", "HISTORY alice");
    let b = s.output("b");
    assert!(
        b.contains(" alice bob one\n") && !b.contains(" two\n"),
        "{b}"
    );
    assert!(b.ends_with("OK HISTORY alice 1 BEFORE - AFTER -\n"), "{b}");
    s.send("c", "LOGIN carol password3");
    assert_eq!(s.output("c"), "OK LOGIN carol\nBACKLOG-END 0\n");
    // Still failing: nothing changes.
    s.retry_store();
    assert_eq!(s.output("a"), "");

    full.store(false, std::sync::atomic::Ordering::Relaxed);
    s.retry_store();
    assert!(!s.core().store_failing());
    let a = s.output("a");
    assert!(a.starts_with("OK @t MSG 3 DELIVERED\n"), "{a}");
    assert!(
        a.contains(" alice bob two\n"),
        "the waiting HISTORY sees the MSG: {a}"
    );
    assert!(a.ends_with("OK @h HISTORY bob 2 BEFORE - AFTER -\n"), "{a}");
    assert_eq!(s.output("b"), "", "bob had it before the commit, once");
    s.send("a2", "MSG bob four");
    assert_eq!(s.output("a2"), "OK MSG 4 DELIVERED\n");
    // carol's backlog was kept, and a later login delivers it.
    s.connect("c2");
    s.output("c2");
    s.send("c2", "LOGIN carol password3");
    assert!(s
        .output("c2")
        .ends_with(" alice carol kept before the disk filled\nBACKLOG-END 1\n"));
}

/// The account commands while writes fail: those that change something are refused with
/// STORAGE_UNAVAILABLE before any password is checked, those that only show something work, and a
/// device token issued before logs in (RESUME writes nothing it must wait for).
#[test]
fn failing_writes_refuse_account_changes_and_let_tokens_log_in() {
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (inner, snapshot) = MemoryStore::new();
    let store = FullDisk {
        inner,
        full: full.clone(),
    };
    let mut s = Sim::with_store(Box::new(store), snapshot);
    s.connect("a");
    s.send("a", "REGISTER alice password1");
    s.send("a", "REGISTER bob password2");
    s.send("a", "LOGIN alice password1");
    s.send("a", "AWAY at lunch");
    s.output("a");
    s.send("a", "TOKEN laptop");
    let issued = s.output("a");
    let token = issued
        .strip_prefix("OK TOKEN ")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("a token: {issued}"))
        .to_owned();

    full.store(true, std::sync::atomic::Ordering::Relaxed);
    // A write that fails makes the server notice; it waits for the disk.
    s.send("a", "@x AWAY back");
    assert_eq!(s.output("a"), "");
    assert!(s.core().store_failing());
    s.connect("b");
    s.output("b");
    s.send("b", &format!("RESUME {token}"));
    let b = s.output("b");
    assert!(b.starts_with("OK RESUME alice\n"), "{b}");
    assert!(b.ends_with("BACKLOG-END 0\n"), "{b}");
    for (label, line) in [
        ("t", "TOKEN phone"),
        ("r", "REVOKE ALL"),
        ("w", "AWAY back"),
        ("k", "BLOCK bob"),
        ("u", "UNBLOCK bob"),
        ("d", "DMS FRIENDS"),
        ("p", "PASSWORD password1 password9"),
        ("g", "UNREGISTER password1"),
    ] {
        s.send("b", &format!("@{label} {line}"));
        let verb = line.split(' ').next().unwrap_or_default();
        let out = s.output("b");
        assert!(
            out.starts_with(&format!("FAIL @{label} {verb} STORAGE_UNAVAILABLE ")),
            "{line}: {out}"
        );
    }
    s.send("b", "@l TOKENS");
    assert!(s.output("b").ends_with("OK @l TOKENS 1\n"));
    s.send("b", "@k BLOCKS");
    assert_eq!(s.output("b"), "OK @k BLOCKS 0\n");
    s.send("b", "@d DMS");
    assert_eq!(s.output("b"), "OK @d DMS EVERYONE\n");
    s.send("b", "@i WHOIS bob");
    assert!(s.output("b").starts_with("OK @i WHOIS bob OFFLINE "));

    full.store(false, std::sync::atomic::Ordering::Relaxed);
    s.retry_store();
    assert!(!s.core().store_failing());
    // The AWAY that waited is committed and answered, and told to the account's other connection.
    assert_eq!(s.output("a"), "OK @x AWAY SET\n");
    assert_eq!(s.output("b"), "AWAY alice back\n");
    s.send("b", "PASSWORD password1 password9");
    assert_eq!(s.output("b"), "OK PASSWORD REVOKED 0 CLOSED 1\n");
}
