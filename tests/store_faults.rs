//! Faults of the store as clients see them, through the simulator: damaged records and failing
//! writes degrade the service; they never stop the server.

use chatd::sim::Sim;
use chatd::store::memory::MemoryStore;
use chatd::store::{
    Damage, MessageRecord, MsgId, ReadOp, Store, StoreError, StoreOp, StoreReader, StoreReply,
};

/// A memory store in which the message with id `bad` no longer decodes: every read that would
/// return it fails as damaged, the way the redb store reports a record it cannot decode.
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
        let reply = self.inner.read(op)?;
        let hit = |msgs: &[MessageRecord]| msgs.iter().any(|m| m.id == self.bad);
        let damaged = match &reply {
            StoreReply::History(page) => hit(&page.messages),
            StoreReply::Backlog(msgs) => hit(msgs),
            _ => false,
        };
        if damaged {
            return Err(StoreError::Corrupt {
                path: "damaged.redb".into(),
                source: Box::new(Damage::new(format!(
                    "message record {}: truncated",
                    self.bad
                ))),
            });
        }
        Ok(reply)
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
